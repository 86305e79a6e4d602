"""The report: files, figures, the JSON schema, and the command line."""

import argparse
import json

import pytest

from ombm.cli import sim as cli
from ombm.sim import report


@pytest.fixture(scope="module")
def results():
    return report.run_all()


def test_markdown_report_and_figures(results, tmp_path):
    path = report.write_markdown(results, tmp_path)
    text = path.read_text()
    assert "{" not in text.replace("{elapsed}", "")   # every slot filled
    for section in ("Table 1", "Table 4", "Figure 5", "Figure 6", "Figure 7", "Figure 8", "parameters"):
        assert section in text
    for name in ("fig5", "fig6", "fig7", "fig8", "fifo_loss", "shipping", "rtl"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in text


def test_json_schema(results, tmp_path):
    path = tmp_path / "out" / "sim.json"
    report.write_json(results, path)
    data = json.loads(path.read_text())
    for key in ("software", "hardware"):
        assert {"total_us", "total_instructions"} <= data["table1"][key].keys()
    assert set(data["table4"]) == {"opt_l2", "soft_l2", "opt_l3", "soft_l3"}
    for row in data["table4"].values():
        assert set(row) == {"null_us", "send32_us", "send1k_us"}
    assert [r["levels"] for r in data["fig6"]] == [2, 3, 4, 5, 6]
    for r in data["fig6"]:
        assert set(r["share"]) == {"signals", "consistency", "signal_on_write"}
        assert 0 < r["share"]["signals"] < 1 and r["speedup"] > 1
    for key in ("fig7", "fig8"):
        assert all({"cpu_speed", "speedup"} <= r.keys() for r in data[key])


def test_cli_report(tmp_path):
    assert cli.main(["report", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "s.json").exists()
    assert cli.main(["report"]) == 2


@pytest.mark.parametrize("command", ["table1", "table4", "fig5", "fig6", "fig7", "fig8", "rtl", "params"])
def test_cli_scenario_commands_print_tables(command, capsys):
    assert cli.main([command]) == 0
    assert capsys.readouterr().out.strip()


def test_add_subcommand_hooks_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="ombm")
    cli.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", "report", "--json", "x.json"])
    assert args.func is not None and args.json == "x.json" and args.out is None
