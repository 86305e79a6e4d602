"""The server's ``async def`` methods: run on one event loop, many at a time, answered when done.

A served object may mix plain methods (run in the serving thread, one at a time, as always) with
``async def`` ones. A call of an ``async def`` method is delivered by the connection's protocol as
any call; the server then starts its coroutine on the event loop (:meth:`AsyncCalls.start`) and
goes on serving: the protocol keeps the call *executing*, so a retransmission of it is a
duplicate (never run twice) and the connection's native lane stays off until it is answered. When
the coroutine ends, the loop's thread marshals its outcome, queues it and nudges the serving
thread, which alone touches the protocols: it answers the call (:meth:`AsyncCalls.take_done`).

The loop is the server's own (a thread it starts on the first such call and joins when it stops)
or the caller's (``Server(..., loop=loop)``, or :func:`ombm.rpc.serve_async`, which serves from
inside a running loop). When the server stops, the coroutines still running are cancelled; their
callers see the server go (``ServerGoneError``), as for any call in flight when a server stops.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["AsyncCalls", "Done"]

# (the connection's key, call id, one-way, reply payload, error flag): a finished coroutine
Done = tuple[object, int, bool, bytes, bool]


class AsyncCalls:
    """The coroutines one server runs, on ``loop`` (None: a loop thread of its own, made on first use).

    ``outcome(value, exc)`` marshals a coroutine's result or exception into ``(payload, error)``
    (in the loop's thread); ``nudge()`` wakes the serving thread.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop | None,
                 outcome: Callable[[object, BaseException | None, int], tuple[bytes, bool]],
                 nudge: Callable[[], None]) -> None:
        self._name = name
        self._loop = loop
        self._own_thread: threading.Thread | None = None
        self._outcome, self._nudge = outcome, nudge
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._done: collections.deque[Done] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pending(self) -> int:
        """Coroutines started and not yet answered."""
        return len(self._running)

    def has_done(self) -> bool:
        return bool(self._done)

    def start(self, key: object, call_id: int, oneway: bool, coroutine: Coroutine[Any, Any, object],
              limit: int) -> None:
        """Run ``coroutine`` (the call ``call_id`` of the connection ``key``) on the loop."""
        with self._lock:
            if self._closed:
                coroutine.close()
                raise RuntimeError("the server is stopping")
            loop = self._loop or self._start_own_loop()
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
            self._running.add(future)

        def finished(f: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._running.discard(f)
                if self._closed or f.cancelled():
                    return
            exc = f.exception()
            payload, error = self._outcome(None if exc is not None else f.result(), exc, limit)
            self._done.append((key, call_id, oneway, payload, error))
            self._nudge()

        future.add_done_callback(finished)

    def take_done(self) -> list[Done]:
        """The calls answered since the last look (the serving thread's)."""
        done = []
        while self._done:
            done.append(self._done.popleft())
        return done

    def _start_own_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:  # the coroutines cancelled by close() end here, before the loop goes
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                loop.close()

        self._own_thread = threading.Thread(target=run, name=f"ombm-rpc-{self._name}-loop", daemon=True)
        self._own_thread.start()
        ready.wait()
        self._loop = loop
        return loop

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel what still runs; stop and join the loop thread if it is the server's (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running)
        for future in running:
            future.cancel()
        thread, loop = self._own_thread, self._loop
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(timeout_s)
        self._done.clear()
