"""The load suite: one server under many clients and under pipelined calls, against its peers (issue 13).

Measures, in one run, null calls (nothing each way; ombm's ``null()``) against one server:

- **synchronous load**: 1, 2, 4, 8 and 16 client processes, each making one call at a time;
  aggregate calls/s and p50/p99 latency over every call of every client;
- **pipelining**: one client with 1 … 64 calls outstanding (and its synchronous calls, the
  baseline), calls/s and latency from send to result; for ombm three ways (``call_async``
  futures, the asyncio client with n tasks, n threads sharing one client);

for ombm and, side by side, the servers a Python user would write instead (``SYSTEMS``): a
selector-based Unix-socket server (length-prefixed frames), pyzmq ROUTER/DEALER, gRPC with an
asyncio server, ``multiprocessing.connection`` with a thread per client, and iceoryx2
request/response. A system whose library is missing, or that fails, is a row saying why.

Placement: under synchronous load nothing is pinned: a machine with 2 CPUs and 16 clients
shares them among 17 processes, and the scheduler places them as it would a user's (pinning
them would measure a placement no user makes). The pipelined client is pinned to CPU 0 and its
server to CPU 1, as in the RPC suite: one client and one server, the lab case.

Method: every client is a freshly spawned daemonic child (``core.start_child``); all connect and
warm up, then wait on one barrier with this process, and each calls for ``Plan.duration_s``,
timing every call. Aggregate calls/s = all calls / the measured window (first start to last
end, one clock: ``CLOCK_MONOTONIC``). Children are joined under a timeout and killed if they
linger; every socket lives in a temporary directory removed afterwards.
"""

from __future__ import annotations

import array
import asyncio
import collections
import importlib
import math
import multiprocessing
import os
import secrets
import selectors
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from ombm.cli.bench import core
from ombm.cli.bench.peers import (expect, iceoryx2_port, iceoryx2_request_response, iceoryx2_without_request_response,
                                  remove_shm_by_prefix)
from ombm.cli.bench.report import Target, md_table, percentile, ratio, times, us

_CONTEXT = multiprocessing.get_context("spawn")
_OP_TIMEOUT_S = 10.0
_BARRIER_TIMEOUT_S = 120.0  # every client started (16 interpreters on 2 CPUs) and warmed up
_SPINS_PER_CHECK = 4096
_HEADER = struct.Struct("<I")
SYNC = 0  # the depth that means synchronous calls (``call()``), the pipelining baseline
CLIENTS = (1, 2, 4, 8, 16)
DEPTHS = (SYNC, 1, 2, 4, 8, 16, 32, 64)
PIPELINE_PLACEMENT = (0, 1)  # (client CPU, server CPU) of the pipelined client


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...]
    depths: tuple[int, ...]
    duration_s: float
    warmup: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls((1, 2), (SYNC, 1, 32), 0.2, 50)
        return cls(CLIENTS, DEPTHS, 1.0, 500)


@dataclass(frozen=True)
class Cell:
    """One measurement: aggregate calls/s and the latency of every call, µs; with synchronous load
    also the CPU time per call of the server and every client together, µs (NaN: not measured)."""

    calls: int
    window_s: float
    p50_us: float
    p99_us: float
    cpu_us: float = math.nan

    @property
    def rate(self) -> float:
        return self.calls / self.window_s if self.window_s > 0 else math.nan

    @classmethod
    def of(cls, results: list[tuple[Any, ...]], server_cpu_ns: float = math.nan) -> Cell:
        """From each client's (start ns, end ns, latencies as array('q') bytes of ns, CPU ns spent in
        its window) and the server's CPU ns over the window."""
        latencies: list[int] = []
        for raw in (r[2] for r in results):
            latencies.extend(array.array("q", raw))
        window_ns = max(r[1] for r in results) - min(r[0] for r in results)
        cpu_ns = server_cpu_ns + sum(r[3] for r in results)
        return cls(len(latencies), window_ns / 1e9, percentile(latencies, 0.5) / 1000,
                   percentile(latencies, 0.99) / 1000, cpu_ns / 1000 / len(latencies) if latencies else math.nan)


@dataclass
class LoadResult:
    plan: Plan
    sync: dict[str, dict[int, Cell]] = field(default_factory=dict)  # system -> clients -> cell
    pipelined: dict[str, dict[int, Cell]] = field(default_factory=dict)  # system -> depth -> cell
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why
    failed: dict[str, str] = field(default_factory=dict)  # "system, cell" -> why
    load_before: tuple[float, float, float] = (math.nan,) * 3
    load_after: tuple[float, float, float] = (math.nan,) * 3
    elapsed_s: float = 0.0


# --- the systems -------------------------------------------------------------------------------------


class _System:
    """One server and its client, pickled into the children. Server side: ``serve(control)`` sends
    ``("ready",)`` and serves until ``("stop",)`` (or EOF) on the control pipe (ombm: SIGTERM).
    Client side: ``connect``, ``call`` (one synchronous null call), ``submit`` / ``complete``
    (pipelined calls; ``complete`` takes what ``submit`` returned, oldest first), ``close``."""

    name = ""
    kernel = True  # a kernel-based server: the issue's targets compare ombm with the best of these
    requires: tuple[str, ...] = ()
    terminate = False  # stop the server with SIGTERM
    pipelined_only = False  # another way to pipeline on a system measured already: no synchronous load rows

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir

    @classmethod
    def missing(cls) -> str | None:
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{module} is not installed ({exc}): pip install 'ombm[bench]'"
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def serve(self, control: Connection) -> None:
        raise NotImplementedError

    def connect(self) -> None:
        raise NotImplementedError

    def call(self) -> None:
        raise NotImplementedError

    def submit(self) -> Any:
        raise NotImplementedError

    def complete(self, token: Any) -> None:
        raise NotImplementedError

    def outstanding(self, depth: int, duration_ns: int) -> tuple[int, int, bytes]:
        """``depth`` calls outstanding for ``duration_ns``: (start ns, end ns, latencies); by
        default ``submit``/``complete``, oldest first (:func:`_pipelined`)."""
        return _pipelined(self, depth, duration_ns)

    def close(self) -> None:
        pass

    def cleanup(self) -> None:
        """Parent, once every child is gone: remove what they may have left."""


class _Null:
    """The ombm service: the null call."""

    def null(self) -> None:
        return None


class _Ombm(_System):
    name, kernel, terminate = "ombm", False, True

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.service = f"bench-load-{os.getpid()}-{secrets.token_hex(4)}"

    def serve(self, control: Connection) -> None:
        import ombm

        def leave(signum: int, frame: Any) -> None:  # SIGTERM before serve_forever took it over
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, leave)
        server = ombm.rpc.Server(self.service, _Null())
        control.send(("ready",))
        server.serve_forever()  # until SIGTERM; then it releases its channels

    def connect(self) -> None:
        import ombm

        deadline = time.monotonic() + _OP_TIMEOUT_S
        while True:
            try:
                self._client = ombm.rpc.connect(self.service, timeout=_OP_TIMEOUT_S)
                return
            except ombm.ServiceNotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def call(self) -> None:
        self._client.call("null")

    def submit(self) -> Any:
        return self._client.call_async("null")

    def complete(self, token: Any) -> None:
        token.result()

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class _OmbmAsyncio(_Ombm):
    """ombm's asyncio client (``ombm.rpc.aio``): n calls outstanding are n tasks of one event loop,
    each awaiting one call at a time (its synchronous baseline: the same client's ``call()``)."""

    name, pipelined_only = "ombm asyncio", True

    def outstanding(self, depth: int, duration_ns: int) -> tuple[int, int, bytes]:
        return asyncio.run(self._outstanding(depth, duration_ns))

    async def _outstanding(self, depth: int, duration_ns: int) -> tuple[int, int, bytes]:
        from ombm.rpc.aio import AsyncClient

        client = AsyncClient(self._client)
        clock, latencies = time.perf_counter_ns, array.array("q")
        record = latencies.append
        start = clock()
        end = start + duration_ns

        async def calls() -> int:
            now = clock()
            while now < end:
                await client.call("null")
                then = clock()
                record(then - now)
                now = then
            return now

        ends = await asyncio.gather(*(calls() for _ in range(depth)))
        return start, max(ends), latencies.tobytes()


class _OmbmThreads(_Ombm):
    """n threads sharing one ombm client, each making synchronous calls (``call()``): n outstanding."""

    name, pipelined_only = "ombm threads", True

    def outstanding(self, depth: int, duration_ns: int) -> tuple[int, int, bytes]:
        clock, call = time.perf_counter_ns, self._client.call
        found: list[tuple[int, array.array[int]]] = []
        start = clock()
        end = start + duration_ns

        def calls() -> None:
            latencies = array.array("q")
            record = latencies.append
            now = clock()
            while now < end:
                call("null")
                then = clock()
                record(then - now)
                now = then
            found.append((now, latencies))

        threads = [threading.Thread(target=calls, daemon=True) for _ in range(depth)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(duration_ns / 1e9 + _OP_TIMEOUT_S)
        if len(found) != depth:
            raise TimeoutError(f"{depth - len(found)} of {depth} calling threads did not finish")
        return start, max(now for now, _ in found), b"".join(latencies.tobytes() for _, latencies in found)


class _Frames:
    """A client's length-prefixed frames on a byte stream, read through one buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._buffer = sock, bytearray()

    def read(self) -> bytes:
        buffer, recv = self._buffer, self._sock.recv
        while len(buffer) < _HEADER.size or len(buffer) < _HEADER.size + _HEADER.unpack_from(buffer)[0]:
            data = recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            buffer += data
        end = _HEADER.size + _HEADER.unpack_from(buffer)[0]
        frame = bytes(buffer[_HEADER.size:end])
        del buffer[:end]
        return frame


_EMPTY_FRAME = _HEADER.pack(0)


class _Selector(_System):
    """A single-threaded ``selectors`` server on an ``AF_UNIX`` socket echoing length-prefixed frames."""

    name = "selector Unix socket"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.path = os.path.join(workdir, "selector.sock")

    def serve(self, control: Connection) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, selectors.DefaultSelector() as chooser:
            listener.bind(self.path)
            listener.listen(64)
            listener.setblocking(False)
            chooser.register(listener, selectors.EVENT_READ, "accept")
            chooser.register(control, selectors.EVENT_READ, "control")
            control.send(("ready",))
            while True:
                for key, events in chooser.select():
                    if key.data == "control":
                        return
                    if key.data == "accept":
                        connection, _ = listener.accept()
                        connection.setblocking(False)
                        chooser.register(connection, selectors.EVENT_READ, _Connection(connection))
                    else:
                        key.data.ready(chooser, events)

    def connect(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(self.path)
        self._frames = _Frames(self._sock)

    def call(self) -> None:
        self._sock.sendall(_EMPTY_FRAME)
        self._frames.read()

    def submit(self) -> None:
        self._sock.sendall(_EMPTY_FRAME)

    def complete(self, token: Any) -> None:
        self._frames.read()

    def close(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()


class _Connection:
    """The selector server's state of one client: bytes in, replies not yet written."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.incoming, self.outgoing = sock, bytearray(), bytearray()

    def ready(self, chooser: selectors.BaseSelector, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = self.sock.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                chooser.unregister(self.sock)
                self.sock.close()
                return
            self.incoming += data
            self._answer()
        self._flush(chooser)

    def _answer(self) -> None:
        incoming, start = self.incoming, 0
        while len(incoming) - start >= _HEADER.size:
            end = start + _HEADER.size + _HEADER.unpack_from(incoming, start)[0]
            if end > len(incoming):
                break
            self.outgoing += incoming[start:end]  # the echo: the same frame back
            start = end
        del incoming[:start]

    def _flush(self, chooser: selectors.BaseSelector) -> None:
        if self.outgoing:
            try:
                sent = self.sock.send(self.outgoing)
            except BlockingIOError:
                sent = 0
            del self.outgoing[:sent]
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
        if chooser.get_key(self.sock).events != wanted:
            chooser.modify(self.sock, wanted, self)


class _Zmq(_System):
    """pyzmq: a ROUTER server (one thread, draining every pending request per wake-up), DEALER clients."""

    name, requires = "pyzmq ROUTER/DEALER", ("zmq",)

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.endpoint = "ipc://" + os.path.join(workdir, "zmq.sock")

    def serve(self, control: Connection) -> None:
        import zmq

        context = zmq.Context()
        try:
            router = context.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.bind(self.endpoint)
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(control.fileno(), zmq.POLLIN)
            control.send(("ready",))
            while True:
                events = dict(poller.poll())
                if control.fileno() in events:
                    return
                with suppress(zmq.Again):
                    while True:
                        router.send_multipart(router.recv_multipart(zmq.NOBLOCK, copy=False), copy=False)
        finally:
            context.destroy(linger=0)

    def connect(self) -> None:
        import zmq

        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVTIMEO, int(_OP_TIMEOUT_S * 1000))
        self._socket.connect(self.endpoint)

    def call(self) -> None:
        self._socket.send(b"")
        self._socket.recv()

    def submit(self) -> None:
        self._socket.send(b"")

    def complete(self, token: Any) -> None:
        self._socket.recv()

    def close(self) -> None:
        context = getattr(self, "_context", None)
        if context is not None:
            context.destroy(linger=0)


_GRPC_PATH = "/ombm.cli.bench.Load/Echo"


async def _grpc_echo(request: bytes, context: Any) -> bytes:
    return request


class _Grpc(_System):
    """gRPC: a ``grpc.aio`` server (asyncio) over a ``unix:`` socket; synchronous clients (``future`` to pipeline)."""

    name, requires = "gRPC (asyncio server)", ("grpc",)

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.target = "unix:" + os.path.join(workdir, "grpc.sock")

    def serve(self, control: Connection) -> None:
        asyncio.run(self._serve(control))

    async def _serve(self, control: Connection) -> None:
        import grpc

        service, method = _GRPC_PATH.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(_grpc_echo)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(self.target)
        await server.start()
        control.send(("ready",))
        with suppress(EOFError):
            await asyncio.get_running_loop().run_in_executor(None, control.recv)
        await server.stop(None)

    def connect(self) -> None:
        import grpc

        self._channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(self._channel).result(timeout=_OP_TIMEOUT_S)
        self._echo = self._channel.unary_unary(_GRPC_PATH)

    def call(self) -> None:
        self._echo(b"", timeout=_OP_TIMEOUT_S)

    def submit(self) -> Any:
        return self._echo.future(b"", timeout=_OP_TIMEOUT_S)

    def complete(self, token: Any) -> None:
        token.result()

    def close(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()


class _MpConnection(_System):
    """``multiprocessing.connection``: a ``Listener`` on an ``AF_UNIX`` path, a thread per client."""

    name = "mp.connection, thread per client"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.path = os.path.join(workdir, "mp.sock")

    def serve(self, control: Connection) -> None:
        import threading
        from multiprocessing.connection import Listener

        listener = Listener(self.path, family="AF_UNIX")

        def accept() -> None:
            with suppress(OSError):
                while True:
                    conn = listener.accept()
                    threading.Thread(target=_echo_bytes, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        control.send(("ready",))
        with suppress(EOFError):
            control.recv()
        listener.close()  # the threads are daemons: they end with this process

    def connect(self) -> None:
        from multiprocessing.connection import Client

        self._conn = Client(self.path, family="AF_UNIX")

    def call(self) -> None:
        self._conn.send_bytes(b"")
        self._conn.recv_bytes()

    def submit(self) -> None:
        self._conn.send_bytes(b"")

    def complete(self, token: Any) -> None:
        self._conn.recv_bytes()

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


def _echo_bytes(conn: Connection) -> None:
    with suppress(EOFError, OSError), conn:
        while True:
            conn.send_bytes(conn.recv_bytes())


class _Iceoryx2(_System):
    """iceoryx2 request/response on byte slices: one server port, a client port per process; every
    empty poll yields the CPU (``sched_yield``), as in the RPC suite's iceoryx2 peer."""

    name, kernel, requires = "iceoryx2 req/resp", False, ("iceoryx2",)
    terminate = True  # once a client has come and gone its server may not return from its port's
    # clean-up; SIGTERM ends it, and ``cleanup`` removes its shared memory by the run's prefix

    @classmethod
    def missing(cls) -> str | None:
        return super().missing() or iceoryx2_without_request_response()

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.prefix = f"ombm{os.getpid()}l{secrets.token_hex(4)}_"
        self.service_name = f"ombm/load/{secrets.token_hex(4)}"

    def _port(self, role: str) -> Any:
        def limits(builder: Any) -> Any:  # every client process, and every call outstanding
            return (builder.max_clients(max(CLIENTS) + 2).max_nodes(max(CLIENTS) + 4)
                    .max_active_requests_per_client(max(DEPTHS) + 2).max_loaned_requests(max(DEPTHS) + 2))

        self._node, self._service = iceoryx2_request_response(self.workdir, self.prefix, self.service_name, limits)
        return iceoryx2_port(self._service, role, 1)

    def serve(self, control: Connection) -> None:
        from ombm.cli.bench.peers import _iceoryx2_echo

        server, polls = self._port("server"), 0
        control.send(("ready",))
        try:
            while True:
                polls += 1
                if polls % _SPINS_PER_CHECK == 0 and control.poll():
                    return
                request = server.receive()
                if request is None:
                    os.sched_yield()
                    continue
                _iceoryx2_echo(request)
                del request
        finally:
            server.delete()

    def connect(self) -> None:
        self._client = self._port("client")

    def call(self) -> None:
        self.complete(self.submit())

    def submit(self) -> Any:
        return self._client.loan_slice_uninit(0).assume_init().send()

    def complete(self, token: Any) -> None:
        deadline, spins = time.monotonic() + _OP_TIMEOUT_S, 0
        while token.receive() is None:
            os.sched_yield()
            spins += 1
            if spins % _SPINS_PER_CHECK == 0 and time.monotonic() > deadline:
                raise TimeoutError(f"no iceoryx2 response within {_OP_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.delete()
        self._client = self._service = self._node = None

    def cleanup(self) -> None:
        remove_shm_by_prefix(self.prefix)


SYSTEMS: tuple[type[_System], ...] = (_Ombm, _OmbmAsyncio, _OmbmThreads, _Selector, _Zmq, _Grpc, _MpConnection,
                                      _Iceoryx2)


# --- the children -------------------------------------------------------------------------------------


def _server_main(control: Connection, system: _System) -> None:
    system.serve(control)


def _client_main(control: Connection, system: _System, barrier: Barrier | None, depths: tuple[int, ...],
                 duration_s: float, warmup: int) -> None:
    """Connect, warm up, say ready, wait at the barrier (if any); then for each depth call for
    ``duration_s`` and send ``("result", depth, start ns, end ns, latencies)``."""
    system.connect()
    try:
        for _ in range(warmup):
            system.call()
        control.send(("ready",))
        if barrier is not None:
            barrier.wait(_BARRIER_TIMEOUT_S)
        for depth in depths:
            duration_ns = int(duration_s * 1e9)
            cpu = time.process_time_ns()
            found = _synchronous(system, depth, duration_ns) if depth == SYNC else system.outstanding(depth, duration_ns)
            control.send(("result", depth, *found, time.process_time_ns() - cpu))
    finally:
        system.close()


def _synchronous(system: _System, depth: int, duration_ns: int) -> tuple[int, int, bytes]:
    clock, call, latencies = time.perf_counter_ns, system.call, array.array("q")
    record = latencies.append
    start = now = clock()
    end = start + duration_ns
    while now < end:
        call()
        then = clock()
        record(then - now)
        now = then
    return start, now, latencies.tobytes()


def _pipelined(system: _System, depth: int, duration_ns: int) -> tuple[int, int, bytes]:
    clock, submit, complete, latencies = time.perf_counter_ns, system.submit, system.complete, array.array("q")
    record = latencies.append
    outstanding: collections.deque[tuple[int, Any]] = collections.deque()
    start = now = clock()
    end = start + duration_ns
    for _ in range(depth):
        outstanding.append((clock(), submit()))
    while now < end:
        sent, token = outstanding.popleft()
        complete(token)
        now = clock()
        record(now - sent)
        outstanding.append((now, submit()))
    for _, token in outstanding:  # drained after the window: not counted
        complete(token)
    return start, now, latencies.tobytes()


# --- measurements -------------------------------------------------------------------------------------


@contextmanager
def _server(system_type: type[_System], cpu: int | None, budget_s: float) -> Iterator[tuple[_System, int]]:
    """The server child: (the system, the child's pid)."""
    with tempfile.TemporaryDirectory(prefix="ombm-load-") as workdir:
        system = system_type(workdir)
        try:
            with core.child(_server_main, system, cpu=cpu, lifetime_s=budget_s,
                            terminate=system.terminate) as (process, _):
                yield system, process.pid or 0
        finally:
            system.cleanup()


def _cpu_ns(pid: int) -> float:
    """CPU time (user + system, every thread) of process ``pid`` so far, ns (a clock tick's
    resolution; NaN if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) * 1e9 / os.sysconf("SC_CLK_TCK")


def synchronous_load(system_type: type[_System], clients: int, plan: Plan) -> Cell:
    """``clients`` client processes (unpinned) against one server (unpinned), after one barrier."""
    budget = 60 + plan.duration_s + clients * 5
    barrier = _CONTEXT.Barrier(clients + 1)
    with _server(system_type, None, budget) as (system, server_pid), ExitStack() as stack:
        controls = []
        for _ in range(clients):
            process, control = core.start_child(_client_main, system, barrier, (SYNC,), plan.duration_s, plan.warmup,
                                                cpu=None, lifetime_s=budget)
            stack.callback(core.stop_child, process, control)
            controls.append(control)
        for control in controls:
            expect(control, "ready", _BARRIER_TIMEOUT_S, "client")
        server_cpu = _cpu_ns(server_pid)
        barrier.wait(_BARRIER_TIMEOUT_S)
        results = [expect(control, "result", plan.duration_s + 60, "client")[2:] for control in controls]
        server_cpu = _cpu_ns(server_pid) - server_cpu
    return Cell.of(results, server_cpu)


def pipelined(system_type: type[_System], plan: Plan) -> dict[int, Cell]:
    """One client on CPU 0, its server on CPU 1: each depth of ``plan.depths`` for ``plan.duration_s``."""
    client_cpu, server_cpu = PIPELINE_PLACEMENT
    budget = 60 + plan.duration_s * len(plan.depths) * 2
    with _server(system_type, server_cpu, budget) as (system, _):
        with core.child(_client_main, system, None, plan.depths, plan.duration_s, plan.warmup, cpu=client_cpu,
                        lifetime_s=budget) as (_, control):
            found = {}
            for depth in plan.depths:
                message = expect(control, "result", plan.duration_s + 60, "client")
                found[message[1]] = Cell.of([message[2:]])
    return found


# --- the suite ----------------------------------------------------------------------------------------


def run(progress: Callable[[int, int, str], None] | None = None, quick: bool = False) -> LoadResult:
    """Every system under synchronous load and pipelined; ``progress(done, total, what)`` before each step."""
    result = LoadResult(Plan.make(quick), load_before=os.getloadavg())
    steps: list[tuple[str, Callable[[], None]]] = []
    for system_type in SYSTEMS:
        reason = system_type.missing()
        if reason:
            result.skipped[system_type.name] = reason
            continue
        for clients in () if system_type.pipelined_only else result.plan.clients:
            steps.append((f"{system_type.name}, {clients} clients", _sync_step(result, system_type, clients)))
        steps.append((f"{system_type.name}, pipelined", _pipelined_step(result, system_type)))
    result.elapsed_s = core.run_steps(steps, progress)
    result.load_after = os.getloadavg()
    return result


def _failed(result: LoadResult, system_type: type[_System], what: str, exc: Exception) -> None:
    """A cell that failed says why; the system's other cells stand (each is its own server)."""
    result.failed[f"{system_type.name}, {what}"] = f"{type(exc).__name__}: {exc}"


def _sync_step(result: LoadResult, system_type: type[_System], clients: int) -> Callable[[], None]:
    def step() -> None:
        if system_type.name in result.skipped:
            return
        try:
            cell = synchronous_load(system_type, clients, result.plan)
        except Exception as exc:  # a system that fails is reported, never given a number
            _failed(result, system_type, f"{clients} clients", exc)
            return
        result.sync.setdefault(system_type.name, {})[clients] = cell

    return step


def _pipelined_step(result: LoadResult, system_type: type[_System]) -> Callable[[], None]:
    def step() -> None:
        if system_type.name in result.skipped:
            return
        try:
            result.pipelined[system_type.name] = pipelined(system_type, result.plan)
        except Exception as exc:  # a system that fails is reported, never given a number
            _failed(result, system_type, "pipelined", exc)

    return step


# --- report -------------------------------------------------------------------------------------------


def _rate(table: dict[str, dict[int, Cell]], system: str, key: int) -> float:
    cell = table.get(system, {}).get(key)
    return cell.rate if cell else math.nan


def best_kernel_server(result: LoadResult, clients: int) -> tuple[str, float]:
    """The kernel-based server with the most calls/s at ``clients`` clients: (name, calls/s)."""
    found = [(s.name, _rate(result.sync, s.name, clients)) for s in SYSTEMS if s.kernel]
    found = [(name, value) for name, value in found if not math.isnan(value)]
    return max(found, key=lambda item: item[1]) if found else ("—", math.nan)


def issue13_targets(result: LoadResult) -> list[Target]:
    """Issue 13's load targets: no collapse under many clients, pipelining that pays."""
    found = []
    one = _rate(result.sync, "ombm", 1)
    for clients in result.plan.clients:
        if clients == 1:
            continue
        ombm = _rate(result.sync, "ombm", clients)
        name, best = best_kernel_server(result, clients)
        found.append(Target(f"{clients} sync clients: ombm ÷ best kernel-based server", 2, ratio(ombm, best),
                            "×", at_most=False,
                            note=f"aggregate calls/s, same run ({name})"))
        found.append(Target(f"{clients} sync clients: ombm ÷ ombm with 1 client", 0.8, ombm / one, "×",
                            at_most=False, note="aggregate calls/s, same run: no collapse"))
    if 32 in result.plan.depths:
        found.append(Target("1 client, 32 outstanding ÷ its synchronous calls", 3,
                            _rate(result.pipelined, "ombm", 32) / _rate(result.pipelined, "ombm", SYNC), "×",
                            at_most=False, note="calls/s, `call_async` vs `call`, cross-cpu, same run"))
    return found


def _load(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _cell(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    return f"{cell.rate / 1e3:,.1f} k ({us(cell.p50_us)} / {us(cell.p99_us)})"


def _depth(depth: int) -> str:
    return "sync" if depth == SYNC else str(depth)


def markdown(result: LoadResult) -> str:
    plan = result.plan
    parts = ["## Load: many clients, pipelined calls (issue 13)", "",
             f"Load average (1, 5, 15 min) when the suite started: {_load(result.load_before)}; when it ended: "
             f"{_load(result.load_after)}. Null calls (nothing each way; ombm `null()`, the peers an empty "
             f"echo). Every client is its own spawned process; they connect, make {plan.warmup} warm-up calls, "
             f"meet at one barrier, then each calls for {plan.duration_s:g} s timing every call. Cells: "
             "aggregate calls/s = all calls ÷ the window from the first client's start to the last one's end, "
             "thousands (k); in brackets p50 / p99 µs over every call of every client.", "",
             "### Synchronous clients (nothing pinned: the clients and the server share the machine's CPUs)", ""]
    rows = [[s.name, *(_cell(result.sync.get(s.name, {}).get(n)) for n in plan.clients)] for s in SYSTEMS
            if s.name in result.sync]
    parts += [md_table(["system", *(f"{n} client{'s' if n > 1 else ''}" for n in plan.clients)], rows), ""]
    rows = []
    for n in plan.clients:
        name, best = best_kernel_server(result, n)
        ombm = _rate(result.sync, "ombm", n)
        cells = [result.sync.get(system, {}).get(n) for system in ("ombm", name)]
        rows.append([str(n), times(ratio(ombm, best)),
                     name, times(ombm / _rate(result.sync, "ombm", 1)),
                     *(us(cell.cpu_us) if cell is not None else "—" for cell in cells)])
    parts += ["Ratios of aggregate calls/s, same run; and the CPU time per call of the server and every client "
              "together (µs: their CPU time over the calls' window, spinning included, ÷ the calls):", "",
              md_table(["clients", "ombm ÷ best kernel-based server", "that server", "ombm ÷ ombm, 1 client",
                        "ombm CPU per call, µs", "that server's CPU per call, µs"], rows),
              ""]
    parts += [f"### One client, calls outstanding (client on CPU {PIPELINE_PLACEMENT[0]}, server on CPU "
              f"{PIPELINE_PLACEMENT[1]})", "",
              "*sync*: one call at a time (ombm `call()`); *n*: n calls outstanding (ombm `call_async`, "
              "ombm asyncio: n tasks each awaiting a call, ombm threads: n threads sharing one client each "
              "calling `call()`, pyzmq DEALER sends, gRPC `future()`, a socket or connection written n frames "
              "ahead, iceoryx2 n pending responses); latency from send to result. Cells: calls/s (p50 / p99 µs).",
              ""]
    rows = [[s.name, *(_cell(result.pipelined.get(s.name, {}).get(d)) for d in plan.depths)] for s in SYSTEMS
            if s.name in result.pipelined]
    parts += [md_table(["system", *(_depth(d) for d in plan.depths)], rows), ""]
    deepest = [d for d in plan.depths if d != SYNC]
    rows = [[s.name, *(times(_rate(result.pipelined, s.name, d) / _rate(result.pipelined, s.name, SYNC))
                       for d in deepest)] for s in SYSTEMS if s.name in result.pipelined]
    parts += ["Pipelined calls/s ÷ the same client's synchronous calls/s:", "",
              md_table(["system", *(str(d) for d in deepest)], rows), ""]
    for name, why in result.skipped.items():
        parts.append(f"*{name} skipped: {why}*\n")
    for name, why in result.failed.items():
        parts.append(f"*{name}: failed, no number: {why}*\n")
    parts += ["The targets of issue 13 measured here are in *Targets (issue 13)* below.", ""]
    return "\n".join(parts) + "\n"
