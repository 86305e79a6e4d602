"""``ombm bench net``: a tiny run across its own two hosts gives every row, numbers only where a
system was measured (a missing peer or the unbuilt bridge says why), and removes its hosts; as
non-root it refuses with the reason."""

from __future__ import annotations

import argparse
import math
import os

import pytest

from ombm.cli.bench import net, runner
from ombm.cli.bench.netns import NETNS_DIR
from .netns import missing

pytestmark = pytest.mark.processes


def test_a_tiny_run_measures_every_peer_there_is_and_removes_its_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setattr(net.Plan, "make", classmethod(lambda cls, quick: cls(50, 10, 2 << 20, 1)))
    monkeypatch.setattr(net, "PLACEMENTS", {"cross-cpu": (0, 1)})  # fewer children: a smoke test
    steps: list[tuple[object, ...]] = []
    result = net.run(progress=lambda *args: steps.append(args))
    floors = [row for row in result.rows if isinstance(row, net.RoundTrip) and row.system == "raw UDP echo (floor)"]
    assert sorted(row.placement for row in floors) == sorted(net.PLACEMENTS)
    for floor in floors:
        assert sorted(floor.latencies) == sorted(net.SIZES)
        assert all(latency.count == 50 and latency.median_us > 0 for latency in floor.latencies.values())
    [tcp] = [row for row in result.rows if isinstance(row, net.Throughput) and row.system == "TCP socket"]
    assert all(tcp.rates[size] > 0 for size in net.STREAM_SIZES)
    [stream] = [row for row in result.rows if isinstance(row, net.Throughput) and row.system == "ombm Stream via bridge"]
    assert all(stream.rates[size] > 0 for size in net.STREAM_SIZES), stream
    for row in result.rows:  # a number, or the reason there is none: never both missing
        numbers = getattr(row, "latencies", None) or getattr(row, "rates", None) or not math.isnan(
            getattr(row, "call_us", math.nan))
        assert numbers or row.note, row
    assert any(isinstance(row, net.BridgeShare) for row in result.rows)
    assert [step[:2] for step in steps if len(step) == 3][-1][1] == len([s for s in steps if len(s) == 3])
    text = net.markdown(result)
    assert "## Net: across two hosts" in text and "raw UDP echo (floor)" in text
    assert not [n for n in os.listdir(NETNS_DIR) if n.startswith(f"ombm-b{os.getpid()}-")]


def test_without_root_it_says_why_and_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = tmp_path / "benchmarks.md"
    status = runner.main(argparse.Namespace(suite="net", quick=True, out=str(out)))
    assert status == 1 and not out.exists()
    said = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert "net cannot run here" in said and "need root" in said
