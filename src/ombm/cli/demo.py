"""``ombm demo``: the paper's mechanisms, visible, between real processes.

1. Multicast with signal-on-write (paper §3.1, §3.3): one writer, several
   receiver processes; each receiver's handler gets the message's address in
   *its own* address space.
2. Round-trip latency of a 32-byte message + signal each way, adaptive wait.
3. RPC (paper §4), when ``ombm.rpc`` is available: a server process, timed calls.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.context import ForkContext
from multiprocessing.queues import Queue
from typing import Any

from rich.console import Console
from rich.table import Table

import ombm

MESSAGES = (b"hello from the writer", b"address-valued signals", b"message consistency", b"signal-on-write")


def _receiver(name: str, index: int, count: int, queue: Queue[tuple[Any, ...]]) -> None:
    seg = ombm.open_segment(name)
    spacers = [seg.bind(writable=False) for _ in range(index)]  # so each receiver maps at another base
    region = seg.bind(writable=False)
    got: list[tuple[int, int, str]] = []

    def on_signal(address: int) -> None:
        offset = address - region.address
        got.append((address, offset, bytes(region.buffer[offset : offset + 64]).rstrip(b"\0").decode()))

    ombm.signal_handler(region.address, region.size, on_signal)
    queue.put(("ready", index))
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        ombm.sig_wait(deadline - time.monotonic())
    queue.put(("done", index, region.address, got))
    del spacers
    seg.release()


def _echo(name: str, queue: Queue[tuple[Any, ...]]) -> None:
    seg = ombm.open_segment(name)
    region = seg.bind()
    reply = b"r" * 32
    ombm.signal_handler(region.address, 64, lambda address: region.write(96, reply))  # completes line 1
    queue.put(("ready", -1))
    while not region.buffer[4095]:  # the parent writes the last byte to stop us
        ombm.sig_wait(0.5)
    seg.release()


def _multicast(console: Console, ctx: ForkContext, receivers: int) -> None:
    name = f"demo-{os.getpid()}"
    with ombm.create_segment(4096, name=name) as seg:
        region = seg.bind()
        queue = ctx.Queue()
        procs = [ctx.Process(target=_receiver, args=(name, i, len(MESSAGES), queue), daemon=True) for i in range(receivers)]
        try:
            for p in procs:
                p.start()
            for _ in procs:
                queue.get(timeout=20)
            for i, text in enumerate(MESSAGES):  # each message fills one 64-byte line: one signal each
                region.write(i * 64, text.ljust(64, b"\0"))
            reports = sorted(queue.get(timeout=20)[1:] for _ in procs)
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
    table = Table(title=f"signal-on-write multicast: writer base {region.address:#x}")
    for col in ("receiver", "its mapping base", "handler got address", "offset", "message"):
        table.add_column(col)
    for index, base, got in reports:
        for address, offset, text in got:
            table.add_row(str(index), f"{base:#x}", f"{address:#x}", str(offset), text)
    console.print(table)


def _round_trips(console: Console, ctx: ForkContext, iterations: int) -> None:
    name = f"demo-rt-{os.getpid()}"
    with ombm.create_segment(4096, name=name) as seg:
        region = seg.bind()
        queue = ctx.Queue()
        replies = [0]

        def on_reply(address: int) -> None:
            replies[0] += 1

        ombm.signal_handler(region.address + 64, 64, on_reply)
        echo = ctx.Process(target=_echo, args=(name, queue), daemon=True)
        echo.start()
        try:
            queue.get(timeout=20)
            ping = b"p" * 32
            samples = []
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                region.write(32, ping)  # bytes 32..63: completes line 0
                ombm.sig_wait(1.0)
                samples.append(time.perf_counter_ns() - t0)
            region.write(4095, b"\1")
        finally:
            echo.join(5)
            if echo.is_alive():
                echo.kill()
    samples.sort()
    console.print(
        f"[bold]round trip[/bold] (32-byte write + signal-on-write each way, {iterations} times, "
        f"{replies[0]} replies): median [green]{statistics.median(samples) / 1000:.2f} µs[/green], "
        f"p99 {samples[int(len(samples) * 0.99)] / 1000:.2f} µs"
    )


def main(receivers: int = 3, iterations: int = 20000) -> int:
    console = Console()
    ctx = mp.get_context("fork")
    console.rule("ombm demo: optimized memory-based messaging")
    _multicast(console, ctx, receivers)
    _round_trips(console, ctx, iterations)
    try:
        from ombm.cli import rpc_demo
    except ImportError:
        return 0
    return rpc_demo.main(console, ctx)
