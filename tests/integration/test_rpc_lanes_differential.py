"""The fast paths under faults (issue 11 item 9): both native lanes run under fault injection.

* The differential test runs the same seeded call plans twice between real processes, with both
  lanes on and with both off (``OMBM_LANES=0``: every call takes the sans-I/O protocol's Python
  path), each time with 5 % of signals dropped and 1 % of messages corrupted on every side, so
  calls are retransmitted: synchronous calls, pipelined ones (``call_async``) and one-way calls from
  threads with a connection each and from threads sharing one, calls carrying two frames, calls
  that raise, and asyncio calls on a connection of their own. Both runs must give every call its own result, run every
  call exactly once, leave nothing pending, and end in the same protocol state where it is
  deterministic (calls made and delivered, replies sent; not retransmissions or duplicates, which
  depend on timing).
* The target run: 0 wrong, 0 lost, 0 twice-executed synchronous calls through the lanes from
  3 processes x 4 threads (a connection each) with 5 % drop and 1 % corruption. The suite makes
  1200 calls; ``OMBM_TARGET_CALLS=100000`` makes the full run (add ``-s`` to see its numbers).
"""

from __future__ import annotations

import math
import os

import pytest

from lanes_helpers import KEY_CLIENT, KEY_THREAD, env, outcome, plan, run_plan, run_target, serve_ledger
from ombm.rpc import bulk
from rpc_helpers import Children, expect, join, service_name

pytestmark = [pytest.mark.processes, pytest.mark.fault_injection]

CLIENTS, SOLO, SHARED, OPS, AIO_OPS = 2, 2, 2, 60, 40  # per client: SOLO + 1 + 1 connections
TARGET_CALLS = int(os.environ.get("OMBM_TARGET_CALLS", "1200"))
TARGET_PROCESSES, TARGET_THREADS = 3, 4
TARGET_WAIT_S = 120 + TARGET_CALLS / 100  # liveness bounds on a busy machine, never a performance claim


def _served(name: str, lanes: bool, seed: int, clients: list[tuple], wait_s: float) -> tuple[list[dict], dict]:
    """Serve a Ledger and run ``clients`` (each ``(body, *args)``) against it, every process with
    the lanes on or off and faults seeded from ``seed``: the clients' reports and the server's."""
    with Children() as children:
        server, sconn = children.spawn(serve_ledger, name, env=env(lanes, seed))
        expect(sconn, "ready")
        started = [children.spawn(body, name, *args, env=env(lanes, seed * 1000 + i + 1))
                   for i, (body, *args) in enumerate(clients)]
        for _, cconn in started:
            expect(cconn, "ready")
        reports = [expect(cconn, "result", timeout=wait_s) for _, cconn in started]
        for p, _ in started:
            assert join(p) == 0
        sconn.send("stop")
        served = expect(sconn, "result")
        assert join(server) == 0
    return reports, served


def _first_differences(got: dict, want: dict, n: int = 5) -> list:
    return [(k, got.get(k), want.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)][:n]


def _run_plans(seed: int, lanes: bool) -> dict:
    clients = [(run_plan, seed, c, SOLO, SHARED, OPS, AIO_OPS) for c in range(CLIENTS)]
    reports, served = _served(service_name(f"diff{int(lanes)}"), lanes, seed, clients, 120.0)
    results: dict = {}
    for report in reports:
        assert report["stuck"] == 0, "a calling thread never finished"
        results.update(report["results"])
    return {"results": results, "reports": reports, "server": served}


def _connections(run: dict) -> list[dict]:
    return [s for r in run["reports"] for s in r["connections"]]


def _state(run: dict) -> dict:
    """The protocol state both paths must reach alike: per connection, the calls the client made
    and whether any is pending, on the lane or unacknowledged; per connection (sorted), what the
    server's protocol delivered and answered; the server's counts of calls run and of errors."""
    clients = [s["calls"] for s in _connections(run)]
    loose = [(s["in_flight"], s["queued"], s["pending"], s["lane_call"]) for s in _connections(run)]
    served = sorted((c["requests"], c["replies"], c["executing"], c["refused"], c["foreign_frames"])
                    for c in run["server"]["connections"])
    stats = run["server"]["stats"]
    return {"clients": clients, "loose ends": loose, "served": served,
            "server": (stats["calls"], stats["errors"], stats["connections"], stats["dropped_frames"])}


def _expected_state(seed: int) -> dict:
    connections = []  # each connection's operations, in the order run_plan reports them
    for c in range(CLIENTS):
        lists = plan(seed, c, SOLO, SHARED, OPS, AIO_OPS)
        connections += lists[:SOLO] + [[op for ops in lists[SOLO:-1] for op in ops], lists[-1]]
    ops = [op for ops in connections for op in ops]
    # a connection's first call with a large payload is preceded by one more: the offer of its bulk segments
    offers = [int(any(op.size >= bulk.BULK_MIN for op in c)) for c in connections]
    served = sorted((len(c) + o, sum(op.kind != "oneway" for op in c) + o, 0, 0, 0) for c, o in zip(connections, offers))
    errors = sum(op.kind != "oneway" and op.x % 13 == 0 for op in ops)
    return {"clients": [len(c) + o for c, o in zip(connections, offers)],
            "loose ends": [(0, 0, 0, None)] * len(connections),
            "served": served, "server": (len(ops) + sum(offers), errors, len(connections), 0)}


@pytest.mark.parametrize("seed", [11])
def test_the_same_calls_with_the_lanes_on_and_off(seed):
    ops = [op for c in range(CLIENTS) for ops in plan(seed, c, SOLO, SHARED, OPS, AIO_OPS) for op in ops]
    expected = {op.key: outcome(op) for op in ops if op.kind != "oneway"}
    runs = {lanes: _run_plans(seed, lanes) for lanes in (True, False)}
    for lanes, run in runs.items():
        label = "lanes on" if lanes else "lanes off"
        assert run["results"] == expected, (label, _first_differences(run["results"], expected))
        runs_of = run["server"]["runs"]
        assert runs_of == {op.key: 1 for op in ops}, (label, _first_differences(runs_of, {op.key: 1 for op in ops}))
        assert _state(run) == _expected_state(seed), label
        # the faults happened and were repaired by retransmission, on both sides
        connections = _connections(run)
        assert sum(s["retransmits"] for s in connections) > 0, label
        sides = [r["ombm"] for r in run["reports"]] + [run["server"]["ombm"]]
        assert all(side["signals_dropped_fault"] > 0 for side in sides), label
        assert sum(side["messages_corrupted_fault"] for side in sides) > 0, label
        # which path the calls took: with the lanes on, most synchronous calls of the solo threads
        lane_calls, server_lane = sum(s["lane_calls"] for s in connections), run["server"]["stats"]["lane_calls"]
        if lanes:
            solo_sync = sum(op.kind == "sync" for op in ops if op.key % KEY_CLIENT // KEY_THREAD < SOLO)
            assert lane_calls > solo_sync // 2 and server_lane > solo_sync // 2, (label, lane_calls, server_lane)
        else:
            assert (lane_calls, server_lane, sum(s["adopted"] for s in connections)) == (0, 0, 0), label
    assert runs[True]["results"] == runs[False]["results"]
    assert runs[True]["server"]["runs"] == runs[False]["server"]["runs"]
    assert _state(runs[True]) == _state(runs[False])


@pytest.mark.timeout(TARGET_WAIT_S + 60)
def test_the_lanes_lose_and_repeat_nothing_under_faults():
    per_thread = math.ceil(TARGET_CALLS / (TARGET_PROCESSES * TARGET_THREADS))
    calls = per_thread * TARGET_PROCESSES * TARGET_THREADS
    clients = [(run_target, c, TARGET_THREADS, per_thread) for c in range(TARGET_PROCESSES)]
    reports, served = _served(service_name("target"), True, 7, clients, TARGET_WAIT_S)

    wrong = [w for r in reports for w in r["wrong"]]
    failed = {kind: sum(r["failed"].get(kind, 0) for r in reports) for kind in ("ok", "error", "raised")}
    assert not wrong and not any(failed.values()), (failed, wrong)  # 0 wrong, 0 lost (a timeout raises)
    keys = {c * KEY_CLIENT + t * KEY_THREAD + i for c in range(TARGET_PROCESSES) for t in range(TARGET_THREADS)
            for i in range(per_thread)}
    runs = served["runs"]
    twice = sum(1 for n in runs.values() if n > 1)
    lost = len(keys - set(runs))
    assert twice == 0 and lost == 0 and set(runs) == keys, (twice, lost)  # 0 executed twice, none unexecuted

    connections = [s for r in reports for s in r["connections"]]
    assert all((s["in_flight"], s["queued"], s["pending"], s["lane_call"]) == (0, 0, 0, None) for s in connections)
    assert sum(s["calls"] for s in connections) == calls
    lane_calls = sum(s["lane_calls"] for s in connections)
    adopted = sum(s["adopted"] for s in connections)
    retransmits = sum(s["retransmits"] for s in connections)
    server_lane = served["stats"]["lane_calls"]
    faults = [r["ombm"] for r in reports] + [served["ombm"]]
    dropped = sum(f["signals_dropped_fault"] for f in faults)
    corrupted = sum(f["messages_corrupted_fault"] for f in faults)
    print(f"\n{calls} calls from {TARGET_PROCESSES} processes x {TARGET_THREADS} threads in "
          f"{max(r['wall_s'] for r in reports):.1f} s: 0 wrong, 0 lost, 0 executed twice; "
          f"client lane: {lane_calls} calls ({lane_calls - adopted} answered on it, {adopted} adopted by the "
          f"protocol); server lane: {server_lane} calls; retransmissions: {retransmits}; "
          f"faults: {dropped} signals dropped, {corrupted} messages corrupted")
    assert retransmits > 0 and dropped > 0 and corrupted > 0
    # the calls went through the lanes: each thread calls alone on its connection, so every call is
    # made on its client's lane; the server's lane serves every call that came whole and in order
    assert lane_calls == calls
    assert server_lane > calls // 2
