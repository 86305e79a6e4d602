"""A/B of the waits (issue 13) in one sitting: synchronous load and the one-CPU signal round trip.

Each build is an interpreter with its own ombm (a venv, or a wrapper script that sets PYTHONPATH to
a worktree's ``src``). The builds run alternately, ``--rounds`` times each, every run a fresh
process; beside them, once per round, the kernel-based servers of ``ombm bench load`` (with build
A's code). Per run: aggregate synchronous null calls/s with each client count (``ombm bench
load``'s method, nothing pinned), and the same-cpu signal round trip of ombm adaptive and of an
os.pipe ping-pong (``ombm bench core``'s method, both on CPU 0). ``--env KEY=VALUE`` runs build B
with that variable set (e.g. ``OMBM_LOAD_AWARE=0`` against the same build).

    python3 tools/wait_ab.py /tmp/pyA /tmp/pyB --rounds 2 --clients 1,2,4,8,16

``--suite onecpu`` measures instead, per run, what the one-CPU hand-over (issue 13, item 3) must win
and must not lose: the signal round trip on one CPU (ombm adaptive and an os.pipe ping-pong, the
target's ratio), the null and 32 B calls on one CPU (and the 32 B call over os.pipe + msgpack), and
the cross-CPU signal round trip and 32 B call (no kernel servers then):

    python3 tools/wait_ab.py /tmp/pyA /tmp/pyB --rounds 4 --suite onecpu

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
import dataclasses, json, statistics, sys
from ombm.cli.bench import core, load, peers, rpc

def one_cpu():
    # the one-CPU figures (and the cross-CPU ones that must not get worse), µs
    pipe = next(p for p in peers.signal_peers() if p.name == "os.pipe")
    msgpack_pipe = next(p for p in peers.rpc_peers() if p.name == "os.pipe + msgpack")
    plan = dataclasses.replace(rpc.Plan.make(True), warmup=2000, ombm_calls={
        **rpc.Plan.make(True).ombm_calls, "null": 20000, "32 B": 20000, "1 KiB": 200, "64 KiB": 20})
    found = {}
    for placement, where in (((0, 0), "same-cpu"), ((0, 1), "cross-cpu")):
        found[f"{where} signal round trip"] = statistics.median(
            core.ombm_round_trip("ombm adaptive", placement, 20000, 2000))
        calls = rpc.ombm_calls("ombm", placement, plan, False)["calls"]
        if where == "same-cpu":
            found["same-cpu os.pipe ping-pong"] = statistics.median(pipe.roundtrip(1, 20000, placement, 2000))
            found["same-cpu null call"] = calls["null"].median_us
        found[f"{where} 32 B call"] = calls["32 B"].median_us
        if where == "same-cpu":
            found["same-cpu 32 B call, os.pipe + msgpack"] = statistics.median(
                msgpack_pipe.roundtrip(32, 10000, placement, 2000))
    return found

def main():
    if sys.argv[1] == "onecpu":
        print(json.dumps(one_cpu()))
        return
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
    parser.add_argument("--suite", choices=("load", "onecpu"), default="load")
    args = parser.parse_args()
    env_b = dict(item.split("=", 1) for item in args.env)
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": [], "kernel": []}
    print(f"load average at the start: {os.getloadavg()}", file=sys.stderr)
    for round_ in range(args.rounds):
        order = [("A", args.a, {}), ("B", args.b, env_b)]
        for label, python, env in order if round_ % 2 == 0 else order[::-1]:
            clients = "onecpu" if args.suite == "onecpu" else args.clients
            runs[label].append(one_run(python, clients, args.duration, "ombm", env))
            print(f"round {round_ + 1} {label}: {runs[label][-1]}", file=sys.stderr, flush=True)
        if args.suite == "load":
            runs["kernel"].append(one_run(args.a, args.clients, args.duration, "kernel", {}))
            print(f"round {round_ + 1} kernel: {runs['kernel'][-1]}", file=sys.stderr, flush=True)
    print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)
    if args.suite == "onecpu":
        return one_cpu_table(runs)
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


def one_cpu_table(runs: dict[str, list[dict[str, float]]]) -> int:
    """The medians of the runs, B / A, and the one-CPU targets' ratios (issue 13) of each build."""
    med = {label: {key: statistics.median(r[key] for r in runs[label]) for key in runs[label][0]} for label in "AB"}
    print("| median of the runs, µs | A | B | B / A |")
    print("|:--|--:|--:|--:|")
    for key in med["A"]:
        print(f"| {key} | {med['A'][key]:.2f} | {med['B'][key]:.2f} | {med['B'][key] / med['A'][key]:.3f} |")
    for label in "AB":
        m = med[label]
        print(f"{label}: one CPU, signal round trip / os.pipe {m['same-cpu signal round trip'] / m['same-cpu os.pipe ping-pong']:.3f}"
              f" (target <= 0.8); 32 B call / os.pipe + msgpack "
              f"{m['same-cpu 32 B call'] / m['same-cpu 32 B call, os.pipe + msgpack']:.3f} (target <= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
