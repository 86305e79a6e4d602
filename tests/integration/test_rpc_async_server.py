"""``async def`` methods served on an event loop (issue 14, item 4): many calls at once from several
client processes, each answered exactly once; ``serve_async`` from inside a running loop; a caller's
cancelled await; a server stopped while coroutines run. Between real processes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ombm
from rpc_helpers import Children, child, expect, join, service_name

pytestmark = pytest.mark.processes


class Mixed:
    """Plain and async methods side by side; the async ones count how many run at once."""

    def __init__(self) -> None:
        self.running = self.peak = self.executed = 0

    def add(self, a: int, b: int) -> int:
        return a + b

    async def slow_double(self, i: int, seconds: float) -> int:
        self.executed += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return 2 * i

    async def fail(self, key: str) -> None:
        await asyncio.sleep(0)
        raise KeyError(key)

    async def where(self) -> str:
        return threading.current_thread().name

    def counts(self) -> dict[str, int]:
        return {"peak": self.peak, "executed": self.executed, "running": self.running}


@child
def many_async_calls(conn, name: str, tag: int, count: int, seconds: float) -> None:
    """A client process: ``count`` async calls outstanding at once (call_async), then their results."""
    with ombm.rpc.connect(name, timeout=120.0) as cli:
        futures = [cli.call_async("slow_double", tag * 1000 + i, seconds) for i in range(count)]
        conn.send(("result", [f.result(timeout=120.0) for f in futures]))


def test_an_async_server_runs_100_calls_from_4_processes_at_once():
    name = service_name("async")
    service = Mixed()
    with ombm.rpc.Server(name, service) as server, Children() as children:
        server.start()
        spawned = [children.spawn(many_async_calls, name, tag, 25, 1.0) for tag in range(4)]
        results = {tag: expect(conn, "result") for tag, (_, conn) in enumerate(spawned)}
        for p, _ in spawned:
            assert join(p) == 0
        for tag, got in results.items():
            assert got == [2 * (tag * 1000 + i) for i in range(25)]
        assert service.executed == 100  # each exactly once
        assert service.peak >= 10, service.counts()  # they ran at once, not one after another
        assert server.stats["async_calls"] == 100
        with ombm.rpc.connect(name, timeout=30.0) as cli:  # plain methods still on the serving thread
            assert cli.add(2, 3) == 5
            assert cli.call("where").endswith("-loop")  # the server's own event loop thread
            with pytest.raises(KeyError) as info:
                cli.fail("missing")
            assert info.value.type_name == "KeyError"


def test_serve_async_serves_from_inside_a_running_loop_until_cancelled():
    name = service_name("serve-async")
    service = Mixed()
    started = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        box["loop"] = asyncio.get_running_loop()
        box["task"] = task = asyncio.create_task(ombm.rpc.serve_async(name, service))
        started.set()
        try:
            await task
        except asyncio.CancelledError:
            box["cancelled"] = True

    loop_thread = threading.Thread(target=asyncio.run, args=(main(),), name="users-loop", daemon=True)
    loop_thread.start()
    try:
        assert started.wait(30.0)
        deadline = time.monotonic() + 60.0
        while True:  # the task makes the server at its first step
            try:
                cli = ombm.rpc.connect(name, timeout=30.0)
                break
            except ombm.ServiceNotFoundError:
                assert time.monotonic() < deadline, "serve_async never served"
                time.sleep(0.01)
        with cli:
            assert cli.slow_double(21, 0.01) == 42
            assert cli.call("where") == "users-loop"  # the coroutine ran on the user's loop
            assert cli.add(1, 1) == 2
    finally:
        loop = box.get("loop")
        task = box.get("task")
        if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(task, asyncio.Task):
            loop.call_soon_threadsafe(task.cancel)
        loop_thread.join(30.0)
    assert not loop_thread.is_alive() and box.get("cancelled") is True
    with pytest.raises(ombm.ServiceNotFoundError):
        ombm.rpc.connect(name, timeout=1.0)  # the server is gone with the task


def test_a_cancelled_await_forgets_the_call_and_the_client_goes_on():
    name = service_name("cancel")
    service = Mixed()
    with ombm.rpc.Server(name, service) as server:
        server.start()

        async def main() -> tuple[bool, int, int]:
            client = await ombm.rpc.connect_async(name, timeout=30.0)
            async with client:
                task = asyncio.create_task(client.slow_double(5, 2.0))
                while service.running == 0:  # the server runs it: cancel it mid-call
                    await asyncio.sleep(0.01)
                task.cancel()
                try:
                    await task
                    cancelled = False
                except asyncio.CancelledError:
                    cancelled = True
                return cancelled, await client.add(2, 2), await client.slow_double(4, 0.01)

        cancelled, four, eight = asyncio.run(main())
        assert cancelled and four == 4 and eight == 8


def test_stopping_a_server_cancels_its_coroutines_and_their_callers_see_it_go():
    name = service_name("stop-async")
    service = Mixed()
    server = ombm.rpc.Server(name, service).start()
    try:
        with ombm.rpc.connect(name, timeout=60.0) as cli:
            future = cli.call_async("slow_double", 1, 60.0)
            deadline = time.monotonic() + 30.0
            while service.running == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.running == 1
            server.stop()
            assert service.running == 0  # cancelled, its finally ran on the loop before the loop went
            with pytest.raises(ombm.rpc.CallTimeout):  # ServerGoneError is a CallTimeout
                future.result(timeout=60.0)
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == f"ombm-rpc-{name}-loop"]
