"""Bridges in this process, over real UDP on loopback (ombm.net.Bridge): import, replication both
ways, large units as deltas, relays, BYE, the security rules and the counters. Each bridge serves in
its own thread and is told by :meth:`Bridge.request` what the control socket would tell it (the
tests with one folder per host, through ``open_segment("name@HOST:PORT")``, are in test_net_hosts.py).
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest

import ombm
from net_hosts import wait_for
from ombm.net import Bridge
from ombm.transport import datagram as dg

KEY = bytes(range(32))
pytestmark = pytest.mark.processes


class Signals:
    """Signals on a region, taken by a Dispatcher thread: (offset, the unit's bytes at that time)."""

    def __init__(self, region, dispatcher):
        self.got = []
        self.region = region
        self.handle = dispatcher.signal_handler(region.address, region.size, self._on)

    def _on(self, address):
        offset = address - self.region.address
        unit = self.region.segment.unit
        self.got.append((offset, bytes(self.region.buffer[offset:offset + unit])))

    def wait(self, n=1):
        assert wait_for(lambda: len(self.got) >= n), f"{len(self.got)} signals, not {n}"
        return self.got[n - 1]


@pytest.fixture
def dispatcher():
    d = ombm.Dispatcher()
    yield d
    d.close()


@pytest.fixture
def cleanup():
    things = []
    yield things
    for thing in reversed(things):
        (getattr(thing, "close", None) or getattr(thing, "unbind", None) or thing.release)()


def exported(cleanup, size=8192, unit=64):
    seg = ombm.create_segment(size, name=f"t-net-{uuid.uuid4().hex[:12]}", unit=unit)
    region = seg.bind()
    cleanup += [seg, region]
    return seg, region


def bridges(cleanup, *names, key=None, quiet=False, **options):
    """Two bridges, the first exporting ``names``; ``quiet``: no keepalive PING or PONG within the
    test (an hour's period), for a test that counts the bytes its updates send."""
    keepalive = {"keepalive_s": 3600.0} if quiet else {}
    made = [Bridge("127.0.0.1:0", exports=names, key=key, control=False, **keepalive, **options)]
    made.append(Bridge("127.0.0.1:0", key=key, control=False, **keepalive))
    if key is None:
        made[0].add_peer(f"127.0.0.1:{made[1].address[1]}")
        made[1].add_peer(f"127.0.0.1:{made[0].address[1]}")
    cleanup += made
    for b in made:
        b.start()
    return made


def import_(bridge, name, exporter, timeout=5.0):
    return bridge.request({"op": "import", "name": name, "host": "127.0.0.1", "port": exporter.address[1],
                           "timeout": timeout}, timeout + 5)


def replica(cleanup, reply):
    assert reply["ok"], reply
    seg = ombm.open_segment(reply["local"])
    region = seg.bind()
    cleanup += [seg, region]
    return seg, region


def test_a_write_on_either_side_signals_the_other(cleanup, dispatcher):
    seg, region = exported(cleanup)
    a, b = bridges(cleanup, seg.name)
    rseg, rregion = replica(cleanup, import_(b, seg.name, a))
    assert rseg.name == f"{seg.name}.at.127.0.0.1_{a.address[1]}"
    assert (rseg.size, rseg.unit, rseg.mode, rseg.signal_on_write) == (seg.size, seg.unit, seg.mode, True)
    on_b = Signals(rregion, dispatcher)
    region.write(4096, b"x" * 64)
    assert on_b.wait() == (4096, b"x" * 64)                 # B's own translated address, the data with it
    on_a = Signals(region, dispatcher)
    rregion.write(128, b"y" * 60 + b"done")
    assert on_a.wait() == (128, b"y" * 60 + b"done")
    assert wait_for(lambda: a.stats["updates_in"] == 1 and b.stats["updates_in"] == 1)
    time.sleep(0.2)                                          # no echo comes back either way
    assert a.stats["updates_out"] == 1 and b.stats["updates_out"] == 1
    assert len(on_a.got) == 1 and len(on_b.got) == 2       # on B: A's write, and B's own
    assert import_(b, seg.name, a)["local"] == rseg.name     # importing again: the same replica
    for s in (a.stats, b.stats):
        assert {k: v for k, v in s.items() if k.startswith("dropped") or k.endswith("errors")} == \
            dict.fromkeys([k for k in s if k.startswith("dropped") or k.endswith("errors")], 0)


def test_large_units_travel_as_deltas_over_several_datagrams(cleanup, dispatcher):
    slot = 128 * 1024
    seg, region = exported(cleanup, size=4 * slot, unit=slot)
    a, b = bridges(cleanup, seg.name, quiet=True)  # bytes_out counts updates only (and any path MTU probe)
    rseg, rregion = replica(cleanup, import_(b, seg.name, a))
    on_b = Signals(rregion, dispatcher)
    frame = bytes(i * 7 % 251 for i in range(100_000))
    region.write(2 * slot - len(frame), frame)              # a frame at the end of slot 1
    assert on_b.wait() == (slot, bytes(slot - len(frame)) + frame)
    first = a.stats["bytes_out"]
    assert a.stats["datagrams_out"] >= len(frame) // dg.DEFAULT_MTU
    region.write(2 * slot - 40, b"z" * 40)                   # 40 new bytes: one small datagram
    assert on_b.wait(2)[1] == bytes(region.buffer[slot:2 * slot])
    assert a.stats["bytes_out"] - first < 40 + dg.HEADER_SIZE + dg.ENTRY_SIZE + dg.CRC_SIZE + 1


def test_bye_ends_the_replication(cleanup):
    seg, region = exported(cleanup)
    a, b = bridges(cleanup, seg.name)
    reply = import_(b, seg.name, a)
    assert reply["ok"] and any(f.endswith(reply["local"]) for f in _folder())
    b.close()                                                  # says BYE; its replica goes
    assert not any(f.endswith(reply["local"]) for f in _folder())
    assert wait_for(lambda: not a._replicas)                  # the exporter drops its last importer


def test_an_exporter_leaving_removes_the_replica(cleanup):
    seg, region = exported(cleanup)
    a, b = bridges(cleanup, seg.name)
    reply = import_(b, seg.name, a)
    a.close()
    assert wait_for(lambda: not any(f.endswith(reply["local"]) for f in _folder()))


def _folder():
    from ombm.core import namespace
    import os
    return os.listdir(namespace.folder())


def test_what_is_not_exported_cannot_be_imported(cleanup):
    seg, region = exported(cleanup)
    a, b = bridges(cleanup)                                    # nothing exported
    reply = import_(b, seg.name, a)
    assert (reply["ok"], reply["error"]) == (False, "not_found") and "does not export" in reply["message"]
    a2, b2 = bridges(cleanup, "no-such-segment")
    reply = import_(b2, "no-such-segment", a2)
    assert reply["error"] == "not_found" and "no segment" in reply["message"]


def test_a_key_mismatch_drops_everything_and_counts_it(cleanup):
    seg, region = exported(cleanup)
    a = Bridge("127.0.0.1:0", exports=[seg.name], key=KEY, control=False)
    b = Bridge("127.0.0.1:0", key=bytes(32), control=False)
    cleanup += [a, b]
    a.start(), b.start()
    reply = import_(b, seg.name, a, timeout=0.6)
    assert reply["error"] == "unreachable"
    assert a.stats["dropped_bad_mac"] >= 2 and a.stats["updates_in"] == a.stats["imports_served"] == 0


def test_without_a_key_only_peers_are_heard(cleanup):
    seg, region = exported(cleanup)
    a = Bridge("127.0.0.1:0", exports=[seg.name], control=False)
    b = Bridge("127.0.0.1:0", control=False)
    cleanup += [a, b]
    a.start(), b.start()
    refused = import_(b, seg.name, a)
    assert refused["error"] == "refused" and "--peer" in refused["message"]   # B will not even ask
    b.add_peer(f"127.0.0.1:{a.address[1]}")
    assert import_(b, seg.name, a, timeout=0.6)["error"] == "unreachable"    # A does not hear B
    assert a.stats["dropped_not_peer"] >= 2 and a.stats["imports_served"] == 0
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.sendto(dg.Sealer(1).control(dg.Kind.LIST, {"nonce": 1}, 1), a.address)
    stranger.close()
    assert wait_for(lambda: a.stats["dropped_not_peer"] >= 3)


def test_listening_beyond_loopback_needs_a_key_or_insecure(cleanup):
    with pytest.raises(PermissionError, match="--key-file"):
        Bridge("0.0.0.0:0", control=False)
    for options in ({"key": KEY}, {"insecure": True}):
        bridge = Bridge("0.0.0.0:0", control=False, **options)
        bridge.close()


def test_bad_arguments(cleanup):
    for listen in ("nowhere", "127.0.0.1:99999", 7):
        with pytest.raises((ValueError, TypeError)):
            Bridge(listen, control=False)
    with pytest.raises(ValueError):
        Bridge("127.0.0.1:0", exports=["../x"], control=False)
    with pytest.raises(ValueError):
        Bridge("127.0.0.1:0", mtu=10, control=False)
    with pytest.raises(ValueError):
        Bridge("127.0.0.1:0", key=b"short", control=False)


def test_close_is_idempotent_and_leaves_nothing(cleanup):
    seg, region = exported(cleanup)
    a, b = bridges(cleanup, seg.name)
    replica(cleanup, import_(b, seg.name, a))
    for bridge in (a, b):
        bridge.close()
        bridge.close()
    with pytest.raises(ombm.OmbmError):
        a.start()


def test_an_export_follows_its_name(cleanup, dispatcher):
    """The exported segment's creator releases it and makes another of that name: a new import gets
    the new one."""
    seg, region = exported(cleanup)
    a, b = bridges(cleanup, seg.name)
    first = import_(b, seg.name, a)
    assert first["ok"]
    b.close()
    region.unbind(), seg.release()
    again = ombm.create_segment(4096, name=seg.name, unit=64)
    region2 = again.bind()
    cleanup += [again, region2]
    b2 = Bridge("127.0.0.1:0", peers=[f"127.0.0.1:{a.address[1]}"], control=False).start()
    cleanup.append(b2)
    a.add_peer(f"127.0.0.1:{b2.address[1]}")
    rseg, rregion = replica(cleanup, import_(b2, seg.name, a))
    assert rseg.size == 4096
    on_b2 = Signals(rregion, dispatcher)
    region2.write(0, b"new" * 21 + b"!")
    assert on_b2.wait() == (0, b"new" * 21 + b"!")


def test_a_bridge_does_not_import_from_itself(cleanup):
    (a,) = bridges(cleanup)[:1]
    reply = import_(a, "video", a)
    assert reply["error"] == "refused" and "own bridge" in reply["message"]


def test_an_offered_segment_is_replicated_at_the_other_bridge(cleanup, dispatcher):
    """The other direction (RPC's own channels across hosts): B has A make a replica of B's segment."""
    seg, region = exported(cleanup)
    a, b = bridges(cleanup)                                    # nothing exported: an offer needs no --export
    reply = b.request({"op": "offer", "name": seg.name, "host": "127.0.0.1", "port": a.address[1]})
    assert reply == {"ok": True, "remote": f"{seg.name}.at.127.0.0.1_{b.address[1]}"}
    rseg, rregion = replica(cleanup, {"ok": True, "local": reply["remote"]})
    on_a = Signals(rregion, dispatcher)
    region.write(64, b"o" * 64)
    assert on_a.wait() == (64, b"o" * 64)
    on_b = Signals(region, dispatcher)
    rregion.write(0, b"p" * 64)
    assert on_b.wait() == (0, b"p" * 64)
    again = b.request({"op": "offer", "name": seg.name, "host": "127.0.0.1", "port": a.address[1]})
    assert again == reply and a.stats["replicas_made"] == 1
    missing = b.request({"op": "offer", "name": "no-such-thing", "host": "127.0.0.1", "port": a.address[1]})
    assert missing["error"] == "not_found"
    b.close()                                                   # BYE: A's replica of it goes
    assert wait_for(lambda: not a._replicas)


def test_the_software_only_signal_path_too(cleanup):
    """With every signal a system call through a kernel queue (paper §5.1's baseline), the bridge
    sleeps on that queue's socket and still takes every local write."""
    ombm.configure(signal_path="kernel")
    with ombm.Dispatcher() as dispatcher:
        seg, region = exported(cleanup)
        a, b = bridges(cleanup, seg.name)
        rseg, rregion = replica(cleanup, import_(b, seg.name, a))
        on_b = Signals(rregion, dispatcher)
        region.write(0, b"k" * 64)
        assert on_b.wait() == (0, b"k" * 64)
        on_a = Signals(region, dispatcher)
        rregion.write(64, b"l" * 64)
        assert on_a.wait() == (64, b"l" * 64)
        for s in (a, b):
            s.close()


def test_an_update_missing_a_part_is_dropped_and_counted(cleanup):
    seg, region = exported(cleanup, size=8192, unit=4096)
    a, b = bridges(cleanup, seg.name)
    rseg, rregion = replica(cleanup, import_(b, seg.name, a))
    b.stop()                                                     # its receive path, driven by hand
    key = next(iter(b._replicas))
    sealer = dg.Sealer(99)
    first = dg.pack_entry(key, 4096 - 100, 0, 5, 0, 2, True, b"a" * 50)  # part 0 of 2; part 1 never comes
    b.receive_datagram(sealer.seal(dg.Kind.UPDATE, first, 1, 1), a.address, now_s=100.0)
    assert b.stats["dropped_incomplete"] == 0 and rregion.read(4046, 50) == bytes(50)
    b._timers(100.4)
    assert b.stats["dropped_incomplete"] == 0
    b._timers(100.6)                                             # past the 0.5 s reassembly timeout
    assert b.stats["dropped_incomplete"] == 1 and b.stats["updates_in"] == 0
    whole = (dg.pack_entry(key, 4096 - 100, 0, 6, 0, 2, True, b"a" * 50)
             + dg.pack_entry(key, 4096 - 50, 0, 6, 1, 2, True, b"b" * 50))  # both parts of the next one
    b.receive_datagram(sealer.seal(dg.Kind.UPDATE, whole, 2, 2), a.address, now_s=101.0)
    assert b.stats["updates_in"] == 1 and rregion.read(4096 - 100, 100) == b"a" * 50 + b"b" * 50


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6(cleanup, dispatcher):
    seg, region = exported(cleanup)
    a = Bridge("[::1]:0", exports=[seg.name], control=False)
    b = Bridge("[::1]:0", peers=[f"[::1]:{a.address[1]}"], control=False)
    cleanup += [a, b]
    a.add_peer(f"[::1]:{b.address[1]}")
    a.start(), b.start()
    reply = b.request({"op": "import", "name": seg.name, "host": "::1", "port": a.address[1]})
    assert reply["local"] == f"{seg.name}.at.__1_{a.address[1]}"
    wrong = b.request({"op": "import", "name": seg.name, "host": "127.0.0.1", "port": a.address[1]})
    assert wrong["error"] == "bad_request" and "IPv6" in wrong["message"]
    _, rregion = replica(cleanup, reply)
    on_b = Signals(rregion, dispatcher)
    region.write(0, b"6" * 64)
    assert on_b.wait() == (0, b"6" * 64)
