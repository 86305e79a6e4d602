"""Reliable ordered stream with flow control (ombm.transport.stream_protocol), step by step."""

import pytest

from ombm.transport import wire
from ombm.transport.stream_protocol import CreditAvailable, MessageReceived, StreamReceiver, StreamSender
from ombm.transport.wire import Kind, decode, encode

CONN = 0x5EED


def pair(window=8, max_payload=16, **kw):
    return (StreamSender(CONN, max_payload, window, initial_rto=0.01, min_rto=0.001,
                         max_rto=0.1),
            StreamReceiver(CONN, max_payload, window, **kw))


def forward(sender, receiver, now, frames=None):
    out = []
    for f in sender.frames_to_send(now) if frames is None else frames:
        out += receiver.receive_frame(memoryview(f), now)
    return [e.data for e in out]


def back(receiver, sender, now):
    out = []
    for f in receiver.frames_to_send(now):
        out += sender.receive_frame(memoryview(f), now)
    return out


def test_messages_arrive_in_order():
    tx, rx = pair()
    for m in (b"a", b"", b"c" * 40):
        assert tx.send(m, 0.0)
    assert forward(tx, rx, 0.0) == [b"a", b"", b"c" * 40]
    back(rx, tx, 0.001)
    assert tx.statistics().unacked == 0 and tx.get_timer() is None
    assert tx.statistics().srtt_s == pytest.approx(0.001)


def test_fragments_use_sequence_numbers_and_fragment_fields():
    tx, _ = pair(max_payload=4)
    tx.send(b"0123456789", 0.0)
    tx.send(b"x", 0.0)
    frames = [decode(f) for f in tx.frames_to_send(0.0)]
    assert [(f.kind, f.message_id, f.frag_index, f.frag_count) for f in frames] == [
        (Kind.DATA, 0, 0, 3), (Kind.DATA, 1, 1, 3), (Kind.DATA, 2, 2, 3), (Kind.DATA, 3, 0, 1)]


def test_reordered_and_duplicated_fragments():
    tx, rx = pair(max_payload=2)
    tx.send(b"abcdef", 0.0)
    tx.send(b"gh", 0.0)
    frames = tx.frames_to_send(0.0)
    assert forward(tx, rx, 0.0, [frames[3], frames[1], frames[1], frames[2]]) == []
    assert forward(tx, rx, 0.0, [frames[0]]) == [b"abcdef", b"gh"]
    assert forward(tx, rx, 0.0, frames) == []
    st = rx.statistics()
    assert st.messages == 2 and st.duplicates == 5 and st.buffered == 0


def test_window_blocks_the_sender_and_credit_reopens_it():
    tx, rx = pair(window=4, max_payload=1)
    assert tx.send(b"abc", 0.0)
    assert not tx.send(b"de", 0.0)              # 3 + 2 > 4
    assert tx.send(b"d", 0.0)
    assert not tx.send(b"e", 0.0)
    assert tx.statistics().credit == 0
    assert forward(tx, rx, 0.0) == [b"abc", b"d"]
    assert back(rx, tx, 0.0) == [CreditAvailable(4)]
    assert tx.send(b"efgh", 0.0)


def test_message_larger_than_the_window_is_refused():
    tx, _ = pair(window=4, max_payload=1)
    with pytest.raises(ValueError):
        tx.send(b"12345", 0.0)


def test_slow_consumer_holds_the_sender_back():
    tx, rx = pair(window=4, max_payload=1, auto_release=False)
    assert tx.send(b"ab", 0.0) and tx.send(b"cd", 0.0)
    assert forward(tx, rx, 0.0) == [b"ab", b"cd"]
    assert back(rx, tx, 0.0) == []              # acked, but no new credit
    assert tx.statistics().unacked == 0
    assert not tx.send(b"e", 0.0)
    rx.release(1)
    assert back(rx, tx, 0.0) == [CreditAvailable(2)]
    assert tx.send(b"ef", 0.0) and not tx.send(b"g", 0.0)
    with pytest.raises(ValueError):
        rx.release(2)                            # only one delivered and unreleased
    assert rx.statistics().unreleased == 1


def test_lost_data_is_retransmitted_with_backoff():
    tx, rx = pair()
    tx.send(b"x", 0.0)
    tx.frames_to_send(0.0)                       # lost
    assert tx.get_timer() == pytest.approx(0.01)
    tx.handle_timer(0.005)
    assert tx.frames_to_send(0.005) == []
    tx.handle_timer(0.01)
    assert tx.get_timer() == pytest.approx(0.03)
    assert forward(tx, rx, 0.01) == [b"x"]
    back(rx, tx, 0.02)
    st = tx.statistics()
    assert st.retransmits == 1 and st.srtt_s is None   # Karn: no sample from a retransmission
    assert tx.get_timer() is None


def test_lost_credit_is_recovered_by_a_window_probe():
    tx, rx = pair(window=2, max_payload=1, auto_release=False)
    tx.send(b"ab", 0.0)
    forward(tx, rx, 0.0)
    back(rx, tx, 0.0)
    assert not tx.send(b"c", 0.0)                # blocked: the probe timer runs
    rx.release(1)
    rx.frames_to_send(0.0)                       # the window update is lost
    t = tx.get_timer()
    assert t is not None
    tx.handle_timer(t)
    [probe] = tx.frames_to_send(t)
    assert decode(probe).kind is Kind.PROBE
    forward(tx, rx, t, [probe])
    assert back(rx, tx, t) == [CreditAvailable(2)]
    assert tx.statistics().probes == 1
    assert tx.send(b"c", t)


def test_receiver_drops_fragments_beyond_its_window():
    rx = StreamReceiver(CONN, 16, 2)
    assert rx.receive_frame(encode(Kind.DATA, CONN, 2, b"z"), 0.0) == []
    assert rx.statistics().overruns == 1
    assert rx.receive_frame(encode(Kind.DATA, CONN, 1, b"y"), 0.0) == []
    assert rx.receive_frame(encode(Kind.DATA, CONN, 0, b"x"), 0.0) == [
        MessageReceived(b"x"), MessageReceived(b"y")]


def test_credit_frame_carries_ack_and_credit():
    tx, rx = pair(window=8, max_payload=1, auto_release=False)
    tx.send(b"abc", 0.0)
    forward(tx, rx, 0.0)
    [f] = rx.frames_to_send(0.0)
    credit = decode(f)
    assert (credit.kind, credit.ack, credit.credit) == (Kind.CREDIT, 3, 5)
    assert rx.frames_to_send(0.0) == []          # one per batch, only when due


def test_foreign_bad_and_misdirected_frames_are_counted():
    tx, rx = pair()
    junk = [encode(Kind.DATA, CONN + 1, 0, b"x"), b"\x00" * 60, encode(Kind.CALL, CONN, 0, b"")]
    assert forward(tx, rx, 0.0, junk) == []
    st = rx.statistics()
    assert (st.foreign_frames, st.bad_frames) == (1, 2)
    for f in junk + [encode(Kind.CREDIT, CONN, 0, ack=5, credit=1)]:  # acks unsent data
        assert tx.receive_frame(f, 0.0) == []
    st = tx.statistics()
    assert (st.foreign_frames, st.bad_frames) == (1, 3)


def test_credit_edge_never_moves_left():
    tx, _ = pair(window=4, max_payload=1)
    tx.send(b"ab", 0.0)
    tx.frames_to_send(0.0)
    assert tx.receive_frame(encode(Kind.CREDIT, CONN, 0, ack=2, credit=4), 0.0) == [
        CreditAvailable(4)]
    assert tx.receive_frame(encode(Kind.CREDIT, CONN, 0, ack=1, credit=1), 0.0) == []  # stale
    assert tx.statistics().credit == 4


@pytest.mark.parametrize("args", [(0, 4), (16, 0), (16, 2**32)])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        StreamSender(CONN, *args)
    with pytest.raises(ValueError):
        StreamReceiver(CONN, *args)


def test_peek_kind_routes_frames_on_a_shared_channel():
    tx, rx = pair()
    tx.send(b"x", 0.0)
    [data] = tx.frames_to_send(0.0)
    rx.receive_frame(data, 0.0)
    [credit] = rx.frames_to_send(0.0)
    assert wire.peek_kind(data) == Kind.DATA and wire.peek_kind(credit) == Kind.CREDIT
