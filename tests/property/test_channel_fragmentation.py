"""Fragmentation and reassembly of Stream messages, against a plain model.

* a stateful test interleaves ``send_nowait``/``recv_nowait`` of byte messages and
  arrays in one thread: every message arrives whole, in order, exactly once, and
  ``WouldBlock`` happens exactly when the window (slots) cannot take the message (a
  receive of a small one-fragment bytes message takes the run of such messages behind
  it too, up to ``READ_AHEAD``, and frees their slots: the reader's read-ahead);
* a threaded test streams messages of any size (up to several windows) through
  small slots and checks them byte for byte, with fragment boundaries at and
  around multiples of the fragment size.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ombm
from ombm.channels.stream import READ_AHEAD, Stream

np = pytest.importorskip("numpy")

_names = itertools.count()


def fresh_name() -> str:
    return f"chfrag-{os.getpid()}-{next(_names)}"


class StreamModel(RuleBasedStateMachine):
    """One writer and one reader in one thread; the model is a queue of messages."""

    def __init__(self) -> None:
        super().__init__()
        self.w = self.r = None

    @rule(slot_bytes=st.integers(1, 300), slots=st.integers(1, 5))
    @precondition(lambda self: self.w is None)
    def open(self, slot_bytes, slots):
        self.w = Stream.create(fresh_name(), slot_bytes=slot_bytes, slots=slots)
        self.r = Stream.open(self.w.name)
        self.mp, self.slots = self.w.max_payload, slots
        self.queue: deque = deque()  # (kind, value, fragments) sent, not yet taken by the reader
        self.ahead: deque = deque()  # bytes messages the reader took ahead (their slots free), not received

    def in_flight(self) -> int:
        return sum(f for _, _, f in self.queue)

    def fragments(self, n: int) -> int:
        return max(1, -(-n // self.mp))

    @rule(data=st.data())
    @precondition(lambda self: self.w is not None)
    def send_bytes(self, data):
        size = data.draw(st.one_of(
            st.integers(0, 3 * self.mp),
            st.sampled_from([self.mp - 1, self.mp, self.mp + 1, 2 * self.mp, 2 * self.mp + 1])))
        msg = data.draw(st.binary(min_size=size, max_size=size)) if size < 64 else os.urandom(size)
        count = self.fragments(size)
        if count > self.slots:
            with pytest.raises(ValueError):
                self.w.send_nowait(msg)
        elif self.in_flight() + count > self.slots:
            with pytest.raises(ombm.WouldBlock):
                self.w.send_nowait(msg)
        else:
            self.w.send_nowait(msg)
            self.queue.append(("bytes", msg, count))

    @rule(shape=st.lists(st.integers(0, 6), max_size=3),
          dtype=st.sampled_from(["u1", "<i4", ">f8", "c8", "?", "S3", "<U2"]))
    @precondition(lambda self: self.w is not None)
    def send_array(self, shape, dtype):
        array = np.arange(int(np.prod(shape)) if shape else 1).astype(dtype).reshape(shape)
        count = len(self.w._array_pieces(array)[0])  # one slot (in place) or fragments (a copy)
        if count > self.slots:
            with pytest.raises(ValueError):
                self.w.send_array_nowait(array)
        elif self.in_flight() + count > self.slots:
            with pytest.raises(ombm.WouldBlock):
                self.w.send_array_nowait(array)
        else:
            self.w.send_array_nowait(array)
            self.queue.append(("array", array, count))

    @rule()
    @precondition(lambda self: self.w is not None)
    def receive(self):
        if not self.queue and not self.ahead:
            with pytest.raises(ombm.WouldBlock):
                self.r.recv_nowait()
            return
        if not self.ahead and self.queue[0][0] == "bytes" and self.queue[0][2] == 1:
            # a small one-fragment bytes message: taken with the run of such messages behind it
            while self.queue and self.queue[0][0] == "bytes" and self.queue[0][2] == 1 and \
                    len(self.ahead) < READ_AHEAD:
                self.ahead.append(self.queue.popleft())
        kind, value, _ = self.ahead.popleft() if self.ahead else self.queue.popleft()
        got = self.r.recv_nowait()
        if kind == "bytes":
            assert got == value
        else:
            with got:
                assert got.array.dtype == value.dtype and got.array.shape == value.shape
                assert np.array_equal(got.array, value)

    @invariant()
    def window_is_respected(self):
        if self.w is not None:
            assert self.in_flight() <= self.slots

    def teardown(self):
        if self.w is not None:
            self.r.close()
            self.w.close(flush_timeout=0)


TestStreamModel = StreamModel.TestCase
TestStreamModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slot_bytes=st.integers(1, 200), slots=st.integers(1, 4), data=st.data())
def test_any_sizes_stream_through_small_windows(slot_bytes, slots, data):
    w = Stream.create(fresh_name(), slot_bytes=slot_bytes, slots=slots)
    mp = w.max_payload
    sizes = data.draw(st.lists(st.one_of(
        st.integers(0, mp * slots * 3),
        st.sampled_from([0, 1, mp - 1, mp, mp + 1, mp * slots, mp * slots + 1])), min_size=1, max_size=8))
    messages = [os.urandom(n) for n in sizes]
    r = Stream.open(w.name)
    got, errors = [], []

    def read():
        try:
            got.extend(r)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    try:
        for m in messages:
            w.send(m, timeout=20)
        w.flush(20)
    finally:
        w.close(flush_timeout=0)
        t.join(20)
        r.close()
    assert not errors and not t.is_alive()
    assert got == messages
    assert w.statistics().fragments_sent == sum(max(1, -(-n // mp)) for n in sizes)
