"""The asynchronous retransmission timer: one thread per process (paper §4).

"Lost or dropped messages are detected and handled by an asynchronous timer
process. The timer process simply reviews the set of outstanding calls
periodically and requests retransmissions": the call path never touches it
beyond :meth:`RetransmissionTimer.kick`, which sets a flag. It ticks every
millisecond while some client had calls outstanding in one of the last
``QUIET_TICKS`` ticks and every 50 ms otherwise, and exits when no client is
registered (it is owned by this module and joined by :func:`shutdown`). A kick
while it idles wakes it: a call that went outstanding must not wait out the
idle tick for its first retransmission. A kick between busy ticks only sets the
flag: a client making one quick call at a time (one ``call_async``, an asyncio
task) would otherwise wake this thread, and take the GIL from the caller, at
every call (issue 13).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Protocol

BUSY_TICK_S = 0.001
IDLE_TICK_S = 0.05
QUIET_TICKS = 50  # busy ticks without a call outstanding before the timer idles (50 ms)


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
        self._idling = False  # in an idle tick: a kick must wake it

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
            if self._idling:
                self._wake.set()

    def _run(self) -> None:
        wake, stop = self._wake, self._stop
        quiet = 0  # busy ticks in a row that found no call outstanding
        while True:
            # Dekker's handshake with kick() (the GIL orders both): say "idling", then look at
            # busy; a kick sets busy, then looks at _idling. One sees the other: a kick that
            # missed _idling set busy before this look, and the tick stays short.
            self._idling = quiet >= QUIET_TICKS
            if self._idling and self.busy:
                self._idling, quiet = False, 0
            wake.wait(IDLE_TICK_S if self._idling else BUSY_TICK_S)
            self._idling = False
            if stop.is_set():
                return
            wake.clear()
            self.busy = False
            if not self._tick_all():
                return
            quiet = 0 if self.busy else quiet + 1

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
