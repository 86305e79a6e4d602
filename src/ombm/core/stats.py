"""Process-wide counters of best-effort events (STYLE.md: loss is counted, not raised).

``ombm.stats()`` returns a snapshot dict; the counters themselves are plain
attributes bumped on the hot paths (under the GIL; a stolen increment under
heavy threading is tolerated, these are statistics).
"""

from __future__ import annotations

import os

from ombm import _native


class Counters:
    signals_sent: int
    signals_delivered: int
    signals_dropped: int
    signals_dropped_fault: int
    signals_unhandled: int
    signals_stalled: int
    signals_corrupt: int
    messages_corrupted_fault: int
    wakeups: int
    doorbells: int
    kernel_signals: int
    dead_receivers_reclaimed: int
    handler_errors: int
    mappings_broken: int
    __slots__ = tuple(__annotations__)  # the counters above, in this order

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        _native.writer_signals_reset()
        _native.fifo_corrupt_reset()
        _native.dispatch_counters_reset()
        _native.mappings_broken_reset()
        _native.fault_counters_reset()

    def snapshot(self) -> dict[str, int]:
        counts = {name: getattr(self, name) for name in self.__slots__}
        counts["signals_sent"] += _native.writer_signals_sent()  # pushed by Region.write's native path
        counts["signals_corrupt"] += _native.fifo_corrupt()  # counted where the ring found them
        delivered, unhandled = _native.dispatch_counters()  # counted by sig_wait's native dispatch
        counts["signals_delivered"] += delivered
        counts["signals_unhandled"] += unhandled
        counts["mappings_broken"] += _native.mappings_broken()  # counted by the SIGBUS handler
        dropped, corrupted = _native.fault_counters()  # counted where fault injection drew them
        counts["signals_dropped_fault"] += dropped
        counts["messages_corrupted_fault"] += corrupted
        return counts


COUNTERS = Counters()
os.register_at_fork(after_in_child=COUNTERS.reset)


def stats() -> dict[str, int]:
    """A snapshot of this process's signal counters.

    ``signals_sent`` counts pushes into receivers' FIFOs (one per receiver),
    ``signals_delivered`` handler calls made in this process, ``signals_dropped``
    signals lost because a receiver's FIFO was full (or its kernel queue),
    ``signals_dropped_fault``/``messages_corrupted_fault`` what fault injection did,
    ``signals_stalled`` FIFO cells retired because their producer died between
    claim and publish, ``signals_corrupt`` FIFO words found that no ombm process
    writes (a peer wrote the FIFO): pushes dropped, cells repaired;
    ``mappings_broken`` shared mappings whose file shrank under us (a peer's
    ``ftruncate``) or could not get a page (``/dev/shm`` full): the SIGBUS that
    would have killed this process replaced the mapping with zero pages, and
    the channel on it ended with an error.
    """
    return COUNTERS.snapshot()
