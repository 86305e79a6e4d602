"""Channels: the basic channel class and the raw best-effort channel (paper §3.2, §3.3, §4).

Paper §4: "A basic channel mechanism in the class library supports a raw form of
communication ... each cache line is specifically addressed with its local address
within the channel segment. Derived classes of the basic channel class provide the
reliable transport mechanisms."  This module owns that basic class and the raw
channel; :mod:`ombm.channels.stream` derives the reliable stream from the same class.

:class:`Channel` owns one message-consistency segment with a *control block* at its
start and ``slots`` equal slots after it.  The segment's signalling unit is the slot,
so the write of a slot's **last byte** raises exactly one signal carrying the slot's
start (signal-on-write, §3.3), and the reader finds what it needs at the slot's end::

    segment data (unit = slot_size, a multiple of 64)
    +---------+---------+---------+---------+-- ... --+-----------+
    | (zeros) | control | slot 0  | slot 1  |         | slot n-1  |
    |         | block   |         |         |         |           |
    +---------+---------+---------+---------+-- ... --+-----------+
    ^0        ^ctrl     ^first    ^first + slot_size

    control block (CONTROL_SIZE bytes ending the first units, at ctrl = first - 128: see
    :func:`control_offset`; little-endian; written by the writer, magic last)
      0  8s  magic     b"OMBMCHN\\x01"
      8  u32 version   | 12 u32 kind (1 raw channel, 2 stream)
     16  u64 slot_size | 24 u64 slots | 32 u64 first (offset of slot 0)
     40  u64 connection id (random: frames of another channel are rejected)
     48  u32 writer pid | 52 u32 state (1 open, 2 closed by the writer)
     56  u64 writer start time (liveness: pid + start, never the pid alone)
     64  u64 published  (raw: writes so far)
     72  u64 wake-at    (stream: 0, or the writer sleeps until the reader released this many)
     80  u64 sent fragments | 88 u64 sent messages  (stream: the writer's final counts, stored
                            before the closed state: the reader's end of stream must match them)
     96  u32 flags      (raw: bit 0, every frame carries the CRC32C of its payload)

No reader registers a handler over the control block.  The writer stores its words with
plain stores, and *publishes* the block with one :meth:`Region.write` of it when it is
made and when it closes: the write completes the unit, whose only receiver is a bridge
(``ombm.net``), which sends it to the hosts that read the channel (docs/net.md).  The
block ends its unit so that such an update is small: a bridge sends a unit from its first
changed byte to its end.

**Across hosts** (paper §3.2.3): a reader opens ``name@HOST:PORT``; this host's bridge makes
the local replica ``name.at.IP_PORT`` (:mod:`ombm.core.remote`), and the reader waits for
the control block to arrive in it (asking the bridge to import it again every
``REIMPORT_S``: the image is best effort).  The writer's pid names a process of the other
host, so a reader of a replica judges the writer's liveness by the bridge instead
(:func:`bridge_holds`): the exporting bridge closes the replicas when the writer is gone,
and this host's bridge then lets go of its copy.

**Raw channel** (:class:`RawChannel`, paper §4 "raw video"): one writer, any number
of readers, no retransmission, a checksum only if asked.  A unit (slot) is addressed by its index;
its payload starts at the unit's start (64-byte aligned) and a 32-byte header ends
it::

    unit:  | payload (length bytes) ... | gen_begin u64 | seq u64 | length u32 | crc u32 | gen_end u64 |
                                        ^end-32                                          ^end-8     end^

The generation is a per-unit write count used as a seqlock written at both ends:
the writer stores ``gen_begin = g`` (a locked compare-and-swap: a full barrier),
copies the payload, then writes ``seq, length, gen_end = g`` with one
:meth:`Region.write` whose last byte completes the unit: one signal.  A reader
copies the payload between two reads of the generation; ``gen_begin == gen_end``
before and after means a good read, anything else a torn or overwritten one.  The
writer never waits for anyone: a reader that falls behind finds units overwritten
by newer generations (or its FIFO full) and counts the generations it never read as
``missed`` (paper §3.2: "the message can be overwritten ... before the receiver
reads it").  The reader's ordering of loads relies on x86-64 (TSO) load ordering.
With ``checksum=True`` (flag in the control block) ``crc`` is the CRC32C of the payload
(0 otherwise), and a reader also checks it: a bridge copies a unit while the writer may be
rewriting it, and its copy's generations can agree over a torn payload.
"""

from __future__ import annotations

import os
import struct
import time
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from ombm import _layout as L
from ombm import _native
from ombm import aio as _aio
from ombm.core import namespace, remote
from ombm.core import config as _config
from ombm.core import segment as _segment
from ombm.errors import AddressError, ChannelBrokenError, ChannelTimeout, ClosedError, EndOfStream, OmbmError
from ombm.errors import ForkedError
from ombm.errors import ReadOnlyError, SegmentFormatError, SegmentNotFoundError, WouldBlock
from ombm.core.directory import Directory
from ombm.core.signals import Receiver
from ombm.core.stats import COUNTERS
from ombm.core.signals import signal as _signal

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["Channel", "ChannelTimeout", "EndOfStream", "RawChannel", "RawFrame", "RawView", "RawStats", "check_timeout"]

CACHE_LINE = _segment.CACHE_LINE
CONTROL = struct.Struct("<8sII QQQQ II Q Q Q")
CONTROL_MAGIC = b"OMBMCHN\x01"
CONTROL_VERSION = 2  # 2: the control block ends its unit (1: it began the segment)
CONTROL_SIZE = 128
CTRL_STATE = 52
CTRL_PUBLISHED = 64
CTRL_WAKE_AT = 72
CTRL_SENT_FRAGMENTS, CTRL_SENT_MESSAGES = 80, 88
CTRL_FLAGS = 96
FLAG_CHECKSUM = 1
KIND_RAW, KIND_STREAM = 1, 2
STATE_OPEN, STATE_CLOSED = 1, 2
_KIND_NAMES = {KIND_RAW: "raw channel", KIND_STREAM: "stream"}

RAW_HEADER = struct.Struct("<QQIIQ")  # gen_begin seq length checksum gen_end, ends the unit
RAW_HEADER_SIZE = RAW_HEADER.size  # 32
_RAW_TAIL = struct.Struct("<QIIQ")  # the part written last: seq length checksum gen_end

MAX_SLOTS = 1 << 20  # a reader keeps state per slot: a control block's count is bounded before use

TICK_S = 0.05  # a waiting end re-checks its peer's liveness and its slots this often

_T = TypeVar("_T")
# A receive loop without its waits (so that one loop serves recv() and recv_async()): it yields how
# long to wait for a signal next, is sent whether one came, and returns what it received.
Receiving = Generator[float, bool, _T]
SPIN_MIN_S, SPIN_MAX_S = 2e-6, 5e-4  # spin budget of a waiting end (see Channel._wait_slice)
_OPEN_RETRY_S = 0.005
REMOTE_OPEN_S = 10.0  # a remote name waits at least this long for the bridge and the control block
REIMPORT_S = 0.25     # ... asking the bridge to import it again this often while it is not there

_load64, _load32, _store64, _store32, _cas64 = (
    _native.load64, _native.load32, _native.store64, _native.store32, _native.cas64)
_checksum, _copy_checksum = _native.checksum, _native.copy_checksum
_raw_take_many, _raw_drain = _native.raw_take_many, _native.raw_drain

_Ch = TypeVar("_Ch", bound="Channel")
# how a reader copies a frame out: (start offset in the segment, length) -> the frame's data
_CopyOut = Callable[[int, int], "bytes | memoryview"]


def check_timeout(timeout: object) -> float | None:
    """``None`` (wait forever) or a number of seconds >= 0; raise before anything happens."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return float(timeout)


def _check_count(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, not {value}")
    return value


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def control_offset(unit: int) -> int:
    """Where the control block of a channel of ``unit``-byte slots starts: it ends the units before
    slot 0 (``first = control_offset(unit) + CONTROL_SIZE``)."""
    return _round_up(CONTROL_SIZE, unit) - CONTROL_SIZE


def bridge_holds(directory: Directory) -> bool:
    """Liveness across hosts: whether a bridge still keeps this replica (docs/net.md).  The bridge
    watches the whole replica, control block included; no channel end watches a control block.  It
    closes the replica when the processes it stands for on the other host are gone."""
    me = namespace.me()[0]
    return any(e.kind == L.KIND_RECEIVER and e.offset == 0 and e.pid != me and namespace.is_alive(e.pid, e.start)
               for e in directory.entries())


class Channel:
    """The basic channel: a slotted message-consistency segment and its control block.

    Built by :meth:`_create` (the writer: binds writable, writes the control block)
    or :meth:`_open` (a reader: binds read-only and checks the control block as
    hostile input).  Derived classes add the protocol.
    """

    KIND = 0
    _forked = False  # set in a forked child: this end is the parent's (ForkedError here)
    # set by _create / _parse_control: the slot geometry and the writer's identity (pid, start time)
    slots: int
    first: int
    connection_id: int
    _writer: tuple[int, int]
    _ctrl: int        # the control block's address
    remote = False    # this end is a reader of a bridge's replica (the writer is on another host)

    def __init__(self, seg: _segment.Segment, writable: bool) -> None:
        self.segment = seg
        self.writable = writable
        self.region = seg.bind(writable)
        self.slot_size = seg.unit
        self._base = self.region.address
        self._buf = self.region.buffer
        self._receiver: Receiver | None = None
        self._closed = False
        _CHANNELS.add(self)
        self._last_check = 0.0
        self._wait_ewma = 0.0
        self._waits_seen = 0

    # ---- construction
    @classmethod
    def _create(cls: type[_Ch], name: str | None, slot_size: int, slots: int, connection_id: int | None = None,
                flags: int = 0) -> _Ch:
        if slots > MAX_SLOTS:
            raise ValueError(f"a channel has at most {MAX_SLOTS} slots, not {slots}")
        name = namespace.new_name() if name is None else namespace.validate_name(name)
        ctrl = control_offset(slot_size)
        first = ctrl + CONTROL_SIZE
        seg = _segment.create_segment(first + slots * slot_size, name=name, unit=slot_size)
        try:
            self = cls(seg, writable=True)
            self.slots, self.first, self._ctrl = slots, first, self._base + ctrl
            self.connection_id = namespace.new_token() if connection_id is None else connection_id
            pid, start = namespace.me()
            fields = CONTROL.pack(b"\0" * 8, CONTROL_VERSION, cls.KIND, slot_size, slots, first,
                                  self.connection_id, pid, STATE_OPEN, start, 0, 0)
            self._buf[ctrl + 8:ctrl + CONTROL.size] = fields[8:]
            self._buf[ctrl + CTRL_FLAGS:ctrl + CTRL_FLAGS + 4] = flags.to_bytes(4, "little")
            self._buf[ctrl:ctrl + 8] = CONTROL_MAGIC  # stored last: a half-made channel has no magic
            self._writer = (pid, start)
            self._publish_control()
        except BaseException:
            seg.release()
            raise
        return self

    def _publish_control(self) -> None:
        """Rewrite the control block with one ordinary write: it completes the block's unit, so a
        bridge sends the block to the hosts that read this channel (its only receiver)."""
        ctrl = self._ctrl - self._base
        self.region.write(ctrl, bytes(self._buf[ctrl:self.first]))

    @classmethod
    def _open(cls: type[_Ch], name: str, timeout: float | None) -> _Ch:
        """Open the segment ``name`` read-only, waiting up to ``timeout`` for it to appear.

        A remote name ``name@HOST:PORT`` opens this host's bridge's replica of it, waiting at
        least ``REMOTE_OPEN_S`` for the control block to arrive."""
        timeout = check_timeout(timeout)
        where = remote.split_remote(name) if isinstance(name, str) else None
        if where is not None and timeout is not None:
            timeout = max(timeout, REMOTE_OPEN_S)
        deadline = None if timeout is None else time.monotonic() + timeout
        local = namespace.validate_name(name if where is None else cls._import(name, deadline))
        asked = time.monotonic()
        while True:
            try:
                seg = _segment.open_segment(local)
            except SegmentNotFoundError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(_OPEN_RETRY_S)
                continue
            try:
                self = cls(seg, writable=False)
                self.remote = where is not None
                if self._parse_control(deadline is not None and time.monotonic() >= deadline):
                    return self
            except BaseException:
                seg.release()
                raise
            seg.release()
            time.sleep(_OPEN_RETRY_S)
            if where is not None and time.monotonic() - asked >= REIMPORT_S:
                asked = time.monotonic()  # the image of the control block is best effort: ask for it again
                cls._import(name, deadline)

    @staticmethod
    def _import(name: str, deadline: float | None) -> str:
        """This host's bridge's replica of ``name@HOST:PORT`` (made, or asked for again); a name the
        other host does not have yet is asked for again until the deadline, as a local one is."""
        while True:
            left = 5.0 if deadline is None else max(deadline - time.monotonic(), 0.1)
            try:
                return remote.import_segment(name, min(left, 5.0))
            except SegmentNotFoundError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            time.sleep(REIMPORT_S)

    def _parse_control(self, final: bool) -> bool:
        """Check the control block; False if it is not published yet (and ``final`` is False)."""
        where = f"segment {self.segment.name!r}"
        ctrl = control_offset(self.slot_size)
        if self.segment.size < ctrl + CONTROL_SIZE:
            raise SegmentFormatError(f"{where} is too small to be a channel")
        (magic, version, kind, slot_size, slots, first, conn, pid, state, start, _pub, _wait) = \
            CONTROL.unpack_from(self._buf, ctrl)
        if magic != CONTROL_MAGIC:
            if final:
                raise SegmentFormatError(f"{where} is not an ombm channel (no control block), "
                                         "or its writer is still creating it")
            return False
        if version != CONTROL_VERSION:
            raise SegmentFormatError(f"{where} has channel layout version {version}; this ombm reads "
                                     f"{CONTROL_VERSION}")
        if kind != self.KIND:
            what = _KIND_NAMES.get(kind, f"kind {kind}")
            raise SegmentFormatError(f"{where} is a {what}, not a {_KIND_NAMES[self.KIND]}")
        if (slot_size != self.slot_size or not 1 <= slots <= MAX_SLOTS or first != ctrl + CONTROL_SIZE
                or first + slots * slot_size > self.segment.size):
            raise SegmentFormatError(f"{where} has a corrupt channel control block")
        self.slots, self.first, self.connection_id = slots, first, conn
        self._ctrl = self._base + ctrl
        self._writer = (pid, start)
        return True

    # ---- shared helpers
    @property
    def name(self) -> str:
        return self.segment.name

    @property
    def closed(self) -> bool:
        return self._closed

    def slot_offset(self, slot: int) -> int:
        """Offset of slot ``slot`` in the segment (its signals carry base + this)."""
        return self.first + slot * self.slot_size

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise ForkedError(f"{type(self).__name__} {self.segment.name!r} belongs to the process that forked "
                                  "this one (two processes cannot share its protocol state): open it again here")
            raise ClosedError(f"{type(self).__name__} {self.segment.name!r} is closed")

    def _own_receiver(self, lo: int, hi: int, fn: Callable[[int], object]) -> Receiver:
        """This object's own signal FIFO, watching offsets [lo, hi) (no thread hop)."""
        receiver = Receiver()
        try:
            receiver.add_handler(self._base + lo, hi - lo, fn)
        except BaseException:
            receiver.close()
            raise
        self._receiver = receiver
        return receiver

    def writer_state(self) -> int:
        """The writer's state word (1 open, 2 closed); :class:`~ombm.ClosedError` once this end is closed."""
        self._check_open()
        return _load32(self._ctrl + CTRL_STATE)

    def writer_alive(self) -> bool:
        """Whether the writer process lives (across hosts: whether the bridge still keeps the replica
        for it); :class:`~ombm.ClosedError` once this end is closed."""
        self._check_open()
        return self._writer_alive()

    def _writer_alive(self) -> bool:
        if self.remote:
            return bridge_holds(self.segment.directory)
        return namespace.is_alive(*self._writer)

    def _writer_state(self) -> int:  # writer_state() for this end's own loops, which checked it is open
        return _load32(self._ctrl + CTRL_STATE)

    def _run(self, steps: Receiving[_T]) -> _T:
        """Drive a receive loop in this thread: each wait it asks for is :meth:`_wait_slice`."""
        try:
            pause = next(steps)
            while True:
                pause = steps.send(self._wait_slice(pause))
        except StopIteration as done:
            return cast(_T, done.value)

    async def _run_async(self, steps: Receiving[_T]) -> _T:
        """Drive a receive loop in the running event loop: each wait awaits this end's signals
        there (:func:`ombm.aio.wait`: the FIFO's doorbell, no thread)."""
        receiver = self._receiver
        assert receiver is not None, "a reading end waits on its own receiver"
        try:
            pause = next(steps)
            while True:
                pause = steps.send(await _aio.wait(receiver, pause) > 0.0)
        except StopIteration as done:
            return cast(_T, done.value)

    def _wait(self, deadline: float | None) -> bool:
        """Wait for a signal up to one tick (or the deadline); False once the deadline passed."""
        if deadline is None:
            self._wait_slice(TICK_S)
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._wait_slice(min(left, TICK_S))
        return True

    def _wait_slice(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a signal and dispatch it; True if one came.

        Streaming-aware spinning: a channel end learns how long its waits take (EWMA);
        while signals come within ``SPIN_MAX_S`` (data is flowing) it spins up to twice
        that before it sleeps, because on this kind of VM a wake-up through the kernel
        costs about as long as producing a 1 MiB message; an idle end spins 2 µs and
        sleeps (DESIGN.md §6: an idle receiver must not burn a core).  The spin yields
        the CPU (sched_yield) so a peer on the same CPU still runs.
        """
        receiver = self._receiver
        assert receiver is not None, "a channel end waits on its own receiver"
        mode = _config.SETTINGS.wait
        if receiver.kernel or mode != "adaptive":
            return receiver.wait(timeout) > 0.0 or bool(receiver.dispatch_pending())
        self._waits_seen += 1
        ewma = self._wait_ewma
        if ewma < SPIN_MAX_S or self._waits_seen & 63 == 0:
            spin = min(max(2 * ewma, SPIN_MIN_S), SPIN_MAX_S)
        else:
            spin = SPIN_MIN_S
        start = time.perf_counter()
        r = _native.fifo_wait(receiver.fifo.fifo_map, int(spin * 1e9), timeout)
        if r == _native.WAIT_READY:
            waited = time.perf_counter() - start
            self._wait_ewma = waited if ewma == 0 else 0.75 * ewma + 0.25 * waited
            receiver.dispatch_pending()
            return True
        if r == _native.WAIT_STALLED:
            receiver.fifo.retire_stalled()
        self._wait_ewma = max(ewma, timeout)
        return bool(receiver.dispatch_pending())

    def _check_intact(self) -> None:
        """Another process may have shrunk the channel's segment under us: the SIGBUS that would
        have killed us left zero pages instead (core/mapping.py), and the channel is over."""
        if self.region.broken:
            raise ChannelBrokenError(f"channel {self.name!r} is broken: another process shrank its segment")

    def _tick_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_check >= TICK_S:
            self._last_check = now
            return True
        return False

    def close(self) -> None:
        """Idempotent: stop watching, unbind, release the segment."""
        if self._closed:
            return
        self._closed = True
        if self._receiver is not None:
            self._receiver.close()
        # drop the view of the segment (it is released below): any later use fails loudly
        self._buf = None  # type: ignore[assignment]
        self.segment.release()

    def __enter__(self: _Ch) -> _Ch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True) and not self.segment.released:
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
                self._abandon()
        except Exception:  # finalizers never raise
            pass

    def _abandon(self) -> None:
        """Close from a finalizer: never wait."""
        self.close()

    def __repr__(self) -> str:
        state = "forked" if self._forked else "closed" if self._closed else ("writer" if self.writable else "reader")
        return (f"<ombm.{type(self).__name__} {self.segment.name!r} {state} "
                f"{getattr(self, 'slots', '?')} x {self.slot_size} bytes>")


_CHANNELS: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Every channel end of the parent is the parent's: in the child each use raises ForkedError and
    ``close()`` does nothing (it must not mark the parent's end closed nor free its entries)."""
    for channel in list(_CHANNELS):
        channel._forked = True
        channel._closed = True
    _CHANNELS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------- raw channel


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One good read of a unit: its index, channel-wide sequence number, generation, data."""

    unit: int
    seq: int
    generation: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RawStats:
    written: int    # writer: units written
    received: int   # reader: good reads delivered
    missed: int     # reader: writes it never delivered (overwritten, torn, signal lost)
    torn: int       # reader: reads found torn or overwritten (a cause of `missed`)
    stale: int      # reader: signals for a unit it had already delivered at that generation


class RawView:
    """A zero-copy look at a unit: ``data`` is a read-only view of the segment.

    The writer never waits for readers, so the unit may be overwritten at any time:
    :meth:`intact` tells whether it still holds the generation that was checked
    when the view was made; use the data, then check.  :meth:`release` (or leaving
    the ``with`` block) releases ``data``: any later use of it raises ``ValueError``.
    """

    __slots__ = ("unit", "seq", "generation", "data", "_addresses", "_region")

    def __init__(self, unit: int, seq: int, generation: int, data: memoryview, addresses: tuple[int, int],
                 region: _segment.Region) -> None:
        self.unit, self.seq, self.generation, self.data = unit, seq, generation, data
        self._addresses = addresses
        self._region = region  # the channel's binding: the addresses are valid while it is bound

    def intact(self) -> bool:
        """Whether the unit still holds the generation checked when the view was made;
        :class:`~ombm.ClosedError` once the channel was closed (its memory is gone)."""
        if self._region.closed:
            raise ClosedError("the channel of this RawView is closed: its unit can no longer be checked")
        begin, end = self._addresses
        return _load64(begin) == self.generation and _load64(end) == self.generation

    def release(self) -> None:
        self.data.release()

    def __enter__(self) -> RawView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RawChannel(Channel):
    """Best-effort multicast of units addressed by index (paper §4's basic channel).

    Writer: ``RawChannel.create(name, unit_size=..., units=...)`` then :meth:`write`
    (or :meth:`begin`/:meth:`commit` to fill a unit in place).  Readers, in other
    processes: ``RawChannel.open(name)`` then :meth:`recv` / :meth:`recv_into` /
    :meth:`recv_view`, or :meth:`read` any unit by index.

    ``ordered=True`` (default) delivers frames in increasing ``seq`` and counts the
    gaps as missed: a stream of frames where only the newest matters.  With
    ``ordered=False`` each unit is its own stream (tiles of a picture): a unit is
    delivered whenever it holds a newer generation than the last delivered one.
    """

    KIND = KIND_RAW

    # ---- writer
    @classmethod
    def create(cls, name: str | None = None, *, unit_size: int = 65536 - RAW_HEADER_SIZE,
               units: int = 16, checksum: bool = False) -> RawChannel:
        """Create the channel; ``unit_size`` is the largest payload of one unit, in bytes.

        ``checksum``: every frame carries the CRC32C of its payload (taken in the copy), which
        readers check; a reader on another host needs it (a bridge's copy of a unit the writer
        is rewriting meanwhile can be torn in a way the generations cannot tell)."""
        unit_size = _check_count(unit_size, "unit_size")
        units = _check_count(units, "units")
        if not isinstance(checksum, bool):
            raise TypeError("checksum must be a bool")
        self = cls._create(name, _round_up(unit_size + RAW_HEADER_SIZE, CACHE_LINE), units,
                           flags=FLAG_CHECKSUM if checksum else 0)  # in the block's first publication
        self._crc = checksum
        self._setup_writer()
        return self

    def _setup_writer(self) -> None:
        self.max_payload = self.slot_size - RAW_HEADER_SIZE
        self._gens = [0] * self.slots
        self._seq = 0
        self._next_unit = 0
        self._pending: tuple[int, int] | None = None  # begin()'s (unit, generation)
        self._wbuf = self._buf
        self._write = self.region.write

    @property
    def units(self) -> int:
        return self.slots

    def _unit_arg(self, unit: int | None) -> int:
        if unit is None:
            unit = self._next_unit
            self._next_unit = unit + 1 if unit + 1 < self.slots else 0
            return unit
        if isinstance(unit, bool) or not isinstance(unit, int):
            raise TypeError(f"unit must be an int or None, not {type(unit).__name__}")
        if not 0 <= unit < self.slots:
            raise AddressError(f"unit {unit} is outside 0..{self.slots - 1}")
        return unit

    def _start_unit(self, unit: int) -> tuple[int, int]:
        gen = self._gens[unit] + 1
        end = self.first + (unit + 1) * self.slot_size
        if not _cas64(self._base + end - RAW_HEADER_SIZE, gen - 1, gen):  # a full barrier
            _store64(self._base + end - RAW_HEADER_SIZE, gen)
        return gen, end

    def _finish_unit(self, unit: int, gen: int, end: int, n: int, crc: int) -> int:
        self._seq = seq = self._seq + 1
        self._write(end - 24, _RAW_TAIL.pack(seq, n, crc, gen))  # completes the unit: one signal
        self._gens[unit] = gen
        _store64(self._ctrl + CTRL_PUBLISHED, seq)
        return seq

    def write(self, data: ReadableBuffer, unit: int | None = None) -> int:
        """Write ``data`` into ``unit`` (default: the next one, round-robin); return its seq.

        Never waits: readers that fall behind lose units, the writer is not slowed.
        """
        if self._closed or not self.writable:
            self._check_open()
            raise ReadOnlyError("a RawChannel opened for reading cannot write")
        if self._pending is not None:
            raise RuntimeError("commit() the unit begun with begin() first")
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        n = len(data)
        if n > self.max_payload:
            raise ValueError(f"{n} bytes do not fit a unit of this raw channel (at most "
                             f"{self.max_payload}; a raw channel does not fragment: use a Stream)")
        unit = self._unit_arg(unit)
        gen, end = self._start_unit(unit)
        start = end - self.slot_size
        crc = 0
        if self._crc:
            crc = _copy_checksum(self._wbuf[start:start + n], data)
        else:
            self._wbuf[start:start + n] = data
        return self._finish_unit(unit, gen, end, n, crc)

    def begin(self, unit: int | None = None) -> memoryview:
        """Two-phase write: a writable view of a unit's payload area; fill it, then :meth:`commit`."""
        if self._closed or not self.writable:
            self._check_open()
            raise ReadOnlyError("a RawChannel opened for reading cannot write")
        if self._pending is not None:
            raise RuntimeError("commit() the unit begun with begin() first")
        unit = self._unit_arg(unit)
        gen, end = self._start_unit(unit)
        self._pending = (unit, gen)
        start = end - self.slot_size
        return self._wbuf[start:start + self.max_payload]

    def commit(self, length: int) -> int:
        """Publish the unit begun with :meth:`begin`, holding ``length`` bytes; return its seq."""
        self._check_open()
        if self._pending is None:
            raise RuntimeError("commit() without begin()")
        length = _check_count(length, "length", 0)
        if length > self.max_payload:
            raise ValueError(f"length {length} exceeds the unit's {self.max_payload} bytes")
        unit, gen = self._pending
        self._pending = None
        end = self.first + (unit + 1) * self.slot_size
        crc = _checksum(self._wbuf[end - self.slot_size:end - self.slot_size + length]) if self._crc else 0
        return self._finish_unit(unit, gen, end, length, crc)

    # ---- reader
    @classmethod
    def open(cls, name: str, *, ordered: bool = True, timeout: float | None = 0.0,
             capacity: int | None = None) -> RawChannel:
        """Open ``name`` for reading (waiting up to ``timeout`` for the writer to create it).

        ``capacity`` is this reader's signal FIFO size (default: the paper's 128).
        """
        if not isinstance(ordered, bool):
            raise TypeError("ordered must be a bool")
        self = cls._open(name, timeout)
        try:
            self._setup_reader(ordered, capacity)
        except BaseException:
            self.close()
            raise
        return self

    def _setup_reader(self, ordered: bool, capacity: int | None) -> None:
        self.max_payload = self.slot_size - RAW_HEADER_SIZE
        self.ordered = ordered
        self._ready: deque[int] = deque()
        lo, hi = self.first, self.first + self.slots * self.slot_size
        origin, size = self._base + self.first, self.slot_size
        ready = self._ready.append
        receiver = Receiver(capacity=capacity)
        try:
            receiver.add_handler(self._base + lo, hi - lo, lambda address: ready((address - origin) // size))
        except BaseException:
            receiver.close()
            raise
        self._receiver = receiver
        # its signals drained natively (raw_drain) from a FIFO in shared memory; a software-only
        # receiver's kernel FIFO dispatches them to the handler above
        self._fifo_map = None if receiver.kernel else receiver.fifo.fifo_map
        self._crc = bool(_load32(self._ctrl + CTRL_FLAGS) & FLAG_CHECKSUM)
        if self.remote and not self._crc:
            raise SegmentFormatError(f"raw channel {self.name!r} carries no checksums, which a reader on another "
                                     "host needs: create it with RawChannel.create(..., checksum=True)")
        self._received = self._missed = self._torn = self._stale = 0
        # baseline after the handler is on: every later write is either signalled or a gap
        self._last_gen = [_load64(self._unit_end(u) - 8) for u in range(self.slots)]
        if self.remote:  # the writer's published count does not travel: the newest frame here does
            snaps = [self._snapshot(u) for u in range(self.slots)]
            self._last_seq = max((snap[1] for snap in snaps if snap), default=0)
        else:
            self._last_seq = _load64(self._ctrl + CTRL_PUBLISHED)

    def _unit_end(self, unit: int) -> int:
        return self._base + self.first + (unit + 1) * self.slot_size

    def _check_reader(self) -> None:
        if self._closed:
            self._check_open()
        if self.writable:
            raise TypeError("the writing end of a RawChannel cannot receive")

    def _snapshot(self, unit: int) -> tuple[int, int, int, int, int] | Literal[False] | None:
        """(gen, seq, length, start, checksum) of a unit whose header is consistent now, else None."""
        end = self._unit_end(unit)
        gen = _load64(end - 8)
        if gen == 0 or _load64(end - 32) != gen:
            return None if gen == 0 else False
        _, seq, length, crc, _ = RAW_HEADER.unpack_from(self._buf, end - self._base - 32)
        if length > self.max_payload:
            return False
        return gen, seq, length, end - self._base - self.slot_size, crc

    def _good(self, unit: int, gen: int, data: bytes | memoryview, crc: int) -> bool:
        """Whether a copy (or view) of a unit's payload is the frame of generation ``gen``."""
        return self._intact(unit, gen) and (not self._crc or _checksum(data) == crc)

    def _intact(self, unit: int, gen: int) -> bool:
        end = self._unit_end(unit)
        return _load64(end - 32) == gen and _load64(end - 8) == gen

    def _is_new(self, unit: int, gen: int, seq: int) -> bool:
        if self.ordered:
            return seq > self._last_seq
        return gen > self._last_gen[unit]

    def _accept(self, unit: int, gen: int, seq: int) -> None:
        """Deliver a good read; count what was missed before it."""
        if self.ordered:
            self._missed += seq - self._last_seq - 1
            self._last_seq = seq
        else:
            self._missed += gen - self._last_gen[unit] - 1
        self._last_gen[unit] = gen
        self._received += 1

    def _drain(self) -> bool:
        """Move the units of the signals in this reader's FIFO to ``_ready`` (up to 256 signals), as
        its handler does, with one native call rather than a Python call per signal; True if any."""
        fifo = self._fifo_map
        if fifo is None:
            receiver = self._receiver
            assert receiver is not None, "a reader has its receiver from _setup_reader"
            return bool(receiver.dispatch_pending())
        units: list[int] = []
        _, foreign = _raw_drain(fifo, self.segment.id, self.first, self.first + self.slots * self.slot_size,
                                self.slot_size, 256, units)
        if foreign:
            COUNTERS.signals_unhandled += foreign
        if not units:
            return False
        COUNTERS.signals_delivered += len(units)
        self._ready.extend(units)
        return True

    def _take(self, copy_into: _CopyOut) -> RawFrame | None:
        """Read the next signalled unit that holds a new good frame, or None if none is pending.

        An ordered reader that fell behind skips frames about to be overwritten: a
        frame half the ring or more behind the writer's latest, with newer frames
        signalled, is not worth copying (it would likely be torn); the gap is counted
        as missed.
        """
        ready = self._ready
        published = self._ctrl + CTRL_PUBLISHED
        horizon = max(1, self.slots // 2)
        ordered = self.ordered
        while True:
            if not ready and not self._drain():
                return None
            while ready:
                unit = ready.popleft()
                snap = self._snapshot(unit)
                if not snap:
                    if snap is False:
                        self._torn += 1
                    continue
                gen, seq, length, start, crc = snap
                if not self._is_new(unit, gen, seq):
                    self._stale += 1
                    continue
                if ordered and ready and _load64(published) - seq >= horizon:
                    continue  # at risk, and a newer frame is signalled anyway
                data = copy_into(start, length)
                if not self._good(unit, gen, data, crc):
                    self._torn += 1
                    continue
                self._accept(unit, gen, seq)
                return RawFrame(unit, seq, gen, data)

    def _take_frames(self, limit: int, view: bool) -> list[RawFrame]:
        """:meth:`_take` natively: the new good frames of the signalled units (every unit signalled so
        far, the FIFO drained as needed), at most ``limit``: each copied out once by one native call
        (``_native.raw_take_many``: :meth:`_take`'s checks) per look, or with ``view`` a view of its unit."""
        ready = self._ready
        published, horizon = self._ctrl - self._base + CTRL_PUBLISHED, max(1, self.slots // 2)
        frames: list[RawFrame] = []
        while len(frames) < limit:
            if not ready and not self._drain():
                break
            got, _, self._last_seq, received, missed, torn, stale = _raw_take_many(
                self._buf, self.first, self.slot_size, self.max_payload, self._crc, self.ordered, ready,
                self._last_seq, self._last_gen, published, horizon, limit - len(frames), RawFrame, view)
            self._received += received
            self._missed += missed
            self._torn += torn
            self._stale += stale
            frames += got
        return frames

    def _take_copy(self) -> RawFrame | None:
        got = self._take_frames(1, False)
        return got[0] if got else None

    def _take_view(self) -> RawFrame | None:
        got = self._take_frames(1, True)
        return got[0] if got else None

    def _recv(self, take: Callable[[], RawFrame | None], timeout: float | None) -> RawFrame:
        self._check_reader()
        frame = take()  # the common case of a reader that keeps up: no loop to set up
        return frame if frame is not None else self._run(self._receiving(take, timeout))

    def _receiving(self, take: Callable[[], RawFrame | None], timeout: float | None) -> Receiving[RawFrame]:
        """The receive loop of :meth:`recv` and :meth:`recv_async` (see :data:`Receiving`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = take()
            if frame is not None:
                return frame
            if self._writer_state() == STATE_CLOSED or self._tick_due():
                self._check_writer()
            left = TICK_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                frame = take()
                if frame is not None:
                    return frame
                raise ChannelTimeout(f"no frame on {self.name!r} within {timeout} s")
            yield min(left, TICK_S)

    def _check_writer(self) -> None:
        self._check_intact()
        if self._writer_state() == STATE_CLOSED:
            raise EndOfStream(f"the writer closed raw channel {self.name!r}")
        if not self._writer_alive():
            raise ChannelBrokenError(f"the writer of raw channel {self.name!r} died"
                                     + (" (or its host's bridge let go of it)" if self.remote else ""))

    def recv(self, timeout: float | None = None) -> RawFrame:
        """The next new good frame, copied out (``data`` is bytes); waits up to ``timeout``."""
        return self._recv(self._take_copy, check_timeout(timeout))

    def recv_many(self, max_frames: int = 64, timeout: float | None = None) -> list[RawFrame]:
        """Every new good frame there now, copied out, at most ``max_frames``: at least one, waiting
        up to ``timeout`` for the first (as :meth:`recv` does, with its errors); one wake-up for all.

        An ordered reader gets them in increasing ``seq``; what was missed is counted as by :meth:`recv`.
        """
        timeout = check_timeout(timeout)
        max_frames = _check_count(max_frames, "max_frames")
        self._check_reader()
        frames = self._rest_of_batch([], max_frames)
        if frames:
            return frames
        return self._rest_of_batch([self._recv(self._take_copy, timeout)], max_frames)

    async def recv_many_async(self, max_frames: int = 64, timeout: float | None = None) -> list[RawFrame]:
        """:meth:`recv_many` for asyncio: awaits the first frame as :meth:`recv_async` does."""
        timeout = check_timeout(timeout)
        max_frames = _check_count(max_frames, "max_frames")
        self._check_reader()
        first = await self._run_async(self._receiving(self._take_copy, timeout))
        return self._rest_of_batch([first], max_frames)

    def _rest_of_batch(self, frames: list[RawFrame], limit: int) -> list[RawFrame]:
        """Append the new good frames there now to ``frames``, up to ``limit`` in all (:meth:`_take_frames`)."""
        if len(frames) < limit:
            frames += self._take_frames(limit - len(frames), False)
        return frames

    async def recv_async(self, timeout: float | None = None) -> RawFrame:
        """:meth:`recv` for asyncio: awaits the next new good frame in the running event loop (the
        FIFO's doorbell wakes it: no thread), up to ``timeout``. Cancelling the awaiting task leaves
        the channel as it was (no frame is taken)."""
        timeout = check_timeout(timeout)
        self._check_reader()
        return await self._run_async(self._receiving(self._take_copy, timeout))

    async def __aiter__(self) -> AsyncIterator[RawFrame]:
        """``async for frame in channel``: frames until the writer closes it (:meth:`recv_async`)."""
        while True:
            try:
                yield await self.recv_async()
            except EndOfStream:
                return

    def recv_nowait(self) -> RawFrame:
        """Like :meth:`recv` but raise :class:`~ombm.WouldBlock` if no new frame is there."""
        self._check_reader()
        frame = self._take_copy()
        if frame is None:
            raise WouldBlock(f"no new frame on {self.name!r}")
        return frame

    def recv_into(self, buffer: WriteableBuffer, timeout: float | None = None) -> RawFrame:
        """Copy the next new good frame into ``buffer``; ``frame.data`` is a view of ``buffer``."""
        timeout = check_timeout(timeout)
        self._check_reader()
        out = memoryview(buffer).cast("B")
        if out.readonly:
            raise TypeError("recv_into needs a writable buffer")
        if out.nbytes < self.max_payload:
            raise ValueError(f"buffer of {out.nbytes} bytes is smaller than a unit ({self.max_payload})")
        buf = self._buf

        def copy_into(start: int, n: int) -> memoryview:
            out[:n] = buf[start:start + n]
            return out[:n]

        return self._recv(lambda: self._take(copy_into), timeout)

    def recv_view(self, timeout: float | None = None) -> RawView:
        """Zero copy: the next new frame as a :class:`RawView` of the segment.

        The generation is checked when the view is made; check :meth:`RawView.intact`
        after using the data (the writer does not wait for readers).
        """
        timeout = check_timeout(timeout)
        self._check_reader()
        frame = self._recv(self._take_view, timeout)
        end = self._unit_end(frame.unit)
        data = cast(memoryview, frame.data)  # the view of the segment the copy-out above made
        return RawView(frame.unit, frame.seq, frame.generation, data, (end - 32, end - 8), self.region)

    def read(self, unit: int) -> RawFrame | None:
        """Read unit ``unit`` as it is now (addressed access, no signal needed).

        ``None`` if it was never written or the read was torn (counted).  Does not
        change what :meth:`recv` delivers.
        """
        self._check_reader()
        if isinstance(unit, bool) or not isinstance(unit, int):
            raise TypeError(f"unit must be an int, not {type(unit).__name__}")
        if not 0 <= unit < self.slots:
            raise AddressError(f"unit {unit} is outside 0..{self.slots - 1}")
        snap = self._snapshot(unit)
        if not snap:
            if snap is False:
                self._torn += 1
            return None
        gen, seq, length, start, crc = snap
        data = bytes(self._buf[start:start + length])
        if not self._good(unit, gen, data, crc):
            self._torn += 1
            return None
        return RawFrame(unit, seq, gen, data)

    def statistics(self) -> RawStats:
        if self.writable:
            return RawStats(self._seq, 0, 0, 0, 0)
        return RawStats(0, self._received, self._missed, self._torn, self._stale)

    def close(self) -> None:
        """Idempotent. The writer marks the channel closed (readers get ChannelBrokenError)."""
        if self._closed:
            return
        if self.writable and not self.segment.released:
            _store32(self._ctrl + CTRL_STATE, STATE_CLOSED)
            try:  # wake readers so they notice (and a bridge sends the closed state to other hosts)
                self._publish_control()
                _signal(self._base + self.first)
            except Exception:
                pass
        self._wbuf = None  # type: ignore[assignment]  # as Channel.close drops _buf
        super().close()
