"""Stream in one process (both ends, sometimes a reader thread): order, flow control,
repair, end of stream, bad input.  Cross-process behaviour is in tests/integration."""

from __future__ import annotations

import os
import threading

import pytest

import ombm
from ombm.channels import stream as stream_mod
from ombm.channels.raw import ChannelTimeout, EndOfStream
from ombm.channels.raw import RawChannel
from ombm.channels.stream import Stream


@pytest.fixture
def name(request):
    return f"chst-{os.getpid()}-{request.node.name[:40].replace('[', '-').replace(']', '')}"


@pytest.fixture
def pair(name, own_receiver):
    w = Stream.create(name, slot_bytes=100, slots=4)
    r = Stream.open(name)
    yield w, r
    r.close()
    w.close(flush_timeout=0)


@pytest.fixture
def quick_pair(name, own_receiver, monkeypatch):
    """A pair whose writer repairs after 10 ms (its protocol's RTO) instead of 100 ms."""
    monkeypatch.setattr(stream_mod, "RTO_MIN_S", 0.01)
    w = Stream.create(name, slot_bytes=100, slots=4)
    r = Stream.open(name)
    yield w, r
    r.close()
    w.close(flush_timeout=0)


def drain(r):
    out = []
    while True:
        try:
            out.append(r.recv_nowait())
        except ombm.WouldBlock:
            return out


def test_messages_arrive_in_order_whole_and_owned(pair):
    w, r = pair
    mp = w.max_payload
    msgs = [b"", b"a", b"x" * mp, b"y" * (mp + 1), os.urandom(2 * mp + 5)]  # 0 bytes .. 3 fragments
    for m in msgs[:3]:
        w.send(m)
    got = [r.recv(1) for _ in range(3)]
    for m in msgs[3:]:
        w.send(m, timeout=5)
        got.append(r.recv(1))
    assert got == msgs
    assert all(isinstance(g, bytearray) for g in got)
    assert w.statistics().fragments_sent == 1 + 1 + 1 + 2 + 3


def test_bytes_like_inputs(pair):
    import numpy as np

    w, r = pair
    w.send(bytearray(b"ba"))
    w.send(memoryview(b"mv"))
    w.send(np.arange(3, dtype=np.uint8))
    assert drain(r) == [b"ba", b"mv", b"\x00\x01\x02"]
    with pytest.raises(TypeError, match="bytes-like"):
        w.send("text")
    with pytest.raises(TypeError):
        w.send(42)


def test_flow_control_a_full_window_refuses_without_losing(pair):
    w, r = pair
    for i in range(4):  # 4 slots
        w.send_nowait(b"m%d" % i)
    with pytest.raises(ombm.WouldBlock):
        w.send_nowait(b"too many")
    with pytest.raises(ChannelTimeout) as info:
        w.send(b"still too many", timeout=0.05)
    assert info.value.partial is False  # nothing of it went
    assert r.recv(1) == b"m0"  # one slot free again
    w.send_nowait(b"m4")
    assert drain(r) == [b"m1", b"m2", b"m3", b"m4"]  # "too many" were never sent


def test_a_message_longer_than_the_window_streams_through(pair):
    w, r = pair
    big = os.urandom(w.max_payload * 20 + 17)  # 21 fragments through a 4-slot window
    with pytest.raises(ValueError, match="window"):
        w.send_nowait(big)
    got = []
    t = threading.Thread(target=lambda: got.append(r.recv(10)))
    t.start()
    w.send(big, timeout=10)
    t.join(10)
    assert got == [big]
    assert w.statistics().waits > 0  # the writer waited for the reader


def test_timeout_in_the_middle_of_a_long_message_finishes_it_later(pair):
    w, r = pair
    big = os.urandom(w.max_payload * 6)  # 6 fragments, 4 slots
    with pytest.raises(ChannelTimeout) as info:
        w.send(big, timeout=0.05)
    assert info.value.partial is True
    with pytest.raises(ombm.WouldBlock):
        r.recv_nowait()  # 4 of 6 fragments are there: no message yet
    t = threading.Thread(target=w.flush, args=(10,))
    t.start()
    assert r.recv(10) == big
    t.join(10)
    assert not t.is_alive()


def test_recv_timeouts_and_nowait(pair):
    w, r = pair
    with pytest.raises(ChannelTimeout):
        r.recv(0.02)
    with pytest.raises(ombm.WouldBlock):
        r.recv_nowait()
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError):
            r.recv(bad)
        with pytest.raises(ValueError):
            w.send(b"x", timeout=bad)
    with pytest.raises(TypeError):
        r.recv("soon")
    w.send(b"ok")
    assert r.recv(0) == b"ok"  # timeout 0: a poll


def test_flush_waits_for_the_reader(pair):
    w, r = pair
    w.send(b"a")
    with pytest.raises(ChannelTimeout):
        w.flush(0.05)
    r.recv(1)
    w.flush(1)
    assert w.statistics().unacked == 0


def test_end_of_stream_after_the_last_message(pair):
    w, r = pair
    w.send(b"1")
    w.send(b"2")
    w.close(flush_timeout=0)
    assert list(r) == [b"1", b"2"]
    with pytest.raises(EndOfStream):
        r.recv(1)
    assert isinstance(EndOfStream("x"), EOFError)


def test_a_reader_that_closes_breaks_the_writer(pair):
    w, r = pair
    r.close()
    with pytest.raises(ombm.ChannelBrokenError, match="reader closed"):
        w.send(b"x")


def test_one_reader_one_writer(name, own_receiver):
    with Stream.create(name, slot_bytes=64, slots=2) as w:
        with pytest.raises(ombm.SegmentExistsError):
            Stream.create(name)  # a second writer
        with Stream.open(name):
            with pytest.raises(ombm.SegmentExistsError, match="already has a reader"):
                Stream.open(name)  # a second reader
        with pytest.raises(ombm.ChannelBrokenError):
            w.send(b"after the reader left")


def test_use_after_close_and_wrong_end(pair):
    w, r = pair
    with pytest.raises(ombm.ReadOnlyError):
        r.send(b"x")
    with pytest.raises(TypeError):
        w.recv(0)
    r.close()
    with pytest.raises(ombm.ClosedError):
        r.recv(0)
    with pytest.raises(ombm.ClosedError):
        r.recv_nowait()
    w.close()
    w.close()
    with pytest.raises(ombm.ClosedError):
        w.send(b"x")


def test_open_errors(name, own_receiver):
    with pytest.raises(ombm.SegmentNotFoundError):
        Stream.open(name)
    with pytest.raises(ombm.SegmentNotFoundError):
        Stream.open(name, timeout=0.05)  # waited for it, in vain
    with pytest.raises(ValueError):
        Stream.open(name, timeout=-1)
    with pytest.raises(ValueError):
        Stream.create(name, slots=0)
    with pytest.raises(ValueError):
        Stream.create("x" * 199)  # its credit channel's name would be too long
    with RawChannel.create(name, unit_size=64, units=1):
        with pytest.raises(ombm.SegmentFormatError, match="raw channel, not a stream"):
            Stream.open(name)


def test_a_corrupt_frame_is_repaired_by_the_writer(quick_pair):
    w, r = quick_pair
    w.send(b"precious data")
    end = w.first + w.slot_size
    w._wbuf[end - 48 - 5] ^= 0xFF  # flip a payload byte in the slot after the signal
    with pytest.raises(ombm.WouldBlock):
        r.recv_nowait()
    assert r.statistics().bad_frames >= 1
    t = threading.Thread(target=w.flush, args=(10,))
    t.start()
    assert r.recv(10) == b"precious data"
    t.join(10)
    assert w.statistics().repairs == 1


def test_a_lost_signal_costs_one_tick(pair):
    w, r = pair
    w.send(b"quiet")
    r._receiver.dispatch_pending()  # swallow the signal as if it were lost ...
    r._hint[0] = 0  # ... and never seen
    assert r.recv(5) == b"quiet"  # found by looking again after a tick


def test_a_changed_source_buffer_breaks_instead_of_delivering_changed_data(quick_pair):
    w, r = quick_pair
    buf = bytearray(b"original")
    w.send(buf)
    w._wbuf[w.first + w.slot_size - 48 - 1] ^= 1  # the frame is corrupt ...
    buf[:] = b"changed!"  # ... and its source changed before it was acknowledged
    with pytest.raises(ombm.ChannelBrokenError, match="changed"):
        w.flush(5)


def test_received_buffers_are_reused_once_dropped(name, own_receiver):
    with Stream.create(name, slot_bytes=1 << 17, slots=2) as w, Stream.open(name) as r:
        w.send(b"a" * 100_000)
        first = r.recv(1)
        first_id = id(first)
        del first
        w.send(b"b" * 100_000)
        second = r.recv(1)
        assert id(second) == first_id and second == b"b" * 100_000
        w.send(b"c" * 100_000)
        third = r.recv(1)  # `second` is still held: a different buffer
        assert third is not second and second == b"b" * 100_000 and third == b"c" * 100_000


def test_statistics_and_repr(pair):
    w, r = pair
    n = 2 * w.max_payload + 1
    w.send(b"x" * n)
    r.recv(1)
    ws, rs = w.statistics(), r.statistics()
    assert (ws.messages_sent, ws.fragments_sent, ws.bytes_sent) == (1, 3, n)
    assert (rs.messages_received, rs.fragments_received, rs.bytes_received) == (1, 3, n)
    assert "writer" in repr(w) and "reader" in repr(r)


def test_slots_fit_a_whole_message_of_slot_bytes(name):
    with Stream.create(name, slot_bytes=1 << 20, slots=1) as w:
        assert w.max_payload >= 1 << 20 and w.slot_size % 64 == 0
        assert w.segment.unit == w.slot_size


def test_a_timeout_while_finishing_an_earlier_message_sends_nothing_new(pair):
    w, r = pair
    with pytest.raises(ChannelTimeout) as first:
        w.send(os.urandom(w.max_payload * 6), timeout=0.05)  # 4 of 6 fragments went
    assert first.value.partial is True
    with pytest.raises(ChannelTimeout) as second:
        w.send(b"next", timeout=0.05)
    assert second.value.partial is False  # "next" was not sent: the caller may send it again


def test_a_stream_is_read_once(name, own_receiver):
    with Stream.create(name, slot_bytes=64, slots=2):
        Stream.open(name).close()
        with pytest.raises(ombm.ChannelBrokenError, match="read once"):
            Stream.open(name)


def test_the_stream_ends_cleanly_only_on_what_the_writer_reports_it_sent(name, own_receiver):
    """The writer's final counts (data control block) must match what the reader took; a reader
    that took fewer gets StreamProtocolError saying how many are missing, never EndOfStream."""
    from ombm import _native
    from ombm.channels.raw import CTRL_SENT_FRAGMENTS, CTRL_SENT_MESSAGES, control_offset
    from ombm.core.segment import open_segment

    w = Stream.create(name, slot_bytes=100, slots=4)
    r = Stream.open(name)
    seg = open_segment(name)  # a bystander, who will rewrite the counts: as if two messages were lost
    try:
        for i in range(3):
            w.send(b"m%d" % i)
        w.close(flush_timeout=0)
        assert [bytes(r.recv(1)) for _ in range(3)] == [b"m0", b"m1", b"m2"]
        with seg.bind(writable=True) as region:
            ctrl = region.address + control_offset(seg.unit)
            _native.store64(ctrl + CTRL_SENT_FRAGMENTS, 5)
            _native.store64(ctrl + CTRL_SENT_MESSAGES, 5)
            with pytest.raises(ombm.StreamProtocolError, match=r"2 messages \(2 fragments\) missing"):
                r.recv(1)
            _native.store64(ctrl + CTRL_SENT_FRAGMENTS, 3)
            _native.store64(ctrl + CTRL_SENT_MESSAGES, 3)
            with pytest.raises(EndOfStream):
                r.recv(1)
    finally:
        seg.release()
        r.close()
        w.close(flush_timeout=0)
