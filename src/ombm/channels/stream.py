"""The reliable stream over channel segments (paper §4): the I/O of the stream protocol.

:class:`Stream` derives from the basic :class:`~ombm.channels.raw.Channel` ("derived classes
of the basic channel class provide the reliable transport mechanisms") and runs on the sans-I/O
stream protocol, :mod:`ombm.transport.stream_protocol`, the way RPC runs on its protocol: every
rule of the transport (sequence numbers, fragmentation and reassembly accounting, credit and flow
control, acknowledgement, the repair timer, end of stream, the counters) lives there.  This module
owns the I/O: the two segments, signal-on-write, waiting, liveness, buffers and arrays.

One writer, one reader, two unidirectional segments, both created by the writer:

* the **data channel** ``name`` (writer read-write, reader read-only): ``slots`` slots, the
  protocol's window; fragment ``s`` is a DATA frame (payload + 48-byte wire trailer, checksum
  last, see the protocol) that *ends* at the end of slot ``s % slots``, so the write of its last
  byte raises exactly one signal (signal-on-write);
* the **credit channel** ``name + ".credit"`` (reader read-write, writer read-only),
  64-byte units::

      0  8s  magic b"OMBMCRD\\x01"   |  8 u64 connection id  (both written by the writer)
     16  u64 reader pid (claimed by CAS: one reader)  | 24 u64 reader start time
     32  u32 reader state (1 open, 2 closed) | 36 u32 reader flags (1 on another host, 2 saw the end)
     40  u64 acked     the protocol's acknowledgement: every fragment below it was received
     48  u64 released  every fragment below it is free: its slot may be written again
     64  u64 reading   nonzero while the reader looks at the slots again before it waits (its own line)
    128  8 credit slots of 64 bytes, each a CREDIT frame (ack, credit) ending at its end

How the protocol's frames and counts travel here:

* **Acknowledgement and credit as words.**  The reader publishes ``acked``/``released`` with
  atomic stores (``released`` with a locked add: a full barrier) and then reads the writer's
  *waiting* word in the data control block; the writer reads both words into its protocol.  The
  writer sets the waiting word (the protocol's wake target) with a compare-and-swap (a full
  barrier) and re-reads ``released`` before it sleeps (Drepper's protocol): no lost wake-up, and
  no credit signal unless the writer waits.  The wake-up is the protocol's CREDIT frame, written
  into the next credit slot; over shared memory it only wakes the writer, whose protocol reads the
  words (an I/O layer over datagrams passes the frame to ``StreamSender.receive_frame``).
* **In-order consumption, no reordering buffer.**  The reader always looks at the slot where the
  protocol's next fragment must be: the data stays in place until released.  A signal only says
  "look now": the writer signals a fragment once it and every fragment before it are complete, so
  any signal sets one hint and the reader looks from its next fragment on, until one is not there
  yet (then it clears the hint).  So :meth:`Stream.send_many` signals only the last fragment of a
  burst (and the last before it waits for credit), and :meth:`Stream.recv_many` takes a burst with
  one wake-up and publishes its acknowledgement and credit once.  A lost signal is repaired by
  looking again every ``TICK_S``.  Each fragment is copied out once with the checksum folded into the copy
  (``_native.copy_checksum``), straight to its place in the message (into a reused buffer when the
  application dropped an earlier one); a torn or corrupt frame fails the checksum and is looked at
  again.  The common case, a run of one-fragment ``bytes`` messages, is written and taken by one
  native call per run (``_native.stream_put_many``/``stream_take_many``, ``_native/stream_batch.c``:
  the same frame, the same checks, the protocol's counts once per run); anything else stops the run
  and takes the Python path.  A DATA frame is a valid wire frame: its CRC32C, continued from the payload's over the trailer
  (:func:`~ombm.transport.stream_protocol.seal`), is the one ``wire.decode`` checks.
* **Repair.**  A fragment the protocol finds due (unacknowledged for an RTO: 0.1 s, doubling up
  to 2 s) is checked in its slot: intact, it is signalled again; corrupt, it is written again
  from the sender's source.  ``bytes`` sources are kept by reference (no copy); any other
  buffer is referenced too and must not change until :meth:`Stream.flush` returns: if it did,
  the stream breaks rather than deliver changed data.  Repairs run inside
  ``send``/``flush``/``close`` (no timer thread).
* **Liveness.**  A waiting end checks its peer (pid + start time) every ``TICK_S``: a dead or
  closed reader makes ``send`` raise :class:`~ombm.ChannelBrokenError`; a closed writer ends the
  stream, a dead one breaks it.  A timeout never loses or duplicates a message.
* **End of stream, exactly.**  A closing writer stores how many fragments and messages it sent
  in the data control block, then its closed state; the reader raises
  :class:`~ombm.channels.raw.EndOfStream` only when it took exactly those (the protocol's
  ``check_end``), else :class:`~ombm.StreamProtocolError` saying how many are missing.
* **Forged credit.**  The credit words can be written by any process of the user.  The writer's
  protocol raises :class:`~ombm.StreamProtocolError` on counts no reader can publish; the
  reader, which alone writes them, checks that ``released`` still holds what it last published
  (the locked add returns the old value: no extra cost), that both words do once a tick while it
  waits, and that no later fragment sits in the slot it waits for (a slot overwritten before it
  was read).  Any of these breaks the stream.

**Across hosts** (paper §3.2.3, docs/net.md): the reader opens ``name@HOST:PORT``; this host's
bridge makes replicas of both segments (``name.at.IP_PORT``, ``name.credit.at.IP_PORT``).  Atomic
stores raise no signal and so never reach a bridge, so a reader of a replica (its name says) *publishes*
its whole first credit unit (claim, state, flags, ``acked``, ``released``, from its own copy of them)
with an ordinary write on every release and once a tick while it waits, and sends its CREDIT frame on
every release (it cannot see the writer's waiting word in time); the writer publishes its control block
when it makes the stream and when it closes it, then, for a reader on another host, again every tick
until that reader says it saw the end (or ``flush_timeout``).  Liveness moves to directory entries as
for RPC: the reader of a replica judges the writer by the bridge that keeps the replica, and a writer
whose reader is on another host (its flags say) judges it by the bridge that keeps the credit channel
(:func:`~ombm.channels.raw.bridge_holds`); the bridges close the replicas when the processes they
stand for are gone.  Lost updates are repaired as locally: the writer's repair timer signals a fragment
again (the bridge then sends it again, whole if the other side lost it), the reader republishes its
counts every tick.

One thread at a time per end; :meth:`ArrayView.release` may come from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Final, Iterable, Iterator, Literal, NoReturn, Sequence, Union
from typing import cast, overload

from ombm import _layout as L
from ombm import _native
from ombm.core import namespace
from ombm.core import segment as _segment
from ombm.channels.arrays import ArrayView, check_array, pack_header, unpack_trailer
from ombm.channels.raw import CACHE_LINE, CTRL_SENT_FRAGMENTS, CTRL_SENT_MESSAGES, CTRL_STATE, CTRL_WAKE_AT
from ombm.channels.raw import KIND_STREAM, STATE_CLOSED, STATE_OPEN, TICK_S
from ombm.channels.raw import Channel, ChannelTimeout, EndOfStream, _check_count, _round_up, check_timeout
from ombm.channels.raw import REIMPORT_S, REMOTE_OPEN_S, Receiving, bridge_holds
from ombm.errors import ChannelBrokenError, OmbmError, ReadOnlyError, SegmentExistsError
from ombm.errors import SegmentFormatError, StreamProtocolError, WouldBlock
from ombm.transport import wire
from ombm.transport.fragments import split
from ombm.transport.stream_protocol import ARRAY, BYTES, MORE, REFUSED, Probe, StreamReceiver, StreamSender
from ombm.transport.stream_protocol import seal, unseal
from ombm.core.signals import Receiver, signal as _signal

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer
    from numpy.typing import NDArray

__all__ = ["Stream", "StreamStats", "DEFAULT_SLOT_BYTES", "DEFAULT_SLOTS"]

DEFAULT_SLOT_BYTES = 1 << 20  # payload bytes a slot takes whole (a 1 MiB message: one slot)
DEFAULT_SLOTS = 8
SLOT_ROOM = 256  # per slot beyond slot_bytes: the 48-byte trailer, an array header and its pad
RTO_MIN_S, RTO_MAX_S = 0.1, 2.0
DRAIN_EVERY = 32  # fragments between drains of a reader's signal FIFO (128 signals) while the hint finds them
READ_AHEAD = 32  # recv: small messages taken from the slots per native call, handed out one by one

# the wire trailer, used in place (wire owns the layout)
_HEAD, _SUM, _TAIL = wire.TRAILER_HEAD, wire.TRAILER_SUM, wire.TRAILER_TAIL
TRAILER = wire.TRAILER_SIZE
_PEEK = struct.Struct("<QQ")  # the trailer's first fields: connection id, fragment number
_DATA, _MAGIC = int(wire.Kind.DATA), wire.MAGIC

CREDIT_SUFFIX = ".credit"
CREDIT_MAGIC = b"OMBMCRD\x01"
CR_CONN, CR_PID, CR_START, CR_STATE, CR_FLAGS, CR_ACKED, CR_RELEASED = 8, 16, 24, 32, 36, 40, 48
CR_READING = 64  # the reader's reading word (_native/stream_batch.c has the offsets of its handshake)
READER_REMOTE, READER_SAW_END = 1, 2  # CR_FLAGS
_CREDIT_HEAD = struct.Struct("<8sQQQIIQQ")  # the first credit unit's fields, as a remote reader publishes them
CREDIT_FIRST, CREDIT_SLOTS, CREDIT_UNIT = 128, 8, 64
CREDIT_SIZE = CREDIT_FIRST + CREDIT_SLOTS * CREDIT_UNIT

_load64, _load32, _store64, _store32 = _native.load64, _native.load32, _native.store64, _native.store32
_cas64, _fetch_add64 = _native.cas64, _native.fetch_add64
_checksum, _copy_checksum = _native.checksum, _native.copy_checksum
_put_many, _take_many = _native.stream_put_many, _native.stream_take_many
_put_one, _reader_reading, _reader_idle = _native.stream_put_one, _native.stream_reader_reading, _native.stream_reader_idle
_monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A stream end's counters (the protocol's and this end's I/O).  ``bytes_sent``/``bytes_received``
    count message payload bytes as framed (an array's header and pad included)."""

    messages_sent: int
    fragments_sent: int
    bytes_sent: int
    resignals: int        # writer: unacknowledged fragments signalled again
    repairs: int          # writer: corrupt fragments written again
    waits: int            # writer: times it slept for credit
    unacked: int          # writer: fragments written and not acknowledged yet
    messages_received: int
    fragments_received: int
    bytes_received: int
    bad_frames: int       # reader: frames that failed the checksum (torn, corrupt): looked at again
    credit_signals: int   # reader: wake-ups sent to a waiting writer
    held_slots: int       # reader: fragments received and not released (arrays in use)


class _BufferPool:
    """Buffers of received messages that the application dropped, reused for the next ones.

    A fresh 1 MiB ``bytearray`` costs about as much as copying 1 MiB (mmap, a page
    fault per page, munmap).  CPython keeps an object while anything references it,
    so a pooled buffer referenced by nothing but the pool is free to reuse (the
    check costs one ``sys.getrefcount``).  Only buffers of at least ``MIN_BYTES``.
    """

    MIN_BYTES = 1 << 16

    def __init__(self, items: int = 2) -> None:
        self._items: list[bytearray] = []
        self._max = items if _POOL_FREE_REFS else 0

    def get(self, n: int) -> bytearray:
        if n < self.MIN_BYTES or not self._max:
            return bytearray(n)
        for b in self._items:
            if sys.getrefcount(b) == _POOL_FREE_REFS:  # the list, `b` and the argument: nobody else
                alloc = b.__alloc__()
                if alloc // 2 <= n < alloc:
                    have = len(b)
                    if have > n:
                        del b[n:]
                    elif have < n:
                        b += bytes(n - have)
                    return b
        b = bytearray(n)
        self._items.insert(0, b)
        del self._items[self._max:]
        return b

    def clear(self) -> None:
        self._items.clear()


def _calibrate_pool() -> int:
    """The reference count of a pooled buffer nobody else holds, as :meth:`_BufferPool.get`
    sees it (3 on CPython); 0 disables reuse on an interpreter without reference counts."""
    if sys.implementation.name != "cpython":
        return 0
    items = [bytearray(1)]
    for b in items:
        return sys.getrefcount(b)
    return 0


_POOL_FREE_REFS = _calibrate_pool()


# the native take copies messages shorter than this into fresh buffers; longer ones go to the pool
_NATIVE_TAKE_MAX = _BufferPool.MIN_BYTES - 1


class _ArraySource:
    """A single-slot array message: fills the slot with data, zero pad and header."""

    __slots__ = ("array", "nbytes", "pad", "header")

    def __init__(self, array: NDArray[Any], nbytes: int, pad: int, header: bytes) -> None:
        self.array, self.nbytes, self.pad, self.header = array, nbytes, pad, header

    def __len__(self) -> int:
        """The payload's length, as for the other sources."""
        return self.nbytes + self.pad + len(self.header)

    def fill(self, wbuf: memoryview, start: int) -> int:
        """Write the payload at ``start``; return its checksum."""
        import numpy as np

        n = self.nbytes
        if n:
            target = np.frombuffer(wbuf[start:start + n], dtype=self.array.dtype, count=self.array.size)
            np.copyto(target.reshape(self.array.shape), self.array, casting="no")
        at = start + n
        wbuf[at:at + self.pad] = bytes(self.pad)
        end = at + self.pad + len(self.header)
        wbuf[at + self.pad:end] = self.header
        checksum: int = _checksum(wbuf[start:end])
        return checksum


# A fragment's source: bytes, a view of the caller's buffer, or a single-slot array.
_Source = Union[bytes, memoryview, _ArraySource]
# The writer's record of a sent fragment, kept by its protocol until acknowledged:
# (seq, index, count, total, content, source, payload length, frame checksum).
_Record = tuple[int, int, int, int, int, _Source, int, int]


class _Taken(enum.Enum):
    AGAIN = 0  # the reader took a fragment; its message is not complete yet


_AGAIN: Final = _Taken.AGAIN


def _timeout_error(message: str, partial: bool) -> ChannelTimeout:
    exc = ChannelTimeout(message)
    setattr(exc, "partial", partial)  # whether part of the message went (documented on send)
    return exc


class Stream(Channel):
    """An ordered, reliable stream of byte messages (and numpy arrays) from one writer to one reader.

    ``Stream.create(name)`` in the writer; ``Stream.open(name)`` in the reader.
    """

    KIND = KIND_STREAM
    max_payload: int
    _tx: StreamSender[_Record]
    _rx: StreamReceiver
    _signals: Receiver  # the reader's signal FIFO (Channel._receiver, never None once open)

    # ================================================================ writer
    @classmethod
    def create(cls, name: str | None = None, *, slot_bytes: int = DEFAULT_SLOT_BYTES,
               slots: int = DEFAULT_SLOTS) -> Stream:
        """Create the stream (the writing end).

        A message of up to ``slot_bytes`` bytes takes one slot (and so does an array of
        up to ``slot_bytes`` of data); a longer one is cut into fragments of
        ``max_payload`` (a little more than ``slot_bytes``) bytes.  ``slots`` is the
        window: fragments written and not yet released by the reader.
        ``SegmentExistsError`` if the name is taken (a stream has one writer).
        """
        slot_bytes = _check_count(slot_bytes, "slot_bytes")
        slots = _check_count(slots, "slots")
        name = namespace.new_name() if name is None else namespace.validate_name(name)
        if len(name) + len(CREDIT_SUFFIX) > L.MAX_NAME:
            raise ValueError(f"stream name too long: at most {L.MAX_NAME - len(CREDIT_SUFFIX)} characters")
        slot_size = _round_up(slot_bytes + SLOT_ROOM, CACHE_LINE)
        conn = namespace.new_token()
        credit = _segment.create_segment(CREDIT_SIZE, name=name + CREDIT_SUFFIX, unit=CREDIT_UNIT)
        try:
            with credit.bind(writable=True) as init:
                init.buffer[CR_CONN:CR_CONN + 8] = conn.to_bytes(8, "little")
                init.buffer[0:8] = CREDIT_MAGIC  # published last
            self: Stream = cls._create(name, slot_size, slots, connection_id=conn)
        except BaseException:
            credit.release()
            raise
        try:
            self._setup_writer(credit)
        except BaseException:
            self._credit_seg = credit
            self.close(flush_timeout=0)
            raise
        return self

    def _setup_writer(self, credit: _segment.Segment) -> None:
        self._credit_seg = credit
        self._creg = credit.bind(writable=False)
        self._cbase = self._creg.address
        self.max_payload = self.slot_size - TRAILER
        self._wbuf = self._buf
        self._write = self.region.write
        writer = self.region.native_writer
        assert writer is not None  # a writable binding has the native write path
        self._writer_path = writer
        self._signal_unit = writer.signal  # a fragment written unsignalled: its slot's signal
        self._tx = StreamSender(self.connection_id, self.slots, min_rto=RTO_MIN_S, max_rto=RTO_MAX_S)
        self._pieces: Sequence[_Source] = ()  # the message being sent (the protocol counts its fragments)
        self._quiet = False      # in a burst of send_many(): fragments are written without their signal
        self._unsignalled = -1   # ... the offset of the last one so written, until _signal_burst()
        self._records: list[_Record] = []  # send_many: the records of a run written natively
        self._reader_checked = 0.0
        self._resignals = self._repairs = self._waits = 0
        receiver = Receiver()
        try:
            receiver.add_handler(self._cbase + CREDIT_FIRST, CREDIT_SLOTS * CREDIT_UNIT, _wake_only)
        except BaseException:
            receiver.close()
            raise
        self._receiver = receiver

    def _check_writer_side(self) -> None:
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"stream {self.name!r} was opened for reading: it cannot send")

    def _fragments(self, data: ReadableBuffer) -> tuple[Sequence[_Source], int]:
        if type(data) is bytes:
            return split(data, self.max_payload), len(data)
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"a message must be bytes-like, not {type(data).__name__}") from None
        return split(view, self.max_payload), len(view)

    def send(self, data: ReadableBuffer, timeout: float | None = None) -> None:
        """Send one message (bytes-like, any size), waiting for credit up to ``timeout``.

        :class:`~ombm.channels.raw.ChannelTimeout` if the reader did not make room in time
        (nothing was sent, or, for a message longer than the window, the rest is sent
        first by the next ``send``/``flush``: ``exc.partial``);
        :class:`~ombm.ChannelBrokenError` if the reader closed or died.
        """
        if self._closed or not self.writable:
            self._check_writer_side()
        if timeout is not None and (type(timeout) is not float or not timeout >= 0):
            timeout = check_timeout(timeout)
        tx = self._tx
        if type(data) is bytes and not tx.count:  # the common case: one native call writes it, if it fits
            now = _monotonic()
            if now - self._reader_checked >= TICK_S or _load32(self._cbase + CR_STATE) == STATE_CLOSED:
                self._check_reader(now)
            seq = tx.next_seq
            if seq < tx.limit or self._refresh(now):
                record = _put_one(self._wbuf, self.first, self.slot_size, self.slots, self.max_payload,
                                  self.connection_id, seq, tx.limit, data, self._cbase, self._writer_path)
                if record is not None:  # (as _put_one, inline: a call costs a tenth of the send)
                    tx.sent_one(record, record[6], now)
                    timer = tx.deadline
                    if timer is not None and now >= timer:
                        self._service(now)
                    return
        pieces, total = self._fragments(data)
        self._send(pieces, total, BYTES, timeout)

    def _put_one(self, data: bytes, now: float) -> bool:
        """Write ``data`` as the next fragment (credit checked) with one native call that signals
        it, unless the reader says it is reading (it looks again before it waits); False (nothing
        written) if it takes more than one fragment."""
        tx = self._tx
        record = _put_one(self._wbuf, self.first, self.slot_size, self.slots, self.max_payload, self.connection_id,
                          tx.next_seq, tx.limit, data, self._cbase, self._writer_path)
        if record is None:
            return False
        tx.sent_one(record, record[6], now)
        timer = tx.deadline
        if timer is not None and now >= timer:
            self._service(now)
        return True

    def _put_run(self, msgs: list[Any], start: int, limit: int, now: float) -> int:
        """Write the run of one-fragment bytes messages from ``msgs[start]`` on, below fragment
        ``limit``, with one native call, unsignalled; the protocol counts them sent.  How many went."""
        records, tx = self._records, self._tx
        try:
            done, nbytes = _put_many(self._wbuf, self.first, self.slot_size, self.slots, self.max_payload,
                                     self.connection_id, tx.next_seq, limit, msgs, start, records)
        except BaseException:  # out of memory: the frames recorded before it went (written and sealed)
            if records:
                tx.sent_run(records, sum(r[6] for r in records), now)
                records.clear()
            raise
        if done:
            tx.sent_run(records, nbytes, now)
            records.clear()
        return done

    def send_many(self, messages: Iterable[ReadableBuffer], timeout: float | None = None) -> None:
        """Send several messages in order, as :meth:`send` would one by one, with one signal per
        burst: the fragments written without waiting are signalled once, by the last of them (and
        before the writer waits for credit), so the reader takes them with one wake-up.

        ``timeout`` covers the whole call.  Every message is checked before any is sent
        (``TypeError``: nothing sent).  On :class:`~ombm.channels.raw.ChannelTimeout`,
        ``exc.sent`` is how many messages went whole, and ``exc.partial`` whether part of the
        next one did (its rest is sent first by the next send, as for :meth:`send`).
        """
        self._check_writer_side()
        timeout = check_timeout(timeout)
        msgs = messages if type(messages) is list else list(messages)
        if not msgs:
            return
        general = {i: self._fragments(m) for i, m in enumerate(msgs) if type(m) is not bytes}  # checked first
        deadline = None if timeout is None else _monotonic() + timeout
        # quiet only for a reader on this host: a bridge sends a fragment to another host on its signal
        cbase = self._cbase
        quiet = self._quiet = bool(_load64(cbase + CR_PID)) and not _load32(cbase + CR_FLAGS) & READER_REMOTE
        tx, emit = self._tx, self._emit
        i = 0
        try:
            now = _monotonic()
            self._check_reader(now)
            while i < len(msgs):
                if not tx.count and (tx.next_seq < tx.limit or self._refresh(now)):
                    if quiet:  # a run of one-fragment bytes messages the window has room for: one native call
                        done = self._put_run(msgs, i, tx.limit, now)
                        if done:
                            i += done
                            self._unsignalled = self.first + (tx.next_seq - 1) % self.slots * self.slot_size
                            continue
                    elif type(msgs[i]) is bytes and self._put_one(cast(bytes, msgs[i]), now):
                        i += 1  # written and signalled
                        continue
                pieces, total = general.get(i) or self._fragments(msgs[i])
                seq = tx.next_seq
                if len(pieces) == 1 and not tx.count and (seq < tx.limit or self._refresh(now)):
                    # a one-fragment message the window has room for, written by Python (any buffer)
                    source = pieces[0]
                    tx.begin(1, total, BYTES)
                    csum = emit(seq, 0, 1, total, BYTES, source, total)
                    tx.sent((seq, 0, 1, total, BYTES, source, total, csum), now)
                else:
                    self._send(pieces, total, BYTES, None if deadline is None else max(0.0, deadline - _monotonic()))
                    now = _monotonic()
                i += 1
            self._service(_monotonic())
        except ChannelTimeout as exc:
            setattr(exc, "sent", i)
            raise
        finally:
            self._quiet = False
            self._signal_burst()

    def _send(self, pieces: Sequence[_Source], total: int, content: int, timeout: float | None) -> None:
        now = _monotonic()
        deadline = None if timeout is None else now + timeout
        self._check_reader(now)
        tx = self._tx
        if tx.count:
            try:
                self._push(deadline, now)  # the rest of a message an earlier timeout interrupted
            except ChannelTimeout:
                raise _timeout_error(f"stream {self.name!r}: still sending the rest of an earlier message; "
                                     "this one was not sent", False) from None
        tx.begin(len(pieces), total, content)
        self._pieces = pieces
        self._push(deadline, now)

    async def send_async(self, data: ReadableBuffer, timeout: float | None = None) -> None:
        """:meth:`send` for asyncio. A message the window has room for is sent at once, in the
        event loop's thread; when the reader has not made room (or the message is longer than the
        window), :meth:`send` waits for its credit in the loop's default executor (a worker thread:
        the writer's wait is a futex handshake with the reader). Do not use the writing end from
        elsewhere meanwhile. Cancelling the awaiting task does not stop a send already handed to the
        worker thread."""
        self._check_writer_side()
        try:
            self.send_nowait(data)
            return
        except (WouldBlock, ValueError):  # full, or more fragments than the window: send() streams it
            pass
        await asyncio.get_running_loop().run_in_executor(None, self.send, data, timeout)

    async def flush_async(self, timeout: float | None = None) -> None:
        """:meth:`flush` for asyncio (in the loop's default executor, as :meth:`send_async` waits)."""
        self._check_writer_side()
        await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def send_nowait(self, data: ReadableBuffer) -> None:
        """Send one message now or raise :class:`~ombm.WouldBlock` (nothing sent) if the window is full.

        A message of more fragments than the window can never go without waiting:
        ``ValueError``; use :meth:`send`.
        """
        self._check_writer_side()
        pieces, total = self._fragments(data)
        self._nowait(pieces, total, BYTES)

    def _nowait(self, pieces: Sequence[_Source], total: int, content: int) -> None:
        count = len(pieces)
        if count > self.slots:
            raise ValueError(f"a message of {count} fragments never fits the window of {self.slots} "
                             "slots at once: use send(), which streams it")
        now = _monotonic()
        self._check_reader(now)
        tx = self._tx
        if tx.count and not self._push(None, now, nowait=True):
            raise WouldBlock(f"stream {self.name!r} is still sending the previous message")
        if tx.next_seq + count > tx.limit:
            self._refresh(now)
            if tx.next_seq + count > tx.limit:
                self._service(now)
                raise WouldBlock(f"stream {self.name!r} is full: the reader has not released enough slots")
        tx.begin(count, total, content)
        self._pieces = pieces
        self._push(None, now, nowait=True)

    def send_array(self, array: NDArray[Any], timeout: float | None = None) -> None:
        """Send a numpy array; the reader gets it with :meth:`recv_array` (zero copy if it fits a slot)."""
        self._check_writer_side()
        timeout = check_timeout(timeout)
        pieces, total = self._array_pieces(array)
        self._send(pieces, total, ARRAY, timeout)

    def send_array_nowait(self, array: NDArray[Any]) -> None:
        """:meth:`send_array` or :class:`~ombm.WouldBlock`."""
        self._check_writer_side()
        pieces, total = self._array_pieces(array)
        self._nowait(pieces, total, ARRAY)

    def _array_pieces(self, array: NDArray[Any]) -> tuple[Sequence[_Source], int]:
        array = check_array(array)
        header = pack_header(array)
        nbytes = array.nbytes
        pad = -(nbytes + len(header) + TRAILER) % CACHE_LINE  # the frame (and the data) 64-byte aligned
        plen = nbytes + pad + len(header)
        if plen <= self.max_payload:
            return [_ArraySource(array, nbytes, pad, header)], plen
        payload = array.tobytes() + header  # larger than a slot: fragmented, arrives as a copy
        return split(payload, self.max_payload), len(payload)

    def _push(self, deadline: float | None, now: float, nowait: bool = False) -> bool:
        """Write the message's fragments as credit allows; True once all are written.

        ``now`` is taken once per call (and after each wait): the protocol only times repairs."""
        tx = self._tx
        pieces = self._pieces
        count, total, content = tx.count, tx.total, tx.content
        while True:
            seq = tx.next_seq
            if seq >= tx.limit and not self._refresh(now):
                if nowait:
                    return False
                self._block(deadline, now)
                now = _monotonic()
                continue
            index = tx.index
            source = pieces[index]
            plen = len(source)
            csum = self._emit(seq, index, count, total, content, source, plen)
            if tx.sent((seq, index, count, total, content, source, plen, csum), now):
                break
        self._pieces = ()
        timer = tx.deadline
        if timer is not None and now >= timer:
            self._service(now)
        return True

    def _emit(self, seq: int, index: int, count: int, total: int, content: int, source: _Source,
              plen: int) -> int:
        """Write one DATA frame ending at its slot's end; its checksum, stored last, signals.

        The payload is copied and checksummed in one pass; the frame checksum continues that
        CRC over the trailer (see :func:`~ombm.transport.stream_protocol.seal`)."""
        end = self.first + (seq % self.slots + 1) * self.slot_size
        start = end - TRAILER - plen
        wbuf = self._wbuf
        if isinstance(source, _ArraySource):
            psum = source.fill(wbuf, start)
        else:
            psum = _copy_checksum(wbuf[start:start + plen], source)
        head = _HEAD.pack(self.connection_id, seq, total, plen, content, index, count, _DATA, 0, _MAGIC)
        csum = seal(head, psum)
        if self._quiet:  # a burst of send_many(): its last fragment is signalled (_signal_burst)
            wbuf[end - TRAILER:end] = head + _SUM.pack(csum)
            self._unsignalled = end - self.slot_size
        else:
            self._write(end - TRAILER, head + _SUM.pack(csum))  # completes the slot: one signal
        return csum

    def _signal_burst(self) -> None:
        """Signal the last fragment a burst wrote without its signal: the reader then takes it
        and every fragment before it (it looks from the one it expects next); not while the reader
        says it is reading (it looks again before it waits)."""
        if self._unsignalled >= 0:
            offset, self._unsignalled = self._unsignalled, -1
            if not _reader_reading(self._cbase):
                self._signal_unit(offset)

    def _refresh(self, now: float) -> bool:
        """Read the reader's counts into the protocol; True if the next fragment may be written."""
        cbase = self._cbase
        released = _load64(cbase + CR_RELEASED)  # before acked: released <= acked at the reader
        return self._tx.on_credit(_load64(cbase + CR_ACKED), released, now)

    def _block(self, deadline: float | None, now: float) -> None:
        """Sleep until the reader signals credit, a tick passes, or the deadline (ChannelTimeout).

        The writer asks to be woken only once half a window is free again (the protocol's
        wake target): a wake-up through the kernel costs tens of µs, once per half window,
        not per slot.
        """
        self._signal_burst()  # the reader must see what this burst wrote before the writer sleeps
        self._check_reader(now)
        self._service(now)
        tx = self._tx
        tx.blocked(now)
        wake_at = self._ctrl + CTRL_WAKE_AT
        target = tx.wake_target()
        if not _cas64(wake_at, 0, target):  # a full barrier before re-reading the counters
            _store64(wake_at, target)
        try:
            if self._refresh(now):
                return
            self._waits += 1
            if not self._wait(deadline):
                self._timeout()
        finally:
            _store64(wake_at, 0)

    def _timeout(self) -> None:
        tx = self._tx
        started = bool(tx.count) and not tx.abandon()
        if not tx.count:
            self._pieces = ()  # not one fragment went: the message was not sent
        raise _timeout_error(
            f"stream {self.name!r}: the reader did not make room in time"
            + ("; the rest of the message is sent first by the next send()/flush()" if started else
               "; the message was not sent"), started)

    def _check_reader(self, now: float) -> None:
        cbase = self._cbase
        if _load32(cbase + CR_STATE) == STATE_CLOSED:
            raise ChannelBrokenError(f"the reader closed stream {self.name!r}")
        if now - self._reader_checked >= TICK_S:
            self._reader_checked = now
            self._check_intact()
            pid, start = _load64(cbase + CR_PID), _load64(cbase + CR_START)
            if pid and start and not self._reader_alive(pid, start):
                raise ChannelBrokenError(f"the reader of stream {self.name!r} died")

    def _reader_alive(self, pid: int, start: int) -> bool:
        """A reader on another host (its flags say) lives while the bridge keeps the credit channel for it."""
        if _load32(self._cbase + CR_FLAGS) & READER_REMOTE:
            return bridge_holds(self._credit_seg.directory)
        return namespace.is_alive(pid, start)

    def _check_intact(self) -> None:
        """Once a tick while waiting (and see Channel._check_intact): the credit segment too."""
        super()._check_intact()
        if self._creg.broken:
            raise ChannelBrokenError(f"stream {self.name!r} is broken: another process shrank its credit segment")

    def _service(self, now: float) -> None:
        """Run the protocol's repair timer (paper §4's timer); repair the fragment it finds due."""
        timer = self._tx.deadline
        if timer is None or now < timer:
            return
        self._refresh(now)  # an acknowledgement restarts the timer; a probe's answer is in the words
        due = self._tx.handle_timer(now)
        if due is not None and not isinstance(due, Probe):
            self._repair(due)

    def _repair(self, record: _Record) -> None:
        """Intact in its slot: signal it again (its signal was lost, or the reader is slow);
        corrupt: write it again from its source."""
        seq, index, count, total, content, source, plen, csum = record
        end = self.first + (seq % self.slots + 1) * self.slot_size
        wbuf = self._wbuf
        trailer = bytes(wbuf[end - TRAILER:end])
        if _SUM.unpack_from(trailer, TRAILER - 8)[0] == csum and \
                unseal(trailer, _checksum(wbuf[end - TRAILER - plen:end - TRAILER])) is not None:
            _signal(self._base + end - self.slot_size)
            self._resignals += 1
            return
        if self._emit(seq, index, count, total, content, source, plen) != csum:
            raise ChannelBrokenError(
                f"stream {self.name!r}: the buffer passed to send() changed before the reader "
                "acknowledged it, and its frame needs repair: pass bytes, or do not modify it "
                "before flush() returns")
        self._repairs += 1

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far was received by the reader (repairing as needed)."""
        self._check_writer_side()
        timeout = check_timeout(timeout)
        now = _monotonic()
        deadline = None if timeout is None else now + timeout
        tx = self._tx
        if tx.count:
            self._push(deadline, now)
        wake_at = self._ctrl + CTRL_WAKE_AT
        while True:
            now = _monotonic()
            self._refresh(now)
            if not tx.unacked:
                return
            self._check_reader(now)
            self._service(now)
            if not _cas64(wake_at, 0, tx.next_seq):  # a full barrier, then look again
                _store64(wake_at, tx.next_seq)
            try:
                self._refresh(now)
                if not tx.unacked:
                    return
                waited = self._wait(deadline)
            finally:
                _store64(wake_at, 0)
            if not waited:
                self._refresh(_monotonic())
                if not tx.unacked:
                    return
                raise ChannelTimeout(f"stream {self.name!r}: {tx.unacked} fragments not "
                                     f"acknowledged within {timeout} s")

    # ================================================================ reader
    @classmethod
    def open(cls, name: str, *, timeout: float | None = 0.0) -> Stream:
        """Open the reading end of stream ``name``, waiting up to ``timeout`` for it to exist.

        A stream has one reader: ``SegmentExistsError`` if a live one has it open;
        ``ChannelBrokenError`` if its reader died (the stream is broken for good).
        A remote name ``name@HOST:PORT`` reads a stream written on another host through the
        bridges (docs/net.md): it waits at least ``REMOTE_OPEN_S`` for both replicas to arrive.
        """
        self: Stream = cls._open(name, timeout)
        try:
            self._setup_reader(name, timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _open_credit(self, name: str, timeout: float | None) -> _segment.Segment:
        """The credit channel (across hosts: its replica, once its first unit arrived)."""
        if not self.remote:
            return _segment.open_segment(self.name + CREDIT_SUFFIX)
        local, _, where = name.partition("@")
        credit_name = f"{local}{CREDIT_SUFFIX}@{where}"
        deadline = _monotonic() + (REMOTE_OPEN_S if timeout is None else max(timeout, REMOTE_OPEN_S))
        while True:
            credit = _segment.open_segment(credit_name)
            asked = _monotonic()
            with credit.bind(writable=False) as view:
                while bytes(view.buffer[0:8]) != CREDIT_MAGIC and _monotonic() - asked < REIMPORT_S:
                    time.sleep(0.005)  # the image follows the bridge's answer
                arrived = bytes(view.buffer[0:8]) == CREDIT_MAGIC
            if arrived or _monotonic() >= deadline:
                return credit
            credit.release()  # its image is best effort: ask the bridge to import it again

    def _setup_reader(self, name: str, timeout: float | None) -> None:
        self._lock = threading.RLock()
        self._claimed = False
        self._ending = False
        # messages taken from the slots (acknowledged, released) and not handed out yet: recv's read-ahead
        self._ready: collections.deque[bytearray] = collections.deque()
        # the reading word is set (CR_READING): the writer leaves signals out; a reader on another host
        # never sets it (its bridge needs every signal)
        self._reading = False
        self._ahead = READ_AHEAD  # how many messages a take of one may take (recv_many's first: one)
        credit = self._open_credit(name, check_timeout(timeout))
        self._credit_seg = credit
        if credit.unit != CREDIT_UNIT or credit.size < CREDIT_SIZE:
            raise SegmentFormatError(f"segment {credit.name!r} is not a stream credit channel")
        self._creg = credit.bind(writable=True)
        cbase = self._cbase = self._creg.address
        cbuf = self._creg.buffer
        conn = int.from_bytes(cbuf[CR_CONN:CR_CONN + 8], "little")
        if bytes(cbuf[0:8]) != CREDIT_MAGIC or conn != self.connection_id:
            raise SegmentFormatError(f"segment {credit.name!r} does not belong to stream {self.name!r}")
        pid, start = namespace.me()
        if _load32(cbase + CR_STATE) == STATE_CLOSED:
            raise ChannelBrokenError(f"the reader of stream {self.name!r} closed it: a stream is read once")
        if not _cas64(cbase + CR_PID, 0, pid):
            other, other_start = _load64(cbase + CR_PID), _load64(cbase + CR_START)
            if (other_start == 0 or self.remote or _load32(cbase + CR_FLAGS) & READER_REMOTE
                    or namespace.is_alive(other, other_start)):  # a pid of another host: taken
                raise SegmentExistsError(f"stream {self.name!r} already has a reader (pid {other}); a "
                                         "Stream has exactly one: use a RawChannel to multicast")
            raise ChannelBrokenError(f"the reader of stream {self.name!r} died: the stream is broken")
        self._claimed = True
        _store64(cbase + CR_START, start)
        _store32(cbase + CR_STATE, STATE_OPEN)
        self._reader_flags = READER_REMOTE if self.remote else 0
        _store32(cbase + CR_FLAGS, self._reader_flags)
        self.max_payload = self.slot_size - TRAILER
        self._take_max = min(self.max_payload, _NATIVE_TAKE_MAX)  # longer messages: the pool's buffers
        self._rx = StreamReceiver(self.connection_id, self.slots, self.max_payload)
        self._published = 0  # the released count in shared memory
        self._message: tuple[bytearray, memoryview] | None = None  # being reassembled (the protocol counts it)
        self._pool = _BufferPool()
        self._credit_next = 0
        # the look hint: set by every signal, cleared when a look finds the next fragment not there yet;
        # set at first: frames may predate this reader
        self._hint = hint = bytearray(b"\x01")
        self._batching = False  # recv_many: acknowledgement and release published once, at the batch's end
        self._drain_at = 0  # recv drains the signal FIFO when the next fragment reaches this
        self._credit_signals = 0

        def on_signal(address: int) -> None:
            hint[0] = 1

        self._signals = self._own_receiver(self.first, self.first + self.slots * self.slot_size, on_signal)
        self._publish_credit()

    def _publish_credit(self) -> None:
        """A reader on another host: rewrite the first credit unit from this reader's own copy of its
        fields, with an ordinary write, so that the bridge sends it to the writer's host (a copy the
        bridge wrote here, an image that came late, never stands)."""
        if not self.remote:
            return
        state = STATE_CLOSED if self._ending else STATE_OPEN
        pid, start = namespace.me()
        self._creg.write(0, _CREDIT_HEAD.pack(CREDIT_MAGIC, self.connection_id, pid, start, state,
                                              self._reader_flags, self._rx.expected, self._published)
                         + bytes(CREDIT_UNIT - _CREDIT_HEAD.size))

    def _check_reader_side(self) -> None:
        self._check_open()
        if self.writable:
            raise TypeError(f"stream {self.name!r} is the writing end: it cannot receive")

    def recv(self, timeout: float | None = None) -> bytearray | ArrayView:
        """The next message: a ``bytearray`` you own (an :class:`ArrayView` for an array).

        Waits up to ``timeout`` (``None``: forever): :class:`~ombm.channels.raw.ChannelTimeout`;
        after the writer's last message :class:`~ombm.channels.raw.EndOfStream`; a dead writer
        :class:`~ombm.ChannelBrokenError`.
        """
        if self._closed or self.writable:
            self._check_reader_side()
        if self._ready:  # taken ahead: the common case of a reader that keeps up
            if timeout is not None and (type(timeout) is not float or not timeout >= 0):
                check_timeout(timeout)  # raises
            return self._ready.popleft()
        return self._recv(check_timeout(timeout), None)

    def recv_nowait(self) -> bytearray | ArrayView:
        """:meth:`recv` without waiting: :class:`~ombm.WouldBlock` if no whole message is there."""
        self._check_reader_side()
        msg = self._poll(True, None)
        if msg is None:
            self._signals.dispatch_pending()
            msg = self._poll(True, None)
        if msg is None:
            self._check_writer()
            raise WouldBlock(f"no complete message on stream {self.name!r}")
        return msg

    def recv_many(self, max_messages: int = 64, timeout: float | None = None) -> list[bytearray | ArrayView]:
        """Every whole message there now, in order, at most ``max_messages``: at least one, waiting
        up to ``timeout`` for the first (as :meth:`recv` does, with its errors).

        One wake-up for the lot, and the acknowledgement and the credit for the batch published
        once, at its end (a waiting writer is woken then).  An error found after the first message
        (a broken or forged frame) ends the batch early: the next call raises it.
        """
        self._check_reader_side()
        max_messages = _check_count(max_messages, "max_messages")
        timeout = check_timeout(timeout)
        out = self._rest_of_batch([], max_messages)
        if out:
            return out
        self._ahead = 1  # the batch takes the rest: reading ahead here measured slower (docs/benchmarks.md)
        try:
            first = self._recv(timeout, None)
        finally:
            self._ahead = READ_AHEAD
        return self._rest_of_batch([first], max_messages)

    async def recv_many_async(self, max_messages: int = 64,
                              timeout: float | None = None) -> list[bytearray | ArrayView]:
        """:meth:`recv_many` for asyncio: awaits the first message as :meth:`recv_async` does."""
        self._check_reader_side()
        max_messages = _check_count(max_messages, "max_messages")
        self._ahead = 1  # as recv_many
        try:
            first = await self._run_async(self._receiving(check_timeout(timeout), None))
        finally:
            self._ahead = READ_AHEAD
        return self._rest_of_batch([first], max_messages)

    def _rest_of_batch(self, out: list[bytearray | ArrayView], limit: int) -> list[bytearray | ArrayView]:
        """Append the messages there now to ``out`` (up to ``limit`` in all), publishing the
        acknowledgement and the credit once, at the end."""
        if len(out) >= limit:
            return out
        with self._lock:  # an array's finalizer (any thread) then publishes after the batch
            self._batching = True
            try:
                poll, dispatch, run = self._poll, self._signals.dispatch_pending, self._take_run
                while len(out) < limit:
                    if run(out, limit):
                        continue
                    msg = poll(False, None)
                    if msg is None and not (dispatch() and (msg := poll(False, None)) is not None):
                        break
                    out.append(msg)
                else:
                    dispatch()  # the batch's signals: the FIFO must not fill while the hint finds messages
            except OmbmError:
                pass  # raised again by the next receive, where nothing was taken yet
            finally:
                self._batching = False
                _store64(self._cbase + CR_ACKED, self._rx.expected)
                self._publish_released()
        return out

    def _take_run(self, out: list[bytearray | ArrayView], limit: int) -> bool:
        """In a batch: append the run of one-fragment bytes messages there now (up to ``limit`` in
        all), taken by one native call that checks each as :meth:`_take` does; True if it took any.
        Anything else (a message of the buffer pool's size or more, an array, a frame not there,
        torn or forged) is left to :meth:`_poll`."""
        ready = self._ready
        if ready:  # taken ahead by recv: first
            while ready and len(out) < limit:
                out.append(ready.popleft())
            return True
        rx = self._rx
        if rx.count:
            return False
        seq = rx.expected
        got, nbytes = _take_many(self._buf, self.first, self.slot_size, self.slots, self._take_max,
                                 self.connection_id, seq, limit - len(out))
        if not got:
            return False
        rx.accept_run(len(got), nbytes)
        rx.release_run(seq, len(got))  # published at the batch's end
        out += got
        self._mark_reading()
        return True

    @overload
    def recv_array(self, timeout: float | None = None, *, copy: Literal[False] = False) -> ArrayView: ...

    @overload
    def recv_array(self, timeout: float | None = None, *, copy: Literal[True]) -> NDArray[Any]: ...

    def recv_array(self, timeout: float | None = None, *, copy: bool = False) -> ArrayView | NDArray[Any]:
        """The next message, which must be an array: an :class:`ArrayView` (or, with ``copy``, an ndarray).

        ``TypeError`` (the message stays) if the next message is bytes.
        """
        self._check_reader_side()
        view = self._recv(check_timeout(timeout), ARRAY)
        assert isinstance(view, ArrayView)  # the protocol refused any other content
        if not copy:
            return view
        with view:
            return view.copy()

    def __iter__(self) -> Iterator[bytearray | ArrayView]:
        """Messages until the writer closes the stream."""
        while True:
            try:
                yield self.recv()
            except EndOfStream:
                return

    async def recv_async(self, timeout: float | None = None) -> bytearray | ArrayView:
        """:meth:`recv` for asyncio: awaits the next message in the running event loop (the FIFO's
        doorbell wakes it: no thread). Cancelling the awaiting task takes no message: the next
        ``recv``/``recv_async`` gets it."""
        self._check_reader_side()
        return await self._run_async(self._receiving(check_timeout(timeout), None))

    async def __aiter__(self) -> AsyncIterator[bytearray | ArrayView]:
        """``async for message in stream``: messages until the writer closes the stream."""
        while True:
            try:
                yield await self.recv_async()
            except EndOfStream:
                return

    def _recv(self, timeout: float | None, want: int | None) -> bytearray | ArrayView:
        # the common case of a reader that keeps up: no loop to set up, a small message taken ahead, or
        # one native call that takes it and those behind it
        ready = self._ready
        if ready and want is None:
            return ready.popleft()
        msg: bytearray | ArrayView | None = self._take_one() if want is None and not self._rx.count else None
        if msg is None:
            msg = self._poll(False, want)
        if msg is None:
            return self._run(self._receiving(timeout, want))
        if self._rx.expected >= self._drain_at:  # a reader that finds messages by the hint drains its
            self._drain_at = self._rx.expected + DRAIN_EVERY  # FIFO now and then, or it would fill
            self._signals.dispatch_pending()
        return msg

    def _receiving(self, timeout: float | None, want: int | None) -> Receiving[bytearray | ArrayView]:
        """The receive loop of :meth:`recv` and :meth:`recv_async` (see ``channels.raw.Receiving``)."""
        deadline = None if timeout is None else _monotonic() + timeout
        receiver = self._signals
        force = False
        while True:
            msg = self._poll(force, want)
            if msg is not None:
                return msg
            force = False
            if receiver.dispatch_pending():
                continue
            if self._writer_gone():
                msg = self._poll(True, want)
                if msg is not None:
                    return msg
                self._check_writer()
            if deadline is None:
                left = TICK_S
            else:
                left = deadline - _monotonic()
                if left <= 0:
                    msg = self._poll(True, want)
                    if msg is not None:
                        return msg
                    raise ChannelTimeout(f"no message on stream {self.name!r} within {timeout} s")
                left = min(left, TICK_S)
            if self._reading:  # the writer may have left signals out: say so, then look once more
                self._reading = False
                _reader_idle(self._cbase)
                msg = self._poll(True, want)
                if msg is not None:
                    return msg
            force = not (yield left)  # a tick without a signal: look anyway

    def _writer_gone(self) -> bool:
        if self._writer_state() == STATE_CLOSED:
            return True
        if not self._tick_due():
            return False
        self._check_intact()
        if self.remote:
            with self._lock:
                self._publish_credit()  # once a tick: an update of the counts may have been lost
        else:
            self._check_words()
        return not self._writer_alive()

    def _check_words(self) -> None:
        """Once a tick while waiting: the credit words must hold what this reader published (a
        forged low count would stall the writer for good; a high one lets it overwrite slots)."""
        with self._lock:
            cbase, rx = self._cbase, self._rx
            acked, released = _load64(cbase + CR_ACKED), _load64(cbase + CR_RELEASED)
            if (acked, released) != (rx.expected, self._published) and not self._ending:
                raise StreamProtocolError(
                    f"stream {self.name!r}: another process changed the counts this reader publishes "
                    f"(acked {acked}, released {released}; published {rx.expected}, {self._published}): "
                    "forged credit")
            if not self._reading and _load64(cbase + CR_READING):  # it waits: the writer must signal
                raise StreamProtocolError(
                    f"stream {self.name!r}: another process set the reading word of this waiting reader "
                    "(the writer would leave its signals out): forged")

    def _check_writer(self) -> None:
        if self._writer_state() == STATE_CLOSED:
            base = self._ctrl
            if self.remote and not self._reader_flags & READER_SAW_END:
                with self._lock:  # the writer waits (a while) for a reader on another host to see its end
                    self._reader_flags |= READER_SAW_END
                    self._publish_credit()
                    self._signal_credit()
            try:  # exactly what the writer reports it sent, between messages: a clean end
                self._rx.check_end(_load64(base + CTRL_SENT_FRAGMENTS), _load64(base + CTRL_SENT_MESSAGES))
            except StreamProtocolError as exc:
                raise StreamProtocolError(f"the writer closed stream {self.name!r}, but {exc}") from None
            raise EndOfStream(f"the writer closed stream {self.name!r}: no more messages")
        if not self._writer_alive():
            raise ChannelBrokenError(f"the writer of stream {self.name!r} died"
                                     + (" (or its host's bridge let go of the stream)" if self.remote else ""))

    def _poll(self, force: bool, want: int | None) -> bytearray | ArrayView | None:
        """Take the fragments that are there, in order; the message they complete, or None.

        A signal only says "look": the writer signals a fragment after it completed it and every
        fragment before it (a burst of :meth:`send_many` signals only its last), so after any signal
        the reader looks at the fragment it expects next, and goes on while fragments are there.
        It stops looking (the hint is cleared) when that fragment is not there yet: everything
        signalled until then has been taken."""
        ready = self._ready
        if ready:  # taken ahead by recv: the next message
            if want is not None:
                self._refuse(BYTES)
            return ready.popleft()
        hint, buf, slots, size, rx = self._hint, self._buf, self.slots, self.slot_size, self._rx
        conn = self.connection_id
        while True:
            if not (force or hint[0]):
                return None  # no signal since the last look found nothing
            seq = rx.expected
            end = self.first + (seq % slots + 1) * size
            peek = _PEEK.unpack_from(buf, end - TRAILER)
            if peek != (conn, seq):
                if peek[1] > seq and peek[0] == conn:
                    self._overtaken(seq, end)
                hint[0] = 0
                return None  # not written yet: its signal (or a later one) comes when it is
            msg = self._take(seq, end, want)
            if msg is _AGAIN:
                force = True  # the next fragment may have been signalled while we copied
                continue
            if msg is None:
                hint[0] = 0  # being written (or corrupt, awaiting repair): its signal comes when it is
            return msg

    def _take_one(self) -> bytearray | None:
        """The next message if it is a one-fragment bytes message shorter than 64 KiB, there and
        intact, taken by one native call (:meth:`_take`'s checks) with the run of such messages
        behind it (at most ``READ_AHEAD``), which wait in ``_ready``: the lot acknowledged and
        released at once."""
        rx = self._rx
        seq = rx.expected
        got, nbytes = _take_many(self._buf, self.first, self.slot_size, self.slots, self._take_max,
                                 self.connection_id, seq, self._ahead)
        if not got:
            return None
        n = len(got)
        rx.accept_run(n, nbytes)
        if self._batching:  # the batch holds the lock and publishes at its end
            rx.release_run(seq, n)
        else:
            _store64(self._cbase + CR_ACKED, seq + n)
            with self._lock:
                if not self._ending:
                    rx.release_run(seq, n)
                    self._publish_released()
        self._mark_reading()
        if n == 1:
            return got[0]
        ready = self._ready
        ready.extend(got)
        return ready.popleft()

    def _mark_reading(self) -> None:
        """Set the reading word (once, until the next wait clears it): the writer may leave signals
        out while this reader finds messages without them (not for a reader on another host)."""
        if not self._reading and not self.remote:
            self._reading = True
            _store64(self._cbase + CR_READING, 1)

    def _overtaken(self, seq: int, end: int) -> None:
        """A later fragment seems to sit where fragment ``seq`` must be: if its checksum says so,
        the writer wrote over a fragment this reader never took (it was given credit nobody
        published: forged), and the stream is broken."""
        plen = _TAIL.unpack_from(self._buf, end - 24)[0]
        if plen > self.max_payload:
            return
        head = unseal(bytes(self._buf[end - TRAILER:end]), _checksum(self._buf[end - TRAILER - plen:end - TRAILER]))
        if head is not None and head[0] == self.connection_id and head[1] > seq:
            self._raise_overtaken(seq, head[1])

    def _raise_overtaken(self, seq: int, later: int) -> NoReturn:
        raise StreamProtocolError(f"stream {self.name!r}: fragment {seq} was overwritten by fragment "
                                  f"{later} before it was read (credit this reader never gave: forged)")

    def _take(self, seq: int, end: int, want: int | None) -> bytearray | ArrayView | _Taken | None:
        """Validate and take the fragment ``seq`` ending at ``end``: the message it completes,
        ``_AGAIN`` if it does not complete one, None if it is not there intact yet.

        The trailer read from the slot is only a hint (the slot may be mid-write when
        a tick forces a look): every field used is re-read from a checksummed private
        copy, and a copy that disagrees with the hint is looked at again later.  The
        protocol checks that a checksummed fragment fits where it must be
        (:class:`~ombm.FrameError` if not: a broken writer).
        """
        buf, rx = self._buf, self._rx
        hint = _TAIL.unpack_from(buf, end - 24)
        plen, content, _index, count, kind, _flags, magic, _csum = hint
        if plen > self.max_payload or kind != _DATA or magic != _MAGIC:
            rx.bad_frames += 1
            return None
        start = end - TRAILER - plen
        payload = buf[start:start + plen]
        if rx.count:
            return self._take_more(seq, end, hint, payload)
        if count != 1:
            return self._take_first(seq, end, hint, payload, want)
        if content == ARRAY:
            return self._take_array(seq, start, end, hint, want)
        if want is None and plen <= self._take_max:
            taken = self._take_one()
            if taken is not None:
                return taken
            # not taken (torn, corrupt, changed since the peek): the checks below say what it is
        out = bytearray(plen) if plen < _BufferPool.MIN_BYTES else self._pool.get(plen)
        head = self._sealed_head(end, hint, _copy_checksum(out, payload))
        if head is None:
            return None
        if rx.accept(head, want) == REFUSED:
            self._refuse(content)
        self._consumed(seq)
        return out

    def _take_first(self, seq: int, end: int, hint: tuple[int, ...], payload: memoryview,
                    want: int | None) -> _Taken | None:
        """The first fragment of several: its checksummed trailer tells the message's length."""
        head = self._sealed_head(end, hint, _checksum(payload))
        if head is None:
            return None
        rx = self._rx
        if rx.accept(head, want, take=False) == REFUSED:
            self._refuse(head[4])
        data = self._pool.get(head[2])
        view = memoryview(data)
        if self._copy_out(view[:len(payload)], payload, end, hint) != head:
            # torn, or another fragment sealed there since the check (an earlier one put back by a
            # peer): not this one's bytes under this one's fields; look again
            view.release()
            return None
        rx.accept(head)
        self._consumed(seq)
        self._message = (data, view)
        return _AGAIN

    def _take_more(self, seq: int, end: int, hint: tuple[int, ...],
                   payload: memoryview) -> bytearray | ArrayView | _Taken | None:
        """The next fragment of the message being reassembled, copied to its place in it."""
        rx, message = self._rx, self._message
        assert message is not None  # the protocol counts a message being reassembled
        data, view = message
        pos, plen = rx.position, len(payload)
        if pos + plen > rx.total:
            rx.bad_frames += 1
            return None
        head = self._copy_out(view[pos:pos + plen], payload, end, hint)
        if head is None:
            return None
        done = rx.accept(head) != MORE
        self._consumed(seq)
        if not done:
            return _AGAIN
        self._message = None
        view.release()
        if head[4] == ARRAY:
            return self._array_copy(data, seq)
        return data

    def _copy_out(self, out: memoryview | bytearray, payload: memoryview, end: int,
                  hint: tuple[int, ...]) -> tuple[int, ...] | None:
        """Copy ``payload`` to ``out`` with its checksum in the same pass; the trailer's fields
        if the copy is sealed by the trailer, else None (torn, corrupt, or being written)."""
        return self._sealed_head(end, hint, _copy_checksum(out, payload))

    def _sealed_head(self, end: int, hint: tuple[int, ...], psum: int) -> tuple[int, ...] | None:
        head = unseal(bytes(self._buf[end - TRAILER:end]), psum)  # a private copy: every field comes from it
        if head is None:
            self._rx.bad_frames += 1
            return None
        if head[3:10] != hint[:7]:
            return None  # the hint was read while the slot changed: look again
        if head[1] > self._rx.expected and head[0] == self.connection_id:
            # overwritten by a later fragment between the peek and the copy: forged credit
            self._raise_overtaken(self._rx.expected, head[1])
        return head

    @staticmethod
    def _refuse(content: int) -> None:
        raise TypeError("the next message is " + ("an array: use recv_array() or recv()"
                                                  if content == ARRAY else "bytes: use recv()"))

    def _take_array(self, seq: int, start: int, end: int, hint: tuple[int, ...],
                    want: int | None) -> ArrayView | None:
        """A single-slot array: validate in place, hand out a read-only view of the slot."""
        import numpy as np

        buf, rx = self._buf, self._rx
        plen = hint[0]
        head = self._sealed_head(end, hint, _checksum(buf[start:start + plen]))  # in place: a read
        if head is None:
            return None
        if rx.accept(head, want, take=False) == REFUSED:
            self._refuse(ARRAY)
        dtype, shape, nbytes = unpack_trailer(buf[start:end - TRAILER])
        rx.accept(head)
        _store64(self._cbase + CR_ACKED, seq + 1)  # acknowledged; released when the array dies
        if nbytes == 0:
            self._release_seq(seq)
            return ArrayView(np.empty(shape, dtype), False, seq)
        array = np.frombuffer(buf[start:start + nbytes], dtype=dtype, count=nbytes // dtype.itemsize)
        return ArrayView(array.reshape(shape), True, seq, on_free=self._free_slot)

    def _array_copy(self, data: bytearray, seq: int) -> ArrayView:
        import numpy as np

        dtype, shape, nbytes = unpack_trailer(data)
        count = nbytes // dtype.itemsize if dtype.itemsize else 0
        array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
        array.flags.writeable = False
        return ArrayView(array, False, seq)

    def _consumed(self, seq: int) -> None:
        """Fragment ``seq`` was copied out: publish the protocol's acknowledgement, release it
        (in a batch of :meth:`recv_many`, both are published once, at its end)."""
        if self._batching:  # the batch holds the lock and publishes at its end
            self._rx.release(seq)
            return
        _store64(self._cbase + CR_ACKED, seq + 1)
        self._release_seq(seq)

    def _free_slot(self, seq: int) -> None:
        """An array's memory died (any thread): its slot goes back to the writer."""
        if not self._ending:
            try:
                self._release_seq(seq)
            except Exception:  # a finalizer never raises
                pass

    def _release_seq(self, seq: int) -> None:
        with self._lock:
            if self._ending:
                return
            if not self._rx.release(seq):
                return  # released out of order: held until the fragments before it are
            if not self._batching:
                self._publish_released()

    def _publish_released(self) -> None:
        """Publish the protocol's released count (under the lock); wake the writer if it waits for it."""
        released, cbase, published = self._rx.released, self._cbase, self._published
        if released == published:
            return
        self._published = released
        if self.remote:  # the counts travel as a write; the writer's waiting word does not
            self._publish_credit()
            self._signal_credit()
            return
        if _fetch_add64(cbase + CR_RELEASED, released - published) != published:  # a full barrier
            raise StreamProtocolError(f"stream {self.name!r}: another process changed the released "
                                      "count this reader publishes (forged credit)")
        wake_at = _load64(self._ctrl + CTRL_WAKE_AT)
        if wake_at and released >= wake_at:
            self._signal_credit()

    def _signal_credit(self) -> None:
        """Wake the waiting writer: the protocol's CREDIT frame in the next credit slot (signal-on-write)."""
        frame = self._rx.credit_frame()
        k = self._credit_next
        self._credit_next = (k + 1) % CREDIT_SLOTS
        self._creg.write(CREDIT_FIRST + (k + 1) * CREDIT_UNIT - len(frame), frame)
        self._credit_signals += 1

    # ================================================================ both
    def statistics(self) -> StreamStats:
        if self.writable:
            tx = self._tx
            return StreamStats(tx.messages, tx.fragments, tx.bytes, self._resignals, self._repairs,
                               self._waits, tx.unacked, 0, 0, 0, 0, 0, 0)
        rx = self._rx
        return StreamStats(0, 0, 0, 0, 0, 0, 0, rx.messages, rx.fragments, rx.bytes, rx.bad_frames,
                           self._credit_signals, rx.unreleased)

    def close(self, flush_timeout: float | None = 1.0) -> None:
        """Idempotent.  The writer first waits up to ``flush_timeout`` for a live reader to
        receive what was sent, then ends the stream; the reader gives up its place."""
        if self._closed:
            return
        flush_timeout = check_timeout(flush_timeout)
        try:
            if self.writable:
                self._close_writer(flush_timeout)
            else:
                self._close_reader()
        finally:
            credit = getattr(self, "_credit_seg", None)
            if credit is not None:
                credit.release()
            super().close()

    def _abandon(self) -> None:
        self.close(flush_timeout=0)

    def _close_writer(self, flush_timeout: float | None) -> None:
        if self.segment.released or not hasattr(self, "_tx"):
            return
        try:
            if not self._tx.finished() and _load64(self._cbase + CR_PID) and (
                    flush_timeout is None or flush_timeout > 0):
                self.flush(flush_timeout)
        except (ChannelTimeout, ChannelBrokenError):
            pass
        finally:
            tx, base = self._tx, self._ctrl
            _store64(base + CTRL_SENT_FRAGMENTS, tx.next_seq)  # the counts, before the closed state
            _store64(base + CTRL_SENT_MESSAGES, tx.messages)
            _store32(base + CTRL_STATE, STATE_CLOSED)
            try:
                self._publish_control()  # for a bridge: the end travels to a reader on another host
                _signal(self._base + self.first)  # wake the reader: it finds the stream's end
            except Exception:
                pass
        if flush_timeout != 0 and _load32(self._cbase + CR_FLAGS) & READER_REMOTE:
            self._end_seen(flush_timeout)

    def _end_seen(self, timeout: float | None) -> None:
        """A reader on another host: publish the end again every tick until it says it saw it (an
        update is best effort), it is gone, or ``timeout`` passes."""
        deadline = None if timeout is None else _monotonic() + timeout
        cbase = self._cbase
        while not _load32(cbase + CR_FLAGS) & READER_SAW_END and _load32(cbase + CR_STATE) != STATE_CLOSED:
            if not bridge_holds(self._credit_seg.directory) or not self._wait(deadline):
                return
            self._publish_control()

    def _close_reader(self) -> None:
        if not getattr(self, "_claimed", False) or self._credit_seg.released:
            return
        self._ready.clear()  # taken ahead, never received: dropped with the reader, as messages in the slots are
        with self._lock:
            _store32(self._cbase + CR_STATE, STATE_CLOSED)
            self._ending = True  # late array finalizers find the stream closed
            try:
                self._publish_credit()
                self._signal_credit()  # wake a waiting writer: it finds the reader gone
            except Exception:
                pass


def _wake_only(address: int) -> None:
    """A CREDIT frame only wakes the writer: it reads the same counts from the words into its
    protocol.  (Decoding the frame as well cost 2-4 % at 4 KiB messages: the writer clears its
    wake-up word later, and the reader sends it three times as many wake-ups.)"""
