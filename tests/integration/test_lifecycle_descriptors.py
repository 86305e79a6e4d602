"""A mapping needs no open descriptor, so one server holds 1,000 idle clients under ``ulimit -n 1024``
(issue 11, item 6). Red team: an RPC connection cost about 14 descriptors and a server stopped
accepting at about 140 clients.

Every process here (the server and four client processes of 250 connections each) runs with
``RLIMIT_NOFILE`` at (1024, 1024). All 1,000 clients connect and stay idle; the server reports that
it holds them all, then every client makes one call and checks its own answer.
"""

from __future__ import annotations

import os
import resource

import pytest

import ombm
from rpc_helpers import Calc, child, service_name

pytestmark = pytest.mark.processes

CLIENT_PROCESSES = 4
PER_PROCESS = 250
LIMIT = 1024


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@child
def _server(conn, name: str) -> None:
    _limit_descriptors()
    srv = ombm.rpc.Server(name, Calc()).start()
    try:
        conn.send(("ready", os.getpid()))
        while True:
            what = conn.recv()
            if what == "stop":
                break
            conn.send(("held", len(srv._connections), _open_descriptors()))
    finally:
        srv.stop()
    conn.send(("stopped", dict(srv.stats)))


@child
def _clients(conn, name: str, tag: int, count: int) -> None:
    _limit_descriptors()
    clients = [ombm.rpc.connect(name, timeout=20.0, slots=2, slot_size=1024) for _ in range(count)]
    try:
        conn.send(("connected", len(clients), _open_descriptors()))
        assert conn.recv() == "call"
        wrong = sum(cli.add(tag * 100_000, i) != tag * 100_000 + i for i, cli in enumerate(clients))
        conn.send(("called", wrong))
        assert conn.recv() == "close"
    finally:
        for cli in clients:
            cli.close()


def test_one_server_holds_a_thousand_idle_clients_under_ulimit_1024(procs):
    name = service_name("thousand")
    server_end, theirs = procs.pipe()
    server = procs.fork(_server, theirs, name)
    assert server_end.poll(30) and server_end.recv()[0] == "ready"
    groups = []
    for tag in range(CLIENT_PROCESSES):
        mine, theirs = procs.pipe()
        groups.append((procs.fork(_clients, theirs, name, tag + 1, PER_PROCESS), mine))
    for _, mine in groups:
        assert mine.poll(120), "a client process did not connect its clients"
        what = mine.recv()
        assert what[0] == "connected", what
        assert what[1] == PER_PROCESS and what[2] < LIMIT
    server_end.send("count")
    assert server_end.poll(30)
    what = server_end.recv()
    assert what[0] == "held", what
    assert what[1] == CLIENT_PROCESSES * PER_PROCESS  # all idle, all held at once
    assert what[2] < 100, f"the server holds {what[2]} descriptors for {what[1]} clients"
    for _, mine in groups:
        mine.send("call")
    for _, mine in groups:
        assert mine.poll(120)
        assert mine.recv() == ("called", 0)
    for p, mine in groups:
        mine.send("close")
        p.join(60)
        assert p.exitcode == 0
    server_end.send("stop")
    assert server_end.poll(30)
    kind, stats = server_end.recv()
    assert kind == "stopped" and stats["connections"] == CLIENT_PROCESSES * PER_PROCESS
    server.join(30)
    assert server.exitcode == 0
