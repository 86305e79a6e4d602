"""The bridge: segments bound on several hosts, their written units shipped as UDP datagrams (§3.2.3).

"An update generated at one node can be simply transmitted as a datagram to the set of nodes that
also bind the affected shared segment" (paper §3.2.3). One bridge per host (per user's folder)
exports the local segments it is told to, imports remote ones on request, and replicates both
ways (:mod:`ombm.net.replica`: what is sent, echo suppression, deltas). Best effort, as the paper's
memory layer: nothing is retransmitted; RPC and streams above repair loss as they do locally.

**Security.** Nothing is exported unless named. With a key every datagram carries a keyed BLAKE2b
MAC and a per-sender sequence number (``transport/datagram.py``): forged, altered and replayed ones
are dropped and counted. Without a key only the ``peers`` addresses are heard, and only a loopback
``listen`` address is allowed unless ``insecure`` (anyone on the path could forge a peer's address).

**One thread, one selector.** The UDP socket, the local control socket, a wake-up socket and the
bridge receiver's doorbell (the event-loop side of the signal FIFO, as in ``ombm.aio``: announce
sleep, re-check, then wait) are watched by one ``selectors`` loop in one thread. Everything the
replication keeps (shadows, tags, own-write counts, partial updates, pending imports) is touched by
that thread alone: no lock on the path of an update, and the echo count is exact because the writes
and the signals they raise are taken by the same thread in order. asyncio would add an event loop's
cost per wake-up for no concurrency gained. Before it sleeps in the selector the thread spins, for a
learnt budget, over its FIFO and the UDP socket (:meth:`Bridge._spin`: ``sig_wait``'s adaptive
policy, natively, yielding the CPU).

**The native data path.** With ``native`` (the default) the loop is one native call per turn
(``_native.BridgeEngine.run``, :meth:`Bridge._native_turn`): the common case (a local write sent
as an update, an update received, its parts gathered, and written) never returns to Python, which
keeps everything else as above and stays the reference (``native=False``; docs/net.md, "How an
update travels"). The engine owns the sequence numbers, the tags and the replay window for both paths.

**One class, long on purpose.** :class:`Bridge` is the serving thread's state and what it does with
each datagram; it is read in sections: running, one turn of the loop, datagrams in, exporting,
importing, the local control requests (the socket itself: :mod:`ombm.net.control`), offering,
locating (LOCATE to the multicast group and the peers: :func:`ombm.rpc.locate`), paths (keepalives and
the path MTU, per remote bridge: :mod:`ombm.net.path`), datagrams out. What one replicated segment
keeps and sends is :mod:`ombm.net.replica`.

**Names.** A replica of ``name`` from the bridge at ``IP:PORT`` is the local segment
``name.at.IP_PORT`` (``:`` of an IPv6 address as ``_``), created by the bridge, so it goes with the
bridge: released by ``close()``, reclaimed by ``ombm gc`` after a ``SIGKILL``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ombm import _layout as L
from ombm import _native
from ombm.core import config, namespace, remote
from ombm.core.directory import reclaim_segment_if_dead
from ombm.core.segment import MESSAGE_CONSISTENCY, Mode, create_segment, open_segment
from ombm.core.signals import Receiver
from ombm.errors import ClosedError, DatagramError, OmbmError, SegmentExistsError, SegmentNotFoundError
from ombm.net.control import ControlSocket, Reply, error
from ombm.net.path import Path
from ombm.net.replica import Address, Replica
from ombm.transport import datagram as dg
from ombm.transport.updates import Assembler, Packer

__all__ = ["Bridge", "STAT_KEYS", "replica_name"]

_log = logging.getLogger("ombm.net")
STAT_KEYS = (
    "datagrams_in", "datagrams_out", "bytes_in", "bytes_out", "updates_in", "updates_out",
    "dropped_bad_mac", "dropped_replay", "dropped_malformed", "dropped_not_peer", "dropped_unknown_segment",
    "dropped_stale", "dropped_duplicate", "dropped_incomplete", "dropped_inconsistent", "dropped_unexpected",
    "send_errors", "resyncs_sent", "resyncs_received", "imports_served", "replicas_made", "signals_lost",
    "internal_errors", "busy_in_ns", "busy_out_ns", "pings_sent", "paths_dead", "probes_sent",
    "native_in", "native_out", "native_echoes", "spins", "spin_wins", "spin_learnt_ns",
)
RETRY_S = 0.2            # an IMPORT or LIST without answer is sent again after this
MAX_TURN = 256           # datagrams (and control requests) taken per turn before looking at signals
FIFO_CAPACITY = 4096     # the bridge's receiver: one entry per unit completed since its last turn
SOCKET_BUFFER = 16 << 20  # the UDP socket's buffers (the kernel doubles it): a 1 MiB stream's window of 8 MiB, twice
USERS_CHECK_S = 0.25     # how often the local users of every replica are looked at (liveness across hosts)
USE_GRACE_S = 5.0        # a replica no local process has used this long after it was made or asked for goes
BYE_COPIES = 2           # a BYE for a segment is sent this many times (best effort, like everything here)
SPIN_FLOOR_NS = 2_000    # the spin after SPIN_MISSES waits in a row that had to sleep (see _spin)
SPIN_MISSES = 8
SPIN_PROBE = 64          # ... with the full cap again every this many misses
KEEPALIVE_S = 2.0        # a path quiet this long gets a PING; silent for three of them, dead (net/path.py)
MAX_LISTED = 256         # paths in a status reply (it must fit the control socket's datagram)
_RUN_STALLED, _RUN_EMSGSIZE = 1, 2  # BridgeEngine.run's flags (net_engine.c; RUN_DROPS: the FIFO's count)
MULTICAST_TTL = 1        # a LOCATE sent to the group stays on the link (hosts of one network segment)


def replica_name(name: str, address: Address) -> str:
    """The local name of the replica of ``name`` exported by the bridge at ``address``."""
    return namespace.validate_name(f"{name}.at.{address[0].replace(':', '_')}_{address[1]}")


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _Locate:
    """A LOCATE sent to the group and the peers: the bridges that answered, until ``deadline_s``."""

    name: str
    deadline_s: float
    next_send_s: float
    reply: Reply
    found: dict[Address, None] = field(default_factory=dict)


@dataclass
class _Pending:
    """An IMPORT, LIST or OFFER sent to a remote bridge, waiting for its answer."""

    nonce: int
    address: Address
    datagram: Callable[[], bytes]
    deadline_s: float
    next_send_s: float
    waiters: list[Reply] = field(default_factory=list)


class Bridge:
    """A bridge bound to ``listen`` (``"HOST:PORT"``; port 0 picks one: see :attr:`address`).

    ``exports``: names of local segments peers may import. ``peers``: ``"HOST:PORT"`` of the bridges
    heard without a key. ``key``: 16-64 bytes shared by the bridges (see :func:`load_key`). ``mtu``:
    the largest UDP payload to send (1,472 for a 1,500-byte IPv4 MTU); less where a path's MTU is
    smaller (learnt: ``net/path.py``). ``control``: serve this host's remote names
    (``ombm.open_segment("name@HOST:PORT")``) on the folder's ``sock-bridge``; one bridge per folder.
    ``multicast``: ``"GROUP:PORT"`` (IPv4) this bridge joins, where LOCATEs are sent and heard
    (:func:`ombm.rpc.locate`). ``keepalive_s``: a path to a bridge that has been quiet this long gets
    a PING; silent for three of them, it is dead (its replicas close). ``ip_fragments``: let IP
    fragment datagrams longer than a path's MTU rather than learn it (no don't-fragment bit, no path
    MTU search: updates are cut to ``mtu`` whatever the path), for a trusted link where a few large
    datagrams cost less than many small ones (a lost fragment loses its datagram). Run it with
    :meth:`serve_forever` (this thread) or :meth:`start` (a thread it owns); :meth:`close` stops it,
    says BYE to its peers and releases everything. ``native``: take the common case (single-datagram
    updates of segments replicated with one bridge) on the native data path (``_native.BridgeEngine``)
    when its signals travel in memory (not ``OMBM_SIGNAL_PATH=kernel``); False keeps every datagram in
    Python (the reference path: the differential tests compare the two).
    """

    def __init__(self, listen: str = "127.0.0.1:0", *, exports: Iterable[str] = (), peers: Iterable[str] = (),
                 key: bytes | None = None, insecure: bool = False, mtu: int = dg.DEFAULT_MTU,
                 control: bool = True, reassembly_timeout_s: float = 0.5, max_age_s: float = 60.0,
                 multicast: str | None = None, keepalive_s: float = KEEPALIVE_S, ip_fragments: bool = False,
                 native: bool = True) -> None:
        if not dg.MIN_MTU <= mtu <= dg.MAX_MTU:
            raise ValueError(f"mtu must be between {dg.MIN_MTU} and {dg.MAX_MTU} bytes")
        if not 0.01 <= keepalive_s <= 3600.0:
            raise ValueError("the keepalive period must be between 0.01 and 3600 seconds")
        host, port = remote.parse_host_port(listen)
        family, bind_to = _resolve(host, port)
        if key is None and not insecure and not ipaddress.ip_address(bind_to[0]).is_loopback:
            raise PermissionError(
                f"refusing to listen on {listen} without a key: anyone on the network could write into "
                "the exported segments; give a key (--key-file) or, on a network you trust, --insecure")
        self._family = family
        self._group = None if multicast is None else _group(multicast, family)
        self._keepalive_s = keepalive_s
        self._ip_fragments = ip_fragments
        self._peers = {_resolve(*remote.parse_host_port(p), family=family)[1] for p in peers}
        self._exports = {namespace.validate_name(n) for n in exports}
        self._key = None if key is None else dg.check_key(key)
        self._sealer = dg.Sealer(secrets.randbits(64), self._key)
        self._max_age_us = int(max_age_s * 1e6) if key is not None else None
        self._window: dg.ReplayWindow | _native.BridgeEngine = dg.ReplayWindow(max_age_us=self._max_age_us)
        self._native = native
        self._engine: _native.BridgeEngine | None = None
        self._assembler = Assembler(timeout_s=reassembly_timeout_s)
        self._limit = self._mtu = mtu                       # _mtu: the narrowest path's (_use_path_mtu)
        self._room = dg.entry_room(mtu, self._sealer.trailer)
        self._packers: dict[Address, Packer] = {}
        self._replicas: dict[int, Replica] = {}             # by key
        self._exported: dict[str, Replica] = {}             # by local name
        self._imported: dict[tuple[Address, str], Replica] = {}
        self._pending: dict[tuple[str, Address, str], _Pending] = {}
        self._resyncs: dict[tuple[Address, int], set[int]] = {}
        self._calls: list[tuple[dict[str, object], Reply]] = []
        self._locates: dict[int, _Locate] = {}              # by nonce
        self._paths: dict[Address, Path] = {}               # the bridges linked to a replica (net/path.py)
        self._paths_at = 0.0
        self._kernel_at = 0.0
        self._calls_lock = threading.Lock()
        self._counts = dict.fromkeys(STAT_KEYS, 0)
        self._tag = secrets.randbits(32)
        self._pid = namespace.me()[0]
        self._users_at = 0.0
        self._spin_misses = 0
        self._stop = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._group_sock: socket.socket | None = None
        self._control: ControlSocket | None = None
        self._receiver: Receiver | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._open(bind_to, control)
        except BaseException:
            self.close()
            raise

    def _open(self, bind_to: Address, control: bool) -> None:
        for option, forced in ((socket.SO_RCVBUF, _SO_RCVBUFFORCE), (socket.SO_SNDBUF, _SO_SNDBUFFORCE)):
            try:  # a stream's window of updates may arrive while the bridge is not running: room for it
                self._sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)  # past the kernel's maximum (root)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)  # the kernel caps it at its maximum
        if not self._ip_fragments:
            _dont_fragment(self._sock, self._family)
        self._sock.bind(bind_to)
        self.address: Address = self._sock.getsockname()[:2]
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        if control:
            self._control = ControlSocket()
        self._receiver = Receiver(capacity=FIFO_CAPACITY)
        self._fifo_drops = 0
        watched = [self._sock, self._wake_r, self._receiver.fifo.doorbell()]
        if self._control is not None:
            watched.append(self._control.sock)
        if self._group is not None:
            self._group_sock = _join(self._group, self._sock, bind_to[0])
            watched.append(self._group_sock)
        for sock in watched:
            self._selector.register(sock, selectors.EVENT_READ)
        # what the native path's wait watches for Python: all but the UDP socket and the doorbell
        python_socks = [self._wake_r, self._group_sock, None if self._control is None else self._control.sock]
        self._python_fds = tuple(sock.fileno() for sock in python_socks if sock is not None)
        if self._native and not self._receiver.kernel:
            # one sender and one receiver on the wire for both paths: the native path owns the
            # sequence numbers, the tags and the replay window, and Python's path calls in
            self._engine = _native.BridgeEngine(self._receiver.fifo.fifo_map, self._sock.fileno(), self._sealer.sender,
                                                self._tag, -1 if self._max_age_us is None else self._max_age_us,
                                                self._mtu, self._key)
            self._engine.set_assembly(self._assembler.max_updates, self._assembler.max_bytes,
                                      self._assembler.timeout_s)
            # only the native path reads the socket: it takes datagrams of one flow joined (UDP_GRO),
            # as its peer sends runs of them in one call (UDP_SEGMENT; docs/net.md, "Bulk")
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_UDP, _UDP_GRO, 1)
            self._sealer.sequence = self._engine.next_seq
            self._window = self._engine

    # ---- running
    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from a signal handler or another thread) or :meth:`close`."""
        if self._closed:
            raise ClosedError("the bridge is closed")
        if self._engine is not None:
            while not self._stop:
                self._native_turn(self._engine)
            return
        while not self._stop:
            if not self._turn(time.monotonic()) and not self._spin():
                self._sleep()

    def start(self) -> Bridge:
        """Serve in a thread this bridge owns (joined by :meth:`close`); returns the bridge."""
        if self._closed:
            raise ClosedError("the bridge is closed")
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self.serve_forever, name="ombm-bridge", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Make :meth:`serve_forever` return soon (safe from a signal handler and any thread); if the
        bridge serves in its own thread (:meth:`start`), wait for that thread to end."""
        self._stop = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)

    def add_peer(self, address: str) -> None:
        """Hear the bridge at ``"HOST:PORT"`` without a key too (see ``peers``)."""
        self._peers.add(_resolve(*remote.parse_host_port(address), family=self._family)[1])

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    def close(self) -> None:
        """Idempotent: stop serving, say BYE to every peer, release every replica, close the sockets."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        for address in {a for r in self._replicas.values() for a in r.links}:
            self._send(address, self._sealer.control(dg.Kind.BYE, {"keys": []}, _now_us()))
        for replica in list(self._replicas.values()):
            self._drop_replica(replica)
        for pending in self._pending.values():
            for waiter in pending.waiters:
                waiter(error("unreachable", "the bridge closed"))
        self._pending.clear()
        for locate in self._locates.values():
            locate.reply(error("unreachable", "the bridge closed"))
        self._locates.clear()
        if self._receiver is not None:
            self._receiver.close()
        self._selector.close()
        if self._control is not None:
            self._control.close()
        for sock in (self._sock, self._wake_r, self._wake_w, self._group_sock):
            if sock is not None:
                sock.close()

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """The counters: datagrams and bytes in and out, updates, and drops by reason."""
        counts = dict(self._counts)
        counts["dropped_incomplete"] = self._assembler.incomplete
        counts["dropped_inconsistent"] += self._assembler.inconsistent  # and the updates Replica.apply refused
        if self._engine is not None:
            for name, value in self._engine.counts().items():
                if name in counts:
                    counts[name] += value
        return counts

    def request(self, message: dict[str, object], timeout_s: float = 10.0) -> dict[str, object]:
        """Serve a control request (``core/remote.py`` lists them) from this process: the serving
        thread answers it. For a bridge embedded without its control socket."""
        if self._closed:
            raise ClosedError("the bridge is closed")
        done = threading.Event()
        answer: list[dict[str, object]] = []

        def reply(message: dict[str, object]) -> None:
            answer.append(message)
            done.set()

        with self._calls_lock:
            self._calls.append((message, reply))
        self._wake()
        if not done.wait(timeout_s):
            return error("unreachable", "the bridge did not answer")
        return answer[0]

    # ---- one turn of the loop
    def _turn(self, now_s: float) -> bool:
        assert self._receiver is not None
        clock = time.perf_counter_ns
        t0 = clock()
        busy = self._receiver.dispatch_pending(1024) > 0   # local writes: marks units dirty
        out_ns = clock() - t0
        drops = _native.load64(self._receiver.fifo.address + L.FIFO_DROPS)
        if drops != self._fifo_drops:
            self._counts["signals_lost"] += drops - self._fifo_drops
            self._fifo_drops = drops
            for replica in self._replicas.values():
                replica.forget_own_writes()
        busy |= self._receive_all(now_s)
        busy |= self._receive_group(now_s)
        busy |= self._serve_control()
        t0 = clock()
        self._send_dirty()
        self._flush(now_s)
        if busy:  # the time from taking the local signals to the last sendto (the share in `ombm bench net`)
            self._counts["busy_out_ns"] += out_ns + clock() - t0
        self._timers(now_s)
        return busy

    def _native_turn(self, engine: _native.BridgeEngine) -> None:
        """One turn with the native data path: ``engine.run`` serves the common case (local writes
        out, updates in) without returning, spinning and sleeping as :meth:`_spin`
        and :meth:`_sleep` do; it returns what only Python does (signals of segments it does not
        take, datagrams it does not take, RESYNCs to ask, a request on the control socket, a
        wake-up, a timer), and this turn does it as :meth:`_turn` does."""
        receiver = self._receiver
        assert receiver is not None
        settings = config.SETTINGS
        cap = 0 if settings.wait == "sleep" else int(settings.spin_us * 1000)
        signals, datagrams, resyncs, flags = engine.run(cap, settings.wait == "adaptive", self._next_timer_s(),
                                                        receiver.fifo.doorbell().fileno(), self._python_fds)
        now_s = time.monotonic()
        drops = _native.load64(receiver.fifo.address + L.FIFO_DROPS)
        if drops != self._fifo_drops:
            self._counts["signals_lost"] += drops - self._fifo_drops
            self._fifo_drops = drops
            for replica in self._replicas.values():
                replica.forget_own_writes()
        for seg_id, offset in signals:
            mine = self._by_segment(seg_id)
            if mine is not None and offset < mine.segment.size:
                mine.on_signal(mine.region.address + offset)
        for data, source in datagrams:
            self.receive_datagram(data, source, now_s)
        for key, u in resyncs:
            stale = self._replicas.get(key)
            if stale is not None and len(stale.links) == 1:
                self._resyncs.setdefault((next(iter(stale.links)), key), set()).add(u)
        if flags & _RUN_STALLED:
            receiver.fifo.retire_stalled()
        if flags & _RUN_EMSGSIZE:
            self._kernel_at = self._paths_at = 0.0
        self._receive_group(now_s)
        self._serve_control()
        self._drain_wake()
        self._send_dirty()
        self._flush(now_s)
        self._timers(now_s)

    def _by_segment(self, seg_id: int) -> Replica | None:
        for replica in self._replicas.values():
            if replica.segment.id == seg_id:
                return replica
        return None

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _spin(self) -> bool:
        """Spin before sleeping, for a learnt budget: whether a signal or a datagram came meanwhile.

        A call crosses four processes and every one that sleeps between hops costs a kernel wake-up
        (tens of µs from a halted CPU, docs/net.md "Measurements"). In a call, each bridge has one
        short gap (the server's reply after its request was written; the client's next call after
        its reply) and one long one (the rest of the round trip). The policy is ``sig_wait``'s
        (``ombm.core.signals``; the cap is the process's ``spin_us``, ``wait`` "sleep" never spins):
        spin up to the cap while something comes within it; after ``SPIN_MISSES`` spins in a row that
        found nothing, spin ``SPIN_FLOOR_NS`` only, probing with the cap every ``SPIN_PROBE``-th. So an
        idle bridge, or one whose peers answer slower than the cap, costs next to nothing, and the
        long gap of a call (one miss in two) keeps the cap. The spin yields the CPU between polls
        once past its first 2 µs (``_native.bridge_spin``): on two CPUs the bridge shares one with a
        client or a server, and a spinner that does not yield starves the process it waits for. The
        control and wake-up sockets are looked at after it (a stop waits one spin at most)."""
        receiver = self._receiver
        assert receiver is not None
        settings = config.SETTINGS
        if receiver.kernel or settings.wait == "sleep":
            return False
        cap = int(settings.spin_us * 1000)
        budget = cap if settings.wait == "spin" or self._spin_misses < SPIN_MISSES else min(cap, SPIN_FLOOR_NS)
        if self._spin_misses >= SPIN_MISSES and self._spin_misses % SPIN_PROBE == 0:
            budget = cap
        self._counts["spins"] += 1
        if _native.bridge_spin(receiver.fifo.fifo_map, self._sock.fileno(), budget) >= 0:
            self._counts["spin_wins"] += 1
            self._spin_misses = 0
            return True
        self._spin_misses += 1
        return False

    def _sleep(self) -> None:
        """Wait for a datagram, a control request, a wake-up or a signal (the doorbell handshake of
        ``ombm.aio.wait``: announce, re-check, sleep; the push rings the doorbell only if announced)."""
        receiver = self._receiver
        assert receiver is not None
        fifo = receiver.fifo
        timeout = self._next_timer_s()
        sleep_word = fifo.address + L.FIFO_SLEEP
        if not receiver.kernel:
            _native.store32(sleep_word, L.SLEEP_DOORBELL)
            if fifo.ready():
                _native.store32(sleep_word, L.SLEEP_AWAKE)
                return
            if fifo.depth():  # claimed, not yet published: look again soon
                timeout = min(timeout, 0.01)
        try:
            events = self._selector.select(timeout)
        finally:
            if not receiver.kernel:
                _native.store32(sleep_word, L.SLEEP_AWAKE)
                fifo.drain_doorbell()
                if fifo.depth() and not fifo.ready():
                    fifo.retire_stalled()
        if any(key.fileobj is self._wake_r for key, _ in events):
            self._drain_wake()

    def _next_timer_s(self) -> float:
        now = time.monotonic()
        when = [now + 1.0, self._users_at, self._paths_at] + [p.next_send_s for p in self._pending.values()]
        when += [min(locate.next_send_s, locate.deadline_s) for locate in self._locates.values()]
        expiry = self._assembler.next_expiry_s
        if expiry is not None:
            when.append(expiry)
        return max(0.0, min(when) - now)

    def _timers(self, now_s: float) -> None:
        self._assembler.expire(now_s)
        if self._engine is not None:
            self._engine.expire(now_s)
        if now_s >= self._users_at:
            self._users_at = now_s + USERS_CHECK_S
            self._check_users(now_s)
        for ident, pending in list(self._pending.items()):
            if now_s >= pending.deadline_s:
                del self._pending[ident]
                for waiter in pending.waiters:
                    waiter(error("unreachable", f"the bridge at {_text(pending.address)} did not answer: is it "
                                  "running, and does it list this host as a --peer (or share the key)?"))
            elif now_s >= pending.next_send_s:
                pending.next_send_s = now_s + RETRY_S
                self._send(pending.address, pending.datagram())
        self._locate_timers(now_s)
        if now_s >= self._paths_at:
            self._paths_tick(now_s)

    def _check_users(self, now_s: float) -> None:
        """Liveness across hosts (docs/net.md): the bridge stands for the remote processes (it holds and
        watches every replica); the local processes that use a replica stand for themselves. A replica
        whose local users are all gone (they closed it, or died), or that nobody used within
        ``USE_GRACE_S`` of being made or asked for, is closed: a BYE for its key to every bridge it is
        linked to, which closes its copy there, so the processes on that host see their peer go as
        they would see a local one go (an RPC client's ServerGoneError, a server's reaped connection)."""
        for replica in list(self._replicas.values()):
            if replica.has_users(self._pid):
                replica.used = True
            elif replica.used or now_s - replica.asked_s >= USE_GRACE_S:
                self._close_replica(replica)

    def _close_replica(self, replica: Replica) -> None:
        """Say BYE for ``replica`` to every bridge linked to it, and drop it here."""
        bye: dict[str, object] = {"keys": [replica.key]}
        for address in list(replica.links):
            for _ in range(BYE_COPIES):
                self._send(address, self._sealer.control(dg.Kind.BYE, bye, _now_us()))
        self._drop_replica(replica)

    # ---- datagrams in
    def _receive_all(self, now_s: float) -> bool:
        clock, counts = time.perf_counter_ns, self._counts
        for taken in range(MAX_TURN):
            t0 = clock()
            try:
                data, source = self._sock.recvfrom(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return taken > 0
            except OSError:  # an ICMP error reported on the socket (a peer's port closed)
                continue
            self.receive_datagram(data, source[:2], now_s)
            counts["busy_in_ns"] += clock() - t0  # from the receive to the local write (and any relay queued)
        return True

    def receive_datagram(self, data: bytes, source: Address, now_s: float | None = None) -> None:
        """Take one datagram from ``source``: validate, then act on it; a bad one is dropped and
        counted, never raised. Call it only from the serving thread (or on a bridge not serving)."""
        counts = self._counts
        counts["datagrams_in"] += 1
        counts["bytes_in"] += len(data)
        if self._key is None and source not in self._peers:
            counts["dropped_not_peer"] += 1
            return
        try:
            datagram = dg.decode(data, self._key)
        except DatagramError as exc:
            counts["dropped_bad_mac" if exc.reason == "bad_mac" else "dropped_malformed"] += 1
            return
        if self._window.check(datagram.sender, datagram.seq, _now_us()):
            counts["dropped_replay"] += 1
            return
        self._window.commit(datagram.sender, datagram.seq)
        path = self._paths.get(source)
        if path is not None:
            path.heard(time.monotonic() if now_s is None else now_s)
        try:
            self._act(datagram, source, time.monotonic() if now_s is None else now_s)
        except Exception:  # a bug must not end the bridge: counted and logged
            counts["internal_errors"] += 1
            _log.exception("ombm bridge: a datagram from %s could not be handled", _text(source))

    def _act(self, datagram: dg.Datagram, source: Address, now_s: float) -> None:
        kind = datagram.kind
        if kind is dg.Kind.UPDATE:
            for entry in datagram.entries:
                self._take_entry(entry, datagram.sender, source, now_s)
            return
        body = datagram.body
        assert body is not None
        if kind is dg.Kind.IMPORT:
            self._serve_import(body, source)
        elif kind is dg.Kind.IMPORT_REPLY:
            self._imported_reply(body, source)
        elif kind is dg.Kind.LIST:
            names = sorted(self._exports)[: dg.MAX_BODY_ITEMS]
            self._send(source, self._sealer.control(dg.Kind.EXPORTS, {"nonce": body["nonce"], "names": names},
                                                    _now_us()))
        elif kind is dg.Kind.EXPORTS:
            self._answer(("exports", source, ""), body["nonce"], {"ok": True, "names": body["names"]})
        elif kind is dg.Kind.OFFER:
            self._offered(body, source)
        elif kind is dg.Kind.OFFER_REPLY:
            self._offer_reply(body, source)
        elif kind is dg.Kind.RESYNC:
            self._resync_asked(body, source)
        elif kind is dg.Kind.BYE:
            self._bye(body, source, datagram.sender)
        elif kind is dg.Kind.LOCATE:
            self._locate_asked(body, source, datagram.sender)
        elif kind is dg.Kind.LOCATED:
            self._located(body, source)
        elif kind is dg.Kind.PING:
            self._pinged_by(body, source)
        elif kind is dg.Kind.PONG:
            self._ponged(body, source)
        elif kind is dg.Kind.PROBE:
            self._probed_by(body, source)
        elif kind is dg.Kind.PROBED:
            self._probe_answered(body, source, now_s)

    def _take_entry(self, entry: dg.Entry, sender: int, source: Address, now_s: float) -> None:
        replica = self._replicas.get(entry.key)
        if replica is None or source not in replica.links:
            self._counts["dropped_unknown_segment"] += 1
            return
        engine = replica.engine
        if engine is not None and entry.parts > 1 and len(replica.links) == 1:
            # the native path has this segment: its assembler takes the part (the others of its update
            # may have come that way), and writes the update when it is whole
            for u in engine.assemble(sender, dg.pack_entry(entry.key, entry.offset, entry.base, entry.tag, entry.part,
                                                           entry.parts, entry.full, entry.data), now_s):
                self._resyncs.setdefault((source, replica.key), set()).add(u)
            return
        update = self._assembler.add(sender, entry, now_s)
        if update is None:
            return
        status, relays = replica.apply(update, source, self._room,
                                       lambda u: self._resyncs.setdefault((source, replica.key), set()).add(u))
        if status == "applied":
            self._counts["updates_in"] += 1
            for address, entries in relays:
                self._queue(address, entries)
        else:
            self._counts[f"dropped_{'inconsistent' if status == 'malformed' else status}"] += 1

    def _resync_asked(self, body: dict[str, object], source: Address) -> None:
        replica = self._replicas.get(_int(body["key"]))
        link = replica.links.get(source) if replica is not None else None
        if replica is None or link is None:
            self._counts["dropped_unknown_segment"] += 1
            return
        self._counts["resyncs_received"] += 1
        for u in _ints(body["units"]):
            if u < replica.units:
                link.in_sync[u] = 0
                replica.dirty[u] = None  # sent whole now (a stream's repair signals once per RTO, not twice)

    def _bye(self, body: dict[str, object], source: Address, sender: int) -> None:
        keys = set(_ints(body["keys"]))
        self._unlink(source, keys)
        if not keys:
            self._window.forget(sender)

    def _unlink(self, source: Address, keys: set[int]) -> None:
        """Stop replicating the segments ``keys`` (all if empty) with the bridge at ``source``; a replica
        whose exporter that was, or that has no other link, is dropped (its local users see it go)."""
        for replica in list(self._replicas.values()):
            link = replica.links.get(source)
            if link is None or (keys and replica.key not in keys):
                continue
            replica.unlink(source)
            if link.exporter or not replica.links:  # the exporter left, or the last importer
                self._drop_replica(replica)

    # ---- exporting
    def _serve_import(self, body: dict[str, object], source: Address) -> None:
        name = str(body["name"])
        answer: dict[str, object] = {"nonce": body["nonce"], "name": name}
        if name not in self._exports:
            answer.update(error=f"{_text(self.address)} does not export {name!r}", why="not_found")
        else:
            replica, problem = self._export_replica(name)
            if replica is None:
                answer.update(error=problem[:dg.MAX_TEXT], why="not_found")
            else:
                replica.link(source)  # a new importer (or one that came back): every unit is sent whole first
                replica.send_image()  # what the segment holds already: a channel's control block, its slots
                self._paths_at = 0.0  # a new path: its keepalive and MTU start now
                self._counts["imports_served"] += 1
                seg = replica.segment
                answer.update(key=replica.key, size=seg.size, unit=seg.unit, mode=int(seg.mode),
                              sow=seg.signal_on_write)
        self._send(source, self._sealer.control(dg.Kind.IMPORT_REPLY, answer, _now_us()))

    def _export_replica(self, name: str) -> tuple[Replica | None, str]:
        """The replica of local segment ``name`` that this bridge exports (made on first use), or why not."""
        replica = self._exported.get(name)
        if replica is not None:
            if _still_named(replica):
                return replica, ""
            self._drop_replica(replica)  # its creator released it, or made it anew
        try:
            seg = open_segment(name)
        except SegmentNotFoundError:
            return None, f"no segment named {name!r} on {_text(self.address)}"
        except (OmbmError, OSError) as exc:
            return None, f"{name!r} cannot be exported: {exc}"
        if seg.mode != MESSAGE_CONSISTENCY or not seg.signal_on_write:
            seg.release()
            return None, f"{name!r} cannot be exported: only message-consistency segments with signal-on-write are"
        replica = Replica(name, seg, namespace.new_token(), exported=True)
        replica.used = replica.has_users(self._pid)  # its maker lives: its death must not wait for the grace
        self._register(replica)
        self._exported[name] = replica
        return replica, ""

    def _register(self, replica: Replica) -> None:
        assert self._receiver is not None
        replica.asked_s = time.monotonic()
        self._replicas[replica.key] = replica
        replica.watch(self._receiver)
        replica.attach(self._engine)

    def _drop_replica(self, replica: Replica) -> None:
        self._replicas.pop(replica.key, None)
        if self._exported.get(replica.name) is replica:
            del self._exported[replica.name]
        for ident in [i for i, r in self._imported.items() if r is replica]:
            del self._imported[ident]
        self._assembler.forget(replica.key)
        replica.close()

    # ---- importing
    def _imported_reply(self, body: dict[str, object], source: Address) -> None:
        name = str(body["name"])
        ident = ("import", source, name)
        pending = self._pending.get(ident)
        if pending is None or pending.nonce != body["nonce"]:
            self._counts["dropped_unexpected"] += 1
            return
        if "error" in body:
            kind = "not_found" if body.get("why") == "not_found" else "refused"
            stale = self._imported.get((source, name))
            if kind == "not_found" and stale is not None:  # a replica of a segment gone there (its BYE is late)
                self._drop_replica(stale)
            self._answer(ident, pending.nonce, error(kind, str(body["error"])))
            return
        try:
            local = self._make_replica(name, source, body)
        except (OmbmError, OSError, ValueError) as exc:
            self._answer(ident, pending.nonce, error("refused", f"the replica of {name!r} cannot be made: {exc}"))
            return
        self._answer(ident, pending.nonce, {"ok": True, "local": local})

    def _make_replica(self, name: str, source: Address, body: dict[str, object]) -> str:
        key = _int(body["key"])
        existing = self._imported.get((source, name))
        if existing is not None and existing.key == key:
            existing.asked_s, existing.used = time.monotonic(), False
            return existing.name
        if existing is not None:  # the exporter exported it afresh (it restarted)
            self._drop_replica(existing)
        if key in self._replicas:
            raise ValueError("its key is in use here")
        local = replica_name(namespace.validate_name(name), source)
        geometry = {"size": _int(body["size"]), "mode": Mode(_int(body["mode"])), "unit": _int(body["unit"]),
                    "signal_on_write": bool(body.get("sow", True))}
        try:
            seg = create_segment(name=local, **geometry)  # type: ignore[arg-type]
        except SegmentExistsError:  # left by a bridge that died: its creator's name is free to take over
            if not reclaim_segment_if_dead(namespace.segment_path(local), creator_death_frees=True):
                raise
            seg = create_segment(name=local, **geometry)  # type: ignore[arg-type]
        try:
            replica = Replica(local, seg, key, exported=False)
        except BaseException:
            seg.release()
            raise
        replica.link(source, exporter=True)
        self._paths_at = 0.0
        self._register(replica)
        self._imported[(source, name)] = replica
        self._counts["replicas_made"] += 1
        return local

    def _answer(self, ident: tuple[str, Address, str], nonce: object, message: dict[str, object]) -> None:
        pending = self._pending.get(ident)
        if pending is None or pending.nonce != nonce:
            self._counts["dropped_unexpected"] += 1
            return
        del self._pending[ident]
        for waiter in pending.waiters:
            waiter(message)

    # ---- the local control socket (and in-process requests)
    def _serve_control(self) -> bool:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for message, reply in calls:
            self._control_request(message, reply)
        taken = len(calls)
        if self._control is not None:
            for request, answer in self._control.requests(MAX_TURN):
                taken += 1
                if request is None:
                    answer(error("bad_request", "not a msgpack map"))
                else:
                    self._control_request(request, answer)
        return taken > 0

    def _control_request(self, message: dict[str, object], reply: Reply) -> None:
        op = message.get("op")
        if op == "status":
            paths = {_text(a): {"mtu": p.mtu, "quiet_s": round(time.monotonic() - p.heard_s, 3)}
                     for a, p in sorted(self._paths.items())[:MAX_LISTED]}
            reply({"ok": True, "stats": self.stats, "listen": _text(self.address), "mtu": self._mtu, "paths": paths})
            return
        if op == "locate":
            self._locate(message, reply)
            return
        if op not in ("import", "exports", "offer"):
            reply(error("bad_request", f"unknown request {op!r}"))
            return
        try:
            address = self._remote_address(message)
            name = namespace.validate_name(message.get("name")) if op != "exports" else ""
            timeout_s = min(max(float(message.get("timeout", 5.0)), 0.1), 60.0)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            reply(error("bad_request", str(exc)))
            return
        if address == self.address:
            reply(error("refused", f"{_text(address)} is this host's own bridge: use the local name instead"))
            return
        if self._key is None and address not in self._peers:
            reply(error("refused", f"this bridge has no key and {_text(address)} is not one of its peers: "
                                    f"start it with --peer {_text(address)} (or give both bridges --key-file)"))
            return
        if op == "import":
            # always ask the exporter, even with a replica here: it may be of a segment gone there (the
            # connect race: a service restarted, its old channel's BYE still on the way); the answer
            # names the segment the name has now (_make_replica keeps a replica of that one)
            self._ask(("import", address, name), dg.Kind.IMPORT, {"name": name}, timeout_s, reply)
        elif op == "exports":
            self._ask(("exports", address, ""), dg.Kind.LIST, {}, timeout_s, reply)
        else:
            self._offer(name, address, timeout_s, reply)

    def _remote_address(self, message: dict[str, object]) -> Address:
        host, port = message.get("host"), message.get("port")
        if not isinstance(host, str) or type(port) is not int or not 0 < port <= 65535:
            raise ValueError("give host (an IP address) and port")
        ip = ipaddress.ip_address(host)
        if (ip.version == 6) != (self._family == socket.AF_INET6):
            raise ValueError(f"this bridge listens on IPv{4 if self._family == socket.AF_INET else 6}")
        return str(ip), port

    def _ask(self, ident: tuple[str, Address, str], kind: dg.Kind, body: dict[str, object], timeout_s: float,
             reply: Reply) -> None:
        """Send ``kind`` (its ``body`` and a nonce) to ``ident``'s address until answered or ``timeout_s``;
        ``reply`` gets the answer (requests for the same ``ident`` share one)."""
        pending = self._pending.get(ident)
        if pending is None:
            nonce = secrets.randbits(63)
            body = {"nonce": nonce, **body}
            now = time.monotonic()
            pending = self._pending[ident] = _Pending(
                nonce, ident[1], lambda: self._sealer.control(kind, body, _now_us()), now + timeout_s, now)
        pending.waiters.append(reply)
        self._wake()

    # ---- offering: a local process has a local segment replicated at another host (RPC's own channels)
    def _offer(self, name: str, address: Address, timeout_s: float, reply: Reply) -> None:
        replica, problem = self._export_replica(name)
        if replica is None:
            reply(error("not_found", problem))
            return
        if address not in replica.links:
            replica.link(address)
            self._paths_at = 0.0
        seg = replica.segment
        self._ask(("offer", address, name), dg.Kind.OFFER,
                  {"name": name, "key": replica.key, "size": seg.size, "unit": seg.unit, "mode": int(seg.mode),
                   "sow": seg.signal_on_write}, timeout_s, reply)

    def _offered(self, body: dict[str, object], source: Address) -> None:
        name = str(body["name"])
        answer: dict[str, object] = {"nonce": body["nonce"], "name": name}
        try:
            answer["local"] = self._make_replica(name, source, body)
        except (OmbmError, OSError, ValueError) as exc:
            answer["error"] = f"{_text(self.address)} cannot make a replica of {name!r}: {exc}"[:dg.MAX_TEXT]
        self._send(source, self._sealer.control(dg.Kind.OFFER_REPLY, answer, _now_us()))

    def _offer_reply(self, body: dict[str, object], source: Address) -> None:
        ident = ("offer", source, str(body["name"]))
        if "error" in body:
            self._answer(ident, body["nonce"], error("refused", str(body["error"])))
        else:
            self._answer(ident, body["nonce"], {"ok": True, "remote": body["local"]})

    # ---- locating: who exports a name (paper §3.2: "clients may multicast to locate a server")
    def _locate(self, message: dict[str, object], reply: Reply) -> None:
        """A local process asks which bridges export ``name``: a LOCATE goes to the group (if this
        bridge has one) and to every peer, again every ``RETRY_S`` (best effort), and the bridges that
        answer are gathered until the timeout; then ``reply`` gets them all (``[]`` if none)."""
        try:
            name = namespace.validate_name(message.get("name"))
            timeout_s = min(max(float(message.get("timeout", 1.0)), 0.1), 60.0)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            reply(error("bad_request", str(exc)))
            return
        now = time.monotonic()
        nonce = secrets.randbits(63)
        self._locates[nonce] = _Locate(name, now + timeout_s, now, reply)
        self._wake()

    def _locate_timers(self, now_s: float) -> None:
        for nonce, locate in list(self._locates.items()):
            if now_s >= locate.deadline_s:
                del self._locates[nonce]
                locate.reply({"ok": True, "found": [_text(a) for a in locate.found]})
            elif now_s >= locate.next_send_s:
                locate.next_send_s = now_s + RETRY_S
                data = self._sealer.control(dg.Kind.LOCATE, {"nonce": nonce, "name": locate.name}, _now_us())
                for address in ([self._group] if self._group is not None else []) + sorted(self._peers):
                    self._send(address, data)

    def _locate_asked(self, body: dict[str, object], source: Address, sender: int) -> None:
        """A LOCATE: answered (to the asker's unicast address) if this bridge exports the name and the
        segment exists now (a service whose server is not running is not found)."""
        name = str(body["name"])
        if sender == self._sealer.sender or name not in self._exports:  # our own, looped back by the group
            return
        try:
            open_segment(name).release()
        except (OmbmError, OSError):
            return
        self._send(source, self._sealer.control(dg.Kind.LOCATED, {"nonce": body["nonce"], "name": name}, _now_us()))

    def _located(self, body: dict[str, object], source: Address) -> None:
        locate = self._locates.get(_int(body["nonce"]))
        if locate is None or locate.name != body["name"] or source == self.address:
            self._counts["dropped_unexpected"] += 1
            return
        locate.found[source] = None

    def _receive_group(self, now_s: float) -> bool:
        """Datagrams sent to the multicast group (LOCATEs): validated and taken as any other."""
        if self._group_sock is None:
            return False
        for taken in range(MAX_TURN):
            try:
                data, source = self._group_sock.recvfrom(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return taken > 0
            except OSError:
                continue
            self.receive_datagram(data, source[:2], now_s)
        return True

    # ---- paths: keepalives and the path MTU, per bridge this one replicates with (net/path.py)
    def _paths_tick(self, now_s: float) -> None:
        """Every bridge linked to a replica is a path (:class:`~ombm.net.path.Path`). Quiet for
        ``keepalive_s`` (nothing heard from it), it gets a PING naming the segments shared with it, once
        per period; silent for ``KEEPALIVE_PERIODS`` periods, it is dead: every link to it goes, as on
        its BYE (the replicas close, and the processes here see their remote peer die), and it gets a
        BYE in case it was only frozen or cut off (so it closes its side when it comes back). Its MTU:
        the kernel's word once a period, and the probes of the search."""
        linked: dict[Address, list[int]] = {}
        for replica in self._replicas.values():
            for address in replica.links:
                linked.setdefault(address, []).append(replica.key)
        for address in [a for a in self._paths if a not in linked]:
            del self._paths[address]
        ask_kernel = now_s >= self._kernel_at
        if ask_kernel:
            self._kernel_at = now_s + self._keepalive_s
        for address, keys in linked.items():
            path = self._paths.get(address)
            new = path is None
            if path is None:  # a new path: quiet from now
                path = self._paths[address] = Path(self._limit, self._keepalive_s, now_s)
            if self._engine is not None:  # what the native path heard from it
                heard_ns = self._engine.heard_ns(address)
                if heard_ns:
                    path.heard(heard_ns / 1e9)
            if path.dead(now_s):
                _log.info("ombm bridge: %s silent for %.1f s: its replicas close", _text(address),
                          now_s - path.heard_s)
                self._counts["paths_dead"] += 1
                for _ in range(BYE_COPIES):
                    self._send(address, self._sealer.control(dg.Kind.BYE, {"keys": keys[:dg.MAX_BODY_ITEMS]},
                                                             _now_us()))
                self._unlink(address, set())
                del self._paths[address]
                continue
            if path.ping_due(now_s):
                for at in range(0, len(keys), dg.MAX_BODY_ITEMS):
                    self._counts["pings_sent"] += 1
                    self._send(address, self._sealer.control(
                        dg.Kind.PING, {"keys": keys[at:at + dg.MAX_BODY_ITEMS]}, _now_us()))
            if self._ip_fragments:
                continue  # IP fragments what is longer than the path's MTU: nothing to learn
            if ask_kernel or new:
                payload = _kernel_mtu(self._family, address)
                if payload is not None:
                    path.kernel_says(payload, now_s)
            probe = path.probe_due(now_s, lambda nonce, size: self._sealer.probe(nonce, size, _now_us()))
            if probe is not None:
                self._send_probe(path, address, probe, now_s)
        self._use_path_mtu()
        self._paths_at = min([now_s + self._keepalive_s / 4, self._kernel_at]
                             + [path.next_s(not self._ip_fragments) for path in self._paths.values()])

    def _send_probe(self, path: Path, address: Address, data: bytes, now_s: float) -> None:
        self._counts["probes_sent"] += 1
        try:
            self._sock.sendto(data, address)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # the kernel knows the path is narrower (don't fragment is set)
                path.refused(now_s)
            else:
                self._counts["send_errors"] += 1
            return
        self._counts["datagrams_out"] += 1
        self._counts["bytes_out"] += len(data)

    def _use_path_mtu(self) -> None:
        """Cut updates to the narrowest path's MTU (one size for all: a replica's update is cut once for
        all its links). Called between turns, when the packers are empty (``_flush`` took them)."""
        mtu = self._limit if self._ip_fragments else min([self._limit] + [path.mtu for path in self._paths.values()])
        if mtu != self._mtu and dg.entry_room(mtu, self._sealer.trailer) >= 1:
            self._mtu, self._room = mtu, dg.entry_room(mtu, self._sealer.trailer)
            self._packers.clear()
            if self._engine is not None:
                self._engine.set_mtu(mtu)

    def _probed_by(self, body: dict[str, object], source: Address) -> None:
        """A PROBE arrived whole: say so (the prober learns its size crosses the path)."""
        self._send(source, self._sealer.control(dg.Kind.PROBED, {"nonce": body["nonce"]}, _now_us()))

    def _probe_answered(self, body: dict[str, object], source: Address, now_s: float) -> None:
        path = self._paths.get(source)
        if path is None or not path.probed(_int(body["nonce"]), now_s):
            self._counts["dropped_unexpected"] += 1

    def _pinged_by(self, body: dict[str, object], source: Address) -> None:
        """A PING: a PONG naming the keys this bridge does not replicate with ``source`` (it restarted,
        or closed them and its BYE was lost), so the asker drops those links."""
        gone = []
        for key in _ints(body["keys"]):
            replica = self._replicas.get(key)
            if replica is None or source not in replica.links:
                gone.append(key)
        self._send(source, self._sealer.control(dg.Kind.PONG, {"gone": gone}, _now_us()))

    def _ponged(self, body: dict[str, object], source: Address) -> None:
        gone = set(_ints(body["gone"]))
        if gone:
            self._unlink(source, gone)

    # ---- datagrams out
    def _next_tag(self) -> int:
        if self._engine is not None:
            return self._engine.next_tag()
        self._tag = (self._tag + 1) & 0xFFFFFFFF or 1
        return self._tag

    def _send_dirty(self) -> None:
        for replica in list(self._replicas.values()):
            if not replica.dirty:
                continue
            units, replica.dirty = replica.dirty, {}
            for u in units:
                for address, entries in replica.local_update(u, self._next_tag(), self._room):
                    self._queue(address, entries)

    def _queue(self, address: Address, entries: list[bytes]) -> None:
        packer = self._packers.get(address)
        if packer is None:
            packer = self._packers[address] = Packer(self._mtu, self._sealer.trailer)
        self._counts["updates_out"] += 1
        for entry in entries:
            body = packer.add(entry)
            if body is not None:
                self._send(address, self._sealer.seal(dg.Kind.UPDATE, body[0], body[1], _now_us()))

    def _flush(self, now_s: float) -> None:
        for address, packer in self._packers.items():
            body = packer.take()
            if body is not None:
                self._send(address, self._sealer.seal(dg.Kind.UPDATE, body[0], body[1], _now_us()))
        for (address, key), units in self._resyncs.items():
            listed = sorted(units)
            for at in range(0, len(listed), dg.MAX_BODY_ITEMS):
                self._counts["resyncs_sent"] += 1
                self._send(address, self._sealer.control(
                    dg.Kind.RESYNC, {"key": key, "units": listed[at:at + dg.MAX_BODY_ITEMS]}, _now_us()))
        self._resyncs.clear()

    def _send(self, address: Address, data: bytes) -> None:
        try:
            self._sock.sendto(data, address)
        except OSError as exc:  # full, or the path refused it: best effort, counted
            self._counts["send_errors"] += 1
            if exc.errno == errno.EMSGSIZE:  # the kernel learnt a smaller path MTU: ask it now
                self._kernel_at = self._paths_at = 0.0
            return
        self._counts["datagrams_out"] += 1
        self._counts["bytes_out"] += len(data)


# ---- helpers
def _resolve(host: str, port: int, family: int = 0) -> tuple[int, Address]:
    """(family, (ip, port)) of ``host``; ValueError if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    fam, _, _, _, sockaddr = infos[0]
    return fam, (str(sockaddr[0]), int(sockaddr[1]))


_UDP_GRO = 104  # <linux/udp.h>
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>
_IP_MTU_DISCOVER, _IP_MTU, _IPV6_MTU_DISCOVER, _IPV6_MTU, _PMTUDISC_DO = 10, 14, 23, 24, 2  # <linux/in.h>, in6.h
_UDP_HEADERS: dict[int, int] = {socket.AF_INET: 20 + 8, socket.AF_INET6: 40 + 8}


def _dont_fragment(sock: socket.socket, family: int) -> None:
    """Set don't-fragment (path MTU discovery "do"): the kernel never fragments, and refuses (EMSGSIZE)
    a datagram longer than the path MTU it knows."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_DO)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_DO)


def _kernel_mtu(family: int, address: Address) -> int | None:
    """The kernel's path MTU toward ``address`` as a UDP payload (its route's link, or what an ICMP
    taught it), asked of a socket connected there; None if it cannot say."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            _dont_fragment(probe, family)
            probe.connect(address)
            if family == socket.AF_INET6:
                mtu = probe.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
            else:
                mtu = probe.getsockopt(socket.IPPROTO_IP, _IP_MTU)
    except OSError:
        return None
    return int(mtu) - _UDP_HEADERS[family]


def _group(text: str, family: int) -> Address:
    """``"GROUP:PORT"`` as an address: an IPv4 multicast group (ValueError otherwise)."""
    host, port = remote.parse_host_port(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: give the group as an IP address") from None
    if ip.version != 4 or not ip.is_multicast or not 0 < port:
        raise ValueError(f"{text!r} is not an IPv4 multicast group and port (such as 239.255.0.1:7400)")
    if family != socket.AF_INET:
        raise ValueError("a multicast group needs a bridge listening on IPv4")
    return str(ip), port


def _join(group: Address, sock: socket.socket, interface: str) -> socket.socket:
    """A socket that hears ``group`` on the interface of ``interface`` (any if it is the wildcard);
    ``sock`` (the bridge's own) sends there, so answers come back to the bridge's unicast address."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
    if interface != "0.0.0.0":
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    heard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        heard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # other bridges of this host join too
        heard.bind(group)  # the group's address: only its datagrams
        membership = socket.inet_aton(group[0]) + socket.inet_aton(interface)
        heard.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except BaseException:
        heard.close()
        raise
    return heard


def _still_named(replica: Replica) -> bool:
    """Whether the name of an exported segment still names the segment we hold (its creator may have
    released it, or released it and made another of that name)."""
    try:
        seg = open_segment(replica.name)
    except (OmbmError, OSError):
        return False
    try:
        return seg.id == replica.segment.id
    finally:
        seg.release()


def _text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _int(value: object) -> int:
    assert type(value) is int  # the datagram's schema checked it
    return value


def _ints(value: object) -> list[int]:
    assert type(value) is list
    return [_int(v) for v in value]
