"""Services, child-process bodies and parent-side helpers for the RPC integration tests.

Every child talks to the test through one ``multiprocessing`` connection:
``("ready", info)`` once it serves or is connected, ``("result", data)`` at
the end, or ``("error", traceback)`` if it failed. The functions live here
(not in the test modules) so that "spawn" children can import them: pytest
puts this folder on ``sys.path`` and spawn children inherit it.

Children are always started with :class:`Children` (daemonic, killed and
joined in ``finally``); fault injection is set per child through ``env=``,
because ``OMBM_FAULT_*`` are read when ombm is imported (DESIGN.md §4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import struct
import time
import traceback

import ombm
from ombm.core import admin as ombm_inspect
from ombm.core import namespace
from helpers_core import CHILD_TIMEOUT_S, expect, join  # noqa: F401  (shared parent-side helpers)

SPAWN = multiprocessing.get_context("spawn")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- services
class CustomError(Exception):
    """Raised by Calc.fail_custom: its qualified name must reach the caller."""


@dataclasses.dataclass(frozen=True)
class Point:
    """A user's own type, marshalled by the codec registered below (in the test and in every child,
    which imports this module)."""

    x: float
    y: float


ombm.rpc.register_type(Point, 16, lambda p: struct.pack("<dd", p.x, p.y), lambda b: Point(*struct.unpack("<dd", b)))


class Calc:
    """A stateless service exercising argument and result types."""

    def __init__(self) -> None:
        self.executed = 0

    def add(self, a, b):
        self.executed += 1
        return a + b

    def echo(self, *args, **kwargs):
        self.executed += 1
        return {"args": list(args), "kwargs": kwargs}

    def identity(self, value):
        self.executed += 1
        return value

    def size(self, data) -> int:
        self.executed += 1
        return len(data)

    def digest(self, data) -> str:
        self.executed += 1
        return hashlib.sha256(data).hexdigest()

    def make(self, nbytes: int) -> bytes:
        self.executed += 1
        return pattern(nbytes)

    def fail(self, message: str):
        self.executed += 1
        raise ValueError(message)

    def lookup(self, key):
        self.executed += 1
        return {"a": 1}[key]

    def move(self, point: Point, dx: float) -> Point:
        self.executed += 1
        return Point(point.x + dx, point.y)

    def fail_custom(self, message: str):
        self.executed += 1
        raise CustomError(message)

    def unmarshallable(self):
        self.executed += 1
        return {1, 2, 3}  # a set cannot be marshalled: the caller gets RemoteError(TypeError)

    def calls_executed(self) -> int:
        return self.executed

    def pid(self) -> int:
        return os.getpid()

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def _secret(self):  # private: never exposed
        return "secret"


class Counter:
    """A non-idempotent service: executing a call twice shows."""

    def __init__(self) -> None:
        self.value = 0

    def increment(self) -> int:
        self.value += 1
        return self.value

    def bump(self, n: int = 1) -> None:  # for one-way calls
        self.value += n

    def blob(self, nbytes: int) -> bytes:  # a result of several frames
        self.value += 1
        return pattern(nbytes)

    def stop_now(self) -> int:  # KeyboardInterrupt past the server's own handling: the server stops
        self.value += 1
        raise KeyboardInterrupt

    def get(self) -> int:
        return self.value


class Recorder:
    """Records which calls ran, in order; some take their time. Its methods ``close`` and
    ``statistics`` have the names of client attributes (reachable through call() and options())."""

    def __init__(self) -> None:
        self.ran: list[int] = []

    def work(self, i: int, seconds: float = 0.0) -> int:
        time.sleep(seconds)
        self.ran.append(i)
        return i

    def executed(self) -> list[int]:
        return list(self.ran)

    def close(self) -> str:
        return "the remote close"

    def statistics(self) -> str:
        return "the remote statistics"


SERVICES = {"calc": Calc, "counter": Counter, "recorder": Recorder}


def pattern(nbytes: int) -> bytes:
    """Deterministic, non-repetitive-looking bytes (so a misplaced fragment shows)."""
    block = bytes(range(251))
    return (block * (nbytes // 251 + 1))[:nbytes]


# ---------------------------------------------------------------- child side
def child(fn):
    """Report a child's failure to the parent instead of leaving it to time out."""

    @functools.wraps(fn)
    def run(conn, *args, **kwargs):
        try:
            fn(conn, *args, **kwargs)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.send(("error", traceback.format_exc()))
            raise

    return run


def scribble_segment(conn, name: str) -> None:
    """A child: write garbage over the spans of the (bulk) segment ``name`` until killed."""
    from ombm.core import segment as _segment
    buf = _segment.open_segment(name).bind(True).buffer
    junk = bytes(range(256)) * 64
    conn.send(("ready", None))
    writes = 0
    while True:
        offset = 64 + (writes * 4096) % (1 << 20)
        buf[offset:offset + len(junk)] = junk
        writes += 1


@child
def serve_forever(conn, name: str, kind: str) -> None:
    """One service, ``serve_forever()`` in the main thread; stops on SIGTERM/SIGINT."""
    srv = ombm.rpc.Server(name, SERVICES[kind]())
    conn.send(("ready", os.getpid()))
    srv.serve_forever()
    conn.send(("result", {"stats": dict(srv.stats), "ombm": ombm.stats()}))


@child
def serve_started(conn, services: list, start_delay_s: float = 0.0) -> None:
    """Several services, each ``start()``ed in its own thread, until the parent sends "stop".

    ``("constructed", pid)`` is sent as soon as the servers exist, ``start()``
    is called ``start_delay_s`` later, then ``("ready", pid)``.
    """
    servers = [ombm.rpc.Server(name, SERVICES[kind]()) for name, kind in services]
    try:
        conn.send(("constructed", os.getpid()))
        time.sleep(start_delay_s)
        for srv in servers:
            srv.start()
        conn.send(("ready", os.getpid()))
        with contextlib.suppress(EOFError):
            conn.recv()  # "stop", or the parent went away
    finally:
        for srv in servers:
            srv.stop()
    conn.send(("result", {"stats": [dict(s.stats) for s in servers], "ombm": ombm.stats()}))


@child
def add_many(conn, name: str, tag: int, count: int) -> None:
    """A client process: ``count`` calls whose results depend on this client (``tag``)."""
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        conn.send(("ready", os.getpid()))
        base = tag * 1_000_000
        wrong = [i for i in range(count) if cli.add(base, i) != base + i]
    conn.send(("result", {"wrong": wrong, "count": count}))


@child
def increment_many(conn, name: str, count: int, oneway: int = 0) -> None:
    """``count`` non-idempotent calls, then ``oneway`` one-way bumps, then read the counter."""
    with ombm.rpc.connect(name, timeout=30.0) as cli:
        conn.send(("ready", os.getpid()))
        results = [cli.increment() for _ in range(count)]
        for _ in range(oneway):
            cli.oneway("bump")
        # a one-way call is retransmitted until acknowledged: poll until all landed
        deadline = time.monotonic() + 30.0
        final = cli.get()
        while final < count + oneway and time.monotonic() < deadline:
            time.sleep(0.01)
            final = cli.get()
        time.sleep(0.2)  # a duplicate executed late would show now
        final_again = cli.get()
        stats = dataclasses.asdict(cli.statistics())
    conn.send(("result", {"results": results, "final": final, "final_again": final_again,
                          "client": stats, "ombm": ombm.stats()}))


@child
def call_until_killed(conn, name: str) -> None:
    """A client that calls in a loop until it is killed."""
    cli = ombm.rpc.connect(name, timeout=30.0)
    assert cli.add(1, 2) == 3
    conn.send(("ready", os.getpid()))
    i = 0
    while True:
        assert cli.add(i, 1) == i + 1
        i += 1


# ---------------------------------------------------------------- parent side
@contextlib.contextmanager
def _environment(env: dict | None):
    """Set ``env`` in os.environ while a spawned child is exec'ed (it inherits it)."""
    saved = {key: os.environ.get(key) for key in env or {}}
    try:
        os.environ.update(env or {})
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Children:
    """Spawned children that are daemonic and always killed + joined (use as a context manager)."""

    def __init__(self) -> None:
        self.procs: list = []

    def spawn(self, target, *args, env: dict | None = None):
        """Start ``target(conn, *args)`` in a spawned child; return (process, parent end of its pipe)."""
        parent, child_end = SPAWN.Pipe()
        with _environment(env):
            p = SPAWN.Process(target=target, args=(child_end, *args), daemon=True)
            p.start()
        child_end.close()
        self.procs.append(p)
        return p, parent

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(10)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def service_name(label: str) -> str:
    """A service name unique to this test run (other suites may share the folder)."""
    return f"t-{label}-{os.getpid()}-{namespace.new_token() & 0xFFFFFF:06x}"


def served(kind: str, label: str | None = None, report: dict | None = None):
    """Serve a ``kind`` service (``SERVICES``) in a child process; yield its name; stop it cleanly
    after. ``report``, if given, receives the child's final result (its ``stats`` among them).
    A generator for fixtures: ``yield from served("calc")``."""
    name = service_name(label or kind)
    with Children() as children:
        p, conn = children.spawn(serve_started, [(name, kind)])
        expect(conn, "constructed")
        expect(conn, "ready")
        yield name
        conn.send("stop")
        result = expect(conn, "result")
        if report is not None:
            report.update(result)
        assert join(p) == 0


def segments_of(service: str) -> set[str]:
    """Names of the segments of ``service``: its well-known channel and its connections' channels."""
    prefix = f"rpc-{service}"
    return {s.name for s in ombm_inspect.list_segments() if s.name == prefix or s.name.startswith(prefix + "-")}


def fifos_of(pid: int) -> list[str]:
    """Signal FIFO files whose header names ``pid`` as owner."""
    from ombm import _layout as L

    found = []
    folder = namespace.folder()
    for f in os.listdir(folder):
        if not f.startswith("fifo-"):
            continue
        try:
            with open(os.path.join(folder, f), "rb") as fh:
                head = fh.read(L.FIFO_HEADER.size)
        except OSError:
            continue
        if len(head) == L.FIFO_HEADER.size and head[:8] == L.FIFO_MAGIC and L.FIFO_HEADER.unpack(head)[3] == pid:
            found.append(f)
    return found


def wait_until(predicate, timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc (no psutil)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def send_signal(p, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signum)


