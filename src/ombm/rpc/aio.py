"""An asyncio RPC client: ``await client.add(1, 2)`` without a thread hop.

One pump task per client awaits the client's reply signals in the event loop
(:func:`ombm.aio.wait`, doorbell socket, no thread) while calls are
outstanding; at each wake-up it takes every reply there is (the client's native
drain, issue 13: many calls outstanding share a wake-up) and completes the
futures of the calls they end, and of those whose deadline passed. While it
runs, the client's retransmission timer leaves the replies to it. A call whose
message fits one frame takes the client's pipelined lane (``_native.PipeLane``:
marshalled, written and its reply taken natively; the lane tells the pump which
calls are done), any other the protocol's Python path.
Connecting (a few milliseconds at most) runs in the default executor, and so
does reconnecting once the server went (docs/rpc.md, "Lifecycle"), after the
pump has left the gone session's receiver.

Cancelling a task that awaits a call raises ``CancelledError`` in it at once and forgets the
call: the server may still run it (it may have run already), its reply is dropped, and the
client goes on working. A one-way call cannot be cancelled: it is sent when made.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ombm import aio as _aio
from ombm.errors import CallTimeout
from ombm.rpc.client import Client, _Pending, connect
from ombm.rpc.slots import DEFAULT_SLOT_SIZE, DEFAULT_SLOTS
from ombm.transport.rpc_protocol import DEFAULT_MAX_MESSAGE_BYTES

_LIVENESS_CHECK_S = 0.1  # how often the pump checks the server while calls are outstanding
_PUMP_WAIT_S, _PUMP_MIN_WAIT_S = 0.05, 0.0005  # the pump's longest and shortest wait for a signal


class AsyncClient:
    def __init__(self, client: Client) -> None:
        self.client = client
        # call id -> (its pending call, the future its caller awaits: True once done, False once
        # past its deadline, the call's deadline); in call order, so the first deadline is the earliest
        # (but for a changed client.timeout, which the pump then notices within _PUMP_WAIT_S)
        self._waiting: dict[int, tuple[_Pending, asyncio.Future[bool], float]] = {}
        # the ids of waiting calls found done, by whichever thread took their replies (_Pending.ready):
        # the pump completes those, not every waiting call's future at each wake-up
        self._ready: collections.deque[int] = collections.deque()
        self._pump: asyncio.Task[None] | None = None

    async def call(self, method: str, *args: object, **kwargs: object) -> Any:
        client = self.client
        if client._gone:
            await self._reconnect()
        pipe = client._pipe  # the pipelined lane (one-frame calls): told through pending.ready too
        lent = None if pipe is None else client._pipelined(pipe, method, args, kwargs, client.timeout, self._ready)
        if lent is not None:
            call_id, pending = lent._call_id, lent._pending
        else:
            call_id, pending = client._send(method, args, kwargs, False)
            pending.ready = self._ready
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting[call_id] = (pending, future, time.monotonic() + client.timeout)
        if pending.done:  # its reply taken by another thread already (before it could say so)
            self._ready.append(call_id)
        if self._pump is None or self._pump.done():
            self._pump = loop.create_task(self._run_pump())
        try:
            done = await future
        except asyncio.CancelledError:  # the caller gave up: its reply, if one comes, is dropped
            self._waiting.pop(call_id, None)
            client._give_up(call_id)
            raise
        if not done:  # its deadline passed
            if pending.gone:
                raise client._gone_error() from None
            with client._lock:
                alive = pending.done or client._server_alive()
                client._cancel(call_id)
            if not alive:
                client._mark_gone()
                raise client._gone_error() from None
            raise CallTimeout(f"no reply from {client.service!r} within the timeout") from None
        if pending.gone:
            raise client._gone_error()
        return client._pending_result(pending)

    async def oneway(self, method: str, *args: object, **kwargs: object) -> None:
        if self.client._gone:
            await self._reconnect()
        self.client.oneway(method, *args, **kwargs)

    async def _reconnect(self) -> None:
        """Reconnect the gone client in the default executor, once the pump left its receiver."""
        if self._pump is not None and not self._pump.done():
            await self._pump  # it ends within one wait once the gone session's calls ended
        await asyncio.get_running_loop().run_in_executor(None, self.client._reconnect)

    async def _run_pump(self) -> None:
        client = self.client
        client._pumped = True
        try:
            check_at = time.monotonic() + _LIVENESS_CHECK_S
            scan_at = 0.0  # when the pump next looks at every waiting call's deadline
            waiting, ready = self._waiting, self._ready
            while waiting:
                took = client._poll()  # every reply there is, in this thread (unless another thread leads)
                now = time.monotonic()
                if now >= check_at:
                    check_at = now + _LIVENESS_CHECK_S
                    with client._lock:
                        alive = client._gone or client._server_alive()  # gone: its calls are done already
                    if not alive:
                        client._mark_gone()  # every pending call is done (gone): settled below
                while ready:  # the calls done: one wake-up completes every one of them
                    entry = waiting.pop(ready.popleft(), None)
                    if entry is not None and not entry[1].done():
                        entry[1].set_result(True)
                # past its deadline: in call order the first is the earliest (but for a changed
                # client.timeout, which a look at every call notices within _PUMP_WAIT_S)
                if waiting and (now >= scan_at or next(iter(waiting.values()))[2] <= now):
                    scan_at = now + _PUMP_WAIT_S
                    for call_id, (pending, future, deadline) in list(waiting.items()):
                        if pending.done or deadline <= now:
                            del waiting[call_id]
                            if not future.done():
                                future.set_result(pending.done)
                if took:  # replies flow: let their callers run (and call again), then look again
                    await asyncio.sleep(0)
                elif waiting:  # none came: sleep until the doorbell rings
                    first = min(next(iter(waiting.values()))[2], scan_at)
                    await _aio.wait(client._receiver, min(_PUMP_WAIT_S, max(first - now, _PUMP_MIN_WAIT_S)))
        finally:
            client._pumped = False

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self.client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_async(name: str, timeout: float = 5.0, *, wait: float = 0.0, allow_pickle: bool = False,
                        slots: int = DEFAULT_SLOTS, slot_size: int = DEFAULT_SLOT_SIZE,
                        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> AsyncClient:
    """``await ombm.rpc.connect_async("calc")``: an :class:`AsyncClient` (the options of :func:`connect`)."""
    loop = asyncio.get_running_loop()
    client = await loop.run_in_executor(
        None, lambda: connect(name, timeout, wait=wait, allow_pickle=allow_pickle, slots=slots, slot_size=slot_size,
                              max_message_bytes=max_message_bytes))
    return AsyncClient(client)
