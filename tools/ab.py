"""A/B of two ombm builds in one sitting: the cross-CPU signal round trip, the 32 B / null call, connect.

Each build is a Python interpreter with its own ombm installed (a venv per commit). The two are
run alternately, ``--rounds`` times each, every run a fresh process pinned like ``ombm bench``
(client on CPU 0, server/echo child on CPU 1); the medians of the per-run medians are compared.

    python3 -m venv /tmp/va && (cd <clone at commit A> && /tmp/va/bin/pip install .)
    python3 -m venv /tmp/vb && (cd <clone at commit B> && /tmp/vb/bin/pip install .)
    python3 tools/ab.py /tmp/va/bin/python /tmp/vb/bin/python --rounds 5

Run it on a quiet machine: the figures are ratios of one sitting, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ONE_RUN = r"""
import dataclasses, json, statistics
try:
    from ombm.cli.bench import core, rpc
except ImportError:  # builds from before the layers (issue 10)
    from ombm.bench import core, rpc

def main():
    rt = core.ombm_round_trip("ombm adaptive", (0, 1), 20000, 2000)
    plan_sizes = rpc.Plan.make(True).ombm_calls  # every size this build's plan knows (1 MiB since issue 13)
    plan = dataclasses.replace(rpc.Plan.make(True), warmup=2000,
                               ombm_calls={**plan_sizes, "null": 30000, "32 B": 30000, "1 KiB": 2000, "64 KiB": 200})
    found = rpc.ombm_calls("ombm", (0, 1), plan, True)
    calls = found["calls"]
    print(json.dumps({"round trip": statistics.median(rt), "32 B call": calls["32 B"].median_us,
                      "null call": calls["null"].median_us,
                      "connect+disconnect": found["connect"]["connect+disconnect"].median_us}))

if __name__ == "__main__":
    main()
"""


def one_run(python: str, source: str = ONE_RUN, timeout: float = 600) -> dict[str, float]:
    """Run ``source`` (a script printing one JSON object as its last line) in ``python``."""
    done = subprocess.run([python, "-c", source], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def compare(description: str, source: str = ONE_RUN, timeout: float = 600, digits: str = ".3f",
            ratio_digits: str = ".3f") -> int:
    """The command line of an A/B tool: run ``source`` in builds A and B alternately, print the table."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the interpreter of build A (the baseline)")
    parser.add_argument("b", help="the interpreter of build B")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for label, python in (("A", args.a), ("B", args.b)) if round_ % 2 == 0 else (("B", args.b), ("A", args.a)):
            runs[label].append(one_run(python, source, timeout))
            print(f"round {round_ + 1} {label}: {runs[label][-1]}", file=sys.stderr, flush=True)
    print("| µs, median of per-run medians | A | B | B / A |")
    print("|---|---|---|---|")
    for key in runs["A"][0]:
        a = statistics.median(r[key] for r in runs["A"])
        b = statistics.median(r[key] for r in runs["B"])
        print(f"| {key} | {a:{digits}} | {b:{digits}} | {b / a:{ratio_digits}} |")
    return 0


def main() -> int:
    return compare(__doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
