"""Address-valued signals in one process (ombm.core.signals): handlers, signal-on-write, sig_wait, Dispatcher."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

import ombm
from ombm import _layout


def drain(receiver: ombm.Receiver) -> None:
    while receiver.dispatch_pending():
        pass


@pytest.fixture
def rx():
    receiver = ombm.Receiver(capacity=256)
    yield receiver
    receiver.close()


def delta(before: dict, key: str) -> int:
    return ombm.stats()[key] - before[key]


# ---- signal-on-write (paper §3.3): one signal per unit whose last byte is written
@pytest.mark.parametrize(
    "size, unit, offset, length, expected",
    [
        (256, 64, 0, 64, [0]),  # exactly one unit
        (256, 64, 0, 63, []),  # stops one byte short of the unit end
        (256, 64, 63, 1, [0]),  # only the last byte: still completes the unit
        (256, 64, 10, 200, [0, 64, 128]),  # ends at 209: unit 192 not completed
        (256, 64, 0, 256, [0, 64, 128, 192]),
        (200, 64, 195, 5, [192]),  # the short last unit ends at size-1
        (200, 64, 128, 71, [128]),  # 128..198 completes unit 128 (ends at 191), not unit 192 (ends at 199)
        (100, 128, 0, 100, [0]),  # one unit larger than the segment
        (4096 + 10, 4096, 4095, 2, [0]),
    ],
)
def test_write_signals_each_completed_unit_at_its_start(rx, size, unit, offset, length, expected):
    with ombm.create_segment(size, unit=unit) as seg:
        region = seg.bind()
        got = []
        rx.add_handler(region.address, size, lambda a: got.append(a - region.address))
        region.write(offset, b"\x01" * length)
        drain(rx)
        assert got == expected


def test_each_binding_gets_the_address_in_its_own_mapping(rx):
    with ombm.create_segment(1024) as seg:
        a, b = seg.bind(), seg.bind()
        got = []
        rx.add_handler(a.address, 1024, lambda addr: got.append(("a", addr)))
        rx.add_handler(b.address, 1024, lambda addr: got.append(("b", addr)))
        a.write(128, b"m" * 64)
        ombm.signal(b.address + 5)
        drain(rx)
        assert sorted(got) == sorted(
            [("a", a.address + 128), ("b", b.address + 128), ("a", a.address + 5), ("b", b.address + 5)]
        )


def test_explicit_signal_carries_the_address_itself(rx):
    with ombm.create_segment(1000) as seg:
        region = seg.bind()
        got = []
        rx.add_handler(region.address, 1000, got.append)
        for off in (0, 1, 63, 999):
            ombm.signal(region.address + off)
        drain(rx)
        assert got == [region.address + off for off in (0, 1, 63, 999)]


def test_only_handlers_covering_the_offset_run(rx):
    with ombm.create_segment(1024) as seg:
        region = seg.bind()
        got = []
        rx.add_handler(region.address + 256, 256, lambda a: got.append(a - region.address))
        before = ombm.stats()
        region.write(0, b"z" * 1024)
        drain(rx)
        assert got == [256, 320, 384, 448]
        assert delta(before, "signals_sent") == 4  # senders only push to receivers that watch


def test_conventional_and_no_signal_on_write_segments_raise_nothing_on_write(rx):
    for kwargs in ({"mode": ombm.CONVENTIONAL}, {"signal_on_write": False}):
        with ombm.create_segment(256, **kwargs) as seg:
            region = seg.bind()
            got = []
            rx.add_handler(region.address, 256, got.append)
            region.write(0, b"q" * 256)
            drain(rx)
            assert got == []
            ombm.signal(region.address + 64)
            drain(rx)
            assert got == [region.address + 64]


def test_stores_through_the_buffer_are_not_the_message_write_path(rx):
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        got = []
        rx.add_handler(region.address, 256, got.append)
        region.buffer[0:64] = b"b" * 64  # plain memory: no signal-on-write
        drain(rx)
        assert got == []
        ombm.signal(region.address)  # the writer signals explicitly (paper: Signal(vaddr))
        drain(rx)
        assert got == [region.address]


def test_disabled_handler_gets_nothing(rx):
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        got = []
        handle = rx.add_handler(region.address, 256, got.append)
        handle.disable()
        handle.disable()
        region.write(0, b"q" * 64)
        drain(rx)
        assert got == []
        assert not any(e.kind == _layout.KIND_RECEIVER for e in seg.directory.entries())


def test_unbind_disables_the_regions_handlers(rx):
    with ombm.create_segment(256) as seg:
        region, other = seg.bind(), seg.bind()
        got = []
        handle = rx.add_handler(region.address, 256, got.append)
        region.unbind()
        assert not handle.enabled
        other.write(0, b"q" * 64)
        drain(rx)
        assert got == []


def test_one_receiver_with_two_handlers_runs_both_from_one_fifo_entry(rx):
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        got = []
        rx.add_handler(region.address, 128, lambda a: got.append("first"))
        rx.add_handler(region.address + 64, 64, lambda a: got.append("second"))
        before = ombm.stats()
        region.write(64, b"q" * 64)
        drain(rx)
        assert got == ["first", "second"]
        assert delta(before, "signals_sent") == 1
        assert delta(before, "signals_delivered") == 2


def test_full_fifo_drops_and_counts_without_blocking():
    receiver = ombm.Receiver(capacity=4)
    try:
        with ombm.create_segment(640) as seg:
            region = seg.bind()
            got = []
            receiver.add_handler(region.address, 640, lambda a: got.append(a - region.address))
            before = ombm.stats()
            region.write(0, b"f" * 640)  # 10 units into a 4-entry FIFO
            assert delta(before, "signals_dropped") == 6
            assert delta(before, "signals_sent") == 4
            drain(receiver)
            assert got == [0, 64, 128, 192]
    finally:
        receiver.close()


# ---- sig_wait
def test_sig_wait_returns_time_left_once_a_handler_ran(own_receiver):
    with ombm.create_segment(64) as seg:
        region = seg.bind()
        got = []
        ombm.signal_handler(region.address, 64, got.append)
        region.write(0, b"x" * 64)
        left = ombm.sig_wait(5.0)
        assert got == [region.address]
        assert 0.0 < left <= 5.0


def test_sig_wait_times_out_with_zero(own_receiver):
    with ombm.create_segment(64) as seg:
        region = seg.bind()
        ombm.signal_handler(region.address, 64, lambda a: None)
        start = time.monotonic()
        assert ombm.sig_wait(0.2) == 0.0
        assert time.monotonic() - start >= 0.15
        assert ombm.sig_wait(0) == 0.0


def test_handler_exception_reaches_the_caller_and_later_signals_still_arrive(own_receiver):
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        got = []

        def handler(address):
            got.append(address - region.address)
            if len(got) == 1:
                raise KeyError("boom")

        ombm.signal_handler(region.address, 256, handler)
        region.write(0, b"x" * 256)
        with pytest.raises(KeyError):
            ombm.sig_wait(5.0)
        while ombm.sig_wait(0.2) > 0.0:
            pass
        assert got == [0, 64, 128, 192]


@pytest.mark.parametrize("wait", ["adaptive", "spin", "sleep"])
def test_sig_wait_is_woken_by_a_sender_thread_in_every_wait_mode(own_receiver, wait):
    ombm.configure(wait=wait)
    with ombm.create_segment(64 * 50) as seg:
        region = seg.bind()
        got = []
        ombm.signal_handler(region.address, region.size, lambda a: got.append(a - region.address))

        def send():
            for i in range(50):
                time.sleep(0.001 * (i % 3))
                region.write(64 * i, b"s" * 64)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            deadline = time.monotonic() + 30
            while len(got) < 50 and time.monotonic() < deadline:
                ombm.sig_wait(1.0)
        finally:
            sender.join()
        assert got == [64 * i for i in range(50)]


def test_each_thread_has_its_own_receiver_and_all_watchers_get_the_signal():
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        ready = threading.Barrier(4)
        results: dict[int, list] = {}

        def watch(i):
            got = results.setdefault(i, [])
            ombm.signal_handler(region.address, 256, lambda a: got.append(a - region.address))
            ready.wait()
            try:
                deadline = time.monotonic() + 30
                while len(got) < 4 and time.monotonic() < deadline:
                    ombm.sig_wait(1.0)
            finally:
                ombm.core.signals.current_receiver().close()

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        ready.wait()
        region.write(0, b"m" * 256)
        for t in threads:
            t.join(60)
        assert results == {i: [0, 64, 128, 192] for i in range(3)}


def test_configured_fifo_capacity_applies_to_receivers_created_afterwards():
    ombm.configure(fifo_capacity=8)
    receiver = ombm.Receiver()
    try:
        assert receiver.fifo.capacity == 8
    finally:
        receiver.close()


def test_kernel_signal_path_in_process():
    ombm.configure(signal_path="kernel")
    receiver = ombm.Receiver()
    try:
        assert receiver.kernel
        with ombm.create_segment(256) as seg:
            region = seg.bind()
            got = []
            receiver.add_handler(region.address, 256, lambda a: got.append(a - region.address))
            before = ombm.stats()
            region.write(0, b"k" * 256)
            while receiver.wait(0.5) > 0.0:
                pass
            assert got == [0, 64, 128, 192]
            assert delta(before, "kernel_signals") == 4
    finally:
        receiver.close()


# ---- Dispatcher
def test_dispatcher_runs_handlers_in_its_own_thread_and_close_joins_it():
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        seen = []
        done = threading.Event()

        def handler(address):
            seen.append((threading.get_ident(), address - region.address))
            if len(seen) == 4:
                done.set()

        dispatcher = ombm.Dispatcher()
        fifo_path = dispatcher.receiver.fifo.path
        try:
            dispatcher.signal_handler(region.address, 256, handler)
            region.write(0, b"d" * 256)
            assert done.wait(30)
        finally:
            dispatcher.close()
        dispatcher.close()
        thread = dispatcher._thread
        assert not thread.is_alive()
        assert [off for _, off in seen] == [0, 64, 128, 192]
        assert {ident for ident, _ in seen} == {thread.ident} != {threading.get_ident()}
        assert dispatcher.receiver.closed
        assert not os.path.exists(fifo_path)


def test_dispatcher_hands_handler_errors_to_on_error_and_goes_on():
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        errors, got = [], []
        done = threading.Event()

        def handler(address):
            got.append(address - region.address)
            if len(got) == 4:
                done.set()
            if len(got) % 2:
                raise ValueError(len(got))

        with ombm.Dispatcher(on_error=errors.append) as dispatcher:
            dispatcher.signal_handler(region.address, 256, handler)
            before = ombm.stats()
            region.write(0, b"d" * 256)
            assert done.wait(30)
        assert got == [0, 64, 128, 192]
        assert [e.args for e in errors] == [(1,), (3,)]
        assert delta(before, "handler_errors") == 2


@pytest.mark.parametrize("raises", [RuntimeError("on_error is broken too"), SystemExit(3)])
def test_a_dispatcher_whose_on_error_raises_reports_it_and_keeps_serving(monkeypatch, raises):
    """Red-team case: on main the dispatcher's thread died silently when on_error raised."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        got = []
        done = threading.Event()

        def handler(address):
            got.append(address - region.address)
            if len(got) == 4:
                done.set()
            if len(got) == 1:
                raise ValueError("the handler failed")

        def on_error(exc):
            raise raises

        with ombm.Dispatcher(on_error=on_error) as dispatcher:
            dispatcher.signal_handler(region.address, 256, handler)
            region.write(0, b"d" * 64)           # the handler raises, then on_error raises
            deadline = time.monotonic() + 30
            while not reported and time.monotonic() < deadline:
                time.sleep(0.01)
            assert dispatcher._thread.is_alive()  # still serving
            region.write(64, b"d" * 192)
            assert done.wait(30)
        assert got == [0, 64, 128, 192]
    [args] = reported
    assert args.exc_value is raises and "on_error" in args.err_msg
    assert isinstance(args.exc_value.__context__, ValueError)  # the handler's error goes with it


def test_stats_has_the_documented_counters():
    s = ombm.stats()
    for key in ("signals_sent", "signals_delivered", "signals_dropped"):
        assert isinstance(s[key], int)
