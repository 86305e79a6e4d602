"""The spin budget of a waiter whose answer crosses a path (issue 12; docs/net.md, *Spin, then sleep*).

Paper §3.1.2: a receiver sees a signal while it spins and is woken through the kernel only if it
sleeps. On one host the answer comes within the process's spin cap (``spin_us``) or not at all
soon; across hosts it comes after the path's round trip, which is longer than that cap, so a fixed
local budget always loses: the waiter sleeps, and pays a kernel wake-up (10-50 µs, more when its
CPU halted meanwhile) on top of the round trip. A waiter whose answer crosses a path therefore spins
for about that path's round trip instead: the smoothed round trip of the path (RFC 6298's SRTT,
smoothed by 1/8: that of :class:`~ombm.transport.rpc_protocol.ClientProtocol`, which keeps one per
session, so per path, until this policy has its own from the waits themselves: the protocol hears
of the fast lane's calls only now and then), times ``RTT_MARGIN`` for its spread, at least the
process's cap and at most ``MAX_SPIN_NS``: beyond that a wake-up is a few per cent of the wait and a
spin cannot win much. A wait that slept includes its wake-up, so the estimate errs long, which only
lets the next spin last until the answer comes.

Whether a spin wins is learnt, not assumed: ``MISSES`` waits in a row that outlasted their
spin (the answer came after it: a slow server, or a peer that does not get a CPU on a loaded
machine) drop the budget to ``FLOOR_NS``, and every ``PROBE``-th wait tries the full budget again;
one wait that ended within its spin restores it. The same rule as a local wait's
(``ombm.core.signals``), measured against the path's budget instead of the local cap.
Sans-I/O: no clock, no OS; the caller passes the cap, the estimate and what each wait took.
"""

from __future__ import annotations

__all__ = ["PathSpin"]


class PathSpin:
    """The spin policy of one waiter on one path (an RPC client of a remote service)."""

    RTT_MARGIN = 1.5
    MAX_SPIN_NS = 1_000_000
    FLOOR_NS = 2_000
    MISSES = 8
    PROBE = 64

    __slots__ = ("misses", "srtt_ns")

    def __init__(self) -> None:
        self.misses = 0  # waits in a row that outlasted their spin
        self.srtt_ns: float | None = None  # the smoothed wait for an answer on this path

    def budget_ns(self, cap_ns: int, srtt_s: float | None) -> int:
        """How long to spin before sleeping: ``cap_ns`` (the process's, 0: never spin) until the path
        has a round-trip estimate (this policy's own, else ``srtt_s``, the transport's), then the
        estimate with its margin (see the module)."""
        if cap_ns <= 0:
            return 0
        budget = cap_ns
        srtt_ns = self.srtt_ns if self.srtt_ns is not None else None if srtt_s is None else srtt_s * 1e9
        if srtt_ns is not None and srtt_ns > 0:
            budget = max(cap_ns, min(self.MAX_SPIN_NS, int(srtt_ns * self.RTT_MARGIN)))
        if self.misses >= self.MISSES and self.misses % self.PROBE:
            return min(budget, self.FLOOR_NS)
        return budget

    def waited(self, waited_ns: int, budget_ns: int) -> None:
        """Learn from a wait that took its answer after ``waited_ns``, having spun up to ``budget_ns``."""
        srtt = self.srtt_ns
        self.srtt_ns = float(waited_ns) if srtt is None else srtt + (waited_ns - srtt) / 8
        if waited_ns > budget_ns:
            self.misses += 1
        else:
            self.misses = 0
