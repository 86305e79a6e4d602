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
    for wait in (-1, float("nan"), True, "1"):
        with pytest.raises(ValueError):
            ombm.rpc.connect(service_name("t"), wait=wait)
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


# ---------------------------------------------------------------- surviving restarts (issue 14, item 1)
# Servers and clients here are `python -c` processes speaking JSON lines (stdout), killed and reaped by
# the `agents` fixture. The service's bump(key) is not idempotent and appends the key to the server's
# log file with one O_APPEND write before it answers: what a server ran survives its SIGKILL.
import json  # noqa: E402
import select  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

SRC = os.path.dirname(os.path.dirname(ombm.__file__))  # where the ombm under test lives (installed or src/)

KEYED_SERVER = r"""
import json, os, sys, time
import ombm.rpc
name, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
class Keyed:
    def __init__(self):
        self.fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    def bump(self, key):
        os.write(self.fd, (key + "\n").encode())
        return [key, os.getpid()]
    def add(self, a, b):
        return a + b
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds
time.sleep(delay)
server = ombm.rpc.Server(name, Keyed())
print(json.dumps({"ready": os.getpid()}), flush=True)
server.serve_forever()
"""

# calls bump("<tag>-<i>") until told to stop (a line on stdin); says when a new server answered
KEYED_CLIENT = r"""
import json, select, sys
import ombm, ombm.rpc
name, tag = sys.argv[1], sys.argv[2]
client = ombm.rpc.connect(name, timeout=30.0, wait=30.0)
answered, raised, pids, i = [], [], [], 0
while not select.select([sys.stdin], [], [], 0)[0]:
    key = f"{tag}-{i}"
    i += 1
    try:
        got = client.bump(key)
    except Exception as exc:
        raised.append([key, type(exc).__name__, str(exc)])
        continue
    answered.append([key, got])
    if got[1] not in pids:
        pids.append(got[1])
        print(json.dumps({"server": got[1], "calls": len(answered)}), flush=True)
client.close()
print(json.dumps({"answered": answered, "raised": raised}), flush=True)
"""


class Agents:
    """``python -c`` processes with ombm importable, killed and reaped at the end of the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, script: str, *args: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True, bufsize=1,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def agents():
    group = Agents()
    try:
        yield group
    finally:
        group.close()


def line_of(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> dict:
    """The next JSON line ``proc`` prints (a deadline only bounds a failure)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no line from {proc.args[-2:]} within {timeout_s} s"
    line = proc.stdout.readline()
    assert line, f"{proc.args[-2:]} ended (status {proc.wait(10)})"
    return json.loads(line)


def keys_run(log: str) -> list[str]:
    try:
        with open(log) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_connect_waits_for_a_service_that_appears_later(agents, tmp_path):
    name = service_name("appears")
    with pytest.raises(ombm.ServiceNotFoundError):  # wait: it looked again and again, in vain
        ombm.rpc.connect(name, timeout=5.0, wait=0.2)
    server = agents.start(KEYED_SERVER, name, str(tmp_path / "log"), "0.5")  # serves 0.5 s after it starts
    with ombm.rpc.connect(name, timeout=5.0, wait=60.0) as cli:
        assert cli.bump("k") == ["k", server.pid]
    assert line_of(server)["ready"] == server.pid  # it printed that before the client got in
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert segments_of(name) == set()


def test_connecting_to_a_dead_server_fails_within_the_liveness_check(agents, tmp_path):
    name = service_name("deadconn")
    server = agents.start(KEYED_SERVER, name, str(tmp_path / "log"), "0")
    line_of(server)
    server.kill()
    server.wait(30)
    assert f"rpc-{name}" in segments_of(name)  # its well-known channel is still there, unserved
    timeout = 60.0
    started = time.monotonic()
    with pytest.raises(ombm.ServiceNotFoundError, match="not being served"):
        ombm.rpc.connect(name, timeout=timeout)
    assert time.monotonic() - started < timeout  # it did not wait out its timeout
    ombm_inspect.gc()
    assert segments_of(name) == set()


def test_a_server_killed_and_restarted_while_clients_call_each_call_runs_at_most_once(agents, tmp_path):
    name = service_name("restart")
    logs = [str(tmp_path / "first"), str(tmp_path / "second")]
    first = agents.start(KEYED_SERVER, name, logs[0], "0")
    line_of(first)
    clients = [agents.start(KEYED_CLIENT, name, f"c{n}") for n in range(2)]
    for client in clients:
        assert line_of(client)["server"] == first.pid
    time.sleep(0.3)  # calls in full flow
    first.kill()
    first.wait(30)
    second = agents.start(KEYED_SERVER, name, logs[1], "0.3")  # a moment later, under the same name
    line_of(second)
    for client in clients:  # the next server answers them, without anything done by the clients' code
        assert line_of(client)["server"] == second.pid
    time.sleep(0.2)
    results = []
    for client in clients:
        assert client.stdin is not None
        client.stdin.write("stop\n")
        client.stdin.flush()
        results.append(line_of(client))
        assert client.wait(30) == 0
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    ran = [keys_run(log) for log in logs]
    for result in results:
        # one call per client was in flight at the kill (or went out before the client noticed): it
        # raised ServerGoneError; it may or may not have run on the first server, never on the second
        assert len(result["raised"]) <= 1, result["raised"]
        for key, kind, _ in result["raised"]:
            assert kind == "ServerGoneError"
            assert key not in ran[1]
        for key, (echoed, pid) in result["answered"]:
            assert echoed == key and pid in (first.pid, second.pid)
            assert key in ran[0 if pid == first.pid else 1]
    # each key ran at most once, on one server; and only keys the clients called
    every = ran[0] + ran[1]
    assert len(every) == len(set(every))
    called = {key for result in results for key, _ in result["answered"]} | {
        key for result in results for key, _, _ in result["raised"]}
    assert set(every) <= called
    assert len(set(every)) >= len(called) - len(clients)  # only a raised call may not have run
    ombm_inspect.gc()  # the first server's FIFO
    assert segments_of(name) == set() and fifos_of(first.pid) == []


def test_a_client_whose_server_died_reconnects_with_a_new_session(agents, tmp_path):
    name = service_name("session")
    first = agents.start(KEYED_SERVER, name, str(tmp_path / "first"), "0")
    line_of(first)
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        assert cli.add(1, 2) == 3
        assert [cli.call_async("add", i, 1) for i in range(3)][-1].result() == 3
        before = cli.statistics()
        pending = cli.call_async("sleep", 30.0)  # executing when the server dies
        time.sleep(0.2)
        first.kill()
        first.wait(30)
        with pytest.raises(ombm.ServerGoneError):
            pending.result()
        assert "gone" in repr(cli)
        assert cli.statistics().calls == before.calls + 1  # while gone: the gone session's counters
        with pytest.raises(ombm.ServerGoneError, match="no server took its place"):  # wait=0: one look
            cli.add(3, 4)
        second = agents.start(KEYED_SERVER, name, str(tmp_path / "second"), "0")
        line_of(second)
        assert cli.bump("after") == ["after", second.pid]
        assert cli.call_async("add", 5, 6).result() == 11
        cli.oneway("bump", "oneway")
        assert cli.statistics().calls == 3  # a new session: its counters and RTO start afresh
        assert wait_until(lambda: "oneway" in keys_run(str(tmp_path / "second")), 30.0)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    ombm_inspect.gc()
    assert segments_of(name) == set()


def test_an_asyncio_client_reconnects_after_its_server_stopped():
    import asyncio

    name = service_name("aio")

    async def scenario() -> list:
        srv = ombm.rpc.Server(name, Calc()).start()
        client = await ombm.rpc.connect_async(name, timeout=10.0)
        try:
            got = [await client.add(1, 2)]
            srv.stop()
            with pytest.raises(ombm.ServerGoneError):
                await client.add(2, 3)
            srv = ombm.rpc.Server(name, Calc()).start()
            got.append(await client.add(3, 4))
            got.append(await asyncio.gather(*(client.add(i, 1) for i in range(5))))
            return got
        finally:
            await client.close()
            srv.stop()

    assert asyncio.run(scenario()) == [3, 7, [1, 2, 3, 4, 5]]
    assert segments_of(name) == set()


def test_threads_sharing_a_client_through_a_restart(agents, tmp_path):
    import threading

    name = service_name("threads")
    first = agents.start(KEYED_SERVER, name, str(tmp_path / "first"), "0")
    line_of(first)
    cli = ombm.rpc.connect(name, timeout=30.0, wait=30.0)
    stop = threading.Event()
    seen: dict[int, list] = {n: [] for n in range(3)}  # per thread: server pids answering, in order; errors

    def calls(n: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"t{n}-{i}"
            i += 1
            try:
                got = cli.bump(key) if i % 2 else cli.call_async("bump", key).result()
                if not seen[n] or seen[n][-1] != got[1]:
                    seen[n].append(got[1])
            except Exception as exc:
                seen[n].append(type(exc).__name__)

    threads = [threading.Thread(target=calls, args=(n,), daemon=True) for n in range(3)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: all(seen.values()), 30.0)
        first.kill()
        first.wait(30)
        second = agents.start(KEYED_SERVER, name, str(tmp_path / "second"), "0")
        line_of(second)
        assert wait_until(lambda: all(second.pid in got for got in seen.values()), 60.0), seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        cli.close()
    for got in seen.values():
        # each thread had one call at a time in flight: at most one ServerGoneError, then the new server
        assert got[0] == first.pid and got[-1] == second.pid, got
        assert set(got[1:-1]) <= {"ServerGoneError"} and len(got) <= 3, got
    ran = keys_run(str(tmp_path / "first")) + keys_run(str(tmp_path / "second"))
    assert len(ran) == len(set(ran))
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    ombm_inspect.gc()
    assert segments_of(name) == set()
