"""The lanes' typed results (src/ombm/_native/lane.h): ``CallLane.call`` returns a ``CallResult``
and ``RequestIntake.serve`` a ``ServeResult``, records with named read-only fields whose
``status`` is a module constant. Driven in one process over real segments and signal FIFOs."""

from __future__ import annotations

import msgpack
import pytest

import ombm
from ombm import _native
from ombm.core.fifo import Fifo
from ombm.rpc import marshal
from ombm.transport import wire

SLOT = 1024


def never(*args):
    raise AssertionError("the intake ran Python it had no reason to run")


@pytest.fixture
def fifo():
    f = Fifo(8)
    yield f
    f.close()


@pytest.fixture
def channels():
    """A request and a reply segment cut into SLOT-byte signalling units, bound writable."""
    with ombm.create_segment(4 * SLOT, unit=SLOT) as request, ombm.create_segment(4 * SLOT, unit=SLOT) as reply:
        regions = request.bind(), reply.bind()
        yield request, regions[0], reply, regions[1]
        for region in regions:
            region.unbind()


def intake(fifo: Fifo) -> _native.RequestIntake:
    return _native.RequestIntake(fifo.fifo_map, wire.KIND_TABLE, {}, {"calls": 0}, msgpack.unpackb,
                                 marshal.ext_hook(False), marshal.packer(False), never, never)


def lane(fifo: Fifo, channels) -> _native.CallLane:
    _, request, reply_segment, reply = channels
    return _native.CallLane(request.native_writer, fifo.fifo_map, reply_segment.id, reply.address, reply.size, SLOT,
                            5, SLOT - wire.TRAILER_SIZE, marshal.packer(False), msgpack.unpackb,
                            marshal.ext_hook(False))


def test_serve_with_nothing_there_times_out(fifo):
    r = intake(fifo).serve(0, 0.0, False, 0)
    assert type(r) is _native.ServeResult and r.status == _native.SERVE_TIMEOUT
    assert (r.connection, r.fields, r.handback, r.executed, r.segment_id, r.offset) == (None, None, None, None, 0, 0)
    assert r.waited_ns >= 0


def test_serve_hands_back_a_signal_of_no_request_channel(fifo):
    assert _native.fifo_push(fifo.fifo_map, 99, 5) == _native.PUSH_OK
    r = intake(fifo).serve(0, 1.0, False, 0)
    assert (r.status, r.segment_id, r.offset, r.connection) == (_native.SERVE_SIGNAL, 99, 5, None)


def test_results_are_read_only_records_made_only_by_the_lanes(fifo):
    r = intake(fifo).serve(0, 0.0, False, 0)
    with pytest.raises(AttributeError):
        r.status = _native.SERVE_SIGNAL  # type: ignore[misc]
    for record in (_native.CallResult, _native.ServeResult):
        with pytest.raises(TypeError):
            record()
    assert repr(r).startswith(f"ServeResult(status={_native.SERVE_TIMEOUT}, waited_ns=")


def test_a_call_without_lent_ids_sends_nothing(fifo, channels):
    r = lane(fifo, channels).call("echo", (1,), {}, 0, False)
    assert type(r) is _native.CallResult
    assert (r.status, r.value, r.waited_ns, r.call_id, r.segment_id, r.offset) == (_native.LANE_NOT_LENT, None, 0, 0,
                                                                                   0, 0)


def test_a_call_that_does_not_marshal_sends_nothing(fifo, channels):
    calls = lane(fifo, channels)
    calls.lend(1, 0.0)
    assert calls.call("echo", (object(),), {}, 0, False).status == _native.LANE_UNSENT


def test_a_call_nobody_answers_is_handed_over_with_its_id(fifo, channels):
    calls = lane(fifo, channels)
    calls.lend(7, 0.0)
    r = calls.call("echo", (b"x" * 32,), {}, 0, False)
    assert (r.status, r.value, r.call_id) == (_native.LANE_TIMEOUT, None, 7)
    # the lane wrote one CALL frame acking everything before it, ending the first request slot
    kind, connection_id, call_id, _, count, ack, payload, _ = wire.decode_fields(channels[1].buffer[:SLOT])
    assert (kind, connection_id, call_id, count, ack) == (wire.Kind.CALL, 5, 7, 1, 7)
    assert bytes(payload) == calls.message == marshal.encode_call("echo", (b"x" * 32,), {})


def test_a_call_that_finds_another_signal_hands_it_over(fifo, channels):
    calls = lane(fifo, channels)
    calls.lend(1, 1.0)
    _native.fifo_push(fifo.fifo_map, 77, 3)
    r = calls.call("echo", (), {}, 0, False)
    assert (r.status, r.value, r.call_id, r.segment_id, r.offset) == (_native.LANE_OTHER, None, 1, 77, 3)
