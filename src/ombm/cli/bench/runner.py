"""``ombm bench``: run the selected suites, show their tables, and with ``--out`` write them to a file.

Owns the order of the suites (core, rpc, streams, load, net), their progress bars, and the document: a
header (machine, how to reproduce) and one section per suite between ``<!-- bench:<suite> -->``
markers. Running one suite replaces only its own section and keeps the others'. The streams
suite is another module's (``run(progress=None) -> rows``, ``markdown(rows) -> str``); it is
imported lazily and skipped, with the reason, if it cannot be imported. A suite module may say
why it cannot run here (``unavailable() -> str | None``): it is then skipped with that reason.
``all`` is every suite that runs on one host; ``net`` (two network namespaces, root) runs only
when named. A suite that measures issue 13's targets says so (``issue13_targets(result)``); the
runner gathers those of one invocation into one section, ``issue13``, and says which suites of
the issue it did not run (their ratios would come from another run, so none is shown).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import time
import traceback
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ombm.cli.bench import report

SUITES = ("core", "rpc", "streams", "load", "net")
ALL = ("core", "rpc", "streams", "load")  # what ``ombm bench all`` runs
ISSUE13 = ("core", "rpc", "streams", "load")  # the suites that measure issue 13's targets


class _Bar:
    """A suite's progress bar; called as ``(done, total, what)``, ``(what)`` or ``()``."""

    def __init__(self, progress: Progress, suite: str) -> None:
        self._progress, self._suite = progress, suite
        self._task = progress.add_task(suite, total=None)
        self._done = 0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        what = kwargs.get("description") or next((a for a in args if isinstance(a, str)), None)
        numbers = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if len(numbers) >= 2:
            self._done = numbers[0]
            self._progress.update(self._task, completed=numbers[0], total=numbers[1])
        else:
            self.advance()
        if what:
            self._progress.update(self._task, description=f"{self._suite}: {what}")
        self._progress.refresh()

    def advance(self, steps: int = 1) -> None:
        self._done += steps
        self._progress.update(self._task, completed=self._done)
        self._progress.refresh()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self(*args, **kwargs)

    def finish(self) -> None:
        task = self._progress.tasks[self._task]
        total = task.total if task.total is not None else max(self._done, 1)
        self._progress.update(self._task, total=total, completed=total, description=f"{self._suite}: done")
        self._progress.refresh()


def _suite_module(suite: str) -> Any:
    return importlib.import_module(f"ombm.cli.bench.{suite}")


def _run_suite(module: Any, bar: _Bar, quick: bool) -> tuple[str, list[report.Target] | None]:
    """The suite's markdown, and its issue-13 targets if it measures any (``issue13_targets``)."""
    parameters = inspect.signature(module.run).parameters
    kwargs: dict[str, Any] = {}
    if "progress" in parameters:
        kwargs["progress"] = bar
    if "quick" in parameters:
        kwargs["quick"] = quick
    result = module.run(**kwargs)
    text: str = module.markdown(result)
    targets = getattr(module, "issue13_targets", None)
    return text, (targets(result) if targets else None)


def _issue13(found: dict[str, list[report.Target]], command: str, info: dict[str, str]) -> str:
    """One table of issue 13's targets from the suites of this invocation; the others say so."""
    rows = []
    for suite in ISSUE13:
        if suite in found:
            rows += [[suite, *target.cells()] for target in found[suite]]
        else:
            rows.append([suite, f"(the targets of `ombm bench {suite}`)", "", "", "n/a",
                         f"not run by `{command}`: no ratio from another run"])
    return "\n".join([
        "## Targets (issue 13)", "",
        f"*Measured by `{command}` — {report.machine_line(info)}; load average when the run ended "
        f"{_load_average()} (each suite's section gives its own). Each ratio comes from one suite's run; met only as measured.*", "",
        report.md_table(["suite", "target", "goal", "measured", "met?", "how"], rows, "llrrcl"),
        "", "Not a ratio, so not in the table: *no target of the earlier issues gets worse* (see their own "
        "target tables above).", ""])


def _load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min)"


def _section(suite: str, body: str, command: str, info: dict[str, str], seconds: float, quick: bool) -> str:
    if not body.lstrip().startswith("#"):
        body = f"## {suite.capitalize()}\n\n{body}"
    heading, _, rest = body.strip().partition("\n")
    note = (f"*Reproduce: `{command}` — {report.machine_line(info)}, {seconds:.0f} s; load average at the "
            f"end {_load_average()}.*"
            + (" *Quick run: small counts, a smoke test, not numbers to cite.*" if quick else ""))
    return f"{heading}\n\n{note}\n{rest}\n"


def _header(info: dict[str, str], command: str) -> str:
    return "\n".join([
        "ombm measured against the IPC a Python user would otherwise pick, in the same run (DESIGN.md §5). "
        "Generated by `ombm bench`; do not edit by hand.", "",
        f"- machine: {info['cpus']} CPUs, {info['cpu']}, Linux {info['kernel']}",
        f"- Python: {info['python']}",
        f"- last run: `{command}`, {info['date']}",
        "- reproduce: `ombm bench all --out docs/benchmarks.md` (a few minutes), or one suite: `ombm bench core`, "
        "`ombm bench rpc`, `ombm bench streams`, `ombm bench load`; across two hosts (network namespaces, as "
        "root): `ombm bench net`; add `--quick` for a smoke run, `--out FILE` to write the tables there "
        "(replacing only the sections run). Run it on a quiet machine.",
        "- placements: *cross-cpu* = client on CPU 0, server on CPU 1; *same-cpu* = both on CPU 0. On this VM "
        "a kernel wake-up costs tens of µs across CPUs (an idle CPU halts) but a few µs on one CPU, so "
        "both are reported.",
        "- a target is met only as measured; nothing is rounded or retried in its favour.",
    ])


def _write(path: str, header: str, sections: dict[str, str]) -> None:
    try:
        with open(path, encoding="utf-8") as existing:
            document = existing.read()
    except FileNotFoundError:
        document = ""
    document = report.replace_section(document, "header", header)
    for suite, text in sections.items():
        document = report.replace_section(document, suite, text)
    document = report.order_sections(document, ("header", *ALL, "issue13", "net"))
    with open(path, "w", encoding="utf-8") as out:
        out.write(document)


def _reclaim(console: Console) -> None:
    """Children that had to be killed may have left objects: reclaim what dead processes left."""
    from ombm.cli.bench import core

    if not core.killed_children:
        return
    from ombm.core import admin as ombm_inspect

    found = ombm_inspect.gc()
    console.print(f"[yellow]killed {len(core.killed_children)} stuck children; ombm gc reclaimed "
                  f"{found.fifos_removed} FIFOs, {found.segments_removed} segments[/yellow]")


def main(args: argparse.Namespace) -> int:
    """Run ``args.suite`` (all, core, rpc, streams or net); ``args.quick``; write ``args.out`` if given."""
    selected = ALL if args.suite == "all" else (args.suite,)
    command = f"ombm bench {args.suite}" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    console = Console()
    info = report.machine()
    console.rule(f"{command} — {report.machine_line(info)}")
    sections: dict[str, str] = {}
    issue13: dict[str, list[report.Target]] = {}
    failed = []
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # no refresh thread: it would take the GIL in the middle of the measurements
    with Progress(*columns, console=console, auto_refresh=False) as progress:
        for suite in selected:
            try:
                module = _suite_module(suite)
            except Exception as exc:  # streams belongs to another module that may not be there yet
                console.print(f"[yellow]{suite} skipped: cannot import ombm.cli.bench.{suite}: "
                              f"{type(exc).__name__}: {exc}[/yellow]")
                continue
            reason = getattr(module, "unavailable", lambda: None)()
            if reason:
                failed.append(suite)
                progress.console.print(f"[red]{suite} cannot run here: {reason}[/red]")
                continue
            bar = _Bar(progress, suite)
            suite_started = time.monotonic()
            try:
                body, targets = _run_suite(module, bar, args.quick)
                if targets is not None:
                    issue13[suite] = targets
            except Exception:
                failed.append(suite)
                progress.console.print(f"[red]{suite} failed:[/red]\n{traceback.format_exc()}")
                continue
            finally:
                bar.finish()
            sections[suite] = _section(suite, body, command, info, time.monotonic() - suite_started, args.quick)
            progress.console.print(Markdown(sections[suite]))
    _reclaim(console)
    if issue13:
        sections["issue13"] = _issue13(issue13, command, info)
        console.print(Markdown(sections["issue13"]))
    if sections and args.out is not None:
        _write(args.out, _header(info, command), sections)
        console.print(f"wrote {', '.join(sections)} to {args.out} in {time.monotonic() - started:.0f} s")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
    return 1 if failed or not sections else 0

