"""What processes leave behind: SIGKILL then ``ombm gc``, lazy reclamation, clean normal exits.

DESIGN.md §3: no daemon; state of dead processes is reclaimed lazily (by
senders, by create_segment) and by ``ombm gc``; nothing stays in /dev/shm
after a normal exit. Other programs may share the per-user folder, so the
assertions are about *our* children's objects, not about global counts.
"""

from __future__ import annotations

import json
import os
import signal as os_signal

import helpers_core as h
import pytest

import ombm
from ombm import _layout as L
from ombm.core import admin as ombm_inspect

pytestmark = pytest.mark.processes


def start(procs, name, *, size=4096, create=False, watch=False, settings=None):
    parent_end, child_end = procs.pipe()
    p = procs.fork(h.hold_and_block, child_end, name, size, create, watch, settings)
    return p, h.expect(parent_end, "ready")


def sigkill(p) -> None:
    os.kill(p.pid, os_signal.SIGKILL)
    assert h.join(p) == -os_signal.SIGKILL


def entries_of(seg, pid):
    return [e for e in seg.directory.entries() if e.pid == pid]


@pytest.fixture
def seg():
    with ombm.create_segment(4096, name=f"core-rcl-{os.getpid()}") as s:
        yield s


GC_CLI = "import sys; from ombm.cli import main; sys.exit(main(['gc']))"


@pytest.mark.parametrize("via", ["api", "cli"])
def test_gc_reclaims_the_fifo_and_entries_of_a_sigkilled_receiver(procs, seg, via):
    region = seg.bind()
    p, info = start(procs, seg.name, watch=True)
    kinds = sorted(e.kind for e in entries_of(seg, info["pid"]))
    assert kinds == [L.KIND_HOLDER, L.KIND_RECEIVER]
    sigkill(p)
    assert os.path.exists(info["fifo"]), "a SIGKILLed receiver cannot clean up after itself"
    for i in range(10):  # the sender is unaffected by the dead receiver
        ombm.signal(region.address + i)
    if via == "api":
        report = ombm_inspect.gc()
        assert report.fifos_removed >= 1 and report.entries_freed >= 2
    else:
        run = procs.python(GC_CLI)  # `ombm gc`
        assert run.returncode == 0, run.stderr
        assert "reclaimed" in run.stdout
    assert not os.path.exists(info["fifo"])
    assert entries_of(seg, info["pid"]) == []
    assert os.path.exists(seg.path), "the segment has a live holder (us)"
    before = ombm.stats()
    region.write(0, b"z" * 64)
    assert ombm.stats()["signals_sent"] == before["signals_sent"]  # nobody watches any more


def test_a_sender_reclaims_a_dead_receiver_once_its_fifo_fills(procs, seg):
    region = seg.bind()
    p, info = start(procs, seg.name, watch=True, settings={"fifo_capacity": 8})
    sigkill(p)
    before = ombm.stats()
    for i in range(1000):  # never blocks, never raises
        ombm.signal(region.address + i % 4096)
    after = ombm.stats()
    assert after["signals_sent"] - before["signals_sent"] == 8
    assert after["signals_dropped"] - before["signals_dropped"] >= 1
    assert after["dead_receivers_reclaimed"] - before["dead_receivers_reclaimed"] >= 1
    assert not os.path.exists(info["fifo"])
    assert [e for e in seg.directory.entries() if e.kind == L.KIND_RECEIVER] == []
    assert after["signals_dropped"] - before["signals_dropped"] < 1000 - 8, "it stops signalling a reclaimed FIFO"
    # its holder entry is left for gc
    assert [e.kind for e in entries_of(seg, info["pid"])] == [L.KIND_HOLDER]
    ombm_inspect.gc()
    assert entries_of(seg, info["pid"]) == []


def test_gc_removes_a_segment_whose_creator_was_killed(procs):
    name = f"core-orphan-{os.getpid()}"
    p, info = start(procs, name, create=True)
    path = ombm.core.namespace.segment_path(name)
    sigkill(p)
    assert os.path.exists(path)
    assert [i for i in ombm_inspect.list_segments() if i.name == name][0].holders == 0
    report = ombm_inspect.gc()
    assert not os.path.exists(path)
    assert report.segments_removed >= 1
    with pytest.raises(ombm.SegmentNotFoundError):
        ombm.open_segment(name)


def test_create_segment_reclaims_a_name_whose_holders_all_died(procs):
    name = f"core-reuse-{os.getpid()}"
    p, _ = start(procs, name, create=True, size=4096)
    sigkill(p)
    with ombm.create_segment(8192, name=name) as seg:
        assert seg.size == 8192 and seg.creator
        with ombm.open_segment(name) as again:
            assert again.size == 8192


def test_a_name_with_a_live_holder_is_not_taken_over(procs):
    name = f"core-held-{os.getpid()}"
    p, _ = start(procs, name, create=True)
    opened = ombm.open_segment(name)
    try:
        sigkill(p)
        with pytest.raises(ombm.SegmentExistsError):
            ombm.create_segment(64, name=name)
        opened.bind().write(0, b"still usable")
    finally:
        opened.release()  # the last live holder removes the name
    assert not os.path.exists(ombm.core.namespace.segment_path(name))


CHILD = """
import json, sys, ombm
seg = ombm.open_segment({name!r})
region = seg.bind()
mine = ombm.create_segment(4096)
mine_region = mine.bind()
got = []
handle = ombm.signal_handler(mine_region.address, 4096, got.append)
mine_region.write(0, b"x" * 64)
ombm.sig_wait(10.0)
region.write(0, b"from the child".ljust(64))
print(json.dumps({{"paths": [handle.receiver.fifo.path, mine.path], "got": len(got)}}))
sys.stdout.flush()
{ending}
"""


@pytest.mark.parametrize("ending", ["", "sys.exit(3)", "raise RuntimeError('on purpose')"], ids=["return", "exit", "raise"])
def test_a_normal_exit_leaves_nothing_behind(procs, seg, ending):
    region = seg.bind()
    run = procs.python(CHILD.format(name=seg.name, ending=ending))
    assert run.returncode == {"": 0, "sys.exit(3)": 3}.get(ending, 1), run.stderr
    report = json.loads(run.stdout)
    assert report["got"] == 1
    for path in report["paths"]:
        assert not os.path.exists(path), f"{path} left behind by a child that exited normally"
    assert os.path.exists(seg.path), "an opener's exit must not remove the creator's segment"
    assert region.read(0, 14) == b"from the child"


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["return", "exit", "raise"])
def test_a_multiprocessing_child_leaves_nothing_behind(procs, seg, method, how):
    """multiprocessing children leave through os._exit (no atexit): ombm must clean up anyway."""
    parent_end, child_end = procs.pipe(method)
    start_child = procs.fork if method == "fork" else procs.spawn
    p = start_child(h.use_and_leave, child_end, seg.name, how)
    report = h.expect(parent_end, "ready")
    assert h.join(p) == {"return": 0, "exit": 3, "raise": 1}[how]
    assert report["got"] == 1
    for path in (report["fifo"], report["segment"]):
        assert not os.path.exists(path), f"{path} left behind by a {method} child that exited ({how})"
    assert os.path.exists(seg.path)


UNCLOSED = """
import json, ombm
seg = ombm.create_segment(4096)
dispatcher = ombm.Dispatcher()
dispatcher.signal_handler(seg.bind().address, 64, print)
receiver = ombm.Receiver()
print(json.dumps([dispatcher.receiver.fifo.path, receiver.fifo.path]))
"""


def test_a_normal_exit_removes_the_fifos_of_unclosed_dispatchers_and_receivers(procs):
    run = procs.python(UNCLOSED)
    assert run.returncode == 0, run.stderr
    paths = json.loads(run.stdout)
    try:
        assert [p for p in paths if os.path.exists(p)] == []
    finally:
        ombm_inspect.gc()  # the child is dead: reclaim what it left
        assert [p for p in paths if os.path.exists(p)] == []
