"""The path MTU across real hosts (docs/net.md, *Path MTU*): host b's link is narrowed to an MTU of
1,280 bytes (``ip link set veth0 mtu 1280`` inside b only), so b's kernel refuses b's 1,472-byte
datagrams (don't-fragment is set) and a's 1,500-byte packets are dropped by b's end of the veth
without any ICMP: a black hole only a probe finds. RPC calls and replies of many datagrams still
cross both ways, and each bridge has learnt a payload that fits 1,280 bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rpc_net_agents import RPC_AGENT, RPC_SERVER, JsonAgent

from .netns import Host, Network
from .test_net_rpc import BRIDGE_PORT, bridge, key_file

pytestmark = pytest.mark.processes

NARROW = 1280
STATUS = "import json, ombm.core.remote as r; print(json.dumps(r.request({'op': 'status'}, 10.0)))"


def status(host: Host) -> dict[str, object]:
    result = host.python(STATUS)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_updates_cross_a_path_narrower_than_the_bridges_mtu(hosts: Network, tmp_path) -> None:
    a, b = hosts
    b.run(["ip", "link", "set", "veth0", "mtu", str(NARROW)], check=True)
    key = key_file(str(tmp_path))
    bridge(a, "--listen", f"{a.address}:{BRIDGE_PORT}", "--service", "calc", "--key-file", key)
    bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key)
    JsonAgent(a.popen([sys.executable, "-c", RPC_SERVER, "calc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      text=True, bufsize=1))
    client = JsonAgent(b.popen([sys.executable, "-c", RPC_AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, bufsize=1))
    client.ok("connect", name=f"calc@{a.address}:{BRIDGE_PORT}", timeout=10.0, **{"as": "c"})
    for n in (3000, 20000, 100_000):  # replies of 3 to 80 datagrams a -> b; the calls b -> a as many
        got = client.ok("call", method="echo", args=["x" * n], **{"as": "c"})
        assert got.get("value") == "x" * n, {k: v for k, v in got.items() if k != "value"}
    fits = NARROW - 28  # the UDP payload of a 1,280-byte IPv4 packet
    for host, peer in ((a, b), (b, a)):
        answer = status(host)
        paths = answer["paths"]
        assert isinstance(paths, dict)
        path = paths[f"{peer.address}:{BRIDGE_PORT}"]
        assert fits - 64 <= path["mtu"] <= fits and answer["mtu"] <= fits, answer


def test_with_ip_fragments_the_bridges_send_datagrams_longer_than_the_path(hosts: Network, tmp_path) -> None:
    """``--ip-fragments``: no don't-fragment bit and no path MTU search, so a 64 KiB datagram crosses
    a 1,500-byte link in IP fragments, and updates stay cut to ``--mtu``; without it the same
    ``--mtu`` is cut down to what the path carries."""
    a, b = hosts
    key = key_file(str(tmp_path))
    big = "65507"
    bridge(a, "--listen", f"{a.address}:{BRIDGE_PORT}", "--service", "calc", "--key-file", key, "--mtu", big,
           "--ip-fragments")
    bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key, "--mtu", big)
    JsonAgent(a.popen([sys.executable, "-c", RPC_SERVER, "calc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      text=True, bufsize=1))
    client = JsonAgent(b.popen([sys.executable, "-c", RPC_AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, bufsize=1))
    client.ok("connect", name=f"calc@{a.address}:{BRIDGE_PORT}", timeout=10.0, **{"as": "c"})
    for n in (3000, 100_000):
        got = client.ok("call", method="echo", args=["x" * n], **{"as": "c"})
        assert got.get("value") == "x" * n, {k: v for k, v in got.items() if k != "value"}
    assert status(a)["mtu"] == int(big)  # a lets IP fragment: its updates stay 64 KiB datagrams
    assert status(b)["mtu"] <= 1500 - 28  # b learnt its path: cut to what a 1,500-byte link carries
