"""Beyond the paper's measurements: FIFO loss, function shipping, the reverse TLB (§2, §3.1.2, §3.1.3).

Each scenario runs the simpy model under load and returns plain data:

(f) :func:`fifo_loss`  signal loss vs FIFO size when senders signal in bursts
    (every written line signals, as with a ``CACHE_LINE`` unit). The receiver's
    handler touches no bus, so the arrival times are the same for every FIFO
    size and only the FIFO decides what is lost (§3.1.2, §4).
(g) :func:`shipping`   §2's work-queue allocator used by N processors. *Data
    shipping*: each processor takes the allocator's lock (an ideal FIFO queue
    lock, which flatters it) and pulls the lock+queue line and the allocator's
    data lines into its own cache by write-invalidate. *Function shipping*: each
    processor sends an optimized-MBM request to an allocator processor, which
    keeps the allocator's data in its cache and replies by message.
(h) :func:`rtl`        the reverse TLB of §3.1.3: signal-to-handler latency as the
    number of signalled regions outgrows the RTL (LRU, loaded by the kernel on a miss).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TypedDict

import simpy

from ombm.sim.machine import Machine, Process
from ombm.sim.mbm import OPTIMIZED, Messenger
from ombm.sim.memory import Memory
from ombm.sim.params import ALLOCATIONS_PER_CLIENT, ALLOCATOR_LINES, ALLOCATOR_US, FIFO_BURSTS_PER_SENDER, FIFO_MEAN_GAP_US, FIFO_SENDERS, FUTURE, HANDLER_US, RTL_GAP_US, RTL_SIGNALS, THINK_US, Component, MachineParams

FIFO_SIZES = (4, 8, 16, 32, 64, 128, 256, 512)
BURSTS = (8, 32, 128)
SHIPPING_N = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
RTL_ENTRIES = (0, 2, 4, 8)
RTL_REGIONS = (1, 2, 4, 8, 16)

class FifoLoss(TypedDict):
    burst: int
    fifo_entries: int
    signals: int
    dropped: int
    loss: float


class Shipping(TypedDict):
    n: int
    mode: str  # "data" or "function"
    mean_latency_us: float
    throughput_per_ms: float
    transactions_per_allocation: float
    lower_transactions_per_allocation: float


class RtlRow(TypedDict):
    rtl_entries: int
    regions: int
    hit_rate: float
    mean_latency_us: float


_HANDLER = Component("signal handler", HANDLER_US, 0)
_ALLOCATOR = Component("allocator", ALLOCATOR_US, 0)


def fifo_loss(burst: int, fifo_entries: int, senders: int = FIFO_SENDERS,
              bursts_each: int = FIFO_BURSTS_PER_SENDER, mean_gap_us: float = FIFO_MEAN_GAP_US,
              seed: int = 1, params: MachineParams = FUTURE) -> FifoLoss:
    """(f) Senders 1..``senders`` signal processor 0 in bursts of ``burst`` lines."""
    machine = Machine(replace(params, fifo_entries=fifo_entries), senders + 1)
    messenger = Messenger(machine, OPTIMIZED)
    rng = random.Random(seed)

    def sender(p: int, gaps: list[float]) -> Process:
        channels = [messenger.open(p, 0) for _ in range(burst)]
        for gap in gaps:
            yield machine.env.timeout(gap)
            for channel in channels:
                yield from messenger.send(channel)

    def receiver() -> Process:
        while True:
            yield from messenger.receive(0)
            yield from machine.cpu(0, _HANDLER)

    for p in range(1, senders + 1):
        machine.env.process(sender(p, [rng.expovariate(1 / mean_gap_us) for _ in range(bursts_each)]))
    machine.env.process(receiver())
    machine.env.run()
    fifo = machine.processors[0].fifo
    sent = fifo.delivered + fifo.dropped
    return {"burst": burst, "fifo_entries": fifo_entries, "signals": sent,
            "dropped": fifo.dropped, "loss": fifo.dropped / sent}


def fifo_curve(bursts: tuple[int, ...] = BURSTS, sizes: tuple[int, ...] = FIFO_SIZES) -> list[FifoLoss]:
    return [fifo_loss(burst, size) for burst in bursts for size in sizes]


def _think(machine: Machine, rng: random.Random) -> Process:
    """Work on the allocated item: exponential, so the clients' order is not round-robin."""
    yield machine.env.timeout(machine.params.cpu_us(rng.expovariate(1 / THINK_US)))


def _data_shipping(machine: Machine, clients: list[int], latencies: list[float]) -> None:
    memory = Memory(machine)
    queue_line, data_lines = machine.new_line(), [machine.new_line() for _ in range(ALLOCATOR_LINES)]
    lock = simpy.Resource(machine.env, 1)

    def client(p: int) -> Process:
        rng = random.Random(p)
        for _ in range(ALLOCATIONS_PER_CLIENT):
            start = machine.env.now
            with lock.request() as request:
                yield request
                yield from memory.write(p, queue_line)
                for _ in range(machine.params.lock_bus_transactions):
                    yield from machine.bus(p, "word")
                for line in data_lines:
                    yield from memory.write(p, line)
                yield from machine.cpu(p, _ALLOCATOR)
            latencies.append(machine.env.now - start)
            yield from _think(machine, rng)

    for p in clients:
        machine.env.process(client(p))


def _function_shipping(machine: Machine, clients: list[int], latencies: list[float]) -> None:
    messenger = Messenger(machine, OPTIMIZED)
    requests = {p: messenger.open(p, 0) for p in clients}
    replies = {p: messenger.open(0, p) for p in clients}

    def allocator() -> Process:
        while True:
            request = yield from messenger.receive(0)
            yield from messenger.read(0, request)
            yield from machine.cpu(0, _ALLOCATOR)
            yield from messenger.send(replies[request.writer])

    def client(p: int) -> Process:
        rng = random.Random(p)
        for _ in range(ALLOCATIONS_PER_CLIENT):
            start = machine.env.now
            yield from messenger.send(requests[p])
            reply = yield from messenger.receive(p)
            yield from messenger.read(p, reply)
            latencies.append(machine.env.now - start)
            yield from _think(machine, rng)

    machine.env.process(allocator())
    for p in clients:
        machine.env.process(client(p))


def shipping(n: int, mode: str, params: MachineParams = FUTURE) -> Shipping:
    """(g) ``n`` processors (1..n) allocating work by ``mode`` "data" or "function" shipping."""
    machine = Machine(params, n + 1)
    latencies: list[float] = []
    setup = {"data": _data_shipping, "function": _function_shipping}[mode]
    setup(machine, list(range(1, n + 1)), latencies)
    machine.env.run()
    lower = sum(count for (stage, _), count in machine.counts.items() if stage != "L2 bus")
    return {
        "n": n,
        "mode": mode,
        "mean_latency_us": sum(latencies) / len(latencies),
        "throughput_per_ms": 1000 * len(latencies) / machine.env.now,
        "transactions_per_allocation": sum(machine.counts.values()) / len(latencies),
        "lower_transactions_per_allocation": lower / len(latencies),
    }


def shipping_curve(ns: tuple[int, ...] = SHIPPING_N) -> list[Shipping]:
    return [shipping(n, mode) for n in ns for mode in ("data", "function")]


def rtl(entries: int, regions: int, signals: int = RTL_SIGNALS, gap_us: float = RTL_GAP_US,
        seed: int = 2, params: MachineParams = FUTURE) -> RtlRow:
    """(h) Processor 1 signals processor 0 on ``regions`` channels chosen at random."""
    machine = Machine(replace(params, rtl_entries=entries), 2)
    messenger = Messenger(machine, OPTIMIZED)
    channels = [messenger.open(1, 0) for _ in range(regions)]
    rng = random.Random(seed)
    sent_at: list[float] = []
    latencies: list[float] = []

    def sender() -> Process:
        for _ in range(signals):
            sent_at.append(machine.env.now)
            yield from messenger.send(rng.choice(channels))
            yield machine.env.timeout(gap_us)

    def receiver() -> Process:
        for i in range(signals):
            yield from messenger.receive(0)
            latencies.append(machine.env.now - sent_at[i])
            yield from machine.cpu(0, _HANDLER)

    machine.env.process(sender())
    machine.env.process(receiver())
    machine.env.run()
    hits = sum(step.name == "reverse TLB dispatch" for step in machine.processors[0].trace)
    return {"rtl_entries": entries, "regions": regions, "hit_rate": hits / signals,
            "mean_latency_us": sum(latencies) / signals}


def rtl_grid(entries: tuple[int, ...] = RTL_ENTRIES, regions: tuple[int, ...] = RTL_REGIONS) -> list[RtlRow]:
    return [rtl(e, r) for e in entries for r in regions]
