"""Reliable RPC transport (ombm.transport.rpc_protocol), step by step, with a fake clock."""

import pytest

from ombm.transport import wire
from ombm.transport.rpc_protocol import ClientProtocol, ReplyReceived, RequestReceived, ServerProtocol, split
from ombm.transport.wire import Kind, decode, encode

CONN = 0xC0FFEE


def pair(**client_kw):
    return (ClientProtocol(CONN, max_payload=client_kw.pop("max_payload", 64), **client_kw),
            ServerProtocol(CONN, max_payload=64))


def to_server(client, server, now, frames=None):
    events = []
    for f in client.frames_to_send(now) if frames is None else frames:
        events += server.receive_frame(memoryview(f), now)
    return events


def to_client(server, client, now, frames=None):
    events = []
    for f in server.frames_to_send(now) if frames is None else frames:
        events += client.receive_frame(memoryview(f), now)
    return events


def test_call_and_reply():
    c, s = pair()
    cid = c.send_request(b"ping", 0.0)
    [req] = to_server(c, s, 0.001)
    assert req == RequestReceived(cid, b"ping", False)
    s.send_reply(cid, b"pong", 0.002)
    assert to_client(s, c, 0.003) == [ReplyReceived(cid, b"pong", False)]
    st = c.statistics()
    assert (st.calls, st.in_flight, st.retransmits, st.srtt_s) == (1, 0, 0, pytest.approx(0.003))
    assert c.get_timer() is None


def test_call_ids_increase_from_one():
    c, _ = pair()
    assert [c.send_request(b"", 0.0) for _ in range(3)] == [1, 2, 3]


def test_error_reply_flag():
    c, s = pair()
    cid = c.send_request(b"x", 0.0)
    to_server(c, s, 0.0)
    s.send_reply(cid, b"boom", 0.0, error=True)
    assert to_client(s, c, 0.0) == [ReplyReceived(cid, b"boom", True)]


def test_large_messages_are_fragmented_and_reassembled_in_any_order():
    c, s = pair(max_payload=10)
    request = bytes(range(95))
    cid = c.send_request(request, 0.0)
    frames = c.frames_to_send(0.0)
    assert len(frames) == 10 and all(len(f) <= 10 + wire.TRAILER_SIZE for f in frames)
    assert to_server(c, s, 0.0, frames[::-1][:9]) == []
    assert to_server(c, s, 0.0, frames[::-1]) == [RequestReceived(cid, request, False)]
    s.send_reply(cid, request * 2, 0.0)
    replies = s.frames_to_send(0.0)
    assert len(replies) == 3  # the server's max_payload is 64
    assert to_client(s, c, 0.0, [replies[2], replies[0], replies[2], replies[1]]) == [
        ReplyReceived(cid, request * 2)]


def test_message_too_large_for_frag_count():
    c, _ = pair(max_payload=1)
    with pytest.raises(ValueError):
        c.send_request(bytes(wire.MAX_FRAGMENTS + 1), 0.0)
    assert c.statistics().calls == 0


def test_split():
    assert split(b"abc", 3) == [b"abc"]
    assert [bytes(p) for p in split(b"abcdefg", 3)] == [b"abc", b"def", b"g"]
    assert split(b"", 3) == [b""]


def test_lost_request_is_retransmitted_at_the_timer_with_backoff():
    c, s = pair(initial_rto=0.01, min_rto=0.001, max_rto=0.05)
    cid = c.send_request(b"x", 0.0)
    c.frames_to_send(0.0)                      # lost
    assert c.get_timer() == pytest.approx(0.01)
    c.handle_timer(0.005)                      # too early: nothing
    assert c.frames_to_send(0.005) == []
    deadlines = []
    now = 0.0
    for _ in range(6):
        now = c.get_timer()
        c.handle_timer(now)
        assert len(c.frames_to_send(now)) == 1  # lost again
        deadlines.append(c.get_timer() - now)
    assert deadlines == pytest.approx([0.02, 0.04, 0.05, 0.05, 0.05, 0.05])
    assert c.statistics().retransmits == 6
    c.handle_timer(now)
    assert c.frames_to_send(now) == []         # not due again yet
    c.handle_timer(c.get_timer())
    [req] = to_server(c, s, now)
    assert req.call_id == cid


def test_lost_reply_is_recovered_from_the_reply_cache_without_re_execution():
    c, s = pair()
    cid = c.send_request(b"x", 0.0)
    to_server(c, s, 0.0)
    s.send_reply(cid, b"r", 0.0)
    s.frames_to_send(0.0)                      # reply lost
    c.handle_timer(c.get_timer())
    assert to_server(c, s, 0.01) == []         # duplicate: not delivered again
    assert s.statistics().duplicates == 1
    assert to_client(s, c, 0.01) == [ReplyReceived(cid, b"r")]


def test_duplicate_of_executing_call_is_ignored():
    c, s = pair()
    cid = c.send_request(b"slow", 0.0)
    frames = c.frames_to_send(0.0)
    assert len(to_server(c, s, 0.0, frames)) == 1
    assert to_server(c, s, 0.0, frames) == []
    assert s.frames_to_send(0.0) == []
    assert s.statistics().executing == 1
    s.send_reply(cid, b"done", 0.0)
    assert s.statistics().executing == 0


def test_karn_retransmitted_calls_give_no_rtt_sample():
    c, s = pair(initial_rto=0.01)
    cid = c.send_request(b"x", 0.0)
    frames = c.frames_to_send(0.0)
    c.handle_timer(0.01)
    c.frames_to_send(0.01)
    to_server(c, s, 0.0, frames)
    s.send_reply(cid, b"r", 0.3)
    to_client(s, c, 0.3)
    assert c.statistics().srtt_s is None
    assert c.statistics().rto_s == pytest.approx(0.02)  # backed off, kept until a clean sample


def test_the_lane_waits_the_rto_of_the_samples_not_the_backed_off_one():
    c, s = pair(initial_rto=0.01, min_rto=0.001)
    assert c.lane_patience == c.rto == 0.01  # no sample yet: the initial RTO
    cid = c.send_request(b"x", 0.0)
    frames = c.frames_to_send(0.0)
    c.handle_timer(0.01)  # lost: retransmitted, the RTO backed off
    c.frames_to_send(0.01)
    to_server(c, s, 0.0, frames)
    s.send_reply(cid, b"r", 0.02)
    to_client(s, c, 0.02)
    assert c.rto == pytest.approx(0.02) and c.lane_patience == 0.01  # Karn: no sample, backoff kept
    lane_id = c.lend()  # the lane's calls go well; their last round trip comes back with the state
    c.reclaim(lane_id + 3, 3, None, 0.002)
    assert c.rto == c.lane_patience == pytest.approx(0.006)  # a clean sample (srtt + 4 rttvar): both settle
    assert c.statistics().lane_calls == 3


def test_rto_adapts_to_fast_replies():
    c, s = pair(initial_rto=0.1, min_rto=0.0001)
    now = 0.0
    for _ in range(50):
        cid = c.send_request(b"x", now)
        to_server(c, s, now)
        s.send_reply(cid, b"", now)
        now += 0.0002
        to_client(s, c, now)
    st = c.statistics()
    assert st.srtt_s == pytest.approx(0.0002)
    assert 0.0001 <= st.rto_s < 0.001


def test_rto_is_clamped():
    c, s = pair(initial_rto=0.01, min_rto=0.005, max_rto=0.02)
    cid = c.send_request(b"x", 0.0)
    to_server(c, s, 0.0)
    s.send_reply(cid, b"", 0.0)
    to_client(s, c, 0.00001)
    assert c.statistics().rto_s == 0.005
    cid = c.send_request(b"x", 1.0)
    to_server(c, s, 1.0)
    s.send_reply(cid, b"", 1.0)
    to_client(s, c, 3.0)
    assert c.statistics().rto_s == 0.02


def test_oneway_is_delivered_once_acked_and_never_answered():
    c, s = pair()
    cid = c.send_request(b"log", 0.0, oneway=True)
    frames = c.frames_to_send(0.0)
    assert to_server(c, s, 0.0, frames) == [RequestReceived(cid, b"log", True)]
    [ack] = s.frames_to_send(0.0)
    assert decode(ack).kind is Kind.ACK
    assert c.statistics().in_flight == 1
    c.handle_timer(c.get_timer())              # ACK lost: the call is retransmitted
    assert to_server(c, s, 0.01) == []         # ...and not delivered twice, but re-acked
    assert to_client(s, c, 0.01) == []
    assert c.statistics().in_flight == 0 and c.get_timer() is None
    with pytest.raises(ValueError):
        s.send_reply(cid, b"no", 0.0)


def test_max_in_flight_queues_calls_in_order():
    c, s = pair(max_in_flight=2)
    ids = [c.send_request(bytes([i]), 0.0) for i in range(5)]
    assert (c.statistics().in_flight, c.statistics().queued) == (2, 3)
    reqs = to_server(c, s, 0.0)
    assert [r.call_id for r in reqs] == ids[:2]
    s.send_reply(ids[1], b"", 0.0)
    to_client(s, c, 0.0)
    assert [r.call_id for r in to_server(c, s, 0.0)] == [ids[2]]
    c.cancel(ids[3])                           # a queued call given up
    c.cancel(ids[0])                           # an in-flight one
    assert [r.call_id for r in to_server(c, s, 0.0)] == [ids[4]]
    assert (c.statistics().in_flight, c.statistics().queued) == (2, 0)


def test_cancelled_call_reply_is_a_duplicate():
    c, s = pair()
    cid = c.send_request(b"x", 0.0)
    to_server(c, s, 0.0)
    c.cancel(cid)
    assert c.get_timer() is None
    s.send_reply(cid, b"late", 0.0)
    assert to_client(s, c, 0.0) == []
    assert c.statistics().duplicates == 1
    c.cancel(cid)                              # idempotent
    c.cancel(12345)


def test_requests_carry_the_lowest_call_id_still_waited_for():
    c, s = pair()
    a = c.send_request(b"a", 0.0)
    b = c.send_request(b"b", 0.0)
    assert [decode(f).ack for f in c.frames_to_send(0.0)] == [a, a]
    c.cancel(a)
    d = c.send_request(b"d", 0.0)
    assert decode(c.frames_to_send(0.0)[0]).ack == b
    assert d == 3


def test_ack_lets_server_drop_cached_replies_and_stale_duplicates():
    c, s = pair()
    first = c.send_request(b"1", 0.0)
    first_frames = c.frames_to_send(0.0)
    to_server(c, s, 0.0, first_frames)
    s.send_reply(first, b"r1", 0.0)
    to_client(s, c, 0.0)
    assert s.statistics().cached_replies == 1
    second = c.send_request(b"2", 0.0)         # acks everything below `second`
    to_server(c, s, 0.0)
    assert s.statistics().cached_replies == 0
    assert to_server(c, s, 0.0, first_frames) == []   # stale duplicate of call 1
    assert s.frames_to_send(0.0) == []                # and no reply re-sent
    s.send_reply(second, b"r2", 0.0)
    assert to_client(s, c, 0.0) == [ReplyReceived(second, b"r2")]


def test_reply_cache_is_bounded():
    c = ClientProtocol(CONN, max_payload=64, max_in_flight=100)
    s = ServerProtocol(CONN, max_payload=64, reply_cache=4)
    blocker = c.send_request(b"stuck", 0.0)    # keeps the client's ack at `blocker`
    ids = [c.send_request(b"", 0.0) for _ in range(10)]
    for r in to_server(c, s, 0.0):
        if r.call_id != blocker:
            s.send_reply(r.call_id, b"", 0.0)
    assert s.statistics().cached_replies == 4
    assert s.statistics().evicted_replies == 6
    assert len(ids) == 10


def test_late_reply_to_a_call_the_client_gave_up_is_dropped():
    c, s = pair()
    a = c.send_request(b"a", 0.0)
    to_server(c, s, 0.0)
    c.cancel(a)
    c.send_request(b"b", 0.0)
    to_server(c, s, 0.0)                       # ack = b > a
    s.send_reply(a, b"late", 0.0)              # accepted, but nobody waits for it
    assert s.frames_to_send(0.0) == []
    assert s.statistics().cached_replies == 0


def test_send_reply_misuse_raises_value_error():
    c, s = pair()
    cid = c.send_request(b"x", 0.0)
    to_server(c, s, 0.0)
    with pytest.raises(ValueError):
        s.send_reply(cid + 1, b"", 0.0)
    s.send_reply(cid, b"", 0.0)
    with pytest.raises(ValueError):
        s.send_reply(cid, b"", 0.0)


def test_foreign_and_bad_frames_are_counted_never_raised():
    c, s = pair()
    cid = c.send_request(b"x", 0.0)
    other = ClientProtocol(CONN + 1, max_payload=64)
    other.send_request(b"x", 0.0)
    assert to_server(c, s, 0.0, other.frames_to_send(0.0)) == []
    junk = [b"", b"\x00" * 100, encode(Kind.REPLY, CONN, 1, b""),          # reply to a server
            encode(Kind.CALL, CONN, 5, b"", ack=6),                        # ack beyond id
            encode(Kind.DATA, CONN, 1, b"")]
    assert to_server(c, s, 0.0, junk) == []
    assert (s.statistics().foreign_frames, s.statistics().bad_frames) == (1, 5)
    assert to_server(c, s, 0.0) == [RequestReceived(cid, b"x", False)]

    wrong = [encode(Kind.REPLY, CONN + 1, cid, b""), encode(Kind.CALL, CONN, cid, b""),
             encode(Kind.ACK, CONN, cid, b""),                              # ack for a 2-way call
             encode(Kind.REPLY, CONN, 999, b""), b"garbage" * 10]
    assert to_client(s, c, 0.0, wrong) == []
    st = c.statistics()
    assert (st.foreign_frames, st.bad_frames, st.in_flight) == (1, 4, 1)


def test_corrupted_frame_is_dropped_then_retransmission_repairs():
    c, s = pair()
    cid = c.send_request(b"payload", 0.0)
    [f] = c.frames_to_send(0.0)
    damaged = bytearray(f)
    damaged[3] ^= 0x40
    assert to_server(c, s, 0.0, [damaged]) == []
    assert s.statistics().bad_frames == 1
    c.handle_timer(c.get_timer())
    assert to_server(c, s, 0.01) == [RequestReceived(cid, b"payload", False)]


def test_frames_to_send_max_frames():
    c, _ = pair(max_payload=1)
    c.send_request(b"abcde", 0.0)
    first = c.frames_to_send(0.0, max_frames=2)
    rest = c.frames_to_send(0.0)
    assert (len(first), len(rest)) == (2, 3)
    assert b"".join(decode(f).payload for f in first + rest) == b"abcde"


@pytest.mark.parametrize("kwargs", [
    dict(max_payload=0), dict(max_payload=8, max_in_flight=0),
    dict(max_payload=8, initial_rto=0.0001, min_rto=0.001),
    dict(max_payload=8, initial_rto=1.0, max_rto=0.5),
])
def test_bad_client_arguments(kwargs):
    with pytest.raises(ValueError):
        ClientProtocol(CONN, **kwargs)


def test_bad_server_arguments():
    with pytest.raises(ValueError):
        ServerProtocol(CONN, max_payload=0)
    with pytest.raises(ValueError):
        ServerProtocol(CONN, max_payload=8, reply_cache=0)


def test_new_calls_wait_behind_queued_ones_and_the_ack_never_skips_them():
    # Regression (found by the stateful test): cancelling every in-flight call and
    # then calling again used to launch the new call ahead of the queued ones, so
    # its ack told the server to drop them.
    c, s = pair(max_in_flight=3)
    ids = [c.send_request(bytes([i]), 0.0) for i in range(5)]   # 1-3 in flight, 4-5 queued
    for cid in ids[:3]:
        c.cancel(cid)
    new = c.send_request(b"new", 0.0)
    frames = c.frames_to_send(0.0)
    assert [decode(f).message_id for f in frames] == [1, 2, 3, 4, 5, new]
    assert [decode(f).ack for f in frames[3:]] == [1, 1, 4]
    delivered = to_server(c, s, 0.0, frames[3:])
    assert [r.call_id for r in delivered] == [4, 5, new]


def test_server_remembers_delivered_calls_at_the_ack_across_pruning():
    s = ServerProtocol(CONN, max_payload=64)
    frames = {i: encode(Kind.CALL, CONN, i, b"", ack=1) for i in range(1, 300)}
    for i in range(1, 300):
        assert len(s.receive_frame(frames[i], 0.0)) == 1
    s.receive_frame(encode(Kind.CALL, CONN, 300, b"", ack=200), 0.0)   # prunes below 200
    for i in (1, 199, 200, 201, 299):
        assert s.receive_frame(frames[i], 0.0) == []
    assert s.statistics().requests == 300


# -- the fast lane: the I/O layer makes synchronous calls itself (lend/reclaim, end/adopt_call)

def lane_frame(call_id: int, data: bytes) -> bytes:
    """The CALL frame the native lane writes for a call it makes with a lent id."""
    return encode(Kind.CALL, CONN, call_id, data, ack=call_id)


def test_lent_calls_are_counted_and_sampled_when_reclaimed():
    c, s = pair()
    first = c.lend()
    assert first == 1 and c.frames_to_send(0.0) == [] and c.get_timer() is None  # nothing for the timer
    for call_id in (first, first + 1, first + 2):  # what the lane does: one frame out, the reply in
        [req] = to_server(c, s, 0.0, [lane_frame(call_id, b"ping")])
        assert req == RequestReceived(call_id, b"ping", False)
        s.send_reply(call_id, b"pong", 0.0)
        [reply] = s.frames_to_send(0.0)
        f = decode(memoryview(reply))
        assert (f.kind, f.message_id, f.payload) == (Kind.REPLY, call_id, b"pong")  # what the lane accepts
    c.reclaim(first + 3, 3, None, 0.004)
    st = c.statistics()
    assert (st.calls, st.in_flight, st.srtt_s) == (3, 0, pytest.approx(0.004))
    assert c.send_request(b"next", 0.01) == first + 3


def test_nothing_is_lent_while_anything_is_outstanding():
    c, _ = pair()
    call_id = c.send_request(b"z", 0.0)
    assert c.lend() is None  # a call in flight
    c.cancel(call_id)
    assert c.lend() == call_id + 1
    assert c.lend() is None  # lent already
    with pytest.raises(RuntimeError, match="reclaim"):
        c.send_request(b"y", 0.0)  # the ids are the lane's until reclaimed
    c.reclaim(call_id + 1, 0, None, None)
    assert c.send_request(b"y", 0.0) == call_id + 1
    assert c.statistics().srtt_s is None  # no round trip, no sample


def test_calls_made_while_the_lane_waits_ack_no_further_than_it():
    c, s = pair()
    lane_id = c.lend()
    c.reclaim(lane_id + 1, 1, lane_id, None)  # another thread needs the protocol: the lane's call stays on it
    assert c.lane_call == lane_id
    other = c.send_request(b"meanwhile", 0.0)
    f = decode(memoryview(c.frames_to_send(0.0)[0]))
    assert (f.message_id, f.ack) == (other, lane_id)  # the server must keep the lane call's reply
    to_server(c, s, 0.0, [lane_frame(lane_id, b"slow")])
    s.send_reply(lane_id, b"late", 0.0)
    s.frames_to_send(0.0)
    # the lane gives up waiting: adopted, it is retransmitted by the timer like any call
    c.adopt_call(lane_id, b"slow", 0.0)
    assert c.statistics().in_flight == 2 and c.lane_call is None
    c.handle_timer(c.get_timer())
    resent = c.frames_to_send(1.0)
    assert lane_frame(lane_id, b"slow") in resent  # adopt_call frames it as the lane did
    to_server(c, s, 1.0, resent)  # a duplicate: the cached reply goes out again, no re-execution
    events = to_client(s, c, 1.0)
    assert ReplyReceived(lane_id, b"late", False) in events
    st = s.statistics()
    assert (st.requests, st.duplicates) == (2, 1)  # the lane call once, `other` once (first seen now)


def test_a_lane_call_whose_reply_comes_after_the_reclaim_is_ended_by_the_protocol():
    c, _ = pair()
    lane_id = c.lend()
    c.reclaim(lane_id + 1, 1, lane_id, None)
    c.end_call(lane_id, 0.003)
    st = c.statistics()
    assert (st.calls, st.srtt_s, c.lane_call) == (1, pytest.approx(0.003), None)
    assert c.lend() == lane_id + 1


def test_calls_adopted_again_and_again_leave_no_timer_entries_behind():
    c, s = pair()
    for _ in range(100):  # each call: lent, taken by the lane, adopted, answered the ordinary way
        lane_id = c.lend()
        c.reclaim(lane_id + 1, 1, lane_id, None)
        c.adopt_call(lane_id, b"q", 0.0)
        to_server(c, s, 0.0, [lane_frame(lane_id, b"q")])
        s.send_reply(lane_id, b"r", 0.0)
        assert to_client(s, c, 0.0) == [ReplyReceived(lane_id, b"r", False)]
    assert c.lend() is not None and len(c._timers) == 0  # the heap does not grow with the calls


def test_lane_misuse_raises_value_error():
    c, _ = pair()
    with pytest.raises(ValueError):
        c.reclaim(1, 0, None, None)  # nothing lent
    with pytest.raises(ValueError):
        c.end_call(1, 0.0)
    first = c.lend()
    with pytest.raises(ValueError):
        c.end_call(-1, 0.0)  # lent: there is no lane call to end
    with pytest.raises(ValueError):
        c.reclaim(first - 1, 0, None, None)  # ids never go back
    with pytest.raises(ValueError):
        c.reclaim(first + 1, 1, first + 1, None)  # the current call is one the lane took
    c.reclaim(first + 1, 1, first, None)
    with pytest.raises(ValueError):
        c.adopt_call(first + 1, b"x", 0.0)
    c.adopt_call(first, b"x", 0.0)
    with pytest.raises(ValueError):
        c.end_call(first, 0.0)


# -- the server lane: the I/O layer serves simple requests itself (lend/reclaim)

def lane_reply(call_id: int, reply: bytes) -> bytes:
    """The reply frame the native server lane writes and caches for a request it serves."""
    return encode(Kind.REPLY, CONN, call_id, reply)


def test_server_lane_delta_equals_the_protocol_serving_the_same_calls():
    lent, plain = ServerProtocol(CONN, max_payload=64), ServerProtocol(CONN, max_payload=64)
    for p in (lent, plain):  # some history first: calls 1..3, answered
        for i in (1, 2, 3):
            [ev] = p.receive_frame(encode(Kind.CALL, CONN, i, b"q", ack=i), 0.0)
            p.send_reply(ev.call_id, b"r%d" % i, 0.0)
        p.frames_to_send(0.0)
    assert lent.lend() == 3
    for i in (4, 5, 6):  # served by the lane: acking all before, newer than any delivered
        frame = lane_reply(i, b"r%d" % i)
        [ev] = plain.receive_frame(encode(Kind.CALL, CONN, i, b"q", ack=i), 0.0)
        plain.send_reply(ev.call_id, b"r%d" % i, 0.0)
        assert plain.frames_to_send(0.0) == [frame]
    lent.reclaim(3, 3, 6, 6, ((6, frame),))  # each acked all before it: only the last is kept
    assert lent.statistics() == plain.statistics()
    for p in (lent, plain):  # the same answers to what comes next: a retransmission, a stale call, a new one
        assert p.receive_frame(encode(Kind.CALL, CONN, 6, b"q", ack=6), 1.0) == []
        assert p.frames_to_send(1.0) == [frame]
        assert p.receive_frame(encode(Kind.CALL, CONN, 5, b"q", ack=5), 1.0) == []
        assert p.frames_to_send(1.0) == []
        assert p.receive_frame(encode(Kind.CALL, CONN, 7, b"q", ack=7), 1.0) == [RequestReceived(7, b"q", False)]
    assert lent.statistics() == plain.statistics()


def test_server_lane_delta_of_pipelined_calls_equals_the_protocol_serving_them():
    """A pipelining client (issue 13): each request acks the oldest call it still waits for, so
    the lane keeps a window of replies; its delta, reclaimed, is the protocol's own state."""
    lent, plain = ServerProtocol(CONN, max_payload=64), ServerProtocol(CONN, max_payload=64)
    for p in (lent, plain):  # history: calls 1..2 answered, the client still waits for 2
        for i in (1, 2):
            [ev] = p.receive_frame(encode(Kind.CALL, CONN, i, b"q", ack=1), 0.0)
            p.send_reply(ev.call_id, b"r%d" % i, 0.0)
        p.frames_to_send(0.0)
    assert lent.lend() == 2 and lent.lane_room() == 1024 - 2
    kept: dict[int, bytes] = {}
    ack = 0
    for i in range(3, 11):  # four outstanding: call i acks i - 3
        ack = max(ack, i - 3)
        kept = {k: f for k, f in kept.items() if k >= ack}
        kept[i] = lane_reply(i, b"r%d" % i)
        [ev] = plain.receive_frame(encode(Kind.CALL, CONN, i, b"q", ack=i - 3), 0.0)
        plain.send_reply(ev.call_id, b"r%d" % i, 0.0)
        assert plain.frames_to_send(0.0) == [kept[i]]
    lent.reclaim(8, 8, ack, 10, tuple(kept.items()))
    assert lent.statistics() == plain.statistics()
    for p in (lent, plain):  # the same answers: retransmissions of kept calls, a stale call, a new one
        for i in (7, 9, 10):
            assert p.receive_frame(encode(Kind.CALL, CONN, i, b"q", ack=7), 1.0) == []
            assert p.frames_to_send(1.0) == [kept[i]]
        assert p.receive_frame(encode(Kind.CALL, CONN, 6, b"q", ack=6), 1.0) == []
        assert p.frames_to_send(1.0) == []
        assert p.receive_frame(encode(Kind.CALL, CONN, 11, b"q", ack=9), 1.0) == [RequestReceived(11, b"q", False)]
        assert p.frames_to_send(1.0) == []
        assert p.receive_frame(encode(Kind.CALL, CONN, 8, b"q", ack=8), 1.0) == []  # released by ack 9
        assert p.frames_to_send(1.0) == []
    assert lent.statistics() == plain.statistics()


def test_server_lane_is_not_lent_while_a_call_awaits_its_reply():
    s = ServerProtocol(CONN, max_payload=64)
    assert s.lend() == 0
    [ev] = s.receive_frame(encode(Kind.CALL, CONN, 1, b"q", ack=1), 0.0)
    assert s.lend() is None
    s.send_reply(ev.call_id, b"r", 0.0)
    assert s.lend() == 1
    s.reclaim(0, 0, 0, 1, ())  # nothing served: nothing changes
    with pytest.raises(ValueError):
        s.reclaim(1, 1, 1, 1, ((1, b""),))  # the lane serves only calls newer than any delivered


def test_server_lane_call_that_raised_is_never_run_again():
    s = ServerProtocol(CONN, max_payload=64)
    s.reclaim(1, 0, 1, 1, ((1, None),))  # delivered on the lane, never answered
    assert s.receive_frame(encode(Kind.CALL, CONN, 1, b"q", ack=1), 0.0) == []
    assert s.frames_to_send(0.0) == []
    assert s.statistics().duplicates == 1


# ---------------------------------------------------------------- bounded reassembly
def test_a_request_announcing_too_many_fragments_is_refused_at_its_first_fragment():
    """65,535 fragments announced: the first that arrives is refused, nothing of it is kept, the call is
    answered once with the refusal (again only to a retransmission of its last fragment)."""
    s = ServerProtocol(CONN, max_payload=64, max_message_bytes=1024, refusal=lambda oneway: b"too large")
    first = encode(Kind.CALL, CONN, 1, b"x" * 64, frag_index=5, frag_count=0xFFFF, ack=1)
    assert s.receive_frame(first, 0.0) == []
    assert not s._partial                              # nothing buffered
    [reply] = [decode(f) for f in s.frames_to_send(0.0)]
    assert (reply.kind, reply.message_id, bytes(reply.payload)) == (Kind.ERROR_REPLY, 1, b"too large")
    for index in (0, 6, 0xFFFE):                       # the rest of it: duplicates, never buffered
        s.receive_frame(encode(Kind.CALL, CONN, 1, b"x" * 64, frag_index=index, frag_count=0xFFFF, ack=1), 0.0)
    assert not s._partial
    assert [bytes(decode(f).payload) for f in s.frames_to_send(0.0)] == [b"too large"]  # for the last fragment only
    st = s.statistics()
    assert (st.refused, st.requests, st.replies, st.executing) == (1, 0, 0, 0)


def test_a_request_exactly_at_the_limit_is_reassembled():
    c = ClientProtocol(CONN, max_payload=64)
    s = ServerProtocol(CONN, max_payload=64, max_message_bytes=4 * 64)
    cid = c.send_request(b"y" * (4 * 64), 0.0)
    assert to_server(c, s, 0.0) == [RequestReceived(cid, b"y" * 256, False)]
    cid = c.send_request(b"y" * (4 * 64 + 1), 0.0)    # five fragments: refused, dropped (no refusal given)
    assert to_server(c, s, 0.0) == [] and s.frames_to_send(0.0) == []
    assert s.statistics().refused == 5 and not s._partial  # every fragment refused, none kept


def test_an_oversized_one_way_call_is_dropped_and_counted():
    s = ServerProtocol(CONN, max_payload=64, max_message_bytes=128, refusal=lambda oneway: b"no")
    s.receive_frame(encode(Kind.ONEWAY, CONN, 1, b"z" * 64, frag_index=0, frag_count=3, ack=1), 0.0)
    assert s.frames_to_send(0.0) == [] and s.statistics().refused == 1 and not s._partial


def test_the_client_drops_a_reply_larger_than_it_takes():
    c, s = ClientProtocol(CONN, max_payload=64, max_message_bytes=128), ServerProtocol(CONN, max_payload=64)
    cid = c.send_request(b"q", 0.0)
    to_server(c, s, 0.0)
    s.send_reply(cid, b"r" * 200, 0.0)                 # four fragments of 64: more than 128 bytes
    assert to_client(s, c, 0.0) == [] and not c._partial
    assert c.statistics().refused == 4 and c.statistics().in_flight == 1  # it times out, as a lost reply


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_limits_are_refused(bad, error):
    with pytest.raises(error):
        ServerProtocol(CONN, max_payload=64, max_message_bytes=bad)
    with pytest.raises(error):
        ClientProtocol(CONN, max_payload=64, max_message_bytes=bad)


def test_complete_takes_a_reply_the_io_layer_decoded_as_receive_frame_would():
    """complete(): the pipelined calls' drain hands over call ids it decoded itself."""
    c = ClientProtocol(CONN, max_payload=64, max_in_flight=2)
    first, second, third = (c.send_request(b"x", 0.0) for _ in range(3))
    assert len(c.frames_to_send(0.0)) == 2 and c.is_queued(third)  # the window holds two
    assert c.complete(first, 0.004) is True
    assert not c.is_queued(third) and len(c.frames_to_send(0.004)) == 1  # its slot went to the queued call
    st = c.statistics()
    assert (st.in_flight, st.queued, st.srtt_s) == (2, 0, pytest.approx(0.004))
    assert c.complete(first, 0.005) is False  # a duplicate: counted, nothing changed
    assert c.complete(2**62, 0.005) is False  # a call never made: bad
    assert c.complete(0, 0.005) is False
    assert c.complete(second, 0.006) is True
    oneway = c.send_request(b"y", 0.0, oneway=True)
    assert c.complete(oneway, 0.006) is False  # a reply to a one-way call makes no sense: bad, still in flight
    st = c.statistics()
    assert (st.duplicates, st.bad_frames, st.in_flight, st.queued) == (1, 3, 2, 0)
    assert c.complete(third, 0.007) is True
    assert c.statistics().in_flight == 1  # the one-way call, until its ACK


# -- the pipelined lane: the calls outstanding lent with the ids (lend_pipelined/adopt_pipelined)

def test_pipelined_calls_are_lent_with_the_ids_and_taken_back_under_the_timer():
    c, s = pair(max_in_flight=2)
    ids = [c.send_request(f"c{i}".encode(), 0.0) for i in range(3)]  # two in flight, one queued
    frames = c.frames_to_send(0.0)
    lent = c.lend_pipelined(64, lambda call_id: True)
    assert lent == (4, [(1, 1, b"c0", 0.0), (2, 1, b"c1", 0.0), (3, 1, b"c2", None)])  # in flight, then queued
    assert c.statistics().in_flight == 0 and c.get_timer() is None and c.lend() is None  # the lane's now
    with pytest.raises(RuntimeError, match="reclaim"):
        c.send_request(b"x", 0.0)
    # the lane: call 1 answered; call 3 written (ack 2: the oldest still waited for); call 4 made, queued
    to_server(c, s, 0.0, frames)
    to_server(c, s, 0.1, [encode(Kind.CALL, CONN, 3, b"c2", ack=2)])
    c.adopt_pipelined(5, 1, 0.003, 1, [(2, 1, b"c1", 0.0), (3, 2, b"c2", 0.1), (4, 2, b"c3", None)])
    st = c.statistics()
    assert (st.calls, st.in_flight, st.queued, st.bad_frames, st.lane_calls) == (4, 2, 1, 1, 1)
    assert st.srtt_s == pytest.approx(0.003)
    c.handle_timer(c.get_timer())  # call 2 is due first: resent as the lane framed it
    assert encode(Kind.CALL, CONN, 2, b"c1", ack=1) in c.frames_to_send(c.get_timer())
    for call_id, data in ((2, b"r1"), (3, b"r2")):
        s.send_reply(call_id, data, 0.2)
    events = to_client(s, c, 0.2)
    assert [e.call_id for e in events] == [2, 3] and c.statistics().in_flight == 1  # call 4 was let go
    assert decode(memoryview(c.frames_to_send(0.2)[0])).message_id == 4
    assert c.send_request(b"next", 0.3) == 5 and ids == [1, 2, 3]


def test_pipelined_lending_refuses_what_the_lane_cannot_hold():
    c, _ = pair(max_in_flight=4)
    c.send_request(b"x" * 100, 0.0)  # two frames
    assert c.lend_pipelined(64, lambda call_id: True) is None
    c, _ = pair(max_in_flight=4)
    one = c.send_request(b"a", 0.0, oneway=True)
    assert c.lend_pipelined(64, lambda call_id: True) is None  # a one-way call
    c.cancel(one)
    two = c.send_request(b"b", 0.0)
    assert c.lend_pipelined(64, lambda call_id: call_id != two) is None  # not a call_async call
    c.handle_timer(c.get_timer())
    assert c.lend_pipelined(64, lambda call_id: True) is None  # retransmitted: its reply is no RTT sample
    c, _ = pair(max_in_flight=4)
    for _ in range(5):
        c.send_request(b"c", 0.0)
    assert c.lend_pipelined(5, lambda call_id: True) is None  # ids 1..6 span more than 5
    assert c.lend_pipelined(6, lambda call_id: True) is not None
    with pytest.raises(ValueError, match="follow"):
        c.adopt_pipelined(7, 0, None, 0, [(3, 1, b"c", 0.0), (2, 1, b"c", 0.0)])  # not in call id order
