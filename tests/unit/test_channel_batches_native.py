"""The native batch paths of Stream.send_many/recv_many and RawChannel.recv_many (issue 13, item 5):
``_native.stream_put_many``, ``stream_take_many`` and ``raw_take_many``, in one process; and
``Stream.send``'s one call (``stream_put_one``), which leaves the signal out while the reader says it
is reading (the reading word: ``stream_reader_reading``/``stream_reader_idle``).

The native calls take only what their Python paths would (a run of one-fragment bytes messages; new,
intact raw frames) and stop at anything else, which the Python path then handles: these tests pin
that a frame that is torn, corrupt, foreign, out of place or of another kind is never taken by
them, that a batch keeps order and counts, and that bad geometry is refused."""

from __future__ import annotations

import os
import threading

import pytest

import ombm
from ombm import _native
from ombm.channels import stream as stream_mod
from ombm.channels.raw import RawChannel, RawFrame
from ombm.channels.raw import ChannelTimeout
from ombm.channels.stream import CR_FLAGS, CR_READING, READ_AHEAD, READER_REMOTE, TRAILER, Stream

CONN = 0x1234_5678_9ABC_DEF0
FIRST, SLOT, SLOTS = 128, 256, 4
MAXP = SLOT - TRAILER


def ring() -> bytearray:
    return bytearray(FIRST + SLOT * SLOTS)


def put(buf: bytearray, seq: int, messages: list, limit: int | None = None, start: int = 0):
    records: list = []
    count, nbytes = _native.stream_put_many(buf, FIRST, SLOT, SLOTS, MAXP, CONN, seq,
                                            seq + SLOTS if limit is None else limit, messages, start, records)
    return count, nbytes, records


def take(buf: bytearray, expected: int, limit: int = 64):
    return _native.stream_take_many(bytes(buf), FIRST, SLOT, SLOTS, MAXP, CONN, expected, limit)


def test_a_run_written_natively_is_a_run_of_valid_wire_frames_taken_back_in_order():
    buf = ring()
    msgs = [b"a" * 10, b"", b"c" * MAXP]
    count, nbytes, records = put(buf, 5, msgs)
    assert (count, nbytes) == (3, 10 + MAXP)
    assert [r[:5] + r[6:7] for r in records] == [(5 + i, 0, 1, len(m), 0, len(m)) for i, m in enumerate(msgs)]
    assert all(r[5] is m for r, m in zip(records, msgs))  # the source, by reference
    for i, m in enumerate(msgs):  # each frame is what the Python path seals: wire.decode takes it
        end = FIRST + ((5 + i) % SLOTS + 1) * SLOT
        frame = ombm.transport.wire.decode(bytes(buf[end - TRAILER - len(m):end]))
        assert (frame.message_id, frame.payload, frame.kind) == (5 + i, m, ombm.transport.wire.Kind.DATA)
    got, total = take(buf, 5)
    assert got == msgs and total == nbytes and all(type(g) is bytearray for g in got)
    assert take(buf, 5, limit=2)[0] == msgs[:2]
    assert take(buf, 6)[0] == msgs[1:]


def test_put_stops_at_what_it_does_not_write():
    buf = ring()
    assert put(buf, 0, [b"x", bytearray(b"y"), b"z"])[:2] == (1, 1)  # not bytes: the Python path's
    assert put(buf, 0, [b"x", b"y" * (MAXP + 1)])[:2] == (1, 1)      # longer than a slot: fragmented
    assert put(buf, 0, [b"x"] * 8, limit=3)[:2] == (3, 3)             # no credit past the limit
    assert put(buf, 0, [b"x"] * 3, start=2)[:2] == (1, 1)
    with pytest.raises(ValueError):
        _native.stream_put_many(bytearray(FIRST + SLOT), FIRST, SLOT, SLOTS, MAXP, CONN, 0, 4, [b"x"], 0, [])
    with pytest.raises(BufferError):  # the writer's mapping is writable
        _native.stream_put_many(bytes(ring()), FIRST, SLOT, SLOTS, MAXP, CONN, 0, 4, [b"x"], 0, [])


@pytest.mark.parametrize("spoil", ["payload", "trailer", "checksum high half", "connection", "sequence",
                                   "fragment count", "content", "length over max"])
def test_take_stops_at_a_frame_it_must_not_take(spoil):
    buf = ring()
    put(buf, 0, [b"one", b"two!", b"three"])
    end = FIRST + 2 * SLOT  # fragment 1's slot ("two!")
    t = end - TRAILER
    if spoil == "payload":
        buf[t - 1] ^= 1
    elif spoil == "trailer":
        buf[t + 37] = 1  # flags: the checksum no longer seals it
    elif spoil == "checksum high half":
        buf[end - 1] = 1
    else:  # a frame a peer sealed itself, right checksum, wrong fields
        field = {"connection": (0, 8, CONN + 1), "sequence": (8, 8, 5), "fragment count": (34, 2, 2),
                 "content": (28, 4, 1), "length over max": (24, 4, MAXP + 1)}[spoil]
        at, size, value = field
        buf[t + at:t + at + size] = value.to_bytes(size, "little")
        crc = _native.checksum(bytes(buf[t:t + 40]), _native.checksum(bytes(buf[t - 4:t])))
        buf[t + 40:end] = crc.to_bytes(8, "little")
    assert take(buf, 0)[0] == [b"one"]


def test_take_refuses_slots_beyond_the_mapping():
    with pytest.raises(ValueError):
        _native.stream_take_many(bytes(FIRST + SLOT), FIRST, SLOT, SLOTS, MAXP, CONN, 0, 8)
    with pytest.raises(ValueError):
        _native.stream_take_many(bytes(ring()), FIRST, TRAILER - 1, SLOTS, 0, CONN, 0, 8)


@pytest.fixture
def stream_pair(own_receiver, monkeypatch, request):
    monkeypatch.setattr(stream_mod, "RTO_MIN_S", 0.01)
    name = f"batchnat-{os.getpid()}-{request.node.name[:30].replace('[', '-').replace(']', '')}"
    w = Stream.create(name, slot_bytes=100, slots=16)
    r = Stream.open(name)
    yield w, r
    r.close()
    w.close(flush_timeout=0)


def test_send_many_mixes_native_runs_with_the_python_path_in_order(stream_pair):
    w, r = stream_pair
    msgs = [b"a", b"bb", bytearray(b"ccc"), b"d" * 700, memoryview(b"eeee"), b"f", b""]  # 700 B: 3 fragments
    w.send_many(msgs, timeout=5)
    got = []
    while len(got) < len(msgs):
        got += r.recv_many(64, timeout=5)
    assert got == [bytes(m) for m in msgs]
    ws, rs = w.statistics(), r.statistics()
    assert ws.messages_sent == rs.messages_received == len(msgs)
    assert ws.fragments_sent == rs.fragments_received == len(msgs) + 2
    assert ws.bytes_sent == rs.bytes_received == sum(len(m) for m in msgs)
    w.flush(5)  # every fragment acknowledged: the counts the reader published after its batches add up
    assert w.statistics().unacked == 0


def test_a_corrupt_frame_in_a_batch_is_repaired_and_delivered_once(stream_pair):
    w, r = stream_pair
    w.send_many([bytes([i]) * 20 for i in range(6)], timeout=5)
    end = w.first + (3 % w.slots + 1) * w.slot_size  # message 3's slot
    w._wbuf[end - TRAILER - 1] ^= 0xFF
    assert r.recv_many(64, timeout=5) == [bytes([i]) * 20 for i in range(3)]  # stops before it
    flushing = threading.Thread(target=w.flush, args=(10,))  # repairs it
    flushing.start()
    got = []
    while len(got) < 3:
        got += r.recv_many(64, timeout=10)
    flushing.join(30)
    assert got == [bytes([i]) * 20 for i in range(3, 6)]
    assert r.statistics().bad_frames >= 1 and w.statistics().repairs == 1


def test_a_held_array_keeps_its_slot_across_a_native_run(stream_pair):
    np = pytest.importorskip("numpy")
    w, r = stream_pair
    w.send_array(np.arange(4, dtype=np.int32), timeout=5)
    w.send_many([b"x", b"y"], timeout=5)
    first, *rest = r.recv_many(64, timeout=5)
    assert rest == [b"x", b"y"]
    assert r.statistics().held_slots == 3  # x and y were released, but after the array: held until it dies
    first.release()
    assert r.statistics().held_slots == 0


# ---------------------------------------------------------------- raw
@pytest.fixture
def raw_pair(own_receiver, request):
    name = f"rawnat-{os.getpid()}-{request.node.name[:30].replace('[', '-').replace(']', '')}"
    w = RawChannel.create(name, unit_size=256, units=4, checksum=True)
    r = RawChannel.open(name, capacity=256)
    yield w, r
    r.close()
    w.close()


def test_raw_recv_many_takes_every_signalled_frame_and_counts_like_recv(raw_pair):
    w, r = raw_pair
    for i in range(10):  # 4 units: frames 1-6 overwritten before anyone read them
        w.write(bytes([i]) * (i + 1))
    frames = r.recv_many(64, timeout=5)
    # 7 and 8 are half the ring behind the newest with newer ones signalled: skipped as at risk (as recv does)
    assert [f.seq for f in frames] == [9, 10] and all(type(f) is RawFrame for f in frames)
    assert [f.data for f in frames] == [bytes([i]) * (i + 1) for i in range(8, 10)]
    s = r.statistics()
    assert s.received == 2 and s.missed == 8 and s.stale == 8  # the other signals found frames 9 and 10 again
    w.write(b"late")
    assert [(f.seq, f.data) for f in r.recv_many(64, timeout=5)] == [(11, b"late")]


def test_raw_take_many_counts_torn_and_corrupt_frames_and_takes_none_of_them(raw_pair):
    w, r = raw_pair
    for i in range(3):
        w.write(b"%d" % i * 50)
    end0 = w.first + w.slot_size
    w._wbuf[end0 - 32] ^= 1     # unit 0: generations disagree (torn)
    w._wbuf[w.first + w.slot_size + 3] ^= 1  # unit 1: payload no longer matches its checksum
    frames = r.recv_many(64, timeout=5)
    assert [f.seq for f in frames] == [3]
    assert r.statistics().torn == 2 and r.statistics().received == 1


def test_raw_views_are_checked_in_place_like_copies(raw_pair):
    w, r = raw_pair
    for i in range(2):
        w.write(b"%d" % i * 50)
    w._wbuf[w.first + w.slot_size + 3] ^= 1  # unit 1: payload no longer matches its checksum
    with r.recv_view(5) as first:
        w.write(b"2" * 50)
        second = r.recv_view(5)
        assert (first.seq, second.seq) == (1, 3) and type(first.data) is memoryview
        assert bytes(first.data) == b"0" * 50 and first.intact() and bytes(second.data) == b"2" * 50
        second.release()
    assert r.statistics().torn == 1
    with pytest.raises(TypeError):  # a view is a slice of a memoryview of the mapping
        _native.raw_take_many(bytes(1024), 128, 256, 224, False, True, [0], 0, [0], 64, 1, 8, RawFrame, True)


def test_raw_take_many_refuses_bad_geometry():
    with pytest.raises(ValueError):
        _native.raw_take_many(bytes(1024), 128, 512, 480, False, True, [0], 0, [0, 0], 64, 1, 8, RawFrame)
    with pytest.raises(TypeError):
        _native.raw_take_many(bytes(1024), 128, 256, 224, False, True, (0,), 0, [0], 64, 1, 8, RawFrame)
    # a unit number outside the channel (the handler never makes one) is skipped, not read
    assert _native.raw_take_many(bytes(1024), 128, 256, 224, False, True, [7, -1], 0, [0], 64, 1, 8,
                                 RawFrame)[:2] == ([], 2)


def signals_of(action) -> int:
    before = _native.writer_signals_sent()
    action()
    return _native.writer_signals_sent() - before


def test_send_leaves_the_signal_out_while_the_reader_reads_and_raises_it_once_the_reader_waits(stream_pair):
    w, r = stream_pair
    assert _native.load64(r._cbase + CR_READING) == 0
    assert signals_of(lambda: w.send(b"first", timeout=5)) == 1  # nobody said it is reading
    assert r.recv(5) == b"first"
    assert _native.load64(r._cbase + CR_READING) == 1  # it found a message: it will look again
    assert signals_of(lambda: w.send(b"quiet", timeout=5)) == 0
    assert signals_of(lambda: w.send_many([b"q1", b"q2"], timeout=5)) == 0
    assert [r.recv(5) for _ in range(3)] == [b"quiet", b"q1", b"q2"]  # found without a signal
    with pytest.raises(ChannelTimeout):
        r.recv(0.01)  # it waited: it cleared the word first
    assert _native.load64(r._cbase + CR_READING) == 0
    assert signals_of(lambda: w.send(b"woken", timeout=5)) == 1
    assert r.recv(5) == b"woken"


def test_a_reader_on_another_host_is_always_signalled(stream_pair):
    w, r = stream_pair
    w.send(b"a", timeout=5)
    assert r.recv(5) == b"a"  # the reading word is set
    flags = r._cbase + CR_FLAGS
    _native.store32(flags, _native.load32(flags) | READER_REMOTE)  # its bridge needs every signal
    try:
        assert not _native.stream_reader_reading(w._cbase)
        assert signals_of(lambda: w.send(b"b", timeout=5)) == 1
    finally:
        _native.store32(flags, _native.load32(flags) & ~READER_REMOTE)
    assert _native.stream_reader_reading(w._cbase)
    assert r.recv(5) == b"b"


def test_recv_takes_the_run_there_ahead_and_hands_it_out_in_order(stream_pair):
    np = pytest.importorskip("numpy")
    w, r = stream_pair
    msgs = [bytes([i]) * i for i in range(20)]
    for m in msgs[:12]:
        w.send(m, timeout=5)
    assert r.recv(5) == msgs[0]
    assert r.statistics().messages_received == 12 <= READ_AHEAD  # the rest taken ahead, their slots released
    w.flush(5)  # so all twelve are acknowledged
    w.send_array(np.arange(3), timeout=5)  # not taken ahead: an array
    with pytest.raises(TypeError):
        r.recv_array(5)  # the next message is bytes (taken ahead): it stays
    assert [r.recv(5) for _ in range(11)] == msgs[1:12]
    with r.recv_array(5) as view:
        assert list(view.array) == [0, 1, 2]
    for m in msgs[12:]:
        w.send(m, timeout=5)
    assert r.recv_many(3, timeout=5) == msgs[12:15]
    got = []
    while len(got) < len(msgs) - 15:
        got.append(r.recv_nowait())
    assert got == msgs[15:]


def test_put_one_writes_nothing_it_does_not_take(stream_pair):
    w, r = stream_pair
    writer = w.region.native_writer
    args = (w._wbuf, w.first, w.slot_size, w.slots, w.max_payload, w.connection_id)
    seq, limit = w._tx.next_seq, w._tx.limit
    before = bytes(w._wbuf)
    assert _native.stream_put_one(*args, seq, limit, bytearray(b"x"), w._cbase, writer) is None  # not bytes
    assert _native.stream_put_one(*args, seq, limit, b"x" * (w.max_payload + 1), w._cbase, writer) is None
    assert _native.stream_put_one(*args, limit, limit, b"x", w._cbase, writer) is None  # no credit
    assert bytes(w._wbuf) == before
    with pytest.raises(TypeError):
        _native.stream_put_one(*args, seq, limit, b"x", w._cbase, object())
    with pytest.raises(ValueError):  # a Writer of another mapping
        _native.stream_put_one(bytearray(len(w._wbuf)), *args[1:], seq, limit, b"x", w._cbase, writer)
    with pytest.raises(ValueError):
        _native.stream_reader_reading(w._cbase + 8)
    w.send(b"still fine", timeout=5)
    assert r.recv(5) == b"still fine"


def test_a_forged_reading_word_breaks_the_stream_of_a_waiting_reader(stream_pair):
    w, r = stream_pair
    w.send(b"a", timeout=5)
    assert r.recv(5) == b"a"
    with pytest.raises(ChannelTimeout):
        r.recv(0.01)  # waited: the word is clear, and the writer signals
    _native.store64(r._cbase + CR_READING, 1)  # another process: the writer would leave its signals out
    with pytest.raises(ombm.StreamProtocolError, match="reading word"):
        r.recv(5)  # found within a tick of waiting


def test_raw_drain_takes_the_readers_own_signals_and_counts_a_peers_others_unhandled(raw_pair):
    w, r = raw_pair
    fifo = r._receiver.fifo.fifo_map
    before = ombm.stats()["signals_unhandled"]
    _native.fifo_push(fifo, r.segment.id + 1, r.first)  # another segment's: no handler takes it
    _native.fifo_push(fifo, r.segment.id, 0)  # this segment's control block, outside the units
    _native.fifo_push(fifo, 0, 0)  # a nudge: not counted
    w.write(b"frame")
    assert [f.data for f in r.recv_many(8, timeout=5)] == [b"frame"]
    assert ombm.stats()["signals_unhandled"] - before == 2
    units: list = []
    assert _native.raw_drain(fifo, r.segment.id, r.first, r.first + 4 * r.slot_size, r.slot_size, 8, units) == (0, 0)
    with pytest.raises(ValueError):
        _native.raw_drain(fifo, r.segment.id, r.first, r.first - 1, r.slot_size, 8, units)
    with pytest.raises(TypeError):
        _native.raw_drain(object(), r.segment.id, r.first, r.first, r.slot_size, 8, units)
