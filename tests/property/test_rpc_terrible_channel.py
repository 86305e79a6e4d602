"""RPC over a terrible channel: every call completes exactly once, at most once executed.

The channel drops, duplicates, delays (hence reorders) and corrupts frames; the
clock is fake and jumps to the next thing that can happen (a delivery, the
client's retransmission timer, the end of an execution).  Nothing sleeps.
"""

import heapq
import random
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ombm.transport.rpc_protocol import ClientProtocol, ServerProtocol

CONN = 77


class TerribleChannel:
    """One direction of a lossy link: drop, duplicate, delay/reorder, corrupt one byte."""

    def __init__(self, rng, *, drop=0.1, duplicate=0.05, corrupt=0.05, mean_delay=0.001):
        self.rng = rng
        self.drop, self.duplicate, self.corrupt = drop, duplicate, corrupt
        self.mean_delay = mean_delay
        self.heap = []
        self.count = 0
        self.stats = Counter()

    def send(self, frame, now):
        rng = self.rng
        if rng.random() < self.drop:
            self.stats["dropped"] += 1
            return
        for _ in range(2 if rng.random() < self.duplicate else 1):
            data = bytearray(frame)
            if rng.random() < self.corrupt:
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
                self.stats["corrupted"] += 1
            self.count += 1
            heapq.heappush(self.heap, (now + rng.expovariate(1 / self.mean_delay), self.count,
                                       memoryview(data)))

    def next_time(self):
        return self.heap[0][0] if self.heap else None

    def deliver(self, now):
        while self.heap and self.heap[0][0] <= now:
            yield heapq.heappop(self.heap)[2]


def reply_for(data):
    return bytes(data[::-1]) + b"!"


def run(seed, *, calls=250, cancel_after=None, loss=0.1):
    rng = random.Random(seed)
    client = ClientProtocol(CONN, max_payload=rng.choice([8, 64, 700]), max_in_flight=8,
                            initial_rto=0.004, min_rto=0.001, max_rto=0.05)
    server = ServerProtocol(CONN, max_payload=rng.choice([8, 64, 700]), reply_cache=256)
    up = TerribleChannel(rng, drop=loss)
    down = TerribleChannel(rng, drop=loss)

    requests = {}          # call id -> (data, oneway, issued at)
    executed = Counter()   # the server's non-idempotent side effect, per request body
    executing = []         # heap of (done at, call id, data)
    replies = {}           # call id -> reply data
    cancelled = set()
    to_issue = [(f"call-{i}-".encode() * rng.choice([1, 1, 1, 5, 60]), rng.random() < 0.2)
                for i in range(calls)]
    to_issue.reverse()
    next_issue = 0.0
    now = 0.0
    for _ in range(200_000):
        if to_issue and now >= next_issue:
            for _ in range(rng.choice([1, 1, 3])):
                if to_issue:
                    data, oneway = to_issue.pop()
                    requests[client.send_request(data, now, oneway=oneway)] = (data, oneway, now)
            next_issue = now + rng.expovariate(2000)
        if cancel_after is not None:
            for cid, (_, _, t0) in requests.items():
                if cid not in replies and cid not in cancelled and now - t0 > cancel_after:
                    client.cancel(cid)
                    cancelled.add(cid)
        for f in client.frames_to_send(now):
            up.send(f, now)
        for f in server.frames_to_send(now):
            down.send(f, now)
        stats = client.statistics()
        if not to_issue and stats.in_flight == 0 and stats.queued == 0 and not executing:
            break
        times = [t for t in (up.next_time(), down.next_time(), client.get_timer(),
                             executing[0][0] if executing else None,
                             next_issue if to_issue else None) if t is not None]
        now = max(now, min(times))
        for f in up.deliver(now):
            for ev in server.receive_frame(f, now):
                assert requests[ev.call_id][0] == ev.data and requests[ev.call_id][1] == ev.oneway
                executed[bytes(ev.data)] += 1
                if not ev.oneway:
                    slow = rng.random() < 0.05
                    heapq.heappush(executing, (now + (rng.uniform(0.01, 0.1) if slow else 0.0),
                                               ev.call_id, ev.data))
        for f in down.deliver(now):
            for ev in client.receive_frame(f, now):
                assert ev.call_id not in replies, "reply delivered twice"
                assert ev.call_id not in cancelled, "reply to a cancelled call"
                assert ev.data == reply_for(requests[ev.call_id][0])
                replies[ev.call_id] = ev.data
        while executing and executing[0][0] <= now:
            _, cid, data = heapq.heappop(executing)
            server.send_reply(cid, reply_for(data), now)
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
    else:
        raise AssertionError("the simulation did not finish")

    assert len(requests) == calls
    assert all(n == 1 for n in executed.values()), "a call was executed twice"
    for cid, (data, oneway, _) in requests.items():
        if cid in cancelled:
            continue
        assert executed[data] == 1, f"call {cid} never executed"
        if not oneway:
            assert cid in replies, f"call {cid} never answered"
    return client.statistics(), server.statistics(), up.stats + down.stats, now


@pytest.mark.parametrize("seed", range(8))
def test_every_call_completes_exactly_once(seed):
    cst, sst, chan, elapsed = run(seed)
    # the channel really was terrible, and the protocols really had to work
    assert chan["dropped"] > 10 and chan["corrupted"] > 5
    assert cst.retransmits > 0 and sst.duplicates > 0
    assert cst.bad_frames + sst.bad_frames > 0


@pytest.mark.parametrize("seed", range(3))
def test_at_most_once_when_callers_give_up(seed):
    run(100 + seed, cancel_after=0.004, loss=0.3)


def test_lossless_channel_needs_no_retransmission():
    rng = random.Random(5)
    client = ClientProtocol(CONN, max_payload=64)
    server = ServerProtocol(CONN, max_payload=64)
    now = 0.0
    for i in range(100):
        data = bytes([i]) * rng.randrange(300)
        cid = client.send_request(data, now)
        for f in client.frames_to_send(now):
            for ev in server.receive_frame(f, now):
                server.send_reply(ev.call_id, reply_for(ev.data), now)
        now += 0.0001
        events = [ev for f in server.frames_to_send(now) for ev in client.receive_frame(f, now)]
        assert [(ev.call_id, ev.data) for ev in events] == [(cid, reply_for(data))]
    assert client.statistics().retransmits == 0 and server.statistics().duplicates == 0


# ---------------------------------------------------------------- stateful, against a model

class RpcMachine(RuleBasedStateMachine):
    """Arbitrary interleavings of calls, deliveries, losses, duplicates, corruptions,
    replies, cancellations and clock jumps; then a clean network must finish the job."""

    def __init__(self):
        super().__init__()
        self.client = ClientProtocol(CONN, max_payload=16, max_in_flight=3, initial_rto=0.01,
                                     min_rto=0.001, max_rto=0.08)
        self.server = ServerProtocol(CONN, max_payload=16)
        self.up, self.down = [], []     # frames in transit
        self.now = 0.0
        self.calls = {}                 # model: call id -> (data, oneway)
        self.delivered = set()          # call ids the server delivered
        self.executing = []
        self.replied = {}
        self.cancelled = set()

    @rule(data=st.binary(max_size=50), oneway=st.booleans())
    def call(self, data, oneway):
        cid = self.client.send_request(data, self.now, oneway=oneway)
        assert cid not in self.calls
        self.calls[cid] = (data, oneway)

    @rule()
    def flush(self):
        self.up += self.client.frames_to_send(self.now)
        self.down += self.server.frames_to_send(self.now)

    @precondition(lambda self: self.up)
    @rule(i=st.integers(0, 10**6))
    def deliver_up(self, i):
        frame = self.up.pop(i % len(self.up))
        for ev in self.server.receive_frame(frame, self.now):
            assert ev.call_id not in self.delivered, "delivered twice"
            assert self.calls[ev.call_id] == (ev.data, ev.oneway)
            self.delivered.add(ev.call_id)
            if not ev.oneway:
                self.executing.append(ev.call_id)

    @precondition(lambda self: self.down)
    @rule(i=st.integers(0, 10**6))
    def deliver_down(self, i):
        frame = self.down.pop(i % len(self.down))
        for ev in self.client.receive_frame(frame, self.now):
            assert ev.call_id not in self.replied and ev.call_id not in self.cancelled
            assert ev.data == reply_for(self.calls[ev.call_id][0])
            self.replied[ev.call_id] = ev.data

    @precondition(lambda self: self.up or self.down)
    @rule(i=st.integers(0, 10**6), up=st.booleans(), action=st.sampled_from(
        ["drop", "duplicate", "corrupt"]), pos=st.integers(0, 10**6), xor=st.integers(1, 255))
    def mess_up(self, i, up, action, pos, xor):
        link = self.up if (up and self.up) or not self.down else self.down
        i %= len(link)
        if action == "drop":
            link.pop(i)
        elif action == "duplicate":
            link.append(link[i])
        else:
            damaged = bytearray(link[i])
            damaged[pos % len(damaged)] ^= xor
            link[i] = bytes(damaged)

    @precondition(lambda self: self.executing)
    @rule(i=st.integers(0, 10**6))
    def reply(self, i):
        cid = self.executing.pop(i % len(self.executing))
        self.server.send_reply(cid, reply_for(self.calls[cid][0]), self.now)

    @precondition(lambda self: self.calls)
    @rule(i=st.integers(0, 10**6))
    def cancel(self, i):
        cid = sorted(self.calls)[i % len(self.calls)]
        if cid not in self.replied:
            self.client.cancel(cid)
            self.cancelled.add(cid)

    @rule(dt=st.floats(0, 0.1))
    def tick(self, dt):
        self.now += dt
        timer = self.client.get_timer()
        if timer is not None and timer <= self.now:
            self.client.handle_timer(self.now)

    @invariant()
    def counts_add_up(self):
        st_ = self.client.statistics()
        assert st_.calls == len(self.calls)
        assert st_.in_flight <= 3

    def teardown(self):
        """Liveness: with a perfect network, every call not given up completes."""
        for _ in range(1000):
            while self.executing:
                self.reply(0)
            self.flush()
            if not (self.up or self.down):
                st_ = self.client.statistics()
                if st_.in_flight == 0 and st_.queued == 0:
                    break
                self.now = max(self.now, self.client.get_timer() or self.now)
                self.client.handle_timer(self.now)
            while self.up:
                self.deliver_up(0)
            while self.down:
                self.deliver_down(0)
        for cid, (_, oneway) in self.calls.items():
            if cid not in self.cancelled:
                assert cid in self.delivered
                assert oneway or cid in self.replied


TestRpcMachine = RpcMachine.TestCase
TestRpcMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
