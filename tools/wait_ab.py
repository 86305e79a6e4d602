"""A/B of the waits (issue 13) in one sitting: synchronous load and the one-CPU signal round trip.

Each build is an interpreter with its own ombm (a venv, or a wrapper script that sets PYTHONPATH to
a worktree's ``src``). The builds run alternately, ``--rounds`` times each, every run a fresh
process; beside them, once per round, the kernel-based servers of ``ombm bench load`` (with build
A's code). Per run: aggregate synchronous null calls/s with each client count (``ombm bench
load``'s method, nothing pinned), and the same-cpu signal round trip of ombm adaptive and of an
os.pipe ping-pong (``ombm bench core``'s method, both on CPU 0). ``--env KEY=VALUE`` runs build B
with that variable set (e.g. ``OMBM_LOAD_AWARE=0`` against the same build).

    python3 tools/wait_ab.py /tmp/pyA /tmp/pyB --rounds 2 --clients 1,2,4,8,16

The figures are ratios of one sitting: the machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE_RUN = r"""
import json, statistics, sys
from ombm.cli.bench import core, load, peers

def main():
    clients, duration, systems = tuple(int(c) for c in sys.argv[1].split(",")), float(sys.argv[2]), sys.argv[3]
    plan = load.Plan(clients, (load.SYNC,), duration, 200)
    found = {}
    for system in load.SYSTEMS:
        if (system.name == "ombm") != (systems == "ombm") or (systems != "ombm" and not system.kernel):
            continue
        if system.missing():
            continue
        for n in clients:
            found[f"{system.name}, {n}"] = load.synchronous_load(system, n, plan).rate / 1000
    if systems == "ombm":
        pipe = next(p for p in peers.signal_peers() if p.name == "os.pipe")
        found["same-cpu signal round trip, us"] = statistics.median(
            core.ombm_round_trip("ombm adaptive", (0, 0), 10000, 2000))
        found["same-cpu os.pipe ping-pong, us"] = statistics.median(pipe.roundtrip(1, 10000, (0, 0), 2000))
    print(json.dumps(found))

if __name__ == "__main__":
    main()
"""


def one_run(python: str, clients: str, duration: float, systems: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([python, "-c", ONE_RUN, clients, str(duration), systems], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the interpreter of build A (the baseline)")
    parser.add_argument("b", help="the interpreter of build B")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds each client calls, per cell")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for build B's runs")
    args = parser.parse_args()
    env_b = dict(item.split("=", 1) for item in args.env)
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": [], "kernel": []}
    print(f"load average at the start: {os.getloadavg()}", file=sys.stderr)
    for round_ in range(args.rounds):
        order = [("A", args.a, {}), ("B", args.b, env_b)]
        for label, python, env in order if round_ % 2 == 0 else order[::-1]:
            runs[label].append(one_run(python, args.clients, args.duration, "ombm", env))
            print(f"round {round_ + 1} {label}: {runs[label][-1]}", file=sys.stderr, flush=True)
        runs["kernel"].append(one_run(args.a, args.clients, args.duration, "kernel", {}))
        print(f"round {round_ + 1} kernel: {runs['kernel'][-1]}", file=sys.stderr, flush=True)
    print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)
    print("| median of the runs | A | B | B / A | best kernel-based server |")
    print("|:--|--:|--:|--:|--:|")
    for key in runs["A"][0]:
        a = statistics.median(r[key] for r in runs["A"])
        b = statistics.median(r[key] for r in runs["B"])
        n = key.rsplit(", ", 1)[-1]
        kernel = [statistics.median(r[k] for r in runs["kernel"]) for k in runs["kernel"][0] if k.endswith(f", {n}")]
        best = f"{max(kernel):.1f}" if kernel and not key.startswith("same-cpu") else ""
        print(f"| {key} | {a:.2f} | {b:.2f} | {b / a:.3f} | {best} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
