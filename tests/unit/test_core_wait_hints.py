"""The wait's hints in a receiver's FIFO (issue 13): the receiver's state, the last producer's CPU.

A receiver publishes whether it is running, spinning or asleep (``FIFO_STATE``); a push notes the
CPU it came from (``FIFO_PEER_CPU``). Both are hints any peer can write: forged values change how
a waiter spins, never whether it gets its signal.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import ombm
from ombm import _layout as L
from ombm import _native


@pytest.fixture
def rx():
    receiver = ombm.Receiver(capacity=64)
    yield receiver
    receiver.close()


@pytest.fixture
def sleep_mode():
    previous = ombm.settings().wait
    ombm.configure(wait="sleep")
    yield
    ombm.configure(wait=previous)


@pytest.fixture
def one_cpu():
    """Pin this thread to one CPU it may run on (restored afterwards); that CPU."""
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    os.sched_setaffinity(0, {cpu})
    yield cpu
    os.sched_setaffinity(0, allowed)


def state(receiver: ombm.Receiver) -> int:
    return _native.load32(receiver.fifo.fifo_map.address + L.FIFO_STATE) & 0xFF


def peer_cpu(receiver: ombm.Receiver) -> int:
    return _native.load32(receiver.fifo.fifo_map.address + L.FIFO_PEER_CPU)


def test_a_receiver_publishes_that_it_sleeps_and_that_it_runs_again(rx, sleep_mode):
    got: list[tuple[int, int] | None] = []
    waiter = threading.Thread(target=lambda: got.append(rx.pop_wait(30.0)))
    waiter.start()
    try:
        deadline = time.monotonic() + 30
        while state(rx) != L.RECEIVER_ASLEEP and time.monotonic() < deadline:
            time.sleep(0.001)
        assert state(rx) == L.RECEIVER_ASLEEP
    finally:
        _native.fanout((rx.fifo.fifo_map,), 7, 64)
        waiter.join(30)
    assert got == [(7, 64)]
    assert state(rx) == L.RECEIVER_RUNNING


def test_a_push_notes_the_cpu_it_came_from(rx, one_cpu):
    _native.fanout((rx.fifo.fifo_map,), 7, 0)
    assert peer_cpu(rx) == one_cpu + 1
    assert rx.pop_wait(0.0) == (7, 0)


@pytest.mark.parametrize("wait", ["adaptive", "spin", "sleep"])
@pytest.mark.parametrize("forged", [0xFFFFFFFF, "mine", 0])
def test_forged_hints_never_cost_a_signal(rx, one_cpu, wait, forged):
    """A peer that writes the hints (claims to run on this CPU, or garbage) changes how the
    receiver spins, never what it receives."""
    previous = ombm.settings().wait
    ombm.configure(wait=wait)
    base = rx.fifo.fifo_map.address
    value = one_cpu + 1 if forged == "mine" else forged
    try:
        got = []

        def send() -> None:
            for i in range(20):
                time.sleep(0.0005 * (i % 3))
                _native.store32(base + L.FIFO_STATE, 0xFFFFFFFF)
                _native.fanout((rx.fifo.fifo_map,), 7, i)
                _native.store32(base + L.FIFO_PEER_CPU, value)  # after the push: what the wait reads

        sender = threading.Thread(target=send)
        sender.start()
        try:
            deadline = time.monotonic() + 30
            while len(got) < 20 and time.monotonic() < deadline:
                item = rx.pop_wait(1.0)
                if item is not None:
                    got.append(item[1])
        finally:
            sender.join(30)
        assert got == list(range(20))
    finally:
        ombm.configure(wait=previous)


def test_a_wait_that_does_not_know_the_load_still_gets_its_signals(rx, one_cpu):
    """``configure(load_aware=False)``: the spin by the budget alone (as before issue 13)."""
    before = ombm.settings()
    ombm.configure(load_aware=False)
    try:
        assert ombm.settings().load_aware is False
        sender = threading.Timer(0.01, lambda: _native.fanout((rx.fifo.fifo_map,), 7, 3))
        sender.start()
        try:
            assert rx.pop_wait(30.0) == (7, 3)
        finally:
            sender.join(30)
    finally:
        ombm.configure(load_aware=before.load_aware)
    assert ombm.settings() == before
