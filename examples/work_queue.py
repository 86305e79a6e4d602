#!/usr/bin/env python3
"""A work-queue allocator served over ombm.rpc: function shipping (paper §2, §4).

Instead of sharing a queue under a lock, the worker processes *ship the
operation* to the one process that owns the queue: an allocator server holds
N work items, and each worker loops

    item = allocator.next_item(me)      # an RPC: the allocator pops the queue
    allocator.done(item, compute(item)) # an RPC: the allocator records the result

until ``next_item`` returns ``None``. Only the allocator's serving thread ever
touches the queue, so it needs no lock; every call is delivered at most once,
so no item is handed out twice. At the end the main process prints how the
items spread over the workers, and checks that every item was done exactly
once with the right result.

    python examples/work_queue.py --workers 4 --items 2000

(with ombm installed: ``pip install .``).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque

from rich.console import Console
from rich.table import Table

import ombm


def compute(item: int) -> str:
    """The work: a short hash chain, cheap but not free, and checkable."""
    digest = str(item).encode()
    for _ in range(64):
        digest = hashlib.blake2b(digest, digest_size=16).digest()
    return digest.hex()


class Allocator:
    """Owns the work queue. Its public methods are the service; only the server thread calls them."""

    def __init__(self, items: int) -> None:
        self._queue = deque(range(items))
        self.handed_out: Counter = Counter()  # worker -> items given to it
        self.times_done: Counter = Counter()  # item -> how many times done() reported it
        self.results: dict[int, str] = {}

    def next_item(self, worker: str | None = None) -> int | None:
        """The next work item, or None when the queue is empty."""
        if not self._queue:
            return None
        self.handed_out[worker] += 1
        return self._queue.popleft()

    def done(self, item: int, result: str) -> None:
        """Record the result of ``item``."""
        self.times_done[item] += 1
        self.results[item] = result


def worker(service: str, name: str, reports) -> None:
    """A worker process: connect, then next_item -> compute -> done until the queue is empty."""
    count = 0
    start = time.perf_counter()
    with ombm.rpc.connect(service, timeout=30.0) as allocator:
        while (item := allocator.next_item(name)) is not None:
            allocator.done(item, compute(item))
            count += 1
        retransmits = allocator.statistics().retransmits
    reports.put((name, os.getpid(), count, time.perf_counter() - start, retransmits))


def run(workers: int, items: int, service: str, timeout_s: float) -> tuple[Allocator, list, float]:
    """Serve the allocator in this process and run the workers; return what happened."""
    ctx = mp.get_context("spawn")
    allocator = Allocator(items)
    reports = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(service, f"worker-{i}", reports), daemon=True) for i in range(workers)]
    with ombm.rpc.Server(service, allocator) as server:
        server.start()
        start = time.perf_counter()
        try:
            for p in procs:
                p.start()
            rows = [reports.get(timeout=timeout_s) for _ in procs]
            elapsed = time.perf_counter() - start
            for p in procs:
                p.join(timeout_s)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
    return allocator, sorted(rows), elapsed


def check(allocator: Allocator, items: int) -> list[str]:
    """Every item done exactly once, with the right result; empty if all is well."""
    problems = []
    missing = [i for i in range(items) if allocator.times_done[i] == 0]
    twice = [i for i, n in allocator.times_done.items() if n > 1]
    wrong = [i for i, r in allocator.results.items() if r != compute(i)]
    if missing:
        problems.append(f"{len(missing)} items never done (first: {missing[:5]})")
    if twice:
        problems.append(f"{len(twice)} items done more than once (first: {twice[:5]})")
    if wrong:
        problems.append(f"{len(wrong)} wrong results (first: {wrong[:5]})")
    if sum(allocator.handed_out.values()) != items:
        problems.append(f"{sum(allocator.handed_out.values())} items handed out, expected {items}")
    return problems


def report(console: Console, allocator: Allocator, rows: list, elapsed: float, items: int) -> None:
    table = Table(title=f"work queue over ombm.rpc: {items} items, {len(rows)} workers")
    for col, justify in (("worker", "left"), ("pid", "right"), ("items", "right"), ("share", "right"),
                         ("items/s", "right"), ("retransmits", "right")):
        table.add_column(col, justify=justify)
    for name, pid, count, seconds, retransmits in rows:
        rate = count / seconds if seconds > 0 else 0.0
        share = count / items if items else 0.0
        table.add_row(name, str(pid), str(count), f"{share:.0%}", f"{rate:,.0f}", str(retransmits))
    total = sum(r[2] for r in rows)
    table.add_row("total", "", str(total), f"{total / items:.0%}" if items else "-",
                  f"{total / elapsed:,.0f}" if elapsed > 0 else "-", str(sum(r[4] for r in rows)),
                  style="bold")
    console.print(table)
    calls = 2 * items + len(rows)  # next_item + done per item, and one final next_item per worker
    console.print(f"{calls} calls in {elapsed:.2f} s ({elapsed / calls * 1e6:.0f} µs per call, "
                  f"process start-up included)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--items", type=int, default=2000, help="work items in the queue (default 2000)")
    parser.add_argument("--service", default=None, help="service name (default: work-queue-<pid>)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.items < 0:
        parser.error("need --workers >= 1 and --items >= 0")
    service = args.service or f"work-queue-{os.getpid()}"

    console = Console()
    allocator, rows, elapsed = run(args.workers, args.items, service, args.timeout)
    report(console, allocator, rows, elapsed, args.items)
    problems = check(allocator, args.items)
    if problems:
        for problem in problems:
            console.print(f"[red]FAILED:[/red] {problem}")
        return 1
    console.print(f"[green]OK:[/green] every one of the {args.items} items was done exactly once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
