"""The streams suite: bulk data over ombm channels against the peers, in one run (issue 4).

Measures, cross-cpu (writer on CPU 0, readers on CPU 1; same-cpu for 1 MiB as well):

- one-way throughput of 4 KiB, 16 KiB … 64 MiB messages over an :class:`ombm.Stream` (the reader
  copies each message out, checksummed) and over an :class:`ombm.RawChannel` (frames up to
  16 MiB, one unit each; the reader validates each frame's generation in place, zero copy,
  and we also report a reader that copies each frame out), beside ``peers.stream_peers``
  (multiprocessing.Pipe, a Unix socketpair, pyzmq PUSH/PULL) and the same run's single-core
  memcpy bandwidth (``peers.memcpy_bandwidth``, measured before and after; the larger counts);
- the same Stream with small messages (up to 64 KiB) in batches: ``send_many`` of ``BATCH`` messages
  and ``recv_many`` (issue 13: small messages in batches), the API a user streaming small messages
  would use; and a raw reader of small frames that takes every frame there per wake-up
  (``recv_many``, copying each frame out);
- fan-out of 1 MiB raw frames to 1…4 readers: the writer's CPU time per frame and the rate
  delivered to each reader.

Every reader (or sink) is a freshly spawned child pinned to its CPU (``core.child``); it
touches every message (length and first byte), like the peers' sinks.  A stream is timed from
its first send to the reader's acknowledgement of the last message; a raw reader measures from
its first to its last delivered frame (the writer never waits, so some frames are lost: counted).
Every measurement of every system is taken three times and the best kept: the VM is shared,
and a process that loses its CPU for a moment makes any one number meaningless.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ombm.channels.raw import EndOfStream, RawChannel, RawFrame, RawView
from ombm.channels.stream import Stream
from ombm.cli.bench import core, peers
from ombm.cli.bench.affinity import PLACEMENTS, pinned
from ombm.cli.bench.report import Target, md_table, targets_table

BATCHED = "ombm Stream, batched"
RAW_BATCHED = "ombm RawChannel, recv_many"
SIZES = (4 << 10, 16 << 10, 64 << 10, 1 << 20, 8 << 20, 64 << 20)
RAW_MAX_FRAME = 16 << 20  # a raw frame is one unit: larger frames would take huge segments
FANOUT = (1, 2, 3, 4)
REPEATS = 3  # every measurement, every system: the best of 3 (the VM is shared)
_MiB = 1 << 20
_TIMEOUT_S = 60.0
BATCH = 32  # messages per send_many / at most per recv_many in the batched Stream rows
BATCHED_MAX = 64 << 10  # batched Stream rows for messages up to this size (small messages: issue 13)
RAW_BATCH = 64  # at most per RawChannel.recv_many in the batched raw rows
# which API each row of the throughput table uses (printed with the table)
API = {
    "ombm Stream": "`send` / `recv`, one message a call",
    BATCHED: f"`send_many` of {BATCH} messages / `recv_many` (every message there per wake-up, at most {BATCH})",
    "ombm RawChannel": "`write` / `recv_view` (zero copy, one frame a call)",
    RAW_BATCHED: f"`write` / `recv_many` (every frame there per wake-up, at most {RAW_BATCH}, copied out)",
    "multiprocessing.Pipe": "`send_bytes` / `recv_bytes`",
    "socketpair": "`sendall` / `recv_into` until the message is whole",
    "pyzmq ipc PUSH/PULL": "`send(copy=False)` / `recv(copy=False)`",
}


def _label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= _MiB else f"{size >> 10} KiB"


def _total(size: int, quick: bool) -> int:
    if quick:
        return max(size * 4, 32 * _MiB)
    return max(size * 8, 128 * _MiB if size < _MiB else 512 * _MiB)


def stream_config(size: int) -> tuple[int, int]:
    """(slot_bytes, slots) of the benchmark stream for ``size``-byte messages."""
    slot_bytes = min(max(size, 64 << 10), _MiB)
    return slot_bytes, max(8, min(64, (16 * _MiB) // slot_bytes))


def _pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _name(kind: str) -> str:
    return f"bench-{kind}-{os.getpid()}-{secrets.token_hex(4)}"


# --- children -------------------------------------------------------------------------------------
def _stream_sink(control: Connection, name: str, count: int, warmup: int, batched: bool = False) -> None:
    with Stream.open(name, timeout=_TIMEOUT_S) as s:
        control.send(("ready",))
        for _ in range(warmup):
            s.recv(_TIMEOUT_S)
        control.send(("primed",))
        received = check = taken = 0
        while taken < count:
            batch = s.recv_many(BATCH, _TIMEOUT_S) if batched else [s.recv(_TIMEOUT_S)]
            for m in batch:  # bytes only: never an ArrayView
                received += len(m)  # type: ignore[arg-type]
                check ^= m[0] if m else 0  # type: ignore[index]
            taken += len(batch)
        control.send(("ack", received, check))
        control.recv()


def _raw_batch_sink(control: Connection, name: str, copy: bool, warmup: int) -> None:
    """A raw reader that takes every frame there per wake-up (``recv_many``, each frame copied out)."""
    with RawChannel.open(name, timeout=_TIMEOUT_S, capacity=1024) as r:
        control.send(("ready",))
        delivered = nbytes = check = 0
        first = last = 0.0
        while True:
            try:
                frames = r.recv_many(RAW_BATCH, _TIMEOUT_S)
            except EndOfStream:
                break
            now = time.perf_counter()
            for frame in frames:
                check ^= frame.data[0]
                if frame.seq <= warmup:
                    continue
                if delivered == 0:
                    first = now
                else:
                    nbytes += len(frame.data)
                last = now
                delivered += 1
        stats = r.statistics()
        control.send(("result", delivered, nbytes, last - first, stats.missed, stats.torn))
        control.recv()


def _raw_sink(control: Connection, name: str, copy: bool, warmup: int) -> None:
    with RawChannel.open(name, timeout=_TIMEOUT_S, capacity=1024) as r:
        buf = bytearray(r.max_payload if copy else 0)
        control.send(("ready",))
        delivered = nbytes = check = 0
        first = last = 0.0
        frame: RawFrame | RawView
        while True:
            try:
                if copy:
                    frame = r.recv_into(buf, _TIMEOUT_S)
                    n = len(frame.data)
                    check ^= frame.data[0]
                else:
                    with r.recv_view(_TIMEOUT_S) as frame:
                        n = len(frame.data)
                        check ^= frame.data[0]
                        if not frame.intact():  # overwritten while we looked: not delivered
                            continue
            except EndOfStream:
                break
            if frame.seq <= warmup:
                continue
            now = time.perf_counter()
            if delivered == 0:
                first = now
            else:
                nbytes += n
            last = now
            delivered += 1
        stats = r.statistics()
        control.send(("result", delivered, nbytes, last - first, stats.missed, stats.torn))
        # delivered counts frames after the warm-up lap, the first one only starting the clock
        control.recv()


# --- measurements ---------------------------------------------------------------------------------
def stream_throughput(size: int, total: int, placement: tuple[int, int], batched: bool = False) -> dict[str, Any]:
    """One-way Stream throughput; ``batched``: ``send_many`` of ``BATCH`` messages, ``recv_many``."""
    count = max(1, total // size)
    slot_bytes, slots = stream_config(size)
    message = _pattern(size)
    warmup = max(2, (slots * slot_bytes) // size + 1)  # one lap of the ring: its pages are mapped
    with pinned(placement[0]), Stream.create(_name("stream"), slot_bytes=slot_bytes, slots=slots) as s:
        with core.child(_stream_sink, s.name, count, warmup, batched, cpu=placement[1],
                        lifetime_s=_TIMEOUT_S * 2 + total / 1e8) as (_, control):
            for _ in range(warmup):
                s.send(message, timeout=_TIMEOUT_S)
            peers.expect(control, "primed", _TIMEOUT_S)
            start = time.perf_counter_ns()
            if batched:
                batch = [message] * BATCH
                for _ in range(count // BATCH):
                    s.send_many(batch, timeout=_TIMEOUT_S)
                s.send_many(batch[:count % BATCH], timeout=_TIMEOUT_S)
            else:
                for _ in range(count):
                    s.send(message, timeout=_TIMEOUT_S)
            ack = peers.expect(control, "ack", _TIMEOUT_S + total / 1e8)
            elapsed_ns = time.perf_counter_ns() - start
        stats = s.statistics()
    if ack[1] != count * size:
        raise RuntimeError(f"stream reader got {ack[1]} of {count * size} bytes")
    return {"bytes_per_s": count * size * 1e9 / elapsed_ns, "messages": count,
            "config": f"{slots} × {_label(slot_bytes)} slots", "writer_waits": stats.waits}


def raw_throughput(size: int, total: int, placement: tuple[int, int], readers: int = 1,
                   copy: bool = False, batched: bool = False) -> dict[str, Any]:
    """Frames written as fast as possible; what each reader got, and the writer's CPU per frame.
    ``batched``: readers take every frame there per wake-up (``recv_many``, copying)."""
    count = max(16, total // size)
    units = 8 if size >= _MiB else 64
    frame = _pattern(size)
    with pinned(placement[0]), RawChannel.create(_name("raw"), unit_size=size, units=units) as w:
        sink = _raw_batch_sink if batched else _raw_sink
        with _children(readers, sink, w.name, copy, units, cpu=placement[1]) as controls:
            for _ in range(units):  # one lap of the ring: its pages are mapped
                w.write(frame)
            time.sleep(0.05)
            start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
            for _ in range(count):
                w.write(frame)
            cpu_ns, elapsed_ns = time.thread_time_ns() - cpu_start, time.perf_counter_ns() - start
            w.close()
            results = [peers.expect(c, "result", _TIMEOUT_S) for c in controls]
    delivered = [r[2] / r[3] if r[3] > 0 else float("nan") for r in results]
    return {
        "bytes_per_s": min(delivered), "delivered_each": delivered,
        "writer_bytes_per_s": count * size * 1e9 / elapsed_ns, "writer_cpu_us": cpu_ns / count / 1000,
        "messages": count, "lost": sum(count - r[1] for r in results) / (count * readers),
        "config": f"{units} × {_label(size)} units, "
                  + ("recv_many (copying)" if batched else "copying" if copy else "zero-copy") + " reader",
    }


class _children:
    """Start ``n`` reader children (each a ``core.child``) and yield their control pipes."""

    def __init__(self, n: int, target: Callable[..., None], *args: Any, cpu: int) -> None:
        self._contexts = [core.child(target, *args, cpu=cpu, lifetime_s=_TIMEOUT_S * 3) for _ in range(n)]

    def __enter__(self) -> list[Connection]:
        self._entered: list[AbstractContextManager[tuple[BaseProcess, Connection]]] = []
        controls: list[Connection] = []
        try:
            for context in self._contexts:
                self._entered.append(context)
                _, control = context.__enter__()
                controls.append(control)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return controls

    def __exit__(self, *exc: Any) -> None:
        for context in reversed(self._entered):
            context.__exit__(None, None, None)


def peer_throughput(peer: peers.Peer, size: int, total: int, placement: tuple[int, int]) -> dict[str, Any]:
    return {"bytes_per_s": peer.throughput(size, total, placement), "messages": max(1, total // size)}


# --- the suite ------------------------------------------------------------------------------------
def run(progress: Callable[..., None] | None = None, quick: bool = False) -> list[dict[str, Any]]:
    """Every measurement, as rows ``{"kind", "system", "size", "placement", "bytes_per_s", ...}``."""
    rows: list[dict[str, Any]] = []
    cross, same = PLACEMENTS["cross-cpu"], PLACEMENTS["same-cpu"]
    steps: list[tuple[str, Callable[[], None]]] = [("memcpy", lambda: _memcpy(rows, "before"))]
    repeats = 1 if quick else REPEATS
    sizes = tuple(size for size in SIZES if size != 8 << 20) if quick else SIZES
    for size in sizes:
        total = _total(size, quick)
        stream = functools.partial(stream_throughput, size, total, cross)
        steps.append((f"stream {_label(size)}", _step(rows, "stream", "ombm Stream", size, "cross-cpu", stream,
                                                      repeats)))
        if size <= BATCHED_MAX:
            batched = functools.partial(stream_throughput, size, total, cross, batched=True)
            steps.append((f"stream {_label(size)} batched", _step(rows, "stream-batch", BATCHED, size, "cross-cpu",
                                                                  batched, repeats)))
        if size <= RAW_MAX_FRAME:
            raw = functools.partial(raw_throughput, size, total, cross)
            steps.append((f"raw {_label(size)}", _step(rows, "raw", "ombm RawChannel", size, "cross-cpu", raw,
                                                       repeats)))
        if size <= BATCHED_MAX:
            raw_batched = functools.partial(raw_throughput, size, total, cross, batched=True)
            steps.append((f"raw {_label(size)} recv_many", _step(rows, "raw-batch", RAW_BATCHED, size, "cross-cpu",
                                                                 raw_batched, repeats)))
        for peer in peers.stream_peers():
            ok, why = peer.available()
            if not ok:
                rows.append({"kind": "skipped", "system": peer.name, "why": why})
                continue
            measure = functools.partial(peer_throughput, peer, size, total, cross)
            steps.append((f"{peer.name} {_label(size)}", _step(rows, "peer", peer.name, size, "cross-cpu",
                                                                measure, repeats)))
    one = _MiB
    total = _total(one, quick)
    copying = functools.partial(raw_throughput, one, total, cross, copy=True)
    steps.append(("raw 1 MiB, copying reader", _step(rows, "raw-copy", "ombm RawChannel (copying reader)", one,
                                                     "cross-cpu", copying, repeats)))
    steps.append(("stream 1 MiB same-cpu", _step(rows, "stream", "ombm Stream", one, "same-cpu",
                                                 lambda: stream_throughput(one, total, same), repeats)))
    steps.append(("raw 1 MiB same-cpu", _step(rows, "raw", "ombm RawChannel", one, "same-cpu",
                                              lambda: raw_throughput(one, total, same), repeats)))
    mp_pipe = next(p for p in peers.stream_peers() if p.name == "multiprocessing.Pipe")
    steps.append(("multiprocessing.Pipe 1 MiB same-cpu", _step(
        rows, "peer", mp_pipe.name, one, "same-cpu", lambda: peer_throughput(mp_pipe, one, total, same), repeats)))
    for n in FANOUT:
        steps.append((f"fan-out to {n}", _step(rows, "fanout", f"{n} readers", one, "cross-cpu",
                                              functools.partial(raw_throughput, one, total // 2, cross, readers=n),
                                              repeats)))
    steps.append(("memcpy", lambda: _memcpy(rows, "after")))
    core.run_steps(steps, progress)
    return rows


def _memcpy(rows: list[dict[str, Any]], when: str) -> None:
    rows.append({"kind": "memcpy", "system": f"memcpy ({when})", "size": 64 * _MiB,
                 "bytes_per_s": peers.memcpy_bandwidth()})


def _step(rows: list[dict[str, Any]], kind: str, system: str, size: int, placement: str,
          measure: Callable[[], dict[str, Any]], repeats: int) -> Callable[[], None]:
    """Measure ``repeats`` times and keep the best (every system alike: the VM is shared)."""
    def step() -> None:
        row = {"kind": kind, "system": system, "size": size, "placement": placement, "repeats": repeats}
        best: dict[str, Any] | None = None
        try:
            for _ in range(repeats):
                result = measure()
                if best is None or result["bytes_per_s"] > best["bytes_per_s"]:
                    best = result
            assert best is not None, "repeats >= 1"
            row.update(best)
        except Exception as exc:  # reported in the table, never given a number
            row.update(bytes_per_s=float("nan"), error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    return step


# --- report ---------------------------------------------------------------------------------------
def _gbs(value: float) -> str:
    return "—" if value != value else f"{value / 1e9:.2f}"


def _find(rows: list[dict[str, Any]], kind: str, size: int, placement: str = "cross-cpu",
          system: str | None = None) -> float:
    for row in rows:
        if (row["kind"] == kind and row.get("size") == size and row.get("placement") == placement
                and (system is None or row["system"] == system)):
            value: float = row["bytes_per_s"]
            return value
    return float("nan")


def memcpy_of(rows: list[dict[str, Any]]) -> float:
    values = [r["bytes_per_s"] for r in rows if r["kind"] == "memcpy"]
    return max(values) if values else float("nan")


def targets(rows: list[dict[str, Any]]) -> list[Target]:
    memcpy = memcpy_of(rows)
    stream = _find(rows, "stream", _MiB)
    raw = _find(rows, "raw", _MiB)
    pipe = _find(rows, "peer", _MiB, system="multiprocessing.Pipe")
    fan = {r["system"]: r for r in rows if r["kind"] == "fanout"}
    one, four = fan.get("1 readers", {}).get("writer_cpu_us"), fan.get("4 readers", {}).get("writer_cpu_us")
    return [
        Target("Stream, 1 MiB messages, vs memcpy", 50, 100 * stream / memcpy, " %", at_most=False,
               note="reader copies out with the checksum"),
        Target("RawChannel, 1 MiB frames, vs memcpy", 70, 100 * raw / memcpy, " %", at_most=False,
               note="delivered to a zero-copy reader"),
        Target("Stream vs multiprocessing.Pipe, 1 MiB", 5, stream / pipe, "×", at_most=False),
        Target("writer cost, fan-out to 4 vs 1", 1.5, (four / one) if one and four else float("nan"), "×",
               note="writer CPU time per 1 MiB frame"),
    ]


def issue13_targets(rows: list[dict[str, Any]]) -> list[Target]:
    """Issue 13's stream targets: small messages against a socketpair, 1 MiB against multiprocessing.Pipe."""
    small = 4 << 10
    return [
        Target("Stream, 4 KiB messages, vs socketpair", 2, _find(rows, "stream-batch", small)
               / _find(rows, "peer", small, system="socketpair"), "×", at_most=False,
               note=f"the batched API (send_many of {BATCH}, recv_many), throughput, cross-cpu, same run"),
        Target("Stream, 4 KiB messages one at a time, vs socketpair", 2, _find(rows, "stream", small)
               / _find(rows, "peer", small, system="socketpair"), "×", at_most=False,
               note="send / recv, one message a call; same run"),
        Target("Stream, 1 MiB messages, vs multiprocessing.Pipe", 5, _find(rows, "stream", _MiB)
               / _find(rows, "peer", _MiB, system="multiprocessing.Pipe"), "×", at_most=False,
               note="throughput, cross-cpu, same run"),
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    memcpy = memcpy_of(rows)
    lines = ["## Streams", "",
             f"Single-core memcpy bandwidth of this run (64 MiB, best of 5; before/after, the larger): "
             f"**{_gbs(memcpy)} GB/s**.", "", targets_table(targets(rows)), "",
             "### Throughput, cross-cpu (GB/s; % of memcpy in brackets)", ""]
    systems = ["ombm Stream", BATCHED, "ombm RawChannel", RAW_BATCHED] + [p.name for p in peers.stream_peers()]
    kinds = {"ombm Stream": "stream", BATCHED: "stream-batch", "ombm RawChannel": "raw", RAW_BATCHED: "raw-batch"}
    sizes = sorted({r["size"] for r in rows if r["kind"] in ("stream", "peer")})
    table = []
    for system in systems:
        cells = [system]
        for size in sizes:
            value = _find(rows, kinds.get(system, "peer"), size, system=system)
            cells.append("—" if value != value else f"{_gbs(value)} ({100 * value / memcpy:.0f} %)")
        table.append(cells)
    lines += [md_table(["system"] + [_label(s) for s in sizes], table), ""]
    lines += ["API of each row: " + "; ".join(f"*{name}*: {API[name]}" for name in systems if name in API) + ".", ""]
    configs = [f"{_label(r['size'])}: {r['config']}" for r in rows if r["kind"] == "stream" and "config" in r
               and r["placement"] == "cross-cpu"]
    raw_rows = [r for r in rows if r["kind"] in ("raw", "raw-copy", "raw-batch")]
    readers = {"raw": "zero-copy", "raw-copy": "copying", "raw-batch": "recv_many (copying)"}
    lines += ["Stream configuration (slots × slot size): " + "; ".join(configs) + ".", ""]
    lines += ["### RawChannel detail", "", md_table(
        ["frames", "placement", "reader", "delivered GB/s", "writer GB/s", "writer µs/frame", "lost"],
        [[_label(r["size"]), r["placement"], readers[r["kind"]],
          _gbs(r["bytes_per_s"]), _gbs(r.get("writer_bytes_per_s", float("nan"))),
          f"{r.get('writer_cpu_us', float('nan')):.1f}", f"{100 * r.get('lost', float('nan')):.0f} %"]
         for r in raw_rows]), ""]
    same = [(name, kind) for name, kind in (("ombm Stream", "stream"), ("ombm RawChannel", "raw"),
                                            ("multiprocessing.Pipe", "peer"))]
    lines += ["### 1 MiB, same-cpu (both processes on CPU 0)", "", md_table(
        ["system", "GB/s"], [[n, _gbs(_find(rows, k, _MiB, "same-cpu", n))] for n, k in same]), ""]
    fan = [r for r in rows if r["kind"] == "fanout"]
    if fan:
        base = fan[0].get("writer_cpu_us", float("nan"))
        lines += ["### Fan-out of 1 MiB raw frames (writer on CPU 0, every reader on CPU 1)", "", md_table(
            ["readers", "writer µs/frame", "vs 1 reader", "delivered GB/s per reader (min … max)", "lost"],
            [[r["system"].split()[0], f"{r.get('writer_cpu_us', float('nan')):.1f}",
              f"{r.get('writer_cpu_us', float('nan')) / base:.2f}×",
              _span(r.get("delivered_each", [])), f"{100 * r.get('lost', float('nan')):.0f} %"] for r in fan]), ""]
    problems = [f"- {r['system']} {_label(r['size']) if 'size' in r else ''}: {r.get('error') or r.get('why')}"
                for r in rows if r.get("error") or r["kind"] == "skipped"]
    if problems:
        lines += ["Not measured:", *problems, ""]
    lines += ["Every figure is the best of " + str(max((r.get("repeats", 1) for r in rows), default=1))
              + " runs, for every system alike. "
              "Readers touch every message (length, first byte) like the peers' sinks. The Stream reader "
              "gets each message as its own buffer, copied out of the segment with the checksum folded into "
              "the copy; a raw reader validates each frame's generation in place (zero copy) and a frame "
              "overwritten meanwhile does not count as delivered; *lost* = frames written that a reader "
              "never delivered (the writer never waits: paper §3.2)."]
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{_gbs(min(values))} … {_gbs(max(values))}"
