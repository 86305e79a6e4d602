"""The native server lane against the reference protocol, frame by frame (issue 13, item 2).

The server lane (``_native.RequestIntake``) serves a pipelining client's requests without the
Python :class:`~ombm.transport.rpc_protocol.ServerProtocol`; that protocol stays the reference.
Here the same seeded request streams (in order with a window of calls outstanding, reordered,
duplicated, retransmitted after their ack, stale, one-way, in two fragments, of unknown methods,
raising, and hostile: acks past the call, another connection's id, garbage) are written straight
into a real connection's request channel, once to a server with the lane and once to one without
(``LANES`` off: every frame through the protocol). Both must write the same reply frames in the
same order, run the same calls the same number of times, and end in the same protocol state.
"""

from __future__ import annotations

import random
import time

import msgpack
import pytest

import ombm
from lanes_helpers import Ledger, RecordingServer
from ombm.core import config
from ombm.rpc import marshal
from ombm.transport import wire
from rpc_helpers import service_name

pytestmark = pytest.mark.processes

CHUNK = 10  # frames between two sentinels: well within the channels' 32 slots
REPLY_WAIT_S = 30.0  # a liveness bound for one chunk's replies, never a performance claim


def _call(key: int, x: int, method: str = "apply") -> bytes:
    return marshal.encode_call(method, (key, x) if method == "apply" else (key,), {})


def _stream(seed: int, calls: int, stuck: bool = False) -> list[tuple[str, object]]:
    """A seeded request stream: ("frame", (kind, call id, ack, payload, frag index, frag count,
    connection offset)) or ("garbage", bytes), with ("sentinel", (call id, ack)) every CHUNK items:
    the next call, whose reply marks where the replies of what came before end. ``stuck``: the
    client's ack never moves past its first call (one call it waits for for ever), so the server
    keeps every reply: more than the lane keeps at once."""
    rng = random.Random(seed)
    items: list[tuple[str, object]] = []
    sent: list[tuple] = []  # the frames sent so far (retransmitted at random)
    next_id, window = 1, rng.choice([1, 4, 16, 32])
    if stuck:
        window = 1 << 40

    def frame(kind: int, call_id: int, ack: int, payload: bytes, index: int = 0, count: int = 1,
              foreign: int = 0) -> None:
        fields = (kind, call_id, ack, payload, index, count, foreign)
        items.append(("frame", fields))
        sent.append(fields)

    while next_id <= calls:
        ack = max(1, next_id - window)
        roll = rng.random()
        if roll < 0.55:  # in order, pipelined: acks the oldest call it still waits for
            x = rng.randrange(1 << 20)
            frame(wire.Kind.CALL, next_id, ack, _call(next_id, x))
            next_id += 1
        elif roll < 0.62 and next_id + 1 <= calls:  # two calls reordered
            a, b = _call(next_id, 7), _call(next_id + 1, 8)
            frame(wire.Kind.CALL, next_id + 1, ack, b)
            frame(wire.Kind.CALL, next_id, ack, a)
            next_id += 2
        elif roll < 0.72 and sent:  # a retransmission (of anything sent, with its ack or a newer one)
            kind, call_id, old_ack, payload, index, count, foreign = rng.choice(sent)
            frame(kind, call_id, rng.choice([old_ack, max(old_ack, ack)]) if old_ack <= call_id else old_ack,
                  payload, index, count, foreign)
        elif roll < 0.76:  # a one-way call
            frame(wire.Kind.ONEWAY, next_id, ack, _call(next_id, 0, "note"))
            next_id += 1
        elif roll < 0.80:  # a call in two fragments
            whole = _call(next_id, 5)
            frame(wire.Kind.CALL, next_id, ack, whole[:3], 0, 2)
            frame(wire.Kind.CALL, next_id, ack, whole[3:], 1, 2)
            next_id += 1
        elif roll < 0.83:  # a method the service has not, and one that raises (x % 13 == 0)
            frame(wire.Kind.CALL, next_id, ack, marshal.encode_call("nothing", (), {}))
            frame(wire.Kind.CALL, next_id + 1, ack, _call(next_id + 1, 13))
            next_id += 2
        elif roll < 0.86:  # an ack past its call, from a hostile or broken client
            frame(wire.Kind.CALL, next_id, next_id + 1, _call(next_id, 1))
        elif roll < 0.89:  # another connection's id
            frame(wire.Kind.CALL, next_id, ack, _call(next_id, 2), foreign=1)
        elif roll < 0.92:  # a stale call: below the ack
            frame(wire.Kind.CALL, max(1, ack - 1), ack, _call(max(1, ack - 1), 3))
        elif roll < 0.95:  # garbage (it fails the frame check)
            items.append(("garbage", rng.randbytes(rng.randrange(1, 64))))
        elif not stuck:  # the window changes
            window = rng.choice([1, 2, 8, 32])
        if not any(kind == "sentinel" for kind, _ in items[-CHUNK:]):
            items.append(("sentinel", (next_id, max(1, next_id - window))))
            next_id += 1
    items.append(("sentinel", (next_id, max(1, next_id - window))))
    return items


def _replies(cli: ombm.rpc.Client, until: int) -> list[tuple]:
    """The reply frames written to ``cli``'s reply channel, in order, through the one answering
    call ``until``."""
    got: list[tuple] = []
    deadline = time.monotonic() + REPLY_WAIT_S
    while time.monotonic() < deadline:
        signal = cli._receiver.pop_wait(0.05)
        if signal is None:
            continue
        kind, conn, call_id, index, count, ack, payload, _ = wire.decode_fields(cli._reply.slot_view_at(signal[1]))
        if kind == wire.Kind.ACK and call_id == cli._nonce:
            continue  # the server's answer to a CONNECT the client sent again while connecting
        data = bytes(payload)
        if kind == wire.Kind.ERROR_REPLY:  # (type, message, traceback): the traceback shows who ran the call
            data = msgpack.packb(msgpack.unpackb(data)[:3])
        got.append((int(kind), conn, call_id, index, count, ack, data))
        if call_id == until and kind != wire.Kind.ACK:
            return got
    raise AssertionError(f"no reply to the sentinel {until} within {REPLY_WAIT_S} s: {got}")


def _serve(name: str, stream: list[tuple[str, object]], lanes: bool, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Write ``stream`` into a real connection of a server with the lane on or off: every reply
    frame, the calls run, and the connection's protocol state."""
    monkeypatch.setattr(config, "LANES", lanes)
    ledger = Ledger()
    srv = RecordingServer(name, ledger).start()
    try:
        with ombm.rpc.connect(name, timeout=30.0) as cli:
            cli._pumped = True  # the timer leaves the replies to this test
            conn_id = cli._protocol.connection_id
            replies: list[tuple] = []
            for kind, item in stream:
                if kind == "garbage":
                    cli._request.send(item)
                elif kind == "frame":
                    fkind, call_id, ack, payload, index, count, foreign = item
                    cli._request.send(wire.encode(fkind, conn_id + foreign, call_id, payload, frag_index=index,
                                                  frag_count=count, ack=ack))
                else:  # every frame before it is answered (or not) by the time its reply comes
                    sentinel, ack = item
                    cli._request.send(wire.encode(wire.Kind.CALL, conn_id, sentinel, _call(sentinel, 4), ack=ack))
                    replies += _replies(cli, sentinel)
            cli._pumped = False
    finally:
        srv.stop()
    [state] = srv.dropped
    return {"replies": [(kind, conn - conn_id, *rest) for kind, conn, *rest in replies], "runs": dict(ledger.runs),
            "state": state, "calls": srv.stats["calls"], "errors": srv.stats["errors"],
            "lane_calls": srv.stats["lane_calls"]}


@pytest.mark.parametrize(("seed", "stuck"), [(1, False), (2, False), (3, False), (4, True)])
def test_the_server_lane_answers_every_stream_as_the_protocol_does(seed, stuck, monkeypatch):
    stream, name = _stream(seed, 150, stuck), service_name("lanestream")
    lane = _serve(name, stream, True, monkeypatch)
    reference = _serve(name, stream, False, monkeypatch)
    assert reference["lane_calls"] == 0
    assert lane["lane_calls"] > 0, "the lane served none of the pipelined calls"
    assert max(lane["runs"].values()) == 1, "a call ran twice"
    for key in ("runs", "calls", "errors", "state"):
        assert lane[key] == reference[key], key
    assert len(lane["replies"]) == len(reference["replies"])
    for i, (got, want) in enumerate(zip(lane["replies"], reference["replies"])):
        assert got == want, f"reply {i}"
