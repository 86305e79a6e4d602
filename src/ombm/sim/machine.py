"""The ParaDiGM machine as simpy resources (paper §3.1.2, Fig. 3, Fig. 4, §6).

This module owns the machine's structure and its timed primitives:

* **processors** with a speed relative to the 25 MHz 68040, a per-processor
  signal FIFO that drops a signal when full (§3.1.2), an optional reverse TLB
  (§3.1.3), and a trace of the software components they ran (Table 1);
* **cache directories**: one per L2 (shared by a 4-processor board), one per L3
  (shared by the boards of a cluster) and one for memory (clusters). An entry
  holds the 3-bit mode (invalid, shared, private, message-signalling,
  message-non-signalling), the P_i bits (processors, boards or clusters below)
  and the G bit (the next level down is involved);
* **buses and fiber links** as simpy resources held for the length of each
  transaction, so contention shows up as waiting; every transaction is counted
  by stage and kind for Fig. 5: ``data`` carries a line, ``address`` is
  address-only (request, invalidate, ack, signal), ``word`` a single-word
  locked cycle; the last two cost the address fraction of a line.

Geometry: processors fill boards, boards fill clusters, clusters sit on a line
of fiber links. The *level* between two processors is 2 on one board (they
meet in the L2), 3 in one cluster (the L3), and 3 + hops across clusters
(§6, Fig. 6); :func:`placement` picks a sender and a receiver that far
apart. Coherence protocols live in :mod:`ombm.sim.memory`.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable, NamedTuple

import simpy

from ombm.sim.params import Component, MachineParams

# a simpy process: yields events, is sent their values (simpy does not type them), returns nothing
Process = Generator[simpy.Event, Any, None]


class Mode(enum.IntEnum):
    """The 3-bit mode of a cache directory entry (Fig. 3)."""

    INVALID = 0
    SHARED = 1
    PRIVATE = 2
    MESSAGE_SIGNAL = 3
    MESSAGE_NOSIGNAL = 4

    @property
    def is_message(self) -> bool:
        return self in (Mode.MESSAGE_SIGNAL, Mode.MESSAGE_NOSIGNAL)


@dataclass(frozen=True)
class Entry:
    """One directory entry: mode, P_i bits (members below) and the G bit."""

    mode: Mode = Mode.INVALID
    p_bits: frozenset[int] = frozenset()
    g_bit: bool = False


class Directory:
    """The directory of one cache: line -> :class:`Entry` (invalid when absent)."""

    def __init__(self) -> None:
        self._entries: dict[int, Entry] = {}

    def __getitem__(self, line: int) -> Entry:
        return self._entries.get(line, Entry())

    def __setitem__(self, line: int, entry: Entry) -> None:
        if entry.mode is Mode.INVALID:
            self._entries.pop(line, None)
        else:
            self._entries[line] = entry


class SignalFifo:
    """A processor's signal FIFO (§3.1.2): bounded, in order, drops when full."""

    def __init__(self, env: simpy.Environment, capacity: int) -> None:
        self.env = env
        self.capacity = capacity
        self.entries: deque[int] = deque()
        self.delivered = 0
        self.dropped = 0
        self._waiter: simpy.Event | None = None

    def push(self, address: int) -> bool:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.succeed(address)
        elif len(self.entries) >= self.capacity:
            self.dropped += 1
            return False
        else:
            self.entries.append(address)
        self.delivered += 1
        return True

    def get(self) -> simpy.Event:
        """An event whose value is the next address (the signal interrupt)."""
        event = self.env.event()
        if self.entries:
            event.succeed(self.entries.popleft())
        else:
            self._waiter = event
        return event


@dataclass
class Processor:
    index: int
    board: int
    cluster: int
    fifo: SignalFifo
    rtl: OrderedDict[int, None] = field(default_factory=OrderedDict)
    trace: list[Component] = field(default_factory=list)


class Stage(NamedTuple):
    """One bus or link a transaction crosses."""

    name: str
    resource: simpy.Resource
    line_us: float
    address_us: float


class Machine:
    """Processors, directories, buses and links of one simulated ParaDiGM."""

    def __init__(self, params: MachineParams, processors: int) -> None:
        self.env = simpy.Environment()
        self.params = params
        per_board, per_cluster = params.processors_per_board, params.boards_per_cluster
        boards = -(-processors // per_board)
        clusters = -(-boards // per_cluster)
        self.processors = [
            Processor(p, p // per_board, p // per_board // per_cluster,
                      SignalFifo(self.env, params.fifo_entries))
            for p in range(processors)
        ]
        l2_addr = params.l2_line_us * params.l2_address_fraction
        low = params.lower_address_fraction
        self.l2_bus = [self._stage("L2 bus", params.l2_line_us, l2_addr) for _ in range(boards)]
        self.l3_bus = [self._stage("L3 bus", params.l3_line_us, params.l3_line_us * low)
                       for _ in range(clusters)]
        self.links = {
            (c, c + d): self._stage("fiber", params.hop_line_us, params.hop_line_us * low)
            for c in range(clusters) for d in (-1, 1) if 0 <= c + d < clusters
        }
        self.l2_dir = [Directory() for _ in range(boards)]
        self.l3_dir = [Directory() for _ in range(clusters)]
        self.memory_dir = Directory()
        self.frames: dict[int, frozenset[int]] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self._next_line = 0

    def _stage(self, name: str, line_us: float, address_us: float) -> Stage:
        return Stage(name, simpy.Resource(self.env, capacity=1), line_us, address_us)

    def new_line(self) -> int:
        """A fresh physical line address (in units of lines)."""
        self._next_line += 1
        return self._next_line

    def by_board(self, processors: Iterable[int]) -> dict[int, set[int]]:
        """Group processor indices by board."""
        boards: dict[int, set[int]] = {}
        for p in processors:
            boards.setdefault(self.processors[p].board, set()).add(p)
        return boards

    def level(self, p: int, q: int) -> int:
        a, b = self.processors[p], self.processors[q]
        if a.board == b.board:
            return 2
        return 3 + abs(a.cluster - b.cluster)

    # -- software -------------------------------------------------------
    def cpu(self, p: int, component: Component) -> Process:
        """Run a software step on processor ``p`` (time scaled by CPU speed); trace it."""
        time_us = self.params.cpu_us(component.time_us)
        self.processors[p].trace.append(component._replace(time_us=time_us))
        yield self.env.timeout(time_us)

    # -- hardware transactions -----------------------------------------
    def _hold(self, stage: Stage, kind: str) -> Process:
        with stage.resource.request() as request:
            yield request
            yield self.env.timeout(stage.line_us if kind == "data" else stage.address_us)
        self.counts[stage.name, kind] += 1

    def bus(self, p: int, kind: str) -> Process:
        """One transaction on the L2 bus of ``p``'s board."""
        yield from self._hold(self.l2_bus[self.processors[p].board], kind)

    def lower_stages(self, board_from: int, board_to: int) -> list[Stage]:
        """The L3 bus and fiber links between two boards (empty on one board)."""
        if board_from == board_to:
            return []
        per_cluster = self.params.boards_per_cluster
        c_from, c_to = board_from // per_cluster, board_to // per_cluster
        step = 1 if c_to > c_from else -1
        links = [self.links[c, c + step] for c in range(c_from, c_to, step)]
        return links + [self.l3_bus[c_to]]

    def cross(self, p: int, q: int, kind: str) -> Process:
        """One crossing of the levels below L2, from ``p``'s board to ``q``'s."""
        for stage in self.lower_stages(self.processors[p].board, self.processors[q].board):
            yield from self._hold(stage, kind)


def placement(params: MachineParams, level: int) -> tuple[int, int]:
    """Sender and receiver processors at ``level`` (2 = L2, 3 = L3, 3+h = h fiber hops)."""
    per_board, per_cluster = params.processors_per_board, params.boards_per_cluster
    if level == 2:
        return 0, 1
    if level == 3:
        return 0, per_board
    return 0, (level - 3) * per_board * per_cluster
