"""Locating a service across real hosts (docs/net.md, *Locating a service*; paper §3.2: "clients may
multicast to locate a server"): bridges in network namespaces join one multicast group;
``ombm.rpc.locate("calc")`` on one host finds every other host whose bridge exports ``calc`` and
whose server runs, and the names it returns are ones a client connects to."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rpc_net_agents import RPC_AGENT, RPC_SERVER, JsonAgent

from .netns import Host, Network
from .test_net_rpc import BRIDGE_PORT, bridge, key_file

pytestmark = pytest.mark.processes

GROUP = "239.255.42.7:7400"

LOCATE = r"""
import json, sys
import ombm.rpc
try:
    print(json.dumps({"found": ombm.rpc.locate(sys.argv[1], timeout=float(sys.argv[2]))}))
except Exception as exc:
    print(json.dumps({"raised": type(exc).__name__, "message": str(exc)}))
"""


def locate(host: Host, name: str, timeout: float = 1.0) -> dict[str, object]:
    result = host.run([sys.executable, "-c", LOCATE, name, str(timeout)])
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def agent(host: Host, script: str, *args: str) -> JsonAgent:
    return JsonAgent(host.popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1))


@pytest.mark.hosts(3)
def test_locate_finds_every_host_that_serves_the_name_by_multicast(hosts: Network, tmp_path) -> None:
    a, b, c = hosts
    key = key_file(str(tmp_path))
    for host in (a, b):
        bridge(host, "--listen", f"{host.address}:{BRIDGE_PORT}", "--service", "calc", "--multicast", GROUP,
               "--key-file", key)
        agent(host, RPC_SERVER, "calc")
    bridge(c, "--listen", f"{c.address}:{BRIDGE_PORT}", "--multicast", GROUP, "--key-file", key)
    found = locate(c, "calc", 2.0)
    assert found == {"found": [f"calc@{a.address}:{BRIDGE_PORT}", f"calc@{b.address}:{BRIDGE_PORT}"]}, found
    assert locate(c, "nothing", 0.3) == {"found": []}  # nobody exports it: [] after the timeout
    client = agent(c, RPC_AGENT)
    for name in found["found"]:  # type: ignore[union-attr]
        client.ok("connect", name=name, timeout=10.0, **{"as": name})
        assert client.ok("call", method="add", args=[2, 3], **{"as": name})["value"] == 5


def test_without_a_key_locate_asks_the_peers_and_a_service_not_running_is_not_found(hosts: Network) -> None:
    a, b = hosts
    bridge(a, "--listen", f"{a.address}:{BRIDGE_PORT}", "--service", "calc", "--service", "idle",
           "--peer", f"{b.address}:{BRIDGE_PORT}", "--insecure")
    bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--peer", f"{a.address}:{BRIDGE_PORT}", "--insecure")
    agent(a, RPC_SERVER, "calc")
    assert locate(b, "calc", 2.0) == {"found": [f"calc@{a.address}:{BRIDGE_PORT}"]}
    assert locate(b, "idle", 0.3) == {"found": []}  # exported, but no server made its channel


def test_without_a_bridge_on_this_host_locate_says_how_to_start_one(hosts: Network) -> None:
    a, _ = hosts
    got = locate(a, "calc")
    assert got["raised"] == "BridgeNotRunningError" and "ombm bridge" in str(got["message"]), got
