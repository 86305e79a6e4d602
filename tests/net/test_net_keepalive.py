"""Per-path keepalives across real hosts (docs/net.md, *Keepalives*): a bridge that vanishes without its
BYE (killed with SIGKILL, or frozen with SIGSTOP) is noticed by the other bridge after three quiet
periods, which closes its replicas as on a BYE, so the RPC client there gets ``ServerGoneError``
(before keepalives: ``CallTimeout`` for ever); what the killed bridge left is reclaimed by ``ombm gc``.
The bridges run with ``--keepalive 1`` (a dead path is noticed after about 3 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rpc_net_agents import RPC_AGENT, RPC_SERVER, JsonAgent

from .netns import Host, Network
from .test_net_rpc import BRIDGE_PORT, CLI, bridge, key_file

pytestmark = pytest.mark.processes

KEEPALIVE = "1.0"
STATUS = "import json, ombm.core.remote as r; print(json.dumps(r.request({'op': 'status'}, 10.0)['stats']))"


def agent(host: Host, script: str, *args: str) -> JsonAgent:
    return JsonAgent(host.popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1))


def stats(host: Host) -> dict[str, int]:
    result = host.python(STATUS)
    assert result.returncode == 0, result.stderr
    answer: dict[str, int] = json.loads(result.stdout)
    return answer


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


def test_a_quiet_path_lives_on_pings_and_a_killed_bridge_is_server_gone_at_the_client_then_gc(
        hosts: Network, tmp_path) -> None:
    a, b, bridge_a, bridge_b, server, client = served_pair(hosts, tmp_path)
    time.sleep(3.5)  # three periods and more without a call: only PINGs and PONGs cross, the path lives
    assert client.ok("call", method="add", args=[3, 4], **{"as": "c"})["value"] == 7
    counts = [stats(host) for host in (a, b)]  # the first to find the path quiet pings; the other hears it
    assert [c["paths_dead"] for c in counts] == [0, 0] and sum(c["pings_sent"] for c in counts) >= 1, counts
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

