"""Fault injection for tests (DESIGN.md §4), read once when ombm is imported.

``OMBM_FAULT_DROP``: probability that a signal to a receiver is dropped;
``OMBM_FAULT_CORRUPT``: probability that one bit of a message written through
a message-consistency segment is flipped before its signal;
``OMBM_FAULT_SEED``: seed of the generator (per process; a forked child reseeds
from the seed and its pid). Off unless set. They model exactly the losses the
paper allows (§3.2): the reliable layer above must repair them.

This module is their one reader: it hands the numbers to the native side
(``_native.faults_set``), whose generator decides every fault, on the native
write path (``_native.Writer``, and so both RPC lanes) and on Python's
(``Region.write``, ``Router.deliver``) alike, and counts them
(``signals_dropped_fault``, ``messages_corrupted_fault`` in ``ombm.stats()``).
"""

from __future__ import annotations

import os

from ombm import _native


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
        self.active = bool(self.drop or self.corrupt)
        self._arm(self.seed)

    def _arm(self, seed: int | None) -> None:
        """Hand the probabilities and a seed (None: a random one) to the native generator."""
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        _native.faults_set(self.drop, self.corrupt, seed)

    def reseed_child(self) -> None:
        self._arm(None if self.seed is None else self.seed * 1000003 + os.getpid())

    def should_drop(self) -> bool:
        """Draw for one signal to one receiver (a drop is counted)."""
        return _native.fault_drop()

    def corrupt_bit(self, nbytes: int) -> int:
        """Draw for a message of ``nbytes``: the bit to flip (counted), or -1."""
        return _native.fault_corrupt_bit(nbytes)


FAULTS = Faults()
os.register_at_fork(after_in_child=FAULTS.reseed_child)
