"""The retransmission timer's ticks (rpc/timer.py, paper §4): a kick wakes it only when it idles.

A client making one quick call at a time kicks the timer at nearly every call (its call is the
only one outstanding, and done before the next tick). Waking the timer's thread at each kick made
that thread take the GIL from the caller at every call; between busy ticks a kick must only set
the flag, and only a kick while the timer idles (its 50 ms tick) wakes it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ombm.rpc import timer as timer_module

_PATIENCE_S = 30.0  # how long a test waits for the timer's thread to get somewhere (never hit)


class _Client:
    """A client the timer reviews: counts its ticks, says whether calls are outstanding."""

    def __init__(self) -> None:
        self.outstanding = True
        self.ticks = 0

    def _tick(self, now: float) -> bool:
        self.ticks += 1
        return self.outstanding


class _CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"the timer never {what}"
        time.sleep(0.001)


def test_kicks_between_busy_ticks_set_the_flag_and_a_kick_while_idle_wakes_the_timer() -> None:
    timer = timer_module.RetransmissionTimer()
    wake = _CountingEvent()
    timer._wake = wake
    client = _Client()
    timer.add(client)
    try:
        _until(lambda: client.ticks >= 2, "ticked")
        for _ in range(1000):  # calls outstanding at every tick: the timer never idles meanwhile
            timer.busy = False
            timer.kick()
            assert timer.busy
        assert wake.sets == 0
        client.outstanding = False  # no more calls: after QUIET_TICKS busy ticks it idles
        _until(lambda: timer._idling, "idled")
        ticks = client.ticks
        timer.kick()
        assert wake.sets == 1
        _until(lambda: client.ticks > ticks, "ticked after the kick")
    finally:
        timer.shutdown(_PATIENCE_S)
    assert timer._thread is None or not timer._thread.is_alive()

