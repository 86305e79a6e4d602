"""The paper's numbers the model must reproduce by running (§5.2 Table 4, §6 attribution)."""

import pytest

from ombm.sim.params import PAPER
from ombm.sim.scenarios import fig6, table4


@pytest.fixture(scope="module")
def rpc_table():
    return table4()


@pytest.mark.parametrize("row", ["opt_l2", "soft_l2"])
@pytest.mark.parametrize("column, index", [("null_us", 0), ("send32_us", 1)])
def test_table4_l2_within_ten_percent(rpc_table, row, column, index):
    paper = PAPER["table4"][row][index]
    assert rpc_table[row][column] == pytest.approx(paper, rel=0.10)


def test_table4_optimized_is_faster_everywhere(rpc_table):
    for level in ("l2", "l3"):
        for column in ("null_us", "send32_us", "send1k_us"):
            assert rpc_table[f"opt_{level}"][column] < rpc_table[f"soft_{level}"][column]


@pytest.mark.parametrize("level", [2, 6])
def test_attribution_within_five_points(level):
    simulated = next(r for r in fig6() if r["levels"] == level)["share"]
    for key, paper in PAPER["fig6_share"][level].items():
        assert simulated[key] == pytest.approx(paper, abs=0.05), key
    assert sum(simulated.values()) == pytest.approx(1.0)


def test_speedup_is_three_fold_or_more_and_largest_far_away():
    rows = fig6()
    assert rows[0]["speedup"] > 2.5
    assert rows[-1]["speedup"] == max(r["speedup"] for r in rows)
