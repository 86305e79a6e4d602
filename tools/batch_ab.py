"""A/B of small messages in batches (issue 13, item 5): two ombm source trees, alternately, in one sitting.

Each run is a fresh interpreter with ``PYTHONPATH=<tree>/src`` (each tree built in place:
``python setup.py build_ext --inplace``), writer on CPU 0 and reader on CPU 1 as ``ombm bench streams``
pins them, and measures:

- ``stream 4K``: a Stream of 4 KiB messages, ``send`` / ``recv`` one at a time (64 x 64 KiB slots, as
  the bench); ``stream 4K batched``: the same messages with ``send_many`` (32 per call) and
  ``recv_many`` (only in a tree that has them); ``stream 16K batched`` likewise at 16 KiB;
- ``stream 1M``: 1 MiB messages, ``send`` / ``recv`` (16 x 1 MiB slots); ``Pipe 1M``: the bench's
  multiprocessing.Pipe peer at 1 MiB, and the ratio (issue 13's target: at least 5);
- ``raw 4K lost``: the share of 4 KiB raw frames (64 units, written as fast as possible) a copying
  reader never got, with ``recv`` and (``raw 4K lost, recv_many``) with ``recv_many``;
- ``socketpair 4K``: the bench's socketpair peer at 4 KiB; ``batched 4K / socketpair``: the ratio of
  the two in the same run (issue 13's target: at least 2);
- ``us/msg ...``: where a 4 KiB message's time goes, in this process on CPU 0 (both ends, no
  wake-ups, the ring in cache): the CPU time per message of ``send``, ``recv``, ``send_many`` (32),
  ``recv_many``, a raw ``write`` and a raw ``recv_many``, each the 10th percentile of 300 batches
  of 32 (the machine is shared: the low percentile is the part that is the code's).

Throughputs in GB/s; every figure is the median of the runs of its tree.  Usage::

    python3 tools/batch_ab.py /work/main /work/wt-batch --rounds 5

The machine is shared: say what the load was (printed before and after), and compare ratios of one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE_RUN = r"""
import json, sys, time
from ombm.channels.raw import EndOfStream, RawChannel
from ombm.channels.stream import Stream
from ombm.cli.bench import core, peers, streams
from ombm.cli.bench.affinity import PLACEMENTS, pinned

CROSS = PLACEMENTS["cross-cpu"]
BATCH = 32


def stream_sink(control, name, count, batched):
    with Stream.open(name, timeout=30) as s:
        control.send(("ready",))
        got = 0
        while got < count:
            if batched:
                for m in s.recv_many(BATCH, timeout=30):
                    got += 1
                    m[0]
            else:
                s.recv(30)[0]
                got += 1
        control.send(("ack", got))
        control.recv()


def stream(size, total, batched):
    count = total // size
    slot_bytes, slots = streams.stream_config(size)
    message = bytes(size)
    with pinned(CROSS[0]), Stream.create(None, slot_bytes=slot_bytes, slots=slots) as s:
        with core.child(stream_sink, s.name, count + 1, batched, cpu=CROSS[1], lifetime_s=120) as (_, control):
            s.send(message, timeout=30)
            s.flush(30)
            start = time.perf_counter()
            if batched:
                batch = [message] * BATCH
                for _ in range(count // BATCH):
                    s.send_many(batch, timeout=30)
                s.send_many([message] * (count % BATCH), timeout=30)
            else:
                for _ in range(count):
                    s.send(message, timeout=30)
            peers.expect(control, "ack", 60)
            return count * size / (time.perf_counter() - start) / 1e9


def raw_sink(control, name, batched):
    with RawChannel.open(name, timeout=30, capacity=1024) as r:
        control.send(("ready",))
        while True:
            try:
                if batched:
                    for f in r.recv_many(64, timeout=30):
                        f.data[0]
                else:
                    r.recv(30).data[0]
            except EndOfStream:
                break
        control.send(("result", r.statistics().received))
        control.recv()


def raw_lost(size, total, batched):
    count = total // size
    with pinned(CROSS[0]), RawChannel.create(None, unit_size=size, units=64) as w:
        with core.child(raw_sink, w.name, batched, cpu=CROSS[1], lifetime_s=120) as (_, control):
            frame = bytes(size)
            time.sleep(0.05)
            for _ in range(count):
                w.write(frame)
            w.close()
            return 1 - peers.expect(control, "result", 60)[1] / count


def in_process():
    # per-message costs at each end, in this process (see the module's docstring)
    m, n, rounds = bytes(4 << 10), 32, 300
    batch = [m] * n

    def p10(samples):
        return sorted(samples)[len(samples) // 10] / n * 1e6

    def timed(send, recv):
        ts, tr = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            send()
            t1 = time.perf_counter()
            recv()
            tr.append(time.perf_counter() - t1)
            ts.append(t1 - t0)
        return p10(ts), p10(tr)

    def take_all(recv_many):
        got = 0
        while got < n:
            got += len(recv_many())

    costs = {}
    with pinned(CROSS[0]):
        with Stream.create(None, slot_bytes=64 << 10, slots=64) as w, Stream.open(w.name) as r:
            costs["us/msg send"], costs["us/msg recv"] = timed(
                lambda: [w.send(m, timeout=5) for _ in range(n)], lambda: [r.recv(5) for _ in range(n)])
            costs["us/msg send_many"], costs["us/msg recv_many"] = timed(
                lambda: w.send_many(batch, timeout=5), lambda: take_all(lambda: r.recv_many(n, timeout=5)))
        with RawChannel.create(None, unit_size=4 << 10, units=64) as w, RawChannel.open(w.name, capacity=1024) as r:
            costs["us/msg raw write"], costs["us/msg raw recv_many"] = timed(
                lambda: [w.write(m) for _ in range(n)], lambda: take_all(lambda: r.recv_many(64, timeout=5)))
    return costs


def main():
    K4, M1 = 4 << 10, 1 << 20
    batched = hasattr(Stream, "recv_many")
    sp = next(p for p in peers.stream_peers() if p.name == "socketpair")
    pipe = next(p for p in peers.stream_peers() if p.name == "multiprocessing.Pipe")
    out = {"stream 4K": stream(K4, 64 << 20, False), "stream 1M": stream(M1, 512 << 20, False),
           "raw 4K lost": raw_lost(K4, 64 << 20, False),
           "socketpair 4K": streams.peer_throughput(sp, K4, 64 << 20, CROSS)["bytes_per_s"] / 1e9,
           "Pipe 1M": streams.peer_throughput(pipe, M1, 256 << 20, CROSS)["bytes_per_s"] / 1e9}
    out["stream 1M / Pipe 1M"] = out["stream 1M"] / out["Pipe 1M"]
    if batched:
        out["stream 4K batched"] = stream(K4, 64 << 20, True)
        out["stream 16K batched"] = stream(16 << 10, 128 << 20, True)
        out["batched 4K / socketpair"] = out["stream 4K batched"] / out["socketpair 4K"]
        out["raw 4K lost, recv_many"] = raw_lost(K4, 64 << 20, True)
        out.update(in_process())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
"""


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_alternately(a: str, b: str, rounds: int, one_run: str, tag: str,
                    timeout: float) -> dict[str, list[dict[str, float]]]:
    """Run the script ``one_run`` (printing one JSON dict last) ``rounds`` times with each source
    tree's ``src`` on PYTHONPATH, A then B every round, a fresh process each: every run's dict, per
    tree, with the load printed as it goes."""
    script = os.path.join("/tmp", f"ombm-{tag}-{os.getpid()}.py")
    with open(script, "w") as f:
        f.write(one_run)
    print(f"load before: {load_average()}", flush=True)
    results: dict[str, list[dict[str, float]]] = {a: [], b: []}
    try:
        for r in range(rounds):
            for tree in (a, b):
                env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"))
                line = subprocess.run([sys.executable, script], env=env, check=True, capture_output=True,
                                      text=True, timeout=timeout).stdout.strip().splitlines()[-1]
                results[tree].append(json.loads(line))
                print(f"round {r + 1} {tree}: {line}  (load {load_average()})", flush=True)
    finally:
        os.unlink(script)
    print(f"load after: {load_average()}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="source tree A (its src/ goes on PYTHONPATH)")
    parser.add_argument("b", help="source tree B")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = run_alternately(args.a, args.b, args.rounds, ONE_RUN, "batch-ab", 600)
    keys = sorted({k for runs in results.values() for run in runs for k in run})
    print(f"\n| median of {args.rounds} | {args.a} | {args.b} |\n|:--|--:|--:|")
    for k in keys:
        cells = []
        for tree in (args.a, args.b):
            values = [run[k] for run in results[tree] if k in run]
            cells.append(f"{statistics.median(values):.3f}" if values else "—")
        print(f"| {k} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
