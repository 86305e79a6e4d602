"""The bridge's native helpers (src/ombm/_native/bridge.c): the delta of a unit against the shadow,
checked against a plain Python reference on random buffers, and the spin before the bridge sleeps."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ombm
from ombm import _native


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=9000), st.data())
def test_unit_delta_finds_the_first_difference_and_copies_from_there(old, data):
    new = bytearray(old)
    for at in data.draw(st.lists(st.integers(0, max(len(old) - 1, 0)), max_size=3)) if old else []:
        new[at] ^= data.draw(st.integers(1, 255))
    lo = data.draw(st.integers(0, len(old)))
    hi = data.draw(st.integers(lo, len(old)))
    shadow = bytearray(old)
    want = next((i - lo for i in range(lo, hi) if new[i] != old[i]), hi - lo)
    assert _native.unit_delta(bytes(new), shadow, lo, hi) == want
    assert shadow == old[:lo] + new[lo:hi] + old[hi:]   # the range copied, nothing outside it


def test_unit_delta_of_a_large_unit():
    """Past 256 KiB the pass runs without the GIL: the same result."""
    old = bytes(1 << 20)
    for at in (0, 300_000, (1 << 20) - 1):
        new = bytearray(old)
        new[at] = 7
        shadow = bytearray(old)
        assert _native.unit_delta(bytes(new), shadow, 0, 1 << 20) == at
        assert shadow == new
    assert _native.unit_delta(old, bytearray(old), 0, 1 << 20) == 1 << 20


def test_unit_delta_refuses_ranges_outside_its_buffers():
    for lo, hi in ((-1, 4), (3, 2), (0, 9)):
        with pytest.raises(ValueError):
            _native.unit_delta(bytes(8), bytearray(8), lo, hi)
    with pytest.raises(BufferError):
        _native.unit_delta(bytes(8), bytes(8), 0, 8)     # the shadow must be writable


@pytest.fixture
def fifo_and_socket():
    receiver = ombm.Receiver()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield receiver, a, b
    a.close()
    b.close()
    receiver.close()


def test_bridge_spin_ends_when_nothing_comes(fifo_and_socket):
    receiver, a, _ = fifo_and_socket
    assert _native.bridge_spin(receiver.fifo.fifo_map, a.fileno(), 0) == -1
    assert _native.bridge_spin(receiver.fifo.fifo_map, a.fileno(), 200_000) == -1


def test_bridge_spin_sees_a_datagram(fifo_and_socket):
    receiver, a, b = fifo_and_socket
    b.send(b"x")
    assert _native.bridge_spin(receiver.fifo.fifo_map, a.fileno(), 10**9) >= 0
    assert a.recv(8) == b"x"   # it only looked


def test_bridge_spin_sees_a_signal(fifo_and_socket):
    receiver, a, _ = fifo_and_socket
    seg = ombm.create_segment(4096)
    region = seg.bind(writable=True)
    try:
        receiver.add_handler(region.address, region.size, lambda address: None)
        region.write(0, b"y" * 64)
        assert _native.bridge_spin(receiver.fifo.fifo_map, a.fileno(), 10**9) >= 0
        assert receiver.dispatch_pending() == 1   # it only looked
    finally:
        region.unbind()
        seg.release()


def test_bridge_spin_refuses_bad_arguments(fifo_and_socket):
    receiver, a, _ = fifo_and_socket
    with pytest.raises(ValueError):
        _native.bridge_spin(receiver.fifo.fifo_map, -1, 0)
    with pytest.raises(TypeError):
        _native.bridge_spin(object(), a.fileno(), 0)
    with pytest.raises(OverflowError):
        _native.bridge_spin(receiver.fifo.fifo_map, a.fileno(), -1)
