"""A/B of small messages one at a time (issue 13, item 5): two ombm source trees, alternately, in one sitting.

Each run is a fresh interpreter with ``PYTHONPATH=<tree>/src`` (each tree built in place:
``python setup.py build_ext --inplace``) and measures, with the streams suite's own functions
(``ombm.cli.bench.streams``: writer on CPU 0, reader on CPU 1, the same configurations):

- ``stream 4K``: a Stream of 4 KiB messages, ``send`` / ``recv`` one at a time; ``socketpair 4K``:
  the suite's socketpair peer; ``stream 4K / socketpair``: their ratio in the run (issue 13's target:
  at least 2); ``stream 4K batched``: ``send_many`` of 32 / ``recv_many``;
- ``stream 1M`` and ``Pipe 1M``: 1 MiB messages, and their ratio (issue 13's target: at least 5);
- ``raw 4K lost``: the share of 4 KiB raw frames a reader never got: the zero-copy ``recv_view``
  reader and (``..., recv_many``) the copying ``recv_many`` reader;
- ``us/msg send`` / ``us/msg recv``: the CPU time per 4 KiB message of ``send`` and ``recv`` in this
  process on CPU 0 (no wake-ups: the code's own cost), the 10th percentile of 300 batches of 32;
  ``signals/msg``: signals the writer raised per message in a cross-CPU run of ``send`` / ``recv``.

Throughputs in GB/s; every figure is the median of the runs of its tree.  Usage::

    python3 tools/stream_ab.py /work/main /work/wt-stream4k --rounds 5

The machine is shared: say what the load was (printed before, after and with every run), and compare
ratios of one sitting.
"""

from __future__ import annotations

import argparse
import statistics

from batch_ab import run_alternately  # tools/: the same driver of alternate runs

ONE_RUN = r"""
import json, time
from ombm import _native
from ombm.channels.stream import Stream
from ombm.cli.bench import peers, streams
from ombm.cli.bench.affinity import PLACEMENTS, pinned

CROSS = PLACEMENTS["cross-cpu"]
K4, M1 = 4 << 10, 1 << 20


def in_process():
    m, n, rounds = bytes(K4), 32, 300
    ts, tr = [], []
    with pinned(CROSS[0]):
        with Stream.create(None, slot_bytes=64 << 10, slots=64) as w, Stream.open(w.name) as r:
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(n):
                    w.send(m, timeout=5)
                t1 = time.perf_counter()
                for _ in range(n):
                    r.recv(5)
                tr.append(time.perf_counter() - t1)
                ts.append(t1 - t0)
    return {"us/msg send": sorted(ts)[rounds // 10] / n * 1e6, "us/msg recv": sorted(tr)[rounds // 10] / n * 1e6}


def peer(name, size, total):
    p = next(p for p in peers.stream_peers() if p.name == name)
    return streams.peer_throughput(p, size, total, CROSS)["bytes_per_s"] / 1e9


def main():
    out = {}
    before = _native.writer_signals_sent()
    one = streams.stream_throughput(K4, 64 << 20, CROSS)
    out["signals/msg"] = (_native.writer_signals_sent() - before) / one["messages"]
    out["stream 4K"] = one["bytes_per_s"] / 1e9
    out["socketpair 4K"] = peer("socketpair", K4, 64 << 20)
    out["stream 4K / socketpair"] = out["stream 4K"] / out["socketpair 4K"]
    out["stream 4K batched"] = streams.stream_throughput(K4, 64 << 20, CROSS, batched=True)["bytes_per_s"] / 1e9
    out["stream 1M"] = streams.stream_throughput(M1, 256 << 20, CROSS)["bytes_per_s"] / 1e9
    out["Pipe 1M"] = peer("multiprocessing.Pipe", M1, 256 << 20)
    out["stream 1M / Pipe 1M"] = out["stream 1M"] / out["Pipe 1M"]
    out["raw 4K lost"] = streams.raw_throughput(K4, 64 << 20, CROSS)["lost"]
    out["raw 4K lost, recv_many"] = streams.raw_throughput(K4, 64 << 20, CROSS, copy=True, batched=True)["lost"]
    out.update(in_process())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="source tree A (its src/ goes on PYTHONPATH)")
    parser.add_argument("b", help="source tree B")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = run_alternately(args.a, args.b, args.rounds, ONE_RUN, "stream-ab", 900)
    keys = list(dict.fromkeys(k for runs in results.values() for run in runs for k in run))
    print(f"\n| median of {args.rounds} | {args.a} | {args.b} | B / A |\n|:--|--:|--:|--:|")
    for k in keys:
        medians = []
        for tree in (args.a, args.b):
            values = [run[k] for run in results[tree] if k in run]
            medians.append(statistics.median(values) if values else None)
        a, b = medians
        ratio = f"{b / a:.2f}" if a and b is not None else "—"
        print(f"| {k} | {'—' if a is None else f'{a:.3f}'} | {'—' if b is None else f'{b:.3f}'} | {ratio} |")


if __name__ == "__main__":
    main()
