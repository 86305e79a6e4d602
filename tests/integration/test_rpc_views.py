"""Large payloads lent as read-only views between real processes (opt-in: ``Server(views=True)``,
``connect(views=True)``; rpc/bulk.py, *Views*): no copy out on either side, the span kept for
the receiver while it holds a view, and a peer scribbling on the spans never crashes it."""

from __future__ import annotations

import hashlib
import os

import pytest

import ombm
from ombm.rpc import bulk
from rpc_helpers import Children, child, expect, join, pattern, scribble_segment, service_name

pytestmark = pytest.mark.processes


class Viewer:
    """What the tests call: what a method receives, and a method that keeps a view."""

    def __init__(self) -> None:
        self.kept: list[object] = []

    def identity(self, value):
        return value

    def kind(self, value) -> list:
        return [type(value).__name__, bool(getattr(value, "readonly", False)), len(value)]

    def keep(self, value) -> None:
        self.kept.append(value)

    def kept_digests(self) -> list[str]:
        return [hashlib.sha256(v).hexdigest() for v in self.kept]

    def drop(self) -> None:
        self.kept.clear()


@child
def _serve_views(conn, name: str) -> None:
    server = ombm.rpc.Server(name, Viewer(), views=True).start()
    conn.send(("ready", os.getpid()))
    try:
        conn.recv()
    finally:
        server.stop()
    conn.send(("result", None))


@pytest.fixture(scope="module")
def viewer():
    name = service_name("views")
    with Children() as children:
        p, conn = children.spawn(_serve_views, name)
        expect(conn, "ready")
        yield name
        conn.send("stop")
        expect(conn, "result")
        assert join(p) == 0


def test_large_payloads_arrive_as_read_only_views_on_both_sides(viewer):
    data = pattern(1 << 20)
    with ombm.rpc.connect(viewer, timeout=30.0, views=True) as cli:
        got = cli.identity(data)
        assert type(got) is memoryview and got.readonly and got == data
        assert cli.kind(data) == ["memoryview", True, len(data)]  # the server's method got a view too
        small = pattern(bulk.BULK_MIN - 1)
        assert cli.kind(small) == ["bytes", False, len(small)] and type(cli.identity(small)) is bytes
    assert got == data  # the view outlives the connection (the mapping is kept while it lives)
    with ombm.rpc.connect(viewer, timeout=30.0) as plain:  # a client without views: bytes
        assert type(plain.identity(data)) is bytes and plain.kind(data) == ["memoryview", True, len(data)]


def test_numpy_arrays_arrive_as_read_only_arrays_on_the_span(viewer):
    np = pytest.importorskip("numpy")
    arr = np.arange(1 << 17, dtype=np.float64).reshape(256, -1)
    with ombm.rpc.connect(viewer, timeout=30.0, views=True) as cli:
        got = cli.identity(arr)
        assert got.dtype == arr.dtype and got.shape == arr.shape and (got == arr).all() and not got.flags.writeable


def test_held_views_keep_their_spans_from_reuse(viewer):
    """An honest sender does not reuse a span a view of which lives: the views the client holds, and
    those the server's method kept, still show what was sent after later calls (which then
    travel in other spans, or inline)."""
    payloads = [pattern(300_000 + i) for i in range(8)]  # 2.4 MB: more than a bulk segment holds
    with ombm.rpc.connect(viewer, timeout=30.0, views=True) as cli:
        held = [cli.identity(p) for p in payloads]
        assert held == payloads
        for p in payloads:
            cli.keep(p)
        assert cli.kept_digests() == [hashlib.sha256(p).hexdigest() for p in payloads]
        cli.drop()
        del held
        assert cli._bulk is not None
        sent = cli._bulk.out._sent
        assert cli.identity(payloads[0]) == payloads[0]
        assert cli._bulk.out._sent == sent + 1  # every view gone: the front of the segment is free again


def test_a_peer_scribbling_on_a_viewed_span_never_crashes_the_receiver(viewer):
    """What a hostile peer can do to a view (documented): change its bytes; the receiver reads them
    without crashing or hanging, and a span of another generation is refused."""
    data = pattern(1 << 20)
    with ombm.rpc.connect(viewer, timeout=30.0, views=True) as cli:
        assert cli.identity(data) == data
        assert cli._bulk is not None
        name = cli._bulk._segments[1].name  # the replies' segment: the client reads it
        with Children() as children:
            _, conn = children.spawn(scribble_segment, name)
            expect(conn, "ready")
            done = 0
            for _ in range(20):
                try:
                    got = cli.identity(data)
                except ombm.rpc.UnmarshalError:
                    done += 1
                else:
                    assert len(got) == len(data)
                    hashlib.sha256(got).digest()  # read it all while it is scribbled on
                    done += 1
            assert done == 20
        assert cli.identity(data) == data  # the scribbler gone: as before
