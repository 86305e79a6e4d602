"""Per-path keepalives (docs/net.md, *Keepalives*). Across real hosts: a bridge that vanishes without its
BYE (killed with SIGKILL, or frozen with SIGSTOP) is noticed by the other bridge after three quiet
periods, which closes its replicas as on a BYE, so the RPC client there gets ``ServerGoneError``
(before keepalives: ``CallTimeout`` for ever); what the killed bridge left is reclaimed by ``ombm gc``.
The bridges run with ``--keepalive 1`` (a dead path is noticed after about 3 s). On loopback, a bridge
against one played by the test: what a PING names, a quiet path kept by PONGs, links dropped on a PONG
that names them gone (a restarted peer, a lost BYE), and a silent one dropped and told BYE."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import ombm
from ombm.net import Bridge
from ombm.transport import datagram as dg
from rpc_net_agents import RPC_AGENT, RPC_SERVER, JsonAgent

from .netns import Host, Network
from .test_net_rpc import BRIDGE_PORT, CLI, KEY, bridge, key_file

pytestmark = pytest.mark.processes

KEEPALIVE = "1.0"
STATUS = "import json, ombm.core.remote as r; print(json.dumps(r.request({'op': 'status'}, 10.0)))"


def agent(host: Host, script: str, *args: str) -> JsonAgent:
    return JsonAgent(host.popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1))


def status(host: Host) -> dict[str, Any]:
    result = host.python(STATUS)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def stats(host: Host) -> dict[str, int]:
    counts: dict[str, int] = status(host)["stats"]
    return counts


def objects(host: Host) -> list[str]:
    folder = os.path.join(host.shm_dir, f"ombm-{os.getuid()}")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def calls_until_server_gone(client: JsonAgent, deadline_s: float = 60.0) -> list[str]:
    """What each call raised, until one raised ServerGoneError (the deadline bounds a failure only)."""
    raised: list[str] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = client.ok("call", method="add", args=[1, 1], **{"as": "c"})
        raised.append(got.get("raised", "none"))
        if raised[-1] == "ServerGoneError":
            return raised
    raise AssertionError(f"no ServerGoneError within {deadline_s} s: {raised}")


def served_pair(hosts: Network, tmp_path) -> tuple[Host, Host, subprocess.Popen[str], subprocess.Popen[str],
                                                   JsonAgent, JsonAgent]:
    """Host a (its bridge exports calc, its server runs) and host b (its bridge, a client connected)."""
    a, b = hosts
    key = key_file(str(tmp_path))
    bridge_a = bridge(a, "--listen", f"{a.address}:{BRIDGE_PORT}", "--service", "calc", "--key-file", key,
                      "--keepalive", KEEPALIVE)
    bridge_b = bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key, "--keepalive", KEEPALIVE)
    server = agent(a, RPC_SERVER, "calc")
    client = agent(b, RPC_AGENT)
    client.ok("connect", name=f"calc@{a.address}:{BRIDGE_PORT}", timeout=3.0, **{"as": "c"})
    assert client.ok("call", method="add", args=[2, 2], **{"as": "c"})["value"] == 4
    return a, b, bridge_a, bridge_b, server, client


def test_the_server_hosts_bridge_killed_is_server_gone_at_the_client_then_gc(hosts: Network, tmp_path) -> None:
    a, b, bridge_a, bridge_b, server, client = served_pair(hosts, tmp_path)
    bridge_a.send_signal(signal.SIGKILL)
    bridge_a.wait(30)
    raised = calls_until_server_gone(client)
    assert set(raised) <= {"CallTimeout", "ServerGoneError"}, raised  # within the call's timeout, never a hang
    assert stats(b)["paths_dead"] == 1
    deadline = time.monotonic() + 30.0  # the server saw its client's stand-in (a's bridge) die
    while server.ok("connections")["n"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.ok("connections")["n"] == 0
    client.ok("close", **{"as": "c"})
    for process in (client, server):
        process.exit()
    bridge_b.terminate()
    bridge_b.communicate(timeout=30)
    for host in (a, b):
        gc = host.run([sys.executable, "-c", CLI, "gc"])
        assert gc.returncode == 0, gc.stderr
        assert objects(host) == [], objects(host)


def test_a_frozen_bridge_is_dropped_and_on_waking_closes_its_side_too(hosts: Network, tmp_path) -> None:
    a, b, bridge_a, bridge_b, server, client = served_pair(hosts, tmp_path)
    assert server.ok("connections")["n"] == 1
    bridge_a.send_signal(signal.SIGSTOP)
    try:
        raised = calls_until_server_gone(client)
        assert set(raised) <= {"CallTimeout", "ServerGoneError"}, raised
    finally:
        bridge_a.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 30.0  # awake, a's bridge hears b's BYE (or finds b silent): its replicas close
    while server.ok("connections")["n"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.ok("connections")["n"] == 0


class FakeExporter:
    """A bridge played by the test over a UDP socket on loopback: it serves one IMPORT, then sees what
    the real bridge sends it and answers what the test says (datagrams sealed with the shared key)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10.0)  # bounds a failure only
        self.port = self.sock.getsockname()[1]
        self.sealer = dg.Sealer(secrets.randbits(64), KEY)
        self.key = secrets.randbits(63)

    def next(self, kind: dg.Kind) -> tuple[dg.Datagram, tuple[str, int]]:
        """The next datagram of ``kind`` from the bridge (others, such as path MTU probes, are skipped)."""
        while True:
            data, source = self.sock.recvfrom(65536)
            datagram = dg.decode(data, KEY)
            if datagram.kind is kind:
                return datagram, source

    def send(self, kind: dg.Kind, body: dict[str, object], to: tuple[str, int]) -> None:
        self.sock.sendto(self.sealer.control(kind, body, time.time_ns() // 1000), to)

    def serve_import(self) -> None:
        datagram, source = self.next(dg.Kind.IMPORT)
        assert datagram.body is not None
        self.send(dg.Kind.IMPORT_REPLY, {"nonce": datagram.body["nonce"], "name": datagram.body["name"],
                                         "key": self.key, "size": 4096, "unit": 64, "mode": 1, "sow": True}, source)


def imported(exporter: FakeExporter, bridge: Bridge) -> Any:
    """``bridge`` imports "seg" from ``exporter``; the replica, held (a local user, so it stays)."""
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(bridge.request, {"op": "import", "name": "seg", "host": "127.0.0.1",
                                             "port": exporter.port, "timeout": 10.0}, 20.0)
        exporter.serve_import()
        reply = asked.result(30.0)
    assert reply["ok"], reply
    return ombm.open_segment(str(reply["local"]))


def paths(bridge: Bridge) -> dict[str, Any]:
    answer: dict[str, Any] = bridge.request({"op": "status"})["paths"]  # type: ignore[assignment]
    return answer


def test_a_ping_names_the_shared_segments_and_a_pong_naming_them_gone_drops_them() -> None:
    """What a restarted bridge (or one whose BYE was lost) answers: the links go, not after silence."""
    exporter = FakeExporter()
    bridge = Bridge("127.0.0.1:0", key=KEY, control=False, keepalive_s=0.5).start()
    try:
        replica = imported(exporter, bridge)
        try:
            where = f"127.0.0.1:{exporter.port}"
            for _ in range(4):  # alive past three periods: a PING per quiet period, answered "nothing gone"
                ping, source = exporter.next(dg.Kind.PING)
                assert ping.body == {"keys": [exporter.key]}
                exporter.send(dg.Kind.PONG, {"gone": []}, source)
            assert where in paths(bridge)
            ping, source = exporter.next(dg.Kind.PING)
            exporter.send(dg.Kind.PONG, {"gone": [exporter.key]}, source)
            deadline = time.monotonic() + 30.0
            while where in paths(bridge) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert paths(bridge) == {} and bridge.stats["paths_dead"] == 0
        finally:
            replica.release()
    finally:
        bridge.close()
        exporter.sock.close()


def test_a_silent_exporter_is_dropped_after_three_periods_and_told_bye() -> None:
    exporter = FakeExporter()
    bridge = Bridge("127.0.0.1:0", key=KEY, control=False, keepalive_s=0.3).start()
    try:
        replica = imported(exporter, bridge)
        try:
            bye, _ = exporter.next(dg.Kind.BYE)  # after PINGs unanswered
            assert bye.body == {"keys": [exporter.key]}
            assert bridge.stats["paths_dead"] == 1 and bridge.stats["pings_sent"] >= 1
            assert paths(bridge) == {}
        finally:
            replica.release()
    finally:
        bridge.close()
        exporter.sock.close()
