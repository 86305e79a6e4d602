"""The net suite: calls and streams across two hosts, ombm beside the peers, in one run (issue 12).

The two hosts are network namespaces on one veth pair (:mod:`ombm.cli.bench.netns`), made by
the suite itself (root only) and removed at its end. The client is this thread, moved into host
*a*; every server is a freshly spawned child that moves itself into host *b* (``setns``). Both
are pinned: *cross-cpu* (client CPU 0, server CPU 1) and, for round trips, *same-cpu* (both on
CPU 0), as in the other suites: on this VM a process asleep on the other, idle CPU wakes late.
Measured across the link:

- the round trip of a null call, a 32-byte and a 1 KiB echo: a raw UDP echo (the floor: blocking
  ``sendto``/``recvfrom`` on both sides, the simplest thing a Python user would write), pyzmq
  REQ/REP over TCP and gRPC unary over TCP (a generic bytes handler, no protoc); the links are
  ``peers``' own, pointed at an address in host *b* instead of a local socket;
- one-way throughput of 64 KiB and 1 MiB messages over a plain TCP socket (``sendall``; the
  reader ``recv_into``'s each message whole), timed from the first send to the reader's
  acknowledgement of the last, the best of ``Plan.repeats``;
- ombm's rows: calls through the bridge, Stream throughput, the share of a call spent in the
  bridge, from :func:`ombm_rows` (the hook the bridge fills in: see there).

A peer whose library is missing (pyzmq and grpcio come with the ``[bench]`` extra) is a row that
says why, never a number.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import ClassVar

from ombm.cli.bench import netns, peers
from ombm.cli.bench.affinity import PLACEMENTS
from ombm.cli.bench.netns import Host
from ombm.cli.bench.report import Latency, md_table, ratio, times, us

SIZES = (0, 32, 1024)  # call payloads: null, 32 B, 1 KiB
STREAM_SIZES = (64 << 10, 1 << 20)
STREAM_PLACEMENT = "cross-cpu"
NOT_BUILT = "not built yet: the bridge (ombm.net) is not importable"
_FIRST_PORT = 20_000  # servers listen in host b, a fresh namespace: every port is free
_UDP_MAX = 65_507
_IDLE_POLL_S = 0.1  # a UDP server blocked in recvfrom checks for "stop" this often

Progress = Callable[..., None]


@dataclass(frozen=True)
class Plan:
    """Iteration counts of one run."""

    round_trips: int
    warmup: int
    stream_bytes: int
    repeats: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(300, 50, 16 << 20, 1)
        return cls(20_000, 1_000, 512 << 20, 3)


# --- rows ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTrip:
    """Call round trips of one system in one placement (a key of ``PLACEMENTS``), by payload bytes
    (``SIZES``); none, with a note, if skipped."""

    system: str
    placement: str
    latencies: Mapping[int, Latency] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Throughput:
    """One-way bytes/s of one system, by message bytes (``STREAM_SIZES``); none if skipped."""

    system: str
    rates: Mapping[int, float] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class BridgeShare:
    """Of an ombm call of ``payload_bytes`` across the link (median ``call_us``), the time spent in
    the two bridges (``bridge_us``); NaN (and a note) if not measured."""

    payload_bytes: int | None
    call_us: float = float("nan")
    bridge_us: float = float("nan")
    note: str = ""


Row = RoundTrip | Throughput | BridgeShare


@dataclass
class NetResult:
    plan: Plan
    rows: list[Row] = field(default_factory=list)
    elapsed_s: float = 0.0
    load: tuple[float, float] = (float("nan"), float("nan"))  # 1-minute load average at start, end


# --- ombm across the link: the hook the bridge fills in ------------------------------------------


def ombm_rows(client: Host, server: Host, plan: Plan, progress: Progress) -> list[Row]:
    """ombm's rows, measured across the link from ``client`` (host a) to ``server`` (host b).

    The hook for the bridge (issue 12): replace the body below by the measurement, returning

    - ``RoundTrip("ombm rpc via bridge", placement, {0: Latency, 32: Latency, 1024: Latency})``
      for each placement in ``PLACEMENTS`` (client CPU, server CPU): the null, 32 B and 1 KiB
      call round trips through the two bridges (``Latency.of(samples_us)``);
    - ``Throughput("ombm Stream via bridge", {65536: bytes_per_s, 1048576: bytes_per_s})``;
    - one ``BridgeShare(payload_bytes, call_us, bridge_us)`` per size in ``SIZES``.

    ``plan`` gives the iteration counts the peers use (``round_trips``, ``warmup``,
    ``stream_bytes``, ``repeats``); call ``progress("what")`` between steps. How to run things
    there: ``host.popen([...])`` starts a process inside a host with that host's ombm folder
    (``OMBM_SHM_DIR``), e.g. its bridge; it is killed when the hosts close. ``with
    host.entered():`` moves this thread into the host, and a child spawned there
    (``core.child(..., env={"OMBM_SHM_DIR": host.shm_dir})``) starts there, with that folder.
    This process keeps its own ombm folder whatever namespace it is in: the ombm client and
    server must be such children, each on the side of its host's bridge.
    """
    if importlib.util.find_spec("ombm.net") is None:
        return _not_built(NOT_BUILT)
    port = 7000  # fresh namespaces: every port is free
    for host, other in ((client, server), (server, client)):
        exports = ["--service", _SERVICE] if host is server else []
        _start_bridge(host, f"{host.address}:{port}", "--insecure", "--peer", f"{other.address}:{port}", *exports)
    name = f"{_SERVICE}@{server.address}:{port}"
    rows: list[Row] = []
    shares: dict[int, BridgeShare] = {}
    for placement, (client_cpu, server_cpu) in PLACEMENTS.items():
        serving = _OmbmServer(server, server_cpu)
        try:
            latencies = {}
            for size in SIZES:
                progress(f"ombm rpc via bridge, {_size(size)}, {placement}")
                share = placement == STREAM_PLACEMENT  # the share: the bridges' busy time per call (warm-up included)
                before = _bridge_busy_ns(client) + _bridge_busy_ns(server) if share else 0
                latencies[size] = Latency.of(_ombm_calls(client, name, size, plan, client_cpu))
                if share:
                    busy_us = (_bridge_busy_ns(client) + _bridge_busy_ns(server) - before) / 1e3
                    shares[size] = BridgeShare(size, latencies[size].median_us, busy_us / (plan.round_trips + plan.warmup))
            rows.append(RoundTrip("ombm rpc via bridge", placement, latencies))
        finally:
            serving.stop()
    rows.append(ombm_stream_row(client, server, plan, progress))
    rows += [shares.get(size, BridgeShare(size, note="not measured")) for size in SIZES]
    return rows


_SERVICE = "bench-echo"
_CLI = "import sys; from ombm.cli.main import main; sys.exit(main(sys.argv[1:]))"
_SERVER = f"""
import os, sys, ombm.rpc
os.sched_setaffinity(0, {{int(sys.argv[1])}})
class Echo:
    def echo(self, payload):
        return payload
server = ombm.rpc.Server({_SERVICE!r}, Echo())
print("ready", flush=True)
server.serve_forever()
"""
_CALLS = """
import json, os, sys, time, ombm.rpc
cpu, name, size, n, warmup = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
os.sched_setaffinity(0, {cpu})
payload, clock, samples = b"x" * size, time.perf_counter_ns, []
with ombm.rpc.connect(name, timeout=30.0) as client:
    echo = client.echo
    for _ in range(warmup):
        echo(payload)
    for _ in range(n):
        t = clock()
        echo(payload)
        samples.append((clock() - t) / 1e3)
print(json.dumps(samples))
"""
_STATUS = ("import json; from ombm.core import remote; stats = remote.raise_for(remote.request({'op': 'status'}, 10.0))"
           "['stats']; print(stats['busy_in_ns'] + stats['busy_out_ns'])")


# --- ombm Stream across the link ----------------------------------------------------------------

_STREAM_PORT = 7100  # the streams' own bridges, beside the calls' (port 7000)
_STREAM_WRITER = """
import json, os, sys, time
from ombm.channels.stream import Stream
cpu, name, size, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, {cpu})
stream = Stream.create(name, slot_bytes=size, slots=max(4, min(64, (8 << 20) // size)))
print("ready", flush=True)
source = memoryview(os.urandom(size + 65536))  # message i: a window of random bytes at a new place, so
stream.send(source[:size], timeout=120.0)        # no slot holds what it held (the bridge sends what changed)
stream.flush(timeout=120.0)            # the reader is there: timing starts
started = time.perf_counter()
for i in range(count):
    at = (i * 4099) % 65536
    stream.send(source[at:at + size], timeout=120.0)
stream.flush(timeout=120.0)            # every message acknowledged by the reader
print(json.dumps(size * count / (time.perf_counter() - started)), flush=True)
stream.close()
"""
_STREAM_READER = """
import os, sys
from ombm.channels.stream import Stream
cpu, name, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
with Stream.open(name, timeout=60.0) as stream:
    for _ in range(count + 1):         # the warm-up message, then the timed ones
        message = stream.recv(timeout=120.0)
        len(message), message[0]       # touched, like the peers' readers
"""


def ombm_stream_row(client: Host, server: Host, plan: Plan, progress: Progress) -> Throughput:
    """ombm Stream throughput across the link: the writer in ``client`` (host a, CPU 0), the reader in
    ``server`` (host b, CPU 1) opening ``name@HOST:PORT``, through a bridge in each host (their own
    ombm folders, beside the calls' bridges; the path's MTU: runs of full datagrams go in one send and
    arrive joined, UDP_SEGMENT and UDP_GRO, docs/net.md "Bulk"). Timed from the first message
    after a warm-up message (the reader is there) to the writer's ``flush`` (every message acknowledged),
    ``plan.stream_bytes`` per size, best of ``plan.repeats``; slots: the message size, 8 MiB of them
    (4 to 64). Messages are random bytes, each at a new offset of one random buffer: a slot never
    holds what it held before, so the bridges' deltas are whole messages, as for real data."""
    folders = {host: {"OMBM_SHM_DIR": os.path.join(host.shm_dir, "streams")} for host in (client, server)}
    names = [f"bench-stream-{size >> 10}k-{rep}" for size in STREAM_SIZES for rep in range(plan.repeats)]
    for host, other in ((client, server), (server, client)):
        os.makedirs(folders[host]["OMBM_SHM_DIR"], exist_ok=True)
        exports = [arg for name in names for arg in ("--export", name, "--export", name + ".credit")]
        _start_bridge(host, f"{host.address}:{_STREAM_PORT}", "--insecure", "--peer", f"{other.address}:{_STREAM_PORT}",
                      *(exports if host is client else []),
                      env=folders[host])
    (writer_cpu, reader_cpu), rates = PLACEMENTS[STREAM_PLACEMENT], {}
    for size in STREAM_SIZES:
        progress(f"ombm Stream via bridge, {_size(size)} messages")
        count, best = max(1, plan.stream_bytes // size), 0.0
        for rep in range(plan.repeats):
            name = f"bench-stream-{size >> 10}k-{rep}"
            writer = client.popen([sys.executable, "-c", _STREAM_WRITER, str(writer_cpu), name, str(size), str(count)],
                                  env=folders[client], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            _read_line(writer)
            reader = server.popen([sys.executable, "-c", _STREAM_READER, str(reader_cpu),
                                   f"{name}@{client.address}:{_STREAM_PORT}", str(count)], env=folders[server],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            best = max(best, float(json.loads(_read_line(writer, 600.0))))
            for process in (writer, reader):
                process.wait(60)
        rates[size] = best
    return Throughput("ombm Stream via bridge", rates,
                      note=f"writer CPU {writer_cpu}, reader CPU {reader_cpu}")


def _read_line(process: subprocess.Popen[str], timeout_s: float = 60.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    line = process.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"{process.args!r} did not start (exit status {process.poll()})")
    return line


def _start_bridge(host: Host, *args: str, env: Mapping[str, str] | None = None) -> None:
    """``ombm bridge ARGS`` inside ``host`` (killed when the hosts close), once it listens."""
    process = host.popen([sys.executable, "-c", _CLI, "bridge", "--listen", *args], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if not _read_line(process).startswith("ombm bridge: listening"):
        raise RuntimeError("the bridge did not start")


class _OmbmServer:
    """The echo service in ``host``, pinned to ``cpu``."""

    def __init__(self, host: Host, cpu: int) -> None:
        self.process = host.popen([sys.executable, "-c", _SERVER, str(cpu)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        _read_line(self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def _ombm_calls(host: Host, name: str, size: int, plan: Plan, cpu: int) -> list[float]:
    """The round trips (µs) of ``plan.round_trips`` calls of ``size`` bytes from a process in ``host``."""
    result = host.run(
        [sys.executable, "-c", _CALLS, str(cpu), name, str(size), str(plan.round_trips), str(plan.warmup)],
        timeout=600.0)
    if result.returncode != 0:
        raise RuntimeError(f"the ombm client failed: {result.stderr[-2000:]}")
    samples: list[float] = json.loads(result.stdout)
    return samples


def _bridge_busy_ns(host: Host) -> int:
    """The nanoseconds ``host``'s bridge has spent on datagrams in and out so far."""
    result = host.python(_STATUS)
    if result.returncode != 0:
        raise RuntimeError(f"the bridge's status: {result.stderr[-2000:]}")
    return int(result.stdout)


def _not_built(why: str) -> list[Row]:
    return [*(RoundTrip("ombm rpc via bridge", placement, note=why) for placement in PLACEMENTS),
            Throughput("ombm Stream via bridge", note=why), BridgeShare(None, note=why)]


# --- the peers' links, their servers in host b ----------------------------------------------------


class _Remote(peers._Link):
    """A peer's link whose server half runs in another host: ``bind`` (in the spawned child) first
    moves the child into that host. The host and a fresh port come from :func:`_aimed_at`."""

    server: ClassVar[tuple[str, str]] = ("", "")  # (namespace, address) of the server host
    ports: ClassVar[Iterator[int]] = iter(range(_FIRST_PORT, 65_536))

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.netns, self.address = _Remote.server
        self.port = next(_Remote.ports)  # one per measurement: no socket waits for an old one to go

    def bind(self) -> None:
        netns.enter(self.netns)
        super().bind()


@contextmanager
def _aimed_at(server: Host) -> Iterator[None]:
    previous = _Remote.server
    _Remote.server = (server.netns, server.address)
    try:
        yield
    finally:
        _Remote.server = previous


class _UdpEcho(_Remote):
    """A raw UDP echo with blocking sockets: ``sendto`` then ``recvfrom`` each way.

    Receives wait in the kernel with ``SO_RCVTIMEO`` (the server, to look for "stop"; the client,
    never to hang), not with ``settimeout``, which would add a ``poll`` to every receive.
    """

    _client: socket.socket | None = None

    def bind(self) -> None:
        super().bind()
        self._server = _udp_socket(_IDLE_POLL_S)
        self._server.bind((self.address, self.port))

    def serve_echo(self, control: Connection) -> None:
        sock = self._server
        while True:
            try:
                data, source = sock.recvfrom(_UDP_MAX)
            except BlockingIOError:  # SO_RCVTIMEO: idle, has the parent said "stop"?
                if control.poll():
                    return
                continue
            sock.sendto(data, source)

    def connect(self) -> None:
        self._client = _udp_socket(peers._OP_TIMEOUT_S)
        self._target = (self.address, self.port)

    def call(self, payload: bytes) -> bytes:
        assert self._client is not None
        self._client.sendto(payload, self._target)
        try:
            data, _ = self._client.recvfrom(_UDP_MAX)
        except BlockingIOError as exc:
            raise TimeoutError(f"no UDP echo within {peers._OP_TIMEOUT_S:.0f} s (lost?)") from exc
        return data

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _udp_socket(receive_timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seconds = int(receive_timeout_s)
    timeval = struct.pack("ll", seconds, int((receive_timeout_s - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    return sock


class _ZmqTcp(_Remote, peers._ZmqReqRep):
    """pyzmq REQ (this process) / REP (host b) over TCP."""

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.endpoint = f"tcp://{self.address}:{self.port}"


class _GrpcTcp(_Remote, peers._Grpc):
    """gRPC unary over TCP (insecure), the generic bytes handler of ``peers``; no HTTP proxy."""

    def __init__(self, workdir: str, size: int) -> None:
        super().__init__(workdir, size)
        self.target = f"{self.address}:{self.port}"

    def connect(self) -> None:
        saved = os.environ.get("no_grpc_proxy")
        os.environ["no_grpc_proxy"] = self.address  # a proxy set for the real network must not take it
        try:
            super().connect()
        finally:
            if saved is None:
                del os.environ["no_grpc_proxy"]
            else:
                os.environ["no_grpc_proxy"] = saved


class _TcpStream(_Remote):
    """A plain TCP socket: ``sendall`` each message; the reader ``recv_into``'s it whole."""

    _sock: socket.socket | None = None

    def bind(self) -> None:
        super().bind()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.address, self.port))
        self._listener.listen(1)
        self._buffer = memoryview(bytearray(self.size))
        self._reader: socket.socket | None = None

    def receive(self) -> memoryview:
        if self._reader is None:
            self._reader, _ = self._listener.accept()
        got = 0
        while got < self.size:
            count = self._reader.recv_into(self._buffer[got:])
            if count == 0:
                raise EOFError("the sender closed")
            got += count
        return self._buffer

    def connect(self) -> None:
        self._sock = socket.create_connection((self.address, self.port), timeout=peers._START_TIMEOUT_S)
        self._sock.settimeout(None)

    def push(self, message: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(message)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


CALL_PEERS = (peers.Peer("raw UDP echo (floor)", "rpc", _UdpEcho),
              peers.Peer("pyzmq REQ/REP tcp", "rpc", _ZmqTcp),
              peers.Peer("gRPC unary tcp", "rpc", _GrpcTcp))
STREAM_PEERS = (peers.Peer("TCP socket", "stream", _TcpStream),)


# --- the run ---------------------------------------------------------------------------------------


def unavailable() -> str | None:
    """Why the suite cannot run here (it makes network namespaces: root and ip), or None."""
    reason = netns.missing()
    return f"ombm bench net makes two network namespaces: {reason}" if reason else None


def run(progress: Progress | None = None, quick: bool = False) -> NetResult:
    """Make two hosts, measure every system across their link, remove the hosts."""
    reason = unavailable()
    if reason:
        raise PermissionError(reason)
    steps = 1 + len(CALL_PEERS) * len(SIZES) * len(PLACEMENTS) + len(STREAM_PEERS) * len(STREAM_SIZES)
    say = _steps(progress, steps)
    result = NetResult(Plan.make(quick))
    started, load_before = time.monotonic(), os.getloadavg()[0]
    netns.sweep()  # what a killed earlier run left
    with netns.Network.create(2, tag="b") as hosts:
        a, b = hosts
        say("ombm via the bridge")
        result.rows += ombm_rows(a, b, result.plan, progress or _quiet)
        with _aimed_at(b), a.entered():
            result.rows += [_round_trips(peer, placement, result.plan, say)
                            for placement in PLACEMENTS for peer in CALL_PEERS]
            result.rows += [_throughput(peer, result.plan, say) for peer in STREAM_PEERS]
    result.elapsed_s = time.monotonic() - started
    result.load = (load_before, os.getloadavg()[0])
    return result


def _quiet(*args: object) -> None:
    pass


def _steps(progress: Progress | None, total: int) -> Callable[[str], None]:
    """``say(what)``: one step of ``total`` begins (the runner's bar takes ``(done, total, what)``)."""
    done = 0

    def say(what: str) -> None:
        nonlocal done
        (progress or _quiet)(done, total, what)
        done += 1

    return say


def _round_trips(peer: peers.Peer, placement: str, plan: Plan, say: Callable[[str], None]) -> RoundTrip:
    ok, why = peer.available()
    if not ok:
        for size in SIZES:
            say(f"{peer.name}, {_size(size)}, {placement}: skipped")
        return RoundTrip(peer.name, placement, note=f"skipped: {why}")
    latencies = {}
    for size in SIZES:
        say(f"{peer.name}, {_size(size)}, {placement}")
        samples = peer.roundtrip(size, plan.round_trips, PLACEMENTS[placement], plan.warmup)
        latencies[size] = Latency.of(samples)
    return RoundTrip(peer.name, placement, latencies)


def _throughput(peer: peers.Peer, plan: Plan, say: Callable[[str], None]) -> Throughput:
    ok, why = peer.available()
    if not ok:
        for size in STREAM_SIZES:
            say(f"{peer.name}, {_size(size)} messages: skipped")
        return Throughput(peer.name, note=f"skipped: {why}")
    rates = {}
    for size in STREAM_SIZES:
        say(f"{peer.name}, {_size(size)} messages")
        placement = PLACEMENTS[STREAM_PLACEMENT]
        rates[size] = max(peer.throughput(size, plan.stream_bytes, placement) for _ in range(plan.repeats))
    return Throughput(peer.name, rates)


def _size(size: int) -> str:
    if size == 0:
        return "null"
    if size >= 1 << 20:
        return f"{size >> 20} MiB"
    return f"{size >> 10} KiB" if size >= 1024 else f"{size} B"


# --- the document ----------------------------------------------------------------------------------


def markdown(result: NetResult) -> str:
    plan = result.plan
    calls = [r for r in result.rows if isinstance(r, RoundTrip)]
    parts = [
        "## Net: across two hosts (issue 12)",
        "Two network namespaces made for the run, joined by one veth pair (`10.231.0.1` ↔ `10.231.0.2`, "
        "MTU 1500): the client is this process in host *a*, each server a freshly spawned process in host "
        "*b*; *cross-cpu* = client on CPU 0, server on CPU 1, *same-cpu* = both on CPU 0. Round trips: "
        f"{plan.round_trips:,} timed after {plan.warmup:,} warm-up, per cell; the request carries the "
        "payload and the reply carries it back (null: 0 bytes). Throughput, cross-cpu: "
        f"{_mib(plan.stream_bytes)} one way per size, timed to the reader's acknowledgement of the last "
        f"message, best of {plan.repeats}. The floor is a raw UDP echo, blocking `sendto`/`recvfrom` on "
        "both sides. ombm's rows go through the bridge (`ombm.net`), one per host. The machine's "
        f"1-minute load average was {result.load[0]:.1f} at the start and {result.load[1]:.1f} at the end "
        "(2 CPUs): other work inflates the tails and spreads the throughput.",
    ]
    for placement in PLACEMENTS:
        rows = [r for r in calls if r.placement == placement]
        floor = next((r for r in rows if r.latencies and r.system == CALL_PEERS[0].name), None)
        parts += [f"### Call round trip across the link, {placement} (µs)", _round_trip_table(rows, floor)]
    return "\n\n".join(parts + [
        f"### Stream throughput across the link, {STREAM_PLACEMENT} (MB/s)",
        _throughput_table([r for r in result.rows if isinstance(r, Throughput)]),
        "### Share of an ombm call spent in the bridges",
        _share_table([r for r in result.rows if isinstance(r, BridgeShare)]),
    ])


def _mib(size: int) -> str:
    return f"{size >> 20} MiB"


def _round_trip_table(rows: list[RoundTrip], floor: RoundTrip | None) -> str:
    headers = ["system"]
    for size in SIZES:
        headers += [f"{_size(size)} median", f"{_size(size)} p99"]
    headers += ["32 B ÷ floor", "note"]
    cells = []
    for row in rows:
        line = [row.system]
        for size in SIZES:
            latency = row.latencies.get(size)
            line += [us(latency.median_us), us(latency.p99_us)] if latency else ["—", "—"]
        mine, base = row.latencies.get(32), floor.latencies.get(32) if floor else None
        line += [times(ratio(mine.median_us, base.median_us)) if mine and base else "—", row.note]
        cells.append(line)
    return md_table(headers, cells, "l" + "r" * (len(headers) - 2) + "l")


def _throughput_table(rows: list[Throughput]) -> str:
    headers = ["system", *(f"{_size(size)} messages" for size in STREAM_SIZES), "note"]
    cells = [[row.system, *(_mb(row.rates.get(size)) for size in STREAM_SIZES), row.note] for row in rows]
    return md_table(headers, cells, "l" + "r" * len(STREAM_SIZES) + "l")


def _mb(rate: float | None) -> str:
    return "—" if rate is None or rate != rate else f"{rate / 1e6:,.0f}"


def _share_table(rows: list[BridgeShare]) -> str:
    cells = []
    for row in rows:
        share = 100 * row.bridge_us / row.call_us if row.call_us > 0 else float("nan")
        cells.append(["—" if row.payload_bytes is None else _size(row.payload_bytes), us(row.call_us),
                      us(row.bridge_us), "—" if share != share else f"{share:.0f} %", row.note])
    return md_table(["payload", "call median (µs)", "in the bridges (µs)", "share", "note"], cells, "lrrrl")

