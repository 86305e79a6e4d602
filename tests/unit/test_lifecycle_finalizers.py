"""Every owner of an OS resource, dropped unclosed, releases it and says so with a ``ResourceWarning``
naming it, as CPython's unclosed file does (issue 11, item 6; STYLE.md: finalizers warn, never raise).
Red team: a dropped Segment kept three descriptors and its mapping until exit.

Each test counts this process's descriptors (``/proc/self/fd``) and the mappings of the object's
file (``/proc/self/maps``) before and after.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import weakref

import pytest

import ombm
from ombm.core import namespace
from ombm.core.signals import Receiver


class Calc:
    def add(self, a, b):
        return a + b


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def mappings_of(path: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(path) or line.rstrip().endswith(path + " (deleted)"))


def dropped(match: str):
    """Expect a ResourceWarning naming the object dropped inside the block (refcount or gc)."""
    return pytest.warns(ResourceWarning, match=match)


def _dropped_and_collected(obj: object):
    """A function that waits until ``obj`` (dropped by the caller meanwhile) was collected. Another
    thread may hold it for a moment (the retransmission timer ticks every client it has): the wait
    is bounded, and the test's own checks say whether it went."""
    ref = weakref.ref(obj)
    del obj

    def collected() -> None:
        for _ in range(1000):
            gc.collect()
            if ref() is None:
                return
            time.sleep(0.01)

    return collected


def test_a_mapped_segment_holds_no_descriptor():
    before = descriptors()
    seg = ombm.create_segment(1 << 16)
    writable, readable = seg.bind(), seg.bind(writable=False)
    try:
        assert descriptors() == before
        assert mappings_of(seg.path) == 3  # the header and two bindings
        writable.write(0, b"abc")
        assert readable.read(0, 3) == b"abc"
        other = ombm.open_segment(seg.name)
        other_region = other.bind(writable=False)
        assert descriptors() == before and other_region.read(0, 3) == b"abc"
        other.release()
    finally:
        seg.release()
    assert mappings_of(seg.path) == 0


def test_a_dropped_segment_warns_and_releases_its_mappings_and_its_name():
    before = descriptors()
    seg = ombm.create_segment(1 << 16)
    region = seg.bind()
    path, name = seg.path, seg.name
    assert mappings_of(path) == 2
    with dropped(name):
        del seg, region
        gc.collect()
    assert descriptors() == before
    assert mappings_of(path) == 0
    assert not os.path.exists(path)
    ombm.create_segment(4096, name=name).release()  # the name is free again


def test_a_segment_never_bound_and_dropped_closes_its_descriptor():
    before = descriptors()
    seg = ombm.create_segment(4096)
    path = seg.path
    assert descriptors() == before + 1  # kept until the first bind
    with dropped("unreleased"):
        del seg
        gc.collect()
    assert descriptors() == before and not os.path.exists(path)


def test_a_dropped_region_warns_and_unmaps():
    seg = ombm.create_segment(1 << 16)
    try:
        region = seg.bind()
        assert mappings_of(seg.path) == 2
        with dropped("Region"):
            del region
            gc.collect()
        assert mappings_of(seg.path) == 1  # the header only
        with dropped("Region"):
            assert bytes(seg.bind(writable=False).read(0, 4)) == bytes(4)  # a second bind reopens the name
        assert mappings_of(seg.path) == 1
    finally:
        seg.release()


def test_a_view_kept_from_a_dropped_region_stays_valid():
    seg = ombm.create_segment(4096)
    try:
        region = seg.bind()
        region.write(0, b"still here")
        view = region.buffer
        with dropped("Region"):
            del region
            gc.collect()
        assert bytes(view[:10]) == b"still here"
        del view
        gc.collect()
        assert mappings_of(seg.path) == 1
    finally:
        seg.release()


def test_a_dropped_receiver_warns_and_removes_its_fifo():
    before = descriptors()
    receiver = Receiver()
    path = receiver.fifo.path
    assert os.path.exists(path) and descriptors() == before
    with dropped("Receiver"):
        del receiver
        gc.collect()
    assert not os.path.exists(path)
    assert mappings_of(path) == 0


def test_a_dropped_dispatcher_warns_and_its_thread_ends():
    dispatcher = ombm.Dispatcher(name="dropped-dispatcher")
    path = dispatcher.receiver.fifo.path
    thread = dispatcher._thread
    with dropped("Dispatcher"):
        del dispatcher  # its thread held it for its current wait: it is collected when that ends
        thread.join(10)
        gc.collect()
    assert not thread.is_alive()
    gc.collect()
    assert not os.path.exists(path)


def test_a_dropped_client_and_server_warn_and_release_their_channels():
    name = f"t-drop-{os.getpid()}-{namespace.new_token() & 0xFFFFFF:06x}"
    before = descriptors()
    server = ombm.rpc.Server(name, Calc()).start()
    client = ombm.rpc.connect(name, timeout=10.0)
    assert client.add(2, 3) == 5
    paths = [client._request.segment.path, client._reply.segment.path]
    with dropped("Client"):
        collected = _dropped_and_collected(client)
        del client
        collected()
    assert [p for p in paths if os.path.exists(p)] == []
    server.stop()  # a running server is held by its thread: stop() is how it ends
    idle = ombm.rpc.Server(name, Calc())  # never started
    well_known = idle._well_known.segment.path
    with dropped("Server"):
        del idle
        gc.collect()
    assert not os.path.exists(well_known)
    deadline = time.monotonic() + 5
    while descriptors() > before and time.monotonic() < deadline:  # the timer thread's, if any
        time.sleep(0.01)
    assert descriptors() == before


def test_dropped_channel_ends_warn_and_release():
    writer = ombm.RawChannel.create(unit_size=256, units=4)
    reader = ombm.RawChannel.open(writer.name, timeout=5.0)
    path = writer.segment.path
    with dropped("RawChannel"):
        del writer, reader
        gc.collect()
    assert not os.path.exists(path) and mappings_of(path) == 0
    stream = ombm.Stream.create()
    path = stream.segment.path
    with dropped("Stream"):
        del stream
        gc.collect()
    assert not os.path.exists(path) and mappings_of(path) == 0


def test_finalizers_never_raise(monkeypatch):
    """A release that fails inside a finalizer is swallowed: nothing reaches sys.unraisablehook."""
    seg = ombm.create_segment(4096)
    region = seg.bind()

    def broken(*args, **kwargs):
        raise RuntimeError("release failed")

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(ombm.Region, "_unbind", broken)
    with dropped("Region"):
        del region
        gc.collect()
    monkeypatch.undo()
    assert unraisable == []
    seg.release()
