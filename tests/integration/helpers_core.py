"""Child-process bodies and parent-side helpers for the core integration tests.

Every child talks to the test through one ``multiprocessing`` connection:
``("ready", info)`` once its handlers are enabled, ``("result", data)`` at the
end, or ``("error", traceback)`` if it failed. The functions live here (not in
the test modules) so that "spawn" children can import them too; pytest puts
this folder on ``sys.path`` and spawn children inherit it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
import traceback

import pytest

import ombm
from ombm import _layout, _native
from ombm.core.signals import current_receiver

CHILD_TIMEOUT_S = 60.0  # generous: the machine may be busy; never a performance bound


# ---------------------------------------------------------------- parent side
def expect(conn, tag: str, timeout: float = CHILD_TIMEOUT_S):
    """The payload of the child's next message, which must be ``tag``."""
    if not conn.poll(timeout):
        pytest.fail(f"child sent nothing within {timeout} s (waiting for {tag!r})")
    try:
        kind, payload = conn.recv()
    except EOFError:
        pytest.fail(f"child closed its connection before sending {tag!r}")
    if kind == "error":
        pytest.fail(f"child failed:\n{payload}")
    assert kind == tag, f"expected {tag!r} from the child, got {kind!r}: {payload!r}"
    return payload


def join(p, timeout: float = CHILD_TIMEOUT_S) -> int:
    p.join(timeout)
    assert not p.is_alive(), f"child {p.pid} did not exit within {timeout} s"
    return p.exitcode


def spin_sleep_us(us: float) -> None:
    """Wait ``us`` microseconds without a system call (time.sleep is too coarse for µs)."""
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


# ---------------------------------------------------------------- child side
def child(fn):
    """Report a child's failure to the parent instead of leaving it to time out."""

    @functools.wraps(fn)
    def run(conn, *args):
        try:
            fn(conn, *args)
        except BaseException:
            try:
                conn.send(("error", traceback.format_exc()))
            except Exception:
                pass
            raise

    return run


def _info(region, handle) -> dict:
    fifo = handle.receiver.fifo
    return {
        "pid": os.getpid(),
        "base": region.address,
        "token": fifo.token,
        "fifo": fifo.path,
        "fifo_address": fifo.address,
    }


@child
def receive_until_sentinel(conn, name, lo, size, settings, read_bytes=0, ack_every=0):
    """Watch ``[lo, lo+size)``; collect (offset, bytes at the address) until the sentinel.

    The sentinel is an explicit signal of the segment's last byte. With
    ``ack_every``, send ("ack", n) after every ``ack_every`` signals (flow control).
    """
    if settings:
        ombm.configure(**settings)
    seg = ombm.open_segment(name)
    region = seg.bind()
    sentinel = seg.size - 1
    got: list = []

    def on_signal(address):
        data = ctypes.string_at(address, read_bytes) if read_bytes else b""
        got.append((address - region.address, data))

    handle = ombm.signal_handler(region.address + lo, size, on_signal)
    conn.send(("ready", _info(region, handle)))
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    acked = 0
    while not got or got[-1][0] != sentinel:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sentinel after {len(got)} signals")
        ombm.sig_wait(1.0)
        if ack_every and len(got) - acked >= ack_every:
            acked = len(got)
            conn.send(("ack", acked))
    conn.send(("result", {"got": got[:-1], "stats": ombm.stats()}))


@child
def fill_then_drain(conn, name, settings):
    """Enable a handler, let the FIFO fill without consuming, then drain it on request."""
    ombm.configure(**settings)
    seg = ombm.open_segment(name)
    region = seg.bind()
    got = []
    handle = ombm.signal_handler(region.address, region.size, lambda a: got.append(a - region.address))
    conn.send(("ready", _info(region, handle)))
    assert conn.recv() == "drain"
    while ombm.sig_wait(0.5) > 0.0:
        pass
    drops = _native.load64(handle.receiver.fifo.address + _layout.FIFO_DROPS)
    conn.send(("result", {"got": got, "fifo_drops": drops, "stats": ombm.stats()}))


@child
def count_stream(conn, name, n, settings):
    """Count ``n`` signals, each sig_wait without timeout: a lost wake-up hangs this child."""
    ombm.configure(**settings)
    seg = ombm.open_segment(name)
    region = seg.bind()
    got = []
    handle = ombm.signal_handler(region.address, region.size, lambda a: got.append(a - region.address))
    conn.send(("ready", _info(region, handle)))
    while len(got) < n:
        ombm.sig_wait(None)
    conn.send(("result", {"got": got, "stats": ombm.stats()}))


@child
def echo(conn, request_name, reply_name, n, settings):
    """Answer each signal on the request segment with a signal of the same offset on the reply one."""
    ombm.configure(**settings)
    requests = ombm.open_segment(request_name).bind()
    replies = ombm.open_segment(reply_name).bind()
    seen = [0]

    def on_request(address):
        seen[0] += 1
        ombm.signal(replies.address + (address - requests.address))

    handle = ombm.signal_handler(requests.address, requests.size, on_request)
    conn.send(("ready", _info(requests, handle)))
    while seen[0] < n:
        ombm.sig_wait(None)
    conn.send(("result", {"seen": seen[0]}))


@child
def hold_and_block(conn, name, size, create, watch, settings=None):
    """Create (or open) a segment, optionally watch it, report, then block until killed."""
    ombm.configure(**(settings or {}))
    seg = ombm.create_segment(size, name=name) if create else ombm.open_segment(name)
    region = seg.bind()
    info = {"pid": os.getpid(), "base": region.address}
    if watch:
        handle = ombm.signal_handler(region.address, region.size, lambda a: None)
        info = _info(region, handle)
        conn.send(("ready", info))
        ombm.sig_wait(None)  # asleep on the futex when the parent kills us
    else:
        conn.send(("ready", info))
        conn.recv()


@child
def send_burst(conn, name, first, n):
    """On "go", signal offsets first .. first+n-1 as fast as possible (a producer among several)."""
    region = ombm.open_segment(name).bind()
    conn.send(("ready", {"pid": os.getpid()}))
    assert conn.recv() == "go"
    for i in range(first, first + n):
        ombm.signal(region.address + i)
    conn.send(("result", ombm.stats()))


@child
def try_read_only(conn, name):
    """Exercise a read-only binding; report what each forbidden operation raised."""
    seg = ombm.open_segment(name)
    region = seg.bind(writable=False)
    report = {"readonly_view": region.buffer.readonly}
    try:
        region.buffer[0] = 0x58
        report["assign"] = None
    except Exception as e:
        report["assign"] = type(e).__name__
        report["assign_is_type_error"] = isinstance(e, TypeError)
    try:
        region.write(0, b"XYZ")
        report["write"] = None
    except Exception as e:
        report["write"] = type(e).__name__
        report["write_is_permission_error"] = isinstance(e, PermissionError)
        report["write_is_ombm_error"] = isinstance(e, ombm.OmbmError)
    report["content"] = region.read(0, 8)
    conn.send(("result", report))


def poke_read_only(name):
    """Store into a read-only binding behind Python's back: the MMU must kill us (SIGSEGV)."""
    import faulthandler

    faulthandler.disable()
    region = ombm.open_segment(name).bind(writable=False)
    ctypes.memmove(region.address, b"X", 1)
    os._exit(0)  # not reached if the mapping is really read-only


@child
def use_and_leave(conn, name, how):
    """Use ombm (open a segment, create one, watch, signal), report the paths, then leave by ``how``."""
    seg = ombm.open_segment(name)
    region = seg.bind()
    mine = ombm.create_segment(4096)
    mine_region = mine.bind()
    got = []
    handle = ombm.signal_handler(mine_region.address, 4096, got.append)
    mine_region.write(0, b"x" * 64)
    ombm.sig_wait(5.0)
    region.write(0, b"y" * 64)
    conn.send(("ready", {"fifo": handle.receiver.fifo.path, "segment": mine.path, "got": len(got)}))
    if how == "raise":
        raise RuntimeError("child fails on purpose (expected in the test output)")
    if how == "exit":
        raise SystemExit(3)


def current_fifo_path() -> str:
    return current_receiver().fifo.path


@child
def echo_pings(conn, name, cpu, settings):
    """On CPU ``cpu``, single-threaded: answer each signal on line 0 with a write completing line 1
    (the core benchmark's echo), until the parent sends "stop"; report how many it answered."""
    os.sched_setaffinity(0, {cpu})
    if settings:
        ombm.configure(**settings)
    seg = ombm.open_segment(name)
    region = seg.bind()
    answered = [0]

    def on_ping(address):
        answered[0] += 1
        region.write(64 + 32, b"r" * 32)

    handle = ombm.signal_handler(region.address, 64, on_ping)
    conn.send(("ready", _info(region, handle)))
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not conn.poll(0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stop after {answered[0]} pings")
        ombm.sig_wait(0.05)
    conn.send(("result", {"answered": answered[0]}))


@child
def burn_cpu(conn, cpu):
    """Run on CPU ``cpu`` without a pause (a CPU-bound third task) until the parent sends "stop"."""
    os.sched_setaffinity(0, {cpu})
    conn.send(("ready", None))
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline and not conn.poll(0):
        for _ in range(10_000):
            pass
