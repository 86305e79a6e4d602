"""The memory system's protocols: write-invalidate and message mode (paper §3.2, §3.3, §6, Fig. 5).

This module owns what happens to a cache line, as sequences of timed
transactions on the :class:`~ombm.sim.machine.Machine`, and the directory
state those transactions leave behind.

**Conventional write-invalidate** (§6's baseline). Copies are recorded in the
directories: the L2 entry's P_i bits name the processors holding the line
(mode shared or private), its G bit says other boards hold it too; the L3 and
memory entries name boards and clusters. On one board a coherence step is one
L2-bus transaction. Below L2 (L3 bus, fiber) the protocol uses split
transactions through the directory, so every coherence message crosses the
lower levels twice, to the directory and on from it: §6's "effectively twice
that of the L2 level". Hence, for writer p and sharer/owner q on other boards:

* ownership: p's request, then invalidate and ack through the directory:
  2 L2-bus + 4 lower address crossings;
* read miss on a dirty line: request and recall (2 lower address crossings),
  the owner's write-back and the data back (2 lower data crossings), plus
  the L2-bus request, recall, write-back and fill.

On ParaDiGM as built (§5) the L3 level is kept consistent by kernel
software: every conventional step between boards adds a kernel fault.

**Message mode** (§3.2.2, §3.3.1). The sender's L1 writes message lines
through to its L2. An update goes straight to the receivers' boards, routed by
the directory: the L2 entry's P_i bits name local receivers, its G bit sends it
down to the L3 entry (boards) and memory entry (clusters), one crossing of each
lower stage. A signal is one address transaction on each receiving board's
L2 bus, which pushes the address into every receiver's FIFO. With
signal-on-write the signal rides on the update; an explicit (kernel) signal is
a separate address transaction from the sender's board.
"""

from __future__ import annotations

from ombm.sim.machine import Entry, Machine, Mode, Process
from ombm.sim.params import Component


class Memory:
    """Coherence and message delivery on one :class:`Machine`."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        params = machine.params
        self._fault = Component("software L3 consistency fault", params.sw_l3_fault_us, 0)

    # -- directory state ------------------------------------------------
    def holders(self, line: int) -> dict[int, Mode]:
        """Processors with a copy of a conventional line, found by walking the directories."""
        m = self.m
        found: dict[int, Mode] = {}
        for cluster in m.memory_dir[line].p_bits:
            for board in m.l3_dir[cluster][line].p_bits:
                entry = m.l2_dir[board][line]
                found.update((p, entry.mode) for p in entry.p_bits)
        return found

    def set_holders(self, line: int, holders: dict[int, Mode]) -> None:
        """Record the copies of a conventional line in the L2, L3 and memory directories."""
        m = self.m
        for board in m.by_board(self.holders(line)):
            m.l2_dir[board][line] = Entry()
        by_board = m.by_board(holders)
        for board, procs in by_board.items():
            mode = Mode.PRIVATE if any(holders[p] is Mode.PRIVATE for p in procs) else Mode.SHARED
            m.l2_dir[board][line] = Entry(mode, frozenset(procs), len(by_board) > 1)
        self._set_lower(line, set(by_board), Mode.SHARED)

    def _set_lower(self, line: int, boards: set[int], mode: Mode) -> None:
        """L3 entries (boards per cluster) and the memory entry (clusters) for ``boards``."""
        m, per = self.m, self.m.params.boards_per_cluster
        clusters = {b // per for b in boards}
        for cluster in range(len(m.l3_dir)):
            members = frozenset(b for b in boards if b // per == cluster)
            m.l3_dir[cluster][line] = Entry(mode, members, len(clusters) > 1) if members else Entry()
        m.memory_dir[line] = Entry(mode, frozenset(clusters)) if clusters else Entry()

    def bind(self, line: int, writer: int, receivers: frozenset[int], signalling: bool) -> None:
        """Put a line in message mode: load its receivers from the page frame descriptor (§3.1.2)."""
        m = self.m
        m.frames[line] = receivers
        mode = Mode.MESSAGE_SIGNAL if signalling else Mode.MESSAGE_NOSIGNAL
        own_board = m.processors[writer].board
        boards = m.by_board(receivers)
        remote = set(boards) - {own_board}
        for board in boards.keys() | {own_board}:
            m.l2_dir[board][line] = Entry(mode, frozenset(boards.get(board, ())),
                                          board == own_board and bool(remote))
        self._set_lower(line, remote, mode)

    def targets(self, writer: int, line: int) -> dict[int, frozenset[int]]:
        """Receivers of a signal on ``line`` by board: from the directory in message mode,
        else from the page frame descriptor (an explicit signal on a conventional line)."""
        m = self.m
        own = m.processors[writer].board
        entry = m.l2_dir[own][line]
        if not entry.mode.is_message:
            return {b: frozenset(qs) for b, qs in m.by_board(m.frames[line]).items()}
        found = {own: entry.p_bits} if entry.p_bits else {}
        if entry.g_bit:
            for cluster in m.memory_dir[line].p_bits:
                for board in m.l3_dir[cluster][line].p_bits:
                    found[board] = m.l2_dir[board][line].p_bits
        return found

    # -- write-invalidate ------------------------------------------------
    def read(self, p: int, line: int) -> Process:
        """A load: nothing on a hit, else fetch the line (from its owner if dirty)."""
        holders = self.holders(line)
        if p not in holders:
            owner = next((q for q, mode in holders.items() if mode is Mode.PRIVATE), None)
            source = owner if owner is not None else self._nearest(p, holders)
            yield from self._fetch(p, source, dirty=owner is not None)
            holders = {q: Mode.SHARED for q in holders} | {p: Mode.SHARED}
            self.set_holders(line, holders)

    def write(self, p: int, line: int) -> Process:
        """A store: gain ownership, invalidating every other copy."""
        holders = self.holders(line)
        if holders.get(p) is Mode.PRIVATE:
            return
        others = [q for q in holders if q != p]
        if p not in holders:
            owner = next((q for q in others if holders[q] is Mode.PRIVATE), None)
            source = owner if owner is not None else self._nearest(p, holders)
            yield from self._fetch(p, source, dirty=owner is not None)
            if owner is not None:
                others.remove(owner)
        for q in others:
            yield from self._invalidate(p, q)
        self.set_holders(line, {p: Mode.PRIVATE})

    def _nearest(self, p: int, holders: dict[int, Mode]) -> int | None:
        return min(holders, key=lambda q: self.m.level(p, q), default=None)

    def _fault_if_remote(self, p: int, q: int) -> Process:
        m = self.m
        if m.params.l3_software_consistency and m.processors[p].board != m.processors[q].board:
            yield from m.cpu(p, self._fault)

    def _via_directory(self, p: int, q: int, kind: str) -> Process:
        """A split-transaction coherence message from p's board to q's: two lower crossings."""
        yield from self.m.cross(p, q, kind)
        yield from self.m.cross(p, q, kind)

    def _fetch(self, p: int, source: int | None, dirty: bool) -> Process:
        m = self.m
        yield from m.bus(p, "address")
        if source is not None and m.processors[source].board != m.processors[p].board:
            yield from self._fault_if_remote(p, source)
            yield from self._via_directory(p, source, "address")
            if dirty:
                yield from m.bus(source, "address")
        if dirty:
            assert source is not None, "a dirty line comes from its owner"
            yield from m.bus(source, "data")
        if source is not None:
            yield from self._via_directory(source, p, "data")
        yield from m.bus(p, "data")

    def _invalidate(self, p: int, q: int) -> Process:
        m = self.m
        yield from m.bus(p, "address")
        if m.processors[q].board != m.processors[p].board:
            yield from self._fault_if_remote(p, q)
            yield from self._via_directory(p, q, "address")
            yield from m.bus(q, "address")
            yield from self._via_directory(q, p, "address")

    # -- message mode ----------------------------------------------------
    def write_through(self, p: int, line: int) -> Process:
        """The sender's L1 writes a message line through to its board's L2."""
        yield from self.m.bus(p, "data")

    def fill(self, q: int, line: int) -> Process:
        """A receiver reloads a delivered message line from its own board's L2."""
        yield from self.m.bus(q, "data")

    def deliver(self, p: int, line: int, *, data: bool, signal: bool, explicit: bool) -> Process:
        """Send an update and/or a signal for ``line`` from ``p`` to every receiver.

        ``explicit`` is a kernel-issued signal: one address transaction from the
        sender's board to its cache controller. Boards are served in parallel.
        """
        m = self.m
        if explicit:
            yield from m.bus(p, "address")
        jobs = [
            m.env.process(self._to_board(p, board, receivers, line, data, signal, explicit))
            for board, receivers in self.targets(p, line).items()
        ]
        yield m.env.all_of(jobs)

    def _to_board(self, p: int, board: int, receivers: frozenset[int], line: int,
                  data: bool, signal: bool, explicit: bool) -> Process:
        m = self.m
        remote = board != m.processors[p].board
        first = min(receivers) if receivers else None
        if remote and first is not None:
            yield from m.cross(p, first, "data" if data else "address")
        if signal and first is not None:
            if remote or not explicit:
                yield from m.bus(first, "address")
            for q in sorted(receivers):
                m.processors[q].fifo.push(line)
