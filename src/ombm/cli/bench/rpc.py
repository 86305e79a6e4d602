"""The RPC suite: ombm RPC against the request/response a Python user would otherwise pick (issue 3).

Measures, in one run and on both placements of DESIGN.md §5:

- the paper's Table 4 columns (null RPC, 32 bytes sent and received, 1 KiB) plus 64 KiB and
  1 MiB, for ombm (adaptive wait, memory signal path), ombm on the software-only signal path (the
  paper's "Soft MBM": every signal a system call) and every peer of ``peers.rpc_peers`` (os.pipe,
  os.pipe with msgpack framing, a Unix socketpair, multiprocessing.Pipe, multiprocessing.connection,
  pyzmq REQ/REP over ipc://, gRPC over a Unix socket, iceoryx2 request/response). Every system
  echoes the payload: the request carries it and so does the reply (the paper's "send 1 KB" had a null reply; an echo is more
  work, the same for everyone). A peer that cannot run is skipped with the reason;
- the paper's Table 2: ombm's own per-call costs as its two lanes incur them, taken apart in
  this process (marshalling, framing with its checksum, the channel write) beside the signal
  round trip and the measured call;
- the paper's Table 3 row for RPC: connect + disconnect against a running server;
- the CPU an idle server uses;
- the floors (``floors``: the C cache-line ping-pong, the pure-Python shared-memory spin).

The ombm server is a spawned child (``core.child``) pinned to the placement's server CPU; for
the software-only variant ``OMBM_SIGNAL_PATH=kernel`` is in its environment before it imports
ombm, and this process is configured likewise before it connects. It is stopped by SIGTERM,
which ``serve_forever`` turns into a clean stop that releases its channels.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import msgpack

import ombm
from ombm import _native
from ombm.core.config import SignalPath
from ombm.rpc import marshal
from ombm.transport import wire
from ombm.rpc.slots import SlotChannel
from ombm.rpc.server import REAP_INTERVAL_S

from ombm.cli.bench import core, peers
from ombm.cli.bench.affinity import PLACEMENTS, pinned
from ombm.cli.bench.report import Latency, Target, md_table, median, percent, ratio, targets_table, times, us

SIZES = {"null": 0, "32 B": 32, "1 KiB": 1024, "64 KiB": 65536, "1 MiB": 1 << 20}
_LARGE_COLUMNS = ("64 KiB", "1 MiB")
_TARGET_COLUMNS = ("null", "32 B", "1 KiB")
_KERNEL_PEERS = ("os.pipe", "socketpair", "multiprocessing.Pipe", "mp.connection", "pyzmq ipc REQ/REP", "gRPC unix")
_VARIANTS: dict[str, SignalPath] = {"ombm": "memory", "ombm software-only": "kernel", "ombm views": "memory"}
# rows that lend the receiver a large payload in place (no copy out): ombm's views (Server(views=True),
# connect(views=True)) and iceoryx2's loaned response; measured at the large sizes only
_VIEW_ROWS = ("ombm views", "iceoryx2 req/resp (views)")
_BREAKDOWN_SIZES = {"32 B": 32, "1 KiB": 1024}
_SLOW_US = 40.0  # about one kernel wake-up across CPUs on this VM: a call slower than this slept


@dataclass(frozen=True)
class Plan:
    ombm_calls: dict[str, int]
    peer_calls: dict[str, int]
    warmup: int
    connects: int
    breakdown: int
    idle_window_s: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls({"null": 500, "32 B": 500, "1 KiB": 500, "64 KiB": 100, "1 MiB": 20},
                       {"null": 200, "32 B": 200, "1 KiB": 200, "64 KiB": 50, "1 MiB": 10}, 50, 20, 500, 1.0)
        return cls({"null": 50_000, "32 B": 50_000, "1 KiB": 50_000, "64 KiB": 5_000, "1 MiB": 500},
                   {"null": 10_000, "32 B": 10_000, "1 KiB": 10_000, "64 KiB": 2_000, "1 MiB": 300}, 300, 300,
                   20_000, 2.0)


@dataclass
class RpcResult:
    plan: Plan
    calls: dict[str, dict[str, dict[str, Latency]]] = field(default_factory=dict)  # placement -> system -> size
    skipped: dict[str, str] = field(default_factory=dict)
    retransmits: dict[str, int] = field(default_factory=dict)  # "variant, placement" -> count
    slow: dict[str, dict[str, float]] = field(default_factory=dict)  # "variant, placement" -> size -> % slow
    connect: dict[str, Latency] = field(default_factory=dict)  # "connect", "disconnect", "connect+disconnect"
    idle: dict[str, float] = field(default_factory=dict)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)  # size -> component -> µs
    signal_rt_us: float = math.nan
    floors: dict[str, dict[str, Any]] = field(default_factory=dict)  # placement -> floor -> Floor or why not
    elapsed_s: float = 0.0


# --- the ombm server child -------------------------------------------------------------------------


class _Service:
    """What the benchmark calls: the null RPC and an echo."""

    def null(self) -> None:
        return None

    def echo(self, data: bytes) -> bytes:
        return data


def _server_child(control: Connection, name: str, views: bool = False) -> None:
    def leave(signum: int, frame: Any) -> None:  # SIGTERM before serve_forever took it over
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
    server = ombm.rpc.Server(name, _Service(), views=views)
    control.send(("ready",))
    server.serve_forever()  # until SIGTERM; then it releases its channels


def _connect(name: str, deadline_s: float = 10.0, views: bool = False) -> ombm.rpc.Client:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return ombm.rpc.connect(name, timeout=10.0, views=views)
        except ombm.ServiceNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def ombm_calls(variant: str, placement: tuple[int, int], plan: Plan, extras: bool) -> dict[str, Any]:
    """Calls of every size against a server child (*ombm views*: the large sizes, with views on both
    sides); with ``extras`` also connect+disconnect and idle CPU."""
    path = _VARIANTS[variant]
    views = variant in _VIEW_ROWS
    sizes = {label: SIZES[label] for label in _LARGE_COLUMNS} if views else SIZES
    name = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
    env = {"OMBM_SIGNAL_PATH": path, "OMBM_WAIT": "adaptive"}
    previous = ombm.settings()
    ombm.configure(signal_path=path, wait="adaptive")
    found: dict[str, Any] = {"calls": {}}
    try:
        budget = sum(plan.ombm_calls.values()) * 0.002 + plan.connects * 0.01 + 30
        with core.child(_server_child, name, views, cpu=placement[1], env=env, lifetime_s=budget, terminate=True) as (
            process, _
        ), pinned(placement[0]):
            with _connect(name, views=views) as client:
                found["slow"] = {}
                for label, size in sizes.items():
                    samples = _time_calls(client, size, plan.ombm_calls[label], plan.warmup)
                    found["calls"][label] = Latency.of(samples)
                    found["slow"][label] = 100 * sum(1 for s in samples if s > _SLOW_US) / len(samples)
                found["retransmits"] = client.statistics().retransmits
                if extras:
                    found["connect"] = _connect_disconnect(name, plan.connects)
                    # idle: once the server reaped the connections those cycles closed (it looks
                    # every REAP_INTERVAL_S), with this client still connected and silent
                    time.sleep(REAP_INTERVAL_S + 0.3)
                    assert process.pid is not None, "the server child runs"
                    found["idle"] = core.idle_cpu(process.pid, plan.idle_window_s)
    finally:
        ombm.configure(signal_path=previous.signal_path, wait=previous.wait)
    return found


def _time_calls(client: ombm.rpc.Client, size: int, iterations: int, warmup: int) -> list[float]:
    call = client.call
    if size == 0:
        def operation() -> Any:
            return call("null")
    else:
        payload = _payload(size)
        if call("echo", payload) != payload:  # (a view compares equal to bytes too)
            raise RuntimeError("ombm echoed a different payload")

        def operation() -> Any:
            return call("echo", payload)
    for _ in range(warmup):
        operation()
    return peers.timed(operation, iterations)


def _connect_disconnect(name: str, iterations: int) -> dict[str, Latency]:
    clock = time.perf_counter_ns
    connects, closes, both = [], [], []
    for _ in range(iterations):
        t0 = clock()
        client = ombm.rpc.connect(name, timeout=10.0)
        t1 = clock()
        client.close()
        t2 = clock()
        connects.append((t1 - t0) / 1000)
        closes.append((t2 - t1) / 1000)
        both.append((t2 - t0) / 1000)
    return {"connect": Latency.of(connects), "disconnect": Latency.of(closes),
            "connect+disconnect": Latency.of(both)}


# --- Table 2: ombm's per-call costs, taken apart ---------------------------------------------------


def breakdown(size: int, iterations: int) -> dict[str, float]:
    """µs of each part of an echo call of ``size`` bytes as the two lanes do it, in this process:
    each part run ``iterations`` times in batches, the median batch's mean (so the clock's own
    cost, about 0.1 µs a reading, is not charged to parts that take less)."""
    payload = _payload(size)
    packer, pack_direct, unpack_plain = marshal.packer(), _native.pack_direct, _native.unpack_plain
    pack, unpack, hook = packer.pack, msgpack.unpackb, marshal.ext_hook()
    call_message: list[Any] = ["echo", [payload], {}]  # as the lanes give it: lists, not tuples
    result_message: list[Any] = [0, payload]

    def lane_pack(message: list[Any]) -> Callable[[], object]:  # the lanes' packing: their own, else the packer's
        if pack_direct(packer, message) is not None:
            return lambda: pack_direct(packer, message)
        return lambda: pack(message)

    def lane_unpack(data: bytes) -> Callable[[], object]:  # the lanes' unpacking: their own, else msgpack's
        if unpack_plain(data) is not None:
            return lambda: unpack_plain(data)
        return lambda: unpack(data, ext_hook=hook, strict_map_key=False)

    call, result = pack(call_message), pack(result_message)
    encode, decode, kinds = wire.raw_encode, wire.raw_decode, wire.KIND_TABLE
    request_frame = encode(wire.Kind.CALL, 7, 1, call, 0, 1, 1, 0)
    reply_frame = encode(wire.Kind.REPLY, 7, 1, result, 0, 1, 0, 0)
    request_view, reply_view = memoryview(request_frame), memoryview(reply_frame)
    request_sum, reply_sum = request_view[:-8], reply_view[:-8]  # what the trailer's checksum covers
    parts = {
        "marshal call": lane_pack(call_message),
        "unmarshal call": lane_unpack(call),
        "marshal result": lane_pack(result_message),
        "unmarshal reply": lane_unpack(result),
        "frame encode, request + reply": lambda: (encode(wire.Kind.CALL, 7, 1, call, 0, 1, 1, 0),
                                                  encode(wire.Kind.REPLY, 7, 1, result, 0, 1, 0, 0)),
        "frame decode + checksum, request + reply": lambda: (decode(request_view, kinds), decode(reply_view, kinds)),
    }
    found = {name: _per_call(operation, iterations) for name, operation in parts.items()}
    # The lanes fold the checksum into their copies, in C: its cost is its throughput (over a block
    # big enough that one call's overhead does not count) times the bytes a call sums: each frame
    # when it is written and when it is read.
    block = bytes(_CHECKSUM_BLOCK)
    per_byte = _per_call(lambda: _checksum(block), max(1, iterations // 16)) / len(block)
    found["checksum, 4 passes"] = per_byte * 2 * (len(request_sum) + len(reply_sum))
    with _channel() as channel:
        found["channel write, request + reply"] = 2 * _per_call(lambda: channel.send(request_frame), iterations)
    return found


def _per_call(operation: Callable[[], Any], iterations: int, batches: int = 20) -> float:
    """The median over ``batches`` batches of the mean µs of one ``operation``."""
    clock = time.perf_counter_ns
    size = max(1, iterations // batches)
    means = []
    for _ in range(batches):
        start = clock()
        for _ in range(size):
            operation()
        means.append((clock() - start) / size / 1000)
    return median(means)


_checksum = _native.checksum
_CHECKSUM_BLOCK = 256 * 1024


@contextmanager
def _channel() -> Iterator[SlotChannel]:
    """A throw-away RPC channel with no receiver, made as a client makes its request channel."""
    channel = SlotChannel.create(f"bench-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield channel
    finally:
        channel.close()


# --- the suite -------------------------------------------------------------------------------------


def run(progress: Callable[[int, int, str], None] | None = None, quick: bool = False) -> RpcResult:
    """Run every RPC measurement; ``progress(done, total, what)`` before each step."""
    result = RpcResult(Plan.make(quick))
    steps: list[tuple[str, Callable[[], None]]] = []
    for label, placement in PLACEMENTS.items():
        for variant in _VARIANTS:
            steps.append((f"{variant}, {label}", _ombm_step(result, variant, label, placement)))
        for peer in peers.rpc_peers():
            ok, why = peer.available()
            if not ok:
                result.skipped[peer.name] = why
                continue
            for column in _LARGE_COLUMNS if peer.name in _VIEW_ROWS else SIZES:
                steps.append((f"{peer.name} {column}, {label}", _peer_step(result, peer, column, label, placement)))
        steps.append((f"floors, {label}", _floor_step(result, label, placement)))
    steps.append(("signal round trip for Table 2", lambda: _signal_step(result)))
    for column, size in _BREAKDOWN_SIZES.items():
        steps.append((f"Table 2 breakdown, {column}", _breakdown_step(result, column, size)))
    result.elapsed_s = core.run_steps(steps, progress)
    return result


def _floor_step(result: RpcResult, label: str, placement: tuple[int, int]) -> Callable[[], None]:
    def step() -> None:
        from ombm.cli.bench import floors

        count = max(1000, result.plan.ombm_calls["32 B"])
        result.floors[label] = floors.run_floors(placement, count, yield_cpu=placement[0] == placement[1])

    return step


def _breakdown_step(result: RpcResult, column: str, size: int) -> Callable[[], None]:
    def step() -> None:
        result.breakdown[column] = breakdown(size, result.plan.breakdown)

    return step


def _ombm_step(result: RpcResult, variant: str, label: str, placement: tuple[int, int]) -> Callable[[], None]:
    def step() -> None:
        extras = variant == "ombm" and label == "cross-cpu"
        found = ombm_calls(variant, placement, result.plan, extras)
        result.calls.setdefault(label, {})[variant] = found["calls"]
        result.retransmits[f"{variant}, {label}"] = found["retransmits"]
        result.slow[f"{variant}, {label}"] = found["slow"]
        if extras:
            result.connect = found["connect"]
            result.idle = found["idle"]

    return step


def _peer_step(result: RpcResult, peer: peers.Peer, column: str, label: str,
               placement: tuple[int, int]) -> Callable[[], None]:
    def step() -> None:
        if peer.name in result.skipped:
            return
        try:
            samples = peer.roundtrip(SIZES[column], result.plan.peer_calls[column], placement, result.plan.warmup)
        except Exception as exc:  # a peer that fails here is reported, never given a number
            result.skipped[peer.name] = f"failed at {column}, {label}: {type(exc).__name__}: {exc}"
            for table in result.calls.values():
                table.pop(peer.name, None)
            return
        result.calls.setdefault(label, {}).setdefault(peer.name, {})[column] = Latency.of(samples)

    return step


def _signal_step(result: RpcResult) -> None:
    samples = core.ombm_round_trip("ombm adaptive", PLACEMENTS["cross-cpu"], result.plan.breakdown // 2, 200)
    result.signal_rt_us = median(samples)


# --- report ----------------------------------------------------------------------------------------


def _median(result: RpcResult, placement: str, system: str, column: str) -> float:
    cell = result.calls.get(placement, {}).get(system, {}).get(column)
    return cell.median_us if cell else math.nan


def _unnamed_median(result: RpcResult, placement: str, system: str, column: str) -> tuple[str, float]:
    """:func:`_median` as a row of the ratio table, with no name to add to its cells."""
    return "", _median(result, placement, system, column)


def _fastest_kernel_peer(result: RpcResult, placement: str, column: str) -> tuple[str, float]:
    found = [(name, _median(result, placement, name, column)) for name in _KERNEL_PEERS]
    found = [(name, value) for name, value in found if not math.isnan(value)]
    return min(found, key=lambda item: item[1]) if found else ("—", math.nan)


def _worst_ratio(result: RpcResult, placement: str, other: Callable[[str], float]) -> tuple[float, str]:
    """The smallest (other ÷ ombm) over the target columns, and which column it was."""
    ratios = [(ratio(other(column), _median(result, placement, "ombm", column)), column) for column in _TARGET_COLUMNS]
    ratios = [item for item in ratios if not math.isnan(item[0])]
    return min(ratios) if ratios else (math.nan, "")


TARGET_PLACEMENT = "cross-cpu"  # the paper's setting: client and server on different processors


def targets(result: RpcResult) -> list[Target]:
    """Issue 3's targets: the latency ones for client and server on different CPUs."""
    found = _placement_targets(result, TARGET_PLACEMENT)
    found += _setup_targets(result)
    return found


def _placement_targets(result: RpcResult, placement: str) -> list[Target]:
    found: list[Target] = []
    if placement not in result.calls:
        return found
    for column, limit in zip(_TARGET_COLUMNS, (4.0, 4.5, 6.0)):
        found.append(Target(f"ombm {column} call, {placement}", limit, _median(result, placement, "ombm", column),
                            " µs", note="median"))
    others = {
        "fastest kernel-based peer": (10, lambda c: _fastest_kernel_peer(result, placement, c)[1]),
        "iceoryx2": (2, lambda c: _median(result, placement, "iceoryx2 req/resp", c)),
        "ombm software-only": (10, lambda c: _median(result, placement, "ombm software-only", c)),
    }
    for name, (limit, other) in others.items():
        worst, column = _worst_ratio(result, placement, other)
        note = f"smallest over null/32 B/1 KiB ({column})" if column else "not measured"
        found.append(Target(f"vs {name}, {placement}", limit, worst, "×", at_most=False, note=note))
    return found


def _setup_targets(result: RpcResult) -> list[Target]:
    found = []
    if result.connect:
        found.append(Target("connect + disconnect", 1000, result.connect["connect+disconnect"].median_us, " µs",
                            note="median, cross-cpu"))
    if "1 KiB" in result.breakdown:
        checksum = result.breakdown["1 KiB"]["checksum, 4 passes"]
        share = 100 * checksum / _median(result, "cross-cpu", "ombm", "1 KiB")
        found.append(Target("checksum share of a 1 KiB call", 10, share, " %",
                            note="4 checksum passes (throughput × bytes) ÷ measured 1 KiB echo, cross-cpu"))
    if result.idle:
        found.append(Target("idle server", 1.0, result.idle["stat_percent"], " % of a core",
                            note=f"utime+stime over {result.idle['window_s']:.1f} s "
                                 f"(schedstat: {result.idle['schedstat_percent']:.3f} %)"))
    return found


def _floor_us(result: RpcResult, placement: str, prefix: str) -> float:
    for name, found in result.floors.get(placement, {}).items():
        if name.startswith(prefix) and not isinstance(found, str):
            value: float = found.latency.median_us
            return value
    return math.nan


def _worst(result: RpcResult, columns: tuple[str, ...], other: Callable[[str], float]) -> tuple[float, str]:
    """The smallest (other ÷ ombm), cross-cpu, over ``columns``, and which column it was."""
    found = [(ratio(other(c), _median(result, TARGET_PLACEMENT, "ombm", c)), c) for c in columns]
    found = [item for item in found if not math.isnan(item[0])]
    return min(found) if found else (math.nan, "")


def issue13_targets(result: RpcResult) -> list[Target]:
    """Issue 13's call targets: one CPU against os.pipe, cross-CPU against the spin floor and iceoryx2,
    large echoes against iceoryx2 and the fastest kernel-based peer."""
    same, cross = "same-cpu", TARGET_PLACEMENT
    found = [
        Target("one CPU: 32 B call ÷ the same call over os.pipe + msgpack", 0.8,
               ratio(_median(result, same, "ombm", "32 B"), _median(result, same, "os.pipe + msgpack", "32 B")), "×",
               note="ratio of medians, same-cpu, same run"),
        Target("cross-CPU 32 B call ÷ the Python shm spin floor", 1.8,
               ratio(_median(result, cross, "ombm", "32 B"), _floor_us(result, cross, "floor: Python")), "×",
               note="ombm median ÷ the floor's median batch mean, cross-cpu, same run"),
    ]
    iceoryx2 = functools.partial(_median, result, cross, "iceoryx2 req/resp")
    kernel = lambda column: _fastest_kernel_peer(result, cross, column)[1]  # noqa: E731
    for name, columns, limit, other in (("null/32 B/1 KiB vs iceoryx2", _TARGET_COLUMNS, 2.5, iceoryx2),
                                        ("64 KiB/1 MiB echo vs iceoryx2", _LARGE_COLUMNS, 1.5, iceoryx2),
                                        ("64 KiB/1 MiB echo vs fastest kernel-based peer", _LARGE_COLUMNS, 2, kernel)):
        worst, column = _worst(result, columns, other)
        found.append(Target(name, limit, worst, "×", at_most=False,
                            note=f"how many times faster, smallest ({column or 'not measured'}), cross-cpu"))
    lent = _median(result, cross, "ombm views", "1 MiB")
    found.append(Target("1 MiB echo, ombm views vs iceoryx2 (views)", 1.5,
                        ratio(_median(result, cross, "iceoryx2 req/resp (views)", "1 MiB"), lent), "×", at_most=False,
                        note="how many times faster, cross-cpu; both lend the response in place"))
    found.append(Target("1 MiB echo, ombm views vs fastest kernel-based peer", 2,
                        ratio(_fastest_kernel_peer(result, cross, "1 MiB")[1], lent), "×",
                        at_most=False, note="how many times faster, cross-cpu; a kernel peer cannot lend: it copies"))
    return found


def _floors_markdown(result: RpcResult) -> list[str]:
    rows = []
    for placement, found in result.floors.items():
        for name, floor in found.items():
            if isinstance(floor, str):
                rows.append([placement, name, "—", "—", floor])
                continue
            call = _median(result, placement, "ombm", "32 B")
            rows.append([placement, name, us(floor.latency.median_us), times(ratio(call, floor.latency.median_us)), ""])
    if not rows:
        return []
    return ["### The floors (measured in this run)", "",
            "Two processes passing one 64-bit word in one cache line, in C and in pure Python (see the core "
            "suite); median batch mean, µs. An ombm call cannot be faster than the Python floor: both its ends "
            "run Python.", "",
            md_table(["placement", "floor", "round trip µs", "ombm 32 B call ÷ floor", "note"], rows), ""]


def markdown(result: RpcResult) -> str:
    plan = result.plan
    parts = ["## RPC (issue 3)", "",
             f"Round trip of one call from this process (pinned to CPU 0) to a server in a freshly spawned "
             f"process (CPU 1 *cross-cpu*, CPU 0 *same-cpu*). Every system echoes the payload (the request "
             f"carries it, the reply carries it back; *null*: nothing each way, for ombm the call `null()`). "
             f"ombm: {plan.ombm_calls['32 B']:,} calls per cell ({plan.ombm_calls['64 KiB']:,} at 64 KiB, "
             f"{plan.ombm_calls['1 MiB']:,} at 1 MiB); peers: {plan.peer_calls['32 B']:,} "
             f"({plan.peer_calls['64 KiB']:,} at 64 KiB, {plan.peer_calls['1 MiB']:,} at 1 MiB), after "
             f"{plan.warmup} warm-up calls. *ombm software-only* is the paper's Soft MBM: every signal a "
             f"system call into the receiver's kernel queue. *os.pipe + msgpack*: the smallest RPC a user would "
             f"write, `(\"echo\", payload)` packed with msgpack, length-prefixed, over two pipes. ombm's "
             f"1 MiB payloads travel through the connection's bulk segments (docs/rpc.md, *Large payloads*: "
             f"copied once on each side, the checksum folded into each copy); its 64 KiB ones inline, in one "
             f"frame. Every row returns `bytes` (the receiver's own copy) except the *views* rows, measured at the "
             f"large sizes: there the receiver of each direction is lent the payload in place, no copy out "
             f"(*ombm views*: `Server(views=True)` and `connect(views=True)`, a read-only memoryview of the bulk "
             f"span; its 64 KiB still travels inline, as bytes; *iceoryx2 req/resp (views)*: the client gets "
             f"the response's loaned sample as a read-only memoryview, the server echoes from the request's "
             f"sample as in the other iceoryx2 row).", ""]
    for placement, systems in result.calls.items():
        parts += [f"### Call latency, {placement}: median µs (p99)", ""]
        rows = []
        for system, cells in systems.items():
            rows.append([system] + [f"{us(cells[c].median_us)} ({us(cells[c].p99_us)})" if c in cells else "—"
                                    for c in SIZES])
        parts += [md_table(["system", *SIZES], rows), ""]
    for name, why in result.skipped.items():
        parts.append(f"*{name} skipped: {why}*\n")
    parts += _floors_markdown(result)
    parts += ["### How much faster ombm is (ratio of medians, same run)", ""]
    rows = []
    for placement in result.calls:
        versus: tuple[tuple[str, Callable[[str], tuple[str, float]]], ...] = (
            ("fastest kernel-based peer", functools.partial(_fastest_kernel_peer, result, placement)),
            ("iceoryx2 req/resp", functools.partial(_unnamed_median, result, placement, "iceoryx2 req/resp")),
            ("ombm software-only", functools.partial(_unnamed_median, result, placement, "ombm software-only")),
        )
        for label, other in versus:
            ratios = []
            for column in SIZES:
                name, value = other(column)
                cell = times(ratio(value, _median(result, placement, "ombm", column)))
                ratios.append(f"{cell} ({name})" if name else cell)
            rows.append([placement, label, *ratios])
        lent: tuple[tuple[str, Callable[[str], tuple[str, float]]], ...] = (
            ("ombm views vs iceoryx2 (views)",
             functools.partial(_unnamed_median, result, placement, "iceoryx2 req/resp (views)")),
            ("ombm views vs fastest kernel-based peer", functools.partial(_fastest_kernel_peer, result, placement)),
        )
        for label, other in lent:
            ratios = []
            for column in SIZES:
                name, value = other(column)
                cell = times(ratio(value, _median(result, placement, "ombm views", column))) \
                    if column in _LARGE_COLUMNS else "—"
                ratios.append(f"{cell} ({name})" if name and column in _LARGE_COLUMNS else cell)
            rows.append([placement, label, *ratios])
    parts += [md_table(["placement", "ombm vs", *SIZES], rows), ""]
    retransmits = ", ".join(f"{key}: {value}" for key, value in result.retransmits.items())
    parts += [f"Retransmissions during the ombm runs: {retransmits}.", ""]
    rows = [[key, *(percent(shares[c], 1) if c in shares else "—" for c in SIZES)]
            for key, shares in result.slow.items()]
    parts += [f"Share of ombm calls slower than {_SLOW_US:.0f} µs (about one kernel wake-up across CPUs here: "
              "such a small call found a side asleep; a 64 KiB or 1 MiB call takes that long in copies alone, so "
              "its share says nothing about sleeping):", "", md_table(["variant, placement", *SIZES], rows), ""]
    if result.breakdown:
        parts += _breakdown_markdown(result)
    if result.connect:
        c = result.connect
        parts += ["### Setup (paper Table 3 row)", "",
                  f"`ombm.rpc.connect(name)` + `close()` against the running server, cross-cpu, {plan.connects} times "
                  "(the paper: 2030 µs for the same life cycle).", "",
                  md_table(["operation", "median µs", "p99 µs"],
                           [[name, us(lat.median_us), us(lat.p99_us)] for name, lat in c.items()]), ""]
    if result.idle:
        i = result.idle
        parts += [f"Idle server (a client connected, no calls; measured once the server reaped the connections "
                  f"the connect + disconnect cycles closed), over {i['window_s']:.1f} s: utime+stime "
                  f"{percent(i['stat_percent'])} of a core (resolution {i['resolution_percent']:.2f} %), "
                  f"schedstat {percent(i['schedstat_percent'], 3)}.", ""]
    parts += ["### Targets (issue 3)", "",
              f"The latency targets hold for client and server on different CPUs (*{TARGET_PLACEMENT}*), the "
              "paper's setting: its calls cross between the processors of a multiprocessor.", "",
              targets_table(targets(result)), ""]
    others = [p for p in result.calls if p != TARGET_PLACEMENT]
    for placement in others:
        parts += [f"The same comparisons with both processes on one CPU (*{placement}*), for information: "
                  "there each side runs only while the other waits, so a call costs both sides' work plus two "
                  "switches between them, and a kernel wake-up is such a switch too (a few µs, not tens).", "",
                  targets_table(_placement_targets(result, placement)), ""]
    return "\n".join(parts) + "\n"


_TABLE2_ROWS = (  # (component, in the sum?)
    ("marshal call", True),
    ("frame encode, request + reply", True),
    ("signal round trip", True),
    ("frame decode + checksum, request + reply", True),
    ("unmarshal call", True),
    ("marshal result", True),
    ("unmarshal reply", True),
    ("channel write, request + reply", False),
    ("checksum, 4 passes", False),
)


def _breakdown_markdown(result: RpcResult) -> list[str]:
    sizes = list(result.breakdown)
    rows, sums = [], {s: 0.0 for s in sizes}
    for name, summed in _TABLE2_ROWS:
        cells = []
        for s in sizes:
            value = result.signal_rt_us if name == "signal round trip" else result.breakdown[s][name]
            if summed:
                sums[s] += value
            cells.append(us(value))
        rows.append([name if summed else f"*of which:* {name}", *cells])
    rows.append(["**sum**", *(f"**{us(sums[s])}**" for s in sizes)])
    measured = {s: _median(result, "cross-cpu", "ombm", s) for s in sizes}
    rows.append(["measured call (cross-cpu)", *(us(measured[s]) for s in sizes)])
    rows.append(["rest: the Python of both ends (the call, the wait policy), the method, overlap",
                 *(us(measured[s] - sums[s]) for s in sizes)])
    return [
        "### Where an ombm call's time goes (paper Table 2 shape)", "",
        "Each part as the two lanes do it (the client's `_native.CallLane`, the server's "
        "`_native.RequestIntake`), timed alone in this process: the mean of a batch, median of 20 batches "
        f"over {result.plan.breakdown:,} runs, beside the signal round trip (32-byte write + signal each way, "
        "cross-cpu, adaptive) and the measured echo call. The lanes pack and unpack plain calls and replies "
        "in C (`_native.pack_direct`, `_native.unpack_plain`: the bytes and objects msgpack makes) and leave "
        "anything else to msgpack, the rows call the same; their protocol bookkeeping is a few "
        "native compares and counts, not shown. *of which* rows are already inside a row above: the channel writes (copy into the slot; "
        "no receiver, so no signal) inside the signal round trip, the checksum of each frame (when written "
        "and when read, request and reply: its throughput over a 256 KiB block times those bytes) inside the "
        "framing rows (reading folds it into the copy out). "
        "*rest* is what the parts do not explain: it can be negative, the parts timed alone are not exactly "
        "additive.", "",
        md_table(["component", *sizes], rows), "",
    ]
