"""Replication of one segment between bridges (ombm.net.replica), without sockets: two or three
replicas in this process, the "network" a function that decodes what one sends and hands it to
another (or loses it). Deltas, full updates, tags, RESYNC, relays and echo suppression."""

from __future__ import annotations

import uuid

import pytest

import ombm
from ombm.net.replica import Replica
from ombm.transport import datagram as dg
from ombm.transport.updates import Assembler

UNIT = 4096
ROOM = dg.entry_room(dg.DEFAULT_MTU, dg.CRC_SIZE)
A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)


class Net:
    """Replicas by address; ``deliver`` carries entries to their address, counting bytes."""

    def __init__(self) -> None:
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.assemblers: dict[tuple[str, int], Assembler] = {}
        self.resyncs: list[tuple[tuple[str, int], tuple[str, int], int]] = []
        self.sent_bytes = 0
        self.statuses: list[str] = []

    def deliver(self, sender, out, lose=False):
        for address, entries in out:
            self.sent_bytes += sum(len(e) for e in entries)
            if lose:
                continue
            data = dg.Sealer(hash(sender) & 0xFFFF).seal(dg.Kind.UPDATE, b"".join(entries), len(entries), 1)
            for entry in dg.decode(data).entries:
                update = self.assemblers.setdefault(address, Assembler()).add(1, entry, 0.0)
                if update is not None:
                    replica = self.replicas[address]
                    status, relays = replica.apply(update, sender, ROOM,
                                                   lambda u, a=address: self.resyncs.append((a, sender, u)))
                    self.statuses.append(status)
                    self.deliver(address, relays)

    def write(self, address, offset, data, lose=False):
        """A local process at ``address`` writes; that bridge takes its signal and sends."""
        replica = self.replicas[address]
        replica.region.write(offset, data)
        self.take_signals(address)
        for u in list(replica.dirty):
            self.deliver(address, replica.local_update(u, next(TAGS), ROOM), lose=lose)
        replica.dirty.clear()

    def take_signals(self, address):
        replica = self.replicas[address]
        replica.handle.receiver.dispatch_pending()


def tags():
    n = 100
    while True:
        n += 1
        yield n


TAGS = tags()


@pytest.fixture
def net():
    network = Net()
    made = []

    def make(address, peers, exporter_of=()):
        seg = ombm.create_segment(4 * UNIT, name=f"t-net-{uuid.uuid4().hex[:12]}", unit=UNIT)
        made.append(seg)
        replica = Replica(seg.name, seg, 42, exported=not exporter_of)
        for peer in peers:
            replica.link(peer, exporter=peer in exporter_of)
        receiver = ombm.Receiver()
        made.append(receiver)
        replica.watch(receiver)
        network.replicas[address] = replica
        return replica

    network.make = make
    yield network
    for replica in network.replicas.values():
        replica.close()
    for thing in made:
        (thing.close if isinstance(thing, ombm.Receiver) else thing.release)()


def view(replica, u):
    lo = u * UNIT
    return bytes(replica.region.buffer[lo:lo + UNIT])


def test_a_write_reaches_the_peer_whole_then_as_deltas(net):
    a, b = net.make(A, [B]), net.make(B, [A], exporter_of=[A])
    frame = bytes(range(256)) * 8
    net.write(A, 2 * UNIT - len(frame), frame)                   # a frame ending at unit 1's end
    assert view(b, 1) == view(a, 1) and net.statuses == ["applied"]
    first = net.sent_bytes
    assert len(frame) < first < len(frame) + 200               # from the first non-zero byte only
    net.write(A, 2 * UNIT - 10, b"0123456789")                  # a small change: a small delta
    assert view(b, 1) == view(a, 1)
    assert net.sent_bytes - first < 10 + 2 * dg.ENTRY_SIZE
    net.write(B, 0, b"x" * UNIT)                                 # the other way
    assert view(a, 0) == view(b, 0) == b"x" * UNIT


def test_signals_of_own_writes_are_not_sent_back(net):
    a, b = net.make(A, [B]), net.make(B, [A], exporter_of=[A])
    net.write(A, 0, b"y" * UNIT)
    net.take_signals(B)                                          # B's echo of its own write
    assert not b.dirty and b.own[0] == 0


def test_a_rewrite_of_the_same_bytes_is_sent_again(net):
    """An RPC retransmission writes the same frame again: its signal must reach the peer."""
    a, b = net.make(A, [B]), net.make(B, [A], exporter_of=[A])
    net.write(A, UNIT - 100, b"r" * 100)
    net.write(A, UNIT - 100, b"r" * 100)
    assert net.statuses == ["applied", "applied"]


def test_a_lost_update_makes_the_next_delta_stale_then_full(net):
    a, b = net.make(A, [B]), net.make(B, [A], exporter_of=[A])
    net.write(A, UNIT - 100, b"1" * 100)
    net.write(A, UNIT - 200, b"2" * 200, lose=True)              # lost on the way
    net.write(A, UNIT - 50, b"3" * 50)                           # a delta on a base B never had
    assert net.statuses == ["applied", "stale"] and net.resyncs == [(B, A, 0)]
    assert view(b, 0) != view(a, 0)
    a.links[B].in_sync[0] = 0                                    # what A does with B's RESYNC
    net.write(A, UNIT - 50, b"3" * 50)                           # the retransmission goes whole
    assert net.statuses[-1] == "applied" and view(b, 0) == view(a, 0)


def test_the_exporter_relays_between_importers(net):
    a = net.make(A, [B, C])
    b, c = net.make(B, [A], exporter_of=[A]), net.make(C, [A], exporter_of=[A])
    net.write(B, 3 * UNIT - 5, b"hello")
    assert view(a, 2) == view(b, 2) == view(c, 2)
    net.take_signals(A)
    net.take_signals(C)
    assert not a.dirty and not c.dirty                           # echoes taken, nothing sent back
    net.write(C, 3 * UNIT - 3, b"abc")                           # C's delta, relayed to B as a delta
    assert view(a, 2) == view(b, 2) == view(c, 2)
    assert net.statuses.count("applied") == 4


def test_a_duplicate_update_is_dropped(net):
    a, b = net.make(A, [B]), net.make(B, [A], exporter_of=[A])
    a.region.write(0, b"\1" * UNIT)
    out = a.local_update(0, 7, ROOM)
    net.deliver(A, out)
    net.deliver(A, out)
    assert net.statuses == ["applied", "duplicate"]


def test_updates_that_do_not_fit_the_segment_are_malformed(net):
    b = net.make(B, [A], exporter_of=[A])
    from ombm.transport.updates import Update
    for ranges in ([(0, b"x")],                        # does not end at the unit's end
                   [(UNIT - 1, b"xx")],                # crosses into the next unit
                   [(4 * UNIT, b"x")],                 # past the segment
                   [(10, b"x"), (UNIT - 1, b"x")][::-1][:1] + [(2 * UNIT - 1, b"x")]):
        assert b.apply(Update(1, 42, 0, 5, True, ranges), A, ROOM, lambda u: None)[0] == "malformed"
    assert b.apply(Update(1, 42, 0, 5, True, [(UNIT - 1, b"x")]), C, ROOM, lambda u: None)[0] == "malformed"


def test_two_writers_of_one_unit_both_go_stale_then_whole(net):
    a, b = net.make(A, [B]), net.make(B, [A], exporter_of=[A])
    net.write(A, UNIT - 8, b"12345678")                          # both in sync on unit 0
    net.take_signals(B)
    a.region.write(UNIT - 4, b"AAAA")                            # at the same time on both hosts
    b.region.write(UNIT - 4, b"BBBB")
    net.take_signals(A), net.take_signals(B)
    out_a = a.local_update(0, next(TAGS), ROOM)
    out_b = b.local_update(0, next(TAGS), ROOM)
    net.deliver(A, out_a), net.deliver(B, out_b)                 # they cross on the way
    assert net.statuses[-2:] == ["stale", "stale"] and {(x, y) for x, y, _ in net.resyncs} == {(B, A), (A, B)}
    a.links[B].in_sync[0] = 0                                    # what each does with the other's RESYNC
    b.links[A].in_sync[0] = 0
    net.write(A, UNIT - 4, b"CCCC")                              # the next write goes whole and settles it
    assert view(a, 0) == view(b, 0)
