"""Frames: the unit the reliable RPC and stream protocols put on a channel (paper §4).

This module owns the byte layout of a frame and nothing else: how a frame is
encoded, where its fields sit, and how a received frame is validated and copied
out of memory that somebody else may be overwriting.

A frame is its payload followed by a fixed 48-byte **trailer**.  The trailer comes
last so that the writer of a slot writes it after the payload and its final byte
completes the signalling unit (the paper's signal-on-write, §3.3); a reader finds
the trailer at the end of the slot or datagram::

    start                                     end - 48                          end
    | payload (payload_len bytes)             | trailer (TRAILER_SIZE = 48)       |

    trailer, little-endian
    off  size  field
      0   u64  connection_id lets a receiver reject frames of another/older connection
      8   u64  message_id    the call id (RPC) or the fragment sequence number (stream)
     16   u64  ack           cumulative acknowledgement piggybacked by the sender
     24   u32  payload_len
     28   u32  credit        receive window announced by a stream receiver, else 0
     32   u16  frag_index    0 <= frag_index < frag_count
     34   u16  frag_count    1 <= frag_count <= MAX_FRAGMENTS
     36   u8   kind          a :class:`Kind`
     37   u8   flags         reserved, 0
     38   u16  magic         MAGIC: format and version
     40   u32  checksum      CRC32C of every byte before it: payload + trailer[0:40]
     44   u32  (zero)        the checksum's u64 slot, high half: must be 0

The checksum is the CRC32C (Castagnoli polynomial 0x1EDC6F41, as iSCSI: RFC 3720
§12.1, B.4) of the contiguous bytes ``frame[0:len - 8]``, by :func:`ombm._native.checksum`
(the SSE4.2 or ARMv8 instruction where there is one, a table otherwise).  It is stored
as a u64 whose high 32 bits are zero, and the whole u64 is compared, so the trailer
keeps its size and every byte of it is checked.  In the largest frame (a 128 KiB slot)
it detects every error of 1, 2 or an odd number of bits and every burst of at most 32
bits (``tests/property/test_crc32c_props.py`` proves it; ``docs/design.md`` says why).  It
replaced a 64-bit Fletcher-like sum (format version 1), which wrapped at 2^64: bit 63
of words 0 and 2 flipped together went unnoticed.  The checksum is the last field, so
it is the last thing written.  A CRC can be continued (``checksum(b, checksum(a))`` is
the CRC of ``a + b``), so a writer sums the payload while copying it and continues
over the trailer.
On receive the payload and trailer are copied out of the (possibly shared,
possibly hostile) buffer exactly once, by :func:`ombm._native.copy_checksum`, which
computes the checksum during the copy: the paper's "checksum folded into the
unmarshal copy".  The payload length is bounds-checked before that copy, and every
field is then taken from the private copy, so a frame overwritten or torn while it
was read (message-oriented consistency, §3.2) fails the comparison and raises
:class:`FrameError`; the protocol layer above counts it and lets retransmission
repair it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ombm._native import checksum as _checksum
from ombm._native import copy_checksum as _copy_checksum
from ombm._native import frame_decode as _frame_decode
from ombm._native import frame_encode as _frame_encode
from ombm.errors import FrameError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["TRAILER_SIZE", "MAGIC", "MAX_FRAGMENTS", "Kind", "Frame", "FrameError",
           "encode", "encode_into", "decode", "decode_fields", "raw_decode", "raw_encode", "KIND_TABLE", "peek_kind",
           "FrameFields"]

_HEAD = struct.Struct("<QQQIIHHBBH")   # trailer[0:40], everything before the checksum
_SUM = struct.Struct("<Q")
_TAIL = struct.Struct("<IIHHBBHQ")     # trailer[24:48]: payload_len ... checksum
TRAILER_SIZE = _HEAD.size + _SUM.size  # 48
TRAILER_HEAD, TRAILER_SUM, TRAILER_TAIL = _HEAD, _SUM, _TAIL  # for channels that frame in place (ombm.channels.stream)
_HEAD_SIZE = _HEAD.size                # 40
MAGIC = 0x4F02                         # format "O", version 2 (1: the Fletcher-like checksum)
MAX_FRAGMENTS = 0xFFFF
_U32 = 0xFFFFFFFF


class Kind(enum.IntEnum):
    """What a frame carries."""

    CALL = 1         # RPC request, answered by REPLY or ERROR_REPLY
    ONEWAY = 2       # RPC request never answered; acknowledged by ACK
    REPLY = 3        # RPC result
    ERROR_REPLY = 4  # RPC result the server flagged as an error
    ACK = 5          # RPC: "one-way call message_id received"
    DATA = 6         # stream fragment number message_id
    CREDIT = 7       # stream receiver -> sender: cumulative ack + receive window credit
    PROBE = 8        # stream sender -> receiver: "tell me your window"


# a decoded frame: (kind, connection_id, message_id, frag_index, frag_count, ack, payload, credit)
FrameFields = tuple[Kind, int, int, int, int, int, bytearray, int]

_KIND_BY_VALUE = {int(k): k for k in Kind}
_KINDS: tuple[Kind | None, ...] = tuple(_KIND_BY_VALUE.get(v) for v in range(max(_KIND_BY_VALUE) + 1))  # kind byte -> Kind
KIND_TABLE = _KINDS

# decode_fields without its wrapper, for the protocols' per-frame path:
# ``raw_decode(view, KIND_TABLE)`` returns the same tuple and raises plain ValueError.
raw_decode = _frame_decode
# encode without its checks, for constant kinds on the protocols' per-call path:
# ``raw_encode(kind, connection_id, message_id, payload, frag_index, frag_count, ack, credit)``.
raw_encode = _frame_encode


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame.

    ``payload`` is whatever bytes-like object you built a frame with, and a fresh
    ``bytearray`` owned by the receiver when :func:`decode` built it (the one
    unmarshal copy; making it ``bytes`` would cost a second copy).  Because of that
    a decoded Frame is not hashable.
    """

    kind: Kind
    connection_id: int
    message_id: int
    frag_index: int = 0
    frag_count: int = 1
    ack: int = 0
    payload: bytes | bytearray = b""
    credit: int = 0


def _head(kind: int, connection_id: int, message_id: int, frag_index: int, frag_count: int, ack: int, credit: int,
          n: int) -> bytes:
    if not 0 <= frag_index < frag_count <= MAX_FRAGMENTS:
        raise ValueError(f"bad fragment {frag_index}/{frag_count}")
    if n > _U32 or not 0 <= credit <= _U32:
        raise ValueError("payload or credit too large for a frame")
    if kind not in _KIND_BY_VALUE:
        raise ValueError(f"unknown frame kind {kind!r}")
    try:
        return _HEAD.pack(connection_id, message_id, ack, n, credit,
                          frag_index, frag_count, kind, 0, MAGIC)
    except struct.error as exc:
        raise ValueError(f"frame field out of range: {exc}") from None


def encode(kind: int, connection_id: int, message_id: int, payload: ReadableBuffer = b"", *,
           frag_index: int = 0, frag_count: int = 1, ack: int = 0, credit: int = 0) -> bytes:
    """Return the frame (payload followed by its trailer) as bytes (native: one pass)."""
    if kind not in _KIND_BY_VALUE:
        raise ValueError(f"unknown frame kind {kind!r}")
    return _frame_encode(kind, connection_id, message_id, payload, frag_index, frag_count, ack, credit)


def encode_into(buf: WriteableBuffer, end: int, kind: int, connection_id: int, message_id: int,
                payload: ReadableBuffer = b"", *,
                frag_index: int = 0, frag_count: int = 1, ack: int = 0, credit: int = 0) -> int:
    """Write a frame that ends at ``end`` in the writable buffer ``buf``; return its start.

    Payload and trailer are copied into ``buf`` and checksummed in one pass, in
    address order, and the checksum, which ends the frame, is stored last.
    """
    payload = memoryview(payload).cast("B")
    n = payload.nbytes
    head = _head(kind, connection_id, message_id, frag_index, frag_count, ack, credit, n)
    view = memoryview(buf).cast("B")
    start = end - n - TRAILER_SIZE
    if start < 0 or end > view.nbytes:
        raise ValueError(f"a frame of {n + TRAILER_SIZE} bytes cannot end at {end} "
                         f"in a buffer of {view.nbytes} bytes")
    crc = _copy_checksum(view[start:start + n], payload)  # continued over the trailer's head
    view[start + n:end - 8] = head
    _SUM.pack_into(view, end - 8, _checksum(head, crc))
    return start


def decode_fields(view: ReadableBuffer) -> FrameFields:
    """Like :func:`decode` but return a plain tuple (the protocols' hot path):
    ``(kind, connection_id, message_id, frag_index, frag_count, ack, payload, credit)``.

    Native: the length is read once and bounds-checked, then payload and
    trailer are copied once into private memory with the checksum folded into
    that copy (paper §4), and every field is read from the copy.
    """
    try:
        return _frame_decode(view, _KINDS)
    except ValueError as exc:
        raise FrameError(str(exc)) from None


def peek_kind(view: bytes | bytearray | memoryview) -> int | None:
    """The kind byte of the frame ending ``view``, unvalidated, or None if too short.

    Only for routing a frame to the protocol object that will decode it (say DATA
    and PROBE to a stream receiver, CREDIT to the sender sharing its channel).
    """
    n = len(view)
    return view[n - 12] if n >= TRAILER_SIZE else None


_new = object.__new__
(_set_kind, _set_connection_id, _set_message_id, _set_frag_index, _set_frag_count,
 _set_ack, _set_payload, _set_credit) = (getattr(Frame, name).__set__ for name in Frame.__slots__)


def decode(view: ReadableBuffer) -> Frame:
    """Validate and copy out the frame that ends at the end of ``view``.

    ``view`` is a memoryview (or other buffer of unsigned bytes) that may live in
    memory a hostile or dying peer is writing, or a received datagram.  Raise
    :class:`FrameError` on any inconsistency; never read outside ``view``.
    """
    kind, connection_id, message_id, frag_index, frag_count, ack, payload, credit = \
        decode_fields(view)
    # Filling the slots directly costs half of what the frozen __init__ does.
    frame = _new(Frame)
    _set_kind(frame, kind)
    _set_connection_id(frame, connection_id)
    _set_message_id(frame, message_id)
    _set_frag_index(frame, frag_index)
    _set_frag_count(frame, frag_count)
    _set_ack(frame, ack)
    _set_payload(frame, payload)
    _set_credit(frame, credit)
    return frame
