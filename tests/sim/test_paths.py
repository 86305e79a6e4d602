"""Hand-computable message paths of each configuration, and Table 1 exactly (§5.1, §6)."""

from dataclasses import replace

import pytest

from ombm.sim.mbm import CONSISTENCY, OPTIMIZED, SIGNALS, SOFTWARE
from ombm.sim.params import FUTURE, PARADIGM, TABLE1_HARDWARE, TABLE1_SOFTWARE
from ombm.sim.scenarios import table1, transfer
from ombm.sim import explore

F = 1.12          # one L2-bus transaction (line or address-only)
G, H = 3.36, 6.1  # L3 bus line, fiber hop line

# Through one board's L2, at 25 MHz:
#   optimized:    write-through F, signal F, receive path 16, fill F
#   consistency:  write-through F, trap 3 + mapping 3, kernel signal F, 16, fill F
#   signals:      ownership F, trap 6, signal F, receive 15 (no L1 invalidation), read miss 3F
#   software:     ownership F, trap 6, receivers 4, queue insert (miss 3F, lock 3F, 6), interrupt 1,
#                 IPI F; queue remove (3F, 3F, 6), receive 13, read miss 3F
HAND_L2 = {
    OPTIMIZED: 3 * F + 16,
    CONSISTENCY: 3 * F + 6 + 16,
    SIGNALS: F + 6 + F + 15 + 3 * F,
    SOFTWARE: F + 6 + 4 + (6 * F + 6) + 1 + F + (6 * F + 6) + 13 + 3 * F,
}


@pytest.mark.parametrize("config", list(HAND_L2), ids=lambda c: c.key)
def test_transfer_through_l2(config):
    assert transfer(FUTURE, config, 2)[0] == pytest.approx(HAND_L2[config], abs=1e-9)


def test_optimized_over_three_fiber_hops():
    # write-through, update with piggybacked signal over 3 hops + the L3 bus, signal on the
    # receiver's L2 bus, receive path, fill
    assert transfer(FUTURE, OPTIMIZED, 6)[0] == pytest.approx(F + 3 * H + G + F + 16 + F)


def test_software_costs_scale_with_cpu_speed_and_memory_does_not():
    assert transfer(replace(FUTURE, cpu_speed=2), OPTIMIZED, 2)[0] == pytest.approx(3 * F + 8)


def test_table1_exactly():
    result = table1()
    assert (result["software"]["total_us"], result["software"]["total_instructions"]) == (36, 249)
    assert (result["hardware"]["total_us"], result["hardware"]["total_instructions"]) == (16, 104)
    for key, column in (("software", TABLE1_SOFTWARE), ("hardware", TABLE1_HARDWARE)):
        assert [(n, t, i) for n, t, i in result[key]["components"]] == [
            (c.name, c.time_us, c.instructions) for c in column.values()]


def test_table1_comes_from_the_run():
    result = table1(replace(PARADIGM, cpu_speed=4))
    assert result["software"]["total_us"] == pytest.approx(9)
    assert result["hardware"]["total_instructions"] == 104


def test_software_l3_consistency_costs_the_receiving_kernel():
    hardware_l3 = transfer(FUTURE, OPTIMIZED, 3)[0]
    software_l3 = transfer(PARADIGM, OPTIMIZED, 3)[0]
    assert software_l3 - hardware_l3 == pytest.approx(PARADIGM.sw_l3_signal_us)


def test_reverse_tlb_hit_skips_the_kernel():
    one_region = explore.rtl(entries=4, regions=1, signals=10)
    assert one_region["hit_rate"] == pytest.approx(0.9)          # only the first signal misses
    no_rtl = explore.rtl(entries=0, regions=1, signals=10)
    hit = 2 * F + 7 / 25
    miss = 2 * F + 16 + 1
    assert one_region["mean_latency_us"] == pytest.approx((9 * hit + miss) / 10)
    assert no_rtl["mean_latency_us"] == pytest.approx(2 * F + 16)
