"""RPC limits (issue 11, item 8): a client cannot make the server buffer an unbounded message, and a
caller learns of a call that is too large, or that the server could not rebuild, before it is sent.

The hostile client writes frames into its own request channel, as any process of the user can: each
write ends at a slot's end and so signals the server like a real frame.
"""

from __future__ import annotations

import os
import time

import pytest

import ombm
from ombm.rpc import RemoteError
from ombm.transport import wire

MAX = 64 * 1024  # the server's max_message_bytes here
SLOT = 4096      # the client's slot size: a fragment carries SLOT - 48 bytes


class Echo:
    def __init__(self):
        self.received = 0

    def echo(self, x):
        self.received += 1
        return x

    def size(self, x):
        return len(x)

    def big(self, n):
        return b"r" * n


@pytest.fixture
def served(own_receiver):
    name = f"limits-{os.getpid()}-{ombm.core.namespace.new_token() & 0xFFFFFF:06x}"
    server = ombm.rpc.Server(name, Echo(), max_message_bytes=MAX).start()
    try:
        yield name, server
    finally:
        server.stop()


def _buffered(server) -> int:
    """Bytes the server holds in messages being reassembled, over every connection."""
    total = 0
    for conn in list(server._connections.values()):
        for reassembly in list(conn.protocol._partial.values()):
            total += sum(len(p) for p in reassembly.parts if p is not None)
    return total


def test_a_message_announcing_65535_fragments_is_refused_at_its_first_fragment(served):
    """Red-team case: on main the server kept every fragment of such a message."""
    name, server = served
    with ombm.rpc.connect(name, timeout=30.0, slots=32, slot_size=SLOT) as client:
        assert client.echo(1) == 1
        conn_id, payload = client._protocol.connection_id, client._protocol.max_payload
        call_id = 1 << 40
        sent = 0
        for index in range(600):  # 600 x 4 KiB: about 2.4 MiB announced as part of a 256 MiB message
            frame = wire.encode(wire.Kind.CALL, conn_id, call_id, os.urandom(payload), frag_index=index,
                                frag_count=0xFFFF, ack=1)
            client._request.send(frame)
            sent += 1
            if index % 8 == 7:  # let the server take them (the ring has 32 slots)
                time.sleep(0.002)
        deadline = time.monotonic() + 30
        while server.stats["refused"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.echo(2) == 2     # the connection still serves (its own retransmission catches up)
        assert _buffered(server) <= MAX, f"{_buffered(server)} bytes buffered"
        assert server.stats["refused"] >= 1


def test_an_oversized_call_is_refused_by_the_caller_before_it_is_sent(served):
    name, server = served
    with ombm.rpc.connect(name, timeout=30.0, slot_size=SLOT) as client:
        calls = client.statistics().calls
        with pytest.raises(ombm.MessageTooLargeError, match="nothing was sent") as info:
            client.size(b"x" * (MAX + 1))
        assert isinstance(info.value, ValueError)
        with pytest.raises(ombm.MessageTooLargeError):
            client.oneway("size", b"x" * (MAX + 1))
        assert client.statistics().calls == calls  # nothing went to the protocol
        assert client.size(b"x" * (MAX - 4 * SLOT)) == MAX - 4 * SLOT  # under the limit: fragmented, served
        assert server.stats["refused"] == 0


def test_a_client_that_ignores_the_limit_gets_an_error_reply(served):
    """A client that does not check (an older or hostile one) is answered with MessageTooLargeError."""
    name, server = served
    with ombm.rpc.connect(name, timeout=30.0, slot_size=SLOT) as client:
        client._max_message = 1 << 30  # as if it had not learnt the server's limit
        with pytest.raises(RemoteError, match="MessageTooLargeError"):
            client.size(b"x" * (2 * MAX))
        assert server.stats["refused"] >= 1
        assert client.echo(3) == 3


def test_a_reply_larger_than_the_client_takes_is_an_error_at_the_server(served):
    name, _ = served
    with ombm.rpc.connect(name, timeout=30.0, slot_size=SLOT, max_message_bytes=10_000) as client:
        assert len(client.big(8_000)) == 8_000  # three fragments of 4,048 bytes: 12,144 > 10,000, so two at most
        with pytest.raises(RemoteError, match="exceeds"):
            client.big(20_000)
    with pytest.raises(ValueError):
        ombm.rpc.connect(name, max_message_bytes=0)
    with pytest.raises(ValueError):
        ombm.rpc.Server(name + "-x", Echo(), max_message_bytes=-5)


# ---------------------------------------------------------------- what the server cannot rebuild
UNREBUILDABLE = [  # a frozenset key (tuple keys are rebuilt: tuples travel as tuples)
    {frozenset((1, 2)): "a frozenset key"},
    [1, {"ok": {("nested", frozenset()): 2}}],
    ({frozenset((1,)): 1},),
    {"k": [{frozenset(): 0}]},
    {None: 1, 2.5: [{b"k": {(3, frozenset()): 4}}]},
]


def test_tuple_keys_are_rebuilt_by_the_server(served):
    name, server = served
    value = {(1, 2): "a", ("nested", (1, None)): [{(3,): 4}]}
    with ombm.rpc.connect(name, timeout=30.0) as client:
        assert client.echo(value) == value
        assert client.call_async("echo", value).result() == value


@pytest.mark.parametrize("value", UNREBUILDABLE, ids=range(len(UNREBUILDABLE)))
def test_a_dict_the_server_cannot_rebuild_is_a_type_error_at_the_caller(served, value):
    """Red-team case: on main a dict with a tuple key passed the caller and failed on the server."""
    name, server = served
    with ombm.rpc.connect(name, timeout=30.0) as client:
        assert client.echo({"fine": 1, 2: 3, b"b": 4, 1.5: [None]}) == {"fine": 1, 2: 3, b"b": 4, 1.5: [None]}
        received = server.obj.received
        with pytest.raises(TypeError, match="key"):
            client.echo(value)                       # the synchronous call (the native lane when free)
        with pytest.raises(TypeError, match="key"):
            client.call_async("echo", value).result()
        with pytest.raises(TypeError, match="key"):
            client.oneway("echo", value)
        with pytest.raises(TypeError, match="key"):
            client.echo(x=value)
        assert server.obj.received == received      # no call with such a dict ran
        assert client.echo(7) == 7
