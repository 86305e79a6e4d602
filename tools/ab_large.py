"""A/B of two ombm builds in one sitting for large payloads: 64 KiB and 1 MiB echo calls, beside the
32 B call and connect+disconnect (issue 13, item 4).

As ``tools/ab.py``: each build is a Python interpreter with its own ombm (a venv per commit, or a
wrapper script setting PYTHONPATH to a worktree's ``src``); the two run alternately, ``--rounds``
times each, every run a fresh process pinned like ``ombm bench rpc`` (client on CPU 0, server child
on CPU 1); the medians of the per-run medians are compared.

    printf '#!/bin/sh\\nPYTHONPATH=/path/to/main/src exec python3 "$@"\\n' > /tmp/py-a
    printf '#!/bin/sh\\nPYTHONPATH=/path/to/branch/src exec python3 "$@"\\n' > /tmp/py-b
    chmod +x /tmp/py-a /tmp/py-b
    python3 tools/ab_large.py /tmp/py-a /tmp/py-b --rounds 5

The figures are ratios of one sitting, not absolute numbers: say what the machine's load was.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ONE_RUN = r"""
import dataclasses, json
from ombm.cli.bench import rpc

def main():
    quick = rpc.Plan.make(True)
    plan = dataclasses.replace(quick, warmup=200, connects=100, ombm_calls={
        **quick.ombm_calls, "null": 200, "32 B": 20000, "1 KiB": 200, "64 KiB": 2000, "1 MiB": 200})
    found = rpc.ombm_calls("ombm", (0, 1), plan, True)
    calls = found["calls"]
    out = {}
    for size in ("32 B", "64 KiB", "1 MiB"):
        out[f"{size} call"] = calls[size].median_us
    out["connect+disconnect"] = found["connect"]["connect+disconnect"].median_us
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def one_run(python: str) -> dict[str, float]:
    done = subprocess.run([python, "-c", ONE_RUN], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the interpreter of build A (the baseline)")
    parser.add_argument("b", help="the interpreter of build B")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for label, python in (("A", args.a), ("B", args.b)) if round_ % 2 == 0 else (("B", args.b), ("A", args.a)):
            runs[label].append(one_run(python))
            print(f"round {round_ + 1} {label}: {runs[label][-1]}", file=sys.stderr, flush=True)
    print("| µs, median of per-run figures | A | B | B / A |")
    print("|---|---|---|---|")
    for key in runs["A"][0]:
        a = statistics.median(r[key] for r in runs["A"])
        b = statistics.median(r[key] for r in runs["B"])
        print(f"| {key} | {a:,.1f} | {b:,.1f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
