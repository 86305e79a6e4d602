"""The reliable stream: ordered, checksummed, flow-controlled messages over channel segments (paper §4).

:class:`Stream` derives from the basic :class:`~ombm.channels.raw.Channel` ("derived classes
of the basic channel class provide the reliable transport mechanisms").  One writer,
one reader, two unidirectional segments, both created by the writer:

* the **data channel** ``name`` (writer read-write, reader read-only): ``slots`` slots;
  fragment number ``s`` of the stream is a wire frame (:mod:`ombm.transport.wire`: payload +
  48-byte trailer, checksum last) that *ends* at the end of slot ``s % slots``, so the
  write of its last byte raises exactly one signal (signal-on-write);
* the **credit channel** ``name + ".credit"`` (reader read-write, writer read-only),
  64-byte units::

      0  8s  magic b"OMBMCRD\\x01"   |  8 u64 connection id  (both written by the writer)
     16  u64 reader pid (claimed by CAS: one reader)  | 24 u64 reader start time
     32  u32 reader state (1 open, 2 closed)
     40  u64 acked     every fragment below it was received (copied out, or validated in place)
     48  u64 released  every fragment below it is free: its slot may be written again
    128  8 credit slots of 64 bytes, each a wire CREDIT frame (ack, credit) ending at its end

DATA frames use the wire trailer's layout: ``message_id`` = fragment number (from 0),
``frag_index``/``frag_count`` = its place in its message; the stream direction carries
no acknowledgement, so ``ack`` holds the message's total length and ``credit`` its
content (0 bytes, 1 numpy array, see :mod:`ombm.channels.arrays`).  Their checksum field has two
levels (:func:`seal`): the native checksum of ``trailer[0:40]`` followed by the payload's
own checksum, so that at both ends the payload is copied and checksummed in **one pass**
(``_native.copy_checksum``; the native checksum cannot be continued from the payload into
the trailer).  ``wire.decode`` therefore does not validate stream frames; this module does.

Rules:

* **Flow control.** The writer may write fragment ``s`` only while ``s < released +
  slots``: its slot is then free.  A reader that does not keep up (or holds arrays)
  stops the writer; nothing is lost.  The reader publishes ``acked``/``released`` with
  atomic stores (``released`` with a locked add: a full barrier) and then reads the
  writer's *waiting* word in the data control block; the writer sets that word with a
  compare-and-swap (a full barrier) and re-reads ``released`` before it sleeps
  (Drepper's protocol): no lost wake-up, and no credit signal unless the writer waits.
  The waiting word holds the ``released`` count to wake at, half a window ahead
  (hysteresis: one wake-up per half window, not per slot).  The wake-up is a CREDIT frame
  (ack, credit) written into the next credit slot.
* **In-order consumption, no reordering buffer.** The reader always looks at the slot
  where the next fragment must be: the data stays in place until released.  A signal
  only says "look now" (so a frame is never validated half-written); a lost signal is
  repaired by looking again every ``TICK_S``.  Each fragment is copied out once with
  the checksum folded into the copy (``_native.copy_checksum``), straight to its place
  in the message (into a reused buffer when the application dropped an earlier one);
  a torn or corrupt frame fails the checksum and is looked at again.
* **Repair.** A fragment not acknowledged for an RTO (0.1 s, doubling up to 2 s) is
  checked in its slot: intact, it is signalled again; corrupt, it is written again
  from the sender's source.  ``bytes`` sources are kept by reference (no copy); any
  other buffer is referenced too and must not change until :meth:`Stream.flush`
  returns: if it did, the stream breaks rather than deliver changed data.  Repairs
  run inside ``send``/``flush``/``close`` (no timer thread).
* **Liveness.** A waiting end checks its peer (pid + start time) every ``TICK_S``: a
  dead or closed reader makes ``send`` raise :class:`~ombm.ChannelBrokenError`; a
  closed writer ends the stream (:class:`~ombm.channels.raw.EndOfStream` after the last
  message), a dead one breaks it.  A timeout never loses or duplicates a message.

One thread at a time per end; :meth:`ArrayView.release` may come from any thread.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

from ombm import _layout as L
from ombm import _native
from ombm.core import namespace
from ombm.core import segment as _segment
from ombm.channels.arrays import ArrayView, check_array, pack_header, unpack_trailer
from ombm.channels.raw import CACHE_LINE, CTRL_STATE, CTRL_WAKE_AT, KIND_STREAM, STATE_CLOSED, STATE_OPEN, TICK_S
from ombm.channels.raw import Channel, ChannelTimeout, EndOfStream, _check_count, _round_up, check_timeout
from ombm.errors import ChannelBrokenError, FrameError, ReadOnlyError, SegmentExistsError
from ombm.errors import SegmentFormatError, WouldBlock
from ombm.transport import wire
from ombm.transport.rpc_protocol import split
from ombm.core.signals import Receiver, signal as _signal

__all__ = ["Stream", "StreamStats", "DEFAULT_SLOT_BYTES", "DEFAULT_SLOTS"]

DEFAULT_SLOT_BYTES = 1 << 20  # payload bytes a slot takes whole (a 1 MiB message: one slot)
DEFAULT_SLOTS = 8
SLOT_ROOM = 256  # per slot beyond slot_bytes: the 48-byte trailer, an array header and its pad
RTO_MIN_S, RTO_MAX_S = 0.1, 2.0

# the wire trailer, used in place (wire owns the layout; see the report on exporting these)
_HEAD, _SUM, _TAIL = wire.TRAILER_HEAD, wire.TRAILER_SUM, wire.TRAILER_TAIL
TRAILER = wire.TRAILER_SIZE
_HEAD_SIZE = _HEAD.size  # 40: the part the checksum covers
_PEEK = struct.Struct("<QQ")  # the trailer's first fields: connection id, fragment number
_DATA, _MAGIC = int(wire.Kind.DATA), wire.MAGIC
BYTES, ARRAY = 0, 1
_AGAIN = object()  # a fragment was taken, the message is not complete yet

CREDIT_SUFFIX = ".credit"
CREDIT_MAGIC = b"OMBMCRD\x01"
CR_CONN, CR_PID, CR_START, CR_STATE, CR_ACKED, CR_RELEASED = 8, 16, 24, 32, 40, 48
CREDIT_FIRST, CREDIT_SLOTS, CREDIT_UNIT = 128, 8, 64
CREDIT_SIZE = CREDIT_FIRST + CREDIT_SLOTS * CREDIT_UNIT

_load64, _load32, _store64, _store32 = _native.load64, _native.load32, _native.store64, _native.store32
_cas32, _cas64, _fetch_add64 = _native.cas32, _native.cas64, _native.fetch_add64
_checksum, _copy_checksum = _native.checksum, _native.copy_checksum
_monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class StreamStats:
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


def seal(head: bytes, payload_checksum: int) -> int:
    """A stream frame's checksum: the native checksum of the trailer's first 40 bytes
    followed by the payload's own checksum (two levels, so that the payload is copied and
    checksummed in one pass at both ends; the native checksum cannot be continued)."""
    return _checksum(head + _SUM.pack(payload_checksum))


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


class _ArraySource:
    """A single-slot array message: fills the slot with data, zero pad and header."""

    __slots__ = ("array", "nbytes", "pad", "header")

    def __init__(self, array, nbytes: int, pad: int, header: bytes) -> None:
        self.array, self.nbytes, self.pad, self.header = array, nbytes, pad, header

    def fill(self, wbuf, start: int) -> int:
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
        return _checksum(wbuf[start:end])


class Stream(Channel):
    """An ordered, reliable stream of byte messages (and numpy arrays) from one writer to one reader.

    ``Stream.create(name)`` in the writer; ``Stream.open(name)`` in the reader.
    """

    KIND = KIND_STREAM

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
            self = cls._create(name, slot_size, slots, connection_id=conn)
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
        self._next_seq = 0
        self._acked = 0
        self._limit = self.slots
        self._unacked: deque[list] = deque()  # [seq, index, count, total, ctype, source, plen, csum, sent_at]
        self._partial: list | None = None  # [pieces, next index, count, total, ctype, started]
        self._rto = RTO_MIN_S
        self._reader_checked = 0.0
        self._messages_sent = self._fragments_sent = self._bytes_sent = 0
        self._resignals = self._repairs = self._waits = 0
        receiver = Receiver()
        try:
            receiver.add_handler(self._cbase + CREDIT_FIRST, CREDIT_SLOTS * CREDIT_UNIT, _ignore)
        except BaseException:
            receiver.close()
            raise
        self._receiver = receiver

    def _check_writer_side(self) -> None:
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"stream {self.name!r} was opened for reading: it cannot send")

    def _fragments(self, data) -> tuple[list, int]:
        if type(data) is not bytes:
            try:
                data = memoryview(data).cast("B")
            except TypeError:
                raise TypeError(f"a message must be bytes-like, not {type(data).__name__}") from None
        return split(data, self.max_payload), len(data)

    def send(self, data, timeout: float | None = None) -> None:
        """Send one message (bytes-like, any size), waiting for credit up to ``timeout``.

        :class:`~ombm.channels.raw.ChannelTimeout` if the reader did not make room in time
        (nothing was sent, or, for a message longer than the window, the rest is sent
        first by the next ``send``/``flush``: ``exc.partial``);
        :class:`~ombm.ChannelBrokenError` if the reader closed or died.
        """
        self._check_writer_side()
        timeout = check_timeout(timeout)
        pieces, total = self._fragments(data)
        self._send(pieces, total, BYTES, timeout)

    def _send(self, pieces: list, total: int, ctype: int, timeout: float | None) -> None:
        deadline = None if timeout is None else _monotonic() + timeout
        self._check_reader(force_tick=False)
        if self._partial is not None:
            try:
                self._push(deadline)  # the rest of a message an earlier timeout interrupted
            except ChannelTimeout:
                exc = ChannelTimeout(f"stream {self.name!r}: still sending the rest of an earlier message; "
                                     "this one was not sent")
                exc.partial = False
                raise exc from None
        self._partial = [pieces, 0, len(pieces), total, ctype, False]
        self._push(deadline)

    def send_nowait(self, data) -> None:
        """Send one message now or raise :class:`~ombm.WouldBlock` (nothing sent) if the window is full.

        A message of more fragments than the window can never go without waiting:
        ``ValueError``; use :meth:`send`.
        """
        self._check_writer_side()
        pieces, total = self._fragments(data)
        self._nowait(pieces, total, BYTES)

    def _nowait(self, pieces: list, total: int, ctype: int) -> None:
        count = len(pieces)
        if count > self.slots:
            raise ValueError(f"a message of {count} fragments never fits the window of {self.slots} "
                             "slots at once: use send(), which streams it")
        self._check_reader(force_tick=False)
        if self._partial is not None and not self._push(None, nowait=True):
            raise WouldBlock(f"stream {self.name!r} is still sending the previous message")
        if self._next_seq + count > self._limit:
            self._refresh()
            if self._next_seq + count > self._limit:
                self._service()
                raise WouldBlock(f"stream {self.name!r} is full: the reader has not released enough slots")
        self._partial = [pieces, 0, count, total, ctype, False]
        self._push(None, nowait=True)

    def send_array(self, array, timeout: float | None = None) -> None:
        """Send a numpy array; the reader gets it with :meth:`recv_array` (zero copy if it fits a slot)."""
        self._check_writer_side()
        timeout = check_timeout(timeout)
        pieces, total = self._array_pieces(array)
        self._send(pieces, total, ARRAY, timeout)

    def send_array_nowait(self, array) -> None:
        """:meth:`send_array` or :class:`~ombm.WouldBlock`."""
        self._check_writer_side()
        pieces, total = self._array_pieces(array)
        self._nowait(pieces, total, ARRAY)

    def _array_pieces(self, array) -> tuple[list, int]:
        array = check_array(array)
        header = pack_header(array)
        nbytes = array.nbytes
        pad = -(nbytes + len(header) + TRAILER) % CACHE_LINE  # the frame (and the data) 64-byte aligned
        plen = nbytes + pad + len(header)
        if plen <= self.max_payload:
            return [_ArraySource(array, nbytes, pad, header)], plen
        payload = array.tobytes() + header  # larger than a slot: fragmented, arrives as a copy
        return split(payload, self.max_payload), len(payload)

    def _push(self, deadline: float | None, nowait: bool = False) -> bool:
        """Write the pending message's fragments as credit allows; True once all are written."""
        partial = self._partial
        pieces, index, count, total, ctype, _ = partial
        unacked, slots = self._unacked, self.slots
        while index < count:
            seq = self._next_seq
            if seq >= self._limit and not self._refresh():
                partial[1] = index
                if nowait:
                    return False
                self._block(deadline)
                continue
            source = pieces[index]
            plen = total if type(source) is _ArraySource else len(source)
            csum = self._emit(seq, index, count, total, ctype, source, plen, slots)
            unacked.append([seq, index, count, total, ctype, source, plen, csum, _monotonic()])
            self._next_seq = seq + 1
            self._fragments_sent += 1
            index += 1
            partial[5] = True
        self._partial = None
        self._messages_sent += 1
        self._bytes_sent += total
        if unacked and _monotonic() - unacked[0][8] >= self._rto:
            self._service()
        return True

    def _emit(self, seq, index, count, total, ctype, source, plen, slots) -> int:
        """Write one DATA frame ending at its slot's end; its checksum, stored last, signals.

        The payload is copied and checksummed in one pass; the frame checksum seals
        the trailer and that payload checksum (see :func:`seal`)."""
        end = self.first + (seq % slots + 1) * self.slot_size
        start = end - TRAILER - plen
        wbuf = self._wbuf
        if type(source) is _ArraySource:
            psum = source.fill(wbuf, start)
        else:
            psum = _copy_checksum(wbuf[start:start + plen], source)
        head = _HEAD.pack(self.connection_id, seq, total, plen, ctype, index, count, _DATA, 0, _MAGIC)
        wbuf[end - TRAILER:end - 8] = head
        csum = seal(head, psum)
        self._write(end - 8, _SUM.pack(csum))  # completes the slot: one signal
        return csum

    def _refresh(self) -> bool:
        """Read the reader's counters; True if the next fragment may be written."""
        cbase = self._cbase
        released = _load64(cbase + CR_RELEASED)
        acked = _load64(cbase + CR_ACKED)
        acked = min(acked, self._next_seq)  # a confused or hostile reader cannot open more
        released = min(released, acked)
        if acked > self._acked:
            self._acked = acked
            unacked = self._unacked
            while unacked and unacked[0][0] < acked:
                unacked.popleft()
            self._rto = RTO_MIN_S
        if released + self.slots > self._limit:
            self._limit = released + self.slots
        return self._next_seq < self._limit

    def _block(self, deadline: float | None) -> None:
        """Sleep until the reader signals credit, a tick passes, or the deadline (ChannelTimeout).

        The writer asks to be woken only once half a window is free again (hysteresis):
        a wake-up through the kernel costs tens of µs, once per half window, not per slot.
        """
        self._check_reader(force_tick=False)
        self._service()
        wake_at = self._base + CTRL_WAKE_AT
        seq = self._next_seq
        target = min(seq, seq + 1 - self.slots + self.slots // 2)
        if not _cas64(wake_at, 0, target):  # a full barrier before re-reading the counters
            _store64(wake_at, target)
        try:
            if self._refresh():
                return
            self._waits += 1
            if not self._wait(deadline):
                self._timeout()
        finally:
            _store64(wake_at, 0)

    def _timeout(self) -> None:
        partial = self._partial
        started = partial is not None and partial[5]
        if partial is not None and not started:
            self._partial = None  # not one fragment went: the message was not sent
        exc = ChannelTimeout(
            f"stream {self.name!r}: the reader did not make room in time"
            + ("; the rest of the message is sent first by the next send()/flush()" if started else
               "; the message was not sent"))
        exc.partial = started
        raise exc

    def _check_reader(self, force_tick: bool) -> None:
        cbase = self._cbase
        if _load32(cbase + CR_STATE) == STATE_CLOSED:
            raise ChannelBrokenError(f"the reader closed stream {self.name!r}")
        now = _monotonic()
        if force_tick or now - self._reader_checked >= TICK_S:
            self._reader_checked = now
            pid, start = _load64(cbase + CR_PID), _load64(cbase + CR_START)
            if pid and start and not namespace.is_alive(pid, start):
                raise ChannelBrokenError(f"the reader of stream {self.name!r} died")

    def _service(self) -> None:
        """Repair the oldest unacknowledged fragment if it waited an RTO (paper §4's timer)."""
        unacked = self._unacked
        if not unacked:
            return
        now = _monotonic()
        if now - unacked[0][8] < self._rto:
            return
        self._refresh()
        if not unacked:
            return
        entry = unacked[0]
        seq, index, count, total, ctype, source, plen, csum, _ = entry
        end = self.first + (seq % self.slots + 1) * self.slot_size
        wbuf = self._wbuf
        trailer = bytes(wbuf[end - TRAILER:end])
        if seal(trailer[:_HEAD_SIZE], _checksum(wbuf[end - TRAILER - plen:end - TRAILER])) == csum == \
                _SUM.unpack_from(trailer, _HEAD_SIZE)[0]:
            _signal(self._base + end - self.slot_size)  # intact: its signal was lost, or the reader is slow
            self._resignals += 1
        else:
            if self._emit(seq, index, count, total, ctype, source, plen, self.slots) != csum:
                raise ChannelBrokenError(
                    f"stream {self.name!r}: the buffer passed to send() changed before the reader "
                    "acknowledged it, and its frame needs repair: pass bytes, or do not modify it "
                    "before flush() returns")
            self._repairs += 1
        entry[8] = now
        self._rto = min(self._rto * 2, RTO_MAX_S)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far was received by the reader (repairing as needed)."""
        self._check_writer_side()
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else _monotonic() + timeout
        if self._partial is not None:
            self._push(deadline)
        wake_at = self._base + CTRL_WAKE_AT
        while True:
            self._refresh()
            if not self._unacked:
                return
            self._check_reader(force_tick=False)
            self._service()
            if not _cas64(wake_at, 0, self._next_seq):  # a full barrier, then look again
                _store64(wake_at, self._next_seq)
            try:
                self._refresh()
                if not self._unacked:
                    return
                waited = self._wait(deadline)
            finally:
                _store64(wake_at, 0)
            if not waited:
                self._refresh()
                if not self._unacked:
                    return
                raise ChannelTimeout(f"stream {self.name!r}: {len(self._unacked)} fragments not "
                                     f"acknowledged within {timeout} s")

    # ================================================================ reader
    @classmethod
    def open(cls, name: str, *, timeout: float | None = 0.0) -> Stream:
        """Open the reading end of stream ``name``, waiting up to ``timeout`` for it to exist.

        A stream has one reader: ``SegmentExistsError`` if a live one has it open;
        ``ChannelBrokenError`` if its reader died (the stream is broken for good).
        """
        self = cls._open(name, timeout)
        try:
            self._setup_reader()
        except BaseException:
            self.close()
            raise
        return self

    def _setup_reader(self) -> None:
        self._lock = threading.RLock()
        self._claimed = False
        self._ending = False
        credit = _segment.open_segment(self.name + CREDIT_SUFFIX)
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
            if other_start == 0 or namespace.is_alive(other, other_start):
                raise SegmentExistsError(f"stream {self.name!r} already has a reader (pid {other}); a "
                                         "Stream has exactly one: use a RawChannel to multicast")
            raise ChannelBrokenError(f"the reader of stream {self.name!r} died: the stream is broken")
        self._claimed = True
        _store64(cbase + CR_START, start)
        _store32(cbase + CR_STATE, STATE_OPEN)
        self.max_payload = self.slot_size - TRAILER
        self._expected = 0
        self._released = self._published = 0
        self._released_out_of_order: set[int] = set()
        self._msg: list | None = None  # reassembly: [data, view, count, total, ctype, next index, pos]
        self._pool = _BufferPool()
        self._credit_next = 0
        self._flags = bytearray(b"\x01" * self.slots)  # look at every slot once: frames may predate us
        self._messages_received = self._fragments_received = self._bytes_received = 0
        self._bad = self._credit_signals = 0
        flags, base, first, size = self._flags, self._base, self.first, self.slot_size

        def on_signal(address: int) -> None:
            flags[(address - base - first) // size] = 1

        self._own_receiver(first, first + self.slots * size, on_signal)

    def _check_reader_side(self) -> None:
        self._check_open()
        if self.writable:
            raise TypeError(f"stream {self.name!r} is the writing end: it cannot receive")

    def recv(self, timeout: float | None = None):
        """The next message: a ``bytearray`` you own (an :class:`ArrayView` for an array).

        Waits up to ``timeout`` (``None``: forever): :class:`~ombm.channels.raw.ChannelTimeout`;
        after the writer's last message :class:`~ombm.channels.raw.EndOfStream`; a dead writer
        :class:`~ombm.ChannelBrokenError`.
        """
        self._check_reader_side()
        return self._recv(check_timeout(timeout), None)

    def recv_nowait(self):
        """:meth:`recv` without waiting: :class:`~ombm.WouldBlock` if no whole message is there."""
        self._check_reader_side()
        msg = self._poll(True, None)
        if msg is None:
            self._receiver.dispatch_pending()
            msg = self._poll(True, None)
        if msg is None:
            self._check_writer()
            raise WouldBlock(f"no complete message on stream {self.name!r}")
        return msg

    def recv_array(self, timeout: float | None = None, *, copy: bool = False):
        """The next message, which must be an array: an :class:`ArrayView` (or, with ``copy``, an ndarray).

        ``TypeError`` (the message stays) if the next message is bytes.
        """
        self._check_reader_side()
        view = self._recv(check_timeout(timeout), ARRAY)
        if not copy:
            return view
        with view:
            return view.copy()

    def __iter__(self):
        """Messages until the writer closes the stream."""
        while True:
            try:
                yield self.recv()
            except EndOfStream:
                return

    def _recv(self, timeout: float | None, want: int | None):
        deadline = None if timeout is None else _monotonic() + timeout
        receiver = self._receiver
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
            force = not self._wait_slice(left)  # a tick without a signal: look anyway

    def _writer_gone(self) -> bool:
        if self.writer_state() == STATE_CLOSED:
            return True
        return self._tick_due() and not self.writer_alive()

    def _check_writer(self) -> None:
        if self.writer_state() == STATE_CLOSED:
            if self._msg is None:
                raise EndOfStream(f"the writer closed stream {self.name!r}: no more messages")
            raise ChannelBrokenError(f"the writer closed stream {self.name!r} in the middle of a message")
        if not self.writer_alive():
            raise ChannelBrokenError(f"the writer of stream {self.name!r} died")

    def _poll(self, force: bool, want: int | None):
        """Take the fragments that are there, in order; the message they complete, or None."""
        flags, buf, slots, size, conn = self._flags, self._buf, self.slots, self.slot_size, self.connection_id
        while True:
            seq = self._expected
            slot = seq % slots
            end = self.first + (slot + 1) * size
            if _PEEK.unpack_from(buf, end - TRAILER) != (conn, seq):
                return None  # not written yet
            if not (force or flags[slot]):
                return None  # being written, or its signal is still on the way
            flags[slot] = 0
            msg = self._take(seq, end, want)
            if msg is _AGAIN:
                force = True  # the next fragment may have been signalled while we copied
                continue
            return msg

    def _take(self, seq: int, end: int, want: int | None):
        """Validate and take the fragment ``seq`` ending at ``end``.

        The trailer read from the slot is only a hint (the slot may be mid-write when
        a tick forces a look): every field used is re-read from a checksummed private
        copy, and a copy that disagrees with the hint is looked at again later.  A
        checksummed fragment that does not fit where it must be is a broken writer:
        :class:`~ombm.FrameError`.
        """
        buf = self._buf
        hint = _TAIL.unpack_from(buf, end - 24)
        plen, ctype, index, count, kind, _flags, magic, csum = hint
        if plen > self.max_payload or kind != _DATA or magic != _MAGIC:
            self._bad += 1
            return None
        start = end - TRAILER - plen
        payload = buf[start:start + plen]
        msg = self._msg
        if msg is None and count == 1:
            if ctype == ARRAY:
                return self._take_array(seq, start, end, hint, want)
            out = self._pool.get(plen)
            head = self._copy_out(out, payload, end, hint)
            if head is None:
                return None
            self._verify(head, seq, 0, 1, plen)
            self._want(want, ctype)
            self._consumed(seq, plen)
            self._release_seq(seq)
            self._messages_received += 1
            return out
        if msg is None:  # the first of several: its trailer tells the message's length
            head = self._sealed_head(buf, end, hint, _checksum(payload))
            if head is None:
                return None
            self._verify(head, seq, 0, None, None)
            self._want(want, ctype)
            total = head[2]
            data = self._pool.get(total)
            view = memoryview(data)
            if self._copy_out(view[:plen], payload, end, hint) is None:
                view.release()
                return None
            self._consumed(seq, plen)
            self._release_seq(seq)
            self._msg = [data, view, count, total, ctype, 1, plen]
            return _AGAIN
        data, view, count, total, ctype, nidx, pos = msg
        if pos + plen > total:
            self._bad += 1
            return None
        head = self._copy_out(view[pos:pos + plen], payload, end, hint)
        if head is None:
            return None
        self._verify(head, seq, nidx, count, total)
        if nidx == count - 1 and pos + plen != total:
            raise FrameError(f"stream {self.name!r}: the last fragment of a message has the wrong length")
        self._consumed(seq, plen)
        self._release_seq(seq)
        pos += plen
        nidx += 1
        if nidx < count:
            msg[5], msg[6] = nidx, pos
            return _AGAIN
        self._msg = None
        view.release()
        self._messages_received += 1
        if ctype == ARRAY:
            return self._array_copy(data, seq)
        return data

    def _copy_out(self, out, payload, end: int, hint: tuple):
        """Copy ``payload`` to ``out`` with its checksum in the same pass; the trailer's fields
        if the copy is sealed by the trailer, else None (torn, corrupt, or being written)."""
        return self._sealed_head(self._buf, end, hint, _copy_checksum(out, payload))

    def _sealed_head(self, buf, end: int, hint: tuple, psum: int):
        trailer = bytes(buf[end - TRAILER:end])  # a private copy: every field comes from it
        if seal(trailer[:_HEAD_SIZE], psum) != _SUM.unpack_from(trailer, _HEAD_SIZE)[0]:
            self._bad += 1
            return None
        head = _HEAD.unpack_from(trailer, 0)
        if head[3:10] != hint[:7]:
            return None  # the hint was read while the slot changed: look again
        return head

    def _verify(self, head: tuple, seq: int, index: int, count: int | None, total: int | None) -> None:
        """A checksummed trailer must be the fragment expected here (``count`` None: the
        first of a multi-fragment message)."""
        conn, seq2, total2, plen, ctype, index2, count2, _kind, flags, _magic = head
        mp = self.max_payload
        ok = conn == self.connection_id and seq2 == seq and index2 == index and flags == 0 and ctype in (BYTES, ARRAY)
        if count is None:
            ok = ok and count2 >= 2 and plen == mp and (count2 - 1) * mp < total2 <= count2 * mp
        else:
            ok = ok and count2 == count and total2 == total and (index == count - 1 or plen == mp)
        if not ok:
            raise FrameError(f"stream {self.name!r}: fragment {seq} is not what the stream expects "
                             "there (a broken or foreign writer)")

    @staticmethod
    def _want(want: int | None, ctype: int) -> None:
        if want is not None and ctype != want:
            raise TypeError("the next message is " + ("an array: use recv_array() or recv()"
                                                      if ctype == ARRAY else "bytes: use recv()"))

    def _take_array(self, seq: int, start: int, end: int, hint: tuple, want: int | None):
        """A single-slot array: validate in place, hand out a read-only view of the slot."""
        import numpy as np

        buf = self._buf
        plen = hint[0]
        head = self._sealed_head(buf, end, hint, _checksum(buf[start:start + plen]))  # in place: a read
        if head is None:
            return None
        self._verify(head, seq, 0, 1, plen)
        self._want(want, ARRAY)
        dtype, shape, nbytes = unpack_trailer(buf[start:end - TRAILER])
        self._consumed(seq, nbytes)
        self._messages_received += 1
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

    def _consumed(self, seq: int, nbytes: int) -> None:
        self._expected = seq + 1
        self._fragments_received += 1
        self._bytes_received += nbytes
        _store64(self._cbase + CR_ACKED, seq + 1)

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
            if seq != self._released:
                self._released_out_of_order.add(seq)
                return
            released, held = seq + 1, self._released_out_of_order
            while released in held:
                held.discard(released)
                released += 1
            self._released = released
            cbase = self._cbase
            _fetch_add64(cbase + CR_RELEASED, released - self._published)  # a full barrier
            self._published = released
            wake_at = _load64(self._base + CTRL_WAKE_AT)
            if wake_at and released >= wake_at:
                self._signal_credit()

    def _signal_credit(self) -> None:
        """Wake the waiting writer: a CREDIT frame in the next credit slot (signal-on-write)."""
        frame = wire.encode(wire.Kind.CREDIT, self.connection_id, 0, ack=self._expected,
                            credit=self._released + self.slots - self._expected)
        k = self._credit_next
        self._credit_next = (k + 1) % CREDIT_SLOTS
        self._creg.write(CREDIT_FIRST + (k + 1) * CREDIT_UNIT - len(frame), frame)
        self._credit_signals += 1

    # ================================================================ both
    def statistics(self) -> StreamStats:
        if self.writable:
            return StreamStats(self._messages_sent, self._fragments_sent, self._bytes_sent, self._resignals,
                               self._repairs, self._waits, len(self._unacked), 0, 0, 0, 0, 0, 0)
        return StreamStats(0, 0, 0, 0, 0, 0, 0, self._messages_received, self._fragments_received,
                           self._bytes_received, self._bad, self._credit_signals,
                           self._expected - self._released)

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
        if self.segment.released or not hasattr(self, "_unacked"):
            return
        try:
            if (self._unacked or self._partial is not None) and _load64(self._cbase + CR_PID) and (
                    flush_timeout is None or flush_timeout > 0):
                self.flush(flush_timeout)
        except (ChannelTimeout, ChannelBrokenError):
            pass
        finally:
            _store32(self._base + CTRL_STATE, STATE_CLOSED)
            try:
                _signal(self._base + self.first)  # wake the reader: it finds the stream's end
            except Exception:
                pass

    def _close_reader(self) -> None:
        if not getattr(self, "_claimed", False) or self._credit_seg.released:
            return
        with self._lock:
            _store32(self._cbase + CR_STATE, STATE_CLOSED)
            try:
                self._signal_credit()  # wake a waiting writer: it finds the reader gone
            except Exception:
                pass
            self._ending = True  # late array finalizers find the stream closed


def _ignore(address: int) -> None:
    """Credit signals only wake the writer; it reads the counters."""

