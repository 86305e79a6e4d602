"""Futex wake-ups per call, ombm builds side by side (issue 13: a wake already on its way is not made
again, fifo.h's fifo_wake). A count, not a speed: it moves little with the machine's load.

For each build (``name=interpreter``: an interpreter, or a wrapper script that sets PYTHONPATH to a
worktree's ``src``), in turn, a fresh process runs ``ombm bench load``'s cells: one client with
``--depth`` calls outstanding (``call_async``; client on CPU 0, server on CPU 1) and ``--clients``
synchronous client processes (nothing pinned), each for ``--duration`` s, each cell a process run under
``perf stat``, which counts the shared-futex FUTEX_WAKE calls (``syscalls:sys_enter_futex`` with ``op == 1``:
ombm's futexes are shared) and FUTEX_WAIT calls (``op == 0``) of the cell's own process tree (perf
follows the cell's children: the server and the clients; no other program of the machine counts).
Printed: per build and cell, the calls made and the wakes and waits per call (the cell's start-up,
warm-up and connections included: small beside the window). Needs root (perf, tracepoints).

    python3 tools/wake_count.py 2 main=/tmp/py-a branch=/tmp/py-b --depth 32 --clients 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ONE_CELL = r"""
import json, sys
from ombm.cli.bench import load

def main():
    cell, n, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if cell == "pipelined":
        found = load.pipelined(load._Ombm, load.Plan((1,), (n,), duration, 20))[n]
    else:
        found = load.synchronous_load(load._Ombm, n, load.Plan((n,), (load.SYNC,), duration, 20))
    print(json.dumps(found.calls))

if __name__ == "__main__":
    main()
"""
EVENTS = ["-e", "syscalls:sys_enter_futex", "--filter", "op == 1", "-e", "syscalls:sys_enter_futex", "--filter", "op == 0"]


def one_cell(python: str, cell: str, n: int, duration: float) -> tuple[int, float, float] | None:
    """(calls, wakes per call, waits per call) of one cell, counted over its process tree only."""
    done = subprocess.run(["perf", "stat", "-x", ",", *EVENTS, "--", python, "-c", ONE_CELL, cell, str(n), str(duration)],
                          capture_output=True, text=True, timeout=900)
    counts = [int(line.split(",")[0]) for line in done.stderr.splitlines() if line.split(",")[0].strip().isdigit()]
    lines = [line for line in done.stdout.splitlines() if line.strip().isdigit()]
    if done.returncode or not lines or len(counts) != 2:
        print(f"  {python} {cell} failed: {done.stderr[-800:]}", file=sys.stderr)
        return None
    calls = int(lines[-1])
    return calls, counts[0] / calls, counts[1] / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int)
    parser.add_argument("builds", nargs="+", help="name=interpreter")
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=1.0)
    opts = parser.parse_args()
    builds = [tuple(b.split("=", 1)) for b in opts.builds]
    found: dict[str, list[dict[str, list[float]]]] = {name: [] for name, _ in builds}
    for r in range(opts.rounds):
        for name, python in builds[r % len(builds):] + builds[:r % len(builds)]:
            load = " ".join(open("/proc/loadavg").read().split()[:4])
            run = {}
            for cell, n in (("pipelined", opts.depth), ("sync", opts.clients)):
                got = one_cell(python, cell, n, opts.duration)
                if got is not None:
                    run[f"{n} outstanding" if cell == "pipelined" else f"{n} sync clients"] = got
            if len(run) < 2:
                continue
            found[name].append(run)
            print(f"round {r + 1} {name} (load {load}): " + "; ".join(
                f"{cell}: {calls:,} calls, {wakes:.3f} wakes, {waits:.3f} waits per call"
                for cell, (calls, wakes, waits) in run.items()), flush=True)
    print("\n| median of runs | " + " | ".join(f"{name}: wakes / waits per call" for name, _ in builds) + " |")
    print("|---" * (len(builds) + 1) + "|")
    cells = next(iter(r for runs in found.values() for r in runs), {})
    for cell in cells:
        row = [f"{statistics.median(r[cell][1] for r in runs):.3f} / {statistics.median(r[cell][2] for r in runs):.3f}"
               if runs else "—" for runs in found.values()]
        print(f"| {cell} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
