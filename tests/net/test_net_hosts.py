"""Hosts made of network namespaces (``tests/net/netns.py``): they reach each other, IP multicast
works between them, each has its own ombm folder, nftables drops the share it is told to, and
nothing outlives a network: not a process, a namespace, a veth or a folder, even a half-built
one, and a killed run's leftovers are swept by the next."""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

import ombm.cli.bench.netns as netns_module
from .netns import SUBNET, Network, missing, need_nft, receive, sweep, udp_socket

pytestmark = pytest.mark.processes

GROUP, GROUP_PORT = "239.255.42.99", 42099  # a fresh namespace has every port free


def _namespaces() -> set[str]:
    return set(os.listdir(netns_module.NETNS_DIR)) if os.path.isdir(netns_module.NETNS_DIR) else set()


def test_two_hosts_reach_each_other_on_their_addresses(hosts: Network) -> None:
    a, b = hosts
    assert (a.address, b.address) == (f"{SUBNET}.1", f"{SUBNET}.2")
    server, client = udp_socket(b), udp_socket(a)
    with server, client:
        client.sendto(b"ping", (b.address, server.getsockname()[1]))
        data, source = server.recvfrom(64)
        assert (data, source[0]) == (b"ping", a.address)
        server.sendto(b"pong", source)
        assert client.recv(64) == b"pong"


def test_a_process_runs_inside_its_host_with_its_own_ombm_folder(hosts: Network) -> None:
    a, b = hosts
    code = ("import json, os, socket, ombm\n"
            "from ombm.core import namespace\n"
            "segment = ombm.create_segment(4096, name='probe')\n"
            "folder = namespace.folder()\n"
            "print(json.dumps({'folder': folder, 'files': os.listdir(folder),\n"
            "                  'interfaces': [name for _, name in socket.if_nameindex()]}))\n"
            "segment.release()\n")
    found = {}
    for host in (a, b):
        result = host.python(code)
        assert result.returncode == 0, result.stderr
        found[host.label] = json.loads(result.stdout)
    for host in (a, b):
        assert found[host.label]["folder"] == os.path.join(host.shm_dir, f"ombm-{os.getuid()}")
        assert any(name.startswith("seg-") for name in found[host.label]["files"])
        assert sorted(found[host.label]["interfaces"]) == ["lo", "veth0"]
    addresses = a.run(["ip", "-4", "-o", "addr", "show", "dev", "veth0"], check=True).stdout
    assert f"{a.address}/24" in addresses and b.address not in addresses


def _multicast_reaches(sender: netns_module.Host, receivers: list[netns_module.Host]) -> None:
    """One datagram from ``sender`` to the group arrives at every receiver (each joined on its veth0)."""
    sockets = [udp_socket(host, GROUP_PORT) for host in receivers]
    try:
        for host, sock in zip(receivers, sockets):
            membership = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton(host.address))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        with udp_socket(sender) as out:  # no IP_MULTICAST_IF: the host's multicast route picks veth0
            out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            out.sendto(b"to the group", (GROUP, GROUP_PORT))
        for sock in sockets:
            data, source = sock.recvfrom(64)
            assert (data, source[0]) == (b"to the group", sender.address)
    finally:
        for sock in sockets:
            sock.close()


def test_multicast_crosses_the_veth_pair(hosts: Network) -> None:
    a, b = hosts
    _multicast_reaches(a, [b])
    _multicast_reaches(b, [a])


@pytest.mark.hosts(3)
def test_three_hosts_share_a_bridge_and_multicast_reaches_all(hosts: Network) -> None:
    a, b, c = hosts
    assert c.address == f"{SUBNET}.3"
    assert f"{hosts.prefix}-sw" in _namespaces()
    _multicast_reaches(a, [b, c])
    _multicast_reaches(c, [a, b])


def _binomial_bounds(n: int, p: float, tail: float) -> tuple[int, int]:
    """(lo, hi) with P(X < lo) + P(X > hi) < tail for X ~ Binomial(n, p)."""
    def log_pmf(k: int) -> float:
        return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                + k * math.log(p) + (n - k) * math.log1p(-p))

    pmf = [math.exp(log_pmf(k)) for k in range(n + 1)]
    lo, below = 0, 0.0
    while below + pmf[lo] < tail / 2:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] < tail / 2:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def _collect(sock: socket.socket, done, deadline_s: float = 60.0) -> list[bytes]:
    """Datagrams from ``sock`` until ``done(count)`` says all are in (asked whenever the socket
    is quiet); the deadline bounds a failure only."""
    got: list[bytes] = []
    sock.settimeout(0.2)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            if done(len(got)):
                return got
    raise AssertionError(f"only {len(got)} datagrams arrived")


def test_nftables_drops_the_share_it_is_told_to(hosts: Network) -> None:
    need_nft()
    a, b = hosts
    sent, percent = 2000, 5
    b.drop_percent(percent)
    receiver, sender = udp_socket(b), udp_socket(a)
    with receiver, sender:
        target = (b.address, receiver.getsockname()[1])
        for seq in range(sent):
            sender.sendto(seq.to_bytes(4, "little"), target)
        got = _collect(receiver, lambda count: count + b.dropped() == sent)
        lost = sent - len(got)
        assert b.dropped() == lost, "every datagram that did not arrive was dropped by the rule"
        lo, hi = _binomial_bounds(sent, percent / 100, 1e-9)
        assert lo <= lost <= hi, f"{lost} of {sent} dropped at {percent} %: outside [{lo}, {hi}]"
        assert len(set(got)) == len(got)
        b.drop_percent(0)  # removed: everything arrives, nothing is counted
        for seq in range(200):
            sender.sendto(seq.to_bytes(4, "little"), target)
        receiver.settimeout(10.0)
        assert len(receive(receiver, 200)) == 200
        assert b.dropped() == 0


def test_missing_says_why_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (missing() or "")


def _need_hosts() -> None:
    reason = missing()
    if reason:
        pytest.skip(reason)


def test_closing_kills_every_process_and_removes_everything() -> None:
    _need_hosts()
    network = Network.create(3, tag="t")
    a = network[0]
    leader = a.popen(["sh", "-c", "sleep 300 & sleep 300"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(a.pids()) < 2 and time.monotonic() < deadline:  # the shell has started its child
        time.sleep(0.01)
    inside = a.pids()
    assert leader.pid in inside and len(inside) >= 2
    names, folders = list(network.namespaces), list(network.folders)
    assert set(names) <= _namespaces() and all(os.path.isdir(f) for f in folders)
    network.close()
    network.close()  # idempotent
    assert leader.poll() is not None
    for pid in inside:
        assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
    assert not set(names) & _namespaces()
    assert not any(os.path.exists(f) for f in folders)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_half_built_network_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    _need_hosts()
    real_ip, calls = netns_module.ip, []

    def failing_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[:2] == ("-n", f"ombm-t{os.getpid()}-b") and "addr" in args:
            raise OSError("injected failure")
        return real_ip(*args, check=check)

    monkeypatch.setattr(netns_module, "ip", failing_ip)
    before = set(os.listdir(netns_module.SHM_ROOT))
    with pytest.raises(OSError, match="injected"):
        Network.create(2, tag="t")
    assert any(args[:2] == ("netns", "add") for args in calls)
    assert not any(n.startswith(f"ombm-t{os.getpid()}-") for n in _namespaces())
    assert set(os.listdir(netns_module.SHM_ROOT)) <= before


def test_sweep_removes_what_a_dead_run_left_and_nothing_alive(hosts: Network) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"ombm-t{dead.pid}-a"
    netns_module.ip("netns", "add", stale)
    folder = os.path.join(netns_module.SHM_ROOT, f"{stale}-x")
    os.mkdir(folder)
    try:
        orphan = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
        deadline = time.monotonic() + 30
        while not netns_module.Host(stale, "", "", "").pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        removed = sweep()
        assert stale in removed and folder in removed
        assert orphan.wait(10) != 0, "the process left inside was killed"
        assert stale not in _namespaces() and not os.path.exists(folder)
        assert set(hosts.namespaces) <= _namespaces(), "a live run's hosts are not touched"
    finally:
        netns_module.ip("netns", "del", stale, check=False)
        if os.path.isdir(folder):
            os.rmdir(folder)
