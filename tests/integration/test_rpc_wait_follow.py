"""Waits that follow their peer (issue 13 item 1, sync.c): a client lane waits knowing its server's
receiver FIFO, the server's intake knowing the client's; under load each spins its learnt budget
while the other is published running on another CPU. The published states are hints any peer can
write: forged ones change how long a side spins, never what a call returns or how often it runs.

The machine is loaded on purpose (busy processes, more than the CPUs), so that the waits take the
load-aware paths; a non-idempotent Counter served by a child shows a call run twice or lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import ombm
from ombm import _layout as L
from ombm import _native
from rpc_helpers import Children, expect, join, serve_started, service_name

pytestmark = pytest.mark.processes

CALLS = 300


@pytest.fixture
def counter():
    """A fresh Counter service served by a child process."""
    name = service_name("follow")
    with Children() as children:
        p, conn = children.spawn(serve_started, [(name, "counter")])
        expect(conn, "constructed")
        expect(conn, "ready")
        yield name, p, conn
        conn.send("stop")
        expect(conn, "result")
        assert join(p) == 0


@pytest.fixture
def loaded():
    """More runnable tasks than CPUs for the test's duration: busy processes, killed afterwards."""
    n = (os.cpu_count() or 1) + 1
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for b in busy:
            b.kill()
        for b in busy:
            b.wait(30)


def forged_states() -> list[int]:
    """Every kind of value a peer may write into FIFO_STATE: running or spinning on each CPU and
    on CPUs that do not exist, asleep, and garbage."""
    cpus = os.cpu_count() or 1
    values = [state | (cpu + 1) << 8 for cpu in range(cpus + 2)
              for state in (L.RECEIVER_RUNNING, L.RECEIVER_SPINNING, L.RECEIVER_ASLEEP)]
    return values + [0, 0xFFFFFFFF, 0xFF, 0x1FF]


def test_calls_under_load_follow_the_peer_and_run_once(counter, loaded):
    name, _, _ = counter
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        assert [cli.increment() for _ in range(CALLS)] == list(range(1, CALLS + 1))


@pytest.mark.parametrize("wait", ["adaptive", "sleep"])
def test_forged_peer_states_never_cost_a_call(counter, loaded, wait):
    """A hostile thread rewrites both receivers' published states (the server's, which the client's
    lane follows, and the client's, which the server's intake follows) all through the calls."""
    name, _, _ = counter
    previous = ombm.settings().wait
    ombm.configure(wait=wait)
    try:
        with ombm.rpc.connect(name, timeout=30.0) as cli:
            assert cli.increment() == 1  # (the request channel's route is known from now on)
            server_fifo = cli._request.segment._router.route(0)[0][0]
            words = [server_fifo.address + L.FIFO_STATE, cli._receiver.fifo.fifo_map.address + L.FIFO_STATE]
            values = forged_states()
            stop = threading.Event()

            def scribble() -> None:
                i = 0
                while not stop.wait(0.0001):
                    for word in words:
                        _native.store32(word, values[i % len(values)])
                    i += 1

            scribbler = threading.Thread(target=scribble, daemon=True)
            scribbler.start()
            try:
                got = [cli.increment() for _ in range(CALLS)]
            finally:
                stop.set()
                scribbler.join(30)
            assert got == list(range(2, CALLS + 2))
    finally:
        ombm.configure(wait=previous)
