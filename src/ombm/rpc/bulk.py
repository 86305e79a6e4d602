"""Bulk segments: large payloads of RPC calls and replies, beside the channels (paper §8, "moving
large amounts of data").

A connection has one bulk segment per direction, made by the client and written only by that
direction's sender (``-bq``: the client's calls, ``-bp``: the server's replies).  The client makes
them at its first call with a large payload and offers them to the server by a call of the
server's reserved method :data:`BULK_OFFER` (their names); a server that does not take them (an
older one: no such method) leaves every payload of the connection inline, and so does a client of
another host (the segments are not replicated).  A bytes-like or numpy argument or result of :data:`BULK_MIN` bytes or more is copied
straight into the sender's bulk segment, its checksum computed in that copy (the one copy on the
sending side), and the message carries a **descriptor** in its place (:mod:`ombm.rpc.marshal`
packs it as an ext type)::

    descriptor, little-endian: u64 segment id, u64 offset, u64 length, u64 seq, u32 crc32c

    bulk segment:  0  u64 consumed   spans of the *other* direction's segment this side has read
                   8  (reserved)
                  64  spans: u64 seq, u64 length, then length bytes, each at a 64-byte boundary

The receiver validates a descriptor once (its segment, the span inside the segment, the length
within what it takes per message), then copies the span's header and data out into memory of
its own, the checksum folded into that copy (the one copy on the receiving side), and only then
compares: the checksum of header + data, and the header's seq and length against the
descriptor's.  So a span the sender reused (a later seq: the generation) or a peer scribbling on
the segment while it is read fails the check (:class:`~ombm.errors.UnmarshalError`); it never
crashes or fools the receiver, which owns what it returns.

Reuse: the sender appends spans and starts again at the front only when the receiver's
``consumed`` count (published in the receiver's own bulk segment, read as a hint) has reached the
number of spans sent; if a span does not fit it goes inline in the message instead (slower,
never wrong).  A synchronous caller so always writes at the front; spans of a reply that is
never read (its call gave up) keep the sender appending until the segment is full, after which
large payloads of that connection travel inline.

Views (opt-in: ``Server(..., views=True)``, ``connect(..., views=True)``): the receiver lends the
payload in place instead of copying it out (:meth:`BulkIn.view`): a read-only ``memoryview`` of
the span in the peer's segment (a numpy array: a read-only array on it), after the descriptor is
validated as above and the span's header (seq, length: its generation) is copied once and
checked.  No checksum is computed: it could not protect bytes the peer can still write.  So a
view guarantees:

- memory safety: the segment is bound read-only (the MMU refuses writes through it) and the
  mapping stays while the view, or any view or array derived from it, lives, even after the
  connection closed;
- from an honest peer, exactly the bytes it sent, unchanged while any view of the span lives:
  the span counts as read (``consumed``) only when the last of them is gone, and a sender reuses
  a span only after that (held views make it append, then send inline: slower, never wrong);
- from a hostile peer, nothing more: it can change the bytes at any time, also between a check
  of yours and a use.  Copy what you validate (``bytes(view)``) before validating it.
"""

from __future__ import annotations

import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ombm import _native
from ombm.core import segment as _segment
from ombm.errors import MessageTooLargeError, UnmarshalError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["BULK_OFFER", "BULK_MIN", "BULK_SIZE", "DESCRIPTOR", "BulkOut", "BulkIn", "create", "open_bulk",
           "work_ns"]

BULK_OFFER = "_ombm_bulk"  # the server's reserved method: the client offers its bulk segments (names)
BULK_MIN = 131072  # payloads from this many bytes travel through the bulk segment (below: inline, on the lanes)
BULK_SIZE = (2 << 20) + 65536  # the bulk segment of each direction: 2 MiB of spans and room for headers
MIN_SIZE = 4096  # a bulk segment made by a peer must have at least this many bytes (and at most MAX_SIZE)
MAX_SIZE = 1 << 30
_DATA = 64  # the first span's offset
_ALIGN = 64
DESCRIPTOR = struct.Struct("<QQQQI")  # segment id, offset, length, seq, crc
_SPAN = struct.Struct("<QQ")  # seq, length
_COUNT = struct.Struct("<Q")
_span_put, _span_take, _span_view = _native.span_put, _native.span_take, _native.span_view
_pack_descriptor, _unpack_descriptor = DESCRIPTOR.pack, DESCRIPTOR.unpack
_overloaded = _native.overloaded


def create(name: str) -> _segment.Segment:
    """Make a bulk segment (the client makes both of its connection's)."""
    return _segment.create_segment(BULK_SIZE, name=name, mode=_segment.CONVENTIONAL, signal_on_write=False)


def open_bulk(name: str) -> _segment.Segment:
    """Open a bulk segment a peer made: ``ValueError`` if it is no conventional segment of
    MIN_SIZE..MAX_SIZE bytes (or ``SegmentNotFoundError``, ``SegmentFormatError``)."""
    seg = _segment.open_segment(name)
    if not MIN_SIZE <= seg.size <= MAX_SIZE or seg.mode != _segment.CONVENTIONAL or seg.signal_on_write:
        seg.release()  # (a channel named as a bulk segment would be scribbled on)
        raise ValueError(f"segment {name!r} is not a bulk segment ({seg.size} bytes, mode {seg.mode.name})")
    return seg


class BulkOut:
    """The sending side: spans written into our bulk segment ``mine``; the receiver's consumed
    count is read from its segment ``theirs``. Thread-safe."""

    def __init__(self, mine: _segment.Segment, theirs: _segment.Segment) -> None:
        self._region = mine.bind(True)
        self._buf: memoryview | None = self._region.buffer
        self._peer = theirs.bind(False)
        self._peer_buf: memoryview | None = self._peer.buffer
        self.segment_id = mine.id
        self._size = mine.size
        self._pos = _DATA
        self._seq = 0
        self._sent = 0  # spans handed out and not cancelled
        self.put_bytes = 0  # bytes put, ever (what the peer has had to copy: the waits' work_ns)
        self._lock = threading.Lock()

    def put(self, data: ReadableBuffer, n: int) -> bytes | None:
        """Copy ``data`` (``n`` bytes, C-contiguous) into a span, checksummed in the copy: its
        descriptor, or None if there is no room now (send it inline)."""
        need = (_SPAN.size + n + _ALIGN - 1) // _ALIGN * _ALIGN
        with self._lock:
            buf, peer = self._buf, self._peer_buf
            if buf is None or peer is None:
                return None
            if _COUNT.unpack_from(peer, 0)[0] >= self._sent:  # the receiver read every span sent
                self._pos = _DATA
            pos = self._pos
            if pos + need > self._size:
                return None
            self._seq = seq = self._seq + 1
            crc = _span_put(buf, pos, seq, data)
            self._pos = pos + need
            self._sent += 1
            self.put_bytes += n
        return _pack_descriptor(self.segment_id, pos, n, seq, crc)

    def cancel(self, count: int) -> None:
        """``count`` spans put were not sent after all (their message failed): never awaited."""
        with self._lock:
            self._sent -= count

    def publish(self, consumed: int) -> None:
        """Tell the peer how many of its spans we have read (the first u64 of our segment)."""
        buf = self._buf
        if buf is not None:
            _COUNT.pack_into(buf, 0, consumed)

    def close(self) -> None:
        with self._lock:
            self._buf = self._peer_buf = None
        self._region.unbind()
        self._peer.unbind()


class BulkIn:
    """The receiving side: spans read out of the peer's bulk segment ``theirs`` (hostile input);
    how many is published through ``out`` (our own segment's first u64). Thread-safe."""

    def __init__(self, theirs: _segment.Segment, out: BulkOut) -> None:
        self._region = theirs.bind(False)
        self._buf: memoryview | None = self._region.buffer
        self.segment_id = theirs.id
        self._size = theirs.size
        self._out = out
        self._consumed = 0
        self._recent: set[int] = set()  # seqs read lately: a span read twice counts once
        self._lock = threading.RLock()

    def take(self, descriptor: bytes, budget: list[int]) -> bytes:
        """The payload ``descriptor`` names, copied out and checked: bytes the caller owns.
        ``budget[0]``: bytes this message may still take (reduced here): :class:`MessageTooLargeError`
        beyond it. :class:`UnmarshalError` if the descriptor or the span is bad (reused, overwritten,
        scribbled on)."""
        buf, offset, length, seq, crc = self._check(descriptor, budget)
        try:  # copied out, then checked: the peer may be writing
            data = _span_take(buf, offset, length, seq, crc)
        except ValueError:  # closed meanwhile (a released view)
            raise UnmarshalError("bulk data on a closed connection") from None
        self._read(seq)  # read, right or wrong: the sender need not keep it
        if data is None:
            raise UnmarshalError("bulk data overwritten or corrupt (its checksum or generation does not match)")
        return data

    def view(self, descriptor: bytes, budget: list[int]) -> memoryview:
        """The payload ``descriptor`` names, lent in place: a read-only memoryview of the peer's span,
        no copy and no checksum (see the module's *Views*). The span counts as read (its sender may
        reuse it) once this view and every view or array derived from it are gone. Errors as
        :meth:`take`'s; a span of another generation (reused) is :class:`UnmarshalError`."""
        buf, offset, length, seq, _ = self._check(descriptor, budget)
        try:
            span = _span_view(buf[offset:offset + _SPAN.size + length], 0, length, seq)
        except ValueError:  # closed meanwhile (a released view)
            raise UnmarshalError("bulk data on a closed connection") from None
        if span is None:
            self._read(seq)
            raise UnmarshalError("bulk data overwritten (its generation or length does not match)")
        weakref.finalize(span, self._read, seq).atexit = False
        return memoryview(span)

    def _check(self, descriptor: bytes, budget: list[int]) -> tuple[memoryview, int, int, int, int]:
        """The descriptor validated against this connection and ``budget``: the segment's buffer and
        the span's offset, length, seq and crc."""
        try:
            seg, offset, length, seq, crc = _unpack_descriptor(descriptor)
        except struct.error:
            raise UnmarshalError("malformed bulk descriptor") from None
        buf = self._buf
        if buf is None:
            raise UnmarshalError("bulk data on a closed connection")
        if seg != self.segment_id:
            raise UnmarshalError("bulk descriptor names another segment than the connection's")
        if not (_DATA <= offset and offset % _ALIGN == 0 and length <= self._size - offset - _SPAN.size):
            raise UnmarshalError("bulk descriptor outside its segment")
        if length > budget[0]:
            raise MessageTooLargeError(f"bulk data of {length} bytes exceeds what this side takes per message "
                                       "(its max_message_bytes); it was refused unread")
        budget[0] -= length
        return buf, offset, length, seq, crc

    def _read(self, seq: int) -> None:
        """The span ``seq`` is read (copied out, or its last view gone): published, once per seq.
        (A view's finalizer may run in any thread, and inside this lock if the collector runs here.)"""
        with self._lock:
            if seq not in self._recent:
                if len(self._recent) >= 64:
                    self._recent.clear()
                self._recent.add(seq)
                self._consumed += 1
                self._out.publish(self._consumed)

    def close(self) -> None:
        self._buf = None
        self._region.unbind()


_primed = False
_copy_ps = 0  # picoseconds per byte this process takes to copy with the checksum (measured once)
_PROBE = 1 << 18  # bytes copied to measure it


def work_ns(nbytes: int) -> int:
    """How long a peer may work on ``nbytes`` of bulk data just handed to it before it answers, in
    ns: its copy out of the span and the copy of an answer as large into its own, each allowed
    four times what a copy with the checksum takes in this process (measured once per process,
    cache hot): those copies read what the other CPU wrote, or write lines it holds, and measured
    2.3-2.9 times slower than a copy in cache (tools/copy_budget.py; with twice, a 1 MiB echo's
    waiters outwaited their spins and slept, each wake-up a kernel round trip: 520-560 µs a call
    instead of 365-395, docs/benchmarks.md). While more tasks are runnable than CPUs
    (``_native.overloaded``) each copy is allowed twice only, as before: there the longer spin
    bought nothing measurable and takes a CPU others wait for. A waiter spins this much beyond
    its policy's budget, as the peer is known to be busy with our data, and does not count that
    time as the policy's miss (the spin policy learns from waits on an idle peer, not from
    copies)."""
    return nbytes * _copy_ps // (250 if _overloaded() else 125)


def _measure_copy() -> None:
    """Once per process: the copy-and-checksum rate (the best of 5 copies of 256 KiB, so that a
    preemption does not count), for :func:`work_ns`."""
    global _copy_ps
    if not _copy_ps:
        src, dst = bytes(_PROBE), bytearray(_PROBE)
        best = min(_timed_copy(dst, src) for _ in range(5))
        _copy_ps = max(1, best * 1000 // _PROBE)


def _timed_copy(dst: bytearray, src: bytes) -> int:
    start = time.perf_counter_ns()
    _native.copy_checksum(dst, src)
    return time.perf_counter_ns() - start


def _prime_allocator() -> None:
    """Once per process: allocate and free a block as large as a bulk segment's spans. glibc maps a
    large block afresh for every allocation (so each received 1 MiB payload paid 256 page faults,
    more than its copy) until one so large was freed: then it serves blocks up to that size from its
    heap, as it would after any program freed such a block (its dynamic mmap threshold)."""
    global _primed
    if not _primed:
        _primed = True
        block = bytearray(BULK_SIZE)
        del block


class Bulk:
    """Both directions of a connection's bulk data, for one side: ``out`` what it sends, ``inn``
    what it receives."""

    def __init__(self, mine: _segment.Segment, theirs: _segment.Segment, views: bool = False) -> None:
        _prime_allocator()
        _measure_copy()
        self._segments = (mine, theirs)
        self.out = BulkOut(mine, theirs)
        self.inn = BulkIn(theirs, self.out)
        # what marshalling uses (marshal.BulkData): the sides' own methods; with ``views`` received
        # payloads are lent in place (BulkIn.view), else copied out (BulkIn.take)
        self.put, self.cancel = self.out.put, self.out.cancel
        self.take: Callable[[bytes, list[int]], bytes | memoryview] = self.inn.view if views else self.inn.take

    def close(self) -> None:
        self.inn.close()
        self.out.close()
        for seg in self._segments:
            seg.release()


__all__ += ["Bulk"]
