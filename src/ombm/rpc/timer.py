"""The asynchronous retransmission timer: one thread per process (paper §4).

"Lost or dropped messages are detected and handled by an asynchronous timer
process. The timer process simply reviews the set of outstanding calls
periodically and requests retransmissions": the call path never touches it
beyond :meth:`RetransmissionTimer.kick`, which sets a flag. It ticks every
millisecond while some client had calls outstanding in the last tick and every
50 ms otherwise (a kick while it idles wakes it: a call that went outstanding
must not wait out the idle tick for its first retransmission), and exits when
no client is registered (it is owned by this module and joined by
:func:`shutdown`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Protocol

BUSY_TICK_S = 0.001
IDLE_TICK_S = 0.05


class Ticking(Protocol):
    """A client the timer reviews (ombm.rpc.Client)."""

    def _tick(self, now: float) -> bool:
        """Retransmit what is due at ``now``; True while calls are outstanding."""
        ...


class RetransmissionTimer:
    def __init__(self) -> None:
        self._clients: weakref.WeakSet[Ticking] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by kick() (and shutdown()) to end an idle tick early
        self.busy = False

    def add(self, client: Ticking) -> None:
        with self._lock:
            self._clients.add(client)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="ombm-rpc-timer", daemon=True)
                self._thread.start()

    def remove(self, client: Ticking) -> None:
        with self._lock:
            self._clients.discard(client)

    def kick(self) -> None:
        """A call went outstanding: tick at the busy rate from now on (waking the timer if it idles)."""
        if not self.busy:
            self.busy = True
            self._wake.set()

    def _run(self) -> None:
        wake, stop = self._wake, self._stop
        while True:
            wake.wait(BUSY_TICK_S if self.busy else IDLE_TICK_S)
            if stop.is_set():
                return
            wake.clear()
            self.busy = False
            if not self._tick_all():
                return

    def _tick_all(self) -> bool:
        """Tick every client once; False when none is left (the thread then ends). The clients are
        held only while they tick (locals of this call): one its user dropped is collected between
        ticks, not kept for the whole next wait."""
        with self._lock:
            clients = list(self._clients)
            if not clients:
                self._thread = None
                return False
        now = time.monotonic()
        for client in clients:
            if client._tick(now):
                self.busy = True
        return True

    def shutdown(self, timeout: float = 2.0) -> None:
        thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


TIMER = RetransmissionTimer()


def _after_fork_in_child() -> None:
    global TIMER
    TIMER = RetransmissionTimer()


os.register_at_fork(after_in_child=_after_fork_in_child)


def timer() -> RetransmissionTimer:
    return TIMER
