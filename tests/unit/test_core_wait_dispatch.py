"""sig_wait's native dispatch (``_native.fifo_wait_dispatch``, issue 13): the wait, the take and the
handlers in one call keep the semantics of the Python dispatch (``Receiver.dispatch_pending``)."""

from __future__ import annotations

import signal
import threading

import pytest

import ombm
from ombm import _layout, _native


def delta(before: dict, key: str) -> int:
    return ombm.stats()[key] - before[key]


@pytest.fixture
def rx():
    receiver = ombm.Receiver(capacity=256)
    yield receiver
    receiver.close()


@pytest.fixture
def region():
    with ombm.create_segment(256) as seg:
        yield seg.bind()


def test_each_handler_covering_the_offset_runs_in_order_with_its_address_and_is_counted(rx, region):
    got = []
    rx.add_handler(region.address, 128, lambda a: got.append(("wide", a - region.address)))
    rx.add_handler(region.address + 64, 64, lambda a: got.append(("narrow", a - region.address)))
    rx.add_handler(region.address + 128, 64, lambda a: got.append(("other", a - region.address)))
    before = ombm.stats()
    region.write(64, b"x" * 64)
    assert rx.wait(5.0) > 0.0
    assert got == [("wide", 64), ("narrow", 64)]
    assert delta(before, "signals_delivered") == 2


def test_a_handler_that_disables_a_later_one_stops_it_for_the_same_signal(rx, region):
    got = []
    later: list[ombm.SignalHandle] = []
    rx.add_handler(region.address, 64, lambda a: (got.append("first"), later[0].disable()))
    later.append(rx.add_handler(region.address, 64, lambda a: got.append("second")))
    region.write(0, b"x" * 64)
    assert rx.wait(5.0) > 0.0
    assert got == ["first"]


def test_a_handler_added_by_a_handler_runs_from_the_next_signal(rx, region):
    got = []

    def first(address: int) -> None:
        got.append("first")
        if len(got) == 1:
            rx.add_handler(region.address, 64, lambda a: got.append("added"))

    rx.add_handler(region.address, 64, first)
    region.write(0, b"x" * 64)
    rx.wait(5.0)
    assert got == ["first"]
    region.write(0, b"x" * 64)
    rx.wait(5.0)
    assert got == ["first", "first", "added"]


def test_a_signal_no_handler_covers_is_counted_unhandled_and_the_wait_goes_on(rx, region):
    got = []
    handle = rx.add_handler(region.address, 64, got.append)
    before = ombm.stats()
    _native.fifo_push(rx.fifo.fifo_map, handle.region.segment.id, 200)  # an offset nobody watches here
    assert rx.wait(0.05) == 0.0  # it waited on to its timeout
    assert got == []
    assert delta(before, "signals_unhandled") == 1
    assert delta(before, "signals_delivered") == 0


def test_a_nudge_ends_the_wait_early_without_counting_unhandled(rx, region):
    rx.add_handler(region.address, 64, lambda a: None)
    before = ombm.stats()
    _native.fifo_push(rx.fifo.fifo_map, _layout.NUDGE_SEGMENT, 0)
    assert rx.wait(5.0) > 4.0
    assert delta(before, "signals_unhandled") == 0


def test_a_handler_exception_propagates_with_its_signal_taken(rx, region):
    got = []

    def handler(address: int) -> None:
        got.append(address - region.address)
        if len(got) == 1:
            raise KeyError("boom")

    rx.add_handler(region.address, 128, handler)
    region.write(0, b"x" * 128)  # two signals
    with pytest.raises(KeyError):
        rx.wait(5.0)
    assert rx.wait(5.0) > 0.0  # the second signal is still there
    assert got == [0, 64]
    assert rx.dispatch_pending() == 0


def test_the_native_dispatch_rejects_a_table_that_is_not_a_dict(rx):
    with pytest.raises(TypeError):
        _native.fifo_wait_dispatch(rx.fifo.fifo_map, [], 0, 0.0)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="POSIX signals reach the main thread")
def test_a_signal_sent_by_a_posix_signal_handler_during_the_sleep_ends_the_wait_with_its_handler(rx, region):
    """The sleep is interrupted (EINTR), Python runs the POSIX handler, which sends an ombm signal:
    the wait must see it ready and run its handler, not report a timeout (it once did: the check
    after an interruption or a sleep slice returned WAIT_TIMEOUT although the FIFO was ready)."""
    got = []
    rx.add_handler(region.address, 64, got.append)
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: region.write(0, b"x" * 64))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # well past the spin: the receiver sleeps
        left = rx.wait(30.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert got == [region.address]
    assert left > 1.0


# -- the native wait (``_native.SigWait``): its common case, and the paths it leaves to Python


def test_with_learn_ns_a_handled_signal_returns_only_the_time_left(rx, region):
    got = []
    handle = rx.add_handler(region.address, 64, got.append)
    fifo, table, seg_id = rx.fifo.fifo_map, rx._table, handle.region.segment.id
    _native.fifo_push(fifo, seg_id, 0)
    left = _native.fifo_wait_dispatch(fifo, table, 0, 5.0, True, 10**9)
    assert type(left) is float and 4.0 < left <= 5.0
    _native.fifo_push(fifo, seg_id, 0)
    assert _native.fifo_wait_dispatch(fifo, table, 0, 5.0, True, None)[:2] == (1, seg_id)  # None: learn
    _native.fifo_push(fifo, seg_id, 200)  # no handler there: the caller must hear of it
    assert _native.fifo_wait_dispatch(fifo, table, 0, 5.0, True, 10**9)[:2] == (0, seg_id)
    assert got == [region.address, region.address]


def test_the_time_left_counts_from_the_whole_timeout_beyond_the_waits_hour(rx, region):
    rx.add_handler(region.address, 64, lambda a: None)
    region.write(0, b"x" * 64)
    assert 1e6 - 1.0 < rx.wait(1e6) <= 1e6
    region.write(0, b"x" * 64)
    assert rx.wait(None) > 1e8  # None: "forever", through the Python path


@pytest.mark.parametrize("call", [lambda rx: rx.wait(5), lambda rx: rx.wait(timeout=5.0)])
def test_timeouts_of_other_shapes_take_the_python_path_with_its_checks(rx, region, call):
    got = []
    rx.add_handler(region.address, 64, got.append)
    region.write(0, b"x" * 64)
    assert call(rx) > 0.0
    assert got == [region.address]


@pytest.mark.parametrize("bad, error", [(-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError)])
def test_a_bad_timeout_raises_and_takes_nothing(rx, region, bad, error):
    rx.add_handler(region.address, 64, lambda a: None)
    region.write(0, b"x" * 64)
    with pytest.raises(error):
        rx.wait(bad)
    assert rx.dispatch_pending() == 1


def test_a_closed_receiver_raises_closed_error():
    receiver = ombm.Receiver()
    receiver.close()
    with pytest.raises(ombm.ClosedError):
        receiver.wait(0.01)


def test_a_wait_that_outlasts_the_spin_is_learnt_from(rx, region):
    previous = ombm.settings()
    ombm.configure(wait="adaptive", spin_us=20)
    try:
        rx.add_handler(region.address, 64, lambda a: None)
        timer = threading.Timer(0.05, region.write, (0, b"x" * 64))
        timer.start()
        try:
            assert 0.0 < rx.wait(30.0) < 30.0
        finally:
            timer.join(5.0)
        assert rx._misses == 1  # the native call handed the wait's figure to the policy
        region.write(0, b"x" * 64)
        rx.wait(30.0)  # ready at once: within the spin, so the misses reset
        assert rx._misses == 0
    finally:
        ombm.configure(wait=previous.wait, spin_us=previous.spin_us)


def test_a_change_of_settings_reaches_the_next_wait(rx, region):
    rx.add_handler(region.address, 64, lambda a: None)
    previous = ombm.settings()
    ombm.configure(wait="sleep")
    try:
        region.write(0, b"x" * 64)
        assert rx.wait(5.0) > 0.0
        assert rx._spin_ns == 0 and rx._may_sleep
    finally:
        ombm.configure(wait=previous.wait)
    region.write(0, b"x" * 64)
    assert rx.wait(5.0) > 0.0
    assert rx._spin_ns > 0


def test_the_native_wait_does_not_keep_its_receiver_alive():
    import gc
    import weakref

    receiver = ombm.Receiver()
    wait, ref = receiver.wait, weakref.ref(receiver)
    receiver.close()
    del receiver
    gc.collect()
    assert ref() is None
    with pytest.raises(ReferenceError):
        wait(0.01)
