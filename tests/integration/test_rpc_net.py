"""RPC across hosts with the same RPC code (docs/net.md): hosts are private OMBM_SHM_DIR folders on
this machine, each with its ``ombm bridge`` process (net_hosts.py); the server's bridge exports the
service (``--service calc``), the client connects to ``calc@127.0.0.1:PORT``. Every kind of call
gives what it gives locally; a peer that dies is seen as a local one is (ServerGoneError at the
client, a reaped connection at the server); a killed bridge gives CallTimeout or ServerGoneError,
never a hang, and leaves nothing ``ombm gc`` cannot reclaim."""

from __future__ import annotations

import signal

import pytest

from net_hosts import Host, free_udp_port, rpc_agent, rpc_server, wait_for

pytestmark = pytest.mark.processes


@pytest.fixture
def pair():
    """Host A (a bridge exporting the service calc, and its server) and host B (a bridge), peers."""
    made: list[Host] = []
    try:
        a, b = Host("a"), Host("b")
        made += [a, b]
        pa, pb = free_udp_port(), free_udp_port()
        ba = a.bridge("--listen", f"127.0.0.1:{pa}", "--service", "calc", "--peer", f"127.0.0.1:{pb}")
        bb = b.bridge("--listen", f"127.0.0.1:{pb}", "--peer", f"127.0.0.1:{pa}")
        server = rpc_server(a)
        yield a, b, ba, bb, server, f"calc@127.0.0.1:{pa}"
    finally:
        for host in made:
            host.close()


def test_every_kind_of_call_gives_across_hosts_what_it_gives_locally(pair):
    a, b, ba, bb, server, name = pair
    here, there = rpc_agent(a), rpc_agent(b)
    here.ok("connect", name="calc", **{"as": "c"})
    there.ok("connect", name=name, **{"as": "c"})
    local = here.ok("kinds", name="calc", timeout=60, **{"as": "c"})["kinds"]
    across = there.ok("kinds", name=name, timeout=60, **{"as": "c"})["kinds"]
    assert across == local
    assert local["sync"] == [2 * i + 1 for i in range(50)] and local["large_call"] and local["large_reply"]
    assert local["error"] == {"raised": "RemoteValueError", "message": "ValueError: remote trouble"}
    assert local["asyncio"] == [i + 100 for i in range(20)] and local["oneway"] == 1
    there.ok("close", **{"as": "c"})
    here.ok("close", **{"as": "c"})
    assert wait_for(lambda: server.ok("connections")["n"] == 0, 30.0)  # both reaped (closed)
    here.exit(), there.exit(), server.exit()
    for host, bridge in ((a, ba), (b, bb)):
        status, out = bridge.stop()
        assert status == 0 and "internal_errors" in out
        assert host.objects() == [], host.objects()


def test_a_remote_service_that_is_not_exported_or_not_served(pair):
    a, b, ba, bb, server, name = pair
    there = rpc_agent(b)
    missing = there.ok("try_connect", name=f"nothing@127.0.0.1:{ba.port}")
    assert missing["raised"] == "ServiceNotFoundError", missing


def test_without_a_bridge_on_the_callers_host(pair):
    a, b, ba, bb, server, name = pair
    c = Host("c")
    try:
        got = rpc_agent(c).ok("try_connect", name=name)
        assert got["raised"] == "BridgeNotRunningError" and "ombm bridge" in got["message"], got
    finally:
        c.close()


def test_the_server_killed_is_server_gone_at_the_client(pair):
    a, b, ba, bb, server, name = pair
    there = rpc_agent(b)
    there.ok("connect", name=name, timeout=10.0, **{"as": "c"})
    assert there.ok("call", method="add", args=[1, 2], **{"as": "c"})["value"] == 3
    server.proc.kill()
    server.proc.wait(30)
    got = there.ok("call", method="add", args=[1, 2], **{"as": "c"})
    assert got.get("raised") == "ServerGoneError", got


def test_the_client_killed_is_reaped_at_the_server(pair):
    a, b, ba, bb, server, name = pair
    there = rpc_agent(b)
    there.ok("connect", name=name, **{"as": "c"})
    assert there.ok("call", method="add", args=[2, 2], **{"as": "c"})["value"] == 4
    assert server.ok("connections")["n"] == 1
    there.proc.kill()
    there.proc.wait(30)
    assert wait_for(lambda: server.ok("connections")["n"] == 0, 30.0)


def test_the_server_hosts_bridge_killed_then_gc_on_each_host(pair):
    a, b, ba, bb, server, name = pair
    there = rpc_agent(b)
    there.ok("connect", name=name, timeout=3.0, **{"as": "c"})
    assert there.ok("call", method="add", args=[3, 4], **{"as": "c"})["value"] == 7
    ba.proc.send_signal(signal.SIGKILL)
    ba.proc.wait(30)
    got = there.ok("call", method="add", args=[3, 4], timeout=3.0, **{"as": "c"})
    assert got.get("raised") in ("CallTimeout", "ServerGoneError"), got  # never a hang
    assert wait_for(lambda: server.ok("connections")["n"] == 0, 30.0)  # the server saw its client's stand-in die
    there.ok("close", **{"as": "c"})
    there.exit()
    server.exit()
    bb.stop()
    for host in (a, b):
        gc = host.ombm("gc")
        assert gc.returncode == 0, gc.stderr
        assert host.objects() == [], host.objects()
