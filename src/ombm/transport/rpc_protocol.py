"""Reliable request/response transport for RPC, sans-I/O (paper §4).

This module owns the rules that turn best-effort frames into calls that complete
at most once: fragmentation, reassembly, retransmission, duplicate suppression
and the reply cache.  It owns no socket, clock, thread or shared memory: frames
(any buffer) and ``now`` (seconds, any monotonic origin) go in, events and
encoded frames come out, in the style of h11 and aioquic.  The I/O layer

1. passes every received frame to ``receive_frame(view, now)`` and handles the
   events it returns;
2. writes out ``frames_to_send(now)`` after every operation;
3. calls ``handle_timer(now)`` when ``now`` reaches ``get_timer()`` (the paper's
   asynchronous retransmission timer: the no-loss path never touches it).

Rules:

- A call's message is cut into frames of at most ``max_payload`` bytes; the client
  resends all of them when no reply came within the call's RTO, with exponential
  backoff per call.  The RTO adapts from RTT samples of calls sent only once
  (Karn) as in RFC 6298, within ``[min_rto, max_rto]``.
- Every request carries the client's cumulative ack: the lowest call id it still
  waits for.  The server forgets cached replies below it and drops requests below
  it as stale duplicates.
- The server delivers each call id at most once (``RequestReceived``).  A duplicate
  of an answered call re-queues the cached reply (once per retransmission: only
  the duplicate of its last fragment does); a duplicate of a call still executing
  is ignored.  The reply cache is bounded (``reply_cache``): if a reply the
  client still needs is evicted, that call is never answered again (at-most-once
  wins over liveness; the caller times out).
- One-way calls are delivered at most once and never answered; the server
  acknowledges each one with a tiny ACK frame (re-sent for every duplicate), and
  the client retransmits a one-way call until that ACK arrives.
- At most ``max_in_flight`` calls are outstanding; more wait, in order, inside the
  client until a slot frees.
- Reassembly is bounded: a message whose announced fragment count times ``max_payload``
  exceeds ``max_message_bytes`` (default :data:`DEFAULT_MAX_MESSAGE_BYTES`, 4 MiB) is refused
  at the first of its fragments that arrives, before anything of it is kept, and counted
  (``refused``).  The server answers a refused call once with the error reply its ``refusal``
  gives (and again to its retransmissions, like any cached reply), or, without one or for a
  one-way call, drops its frames; the client drops an oversized reply's frames (the call then
  times out).  A connection so holds at most ``max_partial`` messages of at most
  ``max_message_bytes`` each; a single-frame message is bounded by its frame.
- Bad input is never an exception: frames that fail :func:`wire.decode`, belong to
  another connection, or make no sense here are dropped and counted in
  ``statistics()`` (best-effort loss, paper §3.2).  Misuse by the local caller
  (replying twice, to an unknown call, or to a one-way call) raises ``ValueError``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ombm.transport.fragments import check_max_payload as _check_payload
from ombm.transport.fragments import split
from ombm.transport.wire import KIND_TABLE, FrameFields, Kind, encode, raw_decode, raw_encode

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["ClientProtocol", "ServerProtocol", "RequestReceived", "ReplyReceived",
           "ClientStats", "ServerStats", "Event", "RtoEstimator", "split", "DEFAULT_MAX_MESSAGE_BYTES",
           "check_max_message"]

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20  # the largest message either side reassembles, by default


def check_max_message(max_message_bytes: object) -> int:
    """``max_message_bytes`` if it is a positive int; ``TypeError``/``ValueError`` before anything happens."""
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int):
        raise TypeError(f"max_message_bytes must be an int, not {type(max_message_bytes).__name__}")
    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes must be >= 1, not {max_message_bytes}")
    return max_message_bytes

_CALL, _ONEWAY, _REPLY, _ERROR_REPLY, _ACK = (Kind.CALL, Kind.ONEWAY, Kind.REPLY,
                                              Kind.ERROR_REPLY, Kind.ACK)

_LENT = -1  # ClientProtocol._lane while the I/O layer's lane holds the call ids (see lend)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A call arrived, for the first and only time.  ``data`` is bytes-like."""

    call_id: int
    data: bytes | bytearray
    oneway: bool = False


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The reply of a call arrived.  ``error`` is the server's ERROR_REPLY flag."""

    call_id: int
    data: bytes | bytearray
    error: bool = False


Event = RequestReceived | ReplyReceived


@dataclass(frozen=True, slots=True)
class ClientStats:
    calls: int            # send_request() calls
    retransmits: int      # calls resent by the timer
    bad_frames: int       # failed decode, or made no sense (wrong kind, inconsistent fragments)
    foreign_frames: int   # another connection id
    duplicates: int       # replies/acks for calls already completed or cancelled
    rto_s: float
    srtt_s: float | None  # None before the first RTT sample
    in_flight: int
    queued: int           # waiting for one of the max_in_flight slots
    refused: int = 0      # fragments of replies larger than max_message_bytes, dropped
    lane_calls: int = 0   # of the calls, those the fast lane made (lend/reclaim), adopted ones included
    adopted: int = 0      # lane calls put under the timer (adopt_call): no reply within the RTO, or another frame first


@dataclass(frozen=True, slots=True)
class ServerStats:
    requests: int         # calls delivered (RequestReceived)
    replies: int          # send_reply() calls
    bad_frames: int
    foreign_frames: int
    duplicates: int       # requests already delivered or older than the client's ack
    cached_replies: int
    evicted_replies: int  # dropped from the bounded cache before the client acked them
    executing: int        # delivered calls not answered yet
    refused: int = 0      # fragments of requests larger than max_message_bytes, refused unkept (a call
                          # answered with the refusal counts once: its other fragments are duplicates)


class RtoEstimator:
    """Retransmission timeout from RTT samples (RFC 6298), with Karn's backoff.

    ``rto`` is the timeout, backed off; ``settled`` the one the samples alone give (no backoff)."""

    __slots__ = ("rto", "settled", "srtt", "_rttvar", "_min", "_max")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        if not 0 < min_rto <= initial_rto <= max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        self.rto = self.settled = initial_rto
        self.srtt: float | None = None
        self._rttvar = 0.0
        self._min, self._max = min_rto, max_rto

    def sample(self, rtt: float) -> None:
        """Take the RTT of something sent once and answered."""
        # Once per call: plain comparisons instead of abs/min/max calls, same results.
        srtt = self.srtt
        if srtt is None:
            srtt, rttvar = rtt, rtt / 2
        else:
            diff = srtt - rtt
            rttvar = 0.75 * self._rttvar + 0.25 * (diff if diff >= 0 else -diff)
            srtt = 0.875 * srtt + 0.125 * rtt
        self.srtt, self._rttvar = srtt, rttvar
        rto = srtt + 4.0 * rttvar  # a float constant keeps the float fast path
        if rto < self._min:
            rto = self._min
        elif rto > self._max:
            rto = self._max
        self.rto = self.settled = rto

    def backoff(self, rto: float | None = None) -> float:
        """Double ``rto`` (default: the current RTO, which is then kept) up to the maximum."""
        if rto is None:
            self.rto = min(self.rto * 2, self._max)
            return self.rto
        return min(rto * 2, self._max)


def _encode_message(kind: Kind, connection_id: int, message_id: int, pieces: list[bytes | memoryview],
                    ack: int = 0) -> tuple[bytes, ...]:
    """The frames of a message cut by :func:`split`, as a tuple.

    Callers take a fast path instead when the message is ``bytes`` that fit one
    frame: ``(encode(...),)`` without :func:`split` and its list.
    """
    count = len(pieces)
    if count == 1:
        return (encode(kind, connection_id, message_id, pieces[0], ack=ack),)
    return tuple(encode(kind, connection_id, message_id, piece, frag_index=i, frag_count=count,
                        ack=ack)
                 for i, piece in enumerate(pieces))


class _Reassembly:
    """The fragments of one message received so far."""

    __slots__ = ("kind", "parts", "missing")

    def __init__(self, kind: Kind, count: int) -> None:
        self.kind = kind
        self.parts: list[bytearray | None] = [None] * count
        self.missing = count

    def add(self, kind: Kind, index: int, count: int, payload: bytearray) -> bool | None:
        """Store a fragment: True if the message is complete, False if not yet,
        None if the fragment is a duplicate or inconsistent with the others."""
        if count != len(self.parts) or kind is not self.kind or self.parts[index] is not None:
            return None
        self.parts[index] = payload
        self.missing -= 1
        return self.missing == 0

    def data(self) -> bytes:
        """The whole message (once no part is missing)."""
        return b"".join(part for part in self.parts if part is not None)


def _reassemble(partial: dict[int, _Reassembly], message_id: int, kind: Kind, index: int, count: int,
                payload: bytearray, limit: int | None = None) -> tuple[bytes | None, bool]:
    """Add one fragment to the messages being reassembled in ``partial`` (by message id).

    Returns ``(message, duplicate)``: the whole message once its last fragment is in
    (else None), and whether the fragment was a duplicate or inconsistent. With
    ``limit``, ``partial`` is an OrderedDict and the oldest message is evicted past it.
    """
    reassembly = partial.get(message_id)
    if reassembly is None:
        reassembly = partial[message_id] = _Reassembly(kind, count)
        if limit is not None and len(partial) > limit:
            del partial[next(iter(partial))]  # the oldest
    done = reassembly.add(kind, index, count, payload)
    if not done:
        return None, done is None
    del partial[message_id]
    return reassembly.data(), False


# Making the events.  The generated __init__ of a frozen dataclass stores each
# field through object.__setattr__, which costs more than the rest of a small
# call's bookkeeping.  The hot paths instead fill a mutable twin of the event class
# (the same __slots__, so the same memory layout) with plain attribute stores and
# then give it the frozen class: the result is an ordinary, equal, hashable event.


class _NewRequest:
    __slots__ = RequestReceived.__slots__
    call_id: int
    data: bytes | bytearray
    oneway: bool


class _NewReply:
    __slots__ = ReplyReceived.__slots__
    call_id: int
    data: bytes | bytearray
    error: bool


_heappush, _heappop = heapq.heappush, heapq.heappop


def _timer_order(call: _Call) -> tuple[float, int]:
    return call.deadline, call.call_id


# ---------------------------------------------------------------- client

class _Outbox:
    """The frames a protocol has ready to write (``_out``, oldest first)."""

    _out: list[bytes]

    def frames_to_send(self, now: float, max_frames: int | None = None) -> list[bytes]:
        """Encoded frames ready to write, oldest first (at most ``max_frames``)."""
        out = self._out
        if max_frames is None or max_frames >= len(out):
            self._out = []
            return out
        frames = out[:max_frames]
        del out[:max_frames]
        return frames



class _Call:
    """A call of the client.

    ``call_id``, ``oneway`` and ``frames`` (a tuple of encoded frames) are set when
    it is made, the rest when it is launched: ``sent_at``, the time of its only
    transmission, or None once it was retransmitted (Karn: its reply gives no RTT
    sample); ``rto``, its own backed-off RTO; ``deadline``, when it is retransmitted
    next; ``heaped``, where that deadline is kept (see :class:`ClientProtocol`).
    There is no ``__init__``: storing the fields directly costs about half as much.
    """

    __slots__ = ("call_id", "oneway", "frames", "sent_at", "rto", "deadline", "heaped")
    call_id: int
    oneway: bool
    frames: tuple[bytes, ...]
    sent_at: float | None
    rto: float
    deadline: float
    heaped: bool


class ClientProtocol(_Outbox):
    """The calling side of one connection.

    The synchronous call (one fragment out, one fragment back) is the hot path and
    is kept free of per-call bookkeeping beyond the in-flight table:

    - A message that fits one frame is encoded directly (no split, no reassembly).
    - Retransmission deadlines need no heap push per call.  Calls are launched in
      call id order, which is the order of ``_in_flight``; a call whose deadline is
      not earlier than that of the previous call launched this way (or that finds
      nothing in flight) is *ordered* (``heaped`` False), so the ordered calls in
      ``_in_flight`` have non-decreasing deadlines and the first of them holds the
      earliest.  Only the others, a call launched with a shorter RTO than a call
      still in flight and every call once it was retransmitted, are *heaped*: they
      get an entry in ``_timers``, a heap of ``(deadline, call id)`` whose stale
      entries are skipped.  :meth:`get_timer` takes the earlier of both (skipping
      the heaped calls before the first ordered one: at most ``max_in_flight``).
    - A reply that fits one frame completes its call without a reassembly object,
      and the RTT sample and the event cost a few attribute stores each.
    """

    def __init__(self, connection_id: int, *, max_payload: int, max_in_flight: int = 32,
                 initial_rto: float = 0.005, min_rto: float = 0.0005, max_rto: float = 0.5,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        _check_payload(max_payload)
        self.max_message_bytes = check_max_message(max_message_bytes)  # the largest reply reassembled
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._rto = RtoEstimator(initial_rto, min_rto, max_rto)
        self.connection_id = connection_id
        self.max_payload = max_payload
        self.max_in_flight = max_in_flight
        self._next_id = 1
        self._in_flight: dict[int, _Call] = {}  # insertion order == launch order == call id order
        self._queue: deque[_Call] = deque()
        self._out: list[bytes] = []
        self._timers: list[tuple[float, int]] = []  # heaped calls only, stale entries skipped
        self._last_deadline = 0.0  # of the latest ordered call
        self._partial: dict[int, _Reassembly] = {}  # multi-fragment replies being reassembled
        self._lane: int | None = None  # the call id on the fast lane, if any; _LENT: see lend
        self._calls = self._retransmits = self._bad = self._foreign = self._duplicates = 0
        self._refused = self._lane_calls = self._adopted = 0

    # -- calls

    def send_request(self, data: ReadableBuffer, now: float, *, oneway: bool = False) -> int:
        """Queue a call carrying ``data`` (bytes-like, copied now); return its call id."""
        call_id = self._next_id
        in_flight = self._in_flight
        queue = self._queue
        # The ack: the lowest call id still waited for (in flight, queued, or this one).
        if in_flight:
            ack = next(iter(in_flight))
        elif queue:
            ack = queue[0].call_id
        else:
            ack = call_id
        lane = self._lane
        if lane is not None:
            if lane == _LENT:
                raise RuntimeError("the call ids are lent to the fast lane: reclaim() them first")
            if lane < ack:
                ack = lane
        kind = _ONEWAY if oneway else _CALL
        if type(data) is bytes and len(data) <= self.max_payload:  # the fast path
            frames: tuple[bytes, ...] = (raw_encode(kind, self.connection_id, call_id, data, 0, 1, ack, 0),)
        else:
            frames = _encode_message(kind, self.connection_id, call_id,
                                     split(data, self.max_payload), ack)
        call = _Call()
        call.call_id = call_id
        call.oneway = oneway
        call.frames = frames
        self._next_id = call_id + 1
        self._calls += 1
        if queue:  # FIFO: calls are launched in call id order, after queued ones
            queue.append(call)
            self._fill(now)
        elif len(in_flight) < self.max_in_flight:
            self._launch(call, now)
        else:
            queue.append(call)
        return call_id

    @property
    def rto(self) -> float:
        """The current retransmission timeout (seconds)."""
        return self._rto.rto

    @property
    def srtt(self) -> float | None:
        """The smoothed round-trip time of this session's path (seconds), None before a sample."""
        return self._rto.srtt

    @property
    def lane_patience(self) -> float:
        """How long a call on the fast lane waits for its reply before the I/O layer hands it to
        the timer (:meth:`adopt_call`): the RTO the RTT samples give, without Karn's backoff.
        Adoption is no retransmission (that still waits out the backed-off RTO), and the lane
        holds the samples it takes until :meth:`reclaim`: a backoff from an earlier loss would
        otherwise stay in the patience of every lane call until the next loss."""
        return self._rto.settled

    # -- the fast lane (paper §4: the no-loss path never touches the timer)

    @property
    def lane_call(self) -> int | None:
        """The id of the call on the fast lane, if any (None also while the ids are lent)."""
        lane = self._lane
        return None if lane == _LENT else lane

    def lend(self) -> int | None:
        """Lend the call ids to the I/O layer's fast lane while nothing is outstanding.

        Returns the next call id when no call is in flight, queued or on the lane; else None
        (use :meth:`send_request`). Until :meth:`reclaim`, the lane makes synchronous calls on
        its own, one at a time: each takes the next id, goes out as one CALL frame acking every
        call before it (``ack`` = call id, as :meth:`adopt_call` frames it), and is over when
        its reply comes (a whole REPLY/ERROR_REPLY frame of this connection and call:
        :meth:`receive_frame` would deliver exactly that). That is all this protocol would do
        for such a call, so the lane only counts them. Every other use of the protocol must
        reclaim first (``send_request`` raises ``RuntimeError`` meanwhile).
        """
        if self._in_flight or self._queue or self._lane is not None:
            return None
        self._lane = _LENT
        self._timers.clear()  # nothing in flight: every entry left is stale
        return self._next_id

    def reclaim(self, next_id: int, calls: int, current: int | None, rtt: float | None) -> None:
        """Take back the call ids lent by :meth:`lend`: the lane's next id, how many calls it
        made, the call still on its way if any (it stays on the lane: :meth:`end_call`,
        :meth:`adopt_call` or :meth:`cancel` settles it), and the round trip of its last
        completed call if any (an RTT sample)."""
        if self._lane != _LENT:
            raise ValueError("the call ids are not lent")
        if next_id < self._next_id or calls < 0 or (current is not None and not self._next_id <= current < next_id):
            raise ValueError("the lane's state does not follow from what was lent")
        self._next_id = next_id
        self._calls += calls
        self._lane_calls += calls
        self._lane = current
        if rtt is not None:
            self._rto.sample(rtt)

    def end_call(self, call_id: int, rtt: float) -> None:
        """The lane's call ``call_id`` got its reply ``rtt`` seconds after it was sent, after the
        state was reclaimed: take the RTT sample and free the lane."""
        if self._lane != call_id or call_id == _LENT:
            raise ValueError(f"call {call_id} is not on the lane")
        self._lane = None
        self._rto.sample(rtt)

    def adopt_call(self, call_id: int, data: bytes, sent_at: float) -> None:
        """Put the lane's call of message ``data``, sent once at ``sent_at``, under the timer as
        an in-flight call."""
        if self._lane != call_id:
            raise ValueError(f"call {call_id} is not on the lane")
        self._lane = None
        self._adopted += 1
        call = _Call()
        call.call_id = call_id
        call.oneway = False
        call.frames = (raw_encode(_CALL, self.connection_id, call_id, data, 0, 1, call_id, 0),)
        call.sent_at = sent_at
        call.rto = rto = self._rto.rto
        call.deadline = deadline = sent_at + rto
        call.heaped = True  # its deadline is not ordered with the calls launched meanwhile
        _heappush(self._timers, (deadline, call_id))
        # in flight in call id order: it is older than any call launched while it was on the lane
        in_flight = self._in_flight
        self._in_flight = {call_id: call}
        self._in_flight.update(in_flight)

    def lend_pipelined(self, span: int, lendable: Callable[[int], bool]
                       ) -> tuple[int, list[tuple[int, int, bytes, float | None]]] | None:
        """Lend the call ids to the I/O layer's pipelined lane together with the calls outstanding:
        ``(next id, [(call id, ack, message, sent_at or None if queued), ...])`` in call id order,
        the calls in flight first; the protocol forgets them (:meth:`adopt_pipelined` takes them
        back). None (nothing lent) unless every call outstanding is a one-frame call, not one-way,
        sent at most once (no retransmission: its reply is an RTT sample), ``lendable`` (by call
        id), with call ids spanning less than ``span``, and no reply is being reassembled."""
        if self._lane is not None or self._partial:
            return None
        in_flight, queue = self._in_flight, self._queue
        first = next(iter(in_flight)) if in_flight else queue[0].call_id if queue else self._next_id
        if self._next_id - first >= span:
            return None
        calls: list[tuple[int, int, bytes, float | None]] = []
        for call in (*in_flight.values(), *queue):
            if (call.oneway or len(call.frames) != 1 or (call.call_id in in_flight and call.sent_at is None)
                    or not lendable(call.call_id)):
                return None
            _, _, call_id, _, _, ack, payload, _ = raw_decode(call.frames[0], KIND_TABLE)
            calls.append((call_id, ack, bytes(payload), call.sent_at if call_id in in_flight else None))
        in_flight.clear()
        queue.clear()
        self._timers.clear()
        self._lane = _LENT
        return self._next_id, calls

    def adopt_pipelined(self, next_id: int, calls: int, rtt: float | None, bad: int,
                        outstanding: list[tuple[int, int, bytes, float | None]]) -> None:
        """Take back the call ids lent by :meth:`lend` to the I/O layer's pipelined lane.

        That lane made ``calls`` calls (next id ``next_id``), each one CALL frame acking the lowest
        call id it still waited for, as :meth:`send_request` frames a one-frame call, at most
        ``max_in_flight`` of them sent at a time, in call id order; it completed those whose whole
        REPLY/ERROR_REPLY came (what :meth:`complete` does), dropped ``bad`` frames that made no
        sense, and took the RTT sample ``rtt``. ``outstanding``: the calls not completed, in call
        id order, ``(call id, ack, message, sent_at)``; those sent (``sent_at`` not None) go in
        flight under the timer as :meth:`adopt_call` puts a call, the others wait in the queue."""
        last = 0
        for call_id, ack, data, _ in outstanding:
            if not (last < call_id < next_id and 0 < ack <= call_id) or len(data) > self.max_payload:
                raise ValueError("the lane's calls do not follow from what was lent")
            last = call_id
        self.reclaim(next_id, calls, None, rtt)
        self._bad += bad
        for call_id, ack, data, sent_at in outstanding:
            call = _Call()
            call.call_id = call_id
            call.oneway = False
            call.frames = (raw_encode(_CALL, self.connection_id, call_id, data, 0, 1, ack, 0),)
            if sent_at is None:
                self._queue.append(call)
                continue
            call.sent_at = sent_at
            call.rto = rto = self._rto.rto
            call.deadline = deadline = sent_at + rto
            call.heaped = True  # (its deadline is not ordered with the calls launched later)
            _heappush(self._timers, (deadline, call_id))
            self._in_flight[call_id] = call

    def cancel(self, call_id: int) -> None:
        """Forget a call (the caller gave up); a late reply is counted as a duplicate.

        The slot it frees is given to a queued call at the next ``frames_to_send``.
        """
        if self._lane == call_id:
            self._lane = None
        self._partial.pop(call_id, None)
        if self._in_flight.pop(call_id, None) is None:
            for call in self._queue:
                if call.call_id == call_id:
                    self._queue.remove(call)
                    break

    def withdraw(self, call_id: int) -> bool:
        """Take back a call still queued behind the window (never sent): True if it was, and it is
        gone; False if it was sent (it may run), answered, or is unknown."""
        for call in self._queue:
            if call.call_id == call_id:
                self._queue.remove(call)
                return True
        return False

    def is_queued(self, call_id: int) -> bool:
        """The call waits behind the window: nothing of it was sent yet."""
        queue = self._queue  # in call id order: the newest call (just made) and the oldest are quick to tell
        if not queue or not queue[0].call_id <= call_id <= queue[-1].call_id:
            return False
        return call_id == queue[-1].call_id or any(call.call_id == call_id for call in queue)

    def _launch(self, call: _Call, now: float) -> None:
        in_flight = self._in_flight
        call.sent_at = now
        call.rto = rto = self._rto.rto
        call.deadline = deadline = now + rto
        if in_flight and deadline < self._last_deadline:
            call.heaped = True
            _heappush(self._timers, (deadline, call.call_id))
        else:
            call.heaped = False
            self._last_deadline = deadline
        in_flight[call.call_id] = call
        self._out.extend(call.frames)

    def _fill(self, now: float) -> None:
        while self._queue and len(self._in_flight) < self.max_in_flight:
            self._launch(self._queue.popleft(), now)

    # -- frames

    def receive_frame(self, view: ReadableBuffer, now: float) -> list[ReplyReceived]:
        """Take one received frame; return the replies it completes."""
        try:
            kind, connection_id, call_id, index, count, _, payload, _ = raw_decode(view, KIND_TABLE)
        except ValueError:  # FrameError, or ValueError from the native decoder
            self._bad += 1
            return []
        if connection_id != self.connection_id:
            self._foreign += 1
            return []
        in_flight = self._in_flight
        call = in_flight.get(call_id)
        if call is None:
            if 0 < call_id < self._next_id and kind in (_REPLY, _ERROR_REPLY, _ACK):
                self._duplicates += 1
            else:
                self._bad += 1
            return []
        oneway = call.oneway
        if oneway:
            fits = kind is _ACK
        else:
            fits = kind is _REPLY or kind is _ERROR_REPLY
        if not fits:
            self._bad += 1
            return []
        if count == 1:  # the fast path: the whole reply in one frame
            data: bytes | bytearray = payload
            if self._partial:
                self._partial.pop(call_id, None)
        else:
            if count * self.max_payload > self.max_message_bytes:
                self._refused += 1  # a reply larger than this client takes: never buffered
                return []
            whole = self._reassemble(call_id, kind, index, count, payload)
            if whole is None:
                return []
            data = whole
        # The call is complete.
        del in_flight[call_id]
        sent_at = call.sent_at
        if sent_at is not None:
            self._rto.sample(now - sent_at)
        if self._queue:
            self._fill(now)
        if oneway:
            return []
        event = _NewReply()
        event.call_id = call_id
        event.data = data
        event.error = kind is _ERROR_REPLY
        # the twin becomes the frozen event it mirrors (same slots): mypy cannot follow a class change
        event.__class__ = ReplyReceived  # type: ignore[assignment]
        return [event]  # type: ignore[list-item]

    def complete(self, call_id: int, now: float, sample: bool = True) -> bool:
        """Take a whole one-frame reply of this connection to ``call_id`` that the I/O layer decoded
        and checked already (the pipelined calls' native drain): what :meth:`receive_frame` does with
        such a frame, without the event. True if it completes the call (the I/O layer then owns
        the reply); False if the call is not in flight (a duplicate, or the peer's nonsense: counted)
        or is one-way (a reply makes no sense: counted as bad).

        ``sample`` False: take no RTT sample from it. A drain of many replies samples one, its
        oldest call's (the longest round trip of the batch), as TCP times one segment per round
        trip (RFC 6298 asks for at least one sample per RTT)."""
        in_flight = self._in_flight
        call = in_flight.get(call_id)
        if call is None:
            if 0 < call_id < self._next_id:
                self._duplicates += 1
            else:
                self._bad += 1
            return False
        if call.oneway:
            self._bad += 1
            return False
        if self._partial:
            self._partial.pop(call_id, None)
        del in_flight[call_id]
        sent_at = call.sent_at
        if sent_at is not None and sample:
            self._rto.sample(now - sent_at)
        if self._queue:
            self._fill(now)
        return True

    def _reassemble(self, call_id: int, kind: Kind, index: int, count: int, payload: bytearray) -> bytes | None:
        """Add a fragment of a reply: the reply if complete, else None."""
        data, duplicate = _reassemble(self._partial, call_id, kind, index, count, payload)
        self._duplicates += duplicate
        return data

    def frames_to_send(self, now: float, max_frames: int | None = None) -> list[bytes]:
        """Encoded frames ready to write, oldest first (at most ``max_frames``)."""
        if self._queue:
            self._fill(now)
        return _Outbox.frames_to_send(self, now, max_frames)

    # -- timer

    def _first_ordered(self) -> _Call | None:
        for call in self._in_flight.values():
            if not call.heaped:
                return call
        return None

    def get_timer(self) -> float | None:
        """The next retransmission deadline, or None if no call is outstanding."""
        timers = self._timers
        in_flight = self._in_flight
        while timers:  # drop stale heap entries (call completed, cancelled or re-armed)
            deadline, call_id = timers[0]
            call = in_flight.get(call_id)
            if call is not None and call.deadline == deadline:
                break
            _heappop(timers)
        first = self._first_ordered()
        if first is None:
            return timers[0][0] if timers else None
        if timers and timers[0][0] < first.deadline:
            return timers[0][0]
        return first.deadline

    def handle_timer(self, now: float) -> None:
        """Queue retransmissions of every call whose deadline has passed."""
        expired = []
        for call in self._in_flight.values():  # ordered calls: stop at the first not due
            if not call.heaped:
                if call.deadline > now:
                    break
                expired.append(call)
        timers = self._timers
        in_flight = self._in_flight
        while timers and timers[0][0] <= now:
            deadline, call_id = _heappop(timers)
            timed = in_flight.get(call_id)
            if timed is not None and timed.deadline == deadline:
                expired.append(timed)
        if not expired:
            return
        expired.sort(key=_timer_order)
        backoff = self._rto.backoff
        out = self._out
        for call in expired:
            self._retransmits += 1
            call.sent_at = None
            call.heaped = True
            call.rto = rto = backoff(call.rto)
            call.deadline = deadline = now + rto
            _heappush(timers, (deadline, call.call_id))
            out.extend(call.frames)
        backoff()  # Karn: keep the backed-off RTO until a clean sample arrives

    def statistics(self) -> ClientStats:
        return ClientStats(self._calls, self._retransmits, self._bad, self._foreign,
                           self._duplicates, self._rto.rto, self._rto.srtt, len(self._in_flight),
                           len(self._queue), self._refused, self._lane_calls, self._adopted)


# ---------------------------------------------------------------- server

class ServerProtocol(_Outbox):
    """The serving side of one connection.

    The synchronous call is the hot path: a request or reply that fits one frame
    skips reassembly and :func:`split`.  The reply cache is a plain dict used in
    insertion order (oldest first): taking its first key and deleting it is cheaper
    than ``OrderedDict.popitem``, and the synchronous call does exactly that once
    per call (the next request's ack releases the previous reply).
    """

    def __init__(self, connection_id: int, *, max_payload: int, reply_cache: int = 1024,
                 max_partial: int = 64, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 refusal: Callable[[bool], bytes | None] | None = None) -> None:
        _check_payload(max_payload)
        self.max_message_bytes = check_max_message(max_message_bytes)  # the largest request reassembled
        # refusal(oneway): the error reply to a refused request (None: drop its frames); the I/O
        # layer's codec of that reply, and its counter (cold path: only for refused requests)
        self._refusal = refusal
        if reply_cache < 1 or max_partial < 1:
            raise ValueError("reply_cache and max_partial must be at least 1")
        self.connection_id = connection_id
        self.max_payload = max_payload
        self._cache_size = reply_cache
        self._max_partial = max_partial
        self._low = 0                  # the client waits for no call id below this
        self._seen: set[int] = set()   # delivered call ids (those below _low pruned lazily)
        self._last = 0                 # the highest call id delivered
        self._seen_limit = 128         # prune _seen when it grows beyond this
        self._executing: set[int] = set()
        self._replies: dict[int, tuple[bytes, ...]] = {}   # call id -> frames, oldest first
        self._partial: OrderedDict[int, _Reassembly] = OrderedDict()
        self._out: list[bytes] = []
        self._requests = self._replied = self._bad = self._foreign = 0
        self._duplicates = self._evicted = self._refused = 0

    def receive_frame(self, view: ReadableBuffer, now: float) -> list[RequestReceived]:
        """Take one received frame; return the call it completes, if any."""
        try:
            fields = raw_decode(view, KIND_TABLE)
        except ValueError:  # FrameError, or ValueError from the native decoder
            self._bad += 1
            return []
        return self.receive_fields(fields, now)

    def receive_fields(self, fields: FrameFields | None, now: float) -> list[RequestReceived]:
        """:meth:`receive_frame` of a frame the I/O layer decoded already: the tuple of
        :func:`wire.decode_fields`, or None for a frame that failed its checks."""
        if fields is None:
            self._bad += 1
            return []
        kind, connection_id, call_id, index, count, ack, payload, _ = fields
        if connection_id != self.connection_id:
            self._foreign += 1
            return []
        if (kind is not _CALL and kind is not _ONEWAY) or ack > call_id:
            self._bad += 1
            return []
        if ack > self._low:
            self._low = ack
            replies = self._replies
            while replies:  # forget the replies the client no longer waits for (oldest first)
                oldest = next(iter(replies))
                if oldest >= ack:
                    break
                del replies[oldest]
            if self._partial or len(self._seen) > self._seen_limit:
                self._advance(ack)
        if call_id < self._low:
            self._duplicates += 1
            return []
        seen = self._seen
        if call_id in seen:
            self._duplicates += 1
            if index == count - 1:  # once per retransmitted request, not once per fragment
                if kind is _ONEWAY:
                    self._out.append(encode(_ACK, connection_id, call_id))
                else:
                    self._out.extend(self._replies.get(call_id, ()))
            return []
        if count == 1:  # the fast path: the whole request in one frame
            data: bytes | bytearray = payload
        else:
            if count * self.max_payload > self.max_message_bytes:
                self._refuse(kind, call_id, now)
                return []
            whole = self._reassemble(kind, call_id, index, count, payload)
            if whole is None:
                return []
            data = whole
        seen.add(call_id)
        if call_id > self._last:
            self._last = call_id
        self._requests += 1
        oneway = kind is _ONEWAY
        if oneway:
            self._out.append(encode(_ACK, connection_id, call_id))
        else:
            self._executing.add(call_id)
        event = _NewRequest()
        event.call_id = call_id
        event.data = data
        event.oneway = oneway
        # the twin becomes the frozen event it mirrors (same slots): mypy cannot follow a class change
        event.__class__ = RequestReceived  # type: ignore[assignment]
        return [event]  # type: ignore[list-item]

    def _refuse(self, kind: Kind, call_id: int, now: float) -> None:
        """A request larger than ``max_message_bytes``, at the first of its fragments that came:
        nothing of it is kept; a call is answered with the refusal (cached: its retransmissions
        are duplicates), a one-way call, or any call without a refusal, dropped."""
        self._refused += 1
        reply = None if self._refusal is None else self._refusal(kind is _ONEWAY)
        if kind is _ONEWAY or reply is None:
            return
        self._seen.add(call_id)
        if call_id > self._last:
            self._last = call_id
        self._executing.add(call_id)
        self.send_reply(call_id, reply, now, error=True)
        self._replied -= 1  # not a reply to a delivered call

    def _reassemble(self, kind: Kind, call_id: int, index: int, count: int, payload: bytearray) -> bytes | None:
        data, duplicate = _reassemble(self._partial, call_id, kind, index, count, payload, self._max_partial)
        self._duplicates += duplicate
        return data

    def _advance(self, ack: int) -> None:
        """The client no longer waits for calls below ``ack`` (``_low`` moved there and its cached
        replies were dropped): forget the partial messages and delivered ids only they needed."""
        partial = self._partial
        while partial and next(iter(partial)) < ack:
            partial.popitem(last=False)
        if len(self._seen) > self._seen_limit:
            self._seen = {call_id for call_id in self._seen if call_id >= ack}
            self._seen_limit = 2 * max(64, len(self._seen))

    def send_reply(self, call_id: int, data: ReadableBuffer, now: float, *, error: bool = False) -> None:
        """Answer a delivered call with ``data`` (bytes-like), flagged ERROR_REPLY if ``error``."""
        executing = self._executing
        if call_id not in executing:
            raise ValueError(f"call {call_id} is not awaiting a reply "
                             "(unknown, one-way, or already answered)")
        if type(data) is bytes and len(data) <= self.max_payload:  # the fast path
            pieces = None
        else:
            pieces = split(data, self.max_payload)
        executing.remove(call_id)
        self._replied += 1
        if call_id < self._low:
            return  # the client gave up on it
        kind = _ERROR_REPLY if error else _REPLY
        if pieces is None:
            frames: tuple[bytes, ...] = (raw_encode(kind, self.connection_id, call_id, data, 0, 1, 0, 0),)
        else:
            frames = _encode_message(kind, self.connection_id, call_id, pieces)
        replies = self._replies
        replies[call_id] = frames
        if len(replies) > self._cache_size:
            del replies[next(iter(replies))]
            self._evicted += 1
        self._out.extend(frames)

    # -- the native server lane (rpc/server.py, _native.RequestIntake)

    def lend(self) -> int | None:
        """Lend the state to the I/O layer's lane: the highest call id delivered, or None while a
        call awaits its reply.

        The lane then serves requests that are one whole CALL frame newer than any delivered
        whose ack does not exceed its call id, and only those, at most :meth:`lane_room` of them
        kept at a time: for each, exactly what :meth:`receive_fields` and :meth:`send_reply` would
        do comes down to "take its ack (forget the replies below it); deliver it; cache its
        one-frame reply". A synchronous client's requests (each acking every call before it) and
        a pipelining client's (each acking the oldest call it still waits for) are such requests.
        Before the protocol takes any other frame, the lane hands that back (:meth:`reclaim`)."""
        return None if self._executing else self._last

    def lane_room(self) -> int:
        """How many more replies the reply cache takes without evicting one: the lane keeps at
        most that many (so that its delta never makes the cache evict)."""
        return self._cache_size - len(self._replies)

    def reclaim(self, served: int, replied: int, ack: int, last: int,
                kept: tuple[tuple[int, bytes | None], ...]) -> None:
        """Take back the state lent by :meth:`lend`: the lane served ``served`` requests (and
        answered ``replied`` of them), the last being ``last``; the highest ack among them was
        ``ack``; ``kept``: the calls it delivered that this ack did not release, in call id order,
        each with its reply frame (None: never answered)."""
        if not served:
            return
        if last <= self._last:
            raise ValueError(f"the lane's last call {last} is not newer than {self._last}")
        self._requests += served
        self._replied += replied
        self._last = last
        seen, replies = self._seen, self._replies
        for call_id, frame in kept:
            seen.add(call_id)
            if frame is not None:
                replies[call_id] = (frame,)
        if ack > self._low:  # as receive_fields takes an ack
            self._low = ack
            while replies:  # forget the replies the client no longer waits for (oldest first)
                oldest = next(iter(replies))
                if oldest >= ack:
                    break
                del replies[oldest]
            if self._partial or len(seen) > self._seen_limit:
                self._advance(ack)

    def statistics(self) -> ServerStats:
        return ServerStats(self._requests, self._replied, self._bad, self._foreign,
                           self._duplicates, len(self._replies), self._evicted,
                           len(self._executing), self._refused)
