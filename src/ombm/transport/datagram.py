"""Bridge datagrams: segments across hosts as UDP datagrams (paper §3.2.3), sans-I/O.

This module owns the byte layout of what one bridge sends another, its validation and its
authentication, and nothing else: no socket, no clock (``now_us`` is an argument).  Every field of a
received datagram is hostile input; :func:`decode` checks each one once and raises
:class:`~ombm.errors.DatagramError` (a :class:`~ombm.errors.FrameError`), never anything else, with a
``reason`` the bridge counts (``"malformed"``, ``"bad_mac"``).

Layout, little-endian::

    off  size  header (HEADER_SIZE = 24)
      0   u16  magic      MAGIC (b"OB")
      2   u8   version    VERSION
      3   u8   kind       a :class:`Kind`
      4   u16  flags      FLAG_MAC: the trailer is a MAC, else a CRC32C; no other bit
      6   u16  count      UPDATE: entries that follow (>= 1); control kinds: 0
      8   u64  sender     random per bridge run: a restarted sender is a new sender
     16   u64  seq        per-sender sequence number, strictly increasing (see Sealer)
     24        body       UPDATE: ``count`` entries; control kinds: one msgpack map
    end-T      trailer    T = 16: keyed BLAKE2b of every byte before it (FLAG_MAC)
                          T = 4:  CRC32C of every byte before it (no key: damage, not forgery)

    an UPDATE entry: a range of one unit of a replicated segment (ENTRY_SIZE = 32, then the bytes)
      0   u64  key        the segment, as both bridges agreed at import
      8   u64  offset     of the range in the segment
     16   u32  base       the tag of the unit's content the range applies to (0 with ENTRY_FULL)
     20   u32  tag        the tag of the unit's content after the update (never 0)
     24   u16  length     of the range (>= 1)
     26   u16  part       0 <= part < parts: this range's place in its update
     28   u16  parts      how many ranges the update has (it may span several datagrams)
     30   u16  flags      ENTRY_FULL: the bytes of the unit outside the update's ranges are zero
     32        bytes      ``length`` bytes

An *update* is the new content of one unit: one or more ranges (parts) sharing ``key`` and ``tag``,
the last ending at the unit's last byte, so the receiving bridge's write of it completes the unit and
raises the local signal (signal-on-write, §3.3).  A delta (no ENTRY_FULL) carries only the bytes that
changed since the content tagged ``base``; a receiver holding another content drops it and asks for a
full update (RESYNC).  Several entries, of one update or of several, share a datagram up to the path's
MTU.  The control kinds carry a msgpack map whose fields are checked here (``_SCHEMAS``).

Authentication (with a key): keyed BLAKE2b (``hashlib.blake2b(key=..., digest_size=16)``, personalised
for this format) over header and body; the sender's sequence number with a per-sender 64-entry sliding
window (:class:`ReplayWindow`, as IPsec's ESP, RFC 4303 §3.4.3, and DTLS, RFC 6347 §4.1.2.6) drops
replays.  Without a key the CRC32C (:func:`ombm._native.checksum`, as the frames in ``wire``) only
detects damage.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Callable

import msgpack

from ombm._native import checksum as _crc32c
from ombm.errors import DatagramError

__all__ = ["MAGIC", "VERSION", "HEADER_SIZE", "ENTRY_SIZE", "MAC_SIZE", "CRC_SIZE", "FLAG_MAC", "ENTRY_FULL",
           "DEFAULT_MTU", "MAX_MTU", "Kind", "Entry", "Datagram", "DatagramError", "Sealer", "decode",
           "entry_room", "pack_entry", "ReplayWindow"]

MAGIC = 0x424F                        # b"OB" on the wire
VERSION = 1
_HEADER = struct.Struct("<HBBHHQQ")
_ENTRY = struct.Struct("<QQIIHHHH")
HEADER_SIZE = _HEADER.size            # 24
ENTRY_SIZE = _ENTRY.size              # 32
MAC_SIZE = 16
CRC_SIZE = 4
_CRC = struct.Struct("<I")
FLAG_MAC = 0x1
ENTRY_FULL = 0x1
DEFAULT_MTU = 1472                    # the UDP payload of a 1,500-byte IPv4 MTU (1500 - 20 - 8)
MAX_MTU = 65507                       # the largest UDP payload over IPv4
MIN_MTU = HEADER_SIZE + ENTRY_SIZE + MAC_SIZE + 64
_PERSON = b"ombm-bridge-v1"           # BLAKE2b personalisation: this format's MACs and no other's
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
MAX_BODY_ITEMS = 256                  # names in EXPORTS, units in RESYNC, keys in BYE, PING and PONG
MAX_TEXT = 400


class Kind(enum.IntEnum):
    """What a datagram carries."""

    UPDATE = 1         # entries: ranges of units of replicated segments
    LIST = 2           # {"nonce"}: which segments do you export?
    EXPORTS = 3        # {"nonce", "names"}: the answer to LIST
    IMPORT = 4         # {"nonce", "name"}: replicate your segment ``name`` to me
    IMPORT_REPLY = 5   # {"nonce", "name", "key", "size", "unit", "mode", "sow"} or {"nonce", "name", "error", "why"}
    RESYNC = 6         # {"key", "units"}: my copy of these units is not the one your deltas apply to
    BYE = 7            # {"keys"}: I stop replicating these segments with you ([]: all of them; I am leaving)
    OFFER = 8          # {"nonce", "name", "key", "size", "unit", "mode", "sow"}: replicate my segment ``name``
    OFFER_REPLY = 9    # {"nonce", "name", "local"} (your replica's name here) or {"nonce", "name", "error"}
    LOCATE = 10        # {"nonce", "name"}: who exports ``name``? (to a multicast group, or to the peers)
    LOCATED = 11       # {"nonce", "name"}: I do (the answer to LOCATE, from the exporter's unicast address)
    PING = 12          # {"keys"}: are you there, and do you still replicate these segments with me?
    PONG = 13          # {"gone"}: I am; of the keys you named, these I do not replicate with you
    PROBE = 14         # {"nonce", "pad"}: does a datagram this long reach you? (path MTU; ``pad``: zeros)
    PROBED = 15        # {"nonce"}: it did (the answer to PROBE)


_KINDS = {int(k): k for k in Kind}


@dataclass(frozen=True, slots=True)
class Entry:
    """One range of an UPDATE: ``data`` (a view of the received datagram) at ``offset`` of segment ``key``."""

    key: int
    offset: int
    base: int
    tag: int
    part: int
    parts: int
    full: bool
    data: bytes | memoryview


Body = dict[str, object]


@dataclass(frozen=True, slots=True)
class Datagram:
    """A validated datagram: its entries (UPDATE) or its control body (every other kind)."""

    kind: Kind
    sender: int
    seq: int
    entries: tuple[Entry, ...] = ()
    body: Body | None = None


# ---- the control bodies' schemas: field -> check; a field in brackets is optional
def _is_u64(v: object) -> bool:
    return type(v) is int and 0 <= v <= _U64


def _is_text(v: object) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_TEXT and v.isprintable()


def _is_list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: type(v) is list and len(v) <= MAX_BODY_ITEMS and all(check(x) for x in v)


def _is_size(v: object) -> bool:
    return type(v) is int and 0 < v <= 1 << 44


def _is_mode(v: object) -> bool:
    return type(v) is int and v in (1, 2)


def _is_bool(v: object) -> bool:
    return type(v) is bool


def _is_padding(v: object) -> bool:
    return type(v) is bytes and not v.strip(b"\0")


def _is_why(v: object) -> bool:
    return v in ("not_found", "refused")


_SCHEMAS: dict[Kind, tuple[dict[str, Callable[[object], bool]], dict[str, Callable[[object], bool]]]] = {
    # kind: (required fields, optional fields)
    Kind.LIST: ({"nonce": _is_u64}, {}),
    Kind.EXPORTS: ({"nonce": _is_u64, "names": _is_list_of(_is_text)}, {}),
    Kind.IMPORT: ({"nonce": _is_u64, "name": _is_text}, {}),
    Kind.IMPORT_REPLY: ({"nonce": _is_u64, "name": _is_text},
                        {"key": _is_u64, "size": _is_size, "unit": _is_size, "mode": _is_mode, "sow": _is_bool,
                         "error": _is_text, "why": _is_why}),
    Kind.OFFER: ({"nonce": _is_u64, "name": _is_text, "key": _is_u64, "size": _is_size, "unit": _is_size,
                  "mode": _is_mode, "sow": _is_bool}, {}),
    Kind.OFFER_REPLY: ({"nonce": _is_u64, "name": _is_text}, {"local": _is_text, "error": _is_text}),
    Kind.RESYNC: ({"key": _is_u64, "units": _is_list_of(_is_u64)}, {}),
    Kind.BYE: ({"keys": _is_list_of(_is_u64)}, {}),
    Kind.LOCATE: ({"nonce": _is_u64, "name": _is_text}, {}),
    Kind.LOCATED: ({"nonce": _is_u64, "name": _is_text}, {}),
    Kind.PING: ({"keys": _is_list_of(_is_u64)}, {}),
    Kind.PONG: ({"gone": _is_list_of(_is_u64)}, {}),
    Kind.PROBE: ({"nonce": _is_u64, "pad": _is_padding}, {}),
    Kind.PROBED: ({"nonce": _is_u64}, {}),
}
_REPLY_FIELDS = frozenset(("key", "size", "unit", "mode", "sow"))


def _check_body(kind: Kind, body: object) -> Body:
    if type(body) is not dict:
        raise DatagramError(f"{kind.name} body is not a map", "malformed")
    required, optional = _SCHEMAS[kind]
    for field, check in required.items():
        if field not in body or not check(body[field]):
            raise DatagramError(f"{kind.name} body: bad or missing {field!r}", "malformed")
    for field, value in body.items():
        if field not in required and (field not in optional or not optional[field](value)):
            raise DatagramError(f"{kind.name} body: unexpected or bad field {field!r}", "malformed")
    if kind is Kind.IMPORT_REPLY and ("error" in body) == (_REPLY_FIELDS <= body.keys()):
        raise DatagramError("IMPORT_REPLY: give either the segment's geometry or an error", "malformed")
    if kind is Kind.OFFER_REPLY and ("error" in body) == ("local" in body):
        raise DatagramError("OFFER_REPLY: give either the replica's name or an error", "malformed")
    return body


def _unpack_body(kind: Kind, raw: memoryview) -> Body:
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, max_str_len=MAX_TEXT,
                               max_bin_len=MAX_MTU if kind is Kind.PROBE else 0,  # only a probe's padding
                               max_array_len=MAX_BODY_ITEMS, max_map_len=16, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types for bad input: all are one thing here
        raise DatagramError(f"{kind.name} body is not msgpack: {type(exc).__name__}", "malformed") from None
    return _check_body(kind, body)


# ---- sealing and opening
def _mac(key: bytes, data: memoryview | bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=MAC_SIZE, person=_PERSON).digest()


def check_key(key: bytes) -> bytes:
    """``key`` if it can key the MAC (16 to 64 bytes, as BLAKE2b allows), else ValueError."""
    if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
        raise ValueError("a bridge key is 16 to 64 bytes")
    return key


class Sealer:
    """Writes the datagrams of one sender: its id, its sequence numbers, its MAC or CRC.

    A sequence number is ``max(previous + 1, now_us)``: strictly increasing, and never behind the
    sender's clock, so a receiver meeting a sender for the first time can refuse a datagram recorded
    long ago (:class:`ReplayWindow` ``max_age_us``).
    """

    def __init__(self, sender: int, key: bytes | None = None) -> None:
        if not _is_u64(sender):
            raise ValueError("sender id must be a u64")
        self.sender = sender
        self.key = None if key is None else check_key(key)
        self.trailer = MAC_SIZE if key is not None else CRC_SIZE
        self.seq = 0
        # another writer of this sender's datagrams (the bridge's native path) may own the sequence
        # numbers: then they come from it, the same rule, one sequence for both
        self.sequence: Callable[[int], int] | None = None

    def next_seq(self, now_us: int) -> int:
        if self.sequence is not None:
            return self.sequence(now_us)
        self.seq = max(self.seq + 1, now_us)
        return self.seq

    def seal(self, kind: Kind, payload: bytes | bytearray | memoryview, count: int, now_us: int) -> bytes:
        """The datagram of ``kind`` whose body is ``payload`` (``count`` entries for UPDATE)."""
        flags = FLAG_MAC if self.key is not None else 0
        head = _HEADER.pack(MAGIC, VERSION, kind, flags, count, self.sender, self.next_seq(now_us))
        data = head + bytes(payload)
        if self.key is not None:
            return data + _mac(self.key, data)
        return data + _CRC.pack(_crc32c(data))

    def probe(self, nonce: int, size: int, now_us: int) -> bytes:
        """A PROBE of ``size`` bytes (``MIN_MTU`` to ``MAX_MTU``), zeros padding it; one byte less in the
        one case msgpack cannot encode (the padding's length going from one byte to two)."""
        if not MIN_MTU <= size <= MAX_MTU:
            raise ValueError(f"a probe is {MIN_MTU} to {MAX_MTU} bytes")
        bare = HEADER_SIZE + len(msgpack.packb({"nonce": nonce, "pad": b""}, use_bin_type=True)) + self.trailer
        pad = size - bare
        if pad >= 0x100:  # msgpack's bin 16 has one byte more of length than bin 8
            pad -= 1
        return self.control(Kind.PROBE, {"nonce": nonce, "pad": bytes(pad)}, now_us)

    def control(self, kind: Kind, body: Body, now_us: int) -> bytes:
        """A control datagram (every kind but UPDATE): ``body`` as msgpack, checked against its schema."""
        if kind is Kind.UPDATE:
            raise ValueError("UPDATE carries entries, not a body")
        _check_body(kind, body)
        return self.seal(kind, msgpack.packb(body, use_bin_type=True), 0, now_us)


def entry_room(mtu: int, trailer: int) -> int:
    """The most bytes one entry can carry in a datagram of ``mtu`` bytes."""
    return mtu - HEADER_SIZE - trailer - ENTRY_SIZE


def pack_entry(key: int, offset: int, base: int, tag: int, part: int, parts: int, full: bool,
               data: bytes | bytearray | memoryview) -> bytes:
    """One UPDATE entry (its header, then ``data``)."""
    return _ENTRY.pack(key, offset, base, tag, len(data), part, parts, ENTRY_FULL if full else 0) + bytes(data)


def decode(data: bytes | bytearray | memoryview, key: bytes | None = None) -> Datagram:
    """Validate a received datagram (its integrity first, then every field) and return it.

    With ``key`` the datagram must carry a MAC under that key; without, a CRC32C.  Raise
    :class:`DatagramError` (``reason`` ``"bad_mac"`` or ``"malformed"``), never anything else.
    Entries' ``data`` are views of ``data``.
    """
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError):
        raise DatagramError("a datagram is bytes", "malformed") from None
    n = view.nbytes
    if n < HEADER_SIZE + CRC_SIZE:
        raise DatagramError(f"{n} bytes: shorter than a header", "malformed")
    magic, version, kind_value, flags, count, sender, seq = _HEADER.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise DatagramError("not an ombm bridge datagram of this version", "malformed")
    if flags & ~FLAG_MAC:
        raise DatagramError(f"unknown flags {flags:#x}", "malformed")
    end = _open(view, n, flags, key)
    kind = _KINDS.get(kind_value)
    if kind is None:
        raise DatagramError(f"unknown kind {kind_value}", "malformed")
    if kind is Kind.UPDATE:
        return Datagram(kind, sender, seq, _entries(view, end, count))
    if count:
        raise DatagramError(f"{kind.name} has entries", "malformed")
    return Datagram(kind, sender, seq, body=_unpack_body(kind, view[HEADER_SIZE:end]))


def _open(view: memoryview, n: int, flags: int, key: bytes | None) -> int:
    """Check the trailer; return where the body ends."""
    if key is not None:
        if not flags & FLAG_MAC:
            raise DatagramError("no MAC, and this bridge has a key", "bad_mac")
        end = n - MAC_SIZE
        if end < HEADER_SIZE or not hmac.compare_digest(_mac(key, view[:end]), view[end:]):
            raise DatagramError("the MAC does not match (forged, altered, or another key)", "bad_mac")
        return end
    if flags & FLAG_MAC:
        raise DatagramError("a MAC, and this bridge has no key", "bad_mac")
    end = n - CRC_SIZE
    if _crc32c(view[:end]) != _CRC.unpack_from(view, end)[0]:
        raise DatagramError("bad CRC32C (damaged)", "malformed")
    return end


def _entries(view: memoryview, end: int, count: int) -> tuple[Entry, ...]:
    if count < 1:
        raise DatagramError("an UPDATE without entries", "malformed")
    if count > (end - HEADER_SIZE) // (ENTRY_SIZE + 1):
        raise DatagramError(f"{count} entries cannot fit", "malformed")
    entries = []
    at = HEADER_SIZE
    for _ in range(count):
        if at + ENTRY_SIZE > end:
            raise DatagramError("an entry header runs past the end", "malformed")
        seg_key, offset, base, tag, length, part, parts, eflags = _ENTRY.unpack_from(view, at)
        at += ENTRY_SIZE
        full = eflags == ENTRY_FULL
        if eflags & ~ENTRY_FULL or not length or not part < parts or not tag or (base == 0) != full:
            raise DatagramError("an entry with impossible fields", "malformed")
        if offset + length > _U64 or at + length > end:
            raise DatagramError("an entry's range overflows", "malformed")
        entries.append(Entry(seg_key, offset, base, tag, part, parts, full, view[at:at + length]))
        at += length
    if at != end:
        raise DatagramError(f"{end - at} bytes after the last entry", "malformed")
    return tuple(entries)


class ReplayWindow:
    """Drops replayed datagrams: per sender, the highest sequence number seen and a 64-bit map of the
    64 before it (RFC 4303 §3.4.3).  A datagram older than the window is dropped too.

    ``max_age_us`` (used with a key) refuses, from a sender met for the first time, a sequence number
    more than that far from ``now_us`` (a sender's sequence numbers follow its clock: :class:`Sealer`),
    so a datagram recorded long ago is not taken as a restarted sender's.  Senders are kept
    least-recently-used first, at most ``max_senders``.
    """

    SIZE = 64

    def __init__(self, *, max_senders: int = 1024, max_age_us: int | None = None) -> None:
        self.max_senders = max_senders
        self.max_age_us = max_age_us
        self._senders: dict[int, tuple[int, int]] = {}   # sender -> (highest seq, bitmap; bit i = top - i seen)

    def check(self, sender: int, seq: int, now_us: int) -> str:
        """"" if ``seq`` is new for ``sender``, else why not ("replay", "stale"); changes nothing."""
        known = self._senders.get(sender)
        if known is None:
            if self.max_age_us is not None and abs(seq - now_us) > self.max_age_us:
                return "stale"
            return ""
        top, seen = known
        if seq > top:
            return ""
        back = top - seq
        if back >= self.SIZE or seen >> back & 1:
            return "replay"
        return ""

    def commit(self, sender: int, seq: int) -> None:
        """Record ``seq`` as seen (after :meth:`check` said it is new and its datagram was taken)."""
        known = self._senders.pop(sender, None)
        if known is None:
            top, seen = seq, 1
        else:
            top, seen = known
            if seq > top:
                shift = seq - top
                seen = ((seen << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
                top = seq
            else:
                seen |= 1 << (top - seq)
        self._senders[sender] = (top, seen)
        if len(self._senders) > self.max_senders:
            del self._senders[next(iter(self._senders))]

    def forget(self, sender: int) -> None:
        self._senders.pop(sender, None)
