"""The simulator's report: run every scenario, write markdown + PNG figures and JSON.

This module owns the report's content and layout. :func:`run_all` runs the
scenarios of :mod:`ombm.sim.scenarios` and :mod:`ombm.sim.explore` (every
number comes out of the simpy model); :func:`write_markdown` lays them out
beside the paper's values, with the table of model parameters;
:func:`to_json` gives the machine-readable summary (schema in ``docs/sim.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Callable, TypedDict, cast

from ombm.sim import explore, figures, scenarios
from ombm.sim.params import PAPER, TABLE1_HARDWARE, TABLE1_SOFTWARE, parameter_table
from ombm.sim.explore import FifoLoss, RtlRow, Shipping
from ombm.sim.report_text import TEMPLATE
from ombm.sim.scenarios import Attribution, Fig5Row, SpeedupRow, Table1Part


class Results(TypedDict):
    """What :func:`run_all` returns: every scenario's plain data, by the key of its step."""

    table1: dict[str, Table1Part]
    fig5: list[Fig5Row]
    table4: dict[str, dict[str, float]]
    fig6: list[Attribution]
    fig7: list[SpeedupRow]
    fig8: list[SpeedupRow]
    fifo: list[FifoLoss]
    shipping: list[Shipping]
    rtl: list[RtlRow]


STEPS: tuple[tuple[str, str, Callable[[], object]], ...] = (
    ("table1", "Table 1: kernel components", scenarios.table1),
    ("fig5", "Figure 5: transactions per message", scenarios.fig5),
    ("table4", "Table 4: RPC latency", scenarios.table4),
    ("fig6", "Figure 6: speedup vs levels", scenarios.fig6),
    ("fig7", "Figure 7: speedup vs CPU, L2", scenarios.fig7),
    ("fig8", "Figure 8: speedup vs CPU, fiber", scenarios.fig8),
    ("fifo", "(f) FIFO loss", explore.fifo_curve),
    ("shipping", "(g) function shipping", explore.shipping_curve),
    ("rtl", "(h) reverse TLB", explore.rtl_grid),
)
_LEVELS = {2: "through L2", 3: "through L3", 4: "1 fiber hop", 5: "2 fiber hops", 6: "3 fiber hops"}
_T4_ROWS = {"opt_l2": "Opt. MBM (L2)", "opt_l3": "Opt. MBM (L3)",
            "soft_l2": "Soft MBM (L2)", "soft_l3": "Soft MBM (L3)"}
_T4_COLS = {"null_us": "Null RPC", "send32_us": "Send, Recv 32 bytes", "send1k_us": "Send 1KB"}


def run_all(on_step: Callable[[str], None] = lambda label: None) -> Results:
    """Run every scenario; ``on_step(label)`` is called after each one."""
    results: dict[str, object] = {}
    for key, label, scenario in STEPS:
        results[key] = scenario()
        on_step(label)
    return cast(Results, results)  # STEPS runs the scenario of every key of Results


def to_json(results: Results) -> dict[str, object]:
    """The machine-readable summary (plain JSON values; schema in ``docs/sim.md``)."""
    table1 = {
        key: {"total_us": part["total_us"], "total_instructions": part["total_instructions"],
              "components": [{"name": n, "time_us": t, "instructions": i} for n, t, i in part["components"]]}
        for key, part in results["table1"].items()
    }
    return {
        "table1": table1,
        "table4": results["table4"],
        "fig5": results["fig5"],
        "fig6": [{"levels": r["levels"], "speedup": r["speedup"], "share": r["share"],
                  "latency_us": r["latency_us"]} for r in results["fig6"]],
        "fig7": results["fig7"],
        "fig8": results["fig8"],
        "fifo_loss": results["fifo"],
        "function_shipping": results["shipping"],
        "reverse_tlb": results["rtl"],
    }


def write_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(results), indent=2) + "\n")


def _table(headers: list[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pct(sim: float, paper: float) -> str:
    return f"{100 * (sim - paper) / paper:+.1f}%"


def _table1(results: Results) -> str:
    sim = results["table1"]
    rows = []
    for name in dict.fromkeys([*TABLE1_SOFTWARE, *TABLE1_HARDWARE]):
        row: list[object] = [name]
        for key, column in (("software", TABLE1_SOFTWARE), ("hardware", TABLE1_HARDWARE)):
            simulated = {n: (t, i) for n, t, i in sim[key]["components"]}
            paper = column.get(name)
            row += ["–", "–", "–", "–"] if paper is None else [
                paper.time_us, simulated[name][0], paper.instructions, simulated[name][1]]
        rows.append(row)
    totals: list[object] = ["**Total**"]
    for key in ("software", "hardware"):
        paper_t, paper_i = PAPER["table1"][key]
        totals += [paper_t, sim[key]["total_us"], paper_i, sim[key]["total_instructions"]]
    rows.append(totals)
    head = ["component", "SW paper µs", "SW sim µs", "SW paper instr", "SW sim instr",
            "HW paper µs", "HW sim µs", "HW paper instr", "HW sim instr"]
    return _table(head, rows)


def _table4(results: Results) -> str:
    rows = []
    for key, label in _T4_ROWS.items():
        row: list[object] = [label]
        for col, paper in zip(_T4_COLS, PAPER["table4"][key]):
            value = results["table4"][key][col]
            row += [paper, f"{value:.1f}", _pct(value, paper)]
        rows.append(row)
    head = ["system"] + [f"{name} {part}" for name in _T4_COLS.values() for part in ("paper", "sim", "diff")]
    return _table(head, rows)


def _fig6(results: Results) -> str:
    rows = []
    for r in results["fig6"]:
        paper = PAPER["fig6_share"].get(r["levels"])
        shares = " / ".join(f"{100 * r['share'][k]:.1f}" for k in ("signals", "consistency", "signal_on_write"))
        paper_shares = " / ".join(f"{100 * v:.0f}" for v in paper.values()) if paper else "–"
        rows.append([r["levels"], _LEVELS[r["levels"]], r["latency_us"]["software"],
                     r["latency_us"]["optimized"], r["speedup"], shares, paper_shares])
    head = ["levels", "path", "software-only µs", "optimized µs", "speedup",
            "sim % signals / consistency / SoW", "paper %"]
    return _table(head, rows)


def _cpu_curve(rows: list[SpeedupRow]) -> str:
    return _table(["CPU speed", "software-only µs", "optimized µs", "speedup"],
                  [[r["cpu_speed"], r["software_us"], r["optimized_us"], r["speedup"]] for r in rows])


def _fig5(results: Results) -> str:
    rows = [[_LEVELS[r["level"]], r["config"], r["total"],
             ", ".join(f"{k}: {n}" for k, n in r["transactions"].items()), r["latency_us"]]
            for r in results["fig5"]]
    return _table(["path", "configuration", "transactions", "by stage and kind", "latency µs"], rows)


def _fifo(results: Results) -> str:
    sizes = sorted({r["fifo_entries"] for r in results["fifo"]})
    rows = [[f"bursts of {burst}"] + [f"{100 * r['loss']:.1f}%" for r in results["fifo"]
                                      if r["burst"] == burst]
            for burst in sorted({r["burst"] for r in results["fifo"]})]
    return _table(["signals lost"] + [str(s) for s in sizes], rows)


def _shipping(results: Results) -> str:
    by = {(r["n"], r["mode"]): r for r in results["shipping"]}
    rows = []
    for n in sorted({r["n"] for r in results["shipping"]}):
        d, f = by[n, "data"], by[n, "function"]
        rows.append([n, d["mean_latency_us"], d["throughput_per_ms"], d["transactions_per_allocation"],
                     f["mean_latency_us"], f["throughput_per_ms"], f["transactions_per_allocation"]])
    head = ["N", "data: latency µs", "data: alloc/ms", "data: txn/alloc",
            "function: latency µs", "function: alloc/ms", "function: txn/alloc"]
    return _table(head, rows)


def _rtl(results: Results) -> str:
    regions = sorted({r["regions"] for r in results["rtl"]})
    rows = [[f"{e} entries" if e else "no RTL"]
            + [f"{r['mean_latency_us']:.2f} ({100 * r['hit_rate']:.0f}%)"
               for r in results["rtl"] if r["rtl_entries"] == e]
            for e in sorted({r["rtl_entries"] for r in results["rtl"]})]
    return _table(["µs (hit rate)"] + [f"{n} region{'s' * (n > 1)}" for n in regions], rows)


def _figures(results: Results, out: Path) -> None:
    figures.fig5(results["fig5"], out / "fig5.png")
    figures.fig6(results["fig6"], out / "fig6.png")
    figures.speedup_vs_cpu(results["fig7"], "Fig. 7: speedup vs CPU speed, shared L2", out / "fig7.png")
    figures.speedup_vs_cpu(results["fig8"], "Fig. 8: speedup vs CPU speed, fiber link", out / "fig8.png")
    figures.fifo_loss(results["fifo"], out / "fifo_loss.png")
    figures.shipping(results["shipping"], out / "shipping.png")
    figures.rtl(results["rtl"], out / "rtl.png")


def write_markdown(results: Results, out: Path, elapsed_s: float | None = None) -> Path:
    """Write ``report.md`` and its PNG figures into directory ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _figures(results, out)
    text = TEMPLATE.replace("{elapsed}", "" if elapsed_s is None else f" in {elapsed_s:.1f} s")
    sections = {
        "table1": _table1(results), "fig5": _fig5(results), "table4": _table4(results),
        "fig6": _fig6(results), "fig7": _cpu_curve(results["fig7"]), "fig8": _cpu_curve(results["fig8"]),
        "fifo": _fifo(results), "shipping": _shipping(results), "rtl": _rtl(results),
        "params": _table(["parameter", "value", "source", "section / reason", "note"],
                         [list(row) for row in parameter_table()]),
    }
    for key, body in sections.items():
        text = text.replace("{" + key + "}", body)
    path = out / "report.md"
    path.write_text(text)
    return path
