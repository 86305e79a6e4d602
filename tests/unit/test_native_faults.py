"""Fault injection's native generator and the native write path under it (DESIGN.md §4).

The faults are set in this process with ``_native.faults_set`` (what ``core/faults.py`` does at
import from ``OMBM_FAULT_*``) and always set back off afterwards; the bounds on counts are six
standard deviations of the binomial either side.
"""

from __future__ import annotations

import contextlib
import math
import os

import pytest

import ombm
from ombm import _native
from ombm.core.faults import FAULTS


@pytest.fixture
def faults():
    """``set(drop, corrupt, seed)`` fault injection in this process; off again (and the counters
    zeroed) after the test."""
    _native.fault_counters_reset()
    try:
        yield _native.faults_set
    finally:
        _native.faults_set(0.0, 0.0, 0)
        _native.fault_counters_reset()


@contextlib.contextmanager
def _watched(units: int, label: str):
    """A segment of ``units`` 64-byte units bound writable, and ``signalled()``: the offsets of the
    signals a receiver of this thread got so far."""
    with ombm.create_segment(64 * units, name=f"faults-{label}-{os.getpid()}") as seg:
        region = seg.bind()
        receiver = ombm.Receiver(capacity=1024)
        try:
            got: list[int] = []
            receiver.add_handler(region.address, seg.size, lambda a: got.append(a - region.address))

            def signalled() -> list[int]:
                while receiver.dispatch_pending():
                    pass
                return got

            yield region, signalled
        finally:
            receiver.close()


def _within(count: int, n: int, p: float) -> bool:
    sigma = math.sqrt(n * p * (1 - p))
    return n * p - 6 * sigma <= count <= n * p + 6 * sigma


def test_off_unless_set_and_draws_nothing():
    assert not FAULTS.active  # the suite runs without OMBM_FAULT_*
    before = _native.fault_counters()
    assert not any(_native.fault_drop() for _ in range(1000))
    assert {_native.fault_corrupt_bit(64) for _ in range(1000)} == {-1}
    assert _native.fault_counters() == before


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_drops_come_at_their_probability_and_are_counted(faults, p):
    faults(p, 0.0, 1)
    n = 20_000
    dropped = sum(_native.fault_drop() for _ in range(n))
    assert _within(dropped, n, p)
    assert _native.fault_counters() == (dropped, 0)


def test_the_same_seed_gives_the_same_faults(faults):
    runs = []
    for seed in (7, 7, 8):
        faults(0.5, 0.5, seed)
        runs.append([(_native.fault_drop(), _native.fault_corrupt_bit(100)) for _ in range(200)])
    assert runs[0] == runs[1] != runs[2]


def test_a_corrupted_message_has_one_uniform_bit_flipped(faults):
    faults(0.0, 1.0, 3)
    n = 16_000
    bits = [_native.fault_corrupt_bit(2) for _ in range(n)]
    assert all(0 <= b < 16 for b in bits)
    assert all(_within(bits.count(b), n, 1 / 16) for b in range(16))
    assert _native.fault_counters() == (0, n)
    assert _native.fault_corrupt_bit(0) == -1  # an empty message has no bit to flip


def test_probabilities_are_checked(faults):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            faults(bad, 0.0, 1)
        with pytest.raises(ValueError):
            faults(0.0, bad, 1)
    with pytest.raises(TypeError):
        faults(0.1, 0.1, "1")
    faults(1.0, 1.0, -1)  # any int seeds (its low 64 bits); 1.0 is certain
    assert _native.fault_drop() and _native.fault_corrupt_bit(1) >= 0


def test_the_native_writer_flips_one_bit_before_the_signal_and_drops_signals(faults):
    """Region.write is the native Writer's: corrupted before its signals (the receiver gets the
    signal of a damaged unit), and its signals dropped per receiver, counted apart from the sends."""
    with _watched(400, "native") as (region, signalled):
        assert region.native_writer is not None
        before = ombm.stats()
        faults(0.0, 1.0, 5)
        message = bytes(range(64))
        for i in range(200):
            region.write(64 * i, message)
        faults(1.0, 0.0, 5)
        for i in range(200, 400):
            region.write(64 * i, message)
        faults(0.0, 0.0, 5)
        assert signalled() == [64 * i for i in range(200)]  # corruption loses no signal; drop=1 loses them all
        after = ombm.stats()
        flipped = [sum(bin(a ^ b).count("1") for a, b in zip(message, region.read(64 * i, 64))) for i in range(200)]
        assert flipped == [1] * 200
        assert after["messages_corrupted_fault"] - before["messages_corrupted_fault"] == 200
        assert after["signals_dropped_fault"] - before["signals_dropped_fault"] == 200
        assert after["signals_sent"] - before["signals_sent"] == 200  # a dropped signal was never sent


def test_the_python_write_path_draws_from_the_same_generator(faults, monkeypatch):
    """Region.write's Python method (the Writer's slow path) and explicit signals (Router.deliver)
    inject the same faults, counted in the same counters."""
    monkeypatch.setattr(FAULTS, "active", True)  # as if OMBM_FAULT_* had been set at import
    with _watched(100, "python") as (region, signalled):
        before = ombm.stats()
        faults(0.0, 1.0, 9)
        for i in range(50):
            ombm.Region.write(region, 64 * i, bytes(64))  # the method itself, not the native Writer
        faults(1.0, 0.0, 9)
        for i in range(50):
            ombm.signal(region.address + 64 * i)
        faults(0.0, 0.0, 9)
        assert signalled() == [64 * i for i in range(50)]
        after = ombm.stats()
        assert all(bin(int.from_bytes(region.read(64 * i, 64), "little")).count("1") == 1 for i in range(50))
        assert after["messages_corrupted_fault"] - before["messages_corrupted_fault"] == 50
        assert after["signals_dropped_fault"] - before["signals_dropped_fault"] == 50
        assert after["signals_sent"] - before["signals_sent"] == 50
