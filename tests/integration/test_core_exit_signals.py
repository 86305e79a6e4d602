"""SIGTERM and SIGINT leave nothing behind, and a user's own handlers stay in charge (issue 11, item 6).

Each test runs a real child process that creates a segment and a receiver (its signal FIFO), waits
in ``sig_wait`` (the native futex wait), and is then sent a signal.  The suite's guard
(``tests/conftest.py``) would also fail a test whose child left an object behind; each test says
so explicitly as well.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import uuid

import pytest

import ombm
from ombm.core import namespace

from conftest import objects_of

pytestmark = pytest.mark.processes

SRC = os.path.dirname(os.path.dirname(ombm.__file__))

CHILD = """
import signal, sys
import ombm
{prelude}
seg = ombm.create_segment(4096, name=sys.argv[1])
region = seg.bind(writable=True)
ombm.signal_handler(region.address, region.size, lambda address: None)
print(signal.getsignal(signal.SIGTERM) is {expected_handler}, flush=True)
while True:
    ombm.sig_wait(60.0)
"""


def _objects_of(pid: int) -> list[str]:
    """Files of the per-user folder whose header names ``pid`` as their owner."""
    return sorted(objects_of(pid, namespace.folder()))


def _start(prelude: str = "", expected_handler: str = "signal.SIG_DFL") -> tuple[subprocess.Popen[str], str]:
    name = f"exit-{uuid.uuid4().hex[:12]}"
    code = CHILD.format(prelude=prelude, expected_handler=expected_handler)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    line = child.stdout.readline()  # the child is ready: its segment and FIFO exist
    assert line, child.stderr.read() if child.stderr else ""
    assert _objects_of(child.pid), "the child made no shared object"
    return child, line.strip()


def _end(child: subprocess.Popen[str], signum: int) -> int:
    child.send_signal(signum)
    try:
        return child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_sigterm_releases_everything_and_the_child_still_dies_by_sigterm() -> None:
    child, took_default = _start(expected_handler="signal.SIG_DFL")
    assert took_default == "False"  # ombm took the default disposition
    assert _end(child, signal.SIGTERM) == -signal.SIGTERM
    assert _objects_of(child.pid) == []


def test_sigint_releases_everything() -> None:
    child, _ = _start()
    assert _end(child, signal.SIGINT) != 0  # KeyboardInterrupt
    assert _objects_of(child.pid) == []


def test_a_users_sigterm_handler_is_kept_and_its_exit_releases_everything() -> None:
    prelude = "def on_term(signum, frame):\n    sys.exit(3)\nsignal.signal(signal.SIGTERM, on_term)\n"
    child, kept = _start(prelude, expected_handler="on_term")
    assert kept == "True"  # ombm did not replace the user's handler
    assert _end(child, signal.SIGTERM) == 3
    assert _objects_of(child.pid) == []


def test_an_ignored_sigterm_stays_ignored() -> None:
    prelude = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    child, kept = _start(prelude, expected_handler="signal.SIG_IGN")
    assert kept == "True"
    child.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.5)  # still running: SIGTERM is ignored, as its user asked
    assert _end(child, signal.SIGINT) != 0
    assert _objects_of(child.pid) == []


def _terminated_child(name: str, ready: "multiprocessing.synchronize.Event") -> None:
    seg = ombm.create_segment(4096, name=name)
    region = seg.bind(writable=True)
    ombm.signal_handler(region.address, region.size, lambda address: None)
    ready.set()
    while True:
        ombm.sig_wait(60.0)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_process_terminate_leaves_nothing(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    ready = ctx.Event()
    process = ctx.Process(target=_terminated_child, args=(f"exit-{uuid.uuid4().hex[:12]}", ready), daemon=True)
    process.start()
    try:
        assert ready.wait(60)
        assert process.pid is not None and _objects_of(process.pid)
        process.terminate()
        process.join(60)
        assert process.exitcode == -signal.SIGTERM
        assert _objects_of(process.pid) == []
    finally:
        if process.is_alive():
            process.kill()
            process.join(10)


def test_a_signal_taken_by_another_thread_still_reaches_the_waiting_main_thread() -> None:
    # The kernel gives a process-directed signal to any thread that does not block it; Python's C
    # handler then only sets a flag, and the main thread, asleep on its futex, is not interrupted.
    # Here the main thread blocks SIGTERM, so another thread always takes it: the wait must still
    # let the main thread run the handler (it sleeps in slices), not sleep its whole timeout.
    prelude = ("import threading\n"
               "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
               "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n")
    child, _ = _start(prelude)
    child.send_signal(signal.SIGTERM)
    try:
        assert child.wait(timeout=30) == -signal.SIGTERM  # its sig_wait(60) has not ended by then
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert _objects_of(child.pid) == []
