"""Memory-based messaging in its four configurations (paper §3, §5.1, §6).

This module owns the send and receive paths of a message: which kernel
software steps of Table 1 run, on which processor, and which memory-system
operations (:mod:`ombm.sim.memory`) they trigger. Configurations add the
paper's optimizations one at a time, in the order of §6:

======================  =========================================================
``SOFTWARE``            §5.1's software-only MBM, and §6's baseline: write-invalidate
                        memory, the sender traps, inserts the address in the
                        receiver's kernel queue (its lock and entries share one
                        line) and interrupts the receiver, which removes it.
``SIGNALS``             + address-valued signals: the sender still traps, then the
                        cache controller delivers the address to the receiver's FIFO.
``CONSISTENCY``         + message-oriented consistency: message lines are written
                        through and pushed to the receivers' L2s; the receiver
                        invalidates its L1 copy in software. Without signal-on-write
                        the kernel pushes the update, then signals: the signal must
                        not overtake the data.
``OPTIMIZED``           + automatic signal-on-write: the last store of the message
                        sends the update and the signal together; no trap.
======================  =========================================================

A receiver takes the FIFO interrupt, runs the Table 1 receive path and calls
the handler with the message's channel; with a reverse TLB (§3.1.3) a hit
calls the handler directly. Under software L3 consistency (ParaDiGM as built)
a message signalled from another board costs the receiving kernel extra work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generator

import simpy

from ombm.sim.machine import Machine, Mode, Process
from ombm.sim.memory import Memory
from ombm.sim.params import TABLE1_HARDWARE as HW
from ombm.sim.params import TABLE1_SOFTWARE as SW
from ombm.sim.params import Component


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    address_valued_signals: bool
    message_consistency: bool
    signal_on_write: bool


SOFTWARE = Config("software", "software-only MBM", False, False, False)
SIGNALS = Config("signals", "+ address-valued signals", True, False, False)
CONSISTENCY = Config("consistency", "+ message-oriented consistency", True, True, False)
OPTIMIZED = Config("optimized", "+ automatic signal-on-write", True, True, True)
SEQUENCE = (SOFTWARE, SIGNALS, CONSISTENCY, OPTIMIZED)
CONFIGS = {config.key: config for config in SEQUENCE}

_RECEIVE_TAIL = (
    "check if kernel is receiver",
    "signal function scheduling",
    "return to user code",
    "user-level state save/restore",
)


@dataclass(frozen=True)
class Channel:
    """A one-way message area: ``lines`` written by ``writer``, signalled to ``receiver``."""

    writer: int
    receiver: int
    lines: tuple[int, ...]


@dataclass
class KernelQueue:
    """A receiver's software signal queue; its lock word shares the queue's line."""

    line: int
    lock: simpy.Resource
    entries: deque[int]


class Messenger:
    """One MBM configuration running on a :class:`Machine`."""

    def __init__(self, machine: Machine, config: Config) -> None:
        self.m = machine
        self.config = config
        self.memory = Memory(machine)
        self._channels: dict[int, Channel] = {}
        self._queues: dict[int, KernelQueue] = {}
        params = machine.params
        self._sw_signal = Component("software L3 consistency", params.sw_l3_signal_us, 0)
        self._rtl_hit = Component("reverse TLB dispatch", params.rtl_hit_cycles / params.cpu_mhz,
                                  params.rtl_hit_cycles)
        self._rtl_load = Component("reverse TLB load", params.rtl_load_us, 0)

    def open(self, writer: int, receiver: int, lines: int = 1) -> Channel:
        """A channel in steady state: the previous message was written and read."""
        m, config = self.m, self.config
        channel = Channel(writer, receiver, tuple(m.new_line() for _ in range(lines)))
        for i, line in enumerate(channel.lines):
            self._channels[line] = channel
            if config.message_consistency:
                last = i == lines - 1
                self.memory.bind(line, writer, frozenset({receiver}), config.signal_on_write and last)
            else:
                m.frames[line] = frozenset({receiver})
                self.memory.set_holders(line, {writer: Mode.SHARED, receiver: Mode.SHARED})
        if not config.address_valued_signals and receiver not in self._queues:
            queue = KernelQueue(m.new_line(), simpy.Resource(m.env, 1), deque())
            m.frames[queue.line] = frozenset({receiver})
            self.memory.set_holders(queue.line, {receiver: Mode.PRIVATE})
            self._queues[receiver] = queue
        return channel

    # -- sender ---------------------------------------------------------
    def send(self, channel: Channel, per_line: Component | None = None) -> Process:
        """Write the message (``per_line`` software per line) and signal it."""
        yield from self._compose(channel, per_line)
        if not self.config.signal_on_write:
            yield from self._signal_call(channel)

    def _compose(self, channel: Channel, per_line: Component | None) -> Process:
        """The stores. A conventional line needs ownership first; a message line is
        written through while it is composed and, with signal-on-write, sent on."""
        m, p = self.m, channel.writer
        posts: list[simpy.Process] = []
        for i, line in enumerate(channel.lines):
            if not self.config.message_consistency:
                yield from self.memory.write(p, line)
                if per_line is not None:
                    yield from m.cpu(p, per_line)
                continue
            through = m.env.process(self.memory.write_through(p, line))
            if per_line is not None:
                yield from m.cpu(p, per_line)
            last = i == len(channel.lines) - 1
            posts.append(m.env.process(self._post(p, line, through, list(posts), last)))
        if posts:
            yield m.env.all_of(posts)

    def _signal_call(self, channel: Channel) -> Process:
        """The ``Signal`` trap: push the update (message mode) then signal in hardware,
        or queue the address for the receiver and interrupt it (software-only)."""
        m, memory, p = self.m, self.memory, channel.writer
        yield from m.cpu(p, SW["sender system call"])
        yield from m.cpu(p, SW["virtual-to-physical mapping"])
        if self.config.message_consistency:
            for line in channel.lines:
                yield from memory.deliver(p, line, data=True, signal=False, explicit=False)
        if self.config.address_valued_signals:
            yield from memory.deliver(p, channel.lines[-1], data=False, signal=True, explicit=True)
            return
        queue = self._queues[channel.receiver]
        yield from m.cpu(p, SW["determine receiving processors"])
        yield from self._queue_op(p, queue, SW["insert in kernel queue"])
        queue.entries.append(channel.lines[-1])
        yield from m.cpu(p, SW["generate interrupt"])
        yield from memory.deliver(p, queue.line, data=False, signal=True, explicit=True)

    def _post(self, p: int, line: int, through: simpy.Process,
              before: list[simpy.Process], last: bool) -> Process:
        yield through
        if self.config.signal_on_write:
            yield self.m.env.all_of(before)
            yield from self.memory.deliver(p, line, data=True, signal=last, explicit=False)

    def _queue_op(self, p: int, queue: KernelQueue, step: Component) -> Process:
        with queue.lock.request() as request:
            yield request
            yield from self.memory.write(p, queue.line)
            for _ in range(self.m.params.lock_bus_transactions):
                yield from self.m.bus(p, "word")
            yield from self.m.cpu(p, step)

    # -- receiver -------------------------------------------------------
    def receive(self, q: int) -> Generator[simpy.Event, Any, Channel]:
        """Wait for a signal on processor ``q`` and run the path up to the handler call.

        Returns the signalled :class:`Channel`.
        """
        m, config = self.m, self.config
        processor = m.processors[q]
        line = yield processor.fifo.get()
        use_rtl = config.address_valued_signals and m.params.rtl_entries > 0
        if use_rtl and line in processor.rtl:
            processor.rtl.move_to_end(line)
            yield from m.cpu(q, self._rtl_hit)
            return self._channels[line]
        if config.address_valued_signals:
            yield from m.cpu(q, HW["get physical address from FIFO"])
        else:
            queue = self._queues[q]
            yield from self._queue_op(q, queue, SW["remove from kernel queue"])
            line = queue.entries.popleft()
        channel = self._channels[line]
        yield from self._receive_path(q, channel)
        if use_rtl:
            yield from m.cpu(q, self._rtl_load)
            processor.rtl[line] = None
            if len(processor.rtl) > m.params.rtl_entries:
                processor.rtl.popitem(last=False)
        return channel

    def _receive_path(self, q: int, channel: Channel) -> Process:
        m, config = self.m, self.config
        remote = m.processors[channel.writer].board != m.processors[q].board
        if config.message_consistency and remote and m.params.l3_software_consistency:
            yield from m.cpu(q, self._sw_signal)
        yield from m.cpu(q, HW["physical-to-virtual mapping"])
        invalidate = (HW if config.message_consistency else SW)["invalidate L1 cache lines"]
        for _ in channel.lines:
            yield from m.cpu(q, invalidate)
        for name in _RECEIVE_TAIL:
            yield from m.cpu(q, HW[name])

    def read(self, q: int, channel: Channel, per_line: Component | None = None) -> Process:
        """The handler reads the message (``per_line`` software per line, e.g. unmarshal)."""
        for line in channel.lines:
            if self.config.message_consistency:
                yield from self.memory.fill(q, line)
            else:
                yield from self.memory.read(q, line)
            if per_line is not None:
                yield from self.m.cpu(q, per_line)
