"""Fault injection for tests (DESIGN.md §4), read once when ombm is imported.

``OMBM_FAULT_DROP``: probability that a signal to a receiver is dropped;
``OMBM_FAULT_CORRUPT``: probability that one byte of a message written through
a message-consistency segment is flipped before its signal;
``OMBM_FAULT_SEED``: seed of the generator (per process; a forked child reseeds
from the seed and its pid). Off unless set. They model exactly the losses the
paper allows (§3.2): the reliable layer above must repair them.
"""

from __future__ import annotations

import os
import random


def _probability(var: str) -> float:
    raw = os.environ.get(var, "")
    if not raw:
        return 0.0
    try:
        p = float(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a probability") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{var}={raw!r} is not a probability between 0 and 1")
    return p


class Faults:
    def __init__(self) -> None:
        self.drop = _probability("OMBM_FAULT_DROP")
        self.corrupt = _probability("OMBM_FAULT_CORRUPT")
        seed = os.environ.get("OMBM_FAULT_SEED")
        self.seed = int(seed) if seed else None
        self.rng = random.Random(self.seed)
        self.active = bool(self.drop or self.corrupt)

    def reseed_child(self) -> None:
        self.rng = random.Random(None if self.seed is None else self.seed * 1000003 + os.getpid())

    def should_drop(self) -> bool:
        return self.drop > 0.0 and self.rng.random() < self.drop

    def should_corrupt(self) -> bool:
        return self.corrupt > 0.0 and self.rng.random() < self.corrupt


FAULTS = Faults()
os.register_at_fork(after_in_child=FAULTS.reseed_child)
