"""After ``os.fork`` every RPC client, server, channel end, receiver and dispatcher of the parent
belongs to the parent: it keeps working there, and in the child each use raises
:class:`ombm.ForkedError` (a :class:`ombm.ClosedError`) and ``close()`` touches nothing shared
(issue 11, item 6; DESIGN.md §6 "Fork"). Red team: a client used in a forked child and then in the
parent returned the child's result to the parent (``add(0, 100)`` returned 5).

Children are forked the way ``multiprocessing`` does by default on Linux, and report back through a
pipe: what each use returned, or the name of the exception it raised.
"""

from __future__ import annotations

import os

import pytest

import ombm
from rpc_helpers import Calc, service_name

pytestmark = pytest.mark.processes


def _outcome(fn):
    try:
        return ("value", fn())
    except Exception as exc:  # noqa: BLE001 - the kind of error is the result
        return ("error", type(exc).__name__, isinstance(exc, ombm.ClosedError), str(exc))


def _child_uses(conn, uses):
    """In the forked child: run each use, send back the outcomes, close everything, exit."""
    conn.send([_outcome(use) for use in uses])
    conn.close()


def _run_child(procs, uses, timeout=30.0):
    parent_end, child_end = procs.pipe("fork")
    p = procs.fork(_child_uses, child_end, uses)
    child_end.close()
    assert parent_end.poll(timeout), "the forked child did not report"
    outcomes = parent_end.recv()
    p.join(timeout)
    assert p.exitcode == 0
    return outcomes


def _forked_error(outcome):
    return outcome[0] == "error" and outcome[1] == "ForkedError" and outcome[2] and "forked" in outcome[3]


def test_a_client_used_in_a_forked_child_and_in_the_parent_never_mixes_results(procs):
    name = service_name("fork-client")
    with ombm.rpc.Server(name, Calc()).start(), ombm.rpc.connect(name, timeout=10.0) as cli:
        assert cli.add(1, 1) == 2
        for round_ in range(3):  # interleaved: the child calls, then the parent, again
            outcomes = _run_child(procs, [lambda: cli.add(2, 3), lambda: cli.call_async("add", 2, 3).result(),
                                          lambda: cli.oneway("add", 2, 3), lambda: cli.close()])
            assert all(_forked_error(o) for o in outcomes[:3]), outcomes
            assert outcomes[3] == ("value", None)  # close() in the child: allowed, forgets the copy
            assert cli.add(0, 100 + round_) == 100 + round_
            assert cli.call_async("add", 0, 7).result() == 7
        # a client made in the child itself works
        outcomes = _run_child(procs, [lambda: _fresh_call(name)])
        assert outcomes == [("value", 9)]
        assert cli.add(40, 2) == 42


def _fresh_call(name):
    with ombm.rpc.connect(name, timeout=10.0) as mine:
        return mine.add(4, 5)


def test_an_async_client_in_a_forked_child_raises_forked_error(procs):
    import asyncio

    name = service_name("fork-async")
    with ombm.rpc.Server(name, Calc()).start():
        async def make():
            return await ombm.rpc.aio.connect_async(name, timeout=10.0)

        acli = asyncio.run(make())
        try:
            outcomes = _run_child(procs, [lambda: asyncio.run(acli.add(2, 3))])
            assert _forked_error(outcomes[0]), outcomes
            assert asyncio.run(acli.add(0, 100)) == 100
        finally:
            asyncio.run(acli.close())


def test_a_server_in_a_forked_child_cannot_serve_and_its_stop_leaves_the_parent_serving(procs):
    name = service_name("fork-server")
    srv = ombm.rpc.Server(name, Calc()).start()
    try:
        with ombm.rpc.connect(name, timeout=10.0) as cli:
            outcomes = _run_child(procs, [lambda: srv.serve_forever(), lambda: srv.start(), lambda: srv.stop()])
            assert _forked_error(outcomes[0]) and _forked_error(outcomes[1]), outcomes
            assert outcomes[2] == ("value", None)
            assert [cli.add(i, 100) for i in range(20)] == [i + 100 for i in range(20)]
        with ombm.rpc.connect(name, timeout=10.0) as late:  # the well-known channel is still the parent's
            assert late.add(1, 2) == 3
    finally:
        srv.stop()


def test_stream_ends_in_a_forked_child_raise_and_the_parent_stream_stays_exact(procs):
    writer = ombm.Stream.create()
    reader = ombm.Stream.open(writer.name, timeout=5.0)
    try:
        writer.send(b"before")
        outcomes = _run_child(procs, [lambda: writer.send(b"child"), lambda: reader.recv(0.2),
                                      lambda: writer.close(), lambda: reader.close()])
        assert _forked_error(outcomes[0]) and _forked_error(outcomes[1]), outcomes
        assert outcomes[2:] == [("value", None), ("value", None)]
        writer.send(b"after")
        assert bytes(reader.recv(5.0)) == b"before"
        assert bytes(reader.recv(5.0)) == b"after"
    finally:
        writer.close()
        reader.close()


def test_raw_channel_ends_in_a_forked_child_raise(procs):
    writer = ombm.RawChannel.create(unit_size=256, units=4)
    reader = ombm.RawChannel.open(writer.name, timeout=5.0)
    try:
        outcomes = _run_child(procs, [lambda: writer.write(b"child"), lambda: reader.recv_nowait(),
                                      lambda: writer.close(), lambda: reader.close()])
        assert _forked_error(outcomes[0]) and _forked_error(outcomes[1]), outcomes
        writer.write(b"parent")
        assert bytes(reader.recv(5.0).data) == b"parent"
    finally:
        writer.close()
        reader.close()


def test_receivers_and_dispatchers_in_a_forked_child_raise(procs):
    receiver = ombm.core.signals.Receiver()
    dispatcher = ombm.Dispatcher()
    seg = ombm.create_segment(4096)
    region = seg.bind()
    try:
        fired = []
        handle = dispatcher.signal_handler(region.address, 64, fired.append)
        outcomes = _run_child(procs, [lambda: receiver.add_handler(region.address, 64, print),
                                      lambda: dispatcher.signal_handler(region.address, 64, print),
                                      lambda: (receiver.close(), dispatcher.close(), handle.disable())[0]])
        assert _forked_error(outcomes[0]) and _forked_error(outcomes[1]), outcomes
        assert outcomes[2] == ("value", None)
        region.write(0, b"x" * 64)  # the parent's handler is still registered and runs
        deadline = __import__("time").monotonic() + 5
        while not fired and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.01)
        assert fired == [region.address]
    finally:
        dispatcher.close()
        receiver.close()
        seg.release()
