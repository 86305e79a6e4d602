"""Streams and raw channels across real processes: slow readers, killed peers, faults, fan-out.

Every child is started through the ``procs`` fixture (daemonic, killed and joined
after the test) and reports through a pipe; nothing asserts an upper bound on time.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal as os_signal
import subprocess
import sys
import time
import traceback

import pytest

import ombm
from ombm.core import admin as ombm_inspect
from ombm.channels.raw import ChannelTimeout, EndOfStream, RawChannel
from ombm.channels.stream import Stream

pytestmark = pytest.mark.processes

TIMEOUT_S = 60.0  # generous: never a performance bound
SRC = os.path.dirname(os.path.dirname(ombm.__file__))  # where the ombm under test lives (installed or src/)


def expect(conn, tag):
    assert conn.poll(TIMEOUT_S), f"child sent nothing (waiting for {tag!r})"
    kind, payload = conn.recv()
    if kind == "error":
        pytest.fail(f"child failed:\n{payload}")
    assert kind == tag, (kind, payload)
    return payload


def reporting(fn):
    def run(conn, *args):
        try:
            fn(conn, *args)
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            raise
    return run


def message(i: int) -> bytes:
    """Message i: its size varies from 0 to a few slots; its content depends on i."""
    size = (i * 7919) % 20000
    return hashlib.sha256(str(i).encode()).digest() * (size // 32) + bytes(size % 32)


# ---------------------------------------------------------------- stream children
@reporting
def slow_reader(conn, name, n, delay_s):
    with Stream.open(name, timeout=TIMEOUT_S) as s:
        conn.send(("ready", os.getpid()))
        digest = hashlib.sha256()
        for i in range(n):
            m = s.recv(TIMEOUT_S)
            digest.update(len(m).to_bytes(8, "little") + m)
            if i < n // 2:
                time.sleep(delay_s)  # slow for the first half
        conn.send(("result", (digest.hexdigest(), s.statistics().bad_frames)))


@reporting
def read_some_then_hang(conn, name, n):
    s = Stream.open(name, timeout=TIMEOUT_S)
    for _ in range(n):
        s.recv(TIMEOUT_S)
    conn.send(("ready", os.getpid()))
    time.sleep(3600)  # killed here, holding the stream


@reporting
def write_some_then_hang(conn, name, n):
    s = Stream.create(name, slot_bytes=4096, slots=4)
    for i in range(n):
        s.send(b"message %d" % i)
    with pytest.raises(ChannelTimeout):  # no reader yet: only the first fragment fits
        s.send(os.urandom(s.max_payload * 3), timeout=0.1)
    conn.send(("ready", os.getpid()))
    time.sleep(3600)  # killed here, half-way through a message


@reporting
def second_reader(conn, name):
    try:
        Stream.open(name, timeout=TIMEOUT_S)
    except ombm.SegmentExistsError as exc:
        conn.send(("result", str(exc)))
    else:
        conn.send(("result", None))


@reporting
def array_writer(conn, name):
    import numpy as np

    with Stream.create(name, slot_bytes=1 << 16, slots=1) as s:
        conn.send(("ready", os.getpid()))
        s.send_array(np.arange(1000, dtype=np.float64).reshape(10, 100))
        outcome = []
        try:
            s.send_array(np.zeros(10), timeout=0.3)  # the reader holds the only slot
        except ChannelTimeout as exc:
            outcome.append(("timeout", exc.partial))
        assert conn.recv() == "released"
        s.send_array(np.ones(10), timeout=TIMEOUT_S)
        s.flush(TIMEOUT_S)
        conn.send(("result", outcome))
        conn.recv()


def test_a_slow_reader_slows_the_writer_and_loses_nothing(procs):
    name = f"chproc-slow-{os.getpid()}"
    n = 300
    with Stream.create(name, slot_bytes=4096, slots=4) as w:
        parent, child = procs.pipe()
        procs.fork(slow_reader, child, name, n, 0.002)
        expect(parent, "ready")
        digest = hashlib.sha256()
        for i in range(n):
            m = message(i)
            digest.update(len(m).to_bytes(8, "little") + m)
            w.send(m, timeout=TIMEOUT_S)
        got, bad = expect(parent, "result")
        assert got == digest.hexdigest()
        stats = w.statistics()
        assert stats.messages_sent == n and stats.waits > 0  # flow control held the writer back


def test_a_killed_reader_breaks_the_writer_instead_of_hanging_it(procs):
    name = f"chproc-killr-{os.getpid()}"
    with Stream.create(name, slot_bytes=1024, slots=4) as w:
        parent, child = procs.pipe()
        p = procs.fork(read_some_then_hang, child, name, 3)
        for i in range(3):
            w.send(b"x" * 100)
        pid = expect(parent, "ready")
        for _ in range(4):
            w.send(b"fills the window")
        os.kill(pid, os_signal.SIGKILL)
        p.join(TIMEOUT_S)
        with pytest.raises(ombm.ChannelBrokenError, match="died"):
            w.send(b"one too many", timeout=TIMEOUT_S)  # waits for credit, notices the death
        with pytest.raises(ombm.ChannelBrokenError):
            w.send(b"again")
    report = ombm_inspect.gc()
    assert report.fifos_removed >= 1  # the dead reader's signal FIFO, reclaimed explicitly


def test_a_killed_writer_breaks_the_reader_after_what_it_sent(procs):
    name = f"chproc-killw-{os.getpid()}"
    parent, child = procs.pipe()
    p = procs.fork(write_some_then_hang, child, name, 3)
    pid = expect(parent, "ready")
    r = Stream.open(name, timeout=TIMEOUT_S)
    try:
        assert [bytes(r.recv(TIMEOUT_S)) for _ in range(3)] == [b"message %d" % i for i in range(3)]
        with pytest.raises(ChannelTimeout):
            r.recv(0.1)  # the first fragment of the long message is there; the message is not
        assert r.statistics().fragments_received == 4
        os.kill(pid, os_signal.SIGKILL)
        p.join(TIMEOUT_S)
        with pytest.raises(ombm.ChannelBrokenError, match="died"):
            r.recv(TIMEOUT_S)
    finally:
        r.close()  # the last live holder: the dead writer's segments go with it
    assert not os.path.exists(ombm.core.namespace.segment_path(name))
    assert not os.path.exists(ombm.core.namespace.segment_path(name + ".credit"))
    assert ombm_inspect.gc().fifos_removed >= 1  # the dead writer's credit FIFO


def test_a_second_reader_in_another_process_is_refused(procs):
    name = f"chproc-two-{os.getpid()}"
    with Stream.create(name, slot_bytes=64, slots=2) as w, Stream.open(name) as r:
        parent, child = procs.pipe()
        procs.fork(second_reader, child, name)
        error = expect(parent, "result")
        assert error and "already has a reader" in error
        w.send(b"still fine")
        assert r.recv(TIMEOUT_S) == b"still fine"


def test_zero_copy_arrays_across_processes_hold_the_writer_until_released(procs):
    np = pytest.importorskip("numpy")
    name = f"chproc-arr-{os.getpid()}"
    parent, child = procs.pipe()
    procs.fork(array_writer, child, name)
    expect(parent, "ready")
    with Stream.open(name, timeout=TIMEOUT_S) as r:
        view = r.recv_array(TIMEOUT_S)
        assert view.zero_copy and view.array.shape == (10, 100)
        assert view.array[3, 7] == 307.0
        time.sleep(0.5)  # the writer times out meanwhile: its next array has no slot
        assert view.array[3, 7] == 307.0  # and nothing changed under us
        view.release()
        parent.send("released")
        ones = r.recv_array(TIMEOUT_S, copy=True)
        assert (ones == 1).all()
        assert expect(parent, "result") == [("timeout", False)]
        parent.send("done")


# ---------------------------------------------------------------- faults (real env vars)
WRITER = """
import dataclasses, hashlib, json, sys
import ombm
from ombm.channels.stream import Stream
name, n = sys.argv[1], int(sys.argv[2])
w = Stream.create(name, slot_bytes=2048, slots=4)
print("ready", flush=True)
digest = hashlib.sha256()
for i in range(n):
    m = hashlib.sha256(str(i).encode()).digest() * (i % 150)
    digest.update(m)
    w.send(m, timeout=60)
w.flush(60)
print(json.dumps({"digest": digest.hexdigest(), "stats": dataclasses.asdict(w.statistics()),
                  "core": ombm.stats()}), flush=True)
sys.stdin.readline()
w.close()
"""

READER = """
import hashlib, json, sys
from ombm.channels.stream import Stream
import ombm
name, n = sys.argv[1], int(sys.argv[2])
r = Stream.open(name, timeout=60)
digest = hashlib.sha256()
for i in range(n):
    digest.update(r.recv(60))
print(json.dumps({"digest": digest.hexdigest(), "bad": r.statistics().bad_frames,
                  "stats": ombm.stats()}), flush=True)
r.close()
"""


@pytest.mark.fault_injection
def test_the_stream_repairs_dropped_signals_and_corrupted_frames(procs):
    name = f"chproc-fault-{os.getpid()}"
    n = 250
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMBM_FAULT_DROP="0.1", OMBM_FAULT_CORRUPT="0.05", OMBM_FAULT_SEED="7")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, name, str(n)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "ready"
        reader = subprocess.run([sys.executable, "-c", READER, name, str(n)], env=env, text=True,
                                capture_output=True, timeout=120)
        assert reader.returncode == 0, reader.stderr
        got = json.loads(reader.stdout)
        sent = json.loads(writer.stdout.readline())
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(TIMEOUT_S) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert got["digest"] == sent["digest"]  # every message, in order, exactly once, intact
    # faults really happened both ways: data signals and credit wake-ups were dropped, frames corrupted ...
    assert sent["core"]["signals_dropped_fault"] > 0 and got["stats"]["signals_dropped_fault"] > 0
    assert sent["core"]["messages_corrupted_fault"] > 0
    assert got["bad"] > 0 and sent["stats"]["repairs"] > 0  # ... and corrupt frames were repaired


# ---------------------------------------------------------------- raw channel
@reporting
def raw_viewer(conn, name, delay_s, check):
    with RawChannel.open(name, timeout=TIMEOUT_S, capacity=256) as r:
        conn.send(("ready", os.getpid()))
        seqs, bad = [], 0
        while True:
            try:
                f = r.recv(TIMEOUT_S)
            except EndOfStream:
                break
            if check and f.data != bytes([f.seq % 251]) * len(f.data):
                bad += 1  # a torn frame was delivered: must never happen
            seqs.append(f.seq)
            if delay_s:
                time.sleep(delay_s)
        st = r.statistics()
        conn.send(("result", {"seqs": seqs, "bad": bad, "missed": st.missed, "torn": st.torn}))


def test_raw_multicast_a_slow_viewer_drops_frames_the_others_do_not(procs):
    name = f"chproc-raw-{os.getpid()}"
    frames = 150
    with RawChannel.create(name, unit_size=16384, units=128) as w:
        pipes = []
        for delay in (0, 0, 0.03):
            parent, child = procs.pipe()
            procs.fork(raw_viewer, child, name, delay, True)
            expect(parent, "ready")
            pipes.append(parent)
        for i in range(1, frames + 1):
            w.write(bytes([i % 251]) * (1000 + 100 * (i % 100)))
            time.sleep(0.002)
        w.close()
        fast1, fast2, slow = (expect(p, "result") for p in pipes)
    for fast in (fast1, fast2):
        assert fast["seqs"] == list(range(1, frames + 1)) and fast["missed"] == 0 and fast["bad"] == 0
    assert slow["bad"] == 0 and slow["missed"] > 0
    assert slow["seqs"] == sorted(slow["seqs"]) and len(slow["seqs"]) + slow["missed"] == frames


def test_raw_never_delivers_a_torn_frame_even_when_lapped(procs):
    name = f"chproc-torn-{os.getpid()}"
    with RawChannel.create(name, unit_size=65536, units=2) as w:
        parent, child = procs.pipe()
        procs.fork(raw_viewer, child, name, 0, True)
        expect(parent, "ready")
        deadline = time.monotonic() + 1.0
        i = 0
        while time.monotonic() < deadline:  # as fast as possible into 2 units: the reader is lapped
            i += 1
            w.write(bytes([i % 251]) * 65536)
        w.close()
        result = expect(parent, "result")
    assert result["bad"] == 0
    assert len(result["seqs"]) + result["missed"] == i and result["missed"] > 0
    assert result["seqs"] == sorted(set(result["seqs"]))
