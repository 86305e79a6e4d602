"""A/B of ombm builds in one sitting for many synchronous clients (issue 13 item 1, `ombm bench load`'s
synchronous rows): aggregate null calls/s of 1, 2, 4, 8 and 16 client processes against one server,
nothing pinned, each client ``--duration`` seconds after one barrier (load.synchronous_load, the
bench's own method).

Each build is ``name=interpreter`` (an interpreter, or a wrapper script that sets PYTHONPATH to a
worktree's ``src``); the builds run in turn, a fresh process per run, the order rotated every round.
Printed per run: the machine's load and each count's calls/s; at the end, per build, the medians and
each count's ratio to the same run's 1-client figure (median over the runs of the per-run ratio: the
issue's target is >= 0.8 at every count), and the ratio of each build's median to the first build's.

``--perf`` also counts, system-wide (``perf stat -a``, so the other work of the machine is in it too),
the context switches, futex and sched_yield system calls during each cell, per call.

    printf '#!/bin/sh\\nPYTHONPATH=/work/main/src exec python3 "$@"\\n' > /tmp/py-a
    printf '#!/bin/sh\\nPYTHONPATH=/work/wt-x/src exec python3 "$@"\\n' > /tmp/py-b
    chmod +x /tmp/py-a /tmp/py-b
    python3 tools/clients_ab.py 4 main=/tmp/py-a branch=/tmp/py-b --clients 1,8,16

The figures are ratios of one sitting: say what the machine's load was (printed per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ONE_RUN = r"""
import json, os, signal, subprocess, sys, threading, time
from ombm.cli.bench import load

EVENTS = "context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_sched_yield"

def counted(n, plan):
    # perf over the calls' window only: started once every client said ready (the parent then
    # opens the barrier), for the clients' window
    found = {}
    real_expect, readies = load.expect, []
    def expect(control, what, *args):
        got = real_expect(control, what, *args)
        if what == "ready":
            readies.append(1)
            if len(readies) == n:
                found["perf"] = subprocess.Popen(
                    ["perf", "stat", "-x", ",", "-e", EVENTS, "-a", "sleep", str(plan.duration_s)],
                    stderr=subprocess.PIPE, text=True)
        return got
    load.expect = expect
    try:
        cell = load.synchronous_load(load._Ombm, n, plan)
    finally:
        load.expect = real_expect
    counts = {}
    for line in found["perf"].communicate(timeout=60)[1].splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            counts[parts[2].split(":")[-1]] = int(parts[0])
    return cell, counts

def main():
    clients, duration, perf = tuple(int(c) for c in sys.argv[1].split(",")), float(sys.argv[2]), sys.argv[3] == "1"
    out = {}
    for n in clients:
        plan = load.Plan((n,), (load.SYNC,), duration, 200)
        if perf:
            cell, counts = counted(n, plan)
            calls = cell.rate * duration
            for k, v in counts.items():
                out[f"{n}: {k}/call"] = v / calls
        else:
            cell = load.synchronous_load(load._Ombm, n, plan)
        out[f"{n}"] = cell.rate
        out[f"{n}: CPU us/call"] = getattr(cell, "cpu_us", float("nan"))  # (a build whose bench has no CPU count)
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def json_run(python: str, script: str, *args: str, timeout: float = 1800) -> dict[str, float] | None:
    """Run ``script`` with ``args`` in a fresh ``python``: the last JSON line it printed, or None
    (its error said) if it failed."""
    done = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  {python} failed: {done.stderr[-800:]}", file=sys.stderr)
        return None
    return dict(json.loads(lines[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int)
    parser.add_argument("builds", nargs="+", help="name=interpreter, the first the baseline")
    parser.add_argument("--clients", default="1,2,4,8,16", help="client counts (comma-separated; 1 first)")
    parser.add_argument("--duration", type=float, default=1.0, help="each client's window, s")
    parser.add_argument("--perf", action="store_true", help="count switches and system calls per call (perf stat)")
    opts = parser.parse_args()
    builds = [tuple(b.split("=", 1)) for b in opts.builds]
    counts = [c.strip() for c in opts.clients.split(",")]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in builds}
    for r in range(opts.rounds):
        shift = r % len(builds)
        for name, python in builds[shift:] + builds[:shift]:
            load = " ".join(open("/proc/loadavg").read().split()[:4])
            found = json_run(python, ONE_RUN, opts.clients, str(opts.duration), "1" if opts.perf else "0")
            if found is None:
                continue
            results[name].append(found)
            print(f"round {r + 1} {name} (load {load}): "
                  + ", ".join(f"{k} {v / 1000:,.1f} k" for k, v in found.items() if k in counts)
                  + "".join(f"; {k} {v:.2f}" for k, v in found.items() if k not in counts), flush=True)
    if not all(results.values()):
        print("a build has no run: no table")
        return 1
    base = builds[0][0]
    keys = [k for k in results[base][0] if k in counts]
    print(f"\n| median of runs, k calls/s (÷ the run's 1 client) | " + " | ".join(n for n, _ in builds)
          + f" | ÷ {base} |")
    print("|---" * (len(builds) + 2) + "|")
    for key in keys:
        meds = [statistics.median(run[key] for run in results[name]) for name, _ in builds]
        rel = [statistics.median(run[key] / run[keys[0]] for run in results[name]) for name, _ in builds]
        print(f"| {key} clients | " + " | ".join(f"{m / 1000:,.1f} ({x:.2f})" for m, x in zip(meds, rel))
              + " | " + ", ".join(f"{m / meds[0]:.2f}" for m in meds[1:]) + " |")
    extra = [k for k in results[base][0] if k not in counts]
    for key in extra:
        meds = [statistics.median(run[key] for run in results[name] if key in run) for name, _ in builds]
        print(f"| {key} | " + " | ".join(f"{m:.2f}" for m in meds) + " | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
