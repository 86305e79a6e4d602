"""One path from this bridge to another: is it alive, and how large a datagram crosses it (sans-I/O).

The paper's bridge sends "an update ... as a datagram to the set of nodes that also bind the
affected shared segment" (§3.2.3) and is silent about the two things a real network adds: a node
that vanishes without a word, and a path whose MTU is smaller than the sender's link. A
:class:`Path` keeps both for one remote bridge; the bridge (``net/bridge.py``) owns the sockets and
the clock and asks it what to do.

**Keepalives.** Any datagram from the bridge is a sign of life (:meth:`Path.heard`). A path quiet
for ``keepalive_s`` gets a PING (:meth:`Path.ping_due`), one per period; silent for
``KEEPALIVE_PERIODS`` periods it is dead (:meth:`Path.dead`), and the bridge drops every link to it
as on a BYE.

**Path MTU (packetization-layer PMTU discovery, RFC 8899, simplified).** The bridge sends with
the don't-fragment bit set, so the kernel never fragments its datagrams and refuses (EMSGSIZE) one
larger than the path MTU it knows (from its link, or an ICMP "fragmentation needed":
:meth:`Path.kernel_says`). Where no ICMP comes back (a black hole: a smaller MTU at the far end of a
link, a filter) only a probe tells: a PROBE datagram of the size to try, answered by PROBED. The
path starts at ``BASE_MTU`` (RFC 8899's BASE_PLPMTU, 1,200 bytes, assumed to cross any path) or
the limit if lower, and searches upward: it probes the largest size the kernel and the limit allow;
a probe unanswered after ``PROBE_TRIES`` tries ``PROBE_GAP_S`` apart (or refused by the kernel)
marks that size too big, and the search goes on halfway between the largest size confirmed and the
smallest too big, until they are within ``SEARCH_STEP`` bytes. Every ``RAISE_S`` the search runs
again from the limit (a path may have grown). Sizes are UDP payloads (what ``--mtu`` gives).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Callable

__all__ = ["Path", "BASE_MTU", "KEEPALIVE_PERIODS", "PROBE_TRIES", "PROBE_GAP_S", "SEARCH_STEP", "RAISE_S"]

BASE_MTU = 1200          # RFC 8899 BASE_PLPMTU: a payload assumed to cross any path, used until a probe says more
KEEPALIVE_PERIODS = 3    # a path silent this many keepalive periods is dead
PROBE_TRIES = 3          # a probe size unanswered after this many tries is too big
PROBE_GAP_S = 0.2        # between two tries
SEARCH_STEP = 16         # the search stops when the largest size confirmed is this close to the smallest too big
RAISE_S = 600.0          # the search runs again after this (RFC 8899's PMTU_RAISE_TIMER)


@dataclass
class Path:
    """The path to one bridge: when it was last heard and pinged; the payload size confirmed to
    cross it (:attr:`mtu`), the smallest known not to (:attr:`too_big`), and the probe under way."""

    limit: int                  # the largest payload this bridge sends at all (``--mtu``)
    keepalive_s: float
    heard_s: float
    pinged_s: float = -math.inf
    mtu: int = 0
    too_big: int = 0
    probe_size: int = 0         # the size being probed (0: none)
    probe_nonce: int = 0
    probe_tries: int = 0
    probe_at_s: float = 0.0     # when to send the next try, or start the next search
    kernel: int = 0             # the kernel's last word on the path MTU (0: none yet)
    top_tried: bool = False     # the largest size allowed (below too_big) was probed since too_big last fell

    def __post_init__(self) -> None:
        self.mtu = min(BASE_MTU, self.limit)
        self.too_big = self.limit + 1
        self.probe_at_s = self.heard_s

    # ---- keepalives
    def heard(self, now_s: float) -> None:
        """A datagram came from the bridge."""
        self.heard_s = max(self.heard_s, now_s)

    def dead(self, now_s: float) -> bool:
        """Silent for ``KEEPALIVE_PERIODS`` keepalive periods."""
        return now_s - self.heard_s >= KEEPALIVE_PERIODS * self.keepalive_s

    def ping_due(self, now_s: float) -> bool:
        """Whether to send a PING now (quiet a period, and none sent this period); True records it."""
        if now_s - self.heard_s < self.keepalive_s or now_s - self.pinged_s < self.keepalive_s:
            return False
        self.pinged_s = now_s
        return True

    # ---- path MTU
    def kernel_says(self, payload: int, now_s: float) -> None:
        """The kernel's path MTU toward the bridge, as a UDP payload (its link's, or one an ICMP taught
        it): nothing larger can go, and what was confirmed larger no longer holds."""
        payload = self.kernel = max(payload, 1)
        if payload < self.mtu:
            self.mtu = payload
        if payload < self.too_big - 1:
            self.too_big, self.top_tried = payload + 1, False
            if self.probe_size >= self.too_big:
                self.probe_size = 0
                self._next_probe(now_s)

    def probe_due(self, now_s: float, build: Callable[[int, int], bytes]) -> bytes | None:
        """The PROBE datagram to send now, if one is due (``build(nonce, size)`` makes it; its length is
        what is probed); a size that had its tries is taken as too big first."""
        if now_s < self.probe_at_s:
            return None
        if self.probe_size and self.probe_tries >= PROBE_TRIES:
            self.too_big = self.probe_size
            self.probe_size = 0
            self._next_probe(now_s)
        elif not self.probe_size:
            self._next_probe(now_s, again=True)
        if not self.probe_size or now_s < self.probe_at_s:
            return None
        data = build(self.probe_nonce, self.probe_size)
        self.probe_size = len(data)
        self.probe_tries += 1
        self.probe_at_s = now_s + PROBE_GAP_S
        return data

    def refused(self, now_s: float) -> None:
        """The kernel refused the probe under way as too long (EMSGSIZE)."""
        if self.probe_size:
            self.too_big = min(self.too_big, self.probe_size)
            self.probe_size = 0
            self._next_probe(now_s)

    def probed(self, nonce: int, now_s: float) -> bool:
        """A PROBED came: if it answers the probe under way, its size crosses the path (True)."""
        if not self.probe_size or nonce != self.probe_nonce:
            return False
        self.mtu = max(self.mtu, self.probe_size)
        self.probe_size = 0
        self._next_probe(now_s)
        return True

    def next_s(self, probing: bool = True) -> float:
        """When this path next has something to do (a probe try unless not ``probing``, a ping, being
        declared dead)."""
        quiet = self.heard_s + self.keepalive_s
        return min(self.probe_at_s if probing else math.inf, max(quiet, self.pinged_s + self.keepalive_s),
                   self.heard_s + KEEPALIVE_PERIODS * self.keepalive_s)

    def _next_probe(self, now_s: float, again: bool = False) -> None:
        """Choose the next size to probe: the largest allowed first, then halfway; none when the search is
        done (it starts again after ``RAISE_S``: ``again``, from the limit or the kernel's word)."""
        if again:
            self.too_big, self.top_tried = min(self.limit, self.kernel or self.limit) + 1, False
        if self.too_big - 1 <= self.mtu or (self.top_tried and self.too_big - self.mtu <= SEARCH_STEP):
            self.probe_size, self.probe_at_s = 0, now_s + RAISE_S
            return
        size = (self.mtu + self.too_big) // 2 if self.top_tried else self.too_big - 1
        self.top_tried = True
        self.probe_size, self.probe_nonce, self.probe_tries, self.probe_at_s = size, secrets.randbits(63), 0, now_s
