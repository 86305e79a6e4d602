"""Real futures and per-call options (issue 14, items 2 and 3), between real processes: call_async
returns a concurrent.futures.Future that completes by itself (callbacks, asyncio.wrap_future,
concurrent.futures.wait), can be cancelled while nothing of it was sent (and then never runs), and
is given up at its own deadline; client.options(timeout=, oneway=) and remote methods whose names
a client attribute takes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading

import pytest

import ombm
from ombm.core import admin as ombm_inspect
from rpc_helpers import Children, expect, join, serve_started, service_name

pytestmark = pytest.mark.processes


@pytest.fixture
def recorder():
    """A Recorder service in a child process; yields (name, process)."""
    name = service_name("recorder")
    with Children() as children:
        p, conn = children.spawn(serve_started, [(name, "recorder")])
        expect(conn, "constructed")
        expect(conn, "ready")
        yield name, p
        if p.is_alive():
            conn.send("stop")
            expect(conn, "result")
            assert join(p) == 0


def test_a_future_completes_by_itself_for_callbacks_wait_and_asyncio(recorder):
    name, _ = recorder
    with ombm.rpc.connect(name, timeout=60.0) as cli:
        future = cli.call_async("work", 1, 0.05)
        assert isinstance(future, concurrent.futures.Future)
        called = threading.Event()
        seen: list[object] = []
        future.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
        assert called.wait(60.0)  # nobody called result(): the client's timer took the reply
        assert seen == [1] and future.done() and future.result() == 1

        futures = [cli.call_async("work", i) for i in range(10, 20)]
        done, not_done = concurrent.futures.wait(futures, timeout=60.0)
        assert not not_done and sorted(f.result() for f in done) == list(range(10, 20))

        async def awaited() -> list[int]:
            return list(await asyncio.gather(*(asyncio.wrap_future(cli.call_async("work", i)) for i in range(3))))

        assert asyncio.run(awaited()) == [0, 1, 2]


def test_a_future_finished_without_a_waiter_behaves_as_any_future(recorder):
    """A future nobody waits on is finished without a condition (the pipelined calls' fast path):
    everything concurrent.futures offers still works on it, before and after it is done."""
    name, _ = recorder
    with ombm.rpc.connect(name, timeout=60.0) as cli:
        futures = [cli.call_async("work", i) for i in range(20)]
        assert futures[-1].result() == 19  # takes the replies: most finish with nobody watching
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60.0)) == list(range(20))
        seen: list[object] = []
        futures[0].add_done_callback(lambda f: seen.append(f.result()))  # done already: runs at once
        assert seen == [0] and "finished returned int" in repr(futures[0])
        assert futures[3].exception() is None and not futures[3].cancelled() and not futures[3].running()
        watched = cli.call_async("work", 7, 0.05)
        waiter = threading.Thread(target=lambda: seen.append(concurrent.futures.wait([watched], timeout=60.0)))
        waiter.start()  # waits on the condition (made for it) while this thread takes the reply
        assert watched.result() == 7
        waiter.join(60.0)
        assert not waiter.is_alive() and seen[1].done == {watched}
        failed = cli.call_async("nothing")
        with pytest.raises(ombm.rpc.RemoteError):
            failed.result()
        assert isinstance(failed.exception(), ombm.rpc.RemoteError)


def test_cancel_takes_back_a_call_never_sent_and_reports_a_sent_one_running(recorder):
    name, _ = recorder
    with ombm.rpc.connect(name, timeout=120.0) as cli:
        # far more calls than the connection's window: the first take its slots (sent at once, the
        # first one slow, so that every sent call is still running while we look, even on a busy
        # machine), the rest queue behind it in the client, nothing of them sent yet
        futures = [cli.call_async("work", i, 2.0 if i == 0 else 0.0) for i in range(80)]
        queued = [f for f in futures if not f.running()]
        sent = [f for f in futures if f.running()]
        assert queued and sent and futures[0].running()
        assert all(f.cancel() for f in queued)
        assert all(f.cancelled() for f in queued)
        with pytest.raises(concurrent.futures.CancelledError):
            queued[0].result()
        assert sent[-1].cancel() is False and sent[-1].running()  # sent: it runs, or ran
        expected = [futures.index(f) for f in sent]
        assert [f.result() for f in sent] == expected
        # each sent call ran once (a retransmitted one may run after later ones), no cancelled call ran
        assert sorted(cli.executed()) == expected


def test_a_future_nobody_waits_for_is_given_up_at_its_deadline(recorder):
    name, _ = recorder
    with ombm.rpc.connect(name, timeout=300.0) as cli:
        future = cli.options(timeout=0.3).call_async("work", 7, 5.0)
        done, _ = concurrent.futures.wait([future], timeout=120.0)
        assert done and isinstance(future.exception(), ombm.rpc.CallTimeout)
        assert not isinstance(future.exception(), ombm.ServerGoneError)
        with pytest.raises(concurrent.futures.TimeoutError):  # result(timeout) short of the deadline: not given up
            cli.call_async("work", 8, 2.0).result(timeout=0.05)


def test_futures_of_a_server_killed_fail_with_server_gone(recorder):
    name, p = recorder
    cli = ombm.rpc.connect(name, timeout=300.0)
    try:
        future = cli.call_async("work", 9, 60.0)
        os.kill(p.pid, signal.SIGKILL)
        join(p)
        done, _ = concurrent.futures.wait([future], timeout=120.0)
        assert done and isinstance(future.exception(), ombm.ServerGoneError)
    finally:
        cli.close()
        ombm_inspect.gc()  # what the killed server left: its signal FIFO and well-known channel


def test_per_call_options_and_names_a_client_attribute_takes(recorder):
    name, _ = recorder
    with ombm.rpc.connect(name, timeout=300.0) as cli:
        with pytest.raises(ombm.rpc.CallTimeout):  # the client's 300 s would have let it finish in 5 s
            cli.options(timeout=0.2).work(1, 5.0)
        assert cli.options(timeout=60.0).work(2) == 2
        assert cli.options(oneway=True).work(3) is None
        assert cli.call("close") == "the remote close"
        assert cli.options().close() == "the remote close"
        assert cli.options().statistics() == "the remote statistics"
        assert cli.statistics().calls >= 4  # the client's own statistics()
        assert 3 in cli.executed()
        with pytest.raises(ValueError):
            cli.options(timeout=0)
        with pytest.raises(ValueError):
            cli.options(oneway=True).call_async("work", 1)
    with pytest.raises(ombm.ClosedError):  # the client's own close() closed it
        cli.call("work", 1)


def test_closing_a_client_fails_its_outstanding_futures(recorder):
    name, _ = recorder
    cli = ombm.rpc.connect(name, timeout=300.0)
    future = cli.call_async("work", 1, 5.0)
    cli.close()
    assert isinstance(future.exception(timeout=60.0), ombm.ClosedError)
