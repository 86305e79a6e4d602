"""The RPC server: a well-known channel, and a request/reply channel pair per client (paper §4).

First contact: a client writes a CONNECT frame (naming the request and reply
channel segments it created) into the service's **well-known channel**
``rpc-<name>``, which many clients may write at once. The server binds the
request channel read-only with its RPC signal handler and the reply channel
writable, and answers with an ACK frame carrying its identity. From then on
each request frame raises a signal in the server; the handler unmarshals
(checksum folded into the copy), calls the method, and writes the reply,
whose write signals the client.

On the memory signal path the serving loop is native (``_native.RequestIntake``):
a request newer than every call delivered, from a synchronous client or a pipelining
one (issue 13), is served without returning to Python but for the method itself (the
*server lane*: unmarshal, call, marshal, write the reply, keep it in the reply cache
until the client's ack releases it); every other frame goes to the connection's
sans-I/O ``ServerProtocol``, which first takes back what the lane served
(``ServerProtocol.reclaim``) and lends its state again afterwards (``lend``).

The server's receiver is owned by the server, so clients that connect after
``Server(...)`` but before ``start()``/``serve_forever()`` are queued in its
FIFO and served once it runs. Connections of dead clients are reclaimed.
Calls of plain methods run in the serving thread, one at a time; ``async def`` methods run on an
event loop, many at a time, and are answered when they end (:mod:`ombm.rpc.async_calls`);
:func:`serve_async` serves from inside a running loop. What it does to connections (accepts, drops,
reaps) is logged to ``logging.getLogger("ombm.rpc")``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal as _signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgpack

from ombm import _layout as L
from ombm import _native
from ombm.core import config as _config
from ombm.core import lifecycle, namespace, remote
from ombm.errors import ClosedError, DirectoryFullError, ForkedError, FrameError, MessageTooLargeError
from ombm.errors import SegmentFormatError
from ombm.errors import SegmentNotFoundError
from ombm.core.signals import Receiver
from ombm.core.stats import COUNTERS
from ombm.rpc import bulk, marshal
from ombm.rpc.bulk import Bulk
from ombm.rpc.async_calls import AsyncCalls
from ombm.transport import wire
from ombm.rpc.slots import WELL_KNOWN_SLOT_SIZE, WELL_KNOWN_SLOTS, SlotChannel, well_known_name
from ombm.core.signals import SignalHandle
from ombm.transport.rpc_protocol import DEFAULT_MAX_MESSAGE_BYTES, RequestReceived, ServerProtocol, check_max_message
from ombm.transport.spin import PathSpin
from ombm.transport.wire import FrameFields

logger = logging.getLogger("ombm.rpc")

REAP_INTERVAL_S = 1.0
_SERVE_REQUEST, _SERVE_SIGNAL, _SERVE_LEARN = _native.SERVE_REQUEST, _native.SERVE_SIGNAL, _native.SERVE_LEARN
_SERVE_STALLED = _native.SERVE_STALLED
# what the lane hands back (ServerProtocol.reclaim's arguments): served, replied, ack, last, kept calls
_Handback = tuple[int, int, int, int, tuple[tuple[int, bytes | None], ...]]


class _Limit(int):
    """A connection's limit on a result (bytes), carrying its bulk segments (``bulk``, or None): what
    the native intake hands back to :meth:`Server._execute` and :meth:`Server._finish`."""

    bulk: Bulk | None = None


def _bulk_of(limit: int) -> Bulk | None:
    """The bulk segments of the connection whose limit this is (None: none, or not a connection's)."""
    return limit.bulk if isinstance(limit, _Limit) else None


class _Connection:
    def __init__(self, conn_id: int, nonce: int, request: SlotChannel, reply: SlotChannel, pid: int, start: int,
                 max_payload: int, max_message_bytes: int, refusal: Callable[[bool], bytes | None],
                 max_reply: int) -> None:
        self.conn_id = conn_id
        self.nonce = nonce
        self.request = request
        self.reply = reply
        self.pid, self.start = pid, start
        # a client of another host: its request channel is this host's bridge's replica, and the
        # bridge holds it while the client lives (docs/net.md); the pid names a process there
        self.remote = remote.is_replica_name(request.name)
        self.protocol = ServerProtocol(conn_id, max_payload=max_payload, max_message_bytes=max_message_bytes,
                                       refusal=refusal)
        self.handle: SignalHandle | None = None
        # a frame into the next reply slot
        self.send: Callable[[bytes], None] = reply.send if reply.writer is None else reply.writer.send
        # the largest result the client takes: its reply channel, and its limit (it drops a reply
        # whose fragments x max_payload exceed it; one frame always goes)
        self.limit = _Limit(min(reply.max_message, max(max_payload, max_reply // max_payload * max_payload)))
        self.bulk: Bulk | None = None  # large payloads beside the channels (rpc/bulk.py), once the client offers them

    def close(self) -> None:
        if self.handle is not None:
            self.handle.disable()
        for ch in (self.request, self.reply, self.bulk):
            try:
                if ch is not None:
                    ch.close()
            except Exception:
                pass


class Server:
    """Serve the public methods of ``obj`` on the well-known channel ``name``.

    ``max_message_bytes`` bounds what the server reassembles from a client (default 4 MiB): a call
    announcing more fragments than that many bytes fill is refused at its first fragment, unread
    and counted (``stats["refused"]``), and answered with a
    :class:`~ombm.errors.MessageTooLargeError` (a one-way call is dropped).  Clients learn it when
    they connect and refuse such a call themselves, before sending.

    ``async def`` methods of ``obj`` run on ``loop`` (default: an event loop in a thread the
    server starts on the first such call and joins when it stops), many calls at once; plain
    methods run in the serving thread.  ``stats["async_calls"]`` counts them.
    """

    _forked = False  # set in a forked child: this server is the parent's (ForkedError here)

    def __init__(self, name: str, obj: Any, *, allow_pickle: bool = False,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.max_message_bytes = check_max_message(max_message_bytes)
        self._refusal = marshal.encode_error(MessageTooLargeError(
            f"the call announced more than this server's max_message_bytes ({max_message_bytes}); "
            "it was refused unread"))
        self.name = namespace.validate_name(name)
        self.obj = obj
        self.allow_pickle = allow_pickle
        self._methods: dict[str, Callable[..., object]] = {
            attr: getattr(obj, attr) for attr in dir(obj) if not attr.startswith("_") and callable(getattr(obj, attr))
        }
        # what the native lane runs: the plain methods (a call of an async one goes to the protocol)
        lane_methods = {n: fn for n, fn in self._methods.items() if not inspect.iscoroutinefunction(fn)}
        # lane_calls: of the calls, those served on the server lane (brought up to date when the serving
        # loop reaps, at least every REAP_INTERVAL_S, and when it stops)
        self.stats: dict[str, int] = {"calls": 0, "errors": 0, "connections": 0, "bad_connects": 0, "dropped_frames": 0,
                                  "refused": 0, "broken_connections": 0, "lane_calls": 0, "async_calls": 0}
        self._receiver = Receiver()
        self._async = AsyncCalls(self.name, loop, self._outcome, self._receiver.nudge)
        # the serving loop and its lane, native (memory signal path only)
        self._intake: _native.RequestIntake[_Connection, wire.Kind] | None = None if self._receiver.kernel else _native.RequestIntake(
            self._receiver.fifo.fifo_map, wire.KIND_TABLE, lane_methods, self.stats, msgpack.unpackb,
            marshal.ext_hook(allow_pickle), marshal.guarded_packer(allow_pickle), self._execute, self._finish)
        self._connections: dict[int, _Connection] = {}
        self._remote_connections = 0  # of them, clients on other hosts: the wait spins the path (PathSpin)
        self._path_spin = PathSpin()
        self._by_nonce: dict[int, _Connection] = {}
        self._by_segment: dict[int, _Connection] = {}  # request channel segment id -> connection
        self._stop = False
        self._thread: threading.Thread | None = None
        self._serving = threading.Lock()
        self._last_reap = time.monotonic()
        try:
            self._well_known = SlotChannel.create(  # a dead server's name is served again at once
                well_known_name(name), slots=WELL_KNOWN_SLOTS, slot_size=WELL_KNOWN_SLOT_SIZE,
                take_over_dead_creator=True,
            )
            region = self._well_known.region
            self._receiver.add_handler(region.address, region.size, self._on_connect)
        except BaseException:
            self._receiver.close()
            raise
        _SERVERS.add(self)
        logger.info("%r: serving (pid %d)", self.name, os.getpid())

    # -- first contact
    def _on_connect(self, address: int) -> None:
        """A CONNECT in the well-known channel: anyone's to write, so nothing in it may stop the
        serving loop: anything unexpected is counted as a bad connect, the frame dropped."""
        try:
            self._connect(address)
        except Exception:
            self.stats["bad_connects"] += 1

    def _connect(self, address: int) -> None:
        try:
            kind, _, nonce, _, _, _, payload, _ = wire.decode_fields(self._well_known.slot_view(address))
            if kind != wire.Kind.CALL:
                raise FrameError("not a CONNECT frame")
            hello = msgpack.unpackb(payload)
            req_name, rep_name = str(hello["req"]), str(hello["rep"])
            conn_id, pid, start = int(hello["conn"]), int(hello["pid"]), int(hello["start"])
            max_reply = int(hello.get("max_reply", DEFAULT_MAX_MESSAGE_BYTES))  # older clients do not say
            if not (0 < conn_id < 1 << 64 and 0 < pid < 1 << 31 and 0 <= start < 1 << 64 and max_reply > 0):
                raise ValueError("connection id, pid, start time or reply limit out of range")
        except (FrameError, ValueError, KeyError, TypeError, msgpack.UnpackException):
            self.stats["bad_connects"] += 1
            return
        conn = self._by_nonce.get(nonce)
        if conn is None:
            conn = self._accept(conn_id, nonce, req_name, rep_name, pid, start, max_reply)
            if conn is None:
                return
        me_pid, me_start = namespace.me()
        ack = msgpack.packb({"pid": me_pid, "start": me_start, "max_payload": conn.request.max_payload,
                             "max_message": self.max_message_bytes})
        conn.reply.send(wire.encode(wire.Kind.ACK, conn.conn_id, nonce, ack))

    def _accept(self, conn_id: int, nonce: int, req_name: str, rep_name: str, pid: int, start: int,
                max_reply: int) -> _Connection | None:
        if conn_id in self._connections or not (remote.is_replica_name(req_name) or namespace.is_alive(pid, start)):
            self.stats["bad_connects"] += 1
            return None
        request = reply = None
        try:  # the client made these channels: what they hold is hostile input
            request = SlotChannel.open(req_name, writable=False)
            if request.segment.id == self._well_known.segment.id or request.segment.id in self._by_segment:
                raise ValueError("a channel this server already serves: a hostile or confused CONNECT")
            reply = SlotChannel.open(rep_name, writable=True)
            conn = _Connection(conn_id, nonce, request, reply, pid, start, min(request.max_payload, reply.max_payload),
                               self.max_message_bytes, self._refuse, max_reply)
            region = request.region
            conn.handle = self._receiver.add_handler(  # DirectoryFullError if the client's directory is full
                region.address, region.size, lambda address: self._guarded(conn, address - region.address)
            )
        except (SegmentNotFoundError, SegmentFormatError, DirectoryFullError, ValueError):
            for channel in (reply, request):
                if channel is not None:
                    channel.close()
            self.stats["bad_connects"] += 1
            return None
        self._connections[conn_id] = conn
        self._remote_connections += conn.remote
        self._by_nonce[nonce] = conn
        self._by_segment[request.segment.id] = conn
        if self._intake is not None:
            seg = request.segment.id
            lane_writer = reply.writer if _config.LANES else None  # None: never a lane (OMBM_LANES=0, tests)
            self._intake.add(seg, conn, region.address, region.size, request.slot_size, lane_writer, conn_id,
                             conn.protocol.max_payload, conn.limit)
            last = conn.protocol.lend()  # a new connection's protocol lends (0): nothing delivered yet
            if last is not None:
                self._intake.lane(seg, last, conn.protocol.lane_room())
        self.stats["connections"] += 1
        logger.info("%r: accepted a connection from pid %d%s", self.name, pid, " (another host)" if conn.remote else "")
        return conn

    def _take_bulk(self, conn: _Connection, args: tuple[object, ...]) -> bool:
        """A call of the reserved method ``bulk.BULK_OFFER``: the client offers its bulk segments (the
        names of its calls' and its replies'). Whether they were taken (else every payload of the
        connection travels inline)."""
        taken = self._open_bulk(*args) if len(args) == 2 else None
        if taken is None:
            return False
        old, conn.bulk = conn.bulk, taken
        conn.limit.bulk = taken
        if old is not None:  # offered again: the new ones replace them
            old.close()
        return True

    def _open_bulk(self, calls: object, replies: object) -> Bulk | None:
        """The bulk segments a client offered, or None: the client made them, so they are checked as
        hostile input."""
        if not (isinstance(calls, str) and isinstance(replies, str)):
            return None
        theirs = mine = None
        try:
            theirs = bulk.open_bulk(calls)
            mine = bulk.open_bulk(replies)
            if theirs.id == mine.id:
                raise ValueError("one segment offered for both directions")
            return Bulk(mine, theirs)
        except (SegmentNotFoundError, SegmentFormatError, ValueError, OSError):
            for seg in (theirs, mine):
                if seg is not None:
                    seg.release()
            return None

    def _refuse(self, oneway: bool) -> bytes | None:
        """A connection's protocol refused a request larger than ``max_message_bytes`` (cold path)."""
        self.stats["refused"] += 1
        return None if oneway else self._refusal

    # -- calls
    def _on_request(self, conn: _Connection, offset: int) -> None:
        now = time.monotonic()
        self._answer(conn, conn.protocol.receive_frame(conn.request.slot_view_at(offset), now), now)

    def _answer(self, conn: _Connection, events: list[RequestReceived], now: float,
                executed: tuple[bytes, bool] | None = None) -> None:
        """Execute the calls the protocol delivered (``executed``: the one call, run already by the
        native lane); write the replies (and acks) the protocol has."""
        protocol = conn.protocol
        for event in events:
            outcome = executed or self._run(event.data, conn.limit, (conn, event.call_id, event.oneway))
            if outcome is None:
                continue  # an async method's call: answered when its coroutine ends (_answer_async)
            if not event.oneway:
                protocol.send_reply(event.call_id, outcome[0], now, error=outcome[1])
        for frame in protocol.frames_to_send(now):
            conn.send(frame)

    def _answer_async(self, now: float) -> None:
        """Answer the calls whose coroutines ended (the serving thread's: it owns the protocols)."""
        for key, call_id, oneway, data, error in self._async.take_done():
            conn = key
            assert isinstance(conn, _Connection), "AsyncCalls gives back the connection it was given"
            if self._connections.get(conn.conn_id) is not conn:
                continue  # the client went while its call ran
            try:
                if not oneway:
                    conn.protocol.send_reply(call_id, data, now, error=error)
                for frame in conn.protocol.frames_to_send(now):
                    conn.send(frame)
            except Exception:
                self.stats["dropped_frames"] += 1
            last = conn.protocol.lend()
            if last is not None and self._intake is not None:
                self._intake.lane(conn.request.segment.id, last, conn.protocol.lane_room())

    def _guarded(self, conn: _Connection, offset: int) -> None:
        """A client's frames must never stop the server: anything unexpected is counted, the frame dropped."""
        try:
            self._on_request(conn, offset)
        except Exception:
            self.stats["dropped_frames"] += 1

    def _execute(self, data: bytes | bytearray, limit: int) -> tuple[bytes, bool]:
        """Run the call marshalled in ``data`` (for the native lane, which runs no async method):
        its reply payload, and whether it is an error."""
        outcome = self._run(data, limit, None)
        assert outcome is not None, "without a call to answer later, nothing is deferred"
        return outcome

    def _run(self, data: bytes | bytearray, limit: int,
             call: tuple[_Connection, int, bool] | None) -> tuple[bytes, bool] | None:
        """Run the call marshalled in ``data``: its reply payload, and whether it is an error; or
        None for a call of an ``async def`` method (``call``: its connection, id and one-way flag),
        whose coroutine now runs on the event loop."""
        self.stats["calls"] += 1
        try:
            try:
                method, args, kwargs = marshal.decode_call(data, allow_pickle=self.allow_pickle, bulk=_bulk_of(limit),
                                                           bulk_limit=self.max_message_bytes)
            except MessageTooLargeError:  # its bulk data: refused unread, answered with the error
                self.stats["refused"] += 1
                raise
            if method == bulk.BULK_OFFER and call is not None:
                return marshal.encode_result(self._take_bulk(call[0], args)), False
            fn = self._methods.get(method)
            if fn is None:
                raise AttributeError(f"service {self.name!r} has no method {method!r}")
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                if call is None:
                    value.close()
                    raise TypeError(f"{method!r} is a coroutine function: it cannot run here")
                self.stats["async_calls"] += 1
                self._async.start(call[0], call[1], call[2], value, limit)
                return None
            return self._result(value, limit), False
        except Exception as exc:  # the remote caller gets it as RemoteError
            self.stats["errors"] += 1
            return marshal.encode_error(exc), True

    def _outcome(self, value: object, exc: BaseException | None, limit: int) -> tuple[bytes, bool]:
        """A coroutine's end as a reply (in the loop's thread): as :meth:`_finish`."""
        if exc is None:
            try:
                return self._result(value, limit), False
            except Exception as failed:
                exc = failed
        self.stats["errors"] += 1  # a plain int bumped from the loop's thread: a count, not a lock
        return marshal.encode_error(exc), True

    def _result(self, value: object, limit: int) -> bytes:
        result = marshal.encode_result(value, allow_pickle=self.allow_pickle, bulk=_bulk_of(limit), bulk_limit=limit)
        if len(result) > limit:
            raise ValueError(f"the result ({len(result)} bytes) exceeds what the client takes ({limit} bytes: its "
                             "reply channel and its max_message_bytes); connect with more or larger slots, "
                             "or use ombm.Stream")
        return result

    def _finish(self, value: object, exc: Exception | None, limit: int) -> tuple[bytes, bool]:
        """The end of a call the native lane ran whose outcome is not a plain result that fits:
        the method raised ``exc``, or ``value`` does not marshal or fit (as :meth:`_execute`)."""
        if exc is None:
            try:
                return self._result(value, limit), False
            except Exception as failed:
                exc = failed
        self.stats["errors"] += 1
        return marshal.encode_error(exc), True

    # -- liveness
    def _reap(self) -> None:
        """Drop connections whose client died or closed (it no longer holds its request channel),
        and those whose channels another process shrank under us (they read and write zeros now)."""
        for conn in list(self._connections.values()):
            # across hosts the client's bridge holds the channel while the client lives (docs/net.md)
            alive = (remote.live_peer(conn.request.segment.directory, L.KIND_HOLDER) if conn.remote
                     else namespace.is_alive(conn.pid, conn.start))
            if not alive:
                why = "its client died (reaped)"
                COUNTERS.dead_receivers_reclaimed += 1
            elif conn.request.broken or conn.reply.broken:
                why = "another process shrank its channels"
                self.stats["broken_connections"] += 1
            elif not conn.remote and not any(
                e.kind == L.KIND_HOLDER and e.pid == conn.pid for e in conn.request.segment.directory.entries()
            ):
                why = "its client closed it"
            else:
                continue
            logger.info("%r: dropped the connection of pid %d: %s", self.name, conn.pid, why)
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        if self._intake is not None:
            self._intake.remove(conn.request.segment.id)
        if self._connections.pop(conn.conn_id, None) is not None:
            self._remote_connections -= conn.remote
        self._by_nonce.pop(conn.nonce, None)
        self._by_segment.pop(conn.request.segment.id, None)
        conn.close()

    # -- running
    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()``, SIGINT or SIGTERM (main thread only)."""
        if self._receiver.closed:
            raise self._closed_error()
        if not self._serving.acquire(blocking=False):
            raise RuntimeError("this server is already being served by another thread")
        previous = None
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            previous = _signal.signal(_signal.SIGTERM, lambda signum, frame: self._request_stop())
        try:
            if self._intake is not None:
                self._serve_memory()
            else:
                self._serve_kernel()
        except KeyboardInterrupt:
            pass
        finally:
            if in_main:
                _signal.signal(_signal.SIGTERM, previous)
            self._serving.release()
            if self._thread is None or threading.current_thread() is not self._thread:
                self._close()

    def start(self) -> Server:
        """Serve in a background thread owned by this server (``stop()`` joins it)."""
        if self._receiver.closed:
            raise self._closed_error()
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self.serve_forever, name=f"ombm-rpc-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _serve_memory(self) -> None:
        """The serving loop: the native intake serves the simple requests itself (the server
        lane) and returns everything else: frames the protocol takes, other signals, timeouts."""
        receiver, intake = self._receiver, self._intake
        assert intake is not None, "serve_forever serves memory signals with the intake"
        serve, wait_policy, waited = intake.serve, receiver.wait_policy, receiver.waited
        monotonic = time.monotonic
        try:
            while not self._stop:
                # the next request may have to cross a path (the adaptive spin only; a local server: as before)
                across = self._remote_connections > 0 and not receiver.kernel and _config.SETTINGS.wait == "adaptive"
                spin_ns, sleep_ok, learn_ns = self._path_wait_policy() if across else wait_policy()
                r = serve(spin_ns, REAP_INTERVAL_S, sleep_ok, learn_ns)
                now = monotonic()
                status = r.status
                if status <= _SERVE_LEARN:  # a signal came (SERVE_LEARN: the lane served a request)
                    if across:
                        self._path_spin.waited(r.waited_ns, spin_ns)
                    else:
                        waited(r.waited_ns)
                    if status == _SERVE_REQUEST:
                        conn = r.connection
                        assert conn is not None, "a SERVE_REQUEST carries its connection"
                        self._take_frame(conn, r.fields, r.handback, r.executed, now)
                    elif status == _SERVE_SIGNAL:  # the well-known channel, a nudge
                        receiver.dispatch(r.segment_id, r.offset)
                elif status == _SERVE_STALLED:
                    receiver.fifo.retire_stalled()
                if self._async.has_done():
                    self._answer_async(now)
                if now - self._last_reap >= REAP_INTERVAL_S:
                    self._last_reap = now
                    self.stats["lane_calls"] = intake.served
                    self._reap()
        finally:
            self.stats["lane_calls"] = intake.served

    def _path_wait_policy(self) -> tuple[int, bool, int]:
        """The serving loop's wait while a client is on another host (docs/net.md, *Spin, then
        sleep*): its next request comes after a round trip across the path, longer than a local
        spin cap, so spin about the gaps between requests (``PathSpin``, learnt from the waits the
        lane reports: those longer than the local cap)."""
        cap_ns = int(_config.SETTINGS.spin_us * 1000)
        return self._path_spin.budget_ns(cap_ns, None), True, cap_ns

    def _take_frame(self, conn: _Connection, fields: FrameFields | None, handback: _Handback | None,
                    executed: tuple[bytes, bool] | None, now: float) -> None:
        """A request frame the lane left to the protocol: take back the lane's state, answer,
        and lend the state to the lane again if the connection is back to simple."""
        protocol = conn.protocol
        try:  # a client's frames must never stop the server: counted, the frame dropped
            if handback is not None:
                protocol.reclaim(*handback)
            self._answer(conn, protocol.receive_fields(fields, now), now, executed)
        except Exception:
            self.stats["dropped_frames"] += 1
        last = protocol.lend()
        if last is not None and self._connections.get(conn.conn_id) is conn:
            assert self._intake is not None, "frames come back from the intake"
            self._intake.lane(conn.request.segment.id, last, protocol.lane_room())

    def _serve_kernel(self) -> None:
        """The same on the software-only signal path (every signal through the kernel)."""
        receiver = self._receiver
        try:
            while not self._stop:
                signal = receiver.pop_wait(REAP_INTERVAL_S)
                if signal is not None:
                    conn = self._by_segment.get(signal[0])
                    if conn is not None:
                        self._guarded(conn, signal[1])
                    else:
                        receiver.dispatch(*signal)
                now = time.monotonic()
                if self._async.has_done():
                    self._answer_async(now)
                if now - self._last_reap >= REAP_INTERVAL_S:
                    self._last_reap = now
                    self._reap()
        except ClosedError:
            if not self._stop:
                raise  # closed by stop() only: anything else is a bug to see

    def _request_stop(self) -> None:
        self._stop = True
        if not self._receiver.closed:
            self._receiver.nudge()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, join the thread, and release every channel (idempotent)."""
        self._request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._close()

    def _close(self) -> None:
        if self._receiver.closed:
            return
        self._async.close()
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._receiver.close()
        self._well_known.close()
        logger.info("%r: stopped (%d calls served; its connections dropped)", self.name, self.stats["calls"])

    def _closed_error(self) -> ClosedError:
        if self._forked:
            return ForkedError(f"server {self.name!r} belongs to the process that forked this one: "
                               "serve it there, or make a new server here once that one stopped")
        return ClosedError(f"server {self.name!r} is stopped")

    def __del__(self) -> None:
        """Dropped unclosed (never started, or stopped serving without ``stop()``): warn
        (``ResourceWarning``) and release its channels; never raises."""
        def still_open() -> bool:
            receiver = self.__dict__.get("_receiver")
            return not (receiver is None or receiver.closed or self._forked or "_well_known" not in self.__dict__)

        lifecycle.finalize_unclosed(self, still_open, self._finish_unclosed)

    def _finish_unclosed(self) -> None:
        self._stop = True
        self._close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ombm.rpc.Server {self.name!r} connections={len(self._connections)}>"


async def serve_async(name: str, obj: Any, *, allow_pickle: bool = False,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
    """Serve ``obj`` as ``name`` from inside the running event loop, until cancelled.

    Its ``async def`` methods run on this loop (many calls at once, beside whatever else the loop
    runs); its plain methods in the serving thread, one at a time, as :class:`Server` runs them.
    Cancelling the task that awaits this stops the server (calls still running are cancelled,
    their callers see the server go) and re-raises ``CancelledError``::

        task = asyncio.create_task(ombm.rpc.serve_async("calc", Calc()))
        ...
        task.cancel()
    """
    loop = asyncio.get_running_loop()
    server = Server(name, obj, allow_pickle=allow_pickle, max_message_bytes=max_message_bytes, loop=loop)
    serving = loop.run_in_executor(None, server.serve_forever)  # closes the server when it returns
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server._request_stop()
        await asyncio.wait([serving])  # the serving thread ends within one wait (it was nudged)
        raise


_SERVERS: weakref.WeakSet[Server] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Every server of the parent is the parent's: in the child serving it raises ForkedError and
    ``stop()`` forgets the child's copy (its receiver is the parent's too: see ``core.signals``)."""
    for server in list(_SERVERS):
        server._forked = True
        server._stop = True
        server._thread = None  # the serving thread did not survive the fork
    _SERVERS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
