"""The ``ombm`` command: thin wrappers over the library (DESIGN.md §1.5).

``ombm ls`` and ``ombm gc`` look at and reclaim shared objects, ``ombm demo``
shows the system working, ``ombm bench`` measures it against its peers,
``ombm sim`` runs the simulator of the paper's hardware and ``ombm bridge``
replicates segments with other hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table


def _ls(args: argparse.Namespace) -> int:
    from ombm.core import admin as inspect

    segments = inspect.list_segments()
    if args.json:
        print(json.dumps([_segment_record(s) for s in segments], indent=2))
        return 0
    table = Table(title="ombm segments", show_lines=False)
    for col in ("name", "size", "mode", "unit", "sow", "holders", "receivers", "FIFO depth", "drops", "note"):
        table.add_column(col, justify="right" if col in ("size", "unit", "holders", "receivers", "drops") else "left")
    for s in segments:
        live = [r for r in s.receivers if r.alive]
        dead = len(s.receivers) - len(live)
        table.add_row(
            s.name,
            str(s.size),
            s.mode,
            str(s.unit),
            "yes" if s.signal_on_write else "no",
            str(s.holders),
            str(len(live)) + (f" (+{dead} dead)" if dead else ""),
            ",".join(str(r.depth) for r in live) or "-",
            str(sum(r.drops for r in s.receivers)),
            s.error or ("orphaned: run ombm gc" if s.holders == 0 else ""),
        )
    # piped or redirected: no terminal width to fit, so no name is cut (a table as wide as its cells)
    console = Console() if sys.stdout.isatty() else Console(width=100_000)
    console.print(table)
    return 0


def _segment_record(s: object) -> dict[str, object]:
    """One segment of ``ombm ls --json``: every field the table shows, uncut, plus each receiver."""
    from dataclasses import asdict, is_dataclass

    assert is_dataclass(s) and not isinstance(s, type)
    return asdict(s)


def _gc(args: argparse.Namespace) -> int:
    from ombm.core import admin as inspect

    report = inspect.gc()
    Console().print(
        f"reclaimed {report.fifos_removed} signal FIFOs, {report.sockets_removed} sockets, "
        f"{report.entries_freed} directory entries, {report.segments_removed} segments of dead processes"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ombm.cli import demo

    return demo.main(receivers=args.receivers, iterations=args.iterations)


def _bench(args: argparse.Namespace) -> int:
    from ombm.cli.bench import runner

    return runner.main(args)


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (argparse prints a one-line error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def new_file(text: str) -> str:
    """An argparse type: a file path whose folder exists (nothing is created on the way)."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"no such folder: {folder}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a folder, not a file: {text}")
    return text


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ombm")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from ombm import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ombm", description="optimized memory-based messaging")
    parser.add_argument("--version", action="version", version=f"ombm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list segments, binders, receivers, FIFO depth and drops")
    ls.add_argument("--json", action="store_true", help="print the segments as JSON (every field, uncut)")
    ls.set_defaults(func=_ls)
    sub.add_parser("gc", help="reclaim objects left behind by dead processes").set_defaults(func=_gc)
    demo = sub.add_parser("demo", help="signal-on-write to several receiver processes, then RPC")
    demo.add_argument("--receivers", type=positive_int, default=3, help="receiver processes (default 3)")
    demo.add_argument("--iterations", type=positive_int, default=20000, help="round trips to time (default 20000)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="measure ombm against the IPC a Python user would otherwise pick")
    bench.add_argument("suite", nargs="?", default="all", choices=("all", "core", "rpc", "streams", "load", "net"),
                       help="all (core, rpc, streams, load) or one suite; net needs root: it makes two network namespaces")
    bench.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    bench.add_argument("--out", type=new_file, default=None, metavar="FILE",
                       help="also write the tables into this markdown file, replacing only the sections run "
                            "(e.g. docs/benchmarks.md); its folder must exist. Without it nothing is written")
    bench.set_defaults(func=_bench)
    from ombm.cli.sim import add_subcommand

    add_subcommand(sub)
    from ombm.cli import bridge  # `ombm bridge`: channels across machines (docs/net.md)

    bridge.add_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)  # every command's func returns its exit status
    return status


if __name__ == "__main__":
    sys.exit(main())
