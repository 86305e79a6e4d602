"""call_async as one native call (issue 13 item 2), between real processes: ``PipeLane.call`` makes
the future and its ``PendingCall`` and writes the call, or returns None, having done nothing, for
what the ordinary path must make; a future someone watches (callbacks, waiters) is handed to Python
by the drain, which runs each callback once, whichever thread takes the reply."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time

import pytest

import ombm
from ombm import _native
from ombm.rpc.client import _Pending
from rpc_helpers import Children, expect, join, serve_started, service_name

pytestmark = pytest.mark.processes


@pytest.fixture
def recorder():
    """A Recorder service in a child process; yields its name."""
    name = service_name("pipefuture")
    with Children() as children:
        p, conn = children.spawn(serve_started, [(name, "recorder")])
        expect(conn, "constructed")
        expect(conn, "ready")
        yield name
        conn.send("stop")
        expect(conn, "result")
        assert join(p) == 0


def test_the_lane_makes_the_future_or_leaves_the_call_to_the_ordinary_path(recorder):
    with ombm.rpc.connect(recorder, timeout=60.0) as cli:
        first = cli.call_async("work", 0)  # lends the lane the protocol's call ids
        assert first.result() == 0
        pipe = cli._pipe
        assert pipe is not None and pipe.lent and not pipe.outstanding  # idle, still lent: no timer takes it
        before = time.monotonic()
        future = pipe.call(cli, "work", (1,), {}, 60.0)
        after = time.monotonic()
        assert type(future) is ombm.rpc.Future and isinstance(future, concurrent.futures.Future)
        assert type(future._pending) is _Pending and future._pending.client is cli
        assert future._call_id == first._call_id + 1 and before + 60.0 <= future.deadline <= after + 60.0
        # what the lane does not take: None, nothing done (no call id taken: see the next call's)
        too_large = b"x" * (cli._request.max_payload + 1)
        for method, args, timeout in (("work", (2,), pipe.patience / 2), (7, (2,), 60.0), ("work", (too_large,), 60.0)):
            assert pipe.call(cli, method, args, {}, timeout) is None
        with pytest.raises(TypeError):  # does not marshal: the caller's error, nothing sent
            cli.call_async("work", object())
        assert future.result() == 1 and not future._pending.watched and "_condition" not in future.__dict__
        assert cli.call_async("work", 3)._call_id == future._call_id + 1
        assert sorted(cli.executed()) == [0, 1, 3]  # (an ordinary call: the lane is taken back)
    assert pipe.call(cli, "work", (4,), {}, 60.0) is None  # closed
    with pytest.raises(ombm.ClosedError):
        cli.call_async("work", 4)


def test_watched_futures_on_the_lane_run_each_callback_once(recorder):
    with ombm.rpc.connect(recorder, timeout=60.0) as cli:
        cli.call_async("work", -1).result()  # the lane lent
        seen: collections.Counter[int] = collections.Counter()
        all_seen = threading.Event()
        lock = threading.Lock()

        def record(f: concurrent.futures.Future[int]) -> None:
            with lock:
                seen[f.result()] += 1
                if sum(seen.values()) == 40:
                    all_seen.set()

        futures = [cli.call_async("work", i) for i in range(40)]  # beyond the window: some wait queued
        for f in futures:
            f.add_done_callback(record)  # watched: the drain leaves them to Python
        assert futures[-1].result() == 39
        done, not_done = concurrent.futures.wait(futures, timeout=60.0)
        assert not not_done and all_seen.wait(60.0)
        assert seen == collections.Counter(range(40)) and all(f._pending.watched for f in futures)
        assert [f.result() for f in futures] == list(range(40))
