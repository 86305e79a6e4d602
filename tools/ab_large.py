"""A/B of two ombm builds in one sitting for payloads: null, 32 B, 1 KiB, 64 KiB and 1 MiB echo calls and
connect+disconnect (issue 13, item 4), and the 1 MiB call with views on both sides (``nan`` for a
build without them).

As ``tools/ab.py``: each build is a Python interpreter with its own ombm (a venv per commit, or a
wrapper script setting PYTHONPATH to a worktree's ``src``); the two run alternately, ``--rounds``
times each, every run a fresh process pinned like ``ombm bench rpc`` (client on CPU 0, server child
on CPU 1); the medians of the per-run medians are compared. The "back to back" rows time batches
of echo calls made one after the other (3000 per batch, the median of 5 batches' means): the
copies' cost when the server is still spinning, which the per-call medians hide on a loaded
machine (there every call may find the server asleep, and a wake-up costs more than the copies).

    printf '#!/bin/sh\\nPYTHONPATH=/path/to/main/src exec python3 "$@"\\n' > /tmp/py-a
    printf '#!/bin/sh\\nPYTHONPATH=/path/to/branch/src exec python3 "$@"\\n' > /tmp/py-b
    chmod +x /tmp/py-a /tmp/py-b
    python3 tools/ab_large.py /tmp/py-a /tmp/py-b --rounds 5

The figures are ratios of one sitting, not absolute numbers: say what the machine's load was.
"""

from __future__ import annotations

import sys

import ab  # tools/ab.py, beside this script: the alternating runs and the table

ONE_RUN = r"""
import dataclasses, json, os, statistics, time
from ombm.cli.bench import core, rpc
from ombm.cli.bench.affinity import pinned

def back_to_back(sizes, batch=3000, batches=5):
    # the mean µs per echo call over batches of calls one after the other, per size: a median
    name = f"ab-large-{os.getpid()}"
    out = {}
    with core.child(rpc._server_child, name, False, cpu=1, lifetime_s=300, terminate=True), pinned(0):
        with rpc._connect(name) as client:
            for label, size in sizes:
                payload = rpc._payload(size)
                for _ in range(300):
                    client.call("echo", payload)
                means = []
                for _ in range(batches):
                    t = time.perf_counter()
                    for _ in range(batch):
                        client.call("echo", payload)
                    means.append((time.perf_counter() - t) / batch * 1e6)
                out[f"{label} back to back"] = statistics.median(means)
    return out

def main():
    quick = rpc.Plan.make(True)
    plan = dataclasses.replace(quick, warmup=200, connects=100, ombm_calls={
        **quick.ombm_calls, "null": 20000, "32 B": 20000, "1 KiB": 20000, "64 KiB": 2000, "1 MiB": 200})
    found = rpc.ombm_calls("ombm", (0, 1), plan, True)
    calls = found["calls"]
    out = {}
    for size in ("null", "32 B", "1 KiB", "64 KiB", "1 MiB"):
        out[f"{size} call"] = calls[size].median_us
    out["connect+disconnect"] = found["connect"]["connect+disconnect"].median_us
    # views (issue 13: Server(views=True), connect(views=True)): nan for a build without them
    lent = rpc.ombm_calls("ombm views", (0, 1), plan, False)["calls"] if "ombm views" in rpc._VARIANTS else {}
    out["1 MiB call, views"] = lent["1 MiB"].median_us if lent else float("nan")
    out.update(back_to_back([("16 KiB", 16384), ("64 KiB", 65536), ("120 KiB", 120000)]))
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def main() -> int:
    return ab.compare(__doc__ or "", ONE_RUN, timeout=900, digits=",.1f", ratio_digits=".2f")


if __name__ == "__main__":
    sys.exit(main())
