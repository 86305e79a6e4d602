"""A pipelined call's state (issue 13 item 2): ``_Pending`` on the native ``PendingCall`` and
``Future`` on the native ``FutureCore`` (the fields the pipelined lane fills without Python code),
a ``Future`` whose condition, waiters and callbacks are made at their first use, so one nobody
watches finishes without them."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import weakref

import pytest

from ombm import _native
from ombm.rpc.client import Future, _Pending


def test_a_pending_call_starts_empty_and_takes_no_arguments():
    pending = _Pending()
    assert isinstance(pending, _native.PendingCall)
    assert (pending.done, pending.data, pending.error, pending.gone, pending.watched) == (False, b"", False, False, False)
    assert pending.value is _native.UNDECODED
    assert pending.future is pending.wake is pending.ready is pending.client is None
    assert (pending.call_id, pending.deadline) == (0, 0.0)
    pending.value = 7
    assert pending.result(False) == 7
    with pytest.raises(TypeError):
        _Pending(1)  # type: ignore[call-arg]


def test_a_future_and_its_pending_call_are_collected_together():
    pending = _Pending()
    future = Future(None, 3, pending, 12.5, True)  # type: ignore[arg-type]
    pending.future = future  # a cycle, as the ordinary path makes
    assert (future._call_id, future.deadline, future._client) == (3, 12.5, None)
    gone = weakref.ref(future)
    del future, pending
    gc.collect()
    assert gone() is None


def test_a_future_makes_its_condition_at_first_use_and_is_then_watched():
    future = Future(None, 1, _Pending(), 0.0, True)  # type: ignore[arg-type]
    assert isinstance(future, _native.FutureCore) and isinstance(future, concurrent.futures.Future)
    assert (future._state, future._result, future._exception) == ("RUNNING", None, None)
    future._finish(5, None)  # nobody watches: finished without a condition
    assert "_condition" not in future.__dict__ and not future._pending.watched
    assert future.result() == 5 and future.done()
    seen: list[object] = []
    future.add_done_callback(lambda f: seen.append(f.result()))  # done already: runs at once
    assert seen == [5] and future._pending.watched
    assert future._condition is future._condition and isinstance(future._condition, threading.Condition)

    watched = Future(None, 2, _Pending(), 0.0, True)  # type: ignore[arg-type]
    watched.add_done_callback(lambda f: seen.append(f.result()))
    assert watched._pending.watched and watched._done_callbacks
    waited: list[concurrent.futures._base.DoneAndNotDoneFutures[object]] = []
    waiter = threading.Thread(target=lambda: waited.append(concurrent.futures.wait([watched], timeout=60.0)))
    waiter.start()
    watched._finish(6, None)  # watched: through set_result, which wakes the waiter and runs the callback
    waiter.join(60.0)
    assert not waiter.is_alive() and seen == [5, 6] and waited[0].done == {watched}
