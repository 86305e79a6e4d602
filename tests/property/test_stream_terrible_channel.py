"""Stream over a terrible channel: in order, exactly once, and flow-controlled.

Drops, duplicates, delays (reorders) and corrupts frames both ways; the consumer is
slow, so the receiver's window closes and the sender must wait instead of losing
data.  The clock is fake and jumps to the next thing that can happen.
"""

import heapq
import random
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ombm.transport.stream_protocol import CreditAvailable, StreamReceiver, StreamSender

CONN = 4242


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


def run(seed, *, messages=300, window=12, consume_every=0.0005, loss=0.1):
    rng = random.Random(seed)
    max_payload = rng.choice([4, 16, 100])
    tx = StreamSender(CONN, max_payload, window, initial_rto=0.004, min_rto=0.001, max_rto=0.05)
    rx = StreamReceiver(CONN, max_payload, window, auto_release=False)
    fwd, bwd = TerribleChannel(rng, drop=loss), TerribleChannel(rng, drop=loss)
    sent = [f"{i}:".encode() + bytes(rng.randrange(max_payload * window - 5))
            for i in range(messages)]
    to_send = list(reversed(sent))
    got, unconsumed = [], 0
    blocked_sends = 0
    now = next_consume = 0.0
    for _ in range(500_000):
        while to_send and tx.send(to_send[-1], now):
            to_send.pop()
        if to_send:
            blocked_sends += 1
        if unconsumed and now >= next_consume:
            rx.release(1)
            unconsumed -= 1
            next_consume = now + rng.expovariate(1 / consume_every)
        for f in tx.frames_to_send(now):
            fwd.send(f, now)
        for f in rx.frames_to_send(now):
            bwd.send(f, now)
        if not to_send and tx.statistics().unacked == 0 and len(got) == messages:
            break
        times = [t for t in (fwd.next_time(), bwd.next_time(), tx.get_timer(),
                             next_consume if unconsumed else None) if t is not None]
        now = max(now, min(times))
        for f in fwd.deliver(now):
            for ev in rx.receive_frame(f, now):
                got.append(bytes(ev.data))
                unconsumed += 1
        st_ = rx.statistics()
        assert st_.held_fragments <= window, "the receiver holds more than its window"
        assert st_.overruns == 0, "the sender overran the receiver's window"
        for f in bwd.deliver(now):
            for ev in tx.receive_frame(f, now):
                assert isinstance(ev, CreditAvailable) and ev.fragments > 0
        timer = tx.get_timer()
        if timer is not None and timer <= now:
            tx.handle_timer(now)
    else:
        raise AssertionError("the stream did not finish")
    assert got == sent, "messages lost, duplicated or out of order"
    return tx.statistics(), rx.statistics(), fwd.stats + bwd.stats, blocked_sends


@pytest.mark.parametrize("seed", range(6))
def test_in_order_exactly_once_flow_controlled(seed):
    txs, rxs, chan, blocked = run(seed)
    assert chan["dropped"] > 10 and chan["corrupted"] > 5
    assert txs.retransmits > 0 and rxs.duplicates > 0 and rxs.bad_frames > 0
    assert blocked > 0, "the slow consumer never closed the window"


def test_lost_window_updates_are_survived_by_probes():
    txs, _, _, _ = run(99, messages=150, window=3, loss=0.4, consume_every=0.003)
    assert txs.probes > 0


# ---------------------------------------------------------------- stateful, against a model

WINDOW = 5


class StreamMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tx = StreamSender(CONN, 4, WINDOW, initial_rto=0.01, min_rto=0.001, max_rto=0.08)
        self.rx = StreamReceiver(CONN, 4, WINDOW, auto_release=False)
        self.fwd, self.bwd = [], []
        self.now = 0.0
        self.accepted = []      # model: the messages send() took, in order
        self.got = []
        self.unreleased = 0

    @rule(data=st.binary(max_size=4 * WINDOW))
    def send(self, data):
        if self.tx.send(data, self.now):
            self.accepted.append(data)

    @rule()
    def flush(self):
        self.fwd += self.tx.frames_to_send(self.now)
        self.bwd += self.rx.frames_to_send(self.now)

    @precondition(lambda self: self.fwd)
    @rule(i=st.integers(0, 10**6))
    def deliver_fwd(self, i):
        for ev in self.rx.receive_frame(self.fwd.pop(i % len(self.fwd)), self.now):
            self.got.append(bytes(ev.data))
            self.unreleased += 1

    @precondition(lambda self: self.bwd)
    @rule(i=st.integers(0, 10**6))
    def deliver_bwd(self, i):
        self.tx.receive_frame(self.bwd.pop(i % len(self.bwd)), self.now)

    @precondition(lambda self: self.fwd or self.bwd)
    @rule(i=st.integers(0, 10**6), fwd=st.booleans(), action=st.sampled_from(
        ["drop", "duplicate", "corrupt"]), pos=st.integers(0, 10**6), xor=st.integers(1, 255))
    def mess_up(self, i, fwd, action, pos, xor):
        link = self.fwd if (fwd and self.fwd) or not self.bwd else self.bwd
        i %= len(link)
        if action == "drop":
            link.pop(i)
        elif action == "duplicate":
            link.append(link[i])
        else:
            damaged = bytearray(link[i])
            damaged[pos % len(damaged)] ^= xor
            link[i] = bytes(damaged)

    @precondition(lambda self: self.unreleased)
    @rule()
    def consume(self):
        self.rx.release(1)
        self.unreleased -= 1

    @rule(dt=st.floats(0, 0.1))
    def tick(self, dt):
        self.now += dt
        timer = self.tx.get_timer()
        if timer is not None and timer <= self.now:
            self.tx.handle_timer(self.now)

    @invariant()
    def in_order_exactly_once_within_window(self):
        assert self.got == self.accepted[:len(self.got)]
        st_ = self.rx.statistics()
        assert st_.held_fragments <= WINDOW and st_.overruns == 0

    def teardown(self):
        """Liveness: with a perfect network and a consumer, everything accepted arrives."""
        for _ in range(1000):
            while self.unreleased:
                self.consume()
            self.flush()
            if not (self.fwd or self.bwd):
                if len(self.got) == len(self.accepted) and self.tx.statistics().unacked == 0:
                    break
                timer = self.tx.get_timer()
                assert timer is not None, "stalled with nothing scheduled"
                self.now = max(self.now, timer)
                self.tx.handle_timer(self.now)
            while self.fwd:
                self.deliver_fwd(0)
            while self.bwd:
                self.deliver_bwd(0)
        assert self.got == self.accepted


TestStreamMachine = StreamMachine.TestCase
TestStreamMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
