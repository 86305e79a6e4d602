"""Rebinding across real hosts (issue 12, item 4; docs/net.md, *Rebinding*): a client that connected
to ``calc`` by its plain name, on host a where it is served, keeps calling while the service moves:
the server on a stops, the same service is served on host b and exported by b's bridge. The client's
code does nothing: its calls in flight at the move raise ``ServerGoneError`` (they may or may not have
run on a), the next ones find ``calc`` on b (``ombm.rpc.locate``, through a's bridge) and run there,
over the bridges, with a retransmission timeout estimated afresh for that path. The service's
``bump(key)`` is not idempotent: no key may run twice, on one server or across both.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rpc_net_agents import AGENT_LOOP, RPC_AGENT, JsonAgent

from .netns import Host, Network
from .test_net_rpc import BRIDGE_PORT, bridge

pytestmark = pytest.mark.processes

# a server whose "stop" ends serving but not the process, which then still tells which keys it ran
KEYED_SERVER = r"""
import os, sys
import ombm.rpc

class Keyed:
    def __init__(self):
        self.ran = []
    def bump(self, key):
        self.ran.append(key)
        return [key, os.getpid()]

server = None

def serve(cmd):
    global server
    if cmd["op"] == "serve":
        server = ombm.rpc.Server(sys.argv[1], Keyed()).start()
        return {"pid": os.getpid()}
    if cmd["op"] == "stop":
        server.stop()
        return {}
    if cmd["op"] == "restart":  # the service stops and is served anew at once, as a new server
        server.stop()
        server = ombm.rpc.Server(sys.argv[1], Keyed()).start()
        return {"pid": os.getpid()}
    if cmd["op"] == "ran":
        return {"ran": server.obj.ran}
    raise ValueError(cmd["op"])
""" + AGENT_LOOP

# a client calling bump("k-<i>") in a thread of its own, from "start" to "stop", by the plain name
CALLER = r"""
import dataclasses, sys, threading, time
import ombm, ombm.rpc

state = {"answered": [], "raised": [], "stop": False}
client = thread = None

def calls():
    i = 0
    while not state["stop"]:
        key = f"k-{i}"
        i += 1
        try:
            state["answered"].append([key, client.bump(key), client.where])
        except Exception as exc:
            state["raised"].append([key, type(exc).__name__, str(exc)])
            time.sleep(0.01)  # nothing serves it right now: look again in a moment

def serve(cmd):
    global client, thread
    if cmd["op"] == "connect":
        client = ombm.rpc.connect(cmd["name"], timeout=10.0)
        return {}
    if cmd["op"] == "start":
        thread = threading.Thread(target=calls)
        thread.start()
        return {}
    if cmd["op"] == "progress":
        answered = state["answered"]
        return {"answered": len(answered), "last": answered[-1] if answered else None,
                "raised": len(state["raised"])}
    if cmd["op"] == "stop":
        state["stop"] = True
        thread.join(60)
        return {**state, "stats": dataclasses.asdict(client.statistics()), "where": client.where}
    raise ValueError(cmd["op"])
""" + AGENT_LOOP + r"""
if client is not None:
    client.close()
"""


def agent(host: Host, script: str, *args: str) -> JsonAgent:
    return JsonAgent(host.popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1))


def calc_on_both(a: Host, b: Host) -> tuple[JsonAgent, JsonAgent]:
    """A bridge on each host exporting calc, each the other's peer, and a keyed calc server agent on
    each (not serving yet: ``ok("serve")``)."""
    for host, other in ((a, b), (b, a)):
        bridge(host, "--listen", f"{host.address}:{BRIDGE_PORT}", "--service", "calc",
               "--peer", f"{other.address}:{BRIDGE_PORT}", "--insecure")
    return agent(a, KEYED_SERVER, "calc"), agent(b, KEYED_SERVER, "calc")


def progress_until(caller: JsonAgent, done, timeout_s: float = 60.0) -> dict:
    """Poll the caller until ``done(progress)`` (the deadline only bounds a failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = caller.ok("progress")
        if done(got):
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_a_client_of_a_plain_name_follows_the_service_to_another_host(hosts: Network) -> None:
    a, b = hosts
    at_b = f"{b.address}:{BRIDGE_PORT}"
    on_a, on_b = calc_on_both(a, b)
    on_a.ok("serve")
    caller = agent(a, CALLER)
    caller.ok("connect", name="calc")
    caller.ok("start")
    progress_until(caller, lambda got: got["answered"] >= 100)
    on_a.ok("stop")  # the service leaves host a ...
    moved_at = progress_until(caller, lambda got: got["raised"] >= 1)["answered"]  # ... and the client saw it
    pid_b = on_b.ok("serve")["pid"]  # ... and comes up on host b
    progress_until(caller, lambda got: got["last"] is not None and got["last"][1][1] == pid_b
                   and got["answered"] >= moved_at + 100)
    result = caller.ok("stop")
    ran_a, ran_b = on_a.ok("ran")["ran"], on_b.ok("ran")["ran"]

    # no key ran twice, on one host or across both
    assert len(ran_a) == len(set(ran_a)) and len(ran_b) == len(set(ran_b)) and not set(ran_a) & set(ran_b)
    answered, raised = result["answered"], result["raised"]
    assert all(got[0] == key for key, got, _ in answered)
    on_b_keys = {key for key, got, where in answered if got[1] == pid_b}
    assert on_b_keys and on_b_keys <= set(ran_b)  # the later calls reached b ...
    assert all(where == at_b for key, got, where in answered if got[1] == pid_b)  # ... through the bridges
    assert {key for key, got, _ in answered if got[1] != pid_b} <= set(ran_a)
    # the calls of the move raised ServerGoneError and never ran on b (the first may have run on a)
    assert raised and all(kind == "ServerGoneError" for _, kind, _ in raised), raised[:5]
    assert not {key for key, _, _ in raised} & set(ran_b)
    assert set(ran_a) | set(ran_b) <= {key for key, _, _ in answered} | {key for key, _, _ in raised}
    # a new session for the new path: its counters and its RTO estimate start afresh (the estimate from
    # the remote floor, 5 ms; a local session's is 2 ms)
    assert result["where"] == at_b and result["stats"]["calls"] == len(on_b_keys)
    assert result["stats"]["rto_s"] >= 0.005
    print(f"\n{len(answered)} calls answered ({len(ran_a)} ran on a, {len(on_b_keys)} on b), "
          f"{len(raised)} raised ServerGoneError while calc was moving; RTO to b "
          f"{result['stats']['rto_s'] * 1e3:.1f} ms")


def test_a_client_of_a_remote_name_reconnects_to_that_place_only(hosts: Network) -> None:
    a, b = hosts
    at_b = f"{b.address}:{BRIDGE_PORT}"
    on_a, on_b = calc_on_both(a, b)
    pid_a, first_b = on_a.ok("serve")["pid"], on_b.ok("serve")["pid"]
    caller = agent(a, CALLER)
    caller.ok("connect", name=f"calc@{at_b}")  # calc runs on a too: this client wants b's
    caller.ok("start")
    progress_until(caller, lambda got: got["answered"] >= 50)
    on_b.ok("stop")
    progress_until(caller, lambda got: got["raised"] >= 1)
    on_b = agent(b, KEYED_SERVER, "calc")  # a new server process on b, under the same name
    second_b = on_b.ok("serve")["pid"]
    progress_until(caller, lambda got: got["last"] is not None and got["last"][1][1] == second_b)
    result = caller.ok("stop")
    assert {got[1] for _, got, _ in result["answered"]} == {first_b, second_b}  # never pid_a
    assert {where for _, _, where in result["answered"]} == {at_b}
    assert all(kind == "ServerGoneError" for _, kind, _ in result["raised"]), result["raised"][:5]
    assert on_a.ok("ran")["ran"] == [] and pid_a not in {first_b, second_b}


RESTARTS = 12


def test_a_connect_right_after_the_service_restarted_reaches_the_new_server(hosts: Network) -> None:
    """The connect race (issue 12): the service restarts on host b and a client on host a connects
    to ``calc@b`` at once, with no ``wait``. Host a's bridge may still hold its replica of the old
    server's well-known channel (the client before just used it; b's BYE for it on the way): the
    connect must reach the new server, never fail with "its server is gone"; and once nothing
    serves calc, it fails with ServiceNotFoundError."""
    a, b = hosts
    name = f"calc@{b.address}:{BRIDGE_PORT}"
    _, on_b = calc_on_both(a, b)
    on_b.ok("serve")
    client = agent(a, RPC_AGENT)
    failed = []
    for i in range(RESTARTS):
        client.ok("connect", name=name, timeout=10.0, **{"as": "c"})  # the replica of this server's channel
        assert client.ok("call", method="bump", args=[f"k-{i}"], **{"as": "c"})["value"][0] == f"k-{i}"
        client.ok("close", **{"as": "c"})
        on_b.ok("restart")
        got = client.ok("try_connect", name=name, timeout=10.0)
        if "raised" in got:
            failed.append((i, got))
    assert failed == []
    on_b.ok("stop")
    got = client.ok("try_connect", name=name, timeout=10.0)
    assert got.get("raised") == "ServiceNotFoundError", got
