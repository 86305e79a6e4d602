"""Large payloads through the bulk segments between real processes (issue 13, item 4; paper §8):
bytes-like and numpy arguments and results, the lanes and the ordinary path, pipelined calls, and a
peer scribbling on the bulk segments meanwhile."""

from __future__ import annotations

import pytest

import ombm
from ombm.errors import UnmarshalError
from ombm.rpc import RemoteError, bulk
from rpc_helpers import Children, expect, pattern, scribble_segment, segments_of, served

pytestmark = pytest.mark.processes

SIZES = [bulk.BULK_MIN - 1, bulk.BULK_MIN, 300_000, 1 << 20]


@pytest.fixture(scope="module")
def calc():
    """A Calc service served by a child process for the whole module."""
    yield from served("calc", "bulk")


@pytest.mark.parametrize("nbytes", SIZES)
def test_large_payloads_echo_through_the_bulk_segments(calc, nbytes):
    data = pattern(nbytes)
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        for value in (data, bytearray(data), memoryview(data)):
            got = cli.identity(value)
            assert type(got) is bytes and got == data
        assert cli.call_async("identity", data).result() == data  # the ordinary path
        assert cli.identity(value=data) == data  # a keyword value
        went = nbytes >= bulk.BULK_MIN
        assert (cli._bulk is not None) == went  # made and offered at the first large payload only
        if went:
            assert cli._bulk.out._seq >= 5 and cli._bulk.inn._consumed >= 5  # every call's both ways
        assert cli.size(data) == nbytes and cli.make(nbytes) == data


def test_numpy_arrays_round_trip_through_the_bulk_segments(calc):
    np = pytest.importorskip("numpy")
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        for arr in (np.arange(1 << 16, dtype=np.int32).reshape(256, 256), np.linspace(0, 1, 1 << 17)[::2],
                    np.zeros((3, 0, 4), dtype=np.uint8), np.frombuffer(pattern(1 << 16), dtype="S8")):
            got = cli.identity(arr)
            assert got.dtype == arr.dtype and got.shape == arr.shape and (got == arr).all()
            assert got.size == 0 or not got.flags.writeable


def test_pipelined_large_calls_fill_the_segment_then_travel_inline(calc):
    payloads = [pattern(300_000 + i) for i in range(12)]  # 3.6 MB in flight: more than a bulk segment holds
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        futures = [cli.call_async("identity", p) for p in payloads]
        assert [f.result() for f in futures] == payloads
        assert cli.identity(payloads[0]) == payloads[0]


@pytest.mark.parametrize("direction", ["bq", "bp"])
def test_a_peer_scribbling_on_a_bulk_segment_never_fools_the_receiver(calc, direction):
    """Another process of the user writes over the calls' (bq: the server reads) or the replies' (bp:
    the client reads) bulk segment all the time: each call returns its own data or fails (checked
    after the copy), never other data, and serving goes on."""
    data = pattern(1 << 20)
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        assert cli.identity(data) == data
        assert cli._bulk is not None
        name = (cli._bulk._segments[0] if direction == "bq" else cli._bulk._segments[1]).name
        right = failed = 0
        with Children() as children:
            _, conn = children.spawn(scribble_segment, name)
            expect(conn, "ready")
            for _ in range(30):
                try:
                    got = cli.identity(data)
                except (UnmarshalError, RemoteError) as exc:
                    assert isinstance(exc, UnmarshalError) or exc.type_name == "ombm.errors.UnmarshalError"
                    failed += 1
                else:
                    assert got == data, "the receiver was fooled"
                    right += 1
        assert right + failed == 30
        assert cli.identity(data) == data  # the scribbler gone: served as before


def test_bulk_segments_are_made_at_the_first_large_payload_and_released_with_the_connection(calc):
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        assert cli.add(1, 2) == 3 and cli.make(1 << 20) == pattern(1 << 20)  # a large result alone: inline
        assert cli._bulk is None and len(segments_of(calc)) == 3  # the well-known channel, ours
        assert cli.identity(pattern(1 << 20)) == pattern(1 << 20)
        assert cli._bulk is not None and len(segments_of(calc)) == 5  # and the two bulk segments
    assert len(segments_of(calc)) == 1


def test_the_server_takes_only_bulk_segments_it_can_use(calc):
    """The reserved method, called by hand with names of no bulk segment (an older or hostile client):
    refused (False), the connection goes on."""
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        well_known = f"rpc-{calc}"
        assert cli.call(bulk.BULK_OFFER, "no-such-segment", "nor-this") is False
        assert cli.call(bulk.BULK_OFFER, well_known, well_known) is False  # a channel, and one segment twice
        assert cli.call(bulk.BULK_OFFER, 1, 2) is False
        assert cli.add(2, 2) == 4


def test_a_server_that_does_not_take_bulk_segments_gets_every_payload_inline(calc, monkeypatch):
    """As with an older server (no reserved method): the offer fails once, the client releases its
    bulk segments and sends every payload inline, right."""
    from ombm.rpc import client as client_module
    monkeypatch.setattr(client_module, "_BULK_OFFER", "_no_such_method")
    data = pattern(1 << 20)
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        assert cli.identity(data) == data and cli.identity(data) == data
        assert cli._bulk is None and cli._bulk_state == "refused"
        assert len(segments_of(calc)) == 3  # no bulk segment left behind
