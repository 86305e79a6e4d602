"""One futex wake per sleep (issue 13, fifo.h's fifo_wake): the first producer that finds the
receiver asleep wakes it and then marks the sleep word SLEEP_WOKEN; later producers skip the
system call until the receiver announces its next sleep. A producer killed before its wake leaves
the word at SLEEP_FUTEX, so the next push still wakes the sleeper: no sleeper is stranded.

The receiver is a real child process, asleep on its futex in a thread other than its main one
(the main thread sleeps in 50 ms slices and would re-announce by itself: a stranded sleep must be
able to last here); the producers are this process and killed children.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ombm import _layout as L
from ombm import _native
from ombm.core.fifo import Fifo

pytestmark = pytest.mark.processes

JOIN_S = 30.0
SLEEP_S = 60.0  # the receiver's futex timeout: longer than any answer waits, so a stranded sleep shows


@pytest.fixture
def fifo():
    f = Fifo(64)
    try:
        yield f
    finally:
        f.close()


def _sleep_word(fifo: Fifo) -> int:
    return _native.load32(fifo.address + L.FIFO_SLEEP)


def _receive(conn, fifo_map, rounds: int) -> None:
    """Each round: wait (no spin) in a second thread, then take every signal; report them."""
    for _ in range(rounds):
        out: list = []
        t = threading.Thread(target=lambda: out.append(_native.fifo_wait(fifo_map, 0, SLEEP_S)))
        t.start()
        t.join()
        got = []
        while (s := _native.fifo_pop(fifo_map)) is not None:
            got.append(s[1])
        conn.send((out[0], got))


def _until_asleep(fifo: Fifo) -> None:
    """Until the receiver announced a futex sleep (it may still be on its way into FUTEX_WAIT: a
    push then changes the word it waits on, and its FUTEX_WAIT returns at once)."""
    deadline = time.monotonic() + JOIN_S
    while _sleep_word(fifo) & 3 != L.SLEEP_FUTEX:
        assert time.monotonic() < deadline, "the receiver never went to sleep"
        time.sleep(0.001)


def _answer(conn, process):
    assert conn.poll(JOIN_S), f"the receiver did not answer (exit code {process.exitcode})"
    return conn.recv()


def test_one_wake_for_many_pushes_while_the_receiver_cannot_run(procs, fifo):
    """The receiver asleep and stopped (SIGSTOP: it cannot clear its state): of 10 pushes only the
    first makes a FUTEX_WAKE; after it ran and slept again, the next push wakes it again."""
    conn, end = procs.pipe()
    rx = procs.fork(_receive, end, fifo.fifo_map, 2)
    _until_asleep(fifo)
    os.kill(rx.pid, signal.SIGSTOP)
    try:
        results = [_native.fifo_push(fifo.fifo_map, 7, i) for i in range(10)]
        assert _sleep_word(fifo) & 3 == L.SLEEP_WOKEN
    finally:
        os.kill(rx.pid, signal.SIGCONT)
    assert results == [_native.PUSH_WOKE] + [_native.PUSH_OK] * 9
    assert _answer(conn, rx) == (_native.WAIT_READY, list(range(10)))
    _until_asleep(fifo)  # the next sleep: announced afresh, the mark gone
    assert _native.fifo_push(fifo.fifo_map, 7, 10) == _native.PUSH_WOKE
    assert _answer(conn, rx) == (_native.WAIT_READY, [10])
    rx.join(JOIN_S)
    assert rx.exitcode == 0


def _bump_then_die(sleep_address: int) -> None:
    """A producer killed between the two steps of its wake: it bumped the wake generation, as
    fifo_wake does before its FUTEX_WAKE, and is killed (SIGKILL) before the system call."""
    word = _native.load32(sleep_address)
    assert word & 3 == L.SLEEP_FUTEX
    _native.cas32(sleep_address, word, word + 4)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_producer_killed_before_its_wake_strands_no_sleeper(procs, fifo):
    conn, end = procs.pipe()
    rx = procs.fork(_receive, end, fifo.fifo_map, 1)
    _until_asleep(fifo)
    killed = procs.fork(_bump_then_die, fifo.address + L.FIFO_SLEEP)
    killed.join(JOIN_S)
    assert killed.exitcode == -signal.SIGKILL
    assert _sleep_word(fifo) & 3 == L.SLEEP_FUTEX  # no claim left behind: the next push wakes
    assert not conn.poll(0.2)  # the receiver still sleeps (nobody woke it)
    assert _native.fifo_push(fifo.fifo_map, 7, 1) == _native.PUSH_WOKE
    assert _answer(conn, rx) == (_native.WAIT_READY, [1])
    rx.join(JOIN_S)
    assert rx.exitcode == 0
