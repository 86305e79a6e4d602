"""RawChannel in one process: addressing, generations, missed counts, torn reads, bad input.

The raw channel is best effort (paper §3.2, §4): a reader that falls behind loses
units, counts what it missed, and never slows the writer.
"""

from __future__ import annotations

import os

import pytest

import ombm
from ombm.channels.raw import ChannelTimeout, EndOfStream, RawChannel, RawFrame
from ombm.channels.stream import Stream


@pytest.fixture
def name(request):
    return f"chraw-{os.getpid()}-{request.node.name[:40].replace('[', '-').replace(']', '')}"


@pytest.fixture
def pair(name, own_receiver):
    with RawChannel.create(name, unit_size=200, units=4) as w, RawChannel.open(name) as r:
        yield w, r


def test_units_are_addressed_and_carry_seq_and_generation(pair):
    w, r = pair
    assert w.write(b"first") == 1
    assert w.write(b"tile", unit=3) == 2
    f1, f2 = r.recv(1), r.recv(1)
    assert f1 == RawFrame(unit=0, seq=1, generation=1, data=b"first")
    assert f2 == RawFrame(unit=3, seq=2, generation=1, data=b"tile")
    assert r.read(3) == f2 and r.read(2) is None  # addressed read; unit 2 was never written
    assert r.statistics().received == 2 and r.statistics().missed == 0


def test_slow_reader_misses_units_and_counts_them_writer_never_waits(pair):
    w, r = pair
    for i in range(30):  # 30 writes into 4 units: the reader has not read any
        w.write(b"frame %d" % i)
    got = []
    while True:
        try:
            got.append(r.recv_nowait())
        except ombm.WouldBlock:
            break
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs) and seqs[-1] == 30  # ordered, and the newest arrived
    assert all(f.data == b"frame %d" % (f.seq - 1) for f in got)
    stats = r.statistics()
    assert stats.received == len(got) and stats.missed == 30 - len(got) > 0


def test_unordered_reader_treats_each_unit_as_its_own_stream(name, own_receiver):
    with RawChannel.create(name, unit_size=64, units=3) as w, RawChannel.open(name, ordered=False) as r:
        w.write(b"a0", unit=0)
        w.write(b"b0", unit=1)
        w.write(b"a1", unit=0)
        w.write(b"a2", unit=0)  # unit 0 generation 3; generation 2 was overwritten before we read
        got = [r.recv(1) for _ in range(2)]
        assert [(f.unit, f.generation, f.data) for f in got] == [(0, 3, b"a2"), (1, 1, b"b0")]
        with pytest.raises(ombm.WouldBlock):
            r.recv_nowait()  # the later signals for unit 0 are stale: generation 3 was delivered
        assert r.statistics().missed == 2 and r.statistics().stale >= 2


def test_a_reader_counts_only_what_was_written_after_it_joined(name, own_receiver):
    with RawChannel.create(name, unit_size=64, units=2) as w:
        for _ in range(5):
            w.write(b"before")
        with RawChannel.open(name) as r:
            w.write(b"after")
            assert r.recv(1).data == b"after"
            assert r.statistics().missed == 0


def test_a_unit_being_written_reads_as_torn(pair):
    w, r = pair
    w.write(b"old", unit=1)
    assert r.read(1).data == b"old"
    buf = w.begin(unit=1)  # generation begins: the unit is now being written
    buf[:3] = b"new"
    assert r.read(1) is None and r.statistics().torn == 1
    assert w.commit(3) == 2
    assert r.read(1).data == b"new"


def test_a_view_detects_an_overwrite_and_refuses_use_after_release(pair):
    w, r = pair
    w.write(b"x" * 100, unit=0)
    view = r.recv_view(1)
    assert bytes(view.data[:3]) == b"xxx" and view.intact()
    assert view.data.readonly
    w.write(b"y" * 100, unit=0)
    assert not view.intact()  # the writer does not wait for readers: check after use
    view.release()
    with pytest.raises(ValueError):
        view.data[0]


def test_recv_into_copies_into_the_callers_buffer(pair):
    w, r = pair
    w.write(bytes(range(50)))
    buf = bytearray(r.max_payload)
    frame = r.recv_into(buf, 1)
    assert frame.data == bytes(range(50)) and frame.data.obj is buf
    with pytest.raises(ValueError, match="smaller"):
        r.recv_into(bytearray(10), 0)
    with pytest.raises(TypeError):
        r.recv_into(b"read-only" * 100, 0)


def test_timeouts(pair):
    _, r = pair
    with pytest.raises(ChannelTimeout) as info:
        r.recv(0.02)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ombm.OmbmError)
    with pytest.raises(ValueError):
        r.recv(-1)
    with pytest.raises(ValueError):
        r.recv(float("nan"))
    with pytest.raises(TypeError):
        r.recv("1")
    with pytest.raises(TypeError):
        r.recv(True)


def test_bad_writes_change_nothing(pair):
    w, r = pair
    with pytest.raises(ValueError, match="do not fit"):
        w.write(b"z" * (w.max_payload + 1))
    with pytest.raises(ombm.AddressError):
        w.write(b"x", unit=4)
    with pytest.raises(TypeError):
        w.write(b"x", unit="0")
    with pytest.raises(TypeError):
        w.write(12345)
    with pytest.raises(ombm.WouldBlock):
        r.recv_nowait()  # nothing was published
    assert w.write(b"ok") == 1
    assert r.recv(1).data == b"ok"


def test_ends_are_one_way(pair):
    w, r = pair
    with pytest.raises(ombm.ReadOnlyError):
        r.write(b"x")
    with pytest.raises(ombm.ReadOnlyError):
        r.begin()
    with pytest.raises(TypeError):
        w.recv(0)
    with pytest.raises(RuntimeError):
        w.commit(1)


def test_closed_ends_raise_closed_error(name, own_receiver):
    w = RawChannel.create(name, unit_size=64, units=2)
    r = RawChannel.open(name)
    r.close()
    r.close()  # idempotent
    with pytest.raises(ombm.ClosedError):
        r.recv(0)
    with pytest.raises(ombm.ClosedError):
        r.read(0)
    w.close()
    with pytest.raises(ombm.ClosedError):
        w.write(b"x")


def test_the_writers_close_ends_the_readers_stream_after_what_was_written(name, own_receiver):
    w = RawChannel.create(name, unit_size=64, units=4)
    with RawChannel.open(name) as r:
        w.write(b"last")
        w.close()
        assert r.recv(1).data == b"last"
        with pytest.raises(EndOfStream):
            r.recv(5)


def test_open_errors(name, own_receiver):
    with pytest.raises(ombm.SegmentNotFoundError):
        RawChannel.open(name)
    with pytest.raises(ValueError):
        RawChannel.open("../etc")
    with RawChannel.create(name, unit_size=64, units=1):
        with pytest.raises(ombm.SegmentExistsError):
            RawChannel.create(name)
    with Stream.create(name, slot_bytes=64, slots=1):
        with pytest.raises(ombm.SegmentFormatError, match="stream, not a raw channel"):
            RawChannel.open(name)
    with ombm.create_segment(4096, name=name):
        with pytest.raises(ombm.SegmentFormatError):
            RawChannel.open(name)


@pytest.mark.parametrize("kw", [{"unit_size": 0}, {"units": 0}, {"unit_size": -5}])
def test_bad_create_arguments(name, kw):
    with pytest.raises(ValueError):
        RawChannel.create(name, **kw)


def test_units_are_cache_line_multiples_with_the_header_at_the_end(name):
    with RawChannel.create(name, unit_size=100, units=2) as w:
        assert w.slot_size % 64 == 0 and w.max_payload == w.slot_size - 32 >= 100
        assert w.segment.unit == w.slot_size  # one signal per unit


def test_checksummed_frames_are_checked_and_a_changed_payload_is_not_delivered(name, own_receiver):
    """checksum=True (what a reader on another host needs): the CRC32C of the payload is in the unit's
    header; a payload changed under consistent generations (a bridge's torn copy, or any process
    writing it) reads as torn, never as a frame."""
    from ombm.core.segment import open_segment

    with RawChannel.create(name, unit_size=200, units=4, checksum=True) as w, RawChannel.open(name) as r:
        w.write(b"good frame")
        assert r.recv(1).data == b"good frame"
        buf = w.begin(unit=1)
        buf[:5] = b"later"
        w.commit(5)
        assert r.recv(1).data == b"later"     # commit takes the checksum too
        w.write(b"to be changed", unit=2)
        seg = open_segment(name)
        try:
            with seg.bind(writable=True) as region:
                start = w.slot_offset(2)
                region.buffer[start:start + 2] = b"TO"  # the generations still agree
            assert r.read(2) is None and r.statistics().torn == 1
            with pytest.raises(ChannelTimeout):
                r.recv(0.2)
            assert r.statistics().received == 2
        finally:
            seg.release()


def test_the_control_block_ends_its_unit_and_is_published_with_a_write(name, own_receiver):
    """Across hosts a bridge sends what a write completes: the writer writes the control block,
    which ends the first unit, when it makes the channel and when it closes it (a signal there)."""
    from ombm.channels.raw import CONTROL_SIZE, control_offset
    from ombm.core.segment import open_segment
    from ombm.core.signals import Receiver

    assert control_offset(64) == 0 and control_offset(256) == 128 and control_offset(1 << 20) == (1 << 20) - 128
    w = RawChannel.create(name, unit_size=200, units=2)
    seg = open_segment(name)
    signals: list[int] = []
    receiver = Receiver()
    try:
        with seg.bind(writable=False) as region:
            assert w.first == seg.unit and bytes(region.buffer[w.first - CONTROL_SIZE:][:8]) == b"OMBMCHN\x01"
            receiver.add_handler(region.address, seg.unit, lambda address: signals.append(address - region.address))
            w.close()
            receiver.wait(5.0)
            assert signals == [0]
    finally:
        receiver.close()
        w.close()
        seg.release()
