"""Futex wake-ups per call, ombm builds side by side (issue 13: a wake already on its way is not made
again, fifo.h's fifo_wake). A count, not a speed: it moves little with the machine's load.

For each build (``name=interpreter``: an interpreter, or a wrapper script that sets PYTHONPATH to a
worktree's ``src``), in turn, a fresh process runs ``ombm bench load``'s cells: one client with
``--depth`` calls outstanding (``call_async``; client on CPU 0, server on CPU 1) and ``--clients``
synchronous client processes (nothing pinned), each for ``--duration`` s, while ``perf stat -a``
counts the system's shared-futex FUTEX_WAKE calls (``syscalls:sys_enter_futex`` with ``op == 1``:
ombm's futexes are shared, most other programs' private) and FUTEX_WAIT calls (``op == 0``). Printed:
per build and cell, the calls made and the wakes and waits per call (the cell's warm-up and
connection included: small beside the window). Needs root (perf, tracepoints).

    python3 tools/wake_count.py 2 main=/tmp/py-a branch=/tmp/py-b --depth 32 --clients 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ONE_RUN = r"""
import json, subprocess, sys
from ombm.cli.bench import load

def counted(run):
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-a", "-e", "syscalls:sys_enter_futex", "--filter", "op == 1",
                             "-e", "syscalls:sys_enter_futex", "--filter", "op == 0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        cell = run()
    finally:
        perf.send_signal(2)
    counts = [int(line.split(",")[0]) for line in perf.communicate(timeout=60)[1].splitlines()
              if line.split(",")[0].strip().isdigit()]
    return cell.calls, counts

def main():
    depth, clients, duration = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    out = {}
    calls, (wakes, waits) = counted(lambda: load.pipelined(load._Ombm, load.Plan((1,), (depth,), duration, 20))[depth])
    out[f"{depth} outstanding"] = (calls, wakes / calls, waits / calls)
    calls, (wakes, waits) = counted(lambda: load.synchronous_load(
        load._Ombm, clients, load.Plan((clients,), (load.SYNC,), duration, 20)))
    out[f"{clients} sync clients"] = (calls, wakes / calls, waits / calls)
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


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
            done = subprocess.run([python, "-c", ONE_RUN, str(opts.depth), str(opts.clients), str(opts.duration)],
                                  capture_output=True, text=True, timeout=900)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                print(f"  {name} failed: {done.stderr[-800:]}", file=sys.stderr)
                continue
            run = json.loads(lines[-1])
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
