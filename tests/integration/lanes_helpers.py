"""The lanes under faults: a service that counts each call's runs, seeded call plans, and the
child bodies that run them (tests/integration/test_rpc_lanes_differential.py).

Every call has a key of its own; the server's :class:`Ledger` counts how often each key ran, so a
call run twice or never shows, and each result depends only on the call's arguments, so the same
plan gives the same results whichever path (lane or protocol) each call took. Children report
through one ``multiprocessing`` connection, as in ``rpc_helpers`` (which starts them: spawned,
daemonic, killed and joined). The functions live here so that spawn children can import them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import os
import random
import threading
import time

import ombm
from ombm.rpc import RemoteError
from rpc_helpers import child

FAULTS = {"OMBM_FAULT_DROP": "0.05", "OMBM_FAULT_CORRUPT": "0.01"}
SETTLE_S = 60.0  # how long a client waits for its last one-way calls to be acknowledged (a liveness bound)
KEY_CLIENT, KEY_THREAD = 10_000_000, 100_000  # a key: client * KEY_CLIENT + thread * KEY_THREAD + index


def env(lanes: bool, seed: int) -> dict:
    """A child's environment: the lanes on or off, 5 % of signals dropped and 1 % of messages
    corrupted, from a seed of its own."""
    return {**FAULTS, "OMBM_FAULT_SEED": str(seed), "OMBM_LANES": "1" if lanes else "0"}


# ---------------------------------------------------------------- the service
def blob_of(key: int, size: int) -> bytes:
    return random.Random(key).randbytes(size)


def result_of(key: int, x: int, blob: bytes = b"") -> list:
    """What ``Ledger.apply(key, x, blob)`` returns (a ``RemoteError`` when ``x % 13 == 0``)."""
    return [key, x * 3 + 1, len(blob), hashlib.blake2b(blob, digest_size=8).digest()]


class Ledger:
    """A non-idempotent service: it counts every run of every call key."""

    def __init__(self) -> None:
        self.runs: collections.Counter[int] = collections.Counter()

    def apply(self, key: int, x: int, blob: bytes = b"", pause_s: float = 0.0) -> list:
        self.runs[key] += 1
        time.sleep(pause_s)  # longer than the RTO: the call is retransmitted, and answered twice
        if x % 13 == 0:
            raise ValueError(f"refused {key}")
        return result_of(key, x, blob)

    def note(self, key: int) -> None:  # one-way calls
        self.runs[key] += 1


class RecordingServer(ombm.rpc.Server):
    """A server that keeps each connection's protocol statistics when it drops the connection
    (the client closed, or the server stopped), after taking back what the lane served."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dropped: list[dict] = []

    def _drop(self, conn) -> None:
        if self._intake is not None:
            handback = self._intake.take(conn.request.segment.id)
            if handback is not None:
                conn.protocol.reclaim(*handback)
        self.dropped.append(dataclasses.asdict(conn.protocol.statistics()))
        super()._drop(conn)


@child
def serve_ledger(conn, name: str) -> None:
    """Serve a Ledger until the parent sends "stop"; report every run and every connection."""
    ledger = Ledger()
    srv = RecordingServer(name, ledger).start()
    try:
        conn.send(("ready", os.getpid()))
        conn.recv()
    finally:
        srv.stop()
    conn.send(("result", {"runs": dict(ledger.runs), "stats": dict(srv.stats), "connections": srv.dropped,
                          "ombm": ombm.stats()}))


# ---------------------------------------------------------------- plans
@dataclasses.dataclass(frozen=True)
class Op:
    kind: str  # "sync", "async" (call_async), "oneway", "aio" (asyncio)
    key: int
    x: int
    size: int  # of the blob argument
    pause_s: float  # how long the server takes (a call slower than the RTO is retransmitted needlessly)


def plan(seed: int, client: int, solo: int, shared: int, ops: int, aio_ops: int) -> list[list[Op]]:
    """Client ``client``'s operations: one list per thread, the ``solo`` threads first (each calls
    on a connection of its own, so its synchronous calls take the lane), then the ``shared`` ones
    (one connection: a call finds another outstanding and takes the protocol, or leads the lane),
    and last the asyncio task's (a connection of its own, eight calls in flight)."""
    lists = []
    for t in range(solo + shared + 1):
        rng = random.Random(f"{seed}-{client}-{t}")
        weights = [8, 1, 1] if t < solo else [6, 2, 2]
        mine = []
        for i in range(ops if t < solo + shared else aio_ops):
            key = client * KEY_CLIENT + t * KEY_THREAD + i
            kind = "aio" if t == solo + shared else rng.choices(["sync", "async", "oneway"], weights)[0]
            size = rng.choices([0, rng.randrange(1, 3000), 150_000], [89, 10, 1])[0]  # 150 KB: two frames
            pause_s = rng.choices([0.0, 0.008], [97, 3])[0]
            if kind == "oneway":
                size, pause_s = 0, 0.0
            mine.append(Op(kind, key, rng.randrange(1 << 20), size, pause_s))
        lists.append(mine)
    return lists


def outcome(op: Op) -> tuple | None:
    """What a call of ``op`` must give the caller (None for one-way calls)."""
    if op.kind == "oneway":
        return None
    if op.x % 13 == 0:
        return ("error", "ValueError", f"refused {op.key}")
    return ("ok", result_of(op.key, op.x, blob_of(op.key, op.size)))


# ---------------------------------------------------------------- the client side
def _call(fn) -> tuple:
    try:
        return ("ok", fn())
    except RemoteError as exc:
        return ("error", exc.type_name, exc.message)
    except Exception as exc:  # lost (a timeout) or anything else: a failure the test reports
        return ("raised", repr(exc))


def _run_thread(cli, ops: list[Op], results: dict) -> None:
    for op in ops:
        blob = blob_of(op.key, op.size)
        if op.kind == "sync":
            results[op.key] = _call(lambda: cli.apply(op.key, op.x, blob, op.pause_s))
        elif op.kind == "async":
            results[op.key] = _call(lambda: cli.call_async("apply", op.key, op.x, blob, op.pause_s).result())
        else:
            cli.oneway("note", op.key)


async def _run_aio(name: str, ops: list[Op], results: dict) -> dict:
    async with await ombm.rpc.connect_async(name, timeout=60.0) as cli:
        async def one(op: Op) -> None:
            try:
                results[op.key] = ("ok", await cli.apply(op.key, op.x, blob_of(op.key, op.size), op.pause_s))
            except RemoteError as exc:
                results[op.key] = ("error", exc.type_name, exc.message)
            except Exception as exc:
                results[op.key] = ("raised", repr(exc))

        for i in range(0, len(ops), 8):  # eight calls in flight at a time
            await asyncio.gather(*(one(op) for op in ops[i : i + 8]))
        return _settled(cli.client)


def _settled(cli) -> dict:
    """The client's protocol statistics once every call (one-way calls too) is acknowledged, with
    its connection state: calls pending, and the call on the lane if any."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        stats = cli.statistics()  # takes the protocol's state back from the lane
        if (stats.in_flight == 0 and stats.queued == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    state = dataclasses.asdict(stats)
    state["pending"] = len(cli._pending)
    state["lane_call"] = cli._protocol.lane_call
    return state


def _solo(name: str, ops: list[Op], results: dict, states: dict, t: int) -> None:
    with ombm.rpc.connect(name, timeout=60.0) as cli:
        _run_thread(cli, ops, results)
        states[t] = _settled(cli)


@child
def run_plan(conn, name: str, seed: int, client: int, solo: int, shared: int, ops: int, aio_ops: int) -> None:
    """Run client ``client``'s plan (see :func:`plan`): report every result, and each connection's
    final state in the plan's order (the solo threads', the shared one's, the asyncio task's)."""
    lists = plan(seed, client, solo, shared, ops, aio_ops)
    results: dict = {}
    states: dict = {}
    with ombm.rpc.connect(name, timeout=60.0) as cli:
        conn.send(("ready", os.getpid()))
        workers = [threading.Thread(target=_solo, args=(name, lists[t], results, states, t), daemon=True)
                   for t in range(solo)]
        workers += [threading.Thread(target=_run_thread, args=(cli, lists[t], results), daemon=True)
                    for t in range(solo, solo + shared)]
        workers.append(threading.Thread(
            target=lambda: states.update({solo + 1: asyncio.run(_run_aio(name, lists[-1], results))}), daemon=True))
        for w in workers:
            w.start()
        for w in workers:
            w.join(SETTLE_S * 4)
        stuck = sum(w.is_alive() for w in workers)
        states[solo] = _settled(cli)
    conn.send(("result", {"results": results, "stuck": stuck, "connections": [states.get(i) for i in range(solo + 2)],
                          "ombm": ombm.stats()}))


@child
def run_target(conn, name: str, client: int, threads: int, calls: int) -> None:
    """The target run's client process: ``threads`` threads, each with a connection of its own (so
    each synchronous call can take that connection's lane), ``calls`` calls each; reports what went
    wrong (first few), how many, and each connection's statistics."""
    wrong: list = []
    failed = collections.Counter()
    states: list = []

    def work(t: int) -> None:
        with ombm.rpc.connect(name, timeout=60.0) as cli:
            for i in range(calls):
                key = client * KEY_CLIENT + t * KEY_THREAD + i
                x = key * 7919 % 1_000_003  # one call in 13 raises: error replies take the lanes too
                op = Op("sync", key, x, 0, 0.0)
                got = _call(lambda: cli.apply(key, x))
                if got != outcome(op):
                    failed[got[0]] += 1
                    if len(wrong) < 10:
                        wrong.append((key, got))
            states.append(_settled(cli))

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    conn.send(("ready", os.getpid()))
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    conn.send(("result", {"wrong": wrong, "failed": dict(failed), "connections": states,
                          "wall_s": time.monotonic() - started, "ombm": ombm.stats()}))
