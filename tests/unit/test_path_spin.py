"""The spin budget across a path (ombm.transport.spin, issue 12): pure arithmetic, no processes."""

from __future__ import annotations

from ombm.transport.spin import PathSpin

CAP = 50_000  # the process's spin cap (spin_us 50), ns


def test_without_an_estimate_the_budget_is_the_process_cap() -> None:
    assert PathSpin().budget_ns(CAP, None) == CAP
    assert PathSpin().budget_ns(0, 0.001) == 0  # OMBM_WAIT=sleep: never spin


def test_the_transports_estimate_then_its_own_sets_the_budget() -> None:
    spin = PathSpin()
    assert spin.budget_ns(CAP, 100e-6) == 150_000  # the transport's SRTT with its margin
    spin.waited(80_000, 150_000)
    assert spin.budget_ns(CAP, 100e-6) == 120_000  # its own estimate from the first wait
    for _ in range(100):
        spin.waited(200_000, spin.budget_ns(CAP, None))
    assert 290_000 < spin.budget_ns(CAP, None) <= 300_000  # the estimate follows the path


def test_the_budget_is_never_below_the_cap_nor_above_the_maximum() -> None:
    spin = PathSpin()
    assert spin.budget_ns(CAP, 10e-6) == CAP  # a path quicker than a local wait: the local cap
    assert spin.budget_ns(CAP, 5.0) == PathSpin.MAX_SPIN_NS  # a slow path: no spin longer than that


def test_spins_that_keep_losing_drop_to_the_floor_and_probe_again() -> None:
    spin = PathSpin()
    budgets = []
    for _ in range(2 * PathSpin.PROBE):
        budget = spin.budget_ns(CAP, 100e-6)
        budgets.append(budget)
        spin.waited(budget + 1, budget)  # every answer came after the spin
    assert budgets[PathSpin.MISSES - 1] > PathSpin.FLOOR_NS
    assert budgets[PathSpin.MISSES] == PathSpin.FLOOR_NS  # lost MISSES in a row: the floor
    assert budgets[PathSpin.PROBE] > PathSpin.FLOOR_NS  # the probe tries the path's budget again
    spin.waited(1_000, budgets[-1])  # one that ended within its spin restores the budget
    assert spin.budget_ns(CAP, 100e-6) > PathSpin.FLOOR_NS
