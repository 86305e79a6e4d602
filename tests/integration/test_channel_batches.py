"""Small messages in batches across real processes: ``Stream.send_many``/``recv_many`` and
``RawChannel.recv_many`` (issue 13, item 5).

A burst of ``send_many`` raises one signal, by its last fragment: these tests check that every message
still arrives exactly once and in order, that a writer killed in the middle of a burst leaves the reader
a clean prefix, and that a reader that sleeps between bursts is never left asleep with messages there
(its tick, which would find them anyway, is made so long that a lost wake-up fails the test).
Every child comes from the ``procs`` fixture; nothing asserts an upper bound on time.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal as os_signal
import time

import pytest

import ombm
from ombm.core import admin as ombm_inspect
from ombm.channels import stream as stream_module
from ombm.channels.raw import ChannelTimeout, EndOfStream, RawChannel
from ombm.channels.stream import Stream

from tests.integration.test_channel_processes import TIMEOUT_S, expect, message, reporting

pytestmark = pytest.mark.processes


def small(i: int) -> bytes:
    """Message i of a small-message stream: 0 to ~6 KiB (so some take two 4 KiB slots), content from i."""
    return i.to_bytes(4, "little") * ((i * 7919) % 1600)


@reporting
def burst_writer(conn, name, n, seed, pause_s):
    """Send messages 0..n-1 as send_many bursts of random sizes (some single send() calls between),
    pausing at random so that the reader goes to sleep between bursts."""
    rng = random.Random(seed)
    # no repair timer within the test: a fragment's lost signal would not be sent again in time
    stream_module.RTO_MIN_S = stream_module.RTO_MAX_S = TIMEOUT_S
    with Stream.create(name, slot_bytes=4096, slots=16) as s:
        conn.send(("ready", os.getpid()))
        i = 0
        while i < n:
            k = min(n - i, rng.choice((1, 2, 5, 16, 40)))
            if rng.random() < 0.2:
                for j in range(i, i + k):
                    s.send(small(j), timeout=TIMEOUT_S)
            else:
                s.send_many([small(j) for j in range(i, i + k)], timeout=TIMEOUT_S)
            i += k
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, pause_s))
        s.flush(TIMEOUT_S)
        conn.send(("result", s.statistics().messages_sent))
        conn.send(("stats", (s.statistics().resignals, s.statistics().repairs)))


def test_bursts_arrive_exactly_once_in_order_and_never_leave_the_reader_asleep(procs, monkeypatch):
    name = f"batch-{os.getpid()}"
    n = 3000
    parent, child = procs.pipe()
    procs.fork(burst_writer, child, name, n, 7, 0.003)
    expect(parent, "ready")
    # the reader's tick would find a message whose signal never came: make it longer than the test's patience
    monkeypatch.setattr(stream_module, "TICK_S", TIMEOUT_S)
    with Stream.open(name, timeout=TIMEOUT_S) as r:
        quiet_waits = []
        wait_slice = r._wait_slice

        def counting_wait(timeout: float) -> bool:
            signalled = wait_slice(timeout)
            if not signalled:
                quiet_waits.append(timeout)
                raise AssertionError("a wait ended without a signal while messages were there")
            return signalled

        monkeypatch.setattr(r, "_wait_slice", counting_wait)
        got: list[bytes] = []
        rng = random.Random(3)
        while len(got) < n:
            batch = r.recv_many(rng.choice((1, 3, 64)), timeout=TIMEOUT_S)
            assert batch
            got.extend(bytes(m) for m in batch)
        assert expect(parent, "result") == n
        with pytest.raises(EndOfStream):
            r.recv_many(timeout=TIMEOUT_S)
    assert len(got) == n and all(m == small(i) for i, m in enumerate(got))  # exactly once, in order
    assert quiet_waits == []  # every wait ended with a signal: no message waited for a tick
    assert expect(parent, "stats")[0] == 0  # ... nor for the writer's repair timer


def test_recv_many_takes_what_is_there_and_publishes_credit_once():
    with Stream.create(slot_bytes=4096, slots=8) as w, Stream.open(w.name) as r:
        with pytest.raises(ChannelTimeout):
            r.recv_many(timeout=0.01)  # nothing there: nothing taken
        w.send_many([b"a" * 10, b"b" * 6000, b"c"])  # the middle one takes two slots
        assert [bytes(m) for m in r.recv_many(timeout=5)] == [b"a" * 10, b"b" * 6000, b"c"]
        w.send_many([bytes([i]) * 100 for i in range(8)])  # a full window
        assert len(r.recv_many(3, timeout=5)) == 3
        assert [bytes(m)[0] for m in r.recv_many(timeout=5)] == [3, 4, 5, 6, 7]
        w.flush(5)  # everything acknowledged: the batch published its counts
        assert w.statistics().unacked == 0
        with pytest.raises(ValueError):
            r.recv_many(0)
        with pytest.raises(TypeError):
            w.send_many([b"fine", 42])  # checked before anything is sent
        assert r.statistics().messages_received == 11
        with pytest.raises(ombm.WouldBlock):
            r.recv_nowait()
        w.close()
        with pytest.raises(EndOfStream):
            r.recv_many(timeout=5)


def test_send_many_timeout_says_how_many_went():
    with Stream.create(slot_bytes=4096, slots=4) as w, Stream.open(w.name) as r:
        with pytest.raises(ChannelTimeout) as info:
            w.send_many([bytes([i]) * 10 for i in range(6)], timeout=0.05)  # the window holds 4
        assert info.value.sent == 4 and info.value.partial is False
        assert [bytes(m)[0] for m in r.recv_many(timeout=5)] == [0, 1, 2, 3]


@reporting
def killed_mid_burst(conn, name):
    with Stream.create(name, slot_bytes=4096, slots=8) as s:
        conn.send(("ready", os.getpid()))
        i = 0
        while True:  # killed by the test while a burst waits for credit
            s.send_many([message(j) for j in range(i, i + 50)], timeout=TIMEOUT_S)
            i += 50


def test_a_writer_killed_mid_burst_leaves_a_clean_prefix(procs):
    name = f"batch-kill-{os.getpid()}"
    parent, child = procs.pipe()
    p = procs.fork(killed_mid_burst, child, name)
    pid = expect(parent, "ready")
    got: list[bytes] = []
    with Stream.open(name, timeout=TIMEOUT_S) as r:
        while len(got) < 120:
            got.extend(bytes(m) for m in r.recv_many(7, timeout=TIMEOUT_S))
        os.kill(pid, os_signal.SIGKILL)
        p.join(TIMEOUT_S)
        with pytest.raises(ombm.ChannelBrokenError):
            while True:  # what was written whole before the kill, then the broken stream
                got.extend(bytes(m) for m in r.recv_many(64, timeout=TIMEOUT_S))
    assert all(m == message(i) for i, m in enumerate(got))  # in order, none twice, none torn
    assert ombm_inspect.gc().fifos_removed >= 1  # the dead writer's credit FIFO


@reporting
def raw_writer(conn, name, n):
    with RawChannel.create(name, unit_size=4096, units=16) as w:
        conn.send(("ready", os.getpid()))
        conn.recv()  # the reader is open
        for i in range(n):
            w.write(i.to_bytes(8, "little") * (1 + i % 500))
            if i % 64 == 0:
                time.sleep(0.0005)
        conn.send(("result", w.statistics().written))


def test_raw_recv_many_delivers_good_frames_in_order_and_counts_the_rest(procs):
    name = f"batch-raw-{os.getpid()}"
    parent, child = procs.pipe()
    procs.fork(raw_writer, child, name, 20000)
    expect(parent, "ready")
    seqs: list[int] = []
    with RawChannel.open(name, timeout=TIMEOUT_S, capacity=1024) as r:
        parent.send("go")
        try:
            while True:
                for f in r.recv_many(32, timeout=TIMEOUT_S):
                    i = f.seq - 1
                    assert f.data == i.to_bytes(8, "little") * (1 + i % 500)  # never a torn or wrong frame
                    seqs.append(f.seq)
        except EndOfStream:
            pass
        stats = r.statistics()
    written = expect(parent, "result")
    assert seqs and all(a < b for a, b in zip(seqs, seqs[1:]))  # increasing: none twice, none late
    gaps = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert stats.received == len(seqs) and gaps <= stats.missed  # every gap counted as missed
    # and nothing else: the reader opened before the first frame (the writer waits for "go"), so the
    # frames before the first it delivered are missed too (a busy machine can delay its first look
    # past half the ring: those frames are skipped as at risk)
    assert len(seqs) + stats.missed == seqs[-1] <= written


@reporting
def late_writer(conn, name, raw_name):
    with Stream.create(name, slot_bytes=4096, slots=8) as s, RawChannel.create(raw_name, unit_size=64, units=8) as w:
        conn.send(("ready", os.getpid()))
        conn.recv()  # both readers wait in the event loop now
        time.sleep(0.05)
        for i in range(3):
            w.write(bytes([i]) * 8)
        s.send_many([b"one", b"two" * 3000, b"three"], timeout=TIMEOUT_S)
        s.flush(TIMEOUT_S)
        conn.recv()


def test_recv_many_async_waits_in_the_event_loop(procs):
    name = f"batch-async-{os.getpid()}"
    parent, child = procs.pipe()
    procs.fork(late_writer, child, name, name + "-raw")
    expect(parent, "ready")

    async def main() -> tuple[list[bytes], list[int], int]:
        with Stream.open(name, timeout=TIMEOUT_S) as r, RawChannel.open(name + "-raw", timeout=TIMEOUT_S) as rx:
            ticks = 0

            async def ticking() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.001)
                    ticks += 1

            ticker = asyncio.ensure_future(ticking())
            parent.send("go")
            got: list[bytes] = []
            while len(got) < 3:
                got.extend(bytes(m) for m in await r.recv_many_async(timeout=TIMEOUT_S))
            frames = await rx.recv_many_async(timeout=TIMEOUT_S)
            ticker.cancel()
            parent.send("done")
            return got, [f.data[0] for f in frames], ticks

    got, frames, ticks = asyncio.run(main())
    assert got == [b"one", b"two" * 3000, b"three"]
    assert frames and frames == sorted(set(frames))  # in order, none twice (early ones may be skipped)
    assert ticks > 0  # the loop ran other tasks while the reader waited


@pytest.mark.parametrize("batched", [False, True])
def test_a_reader_that_finds_messages_by_the_hint_drains_its_signals(batched):
    """The hint lets a reader take a message without dispatching its signal first; it must still
    drain its FIFO, or the writer's signals would be dropped (and cost it a liveness check each)."""
    from ombm.core.delivery import COUNTERS

    with Stream.create(slot_bytes=4096, slots=64) as w, Stream.open(w.name) as r:
        dropped = COUNTERS.signals_dropped
        for _ in range(10):  # 640 signals through a FIFO of 128
            for i in range(64):
                w.send(bytes([i]) * 64)
            got = 0
            while got < 64:
                got += len(r.recv_many(64, timeout=5)) if batched else len([r.recv(5)])
        assert COUNTERS.signals_dropped == dropped
