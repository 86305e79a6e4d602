"""The signal FIFO (ombm.core.fifo + ombm._native) against a bounded deque (paper §3.1.2).

Pushes beyond the capacity are dropped and counted, never block; pops come
out in push order; ``fanout`` pushes one signal to several FIFOs and reports
how many of them were full. One process, no sleeps.
"""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ombm import _layout as L
from ombm import _native
from ombm.core.fifo import Fifo

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
SETTINGS = settings(max_examples=60, stateful_step_count=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class BoundedFifoModel:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque = deque()
        self.drops = 0

    def push(self, item) -> bool:
        if len(self.items) == self.capacity:
            self.drops += 1
            return False
        self.items.append(item)
        return True

    def pop(self):
        return self.items.popleft() if self.items else None


class FifoMachine(RuleBasedStateMachine):
    """One FIFO, pushed with ``_native.fifo_push`` and popped with ``Fifo.pop``/``_native.fifo_pop``."""

    @initialize(capacity=st.sampled_from([2, 4, 8, 16]))
    def create(self, capacity):
        self.fifo = Fifo(capacity)
        self.model = BoundedFifoModel(capacity)

    @rule(segment=u64, offset=u64)
    def push(self, segment, offset):
        result = _native.fifo_push(self.fifo.fifo_map, segment, offset)
        if self.model.push((segment, offset)):
            assert result == _native.PUSH_OK
        else:
            assert result == _native.PUSH_FULL

    @rule(n=st.integers(min_value=1, max_value=40), segment=u64)
    def push_burst(self, n, segment):
        for i in range(n):
            self.push(segment, i)

    @rule(native=st.booleans())
    def pop(self, native):
        got = _native.fifo_pop(self.fifo.fifo_map) if native else self.fifo.pop()
        assert got == self.model.pop()

    @rule()
    def pop_all(self):
        while (expected := self.model.pop()) is not None:
            assert self.fifo.pop() == expected
        assert self.fifo.pop() is None

    @invariant()
    def depth_and_drops_match(self):
        assert self.fifo.depth() == len(self.model.items)
        assert _native.load64(self.fifo.address + L.FIFO_DROPS) == self.model.drops

    def teardown(self):
        if hasattr(self, "fifo"):
            self.fifo.close()


class FanoutMachine(RuleBasedStateMachine):
    """``_native.fanout`` to three FIFOs of different capacities against three bounded deques."""

    @initialize()
    def create(self):
        self.fifos = [Fifo(c) for c in (2, 4, 8)]
        self.models = [BoundedFifoModel(c) for c in (2, 4, 8)]

    @rule(segment=u64, offset=u64)
    def fanout(self, segment, offset):
        result = _native.fanout(tuple(f.fifo_map for f in self.fifos), segment, offset)
        full = sum(not m.push((segment, offset)) for m in self.models)
        assert result & 0x7FFF == full
        assert result >> 16 == 0  # nobody sleeps on a doorbell here

    @rule(which=st.integers(min_value=0, max_value=2))
    def pop(self, which):
        assert self.fifos[which].pop() == self.models[which].pop()

    @invariant()
    def depths_match(self):
        for fifo, model in zip(self.fifos, self.models):
            assert fifo.depth() == len(model.items)

    def teardown(self):
        for fifo in getattr(self, "fifos", ()):
            fifo.close()


TestFifo = FifoMachine.TestCase
TestFifo.settings = SETTINGS
TestFanout = FanoutMachine.TestCase
TestFanout.settings = SETTINGS


def test_a_full_fifo_keeps_its_oldest_entries_across_many_wraps():
    fifo = Fifo(4)
    try:
        model = BoundedFifoModel(4)
        for round_ in range(300):  # the ring's positions wrap many times over
            for i in range(6):
                full = _native.fifo_push(fifo.fifo_map, round_, i) == _native.PUSH_FULL
                assert full == (not model.push((round_, i)))
            for _ in range(3 + round_ % 3):
                assert fifo.pop() == model.pop()
    finally:
        fifo.close()
