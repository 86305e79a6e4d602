"""``ombm sim ...``: the simulator's command line (argparse + rich).

This module owns the ``sim`` sub-command: ``report`` (markdown, PNG, JSON)
and one command per scenario printing a rich table. The top-level ``ombm``
CLI calls :func:`add_subcommand`; :func:`main` runs the sub-commands alone.

The simulator is the optional extra ``[sim]`` (simpy, matplotlib): it is imported
when a command runs, and without it every command says which command installs it.
"""

from __future__ import annotations

import argparse
import importlib
import time
import types
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

_console = Console()
INSTALL_HINT = "ombm sim needs the simulator's extra: pip install 'ombm[sim]' (simpy, matplotlib)"


class SimulatorMissing(SystemExit):
    """The ``[sim]`` extra is not installed: the command ends with exit status 2 and the hint."""

    def __init__(self, missing: str) -> None:
        super().__init__(2)
        self.missing = missing


def _sim(module: str) -> types.ModuleType:
    """``ombm.sim.<module>``, or :class:`SimulatorMissing` if simpy or matplotlib is absent."""
    try:
        return importlib.import_module(f"ombm.sim.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("simpy", "matplotlib") and not str(exc.name).startswith(("simpy.", "matplotlib.")):
            raise
        _console.print(f"{INSTALL_HINT} ({exc.name} is not installed)", style="red", markup=False)
        raise SimulatorMissing(str(exc.name)) from None


def _print(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> int:
    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    _console.print(table)
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.out is None and args.json is None:
        _console.print("[red]give --out DIR and/or --json FILE[/red]")
        return 2
    report = _sim("report")
    start = time.perf_counter()
    with Progress(console=_console, transient=True) as progress:
        task = progress.add_task("simulating", total=len(report.STEPS))
        results = report.run_all(lambda label: progress.update(task, advance=1, description=label))
    elapsed = time.perf_counter() - start
    if args.out is not None:
        path = report.write_markdown(results, Path(args.out), elapsed)
        _console.print(f"wrote {path}")
    if args.json is not None:
        report.write_json(results, Path(args.json))
        _console.print(f"wrote {args.json}")
    _console.print(f"simulated in {elapsed:.1f} s")
    return 0


def _table1(args: argparse.Namespace) -> int:
    result = _sim("scenarios").table1()
    sw = {n: (t, i) for n, t, i in result["software"]["components"]}
    hw = {n: (t, i) for n, t, i in result["hardware"]["components"]}
    rows = [[n, *sw.get(n, ("–", "–")), *hw.get(n, ("–", "–"))] for n in dict.fromkeys([*sw, *hw])]
    rows.append(["total", result["software"]["total_us"], result["software"]["total_instructions"],
                 result["hardware"]["total_us"], result["hardware"]["total_instructions"]])
    return _print("Table 1 (simulated; paper 36 µs/249 vs 16 µs/104)",
                  ["component", "software µs", "instr", "hardware µs", "instr"], rows)


def _table4(args: argparse.Namespace) -> int:
    scenarios, paper_rows = _sim("scenarios"), _sim("params").PAPER["table4"]
    result = scenarios.table4()
    rows = [[key, *(f"{result[key][col]:.1f} ({paper})"
                    for col, paper in zip(scenarios.TABLE4_CALLS, paper_rows[key]))]
            for key in result]
    return _print("Table 4 RPC µs, simulated (paper)", ["system", "null", "32 bytes", "1 KB"], rows)


def _fig5(args: argparse.Namespace) -> int:
    rows = [[r["level"], r["config"], r["total"], ", ".join(f"{k}: {n}" for k, n in r["transactions"].items())]
            for r in _sim("scenarios").fig5()]
    return _print("Figure 5: transactions per 32-byte message", ["level", "config", "total", "by stage"], rows)


def _fig6(args: argparse.Namespace) -> int:
    rows = [[r["levels"], r["speedup"], *(100 * r["share"][k] for k in ("signals", "consistency", "signal_on_write"))]
            for r in _sim("scenarios").fig6()]
    return _print("Figure 6 (paper shares: L2 79/6/15, 3 hops 56/37/7)",
                  ["levels", "speedup", "% signals", "% consistency", "% signal-on-write"], rows)


def _curve(name: str, scenario: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        curve = getattr(_sim("scenarios"), scenario)()
        rows = [[r["cpu_speed"], r["software_us"], r["optimized_us"], r["speedup"]] for r in curve]
        return _print(name, ["CPU speed", "software µs", "optimized µs", "speedup"], rows)
    return command


def _fifo(args: argparse.Namespace) -> int:
    rows = [[r["burst"], r["fifo_entries"], r["signals"], r["dropped"], f"{100 * r['loss']:.1f}%"]
            for r in _sim("explore").fifo_curve()]
    return _print("(f) signal loss vs FIFO size", ["burst", "FIFO", "signals", "dropped", "loss"], rows)


def _shipping(args: argparse.Namespace) -> int:
    rows = [[r["n"], r["mode"], r["mean_latency_us"], r["throughput_per_ms"], r["transactions_per_allocation"]]
            for r in _sim("explore").shipping_curve()]
    return _print("(g) work-queue allocator", ["N", "shipping", "latency µs", "alloc/ms", "txn/alloc"], rows)


def _rtl(args: argparse.Namespace) -> int:
    rows = [[r["rtl_entries"], r["regions"], f"{100 * r['hit_rate']:.0f}%", r["mean_latency_us"]]
            for r in _sim("explore").rtl_grid()]
    return _print("(h) reverse TLB", ["entries", "regions", "hit rate", "signal to handler µs"], rows)


def _params(args: argparse.Namespace) -> int:
    return _print("model parameters", ["name", "value", "source", "section / reason", "note"], _sim("params").parameter_table())


_COMMANDS: tuple[tuple[str, str, Callable[[argparse.Namespace], int]], ...] = (
    ("table1", "Table 1: kernel components, both implementations", _table1),
    ("fig5", "Figure 5: bus transactions to deliver one message", _fig5),
    ("table4", "Table 4: Opt./Soft MBM RPC at L2 and L3", _table4),
    ("fig6", "Figure 6: speedup vs levels traversed, with attribution", _fig6),
    ("fig7", "Figure 7: speedup vs CPU speed through an L2",
     _curve("Figure 7: through a shared L2", "fig7")),
    ("fig8", "Figure 8: speedup vs CPU speed over a fiber link",
     _curve("Figure 8: over a fiber link", "fig8")),
    ("fifo", "(f) signal loss vs FIFO size", _fifo),
    ("shipping", "(g) function shipping vs data shipping", _shipping),
    ("rtl", "(h) reverse TLB signal-to-handler latency", _rtl),
    ("params", "every model parameter and its source", _params),
)


def _fill(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="sim_command", required=True)
    rep = commands.add_parser("report", help="write the full report (markdown + PNG) and/or JSON")
    rep.add_argument("--out", metavar="DIR", help="directory for report.md and figures")
    rep.add_argument("--json", metavar="FILE", help="JSON summary")
    rep.set_defaults(func=_report)
    for name, help_text, func in _COMMANDS:
        commands.add_parser(name, help=help_text).set_defaults(func=func)


def add_subcommand(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sim`` and its sub-commands to an argparse ``subparsers``; each sets ``func``."""
    _fill(subparsers.add_parser("sim", help="simulate the paper's ParaDiGM hardware"))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sim`` sub-commands on their own (``ombm sim COMMAND`` without the leading ``ombm``)."""
    parser = argparse.ArgumentParser(prog="ombm sim", description="ParaDiGM simulator")
    _fill(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SimulatorMissing:
        return 2
