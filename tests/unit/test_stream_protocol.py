"""The stream protocol (ombm.transport.stream_protocol), step by step, with the clock as an argument.

The rules :class:`ombm.Stream` runs on: sequence numbers and fragments, credit and its clamps,
the repair timer and its backoff, probes, in-order acceptance and its checks, out-of-order
releases, CREDIT frames, and the datagram placement.  Over frames, through the test datagram layer
(``tests/stream_datagrams.py``), at the end.
"""

import pytest
from stream_datagrams import DatagramReceiver, DatagramSender, data_frame

from ombm._native import checksum
import ombm
from ombm.errors import FrameError, StreamProtocolError
from ombm.transport import wire
from ombm.transport.stream_protocol import (AHEAD, ARRAY, BYTES, DONE, DUPLICATE, MORE, NEXT, OVERRUN,
                                            PROBE, REFUSED, StreamReceiver, StreamSender, seal, unseal)
from ombm.transport.wire import Kind, decode, encode

CONN = 0x5EED
MP = 4  # max payload of the receivers here


def sender(window=4, **kw):
    return StreamSender(CONN, window, min_rto=0.01, max_rto=0.08, **kw)


def head(seq, index=0, count=1, total=None, plen=None, content=BYTES, conn=CONN, flags=0):
    """The fields of a checksummed DATA trailer, as unseal returns them."""
    plen = (MP if index < count - 1 else 1) if plen is None else plen
    total = plen if total is None else total
    return (conn, seq, total, plen, content, index, count, int(Kind.DATA), flags, wire.MAGIC)


def send_message(tx, count, now=0.0, total=None, content=BYTES):
    tx.begin(count, count if total is None else total, content)
    records = []
    for _ in range(count):
        records.append((tx.next_seq, tx.index))
        assert tx.next_seq < tx.limit
        tx.sent(records[-1], now)
    return records


# ---------------------------------------------------------------- sender
def test_fragments_take_consecutive_sequence_numbers_across_messages():
    tx = sender(window=8)
    assert send_message(tx, 3) == [(0, 0), (1, 1), (2, 2)]
    assert send_message(tx, 1) == [(3, 0)]
    assert (tx.messages, tx.fragments, tx.unacked, tx.count) == (2, 4, 4, 0)


def test_a_message_longer_than_the_window_streams_through_it():
    tx = sender(window=2)
    tx.begin(5, 5, BYTES)
    for seq in range(5):
        assert tx.next_seq < tx.limit
        assert tx.sent(seq, 0.0) is (seq == 4)
        if seq % 2:
            assert tx.next_seq == tx.limit
            assert tx.on_credit(seq + 1, seq + 1, 0.0) is True
    assert not tx.finished()                      # fragment 4 is not acknowledged yet
    tx.on_credit(5, 5, 0.0)
    assert tx.finished() and tx.bytes == 5


def test_the_credit_edge_never_moves_left():
    tx = sender(window=4)
    send_message(tx, 2)
    assert tx.on_credit(2, 2, 0.0) is True
    assert (tx.acked, tx.released, tx.limit) == (2, 2, 6)
    assert tx.on_credit(2, 2, 0.0) is True      # the same counts again: nothing moves
    assert (tx.acked, tx.limit, tx.violations) == (2, 6, 0)


# every count a genuine receiver cannot publish, after 4 fragments sent and (2, 1) published
IMPOSSIBLE_CREDIT = {
    "ack beyond what was sent": (5, 1),
    "ack far beyond": (2**63, 1),
    "release beyond what was sent": (4, 5),
    "release beyond ack": (2, 3),
    "ack moving back": (1, 1),
    "release moving back": (2, 0),
    "both moving back": (0, 0),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE_CREDIT))
def test_impossible_credit_is_a_protocol_violation(case):
    tx = sender(window=4)
    send_message(tx, 4)
    tx.on_credit(2, 1, 0.0)
    before = (tx.acked, tx.released, tx.limit, tx.unacked, tx.deadline)
    with pytest.raises(StreamProtocolError, match="impossible credit") as info:
        tx.on_credit(*IMPOSSIBLE_CREDIT[case], 0.5)
    assert isinstance(info.value, ombm.ChannelBrokenError)
    assert (tx.acked, tx.released, tx.limit, tx.unacked, tx.deadline) == before  # nothing trusted
    assert tx.violations == 1 and tx.broken
    with pytest.raises(StreamProtocolError):    # broken for good, even by counts that are possible
        tx.on_credit(4, 4, 0.6)
    assert tx.violations == 1 and tx.acked == 2


def test_impossible_credit_frames_break_the_sender_and_stale_ones_are_ignored():
    tx = sender(window=4)
    send_message(tx, 4)
    assert tx.receive_frame(encode(Kind.CREDIT, CONN, 0, ack=3, credit=4 + 2 - 3), 0.0) is True
    assert (tx.acked, tx.released) == (3, 2)
    tx.receive_frame(encode(Kind.CREDIT, CONN, 0, ack=2, credit=4 + 1 - 2), 0.0)  # reordered: stale
    assert (tx.acked, tx.released, tx.violations) == (3, 2, 0)
    with pytest.raises(StreamProtocolError):
        tx.receive_frame(encode(Kind.CREDIT, CONN, 0, ack=99, credit=1), 0.0)  # acknowledges unsent data
    assert tx.violations == 1
    tx2 = sender(window=4)
    send_message(tx2, 4)
    with pytest.raises(StreamProtocolError):  # credit beyond the window: a release beyond the ack
        tx2.receive_frame(encode(Kind.CREDIT, CONN, 0, ack=1, credit=9), 0.0)


def test_the_receiver_ends_cleanly_only_on_exactly_what_was_sent():
    rx = StreamReceiver(CONN, 8, MP)
    for seq in range(3):
        rx.accept(head(seq))
    rx.check_end(3, 3)                                   # exactly: a clean end
    with pytest.raises(StreamProtocolError, match=r"2 messages \(2 fragments\) missing"):
        rx.check_end(5, 5)
    with pytest.raises(StreamProtocolError):
        rx.check_end(3, 4)                               # counts that do not add up
    with pytest.raises(StreamProtocolError):
        rx.check_end(2, 2)                               # more than was sent
    rx.accept(head(3, index=0, count=2, total=MP + 1, plen=MP))
    with pytest.raises(StreamProtocolError, match="one message incomplete"):
        rx.check_end(4, 3)                               # the writer ended in the middle of a message


def test_only_the_first_fragment_may_be_abandoned():
    tx = sender(window=4)
    tx.begin(3, 3, BYTES)
    assert tx.abandon() and not tx.count
    tx.begin(3, 3, BYTES)
    tx.sent(0, 0.0)
    assert not tx.abandon() and tx.count == 3
    with pytest.raises(ValueError, match="still being sent"):
        tx.begin(1, 1, BYTES)


@pytest.mark.parametrize("args", [(0, 0, BYTES), (2**16, 1, BYTES), (1, 1, 7)])
def test_messages_that_cannot_be_framed_are_refused(args):
    with pytest.raises(ValueError):
        sender().begin(*args)


@pytest.mark.parametrize("window", [0, 2**32, 1.5])
def test_bad_windows(window):
    with pytest.raises(ValueError):
        StreamSender(CONN, window)
    with pytest.raises(ValueError):
        StreamReceiver(CONN, window, MP)


def test_bad_timer_settings_and_payloads():
    with pytest.raises(ValueError):
        StreamSender(CONN, 4, min_rto=0.5, max_rto=0.1)
    with pytest.raises(ValueError):
        StreamReceiver(CONN, 4, 0)


def test_the_oldest_unacknowledged_fragment_is_repaired_with_backoff():
    tx = sender()
    send_message(tx, 2, now=1.0)
    assert tx.deadline == pytest.approx(1.01)
    assert tx.handle_timer(1.005) is None
    assert tx.handle_timer(1.01) == (0, 0)       # the oldest, the one the receiver waits for
    assert tx.deadline == pytest.approx(1.03) and tx.rto == pytest.approx(0.02)
    for _ in range(5):
        tx.handle_timer(tx.deadline)
    assert tx.rto == pytest.approx(0.08)          # at most max_rto
    tx.on_credit(1, 1, 2.0)                       # progress: back to min_rto, the timer restarts
    assert tx.rto == pytest.approx(0.01) and tx.deadline == pytest.approx(2.01)
    assert tx.handle_timer(2.01) == (1, 1)
    tx.on_credit(2, 2, 2.02)
    assert tx.deadline is None and tx.handle_timer(9.0) is None
    assert tx.retransmits == 7


def test_a_closed_window_is_probed_until_credit_comes():
    tx = sender(window=1)
    send_message(tx, 1)
    tx.on_credit(1, 0, 0.0)                       # received, held: no credit
    assert tx.deadline is None and tx.next_seq == tx.limit
    tx.blocked(0.0)
    assert tx.deadline == pytest.approx(0.01)
    assert tx.handle_timer(0.01) is PROBE and repr(PROBE) == "PROBE"
    assert tx.handle_timer(0.03) is PROBE         # backing off
    assert tx.rto == pytest.approx(0.04)
    assert tx.on_credit(1, 1, 0.04) is True
    assert tx.deadline is None and tx.probes == 2
    assert tx.rto == pytest.approx(0.01)          # the window opened: the next fragment is timed afresh


def test_wake_target_is_half_a_window_ahead():
    tx = sender(window=8)
    send_message(tx, 8)
    assert tx.wake_target() == 8 + 1 - 8 + 4      # half the window free again
    tx1 = sender(window=1)
    send_message(tx1, 1)
    assert tx1.wake_target() == 1                 # a window of one: its slot


def test_credit_frames_carry_ack_and_credit_and_bad_ones_are_counted():
    tx, rx = sender(window=8), StreamReceiver(CONN, 8, MP)
    send_message(tx, 3)
    for seq in range(3):
        rx.accept(head(seq))
    rx.release(0)
    frame = decode(rx.credit_frame())
    assert (frame.kind, frame.ack, frame.credit) == (Kind.CREDIT, 3, 1 + 8 - 3)
    assert tx.receive_frame(rx.credit_frame(), 0.0) is True
    assert (tx.acked, tx.limit, tx.unacked) == (3, 9, 0)
    junk = [encode(Kind.CREDIT, CONN + 1, 0, ack=3, credit=8), b"\x00" * 60,
            encode(Kind.DATA, CONN, 0, b"x")]
    for f in junk:
        tx.receive_frame(f, 0.0)
    assert (tx.foreign_frames, tx.bad_frames, tx.acked, tx.limit) == (1, 2, 3, 9)


# ---------------------------------------------------------------- receiver
def test_fragments_are_accepted_in_order_and_reassembly_is_counted():
    rx = StreamReceiver(CONN, 8, MP)
    assert rx.accept(head(0, plen=0)) == DONE     # an empty message
    assert rx.accept(head(1, 0, 3, total=10)) == MORE
    assert (rx.count, rx.total, rx.position) == (3, 10, 4)  # a message is half received
    assert rx.accept(head(2, 1, 3, total=10)) == MORE
    assert rx.accept(head(3, 2, 3, total=10, plen=2)) == DONE
    assert rx.count == 0 and (rx.expected, rx.messages, rx.fragments, rx.bytes) == (4, 2, 4, 10)


def test_a_message_of_the_wrong_content_is_refused_and_left_in_place():
    rx = StreamReceiver(CONN, 8, MP)
    assert rx.accept(head(0, content=BYTES), ARRAY, take=False) == REFUSED
    assert rx.accept(head(0, content=ARRAY), ARRAY, take=False) == DONE
    assert rx.accept(head(0, 0, 2, total=6), take=False) == MORE
    assert rx.accept(head(0, content=BYTES), ARRAY) == REFUSED
    assert rx.expected == 0 and rx.fragments == 0
    assert rx.accept(head(0, content=ARRAY), ARRAY) == DONE


@pytest.mark.parametrize("bad", [
    head(1),                                     # not the next sequence number
    head(0, conn=CONN + 1),                      # another connection
    head(0, flags=1),
    head(0, plen=MP + 1),                        # longer than a fragment
    head(0, total=2, plen=1),                    # a one-fragment message of another length
    head(0, index=1, count=2, total=6),          # a message must begin at its first fragment
    head(0, 0, 2, total=9),                      # 9 bytes do not make 2 fragments of 4
    head(0, 0, 2, total=6, plen=3),              # a first fragment must be full
    head(0, content=5),
])
def test_a_checksummed_fragment_out_of_place_is_a_frame_error(bad):
    rx = StreamReceiver(CONN, 8, MP)
    with pytest.raises(FrameError, match="not what the stream expects"):
        rx.accept(bad)
    assert rx.expected == 0


@pytest.mark.parametrize("bad", [
    head(1, 2, 3, total=10),                     # skips a fragment
    head(1, 1, 4, total=10),                     # another fragment count
    head(1, 1, 3, total=11),                     # another total
    head(1, 1, 3, total=10, content=ARRAY),      # another content
    head(1, 1, 3, total=10, plen=3),             # a middle fragment must be full
])
def test_a_fragment_that_does_not_continue_its_message_is_a_frame_error(bad):
    rx = StreamReceiver(CONN, 8, MP)
    rx.accept(head(0, 0, 3, total=10))
    with pytest.raises(FrameError):
        rx.accept(bad)
    rx.accept(head(1, 1, 3, total=10))
    with pytest.raises(FrameError):
        rx.accept(head(2, 2, 3, total=10, plen=1))  # the last one must end the message exactly


def test_releases_out_of_order_wait_for_the_ones_before():
    rx = StreamReceiver(CONN, 4, MP)
    for seq in range(4):
        rx.accept(head(seq))
    assert rx.release(2) == 0 and rx.release(1) == 0  # held arrays freed early
    assert rx.release(0) == 3 and rx.unreleased == 1
    for bad in (0, 3 + 1, 5):                     # released already, not received
        with pytest.raises(ValueError):
            rx.release(bad)
    assert rx.release(3) == 4
    with pytest.raises(ValueError):
        rx.release(4)


def test_place_sorts_arriving_sequence_numbers():
    rx = StreamReceiver(CONN, 4, MP)
    rx.accept(head(0))
    assert [rx.place(s) for s in (0, 1, 2, 3, 4, 5)] == [DUPLICATE, NEXT, AHEAD, AHEAD, OVERRUN, OVERRUN]
    rx.release(0)
    assert rx.place(4) == AHEAD and (rx.duplicates, rx.overruns) == (1, 2)


def test_seal_covers_trailer_and_payload():
    frame = data_frame(CONN, 7, 0, 1, 5, BYTES, b"hello")
    trailer, payload = frame[-48:], frame[:-48]
    assert unseal(trailer, checksum(payload))[:4] == (CONN, 7, 5, 5)
    assert unseal(trailer, checksum(b"hellp")) is None
    damaged = bytearray(trailer)
    damaged[8] ^= 1                               # the sequence number
    assert unseal(bytes(damaged), checksum(payload)) is None
    assert seal(trailer[:40], checksum(payload)) == int.from_bytes(trailer[40:], "little")


# ---------------------------------------------------------------- over datagrams
def datagram_pair(window=4, max_payload=MP):
    tx = StreamSender(CONN, window, min_rto=0.01, max_rto=0.1)
    return DatagramSender(tx, max_payload), DatagramReceiver(StreamReceiver(CONN, window, max_payload))


def test_reordered_and_duplicated_datagrams_arrive_once_in_order():
    s, r = datagram_pair(window=8, max_payload=2)
    s.send(b"abcdef")
    s.send(b"gh")
    frames = s.frames_to_send(0.0)
    for i in (3, 1, 1, 2):
        r.receive_frame(frames[i], 0.0)
    assert r.recv() is None                       # the first fragment is missing
    r.receive_frame(frames[0], 0.0)
    assert (r.recv(), r.recv(), r.recv()) == (b"abcdef", b"gh", None)
    for f in frames:
        r.receive_frame(f, 0.0)
    assert r.rx.duplicates == 4
    for f in r.frames_to_send(0.0):
        s.receive_frame(f, 0.001)
    assert s.idle and s.tx.deadline is None


def test_a_lost_acknowledgement_is_recovered_by_a_repair():
    s, r = datagram_pair(window=2, max_payload=1)
    s.send(b"ab")
    s.send(b"c")
    for f in s.frames_to_send(0.0):
        r.receive_frame(f, 0.0)
    assert r.recv() == b"ab"
    assert s.frames_to_send(0.0) == [] and s.tx.next_seq == s.tx.limit  # nothing acknowledged yet
    r.frames_to_send(0.0)                         # the acknowledgement is lost
    t = s.tx.deadline
    [again] = s.handle_timer(t)                   # fragment 0, the oldest, is sent again
    r.receive_frame(again, t)                     # a duplicate: acknowledged again
    assert r.rx.duplicates == 1
    for f in r.frames_to_send(t):
        s.receive_frame(f, t)
    assert s.tx.unacked == 0
    [c] = s.frames_to_send(t)
    r.receive_frame(c, t)
    assert r.recv() == b"c"


def test_a_lost_window_update_is_recovered_by_a_probe():
    s, r = datagram_pair(window=1, max_payload=1)
    s.send(b"a")
    s.send(b"b")
    [a] = s.frames_to_send(0.0)
    r.receive_frame(a, 0.0)
    assert r.recv(hold=True) == b"a"              # held: the window stays closed
    for f in r.frames_to_send(0.0):
        s.receive_frame(f, 0.0)
    assert s.tx.unacked == 0 and s.frames_to_send(0.0) == []  # refused: the probe timer runs
    [probe] = s.handle_timer(s.tx.deadline)
    assert decode(probe).kind is Kind.PROBE
    r.release()
    r.frames_to_send(0.0)                         # the window update is lost
    t = s.tx.deadline
    [probe] = s.handle_timer(t)                   # probed again, later
    r.receive_frame(probe, t)
    for f in r.frames_to_send(t):
        s.receive_frame(f, t)
    [b] = s.frames_to_send(t)
    r.receive_frame(b, t)
    assert r.recv() == b"b" and s.tx.probes == 2


def test_runs_count_exactly_what_single_calls_count():
    """sent_run / sent_one / accept_run / release_run (the native paths' accounting) leave both ends
    as begin+sent / accept / release one fragment at a time would."""
    one, run = sender(window=8), sender(window=8)
    for k in range(3):
        one.begin(1, 10 + k, BYTES)
        one.sent(("rec", k), 0.0)
    run.sent_run([("rec", k) for k in range(2)], 10 + 11, 0.0)
    run.sent_one(("rec", 2), 12, 0.0)
    fields = ("next_seq", "fragments", "messages", "bytes", "unacked", "deadline")
    assert [getattr(run, f) for f in fields] == [getattr(one, f) for f in fields]
    run.begin(2, 20, BYTES)
    with pytest.raises(ValueError):  # a run starts between messages
        run.sent_run([("rec", 9)], 1, 0.0)
    with pytest.raises(ValueError):
        run.sent_one(("rec", 9), 1, 0.0)

    a, b = StreamReceiver(CONN, 8, 100), StreamReceiver(CONN, 8, 100)
    for seq in range(3):
        a.accept(head(seq, total=5, plen=5))
        a.release(seq)
    b.accept_run(3, 15)
    b.release_run(0, 3)
    fields = ("expected", "released", "fragments", "messages", "bytes", "unreleased")
    assert [getattr(b, f) for f in fields] == [getattr(a, f) for f in fields]
    # a fragment held out of order (an array in use) holds the run's release back until it is freed
    c = StreamReceiver(CONN, 8, 100)
    c.accept(head(0, total=5, plen=5))
    c.accept_run(2, 10)
    c.release_run(1, 2)
    assert c.released == 0 and c.unreleased == 3
    c.release(0)
    assert c.released == 3
