"""The stream protocol over a terrible channel: in order, exactly once, intact, and flow-controlled.

These are the protocol objects :class:`ombm.Stream` runs on (:mod:`ombm.transport.stream_protocol`),
driven here by the datagram I/O layer of ``tests/stream_datagrams.py``.  The channel drops,
duplicates, delays (reorders) and corrupts frames both ways; the consumer is slow, so the window
closes and the sender must wait instead of losing data.  The clock is fake and jumps to the next
thing that can happen: no sleeps.
"""

import heapq
import random
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from stream_datagrams import DatagramReceiver, DatagramSender

from ombm.transport.stream_protocol import StreamReceiver, StreamSender

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


def pair(max_payload, window, *, min_rto=0.004, max_rto=0.05):
    tx = StreamSender(CONN, window, min_rto=min_rto, max_rto=max_rto)
    rx = StreamReceiver(CONN, window, max_payload)
    return DatagramSender(tx, max_payload), DatagramReceiver(rx)


def run(seed, *, messages=300, window=12, consume_every=0.0005, loss=0.1, hold=0.3):
    rng = random.Random(seed)
    max_payload = rng.choice([4, 16, 100])
    sender, receiver = pair(max_payload, window)
    tx, rx = sender.tx, receiver.rx
    fwd, bwd = TerribleChannel(rng, drop=loss), TerribleChannel(rng, drop=loss)
    # short ones (one fragment; some are held, like zero-copy arrays) and up to three windows long
    sent = [f"{i}:".encode()[:max_payload] + bytes(rng.randrange(max_payload - 2 if i % 2 else 3 * max_payload * window))
            for i in range(messages)]
    for m in sent:
        sender.send(m)
    got = []
    blocked = 0
    now = next_consume = 0.0
    for _ in range(500_000):
        if now >= next_consume:  # the slow application: reads a message, gives back held ones
            if receiver.held and rng.random() < 0.5:
                receiver.release(rng.randrange(len(receiver.held)))
            m = receiver.recv(hold=rng.random() < hold)
            if m is not None:
                got.append(bytes(m))
            next_consume = now + rng.expovariate(1 / consume_every)
        for f in sender.frames_to_send(now):
            fwd.send(f, now)
        if tx.next_seq >= tx.limit:
            blocked += 1
        for f in receiver.frames_to_send(now):
            bwd.send(f, now)
        if sender.idle and len(got) == messages:
            break
        times = [t for t in (fwd.next_time(), bwd.next_time(), tx.deadline) if t is not None]
        now = max(now, min(times + [next_consume]))
        for f in fwd.deliver(now):
            receiver.receive_frame(f, now)
        assert rx.unreleased <= window, "the receiver holds more than its window"
        assert rx.overruns == 0, "the sender overran the receiver's window"
        for f in bwd.deliver(now):
            sender.receive_frame(f, now)
        for f in sender.handle_timer(now):
            fwd.send(f, now)
    else:
        raise AssertionError("the stream did not finish")
    assert got == sent, "messages lost, duplicated, damaged or out of order"
    return tx, rx, fwd.stats + bwd.stats, blocked


@pytest.mark.parametrize("seed", range(6))
def test_in_order_exactly_once_flow_controlled(seed):
    tx, rx, chan, blocked = run(seed)
    assert chan["dropped"] > 10 and chan["corrupted"] > 5
    assert tx.retransmits > 0 and rx.duplicates > 0 and rx.bad_frames > 0 and tx.bad_frames > 0
    assert blocked > 0, "the slow consumer never closed the window"


def test_lost_window_updates_are_survived_by_probes():
    tx, _, _, _ = run(99, messages=150, window=3, loss=0.4, consume_every=0.003)
    assert tx.probes > 0


# ---------------------------------------------------------------- stateful, against a model

WINDOW = 5


class StreamMachine(RuleBasedStateMachine):
    """Any interleaving of sends, deliveries in any order, losses, duplicates, corruption, slow
    consumption and clock jumps: what arrives is always a prefix of what was sent."""

    def __init__(self):
        super().__init__()
        self.sender, self.receiver = pair(4, WINDOW, min_rto=0.01, max_rto=0.08)
        self.fwd, self.bwd = [], []
        self.now = 0.0
        self.sent = []      # model: the messages, in order
        self.got = []

    @rule(data=st.binary(max_size=4 * WINDOW * 2))
    def send(self, data):
        self.sender.send(data)
        self.sent.append(data)

    @rule()
    def flush(self):
        self.fwd += self.sender.frames_to_send(self.now)
        self.bwd += self.receiver.frames_to_send(self.now)

    @precondition(lambda self: self.fwd)
    @rule(i=st.integers(0, 10**6))
    def deliver_fwd(self, i):
        self.receiver.receive_frame(self.fwd.pop(i % len(self.fwd)), self.now)

    @precondition(lambda self: self.bwd)
    @rule(i=st.integers(0, 10**6))
    def deliver_bwd(self, i):
        self.sender.receive_frame(self.bwd.pop(i % len(self.bwd)), self.now)

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

    @rule(hold=st.booleans())
    def consume(self, hold=False):
        m = self.receiver.recv(hold)
        if m is not None:
            self.got.append(bytes(m))

    @precondition(lambda self: self.receiver.held)
    @rule(i=st.integers(0, 10**6))
    def release(self, i):
        self.receiver.release(i)

    @rule(dt=st.floats(0, 0.1))
    def tick(self, dt):
        self.now += dt
        self.fwd += self.sender.handle_timer(self.now)

    @invariant()
    def in_order_exactly_once_within_window(self):
        assert self.got == self.sent[:len(self.got)]
        rx = self.receiver.rx
        assert rx.unreleased <= WINDOW and rx.overruns == 0

    def teardown(self):
        """Liveness: with a perfect network and an application that reads, everything sent arrives."""
        for _ in range(1000):
            while self.receiver.held:
                self.release(0)
            while (m := self.receiver.recv()) is not None:
                self.got.append(bytes(m))
            self.flush()
            if not (self.fwd or self.bwd):
                if len(self.got) == len(self.sent) and self.sender.idle:
                    break
                timer = self.sender.tx.deadline
                assert timer is not None, "stalled with nothing scheduled"
                self.now = max(self.now, timer)
                self.fwd += self.sender.handle_timer(self.now)
            while self.fwd:
                self.deliver_fwd(0)
            while self.bwd:
                self.deliver_bwd(0)
        assert self.got == self.sent


TestStreamMachine = StreamMachine.TestCase
TestStreamMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
