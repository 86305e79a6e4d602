"""The RPC part of ``ombm demo`` (paper §4): a server process, timed calls, a remote error."""

from __future__ import annotations

import os
import statistics
import time
from multiprocessing.context import ForkContext

from rich.console import Console

import ombm


class Calculator:
    def add(self, a: float, b: float) -> float:
        return a + b

    def null(self) -> None:
        return None

    def divide(self, a: float, b: float) -> float:
        return a / b


def _serve(name: str) -> None:
    ombm.rpc.Server(name, Calculator()).serve_forever()


def main(console: Console, ctx: ForkContext, iterations: int = 5000) -> int:
    name = f"demo-calc-{os.getpid()}"
    server = ctx.Process(target=_serve, args=(name,), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = ombm.rpc.connect(name, timeout=5.0)
                break
            except ombm.ServiceNotFoundError:  # the server process is still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with client:
            console.print(f"[bold]RPC[/bold] add(2, 3) -> {client.add(2, 3)}")
            try:
                client.divide(1, 0)
            except ombm.RemoteError as e:
                console.print(f"[bold]RPC[/bold] divide(1, 0) raised remotely: {e.type_name}: {e.message}")
            samples = []
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                client.null()
                samples.append(time.perf_counter_ns() - t0)
            samples.sort()
            console.print(
                f"[bold]null RPC[/bold] ({iterations} calls between two processes): median "
                f"[green]{statistics.median(samples) / 1000:.1f} µs[/green], p99 "
                f"{samples[int(len(samples) * 0.99)] / 1000:.1f} µs "
                f"(retransmits: {client.statistics().retransmits})"
            )
    finally:
        server.terminate()  # SIGTERM: the server stops cleanly and releases its channels
        server.join(5)
        if server.is_alive():
            server.kill()
    return 0
