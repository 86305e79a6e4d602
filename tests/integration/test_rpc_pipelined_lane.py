"""The pipelined lane (``_native.PipeLane``, issue 13 item 2) against the sans-I/O protocol.

The differential test runs the same seeded streams of calls kept outstanding (1 to 40 at a time,
beyond the window of 16) twice between real processes, with the lanes on (call_async's one-frame
calls marshalled, written and completed natively) and off (``OMBM_LANES=0``: the protocol's Python
path), each time with 5 % of signals dropped and 1 % of messages corrupted on every side, so calls
are retransmitted, taken back by the protocol and lent again. Both runs must give every call its
own result, run every call exactly once, leave nothing pending and count the same calls. And
replies forged into the reply channel while calls are outstanding never complete one.
"""

from __future__ import annotations

import random
import signal

import msgpack
import pytest

import ombm
from lanes_helpers import env, outcome, serve_ledger
from ombm.rpc import bulk
from ombm.transport import wire
from pipelined_helpers import run_stream, stream
from rpc_helpers import Children, expect, join, segments_of, send_signal, serve_forever, service_name

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


def _write_slots(region, slot_size: int, blobs: list[bytes]) -> None:
    """Write each blob so that it ends at the end of a slot (one signal each)."""
    slots = region.size // slot_size
    for i, blob in enumerate(blobs):
        blob = bytes(blob)[-slot_size:]
        end = (i % slots + 1) * slot_size
        region.write(end - len(blob), blob)


def test_forged_replies_never_complete_a_pipelined_call():
    """Replies forged into a client's reply slots while 40 call_async calls are outstanding (16 in
    flight, 24 queued behind the window on the pipelined lane): to calls still queued, never made,
    of another connection, garbage. Every future gets its own result (a slot overwritten loses a
    reply: the protocol's retransmission recovers it); the forgeries are counted, never taken."""
    name = service_name("pipeforge")
    with Children() as children:
        p, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        rng = random.Random(3)
        before = segments_of(name)
        with ombm.rpc.connect(name, timeout=30.0) as victim:
            assert victim.call_async("add", 0, 0).result() == 0
            (rep_name,) = [s for s in segments_of(name) - before if s.endswith("-rep")]
            conn_id = victim._protocol.connection_id
            with ombm.open_segment(rep_name) as seg:
                region = seg.bind(writable=True)
                for round_ in range(3):
                    victim._timer.remove(victim)  # no other thread takes replies (and lets queued calls go) meanwhile
                    futures = [victim.call_async("add", round_, i) for i in range(40)]
                    ids = [f._call_id for f in futures]
                    forged = [wire.encode(wire.Kind.REPLY, conn_id, call_id, msgpack.packb([0, -1]))
                              for call_id in ids[-8:] + [ids[-1] + 1, ids[-1] + 1000]]
                    forged += [wire.encode(wire.Kind.REPLY, conn_id ^ 1, ids[0], msgpack.packb([0, -1])),
                               rng.randbytes(seg.unit), rng.randbytes(100)]
                    _write_slots(region, seg.unit, forged)
                    victim._timer.add(victim)  # (it retransmits the calls whose replies a forgery overwrote)
                    assert [f.result() for f in futures] == [round_ + i for i in range(40)]
                region.unbind()
            stats = victim.statistics()
            assert stats.bad_frames + stats.foreign_frames + stats.duplicates > 0
            assert stats.lane_calls > 0  # the calls took the pipelined lane
            assert victim.call_async("add", 2, 2).result() == 4
        send_signal(p, signal.SIGTERM)
        expect(conn, "result")
        assert join(p) == 0
