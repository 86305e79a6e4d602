"""The pipelined lane (``_native.PipeLane``, issue 13 item 2) against the sans-I/O protocol.

The differential test runs the same seeded streams of calls kept outstanding (1 to 40 at a time,
beyond the window of 16) twice between real processes, with the lanes on (call_async's one-frame
calls marshalled, written and completed natively) and off (``OMBM_LANES=0``: the protocol's Python
path), each time with 5 % of signals dropped and 1 % of messages corrupted on every side, so calls
are retransmitted, taken back by the protocol and lent again. Both runs must give every call its
own result, run every call exactly once, leave nothing pending and count the same calls.
"""

from __future__ import annotations

import pytest

from lanes_helpers import env, outcome, serve_ledger
from ombm.rpc import bulk
from pipelined_helpers import run_stream, stream
from rpc_helpers import Children, expect, join, service_name

pytestmark = [pytest.mark.processes, pytest.mark.fault_injection]

CLIENTS, CALLS = 2, 400


def _run(seed: int, lanes: bool) -> dict:
    name = service_name(f"pipe{int(lanes)}")
    with Children() as children:
        server, sconn = children.spawn(serve_ledger, name, env=env(lanes, seed))
        expect(sconn, "ready")
        started = [children.spawn(run_stream, name, seed, c, CALLS, env=env(lanes, seed * 1000 + c + 1))
                   for c in range(CLIENTS)]
        for _, cconn in started:
            expect(cconn, "ready")
        reports = [expect(cconn, "result", timeout=180.0) for _, cconn in started]
        for p, _ in started:
            assert join(p) == 0
        sconn.send("stop")
        served = expect(sconn, "result")
        assert join(server) == 0
    results = {key: value for r in reports for key, value in r["results"].items()}
    return {"results": results, "connections": [r["connection"] for r in reports],
            "runs": served["runs"], "ombm": [r["ombm"] for r in reports] + [served["ombm"]]}


@pytest.mark.parametrize("seed", [5])
def test_pipelined_calls_with_the_lanes_on_and_off(seed):
    ops = [op for c in range(CLIENTS) for op, _ in stream(seed, c, CALLS)]
    expected = {op.key: outcome(op) for op in ops}
    # a connection's first call with a large payload is preceded by one more: the offer of its bulk segments
    offers = sum(any(op.size >= bulk.BULK_MIN for op, _ in stream(seed, c, CALLS)) for c in range(CLIENTS))
    runs = {lanes: _run(seed, lanes) for lanes in (True, False)}
    for lanes, run in runs.items():
        label = "lanes on" if lanes else "lanes off"
        wrong = [(k, run["results"].get(k), v) for k, v in expected.items() if run["results"].get(k) != v]
        assert not wrong, (label, wrong[:5])
        assert run["runs"] == {op.key: 1 for op in ops}, label  # each call ran exactly once
        connections = run["connections"]
        assert [(s["in_flight"], s["queued"], s["pending"], s["lane_call"]) for s in connections] == \
            [(0, 0, 0, None)] * CLIENTS, label
        assert sum(s["calls"] for s in connections) == len(ops) + offers, label
        assert sum(s["retransmits"] for s in connections) > 0, label  # the faults were repaired
        assert all(side["signals_dropped_fault"] > 0 for side in run["ombm"]), label
        lane_calls = sum(s["lane_calls"] for s in connections)
        if lanes:  # most calls went through the lanes (the pipelined one: call_async's one-frame calls)
            pipelined = sum(op.kind == "async" and op.size < 100_000 for op in ops)
            print(f"\n{lane_calls} of {pipelined} pipelined one-frame calls on the lanes")
            assert lane_calls > pipelined // 2, (label, lane_calls, pipelined)
        else:
            assert lane_calls == 0, label
    assert runs[True]["results"] == runs[False]["results"]
