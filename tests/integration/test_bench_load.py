"""``ombm bench load`` and the floors: a tiny run gives every row (a number, or why not), the floors
count their round trips on both sides. Structure only: speed is the benchmark's job, not a test's."""

from __future__ import annotations

import math

import pytest

from ombm.cli.bench import floors, load, runner
from ombm.cli.bench.report import Target

pytestmark = pytest.mark.processes


def test_the_c_ping_pong_counts_every_round_trip_on_both_sides() -> None:
    if floors.c_unavailable():
        pytest.skip(floors.c_unavailable())
    floor = floors.c_pingpong((0, 0), 300, warmup=20, batch=100, yield_cpu=True)
    assert floor.parent_round_trips == floor.child_round_trips == 320
    assert floor.latency.count == 3 and floor.latency.median_us > 0


def test_the_python_spin_counts_every_round_trip_on_both_sides() -> None:
    floor = floors.python_spin((0, 0), 200, warmup=10, batch=50, yield_cpu=True)
    assert floor.parent_round_trips == floor.child_round_trips == 210
    assert floor.latency.count == 4 and floor.latency.median_us > 0


class _Missing(load._System):
    name = "not installed"
    requires = ("ombm_no_such_module",)


def test_a_tiny_load_run_gives_every_row_a_number_or_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load.Plan, "make", classmethod(lambda cls, quick: cls((1, 2), (load.SYNC, 4), 0.05, 5)))
    monkeypatch.setattr(load, "SYSTEMS", (load._Ombm, load._OmbmAsyncio, load._OmbmThreads, load._Selector, _Missing))
    steps: list[tuple[object, ...]] = []
    result = load.run(progress=lambda *args: steps.append(args), quick=True)
    assert "pip install" in result.skipped["not installed"]
    for system in ("ombm", "selector Unix socket"):
        assert sorted(result.sync[system]) == [1, 2]
        assert sorted(result.pipelined[system]) == [load.SYNC, 4]
        for cell in [*result.sync[system].values(), *result.pipelined[system].values()]:
            assert cell.calls > 0 and cell.window_s > 0 and 0 < cell.p50_us <= cell.p99_us
    for system in ("ombm asyncio", "ombm threads"):  # other ways to pipeline with ombm: no synchronous load rows
        assert system not in result.sync and sorted(result.pipelined[system]) == [load.SYNC, 4]
        for cell in result.pipelined[system].values():
            assert cell.calls > 0 and cell.window_s > 0 and 0 < cell.p50_us <= cell.p99_us
    for system in ("ombm", "selector Unix socket"):  # the CPU per call of server and clients, measured
        assert all(0 < cell.cpu_us < math.inf for cell in result.sync[system].values())
    assert not result.failed
    targets = load.issue13_targets(result)
    assert [t.name.split(":")[0] for t in targets][:2] == ["2 sync clients"] * 2
    assert all(isinstance(t, Target) and not math.isnan(t.measured) for t in targets)
    text = load.markdown(result)
    assert "## Load: many clients" in text and "not installed skipped" in text and "Load average" in text


def test_the_issue13_table_names_the_suites_it_did_not_run() -> None:
    target = Target("x", 2, 3, "×", at_most=False)
    text = runner._issue13({"load": [target]}, "ombm bench load", {
        "cpus": "2", "cpu": "c", "kernel": "k", "python": "p", "date": "d"})
    assert text.startswith("## Targets (issue 13)")
    assert text.count("not run by `ombm bench load`") == 3 and "| load | x |" in text
