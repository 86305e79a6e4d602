"""Raising a signal: from a segment offset to every watching receiver (paper §3.1.2).

The hardware's job when a message line is written: look up the directory
entry for the physical address (here: segment id + offset), and put the
address in the FIFO of every processor whose P_i bit is set. A
:class:`Router` (one per segment per process) caches the directory as a list
of ranges, and the result per offset as a *route*: the FIFO addresses to push
to in one native call, plus kernel-path receivers (software-only MBM, one
``sendto`` each). The cache is rebuilt when the directory version moves.

A sender never blocks and never fails because of a receiver: a full FIFO
drops and counts (paper: loss when full); a FIFO whose owner died is
unmapped and its directory entries reclaimed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ombm import _layout as L
from ombm import _native
from ombm.core import namespace
from ombm.errors import SegmentFormatError
from ombm.core.faults import FAULTS
from ombm.core.fifo import FifoRef
from ombm.core.stats import COUNTERS

if TYPE_CHECKING:
    from ombm.core.directory import Directory

_load64 = _native.load64
_fanout = _native.fanout
_REFS: dict[int, FifoRef] = {}  # token -> mapping of that receiver's FIFO (process-wide)
_MAX_ROUTES = 4096

# the receivers watching one offset: (their FIFOs' validated mappings, those FIFOs, the software-only receivers)
Route = tuple[tuple[_native.FifoMap, ...], tuple[FifoRef, ...], tuple[FifoRef, ...]]


def fifo_ref(token: int) -> FifoRef | None:
    """This process's mapping of receiver ``token``'s FIFO, or None if it is gone."""
    ref = _REFS.get(token)
    if ref is None:
        try:
            ref = FifoRef(token)
        except (FileNotFoundError, SegmentFormatError, ValueError, OSError):
            return None
        _REFS[token] = ref
    return ref


def forget(token: int) -> None:
    """Drop the cached mapping; routes still holding it keep it mapped until they go."""
    _REFS.pop(token, None)


class Router:
    """Per-process, per-segment sender state."""

    __slots__ = ("segment_id", "directory", "version_address", "version", "ranges", "routes")

    def __init__(self, segment_id: int, directory: Directory) -> None:
        self.segment_id = segment_id
        self.directory = directory
        self.version_address = directory.version_address
        self.version = -1
        self.ranges: list[tuple[int, int, FifoRef]] = []
        self.routes: dict[int, Route] = {}

    def _rebuild(self, version: int) -> None:
        ranges = []
        for e in self.directory.entries():
            if e.kind != L.KIND_RECEIVER:
                continue
            ref = fifo_ref(e.token)
            if ref is None:
                continue  # receiver gone (or not ready yet); gc reclaims its entry
            ranges.append((e.offset, e.offset + e.size, ref))
        self.ranges = ranges
        self.routes = {}
        self.version = version

    def _route(self, offset: int) -> Route:
        refs: dict[int, FifoRef] = {}
        for lo, hi, ref in self.ranges:
            if lo <= offset < hi:
                refs[ref.token] = ref
        memory = tuple(r for r in refs.values() if not r.kernel)
        route: Route = (tuple(r.fifo_map for r in memory), memory, tuple(r for r in refs.values() if r.kernel))
        if len(self.routes) >= _MAX_ROUTES:
            self.routes.clear()
        self.routes[offset] = route
        return route

    def route(self, offset: int) -> Route:
        """``(fifo mappings, their FifoRefs, kernel-path FifoRefs)`` of the receivers watching ``offset``."""
        version = _load64(self.version_address)
        if version != self.version:
            self._rebuild(version)
        route = self.routes.get(offset)
        return self._route(offset) if route is None else route

    def deliver(self, offset: int) -> None:
        """Signal every receiver watching ``offset`` of this segment."""
        route = self.route(offset)
        if FAULTS.active:
            self._deliver_with_faults(offset, route[1], route[2])
            return
        rings = route[0]
        if rings:
            result = _fanout(rings, self.segment_id, offset)
            COUNTERS.signals_sent += len(rings)
            if result:
                self.after_fanout(result, route[1])
        if route[2]:
            for ref in route[2]:
                self._send_kernel(ref, offset)

    def _send_kernel(self, ref: FifoRef, offset: int) -> None:
        if ref.send_kernel(self.segment_id, offset):
            COUNTERS.signals_sent += 1
            COUNTERS.kernel_signals += 1
        else:
            COUNTERS.signals_dropped += 1
            ref.add_drop()
            self._check_alive((ref,))

    def after_fanout(self, result: int, memory: tuple[FifoRef, ...]) -> None:
        """Count drops (and reclaim dead receivers), count a wake-up, ring doorbells."""
        drops = result & 0x7FFF
        if drops:
            COUNTERS.signals_dropped += drops
            COUNTERS.signals_sent -= drops
            self._check_alive(memory)
        if result & (1 << 15):
            COUNTERS.wakeups += 1
        bells = result >> 16
        for i, ref in enumerate(memory):
            if bells >> i & 1:
                COUNTERS.doorbells += 1
                ref.ring()

    def _deliver_with_faults(self, offset: int, memory: tuple[FifoRef, ...], kernel: tuple[FifoRef, ...]) -> None:
        """``deliver`` under fault injection: each signal to each receiver is drawn for a drop
        (counted where it is drawn), as the native Writer's fan-out does."""
        for ref in memory:
            if FAULTS.should_drop():
                continue
            result = _fanout((ref.fifo_map,), self.segment_id, offset)
            COUNTERS.signals_sent += 1
            if result:
                self.after_fanout(result, (ref,))
        for ref in kernel:
            if not FAULTS.should_drop():
                self._send_kernel(ref, offset)

    def _check_alive(self, refs: Iterable[FifoRef]) -> None:
        """A full FIFO may belong to a dead receiver: reclaim it (lazily, by the sender).

        Liveness costs a /proc read, so each receiver is checked at most every 50 ms."""
        now = time.monotonic()
        due = [r for r in refs if now - r.checked_at > 0.05]
        for r in due:
            r.checked_at = now
        dead = [r for r in due if not r.alive()]
        if not dead:
            return
        for e in self.directory.entries():
            if any(e.token == r.token for r in dead) and self.directory.free(e):
                COUNTERS.dead_receivers_reclaimed += 1
        self.version = -1
        for r in dead:
            forget(r.token)
            reclaim_fifo_file(r.token)


def reclaim_fifo_file(token: int) -> None:
    """Remove a dead receiver's FIFO and its socket (kernel path or doorbell), if it had one."""
    for path in (namespace.socket_path(token), namespace.fifo_path(token)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
