"""Sleeping receivers and injected faults, across real processes.

* Lost wake-ups (DESIGN.md §6, "Futexes Are Tricky"): the sender pauses a
  random 0-200 µs before each signal so the receiver keeps spinning out and
  going to sleep; every signal must still arrive. A lost wake-up shows up as a
  receiver asleep with a signal pending: the ping-pong stalls, the stream's
  receiver never finishes.
* Fault injection (DESIGN.md §4): OMBM_FAULT_* are read at import, so the
  faulty process is a fresh interpreter (subprocess) with them in its environment.
"""

from __future__ import annotations

import json
import os
import random

import helpers_core as h
import pytest

import ombm

pytestmark = pytest.mark.processes

N = 2000


@pytest.mark.parametrize("wait", ["adaptive", "sleep"])
def test_no_lost_wake_ups_in_a_stream_with_short_pauses(procs, wait):
    with ombm.create_segment(4096, name=f"core-stream-{os.getpid()}") as seg:
        region = seg.bind()
        parent_end, child_end = procs.pipe()
        p = procs.fork(h.count_stream, child_end, seg.name, N, {"wait": wait, "fifo_capacity": 4096})
        h.expect(parent_end, "ready")
        rng = random.Random(wait)
        before = ombm.stats()
        for i in range(N):
            h.spin_sleep_us(rng.uniform(0, 200))
            ombm.signal(region.address + i % 4096)
        after = ombm.stats()
        assert after["signals_dropped"] == before["signals_dropped"]
        if wait == "sleep":
            assert after["wakeups"] > before["wakeups"], "the receiver was expected to fall asleep"
        result = h.expect(parent_end, "result")  # a lost final wake-up leaves the child asleep: no result
        assert result["got"] == [i % 4096 for i in range(N)]
        assert h.join(p) == 0


@pytest.mark.parametrize("wait", ["adaptive", "sleep"])
def test_no_lost_wake_ups_in_ping_pong(procs, wait):
    """Each request waits for its echo: any lost wake-up on either side stalls the exchange."""
    with ombm.create_segment(1024, name=f"core-req-{os.getpid()}") as requests, ombm.create_segment(
        1024, name=f"core-rep-{os.getpid()}"
    ) as replies:
        req, rep = requests.bind(), replies.bind()
        receiver = ombm.Receiver()
        try:
            echoes = []
            receiver.add_handler(rep.address, rep.size, lambda a: echoes.append(a - rep.address))
            parent_end, child_end = procs.pipe()
            p = procs.fork(h.echo, child_end, requests.name, replies.name, N, {"wait": wait})
            h.expect(parent_end, "ready")
            rng = random.Random(wait)
            before = ombm.stats()
            for i in range(N):
                h.spin_sleep_us(rng.uniform(0, 200))
                ombm.signal(req.address + i % 1024)
                left = receiver.wait(h.CHILD_TIMEOUT_S)
                assert left > 0.0, f"no echo of request {i} within {h.CHILD_TIMEOUT_S} s: a lost wake-up"
                assert echoes[-1] == i % 1024
            assert len(echoes) == N
            if wait == "sleep":
                assert ombm.stats()["wakeups"] > before["wakeups"], "the child was expected to fall asleep"
            assert h.expect(parent_end, "result") == {"seen": N}
            assert h.join(p) == 0
        finally:
            receiver.close()


# ---- fault injection
SENDER = """
import json, ombm
seg = ombm.open_segment({name!r})
region = seg.bind()
for i in range({n}):
    {send}
print(json.dumps(ombm.stats()))
"""

FAULTS = {"OMBM_FAULT_SEED": "1234"}


def run_faulty_sender(procs, seg, env, n, send):
    run = procs.python(SENDER.format(name=seg.name, n=n, send=send), env=env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def drain(receiver):
    while receiver.dispatch_pending():
        pass


@pytest.mark.fault_injection
def test_dropped_signals_are_lost_counted_and_reproducible_with_a_seed(procs):
    with ombm.create_segment(4096, name=f"core-drop-{os.getpid()}") as seg:
        region = seg.bind()
        receiver = ombm.Receiver(capacity=2048)
        try:
            got = []
            receiver.add_handler(region.address, seg.size, lambda a: got.append(a - region.address))
            runs = []
            for _ in range(2):
                stats = run_faulty_sender(procs, seg, {**FAULTS, "OMBM_FAULT_DROP": "0.3"}, 1000,
                                          "ombm.signal(region.address + i)")
                drain(receiver)
                runs.append((list(got), stats))
                got.clear()
            for delivered, stats in runs:
                assert 200 <= stats["signals_dropped_fault"] <= 400  # p = 0.3 of 1000, > 6 sigma either side
                assert stats["signals_sent"] + stats["signals_dropped_fault"] == 1000
                assert stats["signals_dropped"] == 0  # injected loss is not FIFO overflow
                assert len(delivered) == stats["signals_sent"]
                assert delivered == sorted(set(delivered))  # a loss, never a reorder or a duplicate
            assert runs[0][0] == runs[1][0], "the same seed drops the same signals"
        finally:
            receiver.close()


@pytest.mark.fault_injection
def test_corrupted_messages_flip_one_bit_and_are_counted(procs):
    n = 400
    with ombm.create_segment(64 * n, name=f"core-corrupt-{os.getpid()}") as seg:
        region = seg.bind()
        receiver = ombm.Receiver(capacity=512)
        try:
            got = []
            receiver.add_handler(region.address, seg.size, lambda a: got.append(a - region.address))
            send = "region.write(64 * i, bytes((i + k) % 256 for k in range(64)))"
            stats = run_faulty_sender(procs, seg, {**FAULTS, "OMBM_FAULT_CORRUPT": "0.2"}, n, send)
            drain(receiver)
            assert got == [64 * i for i in range(n)]  # corruption loses no signal
            damaged = 0
            for i in range(n):
                expected = bytes((i + k) % 256 for k in range(64))
                actual = region.read(64 * i, 64)
                flipped = sum(bin(a ^ b).count("1") for a, b in zip(expected, actual))
                assert flipped in (0, 1)
                damaged += flipped
            assert damaged == stats["messages_corrupted_fault"]
            assert 40 <= damaged <= 130  # p = 0.2 of 400
        finally:
            receiver.close()


@pytest.mark.fault_injection
def test_faults_are_off_unless_set(procs):
    with ombm.create_segment(4096, name=f"core-nofault-{os.getpid()}") as seg:
        region = seg.bind()
        receiver = ombm.Receiver(capacity=1024)
        try:
            got = []
            receiver.add_handler(region.address, seg.size, got.append)
            stats = run_faulty_sender(procs, seg, {}, 500, "ombm.signal(region.address + i)")
            drain(receiver)
            assert stats["signals_sent"] == len(got) == 500
            assert stats["signals_dropped_fault"] == 0
        finally:
            receiver.close()
