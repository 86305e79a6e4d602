"""asyncio for streams and raw channels (issue 14, item 4): ``await recv_async()``, ``async for``,
``await send_async()`` between real processes, with the event loop free while a reader waits;
timeouts and cancellation leave the channel as it was."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from ombm.channels.raw import ChannelTimeout, RawChannel
from ombm.channels.stream import Stream
from helpers_core import expect
from rpc_helpers import child

pytestmark = pytest.mark.processes

TIMEOUT_S = 60.0  # generous: never a performance bound


def message(i: int) -> bytes:
    """Message i: 0 to ~20 KB (several slots for some), content depending on i."""
    size = (i * 7919) % 20000
    return hashlib.sha256(str(i).encode()).digest() * (size // 32) + bytes(size % 32)


@child
def stream_writer(conn, name, n, pause_s):
    with Stream.create(name, slots=8) as s:
        conn.send(("ready", os.getpid()))
        assert conn.recv() == "go"
        for i in range(n):
            s.send(message(i), timeout=TIMEOUT_S)
            if i % 10 == 0:
                time.sleep(pause_s)  # the reader waits now and then
        s.flush(TIMEOUT_S)


@child
def stream_reader(conn, name, n):
    with Stream.open(name, timeout=TIMEOUT_S) as s:
        digest = hashlib.sha256()
        for _ in range(n):
            m = s.recv(TIMEOUT_S)
            digest.update(len(m).to_bytes(8, "little") + m)
            time.sleep(0.001)  # slower than the writer: its window fills
        conn.send(("result", digest.hexdigest()))


@child
def raw_writer(conn, name, n):
    with RawChannel.create(name, unit_size=4096, units=64) as ch:
        conn.send(("ready", os.getpid()))
        assert conn.recv() == "go"
        for i in range(n):
            ch.write(i.to_bytes(4, "little") * 16)
            time.sleep(0.002)  # a reader that keeps up sees every frame


def test_async_for_over_a_stream_while_the_loop_runs_other_tasks(procs, tmp_path):
    name = f"aio-stream-{os.getpid()}"
    n = 120
    parent, child = procs.pipe("spawn")
    procs.spawn(stream_writer, child, name, n, 0.02)
    expect(parent, "ready")

    async def main() -> tuple[list[bytes], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        other = asyncio.create_task(ticker())
        got = []
        with Stream.open(name, timeout=TIMEOUT_S) as s:
            parent.send("go")
            async for m in s:
                got.append(bytes(m))
        stop.set()
        await other
        return got, ticks

    got, ticks = asyncio.run(main())
    assert got == [message(i) for i in range(n)]  # every message, in order, once, then the end
    assert ticks > 0  # the loop ran other work while the reader waited


def test_send_async_streams_more_than_the_window_to_a_slow_reader(procs):
    name = f"aio-send-{os.getpid()}"
    n = 60
    parent, child = procs.pipe("spawn")

    async def main() -> None:
        with Stream.create(name, slots=4) as s:  # 4 slots: most messages wait for credit
            procs.spawn(stream_reader, child, name, n)
            for i in range(n):
                await s.send_async(message(i), timeout=TIMEOUT_S)
            await s.flush_async(TIMEOUT_S)
            digest = expect(parent, "result")
        want = hashlib.sha256()
        for i in range(n):
            want.update(len(message(i)).to_bytes(8, "little") + message(i))
        assert digest == want.hexdigest()

    asyncio.run(main())


def test_recv_async_times_out_and_a_cancelled_one_takes_nothing():
    name = f"aio-cancel-{os.getpid()}"

    async def main() -> None:
        with Stream.create(name) as w, Stream.open(name) as r:
            with pytest.raises(ChannelTimeout):
                await r.recv_async(timeout=0.05)
            task = asyncio.create_task(r.recv_async())
            await asyncio.sleep(0.05)  # it waits in the loop
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            w.send(b"after the cancel")
            assert bytes(await r.recv_async(timeout=TIMEOUT_S)) == b"after the cancel"
            w.send(b"and another")
            assert bytes(r.recv(TIMEOUT_S)) == b"and another"  # the sync API still works beside it

    asyncio.run(main())


def test_recv_async_and_async_for_over_a_raw_channel(procs):
    name = f"aio-raw-{os.getpid()}"
    n = 100
    parent, child = procs.pipe("spawn")
    procs.spawn(raw_writer, child, name, n)
    expect(parent, "ready")

    async def main() -> list[int]:
        seen = []
        with RawChannel.open(name, timeout=TIMEOUT_S) as ch:
            parent.send("go")
            first = await ch.recv_async(timeout=TIMEOUT_S)
            seen.append(int.from_bytes(first.data[:4], "little"))
            async for frame in ch:  # until the writer closes it
                seen.append(int.from_bytes(frame.data[:4], "little"))
        return seen

    seen = asyncio.run(main())
    assert seen == sorted(set(seen)) and seen[-1] == n - 1  # in order, never twice, to the last frame
    assert len(seen) >= n // 2  # best effort, but a reader that keeps up misses little
