"""A/B of ombm builds in one sitting for the waits that follow their peer (issue 13 item 1, sync.c).

Suites (each run a fresh process of the build):
- ``calls``: the 32 B and 64 KiB echo calls, cross-CPU (client on CPU 0, server child on CPU 1),
  as ``ombm bench rpc`` times them;
- ``load``: aggregate synchronous calls/s of 1, 8 and 16 client processes against one server, nothing
  pinned, as ``ombm bench load`` times them (1 s each).

The builds are ``name=interpreter`` pairs (an interpreter, or a wrapper script setting PYTHONPATH to a
worktree's ``src``, as in ``tools/ab_large.py``); they run in turn, the order rotated every round, and
the medians of the runs are printed with their ratio to the first build. ``--duty BUSY_MS IDLE_MS``
adds a little load for the whole sitting: one unpinned process busy BUSY_MS, then asleep IDLE_MS.

    printf '#!/bin/sh\\nPYTHONPATH=/path/to/main/src exec python3 "$@"\\n' > /tmp/py-a
    printf '#!/bin/sh\\nPYTHONPATH=/path/to/branch/src exec python3 "$@"\\n' > /tmp/py-b
    chmod +x /tmp/py-a /tmp/py-b
    python3 tools/follow_ab.py calls 5 main=/tmp/py-a branch=/tmp/py-b --duty 2 2
    python3 tools/follow_ab.py load 6 main=/tmp/py-a branch=/tmp/py-b

The figures are ratios of one sitting: say what the machine's load was (printed per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SUITES = {
    "calls": r"""
import dataclasses, json
from ombm.cli.bench import rpc

def main():
    quick = rpc.Plan.make(True)
    plan = dataclasses.replace(quick, warmup=200, connects=10, ombm_calls={
        **quick.ombm_calls, "null": 200, "32 B": 20000, "1 KiB": 200, "64 KiB": 2000, "1 MiB": 20})
    calls = rpc.ombm_calls("ombm", (0, 1), plan, True)["calls"]
    print(json.dumps({"32 B call, us": calls["32 B"].median_us, "64 KiB call, us": calls["64 KiB"].median_us}))

if __name__ == "__main__":
    main()
""",
    "load": r"""
import json
from ombm.cli.bench import load

def main():
    out = {}
    for n in (1, 8, 16):
        cell = load.synchronous_load(load._Ombm, n, load.Plan((n,), (load.SYNC,), 1.0, 200))
        out[f"{n} clients, calls/s"] = cell.rate
    print(json.dumps(out))

if __name__ == "__main__":
    main()
""",
}

DUTY = """import sys, time
busy, idle = float(sys.argv[1]) / 1e3, float(sys.argv[2]) / 1e3
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        pass
    time.sleep(idle)
"""


def one_run(python: str, suite: str) -> dict[str, float] | None:
    out = subprocess.run([python, "-c", SUITES[suite]], capture_output=True, text=True, timeout=900)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(f"  failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    return dict(json.loads(lines[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("rounds", type=int)
    parser.add_argument("builds", nargs="+", help="name=interpreter, the first the baseline")
    parser.add_argument("--duty", nargs=2, type=float, metavar=("BUSY_MS", "IDLE_MS"))
    opts = parser.parse_args()
    builds = [tuple(b.split("=", 1)) for b in opts.builds]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in builds}
    duty = subprocess.Popen([sys.executable, "-c", DUTY, *map(str, opts.duty)]) if opts.duty else None
    try:
        for r in range(opts.rounds):
            shift = r % len(builds)
            for name, python in builds[shift:] + builds[:shift]:
                load = " ".join(open("/proc/loadavg").read().split()[:4])
                found = one_run(python, opts.suite)
                if found is not None:
                    results[name].append(found)
                    print(f"round {r + 1} {name} (load {load}): "
                          + ", ".join(f"{k} {v:,.1f}" for k, v in found.items()), flush=True)
    finally:
        if duty is not None:
            duty.kill()
            duty.wait(30)
    base = builds[0][0]
    if not all(results.values()):
        print("a build has no run: no table")
        return 1
    print("| median of runs (ratio to " + base + ") | " + " | ".join(name for name, _ in builds) + " |")
    print("|---" * (len(builds) + 1) + "|")
    for key in results[base][0]:
        meds = [statistics.median(run[key] for run in results[name]) for name, _ in builds]
        print(f"| {key} | " + " | ".join(f"{m:,.1f} ({m / meds[0]:.2f})" if meds[0] else f"{m:,.1f}"
                                          for m in meds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
