"""The RPC client: connect through the well-known channel, call, get the reply (paper §4).

``connect(name)`` creates a request channel (client writes) and a reply
channel (server writes), writes a CONNECT frame naming them into the
service's well-known channel, and waits for the server's ACK.

A synchronous call made while nothing else is outstanding is one native call
(``_native.CallLane``, holding the call ids the sans-I/O
:class:`~ombm.transport.rpc_protocol.ClientProtocol` lent it): marshal, write the frame
(the write of its last byte signals the server), wait, take and unmarshal the
reply. A pipelined call (``call_async``, the asyncio client) whose message fits one frame is one
native call too (``_native.PipeLane``, holding the call ids and the calls outstanding the protocol
lent it with them): marshal, write the frame or queue it behind the window; the drain completes
it. Any other call (threads sharing the client, large payloads, or while the protocol holds its
state) marshals the arguments, hands the message to the protocol, writes its frames, then
**takes its own reply** in the calling thread: no thread hop either way. Replies are taken
per wake-up, not per signal (issue 13): one native ``CallLane.take`` takes every signal in
the FIFO, checks the reply frames and unmarshals their results, and the calls of the whole
batch are completed under one lock. With several threads on one client, one thread at a
time takes replies (the leader) and completes every one it finds; each other waiting thread
(a follower) sleeps on a lock of its own until its call is done or the leader, letting go,
hands the lead to it.
Retransmission is the process-wide :mod:`~ombm.rpc.timer`'s job, off the call
path. A server that stopped or died is noticed while waiting.

The client's lifecycle (docs/rpc.md, "Lifecycle"): *connecting* (waiting up to ``wait`` s for the
service to appear), *connected*, *gone* once a call noticed that its server stopped or died (every
call in flight then raises ``ServerGoneError``: its server may or may not have run it), and
*reconnecting* at the next call, which makes a new session (new channels, connection id, call ids
and RTO estimate) with whatever serves the name now: the service of this host, else, for a plain
name, one found across hosts (rebinding, issue 12); a remote name ``calc@HOST:PORT`` reconnects
there only. Nothing of an old session is ever sent to a new server, so no call runs twice. All of
it is off the fast path: a call checks nothing more than before.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import os
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
from ombm.errors import CallTimeout, ClosedError, ForkedError, FrameError, SegmentFormatError, SegmentNotFoundError
from ombm.errors import BridgeError, ChannelBrokenError, ServerGoneError
from ombm.errors import MessageTooLargeError, RemoteError, ServiceNotFoundError, UnmarshalError
from ombm.errors import SegmentExistsError, SharedMemoryFullError
from ombm.core.signals import Receiver
from ombm.core.stats import COUNTERS
from ombm.rpc import bulk, marshal
from ombm.rpc.bulk import BULK_OFFER as _BULK_OFFER
from ombm.rpc.bulk import Bulk
from ombm.core.segment import Segment
from ombm.rpc.locate import locate
from ombm.transport import wire
from ombm.rpc.slots import DEFAULT_SLOT_SIZE, DEFAULT_SLOTS, WELL_KNOWN_SLOT_SIZE, SlotChannel, well_known_name
from ombm.transport.rpc_protocol import DEFAULT_MAX_MESSAGE_BYTES, ClientProtocol, ClientStats, check_max_message
from ombm.transport.spin import PathSpin
from ombm.rpc.timer import timer

logger = logging.getLogger("ombm.rpc")

_LIVENESS_CHECK_S = 0.1
_WAIT_FIRST_PAUSE_S, _WAIT_MAX_PAUSE_S = 0.01, 0.25  # waiting for a service to appear: the backoff
_LOCATE_S = 0.5  # how long a reconnection gathers the answers of other hosts' bridges (ombm.rpc.locate)
_STORM_RETRANSMITS, _STORM_LOG_S = 100, 10.0  # a retransmission storm: that many in a second (logged once per period)
_LANE_VALUE, _LANE_ERROR_REPLY, _LANE_OTHER = _native.LANE_VALUE, _native.LANE_ERROR_REPLY, _native.LANE_OTHER
_LANE_STALLED, _LANE_UNSENT, _LANE_NOT_LENT = _native.LANE_STALLED, _native.LANE_UNSENT, _native.LANE_NOT_LENT
_WAIT_STALLED = _native.WAIT_STALLED


_base = concurrent.futures._base
_PENDING, _RUNNING, _FINISHED = _base.PENDING, _base.RUNNING, _base.FINISHED  # Future states
_DONE = (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _FINISHED)
_CONDITIONS = threading.Lock()  # who makes a Future's condition, and who finishes one that has none
_UNMARSHAL_ERROR = f"{UnmarshalError.__module__}.{UnmarshalError.__qualname__}"  # its name in an error reply


_UNDECODED = _native.UNDECODED  # _Pending.value until the reply is unmarshalled (by the lane's drain)
_PATH_LEARNS = -1  # _wait_policy's learn_ns when the path's spin policy learns from the wait
_TAKE_LIMIT = 256  # the most signals one drain takes (CallLane.take): bounded work per wake-up


class _Pending(_native.PendingCall):
    """One call's completion state (its fields native, so that the pipelined lane makes and completes
    it without Python code): ``done``; the reply's ``data`` (payload) and ``error`` flag, or its
    unmarshalled ``value``; ``gone`` (done because the server stopped or died); a call_async's
    ``future``, ``client``, ``call_id`` and ``deadline``; ``wake``, a waiting follower's lock, held
    (released when the call is done, :meth:`Client._follow`); ``ready``, an asyncio pump's deque (the
    call id goes there when done); ``watched``, whether its future has a condition, waiters or
    callbacks (:class:`_Watched`)."""

    __slots__ = ()
    data: bytes | bytearray
    future: Future | None
    wake: threading.Lock | None
    ready: collections.deque[int] | None

    def result(self, allow_pickle: bool, bulk: marshal.BulkReader | None = None, bulk_limit: int = 1 << 62) -> Any:
        """The call's result (``RemoteError``, ``UnmarshalError`` as :func:`marshal.decode_reply`; large
        payloads out of ``bulk``, at most ``bulk_limit`` bytes)."""
        value = self.value
        if value is not _UNDECODED:
            return value
        return marshal.decode_reply(self.data, allow_pickle=allow_pickle, bulk=bulk, bulk_limit=bulk_limit)


class _Watched:
    """A Future's condition, waiters or done callbacks, made at their first use (by a waiter, a
    callback, ``wait``, ``cancel``) and kept in the future's ``__dict__`` (a non-data descriptor: found
    there directly from then on). Under _CONDITIONS, so one is made, and the call is marked
    watched first: a finish without a condition (:meth:`Future._finish`, the lane's drain) is over
    or has not begun."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, future: Future | None, owner: type | None = None) -> Any:
        if future is None:
            return self
        with _CONDITIONS:
            made = future.__dict__.get(self._name)
            if made is None:
                future._pending.watched = True
                made = future.__dict__[self._name] = self._make()
        return made


class Future(_native.FutureCore, concurrent.futures.Future[Any]):
    """A pipelined call's result (``call_async``): a :class:`concurrent.futures.Future`.

    It completes when its reply is taken, by whichever thread takes it: ``result()`` takes replies
    in the calling thread (the fastest way), and otherwise the client's retransmission timer does
    within a millisecond, so ``add_done_callback``, ``asyncio.wrap_future`` and
    ``concurrent.futures.wait`` work without anyone calling ``result()`` (callbacks run in the thread
    that took the reply). The call's own deadline (the client's timeout, or ``options(timeout=)``,
    from when it was made) gives it up: the future then holds ``CallTimeout`` (``ServerGoneError``
    if the server is gone). ``result(timeout)`` waits at most ``timeout`` and raises
    ``concurrent.futures.TimeoutError`` without giving the call up, as any ``concurrent.futures.Future``.

    ``cancel()`` succeeds only for a call still queued behind the connection's window: nothing of
    it was sent, so it is never executed. A call already sent may be running or done on the server:
    ``cancel()`` returns False and ``running()`` is True, as for a running future.
    """

    # concurrent.futures.Future's state: _state, _result, _exception and the call's _Pending are
    # native fields (_native.FutureCore: the pipelined lane makes and finishes a future without
    # this __init__ and without a name looked up); the condition, waiters and callbacks are made
    # when first needed, so that a future nobody waits on or watches is finished without them
    _pending: _Pending
    _condition = _Watched(threading.Condition)
    _waiters = _Watched(list)
    _done_callbacks = _Watched(list)

    def __init__(self, client: Client, call_id: int, pending: _Pending, deadline: float, sent: bool) -> None:
        pending.client, pending.call_id, pending.deadline = client, call_id, deadline
        self._state = _RUNNING if sent else _PENDING  # sent: it may run from now on
        self._pending = pending

    @property
    def _client(self) -> Client:
        client: Client = self._pending.client
        return client

    @property
    def _call_id(self) -> int:
        return self._pending.call_id

    @property
    def deadline(self) -> float:
        """When the call is given up (``time.monotonic()`` s)."""
        return self._pending.deadline

    def done(self) -> bool:
        return self._state in _DONE  # (one read: the state only ever moves on to done)

    def running(self) -> bool:
        if super().running():
            return True
        return not self.done() and not self._client._queued(self._call_id)

    def cancel(self) -> bool:
        if self.done() or super().running():
            return super().cancel()
        if self._client._withdraw(self._call_id):
            return super().cancel()
        self._mark_running()  # sent: it may run; report it as running
        return False

    def _mark_running(self) -> bool:
        """Pending → running (a call sent); False if it is done already (its reply was taken)."""
        with self._condition:
            if self.done():
                return False
            if not super().running():
                self.set_running_or_notify_cancel()
            return True

    def result(self, timeout: float | None = None) -> Any:
        if self._state is not _FINISHED:
            if not self.done():
                self._client._drive(self, timeout)
            if self._state is not _FINISHED:  # cancelled, or still running: as concurrent.futures says
                return super().result(0)
        if self._exception is not None:  # finished: result and exception never change again
            try:
                raise self._exception
            finally:
                self = None  # type: ignore[assignment]  # (as concurrent.futures: no cycle through the traceback)
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self._client._drive(self, timeout)
        return super().exception(0)

    def _complete(self) -> None:
        """Its reply was taken: the result, or the remote error (any thread; the first wins)."""
        if self._pending.gone:
            self._finish(None, self._client._gone_error())
            return
        value = self._pending.value
        if value is not _UNDECODED:  # the drain unmarshalled it (the common case)
            self._finish(value, None)
            return
        try:
            value = self._client._pending_result(self._pending)
        except Exception as exc:
            self._finish(None, exc)
        else:
            self._finish(value, None)

    def _finish(self, value: object, exc: BaseException | None) -> None:
        with _CONDITIONS:
            if not self._pending.watched:  # nobody waits or watches: finished without a lock round trip
                if self._state not in _DONE:
                    self._result, self._exception = value, exc
                    self._state = _FINISHED
                return
        try:  # the callbacks run here (a future cancelled or finished already: InvalidStateError)
            if exc is not None:
                self.set_exception(exc)
            else:
                self.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass  # another thread finished it first


class _LaneBulk:
    """Where the lane's ext hook takes a reply's bulk data from: the session's bulk segments, once
    the server took them (until then no reply can carry any)."""

    bulk: Bulk | None = None

    def take(self, descriptor: bytes, budget: list[int]) -> bytes | memoryview:
        taken = self.bulk
        if taken is None:
            raise UnmarshalError("bulk data before this client offered bulk segments")
        return taken.take(descriptor, budget)


class Client:
    """A connection to one service; call its methods as attributes: ``client.add(1, 2)``.

    ``views=True``: a large bytes-like result that came through the server's bulk segment is
    returned as a read-only ``memoryview`` of that segment, lent in place (no copy, no checksum;
    what it guarantees: :mod:`ombm.rpc.bulk`, *Views*), a numpy array as a read-only array on it;
    smaller or inline ones still come back as ``bytes``."""

    # made by _connect (absent if the constructor failed before; _teardown copes)
    _request: SlotChannel  # the channel this client writes its calls into
    _reply: SlotChannel  # the channel the server writes its replies into
    _receiver: Receiver  # this client's own signal FIFO
    _reply_segment: int
    _server: tuple[int, int]  # the server's (pid, start time)
    _max_message: int
    _forked = False  # set in a forked child: this connection is the parent's (ForkedError here)
    _pumped = False  # an asyncio client's pump takes the replies (ombm.rpc.aio): the timer leaves them

    def __init__(
        self,
        name: str,
        timeout: float = 5.0,
        *,
        wait: float = 0.0,
        allow_pickle: bool = False,
        slots: int = DEFAULT_SLOTS,
        slot_size: int = DEFAULT_SLOT_SIZE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        views: bool = False,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise ValueError("wait must be a number of seconds >= 0")
        self.max_message_bytes = check_max_message(max_message_bytes)  # the largest reply this client takes
        # "calc@HOST:PORT": the service of the host whose bridge that is (ValueError if malformed)
        parts = remote.split_remote(name) if isinstance(name, str) and "@" in name else None
        # the remote host's bridge ("HOST:PORT") of the name, or None for a plain name
        self._home: str | None = None if parts is None else name.partition("@")[2]
        self._where = self._home  # where the current session's server is (None: this host)
        self._local_name = namespace.validate_name(name) if parts is None else parts[0]
        self.service = name
        self.timeout = float(timeout)
        self.wait = float(wait)  # how long connecting, and each reconnection, waits for the service to appear
        self.allow_pickle = allow_pickle
        self.views = bool(views)  # large results through the bulk segment lent as read-only views (rpc/bulk.py)
        self._slots, self._slot_size = slots, slot_size
        self._closed = False
        self._gone = False  # the session's server stopped or died: the next call reconnects
        self._last_stats: ClientStats | None = None  # a gone session's counters (statistics() until the next)
        self._storm: tuple[float, int] = (0.0, 0)  # retransmission storms: (start of the second, retransmits then)
        self._storm_logged = -_STORM_LOG_S
        self._lock = threading.Lock()  # protocol state
        self._leader = threading.Lock()  # who dispatches the receiver
        self._pending: dict[int, _Pending] = {}
        self._followers: list[_Pending] = []  # calls whose threads wait for the leader (_follow), in arrival order
        self._futures: dict[int, Future] = {}  # call_async's futures not done, by call id
        self._futures_check_at = 0.0  # when the timer next looks at their deadlines
        self._liveness_at = 0.0  # when it next checks the server for them
        self._patience = 0.0  # the patience last lent to the lane (a call with a shorter timeout skips it)
        self._protocol: ClientProtocol | None = None
        self._path_spin: PathSpin | None = None  # a remote session's spin policy (transport/spin.py)
        self._nonce = namespace.new_token()
        self._hello: dict[str, int] | None = None  # the server's ACK, once one passed _check_hello
        # the native fast lane of synchronous calls (memory signal path only; off with OMBM_LANES=0, for tests);
        # _fast: the lane call() takes, None while gone or closed (call() then goes the ordinary way)
        self._lane: _native.CallLane | None = None
        self._fast: _native.CallLane | None = None
        # the native lane of pipelined calls (call_async: _native.PipeLane), made with the CallLane
        self._pipe: _native.PipeLane | None = None
        # the session's bulk segments (large payloads, rpc/bulk.py): made and offered to the server at the
        # first large payload (_offer_bulk)
        self._bulk: Bulk | None = None
        self._bulk_state = "none"  # "none" (not offered yet), "taken", "refused" (across hosts, an older server)
        self._bulk_tag = ""
        self._bulk_lock = threading.Lock()
        self._lane_bulk_data = _LaneBulk()  # what the lane's ext hook takes bulk data from
        self._lane_budget = [0]  # bulk bytes the lane may take out of the next reply (set for a call with bulk data)
        _CLIENTS.add(self)
        try:
            self._establish(self.wait)
        except BaseException:
            self._closed = True  # never connected: nothing for the finalizer to warn about
            raise
        self._timer = timer()
        self._timer.add(self)

    @property
    def where(self) -> str | None:
        """The bridge (``"HOST:PORT"``) of the host whose server this client calls now, or None for a
        server of this host (a client of a plain name may move: docs/net.md, *Rebinding*)."""
        return self._where

    # -- first contact (and every reconnection)
    def _establish(self, wait: float, anywhere: bool = False) -> None:
        """Make a new session: find the service, waiting up to ``wait`` s for it to appear (backing
        off from 10 ms to 0.25 s between looks), and connect (``anywhere``: also across hosts, see
        :meth:`_connect_somewhere`). ``ServiceNotFoundError`` if it did not appear (or its server
        is dead), ``CallTimeout`` if a live server did not answer in time."""
        give_up = time.monotonic() + wait
        pause = _WAIT_FIRST_PAUSE_S
        while True:
            try:
                self._connect_somewhere(anywhere)
                return
            except ServiceNotFoundError as exc:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise
                logger.debug("waiting for %r: %s", self.service, exc)
                time.sleep(min(pause, left))
                pause = min(pause * 2, _WAIT_MAX_PAUSE_S)

    def _connect_somewhere(self, anywhere: bool) -> None:
        """Connect to the service where the name says: a remote name at its host only; a plain
        name on this host, and with ``anywhere`` (a reconnection: rebinding, issue 12), failing
        that, at the first host that serves it (``ombm.rpc.locate``, through this host's bridge;
        with no bridge here there is nowhere else to look)."""
        if self._home is not None or not anywhere:
            self._connect_at(self._home)
            return
        try:
            self._connect_at(None)
            return
        except ServiceNotFoundError as exc:
            missing = exc
        try:
            places = locate(self._local_name, _LOCATE_S)
        except BridgeError as exc:  # BridgeNotRunningError: a host without a bridge sees only itself
            logger.debug("locating %r elsewhere: %s", self.service, exc)
            raise missing from None
        logger.info("located %r at %s", self.service, places or "no other host")
        for place in places:
            try:
                self._connect_at(place.partition("@")[2])
                return
            except (ServiceNotFoundError, BridgeError) as exc:  # gone since it answered, or unreachable now
                logger.info("connecting to %r failed: %s", place, exc)
        raise missing

    def _connect_at(self, where: str | None) -> None:
        """Connect a new session to the service on this host (``where`` None) or at the bridge ``where``."""
        self._where = where
        self._nonce = namespace.new_token()
        self._hello = None
        try:
            well_known = SlotChannel.open(self._well_known_name(), writable=True, slot_size=WELL_KNOWN_SLOT_SIZE)
        except SegmentNotFoundError:
            raise ServiceNotFoundError(f"no ombm RPC service named {self._name_at(where)!r}") from None
        except SegmentFormatError as exc:  # a server creating it right now (or a corrupt one): not served
            raise ServiceNotFoundError(f"the ombm RPC service {self._name_at(where)!r} is not ready: {exc}") from None
        try:
            self._connect(well_known, self._slots, self._slot_size)
        except BaseException:
            self._teardown()
            raise
        finally:
            well_known.close()
        logger.info("connected to %r (server pid %d)", self._name_at(where), self._server[0])

    def _name_at(self, where: str | None) -> str:
        return self._local_name if where is None else f"{self._local_name}@{where}"

    def _well_known_name(self) -> str:
        """The local name of the service's well-known channel: for a remote service, this host's
        bridge imports it from the remote host's bridge (BridgeNotRunningError if there is none)."""
        local = well_known_name(self._local_name)
        if self._where is None:
            return local
        return remote.import_segment(f"{local}@{self._where}", self.timeout)  # SegmentNotFoundError if not exported

    def _connect(self, well_known: SlotChannel, slots: int, slot_size: int) -> None:
        tag = f"{well_known_name(self._local_name)}-{self._nonce:016x}"
        self._request = SlotChannel.create(f"{tag}-req", slots=slots, slot_size=slot_size)
        self._reply = SlotChannel.create(f"{tag}-rep", slots=slots, slot_size=slot_size)
        self._receiver = Receiver()
        region = self._reply.region
        self._receiver.add_handler(region.address, region.size, self._on_reply)
        self._reply_segment = self._reply.segment.id
        names = {"req": self._request.name, "rep": self._reply.name}
        self._bulk_tag = tag
        # across hosts large payloads travel inline: the bulk segments are not replicated
        self._bulk_state = "none" if self._where is None else "refused"
        if self._where is not None:  # the server's host replicates both (docs/net.md): named as they are there
            names = {key: remote.offer_segment(local, self._where, self.timeout) for key, local in names.items()}
        conn_id = namespace.new_token()
        pid, start = namespace.me()
        hello = msgpack.packb({**names, "conn": conn_id, "pid": pid,
                               "start": start, "max_reply": self.max_message_bytes})
        frame = wire.encode(wire.Kind.CALL, 0, self._nonce, hello)
        deadline = time.monotonic() + self.timeout
        check_at = 0.0
        backoff = 0.002
        while self._hello is None:
            now = time.monotonic()
            left = deadline - now
            if now >= check_at or left <= 0:  # a dead server's channel: not served, known within a check
                check_at = now + _LIVENESS_CHECK_S
                if not _has_live_receiver(well_known):
                    raise ServiceNotFoundError(f"service {self._name_at(self._where)!r} is not being served "
                                               "(its server is gone)")
                if left <= 0:
                    raise CallTimeout(f"service {self._name_at(self._where)!r} did not answer within {self.timeout} s")
            well_known.send_anywhere(frame)
            self._receiver.wait(min(left, backoff))
            backoff = min(backoff * 2, 0.1)
        self._server = (self._hello["pid"], self._hello["start"])
        max_payload = min(self._hello["max_payload"], self._request.max_payload)
        # min RTO 2 ms: a local loss is rare, a wake-up's tail is not (paper §4: the timer costs little);
        # across hosts a round trip passes two bridges and the network: the RTO starts higher and adapts
        rto = {"min_rto": 0.002} if self._where is None else {"min_rto": 0.005, "initial_rto": 0.05}
        self._protocol = ClientProtocol(
            conn_id, max_payload=max_payload, max_in_flight=max(1, slots // 2), **rto,
            max_message_bytes=self.max_message_bytes,
        )
        self._path_spin = None if self._where is None else PathSpin()  # a reply across a path: spin its RTT
        # the largest call: what the request channel carries and the server reassembles (it refuses
        # a message whose fragments x max_payload exceed its max_message_bytes; one frame always goes)
        server_max = self._hello["max_message"]
        self._max_message = min(self._request.max_message, max(max_payload, server_max // max_payload * max_payload))
        self._pipe = None  # (a gone session's was reclaimed by _end_pending)
        if self._request.writer is not None and not self._receiver.kernel and _config.LANES:
            reply = self._reply.region
            self._lane = _native.CallLane(
                self._request.writer, self._receiver.fifo.fifo_map, self._reply_segment,
                reply.address, reply.size, self._reply.slot_size, conn_id, max_payload,
                marshal.guarded_packer(self.allow_pickle), msgpack.unpackb,
                marshal.ext_hook(self.allow_pickle, self._lane_bulk_data, self._lane_budget),
            )
            self._pipe = _native.PipeLane(
                self._request.writer, self._receiver.fifo.fifo_map, self._reply_segment,
                reply.address, reply.size, self._reply.slot_size, conn_id, max_payload,
                marshal.guarded_packer(self.allow_pickle), msgpack.unpackb,
                marshal.ext_hook(self.allow_pickle, self._lane_bulk_data, self._lane_budget),
                _RUNNING, _PENDING, _FINISHED, Future, _Pending, timer(),
            )
        self._fast = self._lane

    def _on_reply(self, address: int) -> None:
        """The reply channel's signal handler (generic dispatch: ``_poll``, connecting)."""
        self._take_reply(address - self._reply.region.address)

    def _take_reply(self, offset: int) -> None:
        """Hand the frame in the reply slot at ``offset`` to the protocol; complete its call."""
        view = self._reply.slot_view_at(offset)
        if self._protocol is None:  # connecting: only the server's ACK matters
            try:
                kind, _, nonce, _, _, _, payload, _ = wire.decode_fields(view)
                if kind == wire.Kind.ACK and nonce == self._nonce:
                    self._hello = self._check_hello(msgpack.unpackb(payload))
            except (FrameError, ValueError, msgpack.UnpackException):
                pass
            return
        now = time.monotonic()
        completed: list[Future] = []
        with self._lock:
            self._own()
            protocol = self._protocol
            self._receive(protocol, view, now, completed)
            for frame in protocol.frames_to_send(now):  # calls that waited for a free slot in the window
                self._request.send(frame)
        for future in completed:  # outside the lock: done callbacks run here
            future._complete()

    def _receive(self, protocol: ClientProtocol, view: memoryview, now: float, completed: list[Future]) -> None:
        """With ``_lock`` held: hand one reply frame to the protocol; the futures it completes go
        to ``completed``, to be completed once the lock is released."""
        for event in protocol.receive_frame(view, now):
            pending = self._pending.pop(event.call_id, None)
            if pending is not None:
                pending.data, pending.error, pending.done = event.data, event.error, True
                if pending.wake is not None:
                    self._wake(pending)
                if pending.ready is not None:
                    pending.ready.append(event.call_id)
                if pending.future is not None:
                    self._futures.pop(event.call_id, None)
                    completed.append(pending.future)

    def _take_replies(self, timeout: float) -> bool:
        """With ``_leader`` held: wait up to ``timeout`` s (0: not at all) for a signal, then take
        every reply there is (issue 13: replies drained per wake-up, not one per signal). With
        the native lane, one ``CallLane.take`` takes every signal in the FIFO, checks and
        unmarshals the replies among them, and :meth:`_take_entries` completes their calls under
        one lock; without it (the kernel signal path, ``OMBM_LANES=0``), one signal at a time.
        True if a signal was taken."""
        receiver = self._receiver
        lane = self._lane
        if lane is None:
            signal = receiver.pop_wait(timeout) if timeout > 0 else receiver.fifo.pop()
            if signal is None:
                return False
            if signal[0] == self._reply_segment:
                self._take_reply(signal[1])
            else:
                receiver.dispatch(*signal)
            return True
        path = self._path_spin
        if timeout > 0:
            spin_ns, sleep_ok, learn_ns = receiver.wait_policy() if path is None else self._wait_policy()
        else:
            spin_ns, sleep_ok, learn_ns = 0, False, 0
        pipe = self._pipe
        if pipe is None:
            status, waited, entries = lane.take(_TAKE_LIMIT, spin_ns, timeout, sleep_ok)
            slow: list[Future] = []
            taken = len(entries)
        else:  # the pipelined lane completes its own calls; the rest as CallLane.take's
            status, waited, entries, slow, taken = pipe.take(_TAKE_LIMIT, spin_ns, timeout, sleep_ok)
        if status == _WAIT_STALLED:
            receiver.fifo.retire_stalled()
        if not taken:
            return False
        if path is not None:
            self._waited(waited, spin_ns, learn_ns)
        elif waited > learn_ns:
            receiver.waited(waited)
        if slow:
            self._take_slow(slow)
        if entries:
            self._take_entries(entries)
        return True

    def _take_slow(self, futures: list[Future]) -> None:
        """The pipelined lane's calls it completed but could not finish: wake the thread waiting
        for each, tell an asyncio pump, finish the future (its callbacks run here)."""
        with self._lock:
            for future in futures:
                pending = future._pending
                if pending.wake is not None:
                    self._wake(pending)
                if pending.ready is not None:
                    pending.ready.append(future._call_id)
        for future in futures:
            future._complete()

    def _wait_policy(self) -> tuple[int, bool, int]:
        """``(spin budget in ns, may sleep, learn_ns)`` for a native wait for replies: the receiver's
        (the process's adaptive spin) for a server on this host; across hosts, about the path's
        round trip (``PathSpin``: the reply cannot come sooner), and the path's policy learns from
        it (learn_ns ``_PATH_LEARNS``), not the receiver's, whose cap is a local one."""
        path = self._path_spin
        protocol = self._protocol
        if path is None or protocol is None or self._receiver.kernel or _config.SETTINGS.wait != "adaptive":
            return self._receiver.wait_policy()
        return path.budget_ns(int(_config.SETTINGS.spin_us * 1000), protocol.srtt), True, _PATH_LEARNS

    def _waited(self, waited_ns: int, spin_ns: int, learn_ns: int) -> None:
        """Learn from a wait that took a reply after ``waited_ns`` (see :meth:`_wait_policy`)."""
        path = self._path_spin  # (None if the session changed meanwhile: nothing to learn)
        if learn_ns == _PATH_LEARNS:
            if path is not None:
                path.waited(waited_ns, spin_ns)
        elif waited_ns > learn_ns:
            self._receiver.waited(waited_ns)

    def _take_entries(self, entries: list[tuple[int, int, Any]]) -> None:
        """The signals a drain took (``CallLane.take``), in FIFO order: the replies among them
        complete their calls, all under one lock and with one write-out of the calls the window
        lets go; any other signal of the reply channel goes through the protocol as one frame,
        the rest to their handlers. The futures are completed after, outside the lock."""
        now = time.monotonic()
        completed: list[Future] = []
        others: list[tuple[int, int]] = []
        with self._lock:
            self._own()
            protocol = self._protocol
            assert protocol is not None, "a lane is made with the protocol"
            reply_segment, pending_calls, futures = self._reply_segment, self._pending, self._futures
            sample = True
            for status, first, second in entries:
                if status == _LANE_OTHER:
                    if first == reply_segment:
                        self._receive(protocol, self._reply.slot_view_at(second), now, completed)
                    else:
                        others.append((first, second))
                elif protocol.complete(first, now, sample):
                    sample = False  # one RTT sample per drain: its oldest call's (see ClientProtocol.complete)
                    pending = pending_calls.pop(first, None)
                    if pending is not None:
                        if status == _LANE_VALUE:
                            pending.value = second
                        else:
                            pending.data, pending.error = second, status == _LANE_ERROR_REPLY
                        pending.done = True
                        if pending.wake is not None:
                            self._wake(pending)
                        if pending.ready is not None:
                            pending.ready.append(first)
                        future = pending.future
                        if future is not None:
                            futures.pop(first, None)
                            completed.append(future)
            for frame in protocol.frames_to_send(now):  # calls that waited for a free slot in the window
                self._request.send(frame)
        for segment_id, offset in others:
            self._receiver.dispatch(segment_id, offset)
        for future in completed:  # outside the lock: done callbacks run here
            future._complete()

    def _check_hello(self, hello: object) -> dict[str, int] | None:
        """The server's ACK, or None if it is not one (any process of the user can write our reply
        channel, and the CONNECT's nonce is in the well-known channel for all to read): a map of
        ints in range, naming a live process that watches our request channel (the server adds its
        handler there before it answers)."""
        if not isinstance(hello, dict):
            return None
        given = {key: hello.get(key) for key in ("pid", "start", "max_payload")}
        given["max_message"] = hello.get("max_message", DEFAULT_MAX_MESSAGE_BYTES)  # older servers do not say
        fields = {key: value for key, value in given.items() if type(value) is int}
        if len(fields) != len(given):
            return None
        pid, start = fields["pid"], fields["start"]
        if not (0 < pid < 1 << 31 and 0 <= start < 1 << 64 and fields["max_payload"] > 0 and fields["max_message"] > 0):
            return None
        if self._where is not None:  # the pid names a process of the other host: its bridge watches for it here
            return fields if remote.live_peer(self._request.segment.directory, L.KIND_RECEIVER) else None
        entries = self._request.segment.directory.entries()
        if not namespace.is_alive(pid, start) or not any(e.kind == L.KIND_RECEIVER and e.pid == pid for e in entries):
            return None
        return fields

    def _poll(self) -> bool:
        """Take the reply signals already here, unless another thread is dispatching; True if any."""
        if self._leader.acquire(blocking=False):
            try:
                if self._lane is not None:
                    return self._take_replies(0.0)
                return self._receiver.dispatch_pending() > 0
            finally:
                self._let_go()
        return False

    # -- calls
    def _marshal(self, method: str, args: tuple[object, ...], kwargs: dict[str, object]) -> bytes:
        if self._closed:
            raise self._closed_error()
        if self._gone:
            self._reconnect()
        # large payloads through the bulk segment (spans given back if not sent)
        bulk_data = self._bulk
        if self._bulk_state == "none" and (args or kwargs):  # (a call without arguments has no large payload)
            bulk_data = self._offer_bulk(args, kwargs)
        routed = None if bulk_data is None else marshal.route_args(args, kwargs, bulk_data, self._max_message)
        try:
            data = marshal.encode_call(method, *(routed[:2] if routed else (args, kwargs)),
                                       allow_pickle=self.allow_pickle)  # TypeError here
            if len(data) > self._max_message:
                raise MessageTooLargeError(
                    f"the call ({len(data)} bytes marshalled) exceeds what this connection carries "
                    f"({self._max_message} bytes: its request channel, and the server's max_message_bytes); "
                    "nothing was sent; connect with more or larger slots, or use ombm.Stream"
                )
        except BaseException:
            if routed is not None:
                bulk_data.cancel(routed[2])  # type: ignore[union-attr]
            raise
        return data

    def _send(self, method: str, args: tuple[object, ...], kwargs: dict[str, object], oneway: bool) -> tuple[int, _Pending]:
        return self._submit(self._marshal(method, args, kwargs), oneway)

    def _submit(self, data: bytes, oneway: bool, timeout: float | None = None) -> tuple[int, _Pending]:
        """Hand a marshalled call to the protocol and write its frames; the timer watches it.
        ``timeout``: a call_async's, whose future (``pending.future``) the timer gives up at its deadline."""
        if oneway:
            self._poll()  # one-way calls are acknowledged: take in what has arrived
        pending = _Pending()
        now = time.monotonic()
        with self._lock:
            if self._gone:  # gone again since _marshal reconnected (or another thread is reconnecting)
                raise self._gone_error()
            lane, pipe = self._lane, self._pipe
            if (lane is not None and lane.lent) or (pipe is not None and pipe.lent):
                self._own()
            protocol = self._protocol
            assert protocol is not None, "connected while not gone"
            call_id = protocol.send_request(data, now, oneway=oneway)
            if not oneway:
                self._pending[call_id] = pending
                if timeout is not None:
                    pending.future = self._futures[call_id] = Future(
                        self, call_id, pending, now + timeout, not protocol.is_queued(call_id))
            request = self._request
            send = request.send if request.writer is None else request.writer.send
            for frame in protocol.frames_to_send(now):
                send(frame)
        timer = self._timer
        if not timer.busy:
            timer.kick()
        return call_id, pending

    def call(self, method: str, *args: object, **kwargs: object) -> Any:
        """Call ``method`` remotely and return its result (``RemoteError`` if it raised); the
        client's timeout bounds it (another: :meth:`options`).
        """
        return self._call(method, args, kwargs, self.timeout)

    def _call(self, method: str, args: tuple[object, ...], kwargs: dict[str, object], timeout: float) -> Any:
        """:meth:`call` within ``timeout`` seconds.

        A call made while no other call of this client is outstanding takes the fast lane: the
        protocol lends the lane its call ids (:meth:`ClientProtocol.lend`), and the call is
        marshalled and written, the reply waited for, taken and unmarshalled in one native call
        (``_native.CallLane``), with no lock, timer or pending-call table. Anything that needs
        the protocol takes its state back first (:meth:`_own`). If anything else comes first,
        or no reply within the RTO, the call joins the protocol's in-flight calls as if sent the
        ordinary way (:meth:`ClientProtocol.adopt_call`).
        """
        lane = self._fast
        # the lane waits up to its patience before the timer takes the call: not for a shorter timeout
        if lane is None or timeout < self._patience or not self._leader.acquire(False):
            return self._call_ordinary(self._marshal(method, args, kwargs), timeout)
        if lane is not self._fast:  # closed, gone or reconnected meanwhile: checked once leading
            self._let_go()
            return self._call_ordinary(self._marshal(method, args, kwargs), timeout)  # ClosedError if closed
        receiver = self._receiver
        path = self._path_spin  # None: a local server, the receiver's policy (its hot path: no call more)
        call_id = None
        work_ns = 0  # the server's expected work on our bulk data: waited beyond the policy's budget
        try:
            spin_ns, sleep_ok, learn_ns = receiver.wait_policy() if path is None else self._wait_policy()
            result = lane.call(method, args, kwargs, spin_ns, sleep_ok)
            if result.status == _LANE_NOT_LENT and self._lend():
                result = lane.call(method, args, kwargs, spin_ns, sleep_ok)
            if result.status == _LANE_UNSENT and self._bulk is not None:  # (none yet: the ordinary way offers them)
                result, work_ns = self._lane_bulk(lane, method, args, kwargs, spin_ns, sleep_ok, result)
            status, waited, call_id = result.status, result.waited_ns, result.call_id
            if status <= _LANE_ERROR_REPLY:  # the reply
                if path is not None:
                    self._waited(max(0, waited - work_ns), spin_ns, learn_ns)
                elif waited > learn_ns + work_ns:
                    receiver.waited(waited - work_ns)
                if call_id:  # the state was reclaimed meanwhile: the protocol ends the call
                    with self._lock:
                        assert self._protocol is not None, "a lane is made with the protocol"
                        self._protocol.end_call(call_id, waited * 1e-9)
                pending = None
            elif status >= _LANE_UNSENT:  # nothing sent: does not marshal, needs several frames, not lent
                pending = None
            else:
                pending = self._adopt(call_id, lane.message, result)
        except BaseException:
            with self._lock:
                self._own()
                assert self._protocol is not None, "a lane is made with the protocol"
                if call_id is None:  # raised inside the lane: its call, if it took one, is the lane's
                    call_id = self._protocol.lane_call
                if call_id:
                    self._protocol.cancel(call_id)
                    self._pending.pop(call_id, None)
            self._let_go()
            raise
        self._leader.release()  # (_let_go, inline: the synchronous call's hot path)
        if self._followers:
            self._hand_over()
        if status == _LANE_VALUE:
            return result.value
        if status >= _LANE_UNSENT:  # the ordinary way, which says why if it does not marshal
            return self._call_ordinary(self._marshal(method, args, kwargs), timeout)
        if pending is not None:
            self._wait(call_id, pending, time.monotonic() - waited * 1e-9 + timeout)
        try:
            if pending is not None:
                return self._pending_result(pending)
            return self._decode_reply(result.value)
        except RemoteError as exc:  # the cold path: the lane packs calls without marshal.check_keys
            if exc.type_name == _UNMARSHAL_ERROR:
                marshal.check_keys(args, kwargs)  # TypeError if the server could not rebuild our arguments
            raise

    def _lane_bulk(self, lane: _native.CallLane, method: str, args: tuple[object, ...], kwargs: dict[str, object],
                   spin_ns: int, sleep_ok: bool, unsent: _native.CallResult) -> tuple[_native.CallResult, int]:
        """The lane refused a call with a large payload (its guarded packer): the call again, with the
        large payloads copied into the bulk segment (``unsent`` if none went there), and the ns the
        server is expected to work on them (``bulk.work_ns``: the wait spins that much longer)."""
        assert self._bulk is not None, "called with bulk segments"
        routed = marshal.route_args(args, kwargs, self._bulk, self._max_message)
        if routed is None:
            return unsent, 0
        budget = self._lane_budget
        budget[0] = self.max_message_bytes  # its reply's bulk data, copied out by the lane itself
        work_ns = bulk.work_ns(routed[3])
        try:
            result = lane.call(method, routed[0], routed[1], spin_ns + work_ns, sleep_ok)
        finally:
            budget[0] = 0  # a reply beyond it, or to another call: unmarshalled by Python (_decode_reply)
        if result.status >= _LANE_UNSENT:  # nothing sent: the ordinary way puts them again
            self._bulk.cancel(routed[2])
        return result, work_ns

    def _offer_bulk(self, args: tuple[object, ...], kwargs: dict[str, object]) -> Bulk | None:
        """The session's bulk segments, made and offered to the server now if the call has a large
        payload and none were offered yet (a call of the server's reserved method ``_ombm_bulk``,
        the ordinary way); None if it has none or the server does not take them."""
        if not marshal.has_large(args, kwargs, self._max_message):
            return None  # nothing large in this call (or too large to go: inline, refused)
        with self._bulk_lock:
            if self._bulk_state != "none":
                return self._bulk
            segments: list[Segment] = []
            try:
                segments.append(bulk.create(f"{self._bulk_tag}-bq"))
                segments.append(bulk.create(f"{self._bulk_tag}-bp"))
                offer = marshal.encode_call(_BULK_OFFER, (segments[0].name, segments[1].name))
                took = self._call_ordinary(offer, self.timeout)
            except (RemoteError, SegmentExistsError, SharedMemoryFullError):  # an older server, no room
                took = False
            except BaseException:
                for seg in segments:
                    seg.release()
                raise
            if took is not True:
                for seg in segments:
                    seg.release()
                self._bulk_state = "refused"
                return None
            self._bulk = self._lane_bulk_data.bulk = bulk.Bulk(segments[0], segments[1], self.views)
            self._bulk_state = "taken"
            return self._bulk

    def _pending_result(self, pending: _Pending) -> Any:
        """A call's result as :meth:`_Pending.result`, large payloads out of the session's bulk segment."""
        return pending.result(self.allow_pickle, self._bulk, self.max_message_bytes)

    def _decode_reply(self, data: bytes | bytearray) -> Any:
        """A reply's result (``RemoteError`` if the call raised), large payloads copied out of the bulk segment."""
        return marshal.decode_reply(data, allow_pickle=self.allow_pickle, bulk=self._bulk,
                                    bulk_limit=self.max_message_bytes)

    def _lend(self) -> bool:
        """Lend the protocol's call ids to the lane if nothing is outstanding (True if lent)."""
        with self._lock:
            protocol, lane, pipe = self._protocol, self._lane, self._pipe
            assert protocol is not None and lane is not None, "a lane is made with the protocol, in _connect"
            if pipe is not None and pipe.lent and not pipe.outstanding:  # the pipelined lane's, idle
                self._own()
            next_id = protocol.lend()
            if next_id is None:
                return False
            patience = protocol.lane_patience
            self._patience = patience = patience if patience < self.timeout else self.timeout
            lane.lend(next_id, patience)
            return True

    def _own(self) -> None:
        """With ``_lock`` held: take the protocol's state back from the lanes, if one holds it (the
        pipelined lane's calls not completed become ordinary calls of the protocol and this client)."""
        lane = self._lane
        if lane is not None and lane.lent:
            state = lane.reclaim()
            assert self._protocol is not None and state is not None, "a lent lane's protocol takes its state"
            self._protocol.reclaim(*state)
        pipe = self._pipe
        if pipe is not None and pipe.lent:
            taken = pipe.reclaim()
            assert self._protocol is not None and taken is not None, "a lent lane's protocol takes its state"
            self._give_back(*taken)

    def _give_back(self, next_id: int, calls: int, rtt: float | None, bad: int,
                   outstanding: list[tuple[int, int, bytes, float | None, Future]]) -> None:
        """With ``_lock`` held: the pipelined lane's state and calls not completed go to the protocol
        (:meth:`ClientProtocol.adopt_pipelined`), their futures to this client's tables."""
        assert self._protocol is not None, "a lane is made with the protocol"
        self._protocol.adopt_pipelined(next_id, calls, rtt, bad, [call[:4] for call in outstanding])
        for call_id, _, _, _, future in outstanding:
            pending = self._pending[call_id] = future._pending
            pending.future = self._futures[call_id] = future

    def _adopt(self, call_id: int, data: bytes | None, result: _native.CallResult) -> _Pending:
        """The lane gave up on its call: make it an ordinary in-flight call and handle what came."""
        receiver = self._receiver
        pending = _Pending()
        waited = result.waited_ns
        with self._lock:
            self._own()
            assert self._protocol is not None and data is not None, "the lane made a call"
            self._protocol.adopt_call(call_id, data, time.monotonic() - waited * 1e-9)
            self._pending[call_id] = pending
        self._timer.kick()
        if result.status == _LANE_OTHER:  # a signal the lane does not take: the ordinary way
            receiver.waited(waited)
            segment_id, offset = result.segment_id, result.offset
            if segment_id == self._reply_segment:
                self._take_reply(offset)
            else:
                receiver.dispatch(segment_id, offset)
        elif result.status == _LANE_STALLED:
            receiver.fifo.retire_stalled()
        return pending

    def _call_ordinary(self, data: bytes, timeout: float) -> Any:
        call_id, pending = self._submit(data, False)
        self._wait(call_id, pending, time.monotonic() + timeout)
        return self._pending_result(pending)

    def call_async(self, method: str, *args: object, **kwargs: object) -> Future:
        """Send a call now, collect its result later (pipelined calls): a :class:`Future`."""
        pipe = self._pipe
        if pipe is not None:  # the pipelined lane, lent: the whole call in one native call
            future: Future | None = pipe.call(self, method, args, kwargs, self.timeout)
            if future is not None:
                return future
        return self._call_async(method, args, kwargs, self.timeout)

    def _call_async(self, method: str, args: tuple[object, ...], kwargs: dict[str, object], timeout: float) -> Future:
        pipe = self._pipe
        if pipe is not None:  # (it refuses large payloads: they take the ordinary way, the bulk segment)
            future = self._pipelined(pipe, method, args, kwargs, timeout)
            if future is not None:
                return future
        call_id, pending = self._submit(self._marshal(method, args, kwargs), False, timeout)
        future = pending.future
        assert future is not None, "a call with a timeout has its future"
        if pending.done:  # its reply taken by another thread already
            future._complete()
        return future

    def _pipelined(self, pipe: _native.PipeLane, method: str, args: tuple[object, ...], kwargs: dict[str, object],
                   timeout: float, ready: collections.deque[int] | None = None) -> Future | None:
        """``call_async`` on the pipelined lane (``_native.PipeLane.call``: the future made, the call
        marshalled and written, later completed, natively), lending the lane the protocol's state
        if it holds none; None if the call must go the ordinary way (closed, gone, a call the lane
        does not take, the protocol's state not lendable, a timeout below the lane's patience).
        ``ready``: an asyncio pump's (ombm.rpc.aio), told the call id once the call is done."""
        with self._lock:
            if self._closed or self._gone or pipe is not self._pipe:
                return None
            if not pipe.lent:
                lane = self._lane
                if lane is not None and lane.lent:
                    self._own()
                protocol = self._protocol
                assert protocol is not None, "connected while not gone"
                patience = protocol.lane_patience
                next_id = protocol.lend()
                calls: list[tuple[int, int, bytes, float | None, Future]] = []
                if next_id is None:  # calls outstanding: lent with them if all are call_async's one-frame calls
                    futures, pending_calls = self._futures, self._pending
                    if len(futures) != len(pending_calls):
                        return None
                    lent = protocol.lend_pipelined(_native.PIPE_CAP - 1, futures.__contains__)
                    if lent is None:
                        return None
                    next_id, taken = lent
                    for call_id, ack, data, sent_at in taken:
                        del pending_calls[call_id]
                        calls.append((call_id, ack, data, sent_at, futures.pop(call_id)))
                try:
                    pipe.lend(next_id, patience, protocol.max_in_flight, calls)
                except BaseException:  # (never, for what the protocol lends): the calls go back to it
                    self._give_back(next_id, 0, None, 0, calls)
                    raise
            future: Future | None = pipe.call(self, method, args, kwargs, timeout, ready)
            return future

    def oneway(self, method: str, *args: object, **kwargs: object) -> None:
        """A call with no reply (paper §8): delivered at most once, retransmitted until acknowledged."""
        self._send(method, args, kwargs, True)

    def options(self, *, timeout: float | None = None, oneway: bool = False) -> CallOptions:
        """Calls with other options than the client's: ``client.options(timeout=0.1).add(1, 2)``.

        ``timeout``: this call's, in seconds (default: the client's). ``oneway``: no reply (as
        :meth:`oneway`). The object returned calls any remote method as an attribute, even one whose
        name a client attribute takes (``client.options().close()`` calls the remote ``close``; so
        does ``client.call("close")``)."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        return CallOptions(self, self.timeout if timeout is None else float(timeout), bool(oneway))

    def _queued(self, call_id: int) -> bool:
        with self._lock:
            self._own()
            return self._protocol is not None and self._protocol.is_queued(call_id)

    def _withdraw(self, call_id: int) -> bool:
        """Take back a call nothing of which was sent (True), so that it never runs."""
        with self._lock:
            self._own()
            if self._protocol is None or not self._protocol.withdraw(call_id):
                return False
            self._pending.pop(call_id, None)
            self._futures.pop(call_id, None)
            return True

    def _drive(self, future: Future, timeout: float | None) -> None:
        """Take replies in this thread until ``future`` is done, its call's deadline passed (given
        up: CallTimeout or ServerGoneError in it), or ``timeout`` passed (``TimeoutError``)."""
        until = future.deadline if timeout is None else min(future.deadline, time.monotonic() + timeout)
        try:
            self._wait(future._call_id, future._pending, until, give_up=until >= future.deadline)
        except (CallTimeout, ChannelBrokenError, ClosedError) as exc:  # the call is given up
            future._finish(None, exc)
            return
        if future._state is _FINISHED:  # (finished by the lane's drain)
            return
        if future._pending.done:
            future._complete()
        elif not future.done():
            raise concurrent.futures.TimeoutError(f"the call to {self.service!r} is still running")

    def _wait(self, call_id: int, pending: _Pending, deadline: float, give_up: bool = True) -> None:
        """Dispatch reply signals in this thread (if it leads) until ``pending`` is done;
        ``ServerGoneError`` if its server stopped or died meanwhile (the client is then gone). At
        ``deadline`` give the call up and raise ``CallTimeout`` (``give_up``), or just return."""
        check_at = None
        while not pending.done:
            if self._closed:
                raise self._closed_error()
            now = time.monotonic()
            if check_at is None:
                check_at = now + _LIVENESS_CHECK_S
            if now >= deadline or now >= check_at:
                check_at = now + _LIVENESS_CHECK_S
                with self._lock:  # the session's channels stay while we look (a reconnection swaps them)
                    if pending.done:
                        break
                    alive = self._server_alive()
                    broken = alive and (self._request.broken or self._reply.broken)
                    if broken or (alive and now >= deadline and give_up):  # give up the call (of this session)
                        self._cancel(call_id)
                if not alive:
                    self._mark_gone()  # this call ends with the session's others (if not already)
                    raise self._gone_error()
                if broken:
                    raise ChannelBrokenError(f"the connection to {self.service!r} is broken: another process "
                                             "shrank its channels (connect again)")
                if now >= deadline:
                    if not give_up:
                        return
                    raise CallTimeout(f"no reply from {self.service!r} within the timeout")
            if self._leader.acquire(False):  # lead: take replies for every thread
                try:
                    if not pending.done:  # another thread may have completed it
                        self._take_replies(min(deadline, check_at) - time.monotonic())
                finally:
                    self._let_go()
            else:  # follow: sleep until the leader completes this call or hands the lead over
                self._follow(pending, min(deadline, check_at) - now)
        if pending.gone:
            raise self._gone_error()

    def _follow(self, pending: _Pending, timeout: float) -> None:
        """Wait up to ``timeout`` s while another thread leads, until it completes ``pending`` or
        lets go of the lead (leader/followers: each waiting thread sleeps on a lock of its own,
        released once, so a reply wakes the thread it is for and no other)."""
        wake = threading.Lock()
        wake.acquire()
        with self._lock:
            if pending.done:
                return
            pending.wake = wake
            self._followers.append(pending)
        try:  # registered before this look: a leader that lets go after it hands the lead to a follower
            if self._leader.locked():
                wake.acquire(True, timeout)
        finally:
            with self._lock:
                if pending.wake is wake:  # not woken (timed out, the lead was free, interrupted): out of line
                    pending.wake = None
                    self._followers.remove(pending)

    def _wake(self, pending: _Pending) -> None:
        """With ``_lock`` held: wake the follower waiting for ``pending`` (once)."""
        wake = pending.wake
        if wake is not None:
            pending.wake = None
            self._followers.remove(pending)
            wake.release()

    def _let_go(self) -> None:
        """Release the lead, and hand it to the first follower whose call is not done (if any)."""
        self._leader.release()
        if self._followers:  # (a follower that registers after this look finds the lead free)
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the first follower whose call is not done, to lead (the lead was just released)."""
        with self._lock:
            while self._followers:
                pending = self._followers[0]
                done = pending.done  # done by the pipelined lane, which wakes no follower: wake it now
                self._wake(pending)
                if not done:
                    return

    def _give_up(self, call_id: int) -> None:
        with self._lock:
            self._cancel(call_id)

    def _cancel(self, call_id: int) -> None:
        """With ``_lock`` held: forget the call ``call_id`` of this session."""
        self._own()
        self._pending.pop(call_id, None)
        self._futures.pop(call_id, None)
        if self._protocol is not None:
            self._protocol.cancel(call_id)

    def _expire_futures(self, now: float) -> None:
        """The timer's look at call_async's futures: a server seen gone (checked every
        _LIVENESS_CHECK_S while any is outstanding) makes the client gone, which ends them all with
        ``ServerGoneError``; otherwise those past their deadline are given up (``CallTimeout``)."""
        with self._lock:
            if self._gone or self._closed:
                return
            due = [f for f in self._futures.values() if f.deadline <= now]
            waiting = bool(self._futures)
            alive = True
            if due or (waiting and now >= self._liveness_at):
                self._liveness_at = now + _LIVENESS_CHECK_S
                alive = self._server_alive()
        if not alive:
            self._mark_gone()
            return
        for future in due:
            self._give_up(future._call_id)
            future._finish(None, CallTimeout(f"no reply from {self.service!r} within the timeout"))

    def _server_alive(self) -> bool:
        """The server runs and still serves us (its handler is on our request channel). Across hosts,
        the bridge watches the request channel while the server lives and serves us (docs/net.md)."""
        if self._where is not None:
            return remote.live_peer(self._request.segment.directory, L.KIND_RECEIVER)
        pid, start = self._server
        if not namespace.is_alive(pid, start):
            return False
        return any(
            e.kind == L.KIND_RECEIVER and e.pid == pid for e in self._request.segment.directory.entries()
        )

    def _mark_gone(self) -> None:
        """The session's server stopped or died: every call in flight ends in ``ServerGoneError``
        (it may or may not have run), one-way calls not yet acknowledged are dropped, and the next
        call reconnects. The session's channels stay until then (other threads may be looking)."""
        with self._lock:
            if self._gone or self._closed:
                return
            self._gone = True
            self._fast = None  # call() goes the ordinary way, which reconnects
            futures = self._end_pending()
            if self._protocol is not None:  # (a lane call may be under way: its state is not taken back)
                self._last_stats = self._protocol.statistics()
        for future in futures:
            future._finish(None, self._gone_error())
        logger.warning("the server of %r (pid %d) stopped or died: calls in flight raise ServerGoneError; "
                       "the next call reconnects", self._name_at(self._where), self._server[0])

    def _end_pending(self) -> list[Future]:
        """With ``_lock`` held: every call of the gone session ends (``ServerGoneError``); the futures
        among them, to be finished once the lock is released (their callbacks run then)."""
        if self._protocol is not None:
            self._own()  # the pipelined lane's calls too
        for call_id, pending in self._pending.items():
            pending.gone = pending.done = True
            if pending.ready is not None:
                pending.ready.append(call_id)
        self._pending.clear()
        while self._followers:  # their calls are over: wake their threads
            self._wake(self._followers[0])
        futures = list(self._futures.values())
        self._futures.clear()
        return futures

    def _gone_error(self) -> ServerGoneError:
        return ServerGoneError(f"the server of {self.service!r} stopped or died")

    def _reconnect(self) -> None:
        """The next call after the server went: drop the gone session and make a new one with
        whatever serves the name now (see :meth:`_establish`); ``ServerGoneError`` if nothing does
        within ``wait``. One thread reconnects; the others wait for it (the leader lock)."""
        with self._leader:  # no thread dispatches the old receiver or uses the old lane meanwhile
            if not self._gone or self._closed:
                return
            with self._lock:
                self._teardown()
                futures = self._end_pending()  # calls the gone session's lane handed over after it went
                self._protocol = None  # until the new server's ACK: the reply channel takes only that
            for future in futures:
                future._finish(None, self._gone_error())
            logger.info("reconnecting to %r", self.service)
            try:
                self._establish(self.wait, anywhere=True)
            except (ServiceNotFoundError, CallTimeout, BridgeError) as exc:
                logger.info("reconnecting to %r failed: %s", self.service, exc)
                raise ServerGoneError(f"the server of {self.service!r} stopped or died, and no server took "
                                      f"its place: {exc}") from exc
            with self._lock:
                self._gone = False

    def _tick(self, now: float) -> bool:
        """Called by the retransmission timer thread; True while calls are outstanding."""
        if self._closed or self._gone:
            return False
        if not self._pumped:
            self._poll()  # e.g. acknowledgements of one-way calls nobody waits for
        pipe = self._pipe
        if pipe is not None and pipe.lent and pipe.outstanding:
            sent = pipe.oldest_sent
            if sent is None or now - sent < pipe.patience:
                return True  # the lane's calls: replies are coming (or it waits for the window)
            with self._lock:  # no reply within the patience: the protocol's timer takes the calls
                if self._closed or self._gone or self._protocol is None:
                    return False
                self._own()
        if self._futures and now >= self._futures_check_at:
            self._futures_check_at = now + 0.01
            self._expire_futures(now)
        with self._lock:
            protocol = self._protocol
            lane = self._lane
            if protocol is None or self._closed or self._gone or (lane is not None and lane.lent):
                return False  # lent: nothing was outstanding but the lane's calls, which need no timer
            deadline = protocol.get_timer()
            if deadline is None:
                return False
            if now >= deadline:
                protocol.handle_timer(now)
                for frame in protocol.frames_to_send(now):
                    self._request.send(frame)
                self._watch_storm(protocol, now)
            return True

    def _watch_storm(self, protocol: ClientProtocol, now: float) -> None:
        """After a retransmission: log a storm (many retransmissions in a second), once per period."""
        since, at_start = self._storm
        if now - since < 1.0:
            return
        retransmits = protocol.statistics().retransmits
        self._storm = (now, retransmits)
        if retransmits - at_start >= _STORM_RETRANSMITS and now - self._storm_logged >= _STORM_LOG_S:
            self._storm_logged = now
            logger.warning("%d retransmissions to %r in %.1f s (loss, or a server too slow for its RTO of %.1f ms)",
                           retransmits - at_start, self.service, now - since, protocol.statistics().rto_s * 1e3)

    def statistics(self) -> ClientStats:
        """The transport's counters (calls, retransmits, bad frames, RTO, ...) of the current session
        (a reconnection starts afresh; while gone, those of the gone session)."""
        with self._lock:
            if self._gone:
                assert self._last_stats is not None, "kept when the session went"
                return self._last_stats
            self._own()
            assert self._protocol is not None, "connected"
            return self._protocol.statistics()

    # -- lifetime
    def close(self) -> None:
        """Idempotent: release both channels; the server reclaims its side."""
        if self._closed:
            return
        self._closed = True
        self._fast = None
        self._timer.remove(self)
        with self._leader:
            self._teardown()
        with self._lock:
            if self._protocol is not None:
                self._own()  # the pipelined lane's calls too
            futures = list(self._futures.values())
            self._futures.clear()
            while self._followers:  # threads waiting for a call: they see the client closed
                self._wake(self._followers[0])
        for future in futures:
            future._finish(None, ClosedError(f"the client of {self.service!r} was closed"))
        logger.debug("closed the client of %r", self.service)

    def _teardown(self) -> None:
        """Release the session's lane, receiver and channels (idempotent)."""
        if self._lane is not None:
            self._lane.close()
            self._lane = None
        if self._pipe is not None:  # (its calls stay in it until reclaimed: _end_pending)
            self._pipe.close()
        receiver: Receiver | None = getattr(self, "_receiver", None)  # absent if _connect failed early
        if receiver is not None:
            receiver.close()
        for name in ("_request", "_reply"):
            ch: SlotChannel | None = getattr(self, name, None)
            if ch is not None:
                ch.close()
        bulk_data, self._bulk = self._bulk, None
        self._lane_bulk_data.bulk = None
        if bulk_data is not None:
            bulk_data.close()

    def _closed_error(self) -> ClosedError:
        if self._forked:
            return ForkedError(f"this connection to {self.service!r} belongs to the process that forked this one "
                               "(two processes cannot share its calls): connect again here")
        return ClosedError("client is closed")

    def __del__(self) -> None:
        """Dropped unclosed: warn (``ResourceWarning``, as for an unclosed file) and close; never raises."""
        # not closed, not the parent's (after a fork), and connected
        lifecycle.finalize_unclosed(
            self, lambda: not (self.__dict__.get("_closed", True) or self._forked or "_timer" not in self.__dict__),
            self.close)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        remote = functools.partial(self.call, method)
        self.__dict__[method] = remote  # found directly next time
        return remote

    def __repr__(self) -> str:
        state = " forked" if self._forked else " closed" if self._closed else " gone" if self._gone else ""
        return f"<ombm.rpc.Client {self.service!r}{state}>"


class CallOptions:
    """Calls of one client with options of their own (:meth:`Client.options`): any attribute is a
    remote method, ``call(method, ...)`` and ``call_async(method, ...)`` name it."""

    __slots__ = ("_client", "_timeout", "_oneway")

    def __init__(self, client: Client, timeout: float, oneway: bool) -> None:
        self._client, self._timeout, self._oneway = client, timeout, oneway

    def call(self, method: str, *args: object, **kwargs: object) -> Any:
        if type(method) is not str:
            raise TypeError(f"method name must be str, not {type(method).__name__}")
        if self._oneway:
            self._client._send(method, args, kwargs, True)
            return None
        return self._client._call(method, args, kwargs, self._timeout)

    def call_async(self, method: str, *args: object, **kwargs: object) -> Future:
        if self._oneway:
            raise ValueError("a one-way call has no result to wait for: use call()")
        return self._client._call_async(method, args, kwargs, self._timeout)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def __repr__(self) -> str:
        return f"<ombm.rpc.CallOptions of {self._client!r} timeout={self._timeout} oneway={self._oneway}>"


_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Every client of the parent is the parent's: in the child its calls raise ForkedError and
    ``close()`` forgets the child's copy without touching what the parent shares with its server."""
    for client in list(_CLIENTS):
        client._forked = True
        client._closed = True
        client._lane = client._fast = client._pipe = None  # a call goes the ordinary way, which raises
    _CLIENTS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _has_live_receiver(channel: SlotChannel) -> bool:
    return any(
        e.kind == L.KIND_RECEIVER and namespace.is_alive(e.pid, e.start) for e in channel.segment.directory.entries()
    )


def connect(name: str, timeout: float = 5.0, *, wait: float = 0.0, allow_pickle: bool = False,
            slots: int = DEFAULT_SLOTS, slot_size: int = DEFAULT_SLOT_SIZE,
            max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, views: bool = False) -> Client:
    """Connect to the service ``name``, waiting up to ``wait`` s for it to appear (and as long at
    each reconnection); ``timeout`` bounds the connect and is every call's default (see
    :class:`Client` for the options)."""
    return Client(name, timeout, wait=wait, allow_pickle=allow_pickle, slots=slots, slot_size=slot_size,
                  max_message_bytes=max_message_bytes, views=views)
