"""CPU placement of a benchmark's two processes (DESIGN.md §5).

Owns which CPU the client and the server of a measurement run on. This 2-core VM wakes a
sleeping process in about 50-60 µs when the two sit on different CPUs (the guest halts an idle
CPU at once) but in 5-8 µs when they share one, so every benchmark reports both placements.
Pinning is per thread (``sched_setaffinity(0, …)``); threads started while pinned inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

PLACEMENTS: Final[dict[str, tuple[int, int]]] = {"cross-cpu": (0, 1), "same-cpu": (0, 0)}
"""Placement name -> (client CPU, server CPU)."""


def pin(cpu: int) -> None:
    """Run the calling thread on `cpu` only."""
    os.sched_setaffinity(0, {cpu})


@contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run the calling thread on `cpu` for the ``with`` block, then restore its previous CPUs."""
    previous = os.sched_getaffinity(0)
    pin(cpu)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)
