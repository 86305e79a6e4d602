"""The core suite: address-valued signals between processes, against kernel wake-ups (issue 2).

Measures, in one run and on both placements of DESIGN.md §5 (cross-cpu and same-cpu):

- the signal round trip (a 32-byte write completing a cache line, signal-on-write, each way,
  between two processes) with ombm's ``spin``, ``adaptive`` and software-only (``kernel``)
  signal paths, side by side with an ``os.pipe``, a Unix socketpair and an eventfd ping-pong
  (``peers.signal_peers``) and the floors under them all (``floors``: a C cache-line ping-pong
  and a pure-Python shared-memory spin, built and run here; on one CPU they yield when idle);
- one-way signals/s to a receiver that keeps up (the sender keeps at most ``_CREDIT`` signals
  outstanding, the receiver publishes how many it consumed), with drops, and the sender's cost
  per signal; the sender's cost when the receiver is asleep (a futex wake); the added sender
  cost per extra multicast receiver;
- the CPU a receiver idle in ``sig_wait`` uses once its spin budget is spent;
- the paper's Table 3 (create, bind, enable, disable, unbind, release), in this process.

Every remote party is a freshly spawned, daemonic child pinned to its CPU and bounded by
``alarm(2)`` (:func:`child`, also used by the RPC suite); it stops on a flag in shared memory or
on its control pipe, is joined with a timeout and killed if it lingers. Nothing is left in the
per-user folder. This module is longer than most because each measurement needs its own child.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import secrets
import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import ombm
from ombm.core.config import WaitMode

from ombm.cli.bench import peers
from ombm.cli.bench.affinity import PLACEMENTS, pin, pinned
from ombm.cli.bench.peers import expect, timed
from ombm.cli.bench.report import Latency, Target, md_table, median, percent, rate, ratio, slope, targets_table, times, us

_CONTEXT = multiprocessing.get_context("spawn")
_START_TIMEOUT_S = 30.0
_JOIN_TIMEOUT_S = 5.0
_SEGMENT_BYTES = 4096
# offsets in the measurement segment: each in its own cache line
_PING, _REPLY, _COUNT, _STOP = 0, 64, 128, 192
_U64 = struct.Struct("<Q")
_CREDIT = 96  # one-way: signals outstanding at most, of the receiver FIFO's 128
_BATCH = 32  # one-way and multicast: signals sent back to back and timed together
_MODES: dict[str, tuple[WaitMode, bool]] = {  # ombm variant -> (wait mode, software-only signal path)
    "ombm spin": ("spin", False),
    "ombm adaptive": ("adaptive", False),
    "ombm software-only": ("adaptive", True),
    "ombm sleep": ("sleep", False),
}
_PAPER_TABLE3_US = {"create": 582, "bind": 320, "enable": 249, "disable": 231, "unbind": 243, "release": 636}

killed_children: list[str] = []  # children that had to be killed (the runner then runs ombm gc)


@dataclass(frozen=True)
class Plan:
    """Iteration counts of one run."""

    round_trips: int
    warmup: int
    one_way_signals: int
    asleep_signals: int
    multicast_signals: int
    multicast_receivers: tuple[int, ...]
    idle_window_s: float
    setup_iterations: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(400, 100, 20_000, 40, 2_048, (1, 2, 4), 1.0, 40)
        return cls(50_000, 2_000, 400_000, 300, 32_768, (1, 2, 4, 8), 2.0, 400)


@dataclass
class CoreResult:
    plan: Plan
    round_trips: dict[str, dict[str, Latency]] = field(default_factory=dict)  # placement -> system -> latency
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why
    one_way: dict[str, dict[str, float]] = field(default_factory=dict)  # placement -> figures
    asleep: dict[str, float] = field(default_factory=dict)
    multicast: list[dict[str, float]] = field(default_factory=list)
    idle: dict[str, float] = field(default_factory=dict)
    setup: dict[str, Latency] = field(default_factory=dict)
    elapsed_s: float = 0.0


# --- children -------------------------------------------------------------------------------------


@contextmanager
def child(
    target: Callable[..., None], *args: Any, cpu: int | None, env: dict[str, str] | None = None,
    lifetime_s: float = 120.0, terminate: bool = False,
) -> Iterator[tuple[multiprocessing.process.BaseProcess, Connection]]:
    """Run ``target(control, *args)`` in a spawned daemonic child pinned to ``cpu`` (None: unpinned).

    ``env`` is put in the child's environment before it starts (so before it imports ombm).
    Yields (process, control pipe) once the child sent ``("ready", ...)``; the ready message is
    in ``control.ready``. On the way out the child is told to stop (``("stop",)`` on the pipe, and
    SIGTERM if ``terminate``), joined, and killed if it lingers.
    """
    process, control = start_child(target, *args, cpu=cpu, env=env, lifetime_s=lifetime_s)
    try:
        expect(control, "ready", _START_TIMEOUT_S)
        yield process, control
    finally:
        stop_child(process, control, terminate)


def start_child(
    target: Callable[..., None], *args: Any, cpu: int | None, env: dict[str, str] | None = None,
    lifetime_s: float = 120.0,
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """Start ``target(control, *args)`` as :func:`child` does, without waiting for it to be ready;
    the caller ends it with :func:`stop_child`."""
    control, child_end = _CONTEXT.Pipe()
    process = _CONTEXT.Process(
        target=_child_main, args=(target, args, child_end, cpu, math.ceil(_START_TIMEOUT_S + lifetime_s)),
        name=f"ombm-bench-{target.__name__}", daemon=True,
    )
    try:
        with _environment(env or {}):
            process.start()
    except BaseException:
        control.close()
        raise
    finally:
        child_end.close()
    return process, control


def _child_main(target: Callable[..., None], args: tuple[Any, ...], control: Connection, cpu: int | None,
                lifetime_s: int) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(lifetime_s)  # a stuck child, or one whose parent died, dies too
    if cpu is not None:
        pin(cpu)
    try:
        target(control, *args)
    except Exception as exc:
        with suppress(OSError):
            control.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from exc


def stop_child(process: multiprocessing.process.BaseProcess, control: Connection, terminate: bool = False) -> None:
    """Tell a child to stop, join it, kill it if it lingers; close its control pipe."""
    with suppress(OSError):
        control.send(("stop",))
    if terminate and process.is_alive():
        process.terminate()
    process.join(_JOIN_TIMEOUT_S)
    if process.is_alive():
        killed_children.append(process.name)
        process.kill()
        process.join(_JOIN_TIMEOUT_S)
    control.close()


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime+stime from /proc/<pid>/stat in s, run time of all its threads from schedstat in s)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    run_ns = 0
    with suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                run_ns += int(schedstat.read().split()[0])
    return ticks / os.sysconf("SC_CLK_TCK"), run_ns / 1e9


def idle_cpu(pid: int, window_s: float) -> dict[str, float]:
    """The share of one core process ``pid`` used over ``window_s``."""
    ticks0, run0 = cpu_seconds(pid)
    start = time.monotonic()
    time.sleep(window_s)
    ticks1, run1 = cpu_seconds(pid)
    elapsed = time.monotonic() - start
    return {
        "stat_percent": 100 * (ticks1 - ticks0) / elapsed,
        "schedstat_percent": 100 * (run1 - run0) / elapsed,
        "window_s": elapsed,
        "resolution_percent": 100 / os.sysconf("SC_CLK_TCK") / elapsed,
    }


@contextmanager
def _segment() -> Iterator[tuple[ombm.Segment, ombm.Region]]:
    with ombm.create_segment(_SEGMENT_BYTES, name=f"bench-{os.getpid()}-{secrets.token_hex(4)}") as seg:
        yield seg, seg.bind()


@contextmanager
def _receiver(*, kernel: bool = False) -> Iterator[ombm.Receiver]:
    receiver = ombm.Receiver(kernel=kernel)
    try:
        yield receiver
    finally:
        receiver.close()


def _counting(counter: list[int]) -> Callable[[int], None]:
    def on_signal(address: int) -> None:
        counter[0] += 1

    return on_signal


# --- child bodies (run in the spawned process) -----------------------------------------------------


def _echo_child(control: Connection, name: str) -> None:
    """Answer each signal on line 0 with a 32-byte write completing line 1, until the stop flag."""
    with ombm.open_segment(name) as seg, _receiver() as receiver:
        region = seg.bind()
        write, reply, flags = region.write, b"r" * 32, region.buffer
        receiver.add_handler(region.address + _PING, 64, lambda address: write(_REPLY + 32, reply))
        control.send(("ready",))
        while not flags[_STOP]:
            receiver.wait(0.1)


def _sink_child(control: Connection, name: str, receivers: int, busy: bool) -> None:
    """Count signals on line 0 with ``receivers`` receivers; publish the total at ``_COUNT``.

    ``busy``: poll every FIFO without ever sleeping (multicast); else wait in ``wait_once``.
    """
    with ombm.open_segment(name) as seg:
        region = seg.bind()
        buffer, counter = region.buffer, [0]
        owned = [ombm.Receiver() for _ in range(receivers)]
        try:
            for receiver in owned:
                receiver.add_handler(region.address + _PING, 64, _counting(counter))
            control.send(("ready",))
            pack = _U64.pack_into
            while not buffer[_STOP]:
                if busy:
                    for receiver in owned:
                        receiver.dispatch_pending()
                else:
                    owned[0].wait_once(0.05)
                pack(buffer, _COUNT, counter[0])
        finally:
            for receiver in owned:
                receiver.close()


# --- measurements ----------------------------------------------------------------------------------


def ombm_round_trip(variant: str, placement: tuple[int, int], iterations: int, warmup: int) -> list[float]:
    """32-byte write + signal-on-write each way between this process and a child; µs each."""
    wait, kernel = _MODES[variant]
    env = {"OMBM_WAIT": wait, "OMBM_SIGNAL_PATH": "kernel" if kernel else "memory"}
    previous = ombm.settings().wait
    ombm.configure(wait=wait)
    replies = [0]
    try:
        with _segment() as (seg, region), _receiver(kernel=kernel) as receiver:
            receiver.add_handler(region.address + _REPLY, 64, _counting(replies))
            with child(_echo_child, seg.name, cpu=placement[1], env=env, lifetime_s=_budget(iterations + warmup)):
                with pinned(placement[0]):
                    write, wait_for, ping = region.write, receiver.wait, b"p" * 32

                    def once() -> None:
                        write(_PING + 32, ping)  # bytes 32..63 complete line 0: one signal
                        wait_for(1.0)

                    for _ in range(warmup):
                        once()
                    samples = timed(once, iterations)
                region.buffer[_STOP] = 1
    finally:
        ombm.configure(wait=previous)
    if replies[0] != warmup + iterations:
        raise RuntimeError(f"{variant}: {replies[0]} replies to {warmup + iterations} pings")
    return samples


def _budget(operations: int, worst_us: float = 5000.0) -> float:
    return operations * worst_us / 1e6


def one_way(placement: tuple[int, int], count: int) -> dict[str, float]:
    """Signals/s from this process to a child receiver that keeps up; drops; sender cost."""
    count -= count % _BATCH
    load, clock, yield_cpu = _U64.unpack_from, time.perf_counter_ns, os.sched_yield
    with _segment() as (seg, region):
        buffer, address, signal_ = region.buffer, region.address + _PING, ombm.signal
        with child(_sink_child, seg.name, 1, False, cpu=placement[1], lifetime_s=_budget(count, 50)):
            dropped0 = ombm.stats()["signals_dropped"]
            batches, sent = [], 0
            with pinned(placement[0]):
                start = clock()
                while sent < count:
                    if _CREDIT - (sent - load(buffer, _COUNT)[0]) < _BATCH:
                        yield_cpu()  # let a receiver that shares this CPU drain
                        continue
                    t0 = clock()
                    for _ in range(_BATCH):
                        signal_(address)
                    batches.append(clock() - t0)
                    sent += _BATCH
                received = _drained(buffer, count, load)
                elapsed_ns = clock() - start
            dropped = ombm.stats()["signals_dropped"] - dropped0
            buffer[_STOP] = 1
    return {
        "signals": count, "received": received, "dropped": dropped, "rate": count * 1e9 / elapsed_ns,
        "sender_us": median(batches) / _BATCH / 1000,
    }


def _drained(buffer: memoryview, count: int, load: Callable[[memoryview, int], tuple[int]]) -> int:
    deadline = time.monotonic() + 5.0
    while (received := load(buffer, _COUNT)[0]) < count and time.monotonic() < deadline:
        os.sched_yield()
    return received


def sender_cost_asleep(placement: tuple[int, int], count: int) -> dict[str, float]:
    """The sender's cost of one signal to a receiver asleep on its futex (it pays the wake)."""
    with _segment() as (seg, region):
        address, signal_ = region.address + _PING, ombm.signal
        with child(_sink_child, seg.name, 1, False, cpu=placement[1], lifetime_s=_budget(count)):
            wakeups0 = ombm.stats()["wakeups"]
            samples = []
            with pinned(placement[0]):
                for _ in range(count):
                    time.sleep(0.002)  # well past the receiver's spin budget (50 µs)
                    samples += timed(lambda: signal_(address), 1)
            wakeups = ombm.stats()["wakeups"] - wakeups0
            region.buffer[_STOP] = 1
    summary = Latency.of(samples)
    return {"median_us": summary.median_us, "p99_us": summary.p99_us, "signals": count, "wakeups": wakeups}


def multicast(placement: tuple[int, int], receivers: int, count: int) -> dict[str, float]:
    """Sender cost per signal to ``receivers`` FIFOs polled by a busy child (none asleep)."""
    count -= count % _BATCH
    load, clock = _U64.unpack_from, time.perf_counter_ns
    with _segment() as (seg, region):
        buffer, address, signal_ = region.buffer, region.address + _PING, ombm.signal
        with child(_sink_child, seg.name, receivers, True, cpu=placement[1], lifetime_s=_budget(count, 100)):
            dropped0 = ombm.stats()["signals_dropped"]
            batches, sent = [], 0
            with pinned(placement[0]):
                while sent < count:
                    t0 = clock()
                    for _ in range(_BATCH):
                        signal_(address)
                    batches.append(clock() - t0)
                    sent += _BATCH
                    received = _drained(buffer, sent * receivers, load)
            dropped = ombm.stats()["signals_dropped"] - dropped0
            buffer[_STOP] = 1
    return {"receivers": receivers, "sender_us": median(batches) / _BATCH / 1000,
            "dropped": dropped, "received": received, "expected": count * receivers}


def idle_receiver(placement: tuple[int, int], window_s: float) -> dict[str, float]:
    """CPU used by a child idle in ``sig_wait`` (adaptive) once its spin budget is spent."""
    with _segment() as (seg, region):
        with child(_echo_child, seg.name, cpu=placement[1], env={"OMBM_WAIT": "adaptive"}) as (process, _):
            time.sleep(0.3)
            assert process.pid is not None, "the child runs"
            figures = idle_cpu(process.pid, window_s)
            region.buffer[_STOP] = 1
    return figures


def setup_costs(iterations: int) -> dict[str, Latency]:
    """The paper's Table 3 in this process: µs of each step, a fresh segment every iteration."""
    steps: dict[str, list[float]] = {name: [] for name in (*_PAPER_TABLE3_US, "new receiver", "close receiver")}
    clock = time.perf_counter_ns
    with _receiver() as receiver:
        for _ in range(iterations):
            t0 = clock()
            seg = ombm.create_segment(_SEGMENT_BYTES)
            try:
                t1 = clock()
                region = seg.bind()
                t2 = clock()
                handle = receiver.add_handler(region.address, 64, _noop)
                t3 = clock()
                handle.disable()
                t4 = clock()
                region.unbind()
                t5 = clock()
            finally:
                seg.release()
            t6 = clock()
            for name, (a, b) in zip(_PAPER_TABLE3_US, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6))):
                steps[name].append((b - a) / 1000)
    for _ in range(iterations):
        t0 = clock()
        extra = ombm.Receiver()
        t1 = clock()
        extra.close()
        steps["new receiver"].append((t1 - t0) / 1000)
        steps["close receiver"].append((clock() - t1) / 1000)
    return {name: Latency.of(samples) for name, samples in steps.items()}


def _noop(address: int) -> None:
    pass


# --- the suite -------------------------------------------------------------------------------------


def run(progress: Callable[[int, int, str], None] | None = None, quick: bool = False) -> CoreResult:
    """Run every core measurement; ``progress(done, total, what)`` before each step."""
    plan = Plan.make(quick)
    result = CoreResult(plan)
    cross = PLACEMENTS["cross-cpu"]
    steps: list[tuple[str, Callable[[], None]]] = []
    for label, placement in PLACEMENTS.items():
        table = result.round_trips.setdefault(label, {})
        for variant in _MODES:
            steps.append((f"{variant} round trip, {label}", _round_trip_step(table, variant, placement, plan)))
        for peer in peers.signal_peers():
            ok, why = peer.available()
            if ok:
                steps.append((f"{peer.name} ping-pong, {label}", _peer_step(result, peer, label, placement)))
            else:
                result.skipped[peer.name] = why
        steps.append((f"floors, {label}", _floor_step(result, label, placement)))
        steps.append((f"one-way signals, {label}", _one_way_step(result, label, placement)))
    steps.append(("sender cost, receiver asleep", lambda: result.asleep.update(
        sender_cost_asleep(cross, plan.asleep_signals))))
    for count in plan.multicast_receivers:
        steps.append((f"multicast to {count}", _multicast_step(result, cross, count)))
    steps.append(("idle receiver CPU", lambda: result.idle.update(idle_receiver(cross, plan.idle_window_s))))
    steps.append(("setup costs (Table 3)", lambda: result.setup.update(setup_costs(plan.setup_iterations))))
    result.elapsed_s = run_steps(steps, progress)
    return result


def _round_trip_step(table: dict[str, Latency], variant: str, placement: tuple[int, int], plan: Plan) -> Callable[[], None]:
    def step() -> None:
        table[variant] = Latency.of(ombm_round_trip(variant, placement, plan.round_trips, plan.warmup))

    return step


def _floor_step(result: CoreResult, label: str, placement: tuple[int, int]) -> Callable[[], None]:
    def step() -> None:
        from ombm.cli.bench import floors

        yield_cpu = placement[0] == placement[1]  # a pure spin on one CPU waits out a time slice
        for name, found in floors.run_floors(placement, result.plan.round_trips, yield_cpu).items():
            if isinstance(found, str):
                result.skipped[f"{name}, {label}"] = found
            else:
                result.round_trips[label][name] = found.latency

    return step


def _one_way_step(result: CoreResult, label: str, placement: tuple[int, int]) -> Callable[[], None]:
    def step() -> None:
        result.one_way[label] = one_way(placement, result.plan.one_way_signals)

    return step


def _multicast_step(result: CoreResult, placement: tuple[int, int], receivers: int) -> Callable[[], None]:
    def step() -> None:
        result.multicast.append(multicast(placement, receivers, result.plan.multicast_signals))

    return step


def _peer_step(result: CoreResult, peer: peers.Peer, label: str, placement: tuple[int, int]) -> Callable[[], None]:
    def step() -> None:
        try:
            samples = peer.roundtrip(1, result.plan.round_trips, placement, result.plan.warmup)
        except Exception as exc:  # a peer that fails here is reported, never given a number
            result.skipped[peer.name] = f"failed ({label}): {type(exc).__name__}: {exc}"
            for table in result.round_trips.values():
                table.pop(peer.name, None)
            return
        if peer.name not in result.skipped:
            result.round_trips[label][peer.name] = Latency.of(samples)

    return step


def run_steps(steps: list[tuple[str, Callable[[], None]]], progress: Callable[[int, int, str], None] | None) -> float:
    """Run ``steps`` in order, reporting progress; the seconds they took."""
    start = time.monotonic()
    for done, (label, step) in enumerate(steps):
        if progress:
            progress(done, len(steps), label)
        step()
    if progress:
        progress(len(steps), len(steps), "done")
    return time.monotonic() - start


# --- report ----------------------------------------------------------------------------------------


def targets(result: CoreResult) -> list[Target]:
    found = []
    for label, table in result.round_trips.items():
        adaptive = table.get("ombm adaptive")
        a = adaptive.median_us if adaptive else math.nan
        if label == "cross-cpu":  # the issue's targets: a responsive peer, on the other CPU
            pipe = table.get("os.pipe")
            soft = table.get("ombm software-only")
            found.append(Target(f"round trip, adaptive, {label}", 2.5, a, " µs", note="median"))
            found.append(Target(f"adaptive vs os.pipe, {label}", 20, ratio(pipe.median_us if pipe else math.nan, a),
                                "×", at_most=False, note="ratio of medians, same run"))
            found.append(Target(f"adaptive vs software-only, {label}", 10,
                                ratio(soft.median_us if soft else math.nan, a), "×", at_most=False,
                                note="ratio of medians, same run"))
        else:  # DESIGN.md §5: on one CPU the spin budget must not lose against not spinning at all
            sleep = table.get("ombm sleep")
            found.append(Target(f"adaptive vs sleep (no spin), {label}", 1.0,
                                ratio(sleep.median_us if sleep else math.nan, a), "×", at_most=False,
                                note="ratio of medians, same run: the spin must not lose"))
    cross = result.one_way.get("cross-cpu", {})
    found.append(Target("sender cost, 1 signal to 1 receiver", 1.0, cross.get("sender_us", math.nan), " µs",
                        note="ombm.signal() to an awake receiver, cross-cpu, median of batches"))
    for label, figures in result.one_way.items():
        no_drops = figures["dropped"] == 0 and figures["received"] == figures["signals"]
        found.append(Target(f"one-way signals/s, {label}", 500_000, figures["rate"] if no_drops else math.nan,
                            "/s", at_most=False,
                            note=f"{figures['dropped']} dropped, "
                                 f"{figures['received']:.0f}/{figures['signals']} received"))
    if result.idle:
        found.append(Target("idle receiver in sig_wait", 1.0, result.idle["stat_percent"], " % of a core",
                            note=f"utime+stime over {result.idle['window_s']:.1f} s "
                                 f"(schedstat: {result.idle['schedstat_percent']:.3f} %)"))
    if result.setup:
        total = sum(result.setup[name].median_us for name in _PAPER_TABLE3_US)
        found.append(Target("create+bind+enable+disable+unbind+release", 300, total, " µs",
                            note="sum of medians (paper: 2261 µs)"))
    return found


def issue13_targets(result: CoreResult) -> list[Target]:
    """Issue 13's one-CPU signal target: ombm's round trip against an os.pipe ping-pong, same-cpu."""
    table = result.round_trips.get("same-cpu", {})
    adaptive, pipe = table.get("ombm adaptive"), table.get("os.pipe")
    value = ratio(adaptive.median_us, pipe.median_us) if adaptive and pipe else math.nan
    return [Target("one CPU: signal round trip ÷ os.pipe ping-pong", 0.8, value, "×",
                   note="ombm adaptive, ratio of medians, same-cpu, same run")]


def markdown(result: CoreResult) -> str:
    plan = result.plan
    parts = ["## Core: address-valued signals (issue 2)", ""]
    parts.append(
        f"Each round-trip cell: {plan.round_trips:,} timed round trips after {plan.warmup:,} warm-up, "
        "one process pair per cell (the echo is a freshly spawned process pinned to its CPU; this "
        "process is pinned to CPU 0). *cross-cpu* = CPUs (0, 1), *same-cpu* = (0, 0)."
    )
    parts += ["", "### Signal round trip (µs)", "",
              "ombm: a 32-byte write completing a cache line raises the signal (signal-on-write); the "
              "echo's handler answers with a 32-byte write completing the next line. Peers: a 1-byte "
              "(eventfd: 8-byte) wake-up each way. *spin* never sleeps; *adaptive* spins for a learnt "
              "budget (≤ 50 µs) then sleeps on a futex; *sleep* sleeps on the futex at once; *software-only* makes every signal a system call "
              "into the receiver's kernel queue (the paper's software-only MBM). Ratio: the system's "
              "median over ombm adaptive's, same placement, same run. Cells run in the order of the rows: "
              "on this VM a cell that follows tens of thousands of futex wake-ups (*sleep*) can find "
              "wake-ups several times faster than usual (the host adapts its idle polling), so *sleep* "
              "runs after *software-only*. *floor* rows: two processes passing one 64-bit word in one cache line "
              "(odd: your turn, even: mine), in C (built with the system's `cc` for this run) and in pure Python "
              "(a shared `mmap` read through `memoryview.cast('Q')`), the limit under any signal; their cells are "
              "batch means (C: 1,000 round trips a batch, Python: 100), median and p99 over the batches; on one "
              "CPU each idle poll calls `sched_yield` (a pure spin there waits out a whole time slice).", ""]
    labels = list(result.round_trips)
    systems = list(dict.fromkeys(s for table in result.round_trips.values() for s in table))
    rows: list[list[object]] = []
    for system in systems:
        row: list[object] = [system]
        for label in labels:
            cell = result.round_trips[label].get(system)
            base = result.round_trips[label].get("ombm adaptive")
            if cell is None:
                row += ["—", "—", "—"]
                continue
            row += [us(cell.median_us), us(cell.p99_us),
                    times(ratio(cell.median_us, base.median_us if base else math.nan))]
        rows.append(row)
    headers = ["system"] + [f"{label} {what}" for label in labels for what in ("median", "p99", "÷ adaptive")]
    parts.append(md_table(headers, rows))
    for name, why in result.skipped.items():
        parts.append(f"\n*{name} skipped: {why}*")
    parts += ["", "### One-way signals", "",
              f"`ombm.signal(address)` from this process to a child receiver (adaptive) that keeps up: at most "
              f"{_CREDIT} signals outstanding in its 128-entry FIFO (it publishes how many it consumed), "
              f"sent in batches of {_BATCH}. Rate: signals over the time until the last was consumed. "
              "Sender cost: median batch time / batch size.", ""]
    rows = [[label, f"{f['signals']:,}", rate(f["rate"]), f"{f['received']:,.0f}", f"{f['dropped']:,}",
             us(f["sender_us"])] for label, f in result.one_way.items()]
    parts.append(md_table(["placement", "signals", "rate", "received", "dropped", "sender µs/signal"], rows))
    if result.asleep:
        a = result.asleep
        parts += ["", f"Sender cost when the receiver is asleep on its futex (cross-cpu; the sender pays the "
                      f"wake-up system call; {a['signals']} signals 2 ms apart, {a['wakeups']} wake-ups): "
                      f"median {us(a['median_us'])} µs, p99 {us(a['p99_us'])} µs."]
    if result.multicast:
        xs = [m["receivers"] for m in result.multicast]
        ys = [m["sender_us"] for m in result.multicast]
        parts += ["", "### Multicast: sender cost per extra receiver", "",
                  "One signal to *n* receivers (FIFOs of one child on CPU 1 that polls them all, so none is "
                  "asleep and no wake-up is paid); sender on CPU 0.", ""]
        rows = [[m["receivers"], us(m["sender_us"]), f"{m['received']:,.0f}/{m['expected']:,}", m["dropped"]]
                for m in result.multicast]
        parts.append(md_table(["receivers", "sender µs/signal", "delivered", "dropped"], rows))
        parts += ["", f"Added cost per extra receiver (least-squares slope): **{us(slope(xs, ys))} µs**."]
    if result.idle:
        i = result.idle
        parts += ["", "### Idle receiver", "",
                  f"A child in `sig_wait` (adaptive) with nothing to receive, measured over {i['window_s']:.1f} s "
                  f"after 0.3 s: utime+stime {percent(i['stat_percent'])} of a core (resolution "
                  f"{i['resolution_percent']:.2f} %), schedstat run time {percent(i['schedstat_percent'], 3)}."]
    if result.setup:
        parts += ["", "### Setup costs (paper Table 3)", "",
                  f"In this process, a fresh 4 KiB segment each of {plan.setup_iterations} iterations; "
                  "*enable* adds a handler to an existing receiver (a thread's first handler also creates "
                  "its FIFO: *new receiver*).", ""]
        rows = [[name, us(lat.median_us), us(lat.p99_us), _PAPER_TABLE3_US.get(name, "—")]
                for name, lat in result.setup.items()]
        total = sum(result.setup[name].median_us for name in _PAPER_TABLE3_US)
        rows.append(["**total** (create … release)", f"**{us(total)}**", "", sum(_PAPER_TABLE3_US.values())])
        parts.append(md_table(["operation", "median µs", "p99 µs", "paper µs"], rows))
    parts += ["", "### Targets (issue 2)", "", targets_table(targets(result))]
    return "\n".join(parts) + "\n"
