"""Both sides on one CPU (issue 13, item 3): a wait whose peer shares its CPU hands the CPU over
with one yield, keeping the GIL if its thread is the process's only one, and sleeps on the futex
instead while a third task crowds the CPU (``_native/sync.c``, *the hand-over on one CPU*). Every
signal must still arrive, and a hint a peer forged (that it runs on the waiter's CPU when it does
not) may cost a yield, never a signal. The children are
spawned (single-threaded, as the hand-over that keeps the GIL needs), daemonic, joined under a
timeout; the timeouts are liveness bounds, never performance claims.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
import time

import helpers_core as h
import pytest

import ombm
from ombm import _layout as L

pytestmark = pytest.mark.processes

PINGS = 400


@pytest.fixture
def seg():
    with ombm.create_segment(4096, name=f"core-1cpu-{os.getpid()}") as s:
        yield s


@pytest.fixture
def pinned_to():
    """Pin this thread to a CPU (restored afterwards): call it with the CPU."""
    allowed = os.sched_getaffinity(0)
    yield lambda cpu: os.sched_setaffinity(0, {cpu})
    os.sched_setaffinity(0, allowed)


def ping_pong(procs, seg, child_cpu, between=lambda info: None, settings=None):
    """PINGS round trips with a spawned echo on ``child_cpu``: the replies this side got, the pings the
    child answered. ``between(info)`` runs after each ping is written."""
    region = seg.bind()
    parent_end, child_end = procs.pipe("spawn")
    p = procs.spawn(h.echo_pings, child_end, seg.name, child_cpu, settings or {})
    info = h.expect(parent_end, "ready")
    replies = [0]
    rx = ombm.Receiver()
    try:
        rx.add_handler(region.address + 64, 64, lambda a: replies.__setitem__(0, replies[0] + 1))
        for _ in range(PINGS):
            region.write(32, b"p" * 32)
            between(info)
            assert rx.wait(h.CHILD_TIMEOUT_S) > 0.0
    finally:
        rx.close()
    parent_end.send("stop")
    answered = h.expect(parent_end, "result")["answered"]
    assert h.join(p) == 0
    return replies[0], answered


@pytest.mark.parametrize("wait", ["adaptive", "spin"])
def test_a_ping_pong_on_one_cpu_answers_every_ping(procs, seg, pinned_to, wait):
    cpu = min(os.sched_getaffinity(0))
    pinned_to(cpu)
    previous = ombm.settings().wait
    ombm.configure(wait=wait)
    try:
        assert ping_pong(procs, seg, cpu, settings={"wait": wait}) == (PINGS, PINGS)
    finally:
        ombm.configure(wait=previous)


def test_a_ping_pong_beside_a_cpu_bound_task_on_its_cpu_answers_every_ping(procs, seg, pinned_to):
    """A third task shares the CPU: the hand-overs find it crowded and the waits sleep on the futex
    instead (``handover_crowded``), woken by each push; every ping is still answered."""
    cpu = min(os.sched_getaffinity(0))
    pinned_to(cpu)
    burner_end, child_end = procs.pipe("spawn")
    burner = procs.spawn(h.burn_cpu, child_end, cpu)
    h.expect(burner_end, "ready")
    try:
        assert ping_pong(procs, seg, cpu) == (PINGS, PINGS)
    finally:
        burner_end.send("stop")
        assert h.join(burner) == 0


def test_a_forged_same_cpu_hint_costs_no_signal(procs, seg, pinned_to):
    """The peer runs on another CPU, answers after a random pause, and after each ping writes into the
    child's FIFO that it runs on the child's CPU: the child's waits hand the CPU over to nobody, then
    wait on as before, and answer every ping."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    pinned_to(allowed[0])
    child_cpu = allowed[1]
    rng = random.Random(13)
    fifos: dict[str, mmap.mmap] = {}

    def forge(info) -> None:
        if "m" not in fifos:
            fd = os.open(info["fifo"], os.O_RDWR)
            try:
                fifos["m"] = mmap.mmap(fd, L.FIFO_CELLS)
            finally:
                os.close(fd)
        struct.pack_into("<I", fifos["m"], L.FIFO_PEER_CPU, child_cpu + 1)
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.001)

    try:
        assert ping_pong(procs, seg, child_cpu, forge) == (PINGS, PINGS)
    finally:
        for m in fifos.values():
            m.close()
