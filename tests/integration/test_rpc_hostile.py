"""A server under hostile or broken input keeps serving well-behaved clients (paper §3.2, §4; DESIGN.md §3).

Garbage is written straight into shared memory, the way a buggy or hostile
process with access to the folder could: into the service's well-known
channel and into a client's request channel. Every write ends at a slot's
end, so it raises a signal in the server exactly like a real frame.
"""

from __future__ import annotations

import random
import signal
import struct

import msgpack
import pytest

import ombm
from ombm.core import namespace
from ombm.rpc import RemoteError
from ombm.transport import wire
from rpc_helpers import Children, add_many, expect, join, segments_of, send_signal, serve_forever, service_name

pytestmark = pytest.mark.processes


class ServedCalc:
    """A Calc service in a child process."""

    def __init__(self, name: str, process, conn) -> None:
        self.name, self.process, self.conn = name, process, conn
        self.result: dict | None = None

    def stop(self) -> dict:
        """SIGTERM it; it must have survived until now and exit 0. Returns its Server.stats."""
        assert self.process.is_alive(), f"the server died (exit code {self.process.exitcode})"
        send_signal(self.process, signal.SIGTERM)
        self.result = expect(self.conn, "result")
        assert join(self.process) == 0
        return self.result["stats"]


@pytest.fixture
def server():
    name = service_name("hostile")
    with Children() as children:  # kills and joins whatever is left
        p, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        served = ServedCalc(name, p, conn)
        yield served
        if served.result is None and p.is_alive():
            send_signal(p, signal.SIGTERM)
            p.join(30)


def _write_slots(region, slot_size: int, blobs) -> int:
    """Write each blob so that it ends at the end of a slot (one signal each); return how many."""
    slots = region.size // slot_size
    count = 0
    for i, blob in enumerate(blobs):
        blob = bytes(blob)[-slot_size:]
        end = (i % slots + 1) * slot_size
        region.write(end - len(blob), blob)
        count += 1
    return count


def _trailer(payload_len: int, kind: int = wire.Kind.CALL, frag=(0, 1), checksum: int = 0) -> bytes:
    """A trailer with chosen (possibly absurd) fields and a checksum that is almost certainly wrong."""
    head = struct.pack("<QQQIIHHBBH", 1, 2, 0, payload_len, 0, frag[0], frag[1], kind, 0, wire.MAGIC)
    return head + struct.pack("<Q", checksum)


def _hello(**fields) -> bytes:
    pid, start = namespace.me()
    hello = {"req": "no-such-req", "rep": "no-such-rep", "conn": 7, "pid": pid, "start": start}
    hello.update(fields)
    return msgpack.packb({k: v for k, v in hello.items() if v is not None})


def _well_known_garbage(name: str, slot_size: int, rng: random.Random) -> list[bytes]:
    _, start = namespace.me()
    connect = wire.encode(wire.Kind.CALL, 0, 99, _hello())
    blobs: list[bytes] = []
    blobs += [rng.randbytes(slot_size) for _ in range(40)]  # noise filling whole slots
    blobs += [rng.randbytes(rng.randrange(1, slot_size)) for _ in range(40)]  # noise of any length
    blobs += [connect[:-cut] for cut in (1, 8, 9, 24, 47, 48, len(connect) - 1)]  # truncated frames
    blobs += [connect[cut:] for cut in (1, 5, len(connect) - 48)]  # head missing
    blobs += [b"\0" * (slot_size - 48) + _trailer(n) for n in (0xFFFFFFFF, 0x7FFFFFFF, slot_size, slot_size - 47)]
    blobs += [b"\xff" * slot_size, b"\0" * slot_size, b"\0" * 48, b"\0"]
    blobs += [
        wire.encode(kind, 0, 1000 + i, payload)  # each its own nonce: none is taken for a re-send
        for i, (kind, payload) in enumerate([
            (wire.Kind.CALL, b"\xc1"),  # not msgpack
            (wire.Kind.CALL, msgpack.packb([1, 2, 3])),  # not a map
            (wire.Kind.CALL, msgpack.packb(12)),
            (wire.Kind.CALL, msgpack.packb({"req": "x"})),  # fields missing
            (wire.Kind.CALL, b"\x91" * 900 + b"\xc0"),  # deeply nested
            (wire.Kind.CALL, _hello(req=5, rep=[1], conn="x")),  # wrong types
            (wire.Kind.CALL, _hello(req="../../etc/passwd")),  # not a name
            (wire.Kind.CALL, _hello(pid="me", start=None)),
            (wire.Kind.CALL, _hello()),  # channels that do not exist
            (wire.Kind.CALL, _hello(pid=1, start=0)),  # a process that is not alive (start time 0)
            (wire.Kind.CALL, _hello(pid=2**40, start=start)),
            (wire.Kind.CALL, _hello(req=f"rpc-{name}", rep=f"rpc-{name}", conn=123)),  # its own channel
            (wire.Kind.ACK, _hello()),  # not a CONNECT
            (wire.Kind.REPLY, b""),
            (wire.Kind.DATA, rng.randbytes(100)),
        ])
    ]
    blobs += [wire.encode(wire.Kind.CALL, 0, 99, rng.randbytes(rng.randrange(0, 900))) for _ in range(20)]
    rng.shuffle(blobs)
    return blobs


def test_garbage_in_the_well_known_channel(server):
    name = server.name
    rng = random.Random(1234)
    with Children() as children, ombm.rpc.connect(name, timeout=30.0) as cli:
        assert cli.add(1, 2) == 3
        # a well-behaved client process calls all along
        bystander, conn = children.spawn(add_many, name, 1, 1500)
        expect(conn, "ready")
        with ombm.open_segment(f"rpc-{name}") as seg:
            region = seg.bind(writable=True)
            written = 0
            for round_ in range(3):
                written += _write_slots(region, seg.unit, _well_known_garbage(name, seg.unit, rng))
                assert cli.add(round_, 1) == round_ + 1
            # writes that complete no slot raise no signal at all
            region.write(0, rng.randbytes(seg.unit - 1))
            region.write(seg.unit + 10, rng.randbytes(100))
            region.unbind()
        assert written > 300
        assert expect(conn, "result") == {"wrong": [], "count": 1500}
        assert join(bystander) == 0
        # the server still accepts newcomers and still serves us
        with ombm.rpc.connect(name, timeout=30.0) as newcomer:
            assert newcomer.add(20, 22) == 42
        assert cli.add(2, 2) == 4
        with pytest.raises(RemoteError):
            cli.fail("still answering errors")
    stats = server.stop()
    assert stats["bad_connects"] > 0
    assert stats["connections"] >= 3


def _connection_id(region, slot_size: int) -> int:
    """Read a real request frame back from the channel (an attacker may read it too)."""
    for slot in range(region.size // slot_size):
        try:
            return wire.decode(region.buffer[slot * slot_size : (slot + 1) * slot_size]).connection_id
        except ombm.FrameError:
            continue
    raise AssertionError("no valid request frame found in the request channel")


def test_garbage_in_a_client_request_channel(server):
    name = server.name
    rng = random.Random(99)
    with Children() as children, ombm.rpc.connect(name, timeout=30.0) as other:
        before = segments_of(name)
        with ombm.rpc.connect(name, timeout=30.0) as victim:
            assert victim.add(1, 2) == 3
            (req_name,) = [s for s in segments_of(name) - before if s.endswith("-req")]
            bystander, conn = children.spawn(add_many, name, 2, 1500)
            expect(conn, "ready")
            with ombm.open_segment(req_name) as seg:
                region = seg.bind(writable=True)
                slot = seg.unit
                conn_id = _connection_id(region, slot)
                far = 2**62
                blobs = [rng.randbytes(slot) for _ in range(50)]
                blobs += [rng.randbytes(rng.randrange(1, 4096)) for _ in range(50)]
                frame = wire.encode(wire.Kind.CALL, conn_id, far, b"\xc1" * 100)
                blobs += [frame[:-cut] for cut in (1, 8, 48)] + [frame[1:]]
                blobs += [b"\0" * 1000 + _trailer(n) for n in (0xFFFFFFFF, slot, slot - 47)]
                blobs += [
                    wire.encode(wire.Kind.CALL, conn_id ^ 1, 5, b"another connection"),
                    wire.encode(wire.Kind.REPLY, conn_id, far, b"a reply is not a request"),
                    wire.encode(wire.Kind.ACK, conn_id, far),
                    wire.encode(wire.Kind.CALL, conn_id, far, b"ack beyond call", ack=far + 1),
                    wire.encode(wire.Kind.CALL, conn_id, far + 1, b"x", frag_index=7, frag_count=0xFFFF),
                    wire.encode(wire.Kind.CALL, conn_id, far + 2, b"\xc1" * 100),  # executes: not a call
                    wire.encode(wire.Kind.ONEWAY, conn_id, far + 3, msgpack.packb([1, 2])),
                ]
                for _ in range(3):
                    _write_slots(region, slot, blobs)
                    assert other.add(5, 5) == 10
                region.unbind()
            # the victim's own connection recovers too: lost requests are retransmitted
            for i in range(20):
                assert victim.add(i, i) == 2 * i
            assert expect(conn, "result") == {"wrong": [], "count": 1500}
            assert join(bystander) == 0
        assert other.add(1, 1) == 2
    server.stop()


def test_garbage_in_a_client_reply_channel(server):
    """Whatever lands in a client's reply slots (the fast lane reads them first) never gives it a
    wrong result: frames it does not take go to the protocol, which drops and counts them."""
    name = server.name
    rng = random.Random(7)
    before = segments_of(name)
    with ombm.rpc.connect(name, timeout=30.0) as victim:
        assert victim.add(1, 2) == 3
        (rep_name,) = [s for s in segments_of(name) - before if s.endswith("-rep")]
        conn_id = victim._protocol.connection_id
        with ombm.open_segment(rep_name) as seg:
            region = seg.bind(writable=True)
            slot = seg.unit
            far = 2**62
            blobs = [rng.randbytes(slot) for _ in range(20)]
            blobs += [rng.randbytes(rng.randrange(1, 4096)) for _ in range(20)]
            reply = wire.encode(wire.Kind.REPLY, conn_id, far, b"\x92\x00\x01")
            blobs += [reply[:-cut] for cut in (1, 8, 48)] + [reply[1:]]
            blobs += [b"\0" * 1000 + _trailer(n, wire.Kind.REPLY) for n in (0xFFFFFFFF, slot, slot - 47)]
            blobs += [
                wire.encode(wire.Kind.REPLY, conn_id ^ 1, 2, b"another connection"),
                wire.encode(wire.Kind.REPLY, conn_id, far, b"a call never made"),
                wire.encode(wire.Kind.CALL, conn_id, 3, b"a request is not a reply"),
                wire.encode(wire.Kind.REPLY, conn_id, 1, b"a call long answered"),
                wire.encode(wire.Kind.REPLY, conn_id, far, b"x", frag_index=3, frag_count=9),
            ]
            for round_ in range(3):
                _write_slots(region, slot, blobs)  # their signals wait in the victim's FIFO
                for i in range(10):
                    assert victim.add(round_, i) == round_ + i
            region.unbind()
        stats = victim.statistics()
        assert stats.bad_frames + stats.foreign_frames + stats.duplicates > 0
        assert victim.add(2, 2) == 4
    server.stop()


def test_connect_with_an_out_of_range_connection_id_is_rejected(server):
    name = server.name
    with ombm.rpc.connect(name, timeout=5.0) as cli:
        assert cli.add(1, 2) == 3
        req = ombm.rpc.slots.SlotChannel.create(f"{name}-evil-req", slots=4, slot_size=1024)
        rep = ombm.rpc.slots.SlotChannel.create(f"{name}-evil-rep", slots=4, slot_size=1024)
        try:
            with ombm.open_segment(f"rpc-{name}") as seg:
                region = seg.bind(writable=True)
                frame = wire.encode(wire.Kind.CALL, 0, 4242, _hello(req=req.name, rep=rep.name, conn=-1))
                _write_slots(region, seg.unit, [frame])
                region.unbind()
            for i in range(10):  # give the server time to handle it
                assert cli.add(i, 1) == i + 1
        finally:
            req.close()
            rep.close()
    server.stop()


def test_a_reply_too_large_for_the_clients_channel_does_not_kill_the_server(server):
    name = server.name
    with ombm.rpc.connect(name, timeout=5.0) as bystander:
        with ombm.rpc.connect(name, timeout=5.0, slot_size=128) as small:
            assert small.add(1, 2) == 3
            with pytest.raises((RemoteError, ombm.CallTimeout)) as info:
                small.make(80 * 65535 + 10)
            assert not isinstance(info.value, ombm.ServerGoneError)
        assert bystander.add(1, 2) == 3
    server.stop()
