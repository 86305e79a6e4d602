"""Channels across hosts, end to end: hosts are private OMBM_SHM_DIR folders on this machine, each
with its ``ombm bridge`` process and agent processes (net_hosts.py); the bridges talk UDP on
127.0.0.1. Remote names (``open_segment("name@HOST:PORT")``), signals on the other host with its own
translated address, keys, replays, strangers, three hosts, and SIGKILL then ``ombm gc``."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from net_hosts import Host, free_udp_port, key_file
from ombm.transport import datagram as dg

pytestmark = pytest.mark.processes
KEY = bytes(range(32))


@pytest.fixture
def hosts():
    made: list[Host] = []

    def make(label: str) -> Host:
        host = Host(label)
        made.append(host)
        return host

    yield make
    for host in made:
        host.close()


def no_key_pair(hosts):
    """Host A (bridge exporting "video") and host B (bridge without exports), peers of each other."""
    a, b = hosts("a"), hosts("b")
    pa, pb = free_udp_port(), free_udp_port()
    ba = a.bridge("--listen", f"127.0.0.1:{pa}", "--export", "video", "--peer", f"127.0.0.1:{pb}")
    bb = b.bridge("--listen", f"127.0.0.1:{pb}", "--peer", f"127.0.0.1:{pa}")
    return a, b, ba, bb


def test_a_remote_segment_opened_by_name_signals_both_ways(hosts):
    a, b, ba, bb = no_key_pair(hosts)
    on_a, on_b = a.agent(), b.agent()
    on_a.ok("create", name="video", size=8192, unit=64)
    remote = f"video@127.0.0.1:{ba.port}"
    opened = on_b.ok("open", name=remote)
    assert opened["local"] == f"video.at.127.0.0.1_{ba.port}" and (opened["size"], opened["unit"]) == (8192, 64)
    on_b.ok("watch", name=remote)
    on_a.ok("write", name="video", offset=4096, hex=(b"A" * 64).hex())
    (got,) = on_b.ok("wait", n=1, timeout=10)["signals"]
    assert (got["offset"], bytes.fromhex(got["data"])) == (4096, b"A" * 64)
    assert got["address"] == got["base"] + 4096                      # B's own address of the unit
    on_a.ok("watch", name="video")
    on_b.ok("write", name=remote, offset=0, hex=(b"B" * 64).hex())
    (back,) = on_a.ok("wait", n=1, timeout=10)["signals"]
    assert (back["offset"], bytes.fromhex(back["data"])) == (0, b"B" * 64)
    assert on_a.ok("read", name="video", offset=0, n=64)["hex"] == (b"B" * 64).hex()
    stats = on_b.ok("status")["stats"]
    assert stats["updates_in"] == 1 and stats["replicas_made"] == 1 and stats["dropped_malformed"] == 0
    on_a.exit(), on_b.exit()
    for host, bridge in ((a, ba), (b, bb)):
        status, out = bridge.stop(signal.SIGTERM if host is a else signal.SIGINT)
        assert status == 0 and "datagrams_in" in out
        assert host.objects() == [], host.objects()                 # a clean stop leaves nothing


def test_a_segment_offered_to_another_host(hosts):
    """The first step of RPC across hosts: a process has its own segment replicated at another host."""
    a, b, ba, bb = no_key_pair(hosts)
    on_a, on_b = a.agent(), b.agent()
    on_b.ok("create", name="req-7", size=4096, unit=64)
    there = on_b.ok("offer", name="req-7", bridge=f"127.0.0.1:{ba.port}")["remote"]
    assert there == f"req-7.at.127.0.0.1_{bb.port}"
    on_a.ok("open", name=there)
    on_a.ok("watch", name=there)
    on_b.ok("write", name="req-7", offset=192, hex=(b"q" * 64).hex())
    (got,) = on_a.ok("wait", n=1, timeout=10)["signals"]
    assert (got["offset"], bytes.fromhex(got["data"])) == (192, b"q" * 64)


def test_without_a_bridge_a_remote_name_says_how_to_start_one(hosts):
    agent = hosts("lonely").agent()
    answer = agent("open", name="video@127.0.0.1:7")
    assert answer["type"] == "BridgeNotRunningError" and "ConnectionRefusedError" in answer["bases"]
    assert "ombm bridge --listen" in answer["message"]
    agent.exit()


def test_a_name_the_remote_bridge_does_not_export(hosts):
    a, b, ba, bb = no_key_pair(hosts)
    answer = b.agent()("open", name=f"secret@127.0.0.1:{ba.port}")
    assert answer["type"] == "SegmentNotFoundError" and "does not export" in answer["message"]


def test_a_key_mismatch_drops_everything_and_counts_it(hosts):
    a, b = hosts("a"), hosts("b")
    ba = a.bridge("--listen", "127.0.0.1:0", "--export", "video", "--key-file", key_file(a.root, KEY))
    b.bridge("--listen", "127.0.0.1:0", "--key-file", key_file(b.root, bytes(32)))
    on_a = a.agent()
    on_a.ok("create", name="video", size=4096, unit=64)
    answer = b.agent()("open", name=f"video@127.0.0.1:{ba.port}")
    assert answer["type"] == "BridgeUnreachableError"
    stats = on_a.ok("status")["stats"]
    assert stats["dropped_bad_mac"] >= 1 and stats["imports_served"] == 0 and stats["datagrams_out"] == 0


class Relay:
    """A UDP relay between B and A that records what A sends B (it sits where an eavesdropper would)."""

    def __init__(self, a_port: int) -> None:
        self.to_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.to_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.to_b.bind(("127.0.0.1", 0))
        self.to_a.bind(("127.0.0.1", 0))
        self.port = self.to_b.getsockname()[1]
        self.a = ("127.0.0.1", a_port)
        self.b = None
        self.captured: list[bytes] = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.to_b, selectors.EVENT_READ)
        sel.register(self.to_a, selectors.EVENT_READ)
        while not self.stop:
            for key, _ in sel.select(0.1):
                data, source = key.fileobj.recvfrom(65536)
                if key.fileobj is self.to_b:
                    self.b = source
                    self.to_a.sendto(data, self.a)
                elif self.b is not None:
                    if data[3] == dg.Kind.UPDATE:
                        self.captured.append(data)
                    self.to_b.sendto(data, self.b)
        sel.close()

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.to_a.close()
        self.to_b.close()


def test_replayed_datagrams_are_dropped(hosts):
    a, b = hosts("a"), hosts("b")
    ba = a.bridge("--listen", "127.0.0.1:0", "--export", "video", "--key-file", key_file(a.root, KEY))
    b.bridge("--listen", "127.0.0.1:0", "--key-file", key_file(b.root, KEY))
    relay = Relay(ba.port)
    try:
        on_a, on_b = a.agent(), b.agent()
        on_a.ok("create", name="video", size=4096, unit=64)
        remote = f"video@127.0.0.1:{relay.port}"                    # B reaches A through the relay
        on_b.ok("open", name=remote)
        on_b.ok("watch", name=remote)
        on_a.ok("write", name="video", offset=64, hex=(b"1" * 64).hex())
        assert len(on_b.ok("wait", n=1, timeout=10)["signals"]) == 1
        assert relay.captured
        for data in relay.captured:                                   # the eavesdropper replays them
            relay.to_b.sendto(data, relay.b)
        deadline = time.monotonic() + 10
        while on_b.ok("status")["stats"]["dropped_replay"] < len(relay.captured) and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = on_b.ok("status")["stats"]
        assert stats["dropped_replay"] == len(relay.captured) and stats["updates_in"] == 1
        assert len(on_b.ok("wait", n=2, timeout=0.3)["signals"]) == 1  # no second signal
    finally:
        relay.close()


def test_a_datagram_from_a_stranger_is_dropped(hosts):
    a, b, ba, bb = no_key_pair(hosts)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.sendto(dg.Sealer(1).control(dg.Kind.LIST, {"nonce": 1}, 1), ("127.0.0.1", ba.port))
    stranger.settimeout(0.5)
    with pytest.raises(socket.timeout):
        stranger.recv(100)                                           # no answer
    stranger.close()
    status, out = ba.stop()
    assert status == 0 and "dropped_not_peer        │     1" in out


def test_three_hosts_a_star_through_the_exporter(hosts):
    a, b, c = hosts("a"), hosts("b"), hosts("c")
    ba = a.bridge("--listen", "127.0.0.1:0", "--export", "video", "--key-file", key_file(a.root, KEY))
    for h in (b, c):
        h.bridge("--listen", "127.0.0.1:0", "--key-file", key_file(h.root, KEY))
    on_a, on_b, on_c = a.agent(), b.agent(), c.agent()
    on_a.ok("create", name="video", size=1 << 20, unit=128 << 10)  # large units: 128 KiB
    remote = f"video@127.0.0.1:{ba.port}"
    for agent in (on_b, on_c):
        agent.ok("open", name=remote)
        agent.ok("watch", name=remote)
    on_a.ok("watch", name="video")
    frame = os.urandom(50_000)
    on_b.ok("write", name=remote, offset=(256 << 10) - len(frame), hex=frame.hex())
    for agent, name in ((on_a, "video"), (on_c, remote)):
        (got,) = agent.ok("wait", n=1, timeout=10)["signals"]
        assert got["offset"] == 128 << 10 and bytes.fromhex(got["data"]).endswith(frame)


def test_a_killed_bridge_leaves_nothing_gc_cannot_reclaim(hosts):
    a, b, ba, bb = no_key_pair(hosts)
    on_a, on_b = a.agent(), b.agent()
    on_a.ok("create", name="video", size=4096, unit=64)
    on_b.ok("open", name=f"video@127.0.0.1:{ba.port}")
    on_b.exit()
    assert any(f.startswith("seg-video.at.") for f in b.objects()) and "sock-bridge" in b.objects()
    bb.proc.kill()
    bb.proc.wait(30)
    left = b.objects()
    assert left                                                      # the replica, its FIFO, the socket
    gc = b.ombm("gc")
    assert gc.returncode == 0, gc.stderr
    assert b.objects() == [], (left, b.objects())


def test_the_command_refuses_what_is_unsafe(hosts):
    h = hosts("x")
    out = h.ombm("bridge", "--listen", "0.0.0.0:0")
    assert out.returncode == 2 and "--key-file" in out.stderr and "--insecure" in out.stderr
    loose = key_file(h.root, KEY, mode=0o644)
    out = h.ombm("bridge", "--listen", "127.0.0.1:0", "--key-file", loose)
    assert out.returncode == 2 and "chmod 600" in out.stderr
    bridge = h.bridge("--listen", "127.0.0.1:0")
    second = h.ombm("bridge", "--listen", "127.0.0.1:0")
    assert second.returncode == 2 and "already serves" in second.stderr
    assert bridge.stop()[0] == 0
