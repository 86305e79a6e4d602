#!/usr/bin/env python3
"""A raw video pipeline: one producer at a fixed frame rate, three viewers, one of them slow.

The producer renders frames straight into the units of an ``ombm.RawChannel`` (two-phase
``begin``/``commit``: no copy) at a fixed rate; completing a unit raises one signal per
viewer (paper §3.3 signal-on-write).  Each viewer is its own process and looks at every frame
in place (``recv_view``: a read-only view of the segment, zero copy), then checks the frame's
generation to be sure the producer did not overwrite it meanwhile.  The producer never waits
for anyone (paper §4: "the occasional dropped ... unit ... does not significantly affect the
quality of the resulting picture"): the fast viewers see every frame, the slow one, which
spends longer on a frame than the frame interval, drops frames, and counts them.

    python examples/frame_pipeline.py --fps 60 --seconds 3

(numpy needed; with ombm installed: ``pip install .``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from ombm.channels.raw import EndOfStream, RawChannel

WIDTH, HEIGHT = 640, 480
FRAME_BYTES = WIDTH * HEIGHT * 3


def render(buffer: memoryview, seq: int) -> int:
    """Draw frame ``seq`` (a bar moving across a gradient) into ``buffer``; its length."""
    frame = np.frombuffer(buffer[:FRAME_BYTES], dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)
    frame[:] = (seq * 3) % 256
    x = (seq * 8) % (WIDTH - 40)
    frame[:, x:x + 40] = (255, 64, 0)
    frame[0, 0, :] = (seq & 0xFF, (seq >> 8) & 0xFF, (seq >> 16) & 0xFF)  # a stamp to check
    return FRAME_BYTES


def viewer(name: str, work_s: float, ready, results) -> None:
    """Look at every frame in place; spend ``work_s`` on each; report what was seen and missed."""
    with RawChannel.open(name, timeout=10) as channel:
        ready.put(os.getpid())
        seen = bad = torn = 0
        brightness = 0.0
        while True:
            try:
                view = channel.recv_view(timeout=10)
            except EndOfStream:
                break
            with view:
                frame = np.frombuffer(view.data, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)
                stamp = int(frame[0, 0, 0]) | int(frame[0, 0, 1]) << 8 | int(frame[0, 0, 2]) << 16
                level = float(frame[::16, ::16].mean())  # "display" it
                if work_s:
                    time.sleep(work_s)
                intact = view.intact()  # the producer never waits: was it overwritten meanwhile?
                del frame
            if not intact:
                torn += 1
                continue
            seen += 1
            brightness += level
            bad += stamp != view.seq & 0xFFFFFF
        stats = channel.statistics()
        results.put({"pid": os.getpid(), "work_ms": work_s * 1000, "seen": seen, "missed": stats.missed,
                     "torn": torn, "bad": bad})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--slow-ms", type=float, default=40.0, help="the slow viewer's work per frame")
    args = parser.parse_args()
    if args.fps <= 0 or args.seconds <= 0:
        parser.error("--fps and --seconds must be positive")
    console = Console()
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    name = f"frames-{os.getpid()}"
    works = (0.0, 0.002, args.slow_ms / 1000)
    with RawChannel.create(name, unit_size=FRAME_BYTES, units=8) as channel:
        viewers = [ctx.Process(target=viewer, args=(name, w, ready, results), daemon=True) for w in works]
        try:
            for v in viewers:
                v.start()
            for _ in viewers:
                ready.get(timeout=30)
            frames = int(args.fps * args.seconds)
            interval = 1.0 / args.fps
            console.print(f"producing {frames} frames of {WIDTH}×{HEIGHT} RGB at {args.fps:g} fps "
                          f"to {len(viewers)} viewers …")
            start = time.perf_counter()
            for seq in range(1, frames + 1):
                buffer = channel.begin()  # the next unit, written in place
                channel.commit(render(buffer, seq))
                delay = start + seq * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            produced = channel.statistics().written
            channel.close()  # the viewers get EndOfStream once they are done
            reports = sorted((results.get(timeout=30) for _ in viewers), key=lambda r: r["work_ms"])
        finally:
            for v in viewers:
                v.join(10)
                if v.is_alive():
                    v.kill()
                    v.join()
    table = Table(title=f"{produced} frames produced; the producer never waited")
    for column in ("viewer", "work per frame", "frames seen", "missed", "dropped", "torn (discarded)",
                   "wrong stamp"):
        table.add_column(column, justify="right")
    for i, r in enumerate(reports):
        slow = r["work_ms"] > 1000 / args.fps
        table.add_row(f"{i + 1}{' (slow)' if slow else ''}", f"{r['work_ms']:.0f} ms", str(r["seen"]),
                      str(r["missed"]), f"{100 * r['missed'] / max(produced, 1):.0f} %", str(r["torn"]),
                      str(r["bad"]))
    console.print(table)
    return 0 if all(r["bad"] == 0 for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
