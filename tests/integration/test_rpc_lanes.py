"""The two lanes (paper §4): the native paths that make and serve simple calls, and hand
everything else to the sans-I/O protocol, which must then behave as if it had seen every call.

A non-idempotent Counter served in a child process shows any call executed twice; raw frames
written into a client's request channel play a retransmitting or confused client; threads that
need the client's protocol while another calls on its lane take the lent state back mid-call.
"""

from __future__ import annotations

import threading
import time

import pytest

import ombm
from ombm.rpc import RemoteError, marshal
from ombm.transport import wire
from rpc_helpers import Children, expect, join, pattern, serve_started, service_name

pytestmark = pytest.mark.processes


@pytest.fixture
def counter():
    """A fresh Counter service served by a child process."""
    name = service_name("lane")
    with Children() as children:
        p, conn = children.spawn(serve_started, [(name, "counter")])
        expect(conn, "constructed")
        expect(conn, "ready")
        yield name, p, conn


def _stop(p, conn) -> list:
    conn.send("stop")
    stats = expect(conn, "result")["stats"]
    assert join(p) == 0
    return stats


def _next_id(cli) -> int:
    """The client's next call id, with the client's timer kept away from its reply signals: the
    frames the raw tests write are answered into its reply channel and read here (a busy machine
    may have made a call retransmit, and the timer then polls the client's FIFO)."""
    cli._timer.remove(cli)
    cli.statistics()  # takes the protocol's state back from the lane
    return cli._protocol._next_id


def _resend(cli, call_id: int, method: str, *args, ack: int | None = None) -> None:
    """Write a CALL frame into the client's request channel as the client's lane frames it."""
    message = marshal.encode_call(method, args, {})
    cli._request.send(wire.encode(wire.Kind.CALL, cli._protocol.connection_id, call_id, message,
                                  ack=call_id if ack is None else ack))


def _reply_to(cli, call_id: int, timeout: float = 10.0):
    """The next frame the server writes into the client's reply channel for ``call_id``, or None
    (late duplicate replies to earlier calls, which a retransmission may have caused, skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        signal = cli._receiver.pop_wait(left)
        if signal is None:
            return None
        try:
            frame = wire.decode(cli._reply.slot_view_at(signal[1]))
        except ValueError:  # overwritten meanwhile
            continue
        if frame.message_id == call_id:
            return frame
    return None


def test_a_retransmitted_call_gets_its_cached_reply_and_runs_once(counter):
    name, p, conn = counter
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        assert [cli.increment() for _ in range(3)] == [1, 2, 3]  # served on the lane
        last = _next_id(cli) - 1
        _resend(cli, last, "increment")  # the reply was lost, say: the client sends the call again
        frame = _reply_to(cli, last)
        assert frame is not None and frame.kind == wire.Kind.REPLY
        assert marshal.decode_reply(frame.payload) == 3  # the cached reply, not a fourth run
        _resend(cli, last - 1, "increment")  # stale: the client acked it long ago
        assert _reply_to(cli, last - 1, 0.3) is None
        assert cli.increment() == 4 and cli.get() == 4  # and the lane serves again
    assert _stop(p, conn)[0]["calls"] == 5


def test_calls_that_do_not_ack_everything_before_them_go_through_the_protocol(counter):
    name, p, conn = counter
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        assert cli.increment() == 1
        first = _next_id(cli)
        cli._protocol._next_id += 2  # the client's later calls skip the two ids used here
        _resend(cli, first + 1, "increment", ack=first)  # call first+1 while first is outstanding
        later = _reply_to(cli, first + 1)
        _resend(cli, first, "increment", ack=first)  # then first: older than one delivered
        earlier = _reply_to(cli, first)
        assert (marshal.decode_reply(later.payload), marshal.decode_reply(earlier.payload)) == (2, 3)
        _resend(cli, first, "increment", ack=first)  # a duplicate is answered from the cache
        assert marshal.decode_reply(_reply_to(cli, first).payload) == 3
        assert [cli.increment() for _ in range(3)] == [4, 5, 6]
    assert _stop(p, conn)[0]["calls"] == 6


def test_a_result_of_several_frames_is_split_by_the_protocol_and_runs_once(counter):
    name, p, conn = counter
    with ombm.rpc.connect(name, timeout=30.0, slot_size=4096) as cli:
        assert cli.increment() == 1
        assert cli.blob(50_000) == pattern(50_000)  # run by the lane, sent in 13 frames
        assert cli.increment() == 3
        assert cli.blob(10) == pattern(10)
        assert cli.get() == 4
    _stop(p, conn)


def test_errors_raised_in_the_lane_reach_the_caller(counter):
    name, p, conn = counter
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        with pytest.raises(RemoteError) as info:
            cli.bump("not a number")  # TypeError inside the method
        assert info.value.type_name == "TypeError" and "bump" in info.value.traceback
        with pytest.raises(RemoteError, match="AttributeError"):
            cli.no_such_method()
        with pytest.raises(RemoteError, match="exceeds what the client takes"):
            cli.blob(10_000_000)
        assert cli.increment() == 2  # blob ran once before its result was refused
    stats = _stop(p, conn)[0]
    assert (stats["calls"], stats["errors"]) == (4, 3)


def test_mixed_calls_from_threads_execute_exactly_once(counter):
    name, p, conn = counter
    n, threads = 200, 4
    results: list = []
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        def work(k: int) -> None:
            mine = []
            for i in range(n):
                if (i + k) % 5 == 0:
                    mine.append(cli.call_async("increment").result(30.0))
                elif (i + k) % 7 == 0:
                    cli.oneway("bump")
                else:
                    mine.append(cli.increment())
            results.extend(mine)

        workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not any(w.is_alive() for w in workers)
        oneways = sum(1 for k in range(threads) for i in range(n) if (i + k) % 5 and (i + k) % 7 == 0)
        assert len(results) == len(set(results)) == threads * n - oneways  # no increment ran twice
        total = threads * n
        value, deadline = cli.get(), time.monotonic() + 30.0
        while value < total and time.monotonic() < deadline:  # one-way calls are retransmitted until acked
            time.sleep(0.01)
            value = cli.get()
        assert value == total
    _stop(p, conn)


def test_keyboard_interrupt_in_a_method_ends_the_serving_loop_as_sigint_does(counter):
    name, p, conn = counter
    with ombm.rpc.connect(name, timeout=3.0) as cli:
        assert cli.increment() == 1
        with pytest.raises(ombm.rpc.CallTimeout):
            cli.stop_now()  # delivered, never answered: the loop stopped
        with pytest.raises(ombm.rpc.CallTimeout):
            cli.increment()
    assert _stop(p, conn)[0]["calls"] == 2  # and stop() still releases everything


class _Sets:
    def union(self, a, b):
        return a | b

    def as_set(self, items):
        return set(items)


def test_pickled_values_travel_both_lanes_only_when_allowed():
    name = service_name("pickle")
    with ombm.rpc.Server(name, _Sets(), allow_pickle=True).start():
        with ombm.rpc.connect(name, timeout=30.0, allow_pickle=True) as cli:
            assert cli.union({1}, {2}) == {1, 2}  # pickled out and back, both ends on their lane
        with ombm.rpc.connect(name, timeout=30.0) as plain:
            with pytest.raises(TypeError):
                plain.union({1}, {2})  # refused at the caller, nothing sent
            with pytest.raises(marshal.UnmarshalError, match="allow_pickle"):
                plain.as_set([1, 2])  # the server pickles the result; this client refuses it
            assert plain.union(1, 2) == 3
    name = service_name("nopickle")
    with ombm.rpc.Server(name, _Sets()).start():
        with ombm.rpc.connect(name, timeout=30.0, allow_pickle=True) as cli:
            with pytest.raises(RemoteError, match="allow_pickle"):
                cli.union({1}, {2})  # the server refuses to unpickle


def test_taking_the_state_back_mid_call_loses_and_repeats_nothing(counter):
    name, p, conn = counter
    n = 1500
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        results, errors = [], []
        done = threading.Event()

        def caller() -> None:
            try:
                results.extend(cli.increment() for _ in range(n))
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        def meddler() -> None:  # every statistics() and ordinary call reclaims the lent state
            while not done.is_set():
                cli.statistics()
                cli.call_async("get").result(30.0)

        threads = [threading.Thread(target=caller, daemon=True), threading.Thread(target=meddler, daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and not any(t.is_alive() for t in threads)
        assert sorted(results) == list(range(1, n + 1))  # each increment ran once, none lost
        assert cli.get() == n
        assert cli.statistics().in_flight == 0
    _stop(p, conn)
