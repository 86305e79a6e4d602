"""The IPC peers ombm is measured against, in the same run (DESIGN.md §5).

Owns the comparison implementations: each peer is a real transport between this process (the
client, which is timed) and a server in a separate, freshly spawned process, used the way a Python
user would use it. Three kinds:

- ``signal``: a wake-up ping-pong (1 byte; 8 for eventfd), the cost of the kernel wake-up alone;
- ``rpc``: request/response; the request carries ``payload_bytes`` and the reply carries them back;
- ``stream``: one-way throughput to a child that touches (length, first byte) every message,
  timed from the first send to the child's acknowledgement of the last.

Rules:

- A peer whose library is missing says why in ``available()``; it never produces a number.
- Only the client's calls are timed (``time.perf_counter_ns``); process start, connection set-up
  and warm-up are not. The client is pinned to ``placement[0]`` while it connects and measures, the
  server pins itself to ``placement[1]`` before it creates anything.
- No process outlives a measurement: children are daemonic, joined with a timeout and killed if
  still alive, and bound by ``alarm(2)`` so that a stuck child, or one whose parent died, dies too.
- No client receive can hang: a dead child's ends close (EOF), or the library has a timeout of its
  own (zmq ``RCVTIMEO``, gRPC deadline, iceoryx2 poll deadline), or a watcher wakes it (eventfd).
- Every socket or file path lives in a ``TemporaryDirectory`` removed after the measurement.

This module is longer than most because each transport is a small `_Link` class; they share one
life cycle (`_serving`) and one measurement loop (`Peer.roundtrip`, `Peer.throughput`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import math
import multiprocessing
import os
import secrets
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from ombm.cli.bench.affinity import pin, pinned

# spawn, not fork: by the time a peer runs, this process may hold threads (zmq I/O threads, gRPC
# pollers, an ombm server), and a forked child would inherit their locks in whatever state they
# were. spawn starts a fresh interpreter with no busy state; its start-up is never timed.
_CONTEXT = multiprocessing.get_context("spawn")

_START_TIMEOUT_S = 30.0  # child start-up (it may import grpc or iceoryx2) until it is ready
_OP_TIMEOUT_S = 10.0  # bound on one receive that has a timeout of its own
_JOIN_TIMEOUT_S = 5.0  # a stopped child must exit within this, else it is killed
_IDLE_POLL_MS = 100  # a server blocked in a library receive checks for "stop" this often
_SPINS_PER_CHECK = 4096  # a busy-polling loop looks at the clock or for "stop" this often
_WORST_ROUND_TRIP_S = 0.02  # per round trip, for the child's lifetime bound
_WORST_BANDWIDTH = 10e6  # bytes/s, for the child's lifetime bound
_HEADER = struct.Struct("<I")  # the length prefix of a framed message
_TOKEN = b"\x01"  # a one-byte wake-up
_POISON = 1 << 62  # an eventfd value that is never a wake-up: "stop" or "server gone"
_KINDS = ("signal", "rpc", "stream")


@dataclass(frozen=True)
class Peer:
    """One comparison transport; ``kind`` says which measurement it takes."""

    name: str
    kind: str
    _link: type[_Link] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, not {self.kind!r}")

    def available(self) -> tuple[bool, str]:
        """(True, "") if this peer can run here, else (False, why not)."""
        reason = self._link.missing()
        return (reason is None, reason or "")

    def roundtrip(
        self,
        payload_bytes: int,
        iterations: int,
        placement: tuple[int, int] = (0, 1),
        warmup: int = 200,
    ) -> list[float]:
        """Per-iteration round-trip latencies in µs, measured in this process.

        The request carries ``payload_bytes`` and the reply carries them back; a signal peer sends
        its fixed wake-up token (``payload_bytes`` 0 or 1). The server runs in a separate process
        pinned to ``placement[1]``; this thread is pinned to ``placement[0]`` while it measures.
        """
        self._check("roundtrip", ("signal", "rpc"))
        if self.kind == "signal" and payload_bytes not in (0, 1):
            raise ValueError(f"a signal peer sends a fixed token; payload_bytes {payload_bytes}")
        if payload_bytes < 0 or iterations < 1 or warmup < 0:
            raise ValueError("need payload_bytes >= 0, iterations >= 1, warmup >= 0")
        payload = _pattern(payload_bytes)
        lifetime_s = (warmup + iterations + 1) * _WORST_ROUND_TRIP_S
        with _serving(self._link, payload_bytes, 0, placement, lifetime_s) as (link, _):
            if self.kind == "signal":
                operation: Callable[[], Any] = link.ping
            else:
                operation = functools.partial(link.call, payload)
                if operation() != payload:
                    raise RuntimeError(f"{self.name} echoed a different payload")
            for _ in range(warmup):
                operation()
            return timed(operation, iterations)

    def throughput(
        self, message_bytes: int, total_bytes: int, placement: tuple[int, int] = (0, 1)
    ) -> float:
        """Bytes/s delivered one way from this process to a child that touches every message.

        Sends ``max(1, total_bytes // message_bytes)`` messages after one untimed priming message;
        timed from the first send to the child's acknowledgement of the last.
        """
        self._check("throughput", ("stream",))
        if message_bytes < 1 or total_bytes < 1:
            raise ValueError("need message_bytes >= 1 and total_bytes >= 1")
        count = max(1, total_bytes // message_bytes)
        sent_bytes = count * message_bytes
        message = _pattern(message_bytes)
        drain_s = _OP_TIMEOUT_S + sent_bytes / _WORST_BANDWIDTH
        with _serving(self._link, message_bytes, count, placement, drain_s) as (link, control):
            link.push(message)
            expect(control, "primed", _OP_TIMEOUT_S, "server")
            start = time.perf_counter_ns()
            for _ in range(count):
                link.push(message)
            ack = expect(control, "ack", drain_s, "server")
            elapsed_ns = time.perf_counter_ns() - start
        if ack[1] != sent_bytes:
            raise RuntimeError(f"{self.name}: child received {ack[1]} of {sent_bytes} bytes")
        return sent_bytes * 1e9 / elapsed_ns

    def _check(self, measurement: str, kinds: Sequence[str]) -> None:
        if self.kind not in kinds:
            raise ValueError(f"{self.name} is a {self.kind} peer; it has no {measurement}")
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(f"{self.name} is unavailable: {reason}")


def _peers(kind: str) -> list[Peer]:
    """The peers of one kind, in the order their rows are printed (``_PEERS``, after the links)."""
    return [Peer(name, kind, link) for name, link in _PEERS[kind]]


def signal_peers() -> list[Peer]:
    """Wake-up ping-pong through the kernel: the floor under every kernel-based peer."""
    return _peers("signal")


def rpc_peers() -> list[Peer]:
    """Request/response with a payload each way."""
    return _peers("rpc")


def stream_peers() -> list[Peer]:
    """One-way bulk transfer."""
    return _peers("stream")


def memcpy_bandwidth(nbytes: int = 64 << 20, repeats: int = 5) -> float:
    """Single-core copy bandwidth in bytes/s, best of ``repeats``: the ceiling for any stream."""
    if nbytes < 1 or repeats < 1:
        raise ValueError("need nbytes >= 1 and repeats >= 1")
    try:
        import numpy
    except ImportError:
        source, target = memoryview(b"\xa5" * nbytes), memoryview(bytearray(nbytes))

        def copy() -> None:
            target[:] = source

    else:
        array = numpy.full(nbytes, 0xA5, dtype=numpy.uint8)
        destination = numpy.empty_like(array)

        def copy() -> None:
            numpy.copyto(destination, array)

    copy()  # fault the target's pages in
    best_ns = min(timed(copy, repeats)) * 1000
    return nbytes * 1e9 / max(best_ns, 1.0)


def timed(operation: Callable[[], object], iterations: int) -> list[float]:
    """Run ``operation`` ``iterations`` times; each one's duration in µs."""
    clock = time.perf_counter_ns
    durations_ns: list[int] = []
    record = durations_ns.append
    for _ in range(iterations):
        start = clock()
        operation()
        record(clock() - start)
    return [d / 1000 for d in durations_ns]


def _pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# --- life cycle of one measurement ------------------------------------------------------------


@contextmanager
def _serving(
    link_type: type[_Link], size: int, count: int, placement: tuple[int, int], budget_s: float
) -> Iterator[tuple[_Link, Connection]]:
    """Start a server child for one measurement; yield the connected link and the control pipe.

    ``count`` 0 makes the child echo; otherwise it sinks ``count`` messages after a priming one.
    On the way out, whatever happened: ask the child to stop, join it (kill it if it lingers),
    then free this side and the working directory.
    """
    client_cpu, server_cpu = placement
    lifetime_s = math.ceil(_START_TIMEOUT_S + budget_s)
    with tempfile.TemporaryDirectory(prefix="ombm-bench-") as workdir, ExitStack() as undo:
        link = link_type(workdir, size)
        undo.callback(link.close)
        control, child_control = _CONTEXT.Pipe()
        undo.callback(control.close)
        child = _CONTEXT.Process(
            target=_serve,
            args=(link, count, child_control, server_cpu, lifetime_s),
            name=f"ombm-bench{link_type.__name__}",
            daemon=True,
        )
        try:
            child.start()
        finally:
            child_control.close()
            link.release_child_side()
        undo.callback(_reap, child)
        undo.callback(_ask_to_stop, control, link)
        try:
            expect(control, "ready", _START_TIMEOUT_S, "server")
            with pinned(client_cpu):
                link.connect()
                yield link, control
        except Exception as exc:
            detail = _child_error(control)
            if detail is None:
                raise
            raise ConnectionError(f"{link_type.__name__} server failed: {detail}") from exc


def _ask_to_stop(control: Connection, link: _Link) -> None:
    """Stop this side, then tell the child (a gRPC channel whose server stops first logs GOAWAY)."""
    try:
        link.shutdown()
    finally:
        with suppress(OSError):
            control.send(("stop",))


def _reap(child: multiprocessing.process.BaseProcess) -> None:
    child.join(_JOIN_TIMEOUT_S)
    if child.is_alive():
        child.kill()
        child.join(_JOIN_TIMEOUT_S)
    if not child.is_alive():
        child.close()


def _serve(link: _Link, count: int, control: Connection, cpu: int, lifetime_s: int) -> None:
    """The child process: serve one measurement, report errors on the control pipe."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(lifetime_s)
    pin(cpu)
    try:
        link.bind()
        control.send(("ready",))
        if count == 0:
            link.serve_echo(control)
        else:
            _sink(link, count, control)
    except Exception as exc:
        with suppress(OSError):
            control.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from exc


def _sink(link: _Link, count: int, control: Connection) -> None:
    """Receive the priming message, then ``count`` messages; touch each; acknowledge."""
    link.receive()
    control.send(("primed",))
    received = checksum = 0
    for _ in range(count):
        message = link.receive()
        received += len(message)
        checksum ^= message[0]
    control.send(("ack", received, checksum))


def expect(control: Connection, tag: str, timeout_s: float, who: str = "child") -> tuple[Any, ...]:
    """The next message on ``control``, which the ``who`` process must send tagged ``tag`` within
    ``timeout_s``; else why not, raised (an ``("error", why)`` the child sent, its exit, a timeout)."""
    if not control.poll(timeout_s):
        raise TimeoutError(f"{who} sent no {tag!r} within {timeout_s:.0f} s")
    try:
        message: tuple[Any, ...] = control.recv()
    except EOFError:
        raise ConnectionError(f"{who} exited before sending {tag!r}") from None
    if message[0] == "error":
        raise ConnectionError(f"{who} failed: {message[1]}")
    if message[0] != tag:
        raise RuntimeError(f"{who} sent {message!r}, expected {tag!r}")
    return message


def _child_error(control: Connection) -> str | None:
    """The error the child reported, if it did."""
    with suppress(OSError, EOFError):
        if control.poll(1.0):
            message = control.recv()
            if message[0] == "error":
                return str(message[1])
    return None


# --- transports -------------------------------------------------------------------------------


class _Fd:
    """A file descriptor handed to the spawned child (duplicated into it at start)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_fd, (reduction.DupFd(self.fd),)


def _rebuild_fd(duplicate: Any) -> _Fd:
    return _Fd(duplicate.detach())


def _close_fds(*fds: _Fd) -> None:
    """Close each fd once (-1 marks it closed): idempotent, never closes a reused number."""
    for handle in fds:
        if handle.fd >= 0:
            fd, handle.fd = handle.fd, -1
            os.close(fd)


class _Link:
    """One transport between this process (client) and a spawned child (server).

    Built in the parent from the working directory and the message size, then pickled into the
    child at start. Attributes named with a leading "_" belong to the side that set them and are
    not sent. Parent: ``release_child_side``, ``connect``, then ``ping`` (signal), ``call`` (rpc)
    or ``push`` (stream), then ``shutdown`` (the child's serve loop returns) and, once the child
    is gone, ``close`` (idempotent, safe on a half-built link). Child: ``bind`` before it reports
    ready, then ``serve_echo`` or one ``receive`` per message.
    """

    requires: tuple[str, ...] = ()

    def __init__(self, workdir: str, size: int) -> None:
        self.workdir = workdir
        self.size = size

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @classmethod
    def missing(cls) -> str | None:
        """Why this transport cannot run here, or None."""
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{module} is not installed ({exc})"
        return None

    def release_child_side(self) -> None:
        """Parent, after start: drop its copies of the child's ends, so a dead child means EOF."""

    def bind(self) -> None:
        """Child: listen or bind before the parent connects."""

    def connect(self) -> None:
        """Parent: connect once the child is ready."""

    def shutdown(self) -> None:
        """Parent: make the child's serve loop return. Closing this side gives it EOF."""
        self.close()

    def close(self) -> None:
        """Parent: free this side."""

    def ping(self) -> None:
        raise NotImplementedError

    def call(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def push(self, message: bytes) -> None:
        raise NotImplementedError

    def serve_echo(self, control: Connection) -> None:
        raise NotImplementedError

    def receive(self) -> bytes | memoryview:
        raise NotImplementedError


class _Framer:
    """Length-prefixed messages over a byte stream, one in flight at a time (request/response).

    As there is never a second message behind the first, a read may ask for all the buffer holds.
    """

    def __init__(self, readinto: Callable[[memoryview], int], writev: Callable[[list[Any]], int], size: int) -> None:
        self._readinto = readinto
        self._writev = writev
        self._buffer = memoryview(bytearray(_HEADER.size + size))

    def send(self, payload: bytes) -> None:
        self._send_all([_HEADER.pack(len(payload)), payload])

    def receive(self) -> memoryview:
        """The next message's payload, valid until the next receive."""
        return self._buffer[_HEADER.size : self._read_frame()]

    def echo_until_eof(self) -> None:
        with suppress(EOFError):
            while True:
                self._send_all([self._buffer[: self._read_frame()]])

    def _read_frame(self) -> int:
        buffer, got = self._buffer, 0
        while got < _HEADER.size:
            got += _fill(self._readinto, buffer[got:])
        end: int = _HEADER.size + _HEADER.unpack_from(buffer)[0]
        if end > len(buffer):
            raise ValueError(f"a {end}-byte frame does not fit the {len(buffer)}-byte buffer")
        while got < end:
            got += _fill(self._readinto, buffer[got:end])
        return end

    def _send_all(self, parts: list[Any]) -> None:
        sent = self._writev(parts)
        if sent < sum(map(len, parts)):  # a signal cut a blocking write short
            rest = memoryview(b"".join(parts))[sent:]
            while rest:
                rest = rest[self._writev([rest]) :]


def _fill(readinto: Callable[[memoryview], int], view: memoryview) -> int:
    count = readinto(view)
    if count == 0:
        raise EOFError("the other side closed")
    return count


def _fd_reader(fd: int) -> Callable[[memoryview], int]:
    return lambda view: os.readv(fd, (view,))


class _PipePair(_Link):
    """Two ``os.pipe()``s, one each way."""

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        self._out, self._in = _Fd(request_w), _Fd(reply_r)
        self.child_in, self.child_out = _Fd(request_r), _Fd(reply_w)

    def release_child_side(self) -> None:
        _close_fds(self.child_in, self.child_out)

    def close(self) -> None:
        _close_fds(self._out, self._in)


class _PipeToken(_PipePair):
    """A one-byte wake-up through two pipes."""

    def ping(self) -> None:
        os.write(self._out.fd, _TOKEN)
        if not os.read(self._in.fd, 1):
            raise EOFError("the server closed its pipe")

    def serve_echo(self, control: Connection) -> None:
        while os.read(self.child_in.fd, 1):
            os.write(self.child_out.fd, _TOKEN)


class _PipeFrames(_PipePair):
    """Length-prefixed request/response through two pipes (``os.writev`` / ``os.readv``)."""

    def connect(self) -> None:
        writev = functools.partial(os.writev, self._out.fd)
        self._framer = _Framer(_fd_reader(self._in.fd), writev, self.size)

    def call(self, payload: bytes) -> bytes:
        self._framer.send(payload)
        return bytes(self._framer.receive())

    def serve_echo(self, control: Connection) -> None:
        writev = functools.partial(os.writev, self.child_out.fd)
        _Framer(_fd_reader(self.child_in.fd), writev, self.size).echo_until_eof()


class _PipeMsgpack(_PipePair):
    """The smallest RPC a user would write: ``("echo", payload)`` in msgpack, length-prefixed, over
    two pipes; the server unpacks the call, and packs the result back."""

    _SLACK = 64  # msgpack's own bytes around the payload

    def connect(self) -> None:
        import msgpack

        self._pack, self._unpack = msgpack.packb, msgpack.unpackb
        writev = functools.partial(os.writev, self._out.fd)
        self._framer = _Framer(_fd_reader(self._in.fd), writev, self.size + self._SLACK)

    def call(self, payload: bytes) -> bytes:
        self._framer.send(self._pack(("echo", payload)))
        reply: bytes = self._unpack(self._framer.receive())
        return reply

    def serve_echo(self, control: Connection) -> None:
        import msgpack

        pack, unpack, methods = msgpack.packb, msgpack.unpackb, {"echo": lambda data: data}
        writev = functools.partial(os.writev, self.child_out.fd)
        framer = _Framer(_fd_reader(self.child_in.fd), writev, self.size + self._SLACK)
        with suppress(EOFError):
            while True:
                method, argument = unpack(framer.receive())
                framer.send(pack(methods[method](argument)))


class _SocketPair(_Link):
    """An ``AF_UNIX`` ``SOCK_STREAM`` socketpair."""

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self._sock, self.child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def release_child_side(self) -> None:
        self.child_sock.close()

    def close(self) -> None:
        self._sock.close()


class _SocketToken(_SocketPair):
    """A one-byte wake-up through a socketpair."""

    def ping(self) -> None:
        self._sock.send(_TOKEN)
        if not self._sock.recv(1):
            raise EOFError("the server closed its socket")

    def serve_echo(self, control: Connection) -> None:
        while self.child_sock.recv(1):
            self.child_sock.send(_TOKEN)


class _SocketFrames(_SocketPair):
    """Length-prefixed request/response through a socketpair (``sendmsg`` / ``recv_into``)."""

    def connect(self) -> None:
        self._framer = _Framer(self._sock.recv_into, self._sock.sendmsg, self.size)

    def call(self, payload: bytes) -> bytes:
        self._framer.send(payload)
        return bytes(self._framer.receive())

    def serve_echo(self, control: Connection) -> None:
        sock = self.child_sock
        _Framer(sock.recv_into, sock.sendmsg, self.size).echo_until_eof()


class _SocketStream(_SocketPair):
    """Fixed-size messages on a socketpair byte stream: ``sendall``, ``recv_into`` until full."""

    def push(self, message: bytes) -> None:
        self._sock.sendall(message)

    def bind(self) -> None:
        self._buffer = memoryview(bytearray(self.size))

    def receive(self) -> memoryview:
        got = 0
        while got < self.size:
            got += _fill(self.child_sock.recv_into, self._buffer[got:])
        return self._buffer


class _Eventfd(_Link):
    """Two eventfds, one each way, and a lifeline pipe the child holds open while it lives.

    An eventfd gives no EOF when the child dies (both sides hold it), so a watcher thread waits
    for the lifeline's EOF and then wakes the client with a poison value.
    """

    @classmethod
    def missing(cls) -> str | None:
        return None if hasattr(os, "eventfd") else "os.eventfd needs Linux and Python >= 3.10"

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.request, self.reply = _Fd(os.eventfd(0)), _Fd(os.eventfd(0))
        lifeline_r, lifeline_w = os.pipe()
        self._lifeline, self.lifeline = _Fd(lifeline_r), _Fd(lifeline_w)
        self._watcher: threading.Thread | None = None

    def release_child_side(self) -> None:
        _close_fds(self.lifeline)

    def connect(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="ombm-bench-eventfd", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        os.read(self._lifeline.fd, 1)  # returns b"" once the child has exited
        os.eventfd_write(self.reply.fd, _POISON)

    def ping(self) -> None:
        os.eventfd_write(self.request.fd, 1)
        if os.eventfd_read(self.reply.fd) != 1:
            raise EOFError("the eventfd server exited")

    def serve_echo(self, control: Connection) -> None:
        while os.eventfd_read(self.request.fd) == 1:
            os.eventfd_write(self.reply.fd, 1)

    def shutdown(self) -> None:
        os.eventfd_write(self.request.fd, _POISON)

    def close(self) -> None:
        if self._watcher is not None:  # the child is gone, so the watcher has finished
            self._watcher.join(_JOIN_TIMEOUT_S)
        _close_fds(self.request, self.reply, self._lifeline)


class _MpPipe(_Link):
    """``multiprocessing.Pipe()``: ``send_bytes`` / ``recv_bytes``."""

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self._conn, self.child_conn = _CONTEXT.Pipe()

    def release_child_side(self) -> None:
        self.child_conn.close()

    def call(self, payload: bytes) -> bytes:
        self._conn.send_bytes(payload)
        return self._conn.recv_bytes()

    def push(self, message: bytes) -> None:
        self._conn.send_bytes(message)

    def serve_echo(self, control: Connection) -> None:
        _echo_connection(self.child_conn)

    def receive(self) -> bytes:
        return self.child_conn.recv_bytes()

    def close(self) -> None:
        self._conn.close()


def _echo_connection(conn: Connection) -> None:
    with suppress(EOFError):
        while True:
            conn.send_bytes(conn.recv_bytes())


class _MpListener(_Link):
    """``multiprocessing.connection`` ``Listener`` / ``Client`` over an ``AF_UNIX`` path."""

    _conn: Connection  # the client's, once connected

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.address = os.path.join(workdir, "mp.sock")

    def bind(self) -> None:
        self._listener = Listener(self.address, family="AF_UNIX")

    def serve_echo(self, control: Connection) -> None:
        with self._listener, self._listener.accept() as conn:
            _echo_connection(conn)

    def connect(self) -> None:
        self._conn = Client(self.address, family="AF_UNIX")

    def call(self, payload: bytes) -> bytes:
        self._conn.send_bytes(payload)
        return self._conn.recv_bytes()

    def close(self) -> None:
        conn: Connection | None = getattr(self, "_conn", None)  # none before connect()
        if conn is not None:
            conn.close()


class _Zmq(_Link):
    """A pyzmq socket pair over ``ipc://``; the child binds, the parent connects."""

    requires = ("zmq",)
    child_type = parent_type = ""  # zmq socket type names, set by each subclass
    child_timeout_ms = _IDLE_POLL_MS

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.endpoint = "ipc://" + os.path.join(workdir, "zmq.sock")
        self._context: Any = None

    def _open(self, kind: str, timeout_ms: int) -> Any:
        import zmq

        self._again = zmq.Again
        self._context = zmq.Context()
        self._socket = self._context.socket(getattr(zmq, kind))
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self._socket.setsockopt(zmq.SNDTIMEO, int(_OP_TIMEOUT_S * 1000))
        return self._socket

    def _send(self, data: bytes, copy: bool) -> None:
        try:
            self._socket.send(data, copy=copy)
        except self._again as exc:
            raise TimeoutError(f"zmq could not send within {_OP_TIMEOUT_S:.0f} s") from exc

    def _receive(self, copy: bool) -> Any:
        try:
            return self._socket.recv(copy=copy)
        except self._again as exc:
            raise TimeoutError(f"no zmq message within {_OP_TIMEOUT_S:.0f} s") from exc

    def bind(self) -> None:
        self._open(self.child_type, self.child_timeout_ms).bind(self.endpoint)

    def connect(self) -> None:
        self._open(self.parent_type, int(_OP_TIMEOUT_S * 1000)).connect(self.endpoint)

    def close(self) -> None:
        if self._context is not None:
            self._context.destroy(linger=0)  # closes its sockets, then terminates
            self._context = None


class _ZmqReqRep(_Zmq):
    """REQ (parent) / REP (child); the child echoes the received frame without copying it."""

    child_type, parent_type = "REP", "REQ"

    def call(self, payload: bytes) -> bytes:
        self._send(payload, copy=True)
        reply: bytes = self._receive(copy=True)
        return reply

    def serve_echo(self, control: Connection) -> None:
        try:
            while True:
                try:
                    request = self._socket.recv(copy=False)
                except self._again:  # idle: has the parent said "stop"?
                    if control.poll():
                        return
                    continue
                self._socket.send(request, copy=False)
        finally:
            self.close()


class _ZmqPushPull(_Zmq):
    """PUSH (parent, zero-copy sends) / PULL (child, zero-copy receives)."""

    child_type, parent_type = "PULL", "PUSH"
    child_timeout_ms = int(_OP_TIMEOUT_S * 1000)

    def push(self, message: bytes) -> None:
        self._send(message, copy=False)

    def receive(self) -> memoryview:
        view: memoryview = self._receive(copy=False).buffer
        return view


_GRPC_SERVICE, _GRPC_METHOD = "ombm.cli.bench.Peer", "Echo"


def _grpc_echo(request: bytes, context: Any) -> bytes:
    return request


class _Grpc(_Link):
    """gRPC unary calls over a ``unix:`` socket with a generic bytes handler (no protoc)."""

    requires = ("grpc",)

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.target = "unix:" + os.path.join(workdir, "grpc.sock")
        self._channel: Any = None

    def bind(self) -> None:
        from concurrent import futures

        import grpc

        handler = grpc.method_handlers_generic_handler(
            _GRPC_SERVICE, {_GRPC_METHOD: grpc.unary_unary_rpc_method_handler(_grpc_echo)}
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(self.target)
        self._server.start()

    def serve_echo(self, control: Connection) -> None:
        with suppress(EOFError):
            control.recv()  # the server's own threads answer; this one waits for "stop"
        self._server.stop(None).wait(_JOIN_TIMEOUT_S)

    def connect(self) -> None:
        import grpc

        self._channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(self._channel).result(timeout=_START_TIMEOUT_S)
        self._echo = self._channel.unary_unary(f"/{_GRPC_SERVICE}/{_GRPC_METHOD}")

    def call(self, payload: bytes) -> bytes:
        reply: bytes = self._echo(payload, timeout=_OP_TIMEOUT_S)
        return reply

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class _Iceoryx2(_Link):
    """iceoryx2 request/response on byte slices, both sides busy-polling.

    Each empty poll yields the CPU (``sched_yield``): without it a client and server sharing one
    CPU each spin out a whole scheduler tick, about 8 ms per round trip on this VM. Its shared
    memory is named with a per-run prefix, so what a killed child leaves behind is found and
    removed.
    """

    requires = ("iceoryx2",)

    @classmethod
    def missing(cls) -> str | None:
        return super().missing() or iceoryx2_without_request_response()

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.prefix = f"ombm{os.getpid()}x{secrets.token_hex(4)}_"
        self.service_name = f"ombm/bench/{secrets.token_hex(4)}"

    def _open_port(self, role: str) -> None:
        self._node, self._service = iceoryx2_request_response(self.workdir, self.prefix, self.service_name)
        self._port = iceoryx2_port(self._service, role, max(self.size, 1))

    def _release(self) -> None:
        port = getattr(self, "_port", None)
        if port is not None:
            port.delete()
        self._port = self._service = self._node = None

    def bind(self) -> None:
        self._open_port("server")

    def serve_echo(self, control: Connection) -> None:
        server, idle = self._port, 0
        try:
            while True:
                request = server.receive()
                if request is None:
                    os.sched_yield()
                    idle += 1
                    if idle % _SPINS_PER_CHECK == 0 and control.poll():
                        return
                    continue
                _iceoryx2_echo(request)
                del request  # end the request now, not when the next poll replaces it
        finally:
            self._release()

    def connect(self) -> None:
        self._open_port("client")

    def call(self, payload: bytes) -> bytes:
        response = self._response(payload)
        return ctypes.string_at(response.payload_ptr, response.payload().len())

    def _response(self, payload: bytes) -> Any:
        """The response to a request carrying ``payload`` (busy-polled for)."""
        pending = self._send_request(payload)
        deadline, spins = time.monotonic() + _OP_TIMEOUT_S, 0
        while (response := pending.receive()) is None:
            os.sched_yield()
            spins += 1
            if spins % _SPINS_PER_CHECK == 0 and time.monotonic() > deadline:
                del pending  # the error's traceback must not keep iceoryx2 alive past close()
                raise TimeoutError(f"no iceoryx2 response within {_OP_TIMEOUT_S:.0f} s")
        return response

    def _send_request(self, payload: bytes) -> Any:
        request = self._port.loan_slice_uninit(len(payload))
        ctypes.memmove(request.payload_ptr, payload, len(payload))
        return request.assume_init().send()

    def shutdown(self) -> None:
        """The child stops on the control pipe's "stop"; this side is freed once it is gone."""

    def close(self) -> None:
        self._release()
        remove_shm_by_prefix(self.prefix)


class _Iceoryx2Views(_Iceoryx2):
    """iceoryx2 request/response as :class:`_Iceoryx2`, but the client is lent the response in place
    (no copy out): a read-only memoryview of the loaned sample's payload, which keeps the sample
    (as ombm's views keep their span) until the view and what was derived from it are gone."""

    def call(self, payload: bytes) -> Any:
        response = self._response(payload)
        data = (ctypes.c_ubyte * response.payload().len()).from_address(response.payload_ptr)
        data.sample = response  # (kept while the view lives)
        return memoryview(data).toreadonly().cast("B")


def iceoryx2_without_request_response() -> str | None:
    """Why the installed iceoryx2 cannot serve request/response (some Python bindings lack it), or None."""
    if hasattr(importlib.import_module("iceoryx2"), "Client"):
        return None
    return "this iceoryx2 has no request/response in its Python binding"


def iceoryx2_request_response(workdir: str, prefix: str, service_name: str,
                              limits: Callable[[Any], Any] = lambda builder: builder) -> tuple[Any, Any]:
    """A node whose shared memory is named ``workdir``/``prefix``… and its request/response service
    on byte slices, opened or created (``limits`` may set the builder's maxima first)."""
    import iceoryx2 as iox2

    config = iox2.config.default()
    config.global_cfg.root_path = iox2.Path.new(workdir + "/")
    config.global_cfg.prefix = iox2.FileName.new(prefix)
    node = iox2.NodeBuilder.new().config(config).create(iox2.ServiceType.Ipc)
    bytes_slice = iox2.Slice[ctypes.c_uint8]
    builder = node.service_builder(iox2.ServiceName.new(service_name)).request_response(bytes_slice, bytes_slice)
    return node, limits(builder).open_or_create()


def iceoryx2_port(service: Any, role: str, max_slice_len: int) -> Any:
    """The service's ``role`` ("server" or "client") port, its slices growing by powers of two."""
    import iceoryx2 as iox2

    builder = getattr(service, f"{role}_builder")().initial_max_slice_len(max_slice_len)
    return builder.allocation_strategy(iox2.AllocationStrategy.PowerOfTwo).create()


def remove_shm_by_prefix(prefix: str) -> None:
    """Remove what a run's iceoryx2 left in /dev/shm (its objects are named with the run's prefix)."""
    with suppress(FileNotFoundError):
        for name in os.listdir("/dev/shm"):
            if name.startswith(prefix):
                with suppress(FileNotFoundError):
                    os.unlink(os.path.join("/dev/shm", name))


def _iceoryx2_echo(request: Any) -> None:
    size = request.payload().len()
    response = request.loan_slice_uninit(size)
    ctypes.memmove(response.payload_ptr, request.payload_ptr, size)
    response.assume_init().send()


# every peer, by kind: (name, link), in the order its rows are printed
_PEERS: dict[str, tuple[tuple[str, type[_Link]], ...]] = {
    "signal": (("os.pipe", _PipeToken), ("socketpair", _SocketToken), ("eventfd", _Eventfd)),
    "rpc": (("os.pipe", _PipeFrames), ("os.pipe + msgpack", _PipeMsgpack), ("socketpair", _SocketFrames), ("multiprocessing.Pipe", _MpPipe),
            ("mp.connection", _MpListener), ("pyzmq ipc REQ/REP", _ZmqReqRep), ("gRPC unix", _Grpc),
            ("iceoryx2 req/resp", _Iceoryx2), ("iceoryx2 req/resp (views)", _Iceoryx2Views)),
    "stream": (("multiprocessing.Pipe", _MpPipe), ("socketpair", _SocketStream), ("pyzmq ipc PUSH/PULL", _ZmqPushPull)),
}
