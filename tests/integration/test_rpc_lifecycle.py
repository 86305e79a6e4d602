"""Servers and clients that come, go, stop and die, between real processes (paper §4; DESIGN.md §3-§4).

What a client sees (``ServiceNotFoundError``, ``ServerGoneError``), what is
left in /dev/shm afterwards, and who reclaims it: the server for dead
clients, ``ombm.core.admin.gc()`` for a dead server.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import ombm
from ombm.core import admin as ombm_inspect
from rpc_helpers import (
    Calc,
    Children,
    call_until_killed,
    cpu_seconds,
    expect,
    fifos_of,
    join,
    segments_of,
    send_signal,
    serve_forever,
    serve_started,
    service_name,
    wait_until,
)

pytestmark = pytest.mark.processes


# ---------------------------------------------------------------- connecting
def test_connect_to_a_missing_service_raises_service_not_found():
    name = service_name("missing")
    with pytest.raises(ombm.ServiceNotFoundError) as info:
        ombm.rpc.connect(name, timeout=5.0)
    assert isinstance(info.value, ConnectionRefusedError)
    assert isinstance(info.value, ConnectionError)
    assert name in str(info.value)
    assert segments_of(name) == set()


def test_connect_rejects_bad_arguments_before_doing_anything():
    with pytest.raises(ValueError):
        ombm.rpc.connect("no/slashes", timeout=1.0)
    with pytest.raises(ValueError):
        ombm.rpc.connect(service_name("t"), timeout=0)
    with pytest.raises(TypeError):
        ombm.rpc.connect(42)


def test_a_client_may_connect_while_the_server_is_still_starting():
    name = service_name("starting")
    delay = 0.5
    with Children() as children:
        p, conn = children.spawn(serve_started, [(name, "calc")], delay)
        expect(conn, "constructed")  # Server(...) exists; start() comes `delay` later
        t0 = time.monotonic()
        with ombm.rpc.connect(name, timeout=30.0) as cli:
            waited = time.monotonic() - t0
            assert cli.add(20, 22) == 42
        expect(conn, "ready")
        assert waited >= delay / 2  # it really was accepted only once the server ran
        conn.send("stop")
        assert expect(conn, "result")["stats"][0]["connections"] == 1
        assert join(p) == 0


# ---------------------------------------------------------------- a server that dies
def test_server_killed_mid_session_then_gc_reclaims_what_it_left():
    name = service_name("killed")
    with Children() as children:
        server, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        cli = ombm.rpc.connect(name, timeout=2.0)
        try:
            assert cli.add(1, 2) == 3
            pending = cli.call_async("sleep", 30.0)  # executing when the server dies
            time.sleep(0.2)
            server.kill()
            join(server)
            with pytest.raises(ombm.ServerGoneError) as info:
                pending.result()
            assert isinstance(info.value, ombm.CallTimeout) and isinstance(info.value, ConnectionError)
            with pytest.raises(ombm.ServerGoneError):
                cli.add(3, 4)
            with pytest.raises(ombm.ServerGoneError):
                cli.call_async("add", 5, 6).result()
        finally:
            cli.close()
        # a new client cannot mistake the dead server for a live one
        with pytest.raises(ombm.ServiceNotFoundError):
            ombm.rpc.connect(name, timeout=0.5)
        ombm_inspect.gc()  # the dead server's FIFO (and its well-known channel, if still there)
        assert segments_of(name) == set()
        assert fifos_of(server.pid) == []
        with pytest.raises(ombm.ServiceNotFoundError):
            ombm.rpc.connect(name, timeout=0.5)


def test_server_killed_before_anyone_else_looked_then_gc_reclaims_everything():
    name = service_name("killed2")
    with Children() as children:
        server, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        with ombm.rpc.connect(name, timeout=2.0) as cli:
            assert cli.add(1, 2) == 3
            server.kill()
            join(server)
            with pytest.raises(ombm.CallTimeout):  # ServerGoneError is one
                cli.add(1, 2)
        assert f"rpc-{name}" in segments_of(name)  # the dead server's well-known channel
        report = ombm_inspect.gc()
        assert report.fifos_removed >= 1 and report.segments_removed >= 1
        assert segments_of(name) == set()
        assert fifos_of(server.pid) == []


def test_a_live_service_name_is_taken_but_a_dead_servers_name_is_reclaimed():
    name = service_name("takeover")
    with Children() as children:
        server, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        with pytest.raises(ombm.SegmentExistsError):
            ombm.rpc.Server(name, Calc())
        server.kill()
        join(server)
        with ombm.rpc.Server(name, Calc()) as srv:  # no gc needed: the dead server's channel is reclaimed
            srv.start()
            with ombm.rpc.connect(name, timeout=5.0) as cli:
                assert cli.pid() == os.getpid()
        assert segments_of(name) == set()
        ombm_inspect.gc()  # the dead server's signal FIFO
        assert fifos_of(server.pid) == []


# ---------------------------------------------------------------- a server that stops cleanly
@pytest.mark.parametrize("how", ["stop", "SIGTERM", "SIGINT"])
def test_server_stopped_cleanly_clients_see_server_gone_and_nothing_is_left(how):
    name = service_name(f"stop-{how.lower()}")
    with Children() as children:
        if how == "stop":
            server, conn = children.spawn(serve_started, [(name, "calc")])
            expect(conn, "constructed")
        else:
            server, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        with ombm.rpc.connect(name, timeout=5.0) as cli, ombm.rpc.connect(name, timeout=5.0) as other:
            assert cli.add(1, 2) == 3 and other.add(3, 4) == 7
            if how == "stop":
                conn.send("stop")
            else:
                send_signal(server, getattr(signal, how))
            result = expect(conn, "result")
            assert join(server) == 0
            stats = result["stats"][0] if how == "stop" else result["stats"]
            assert stats["connections"] == 2
            for client in (cli, other):
                with pytest.raises(ombm.ServerGoneError):
                    client.add(1, 2)
        assert segments_of(name) == set()
        assert fifos_of(server.pid) == []
        with pytest.raises(ombm.ServiceNotFoundError):
            ombm.rpc.connect(name, timeout=0.5)


def test_in_process_server_as_context_manager_releases_everything():
    name = service_name("ctx")
    with ombm.rpc.Server(name, Calc()) as srv:
        srv.start()
        with pytest.raises(RuntimeError):
            srv.start()
        with ombm.rpc.connect(name, timeout=5.0) as cli:
            assert cli.add(2, 2) == 4
            assert cli.pid() == os.getpid()
    assert segments_of(name) == set()
    srv.stop()  # idempotent


# ---------------------------------------------------------------- a client that dies
def test_client_killed_mid_session_server_keeps_serving_and_reclaims_it(record_property):
    name = service_name("victim")
    srv = ombm.rpc.Server(name, Calc()).start()
    try:
        with Children() as children, ombm.rpc.connect(name, timeout=10.0) as survivor:
            assert survivor.add(1, 1) == 2
            before = segments_of(name)
            victim, conn = children.spawn(call_until_killed, name)
            expect(conn, "ready")
            victim_segments = segments_of(name) - before
            assert len(victim_segments) == 2  # its request and reply channels
            time.sleep(0.2)  # mid-session: it is calling in a loop
            victim.kill()
            join(victim)
            killed_at = time.monotonic()

            calls = 0

            def reclaimed() -> bool:
                nonlocal calls
                calls += 1
                assert survivor.add(calls, 1) == calls + 1  # the server keeps serving others
                return not (segments_of(name) & victim_segments)

            assert wait_until(reclaimed, timeout_s=15.0), "the server did not reclaim the dead client's channels"
            reclaim_s = time.monotonic() - killed_at
            record_property("dead_client_reclaimed_after_s", reclaim_s)
            print(f"\nthe server reclaimed the killed client's channels after {reclaim_s:.2f} s")
            assert srv.stats["connections"] == 2
            assert "connections=1" in repr(srv)
            # the dead client's signal FIFO is not the server's to remove: gc does it
            assert fifos_of(victim.pid) != []
            report = ombm_inspect.gc()
            assert report.fifos_removed >= 1
            assert fifos_of(victim.pid) == []
            assert survivor.add(40, 2) == 42
    finally:
        srv.stop()
    assert segments_of(name) == set()


# ---------------------------------------------------------------- an idle server
def test_idle_server_does_not_spin(record_property):
    name = service_name("idle")
    with Children() as children:
        server, conn = children.spawn(serve_forever, name, "calc")
        expect(conn, "ready")
        with ombm.rpc.connect(name, timeout=5.0) as cli:
            assert cli.add(1, 2) == 3
            time.sleep(0.5)  # let it settle into its sleep
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(2.0)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            assert cli.add(3, 4) == 7
        share = (cpu1 - cpu0) / (t1 - t0)
        record_property("idle_server_cpu_share", share)
        print(f"\nidle serve_forever process: {share:.2%} of a core over {t1 - t0:.2f} s")
        assert share < 0.5, f"an idle server uses {share:.0%} of a core: it spins"
        send_signal(server, signal.SIGTERM)
        expect(conn, "result")
        assert join(server) == 0
