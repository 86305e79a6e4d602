"""Reliable ordered stream of byte messages with flow control, sans-I/O (paper §4).

This module owns the transport under ``ombm.Stream``: one :class:`StreamSender`
and one :class:`StreamReceiver` per direction, turning best-effort frames into
messages delivered in order, exactly once, with a slow receiver slowing the sender
down instead of losing data.  Like :mod:`ombm.transport.rpc_protocol` it owns no socket,
clock, thread or shared memory: frames and ``now`` in, events and frames out.

Rules:

- A message is cut into DATA frames of at most ``max_payload`` bytes.  Every frame
  has the next **sequence number** (``message_id``, from 0, counting fragments, not
  messages) and its place in its message (``frag_index``/``frag_count``).
- The receiver answers with CREDIT frames carrying its cumulative ack (``ack``:
  every sequence number below it arrived) and its credit (``credit``: how many
  sequence numbers past ``ack`` it can take), at most one per ``frames_to_send``.
- **Flow control.**  The receiver's window is ``window`` fragments counted from
  the first fragment the application has not *released* yet: delivered messages
  occupy it until released.  By default a message is released as soon as
  ``receive_frame`` returns it; pass ``auto_release=False`` and call
  :meth:`StreamReceiver.release` when the application has consumed it, and a
  slow consumer holds the sender back.  The right edge of the window (``ack +
  credit``) never moves left.  Both ends must be built with the same ``window``:
  it is also the sender's initial credit.
- ``StreamSender.send`` takes a whole message or nothing: it returns False when the
  credit cannot take all its fragments (the I/O layer raises ``WouldBlock`` or
  waits for :class:`CreditAvailable`).  A message of more than ``window``
  fragments can never be sent and raises ``ValueError``.
- **Retransmission.**  When the oldest unacknowledged fragment has waited one RTO,
  every unacknowledged fragment is sent again (the receiver keeps out-of-order
  fragments inside its window and drops duplicates), and the RTO doubles.  The RTO
  adapts from fragments sent only once (Karn, RFC 6298).  A sender refused by a
  closed window probes the receiver with a PROBE frame on the same timer (backing
  off), so a lost window update cannot deadlock the stream.
- DATA and PROBE frames go to the receiver, CREDIT frames to the sender; an I/O
  layer sharing one channel between both can route with :func:`wire.peek_kind`.
- Bad, foreign, duplicate and out-of-window frames are dropped and counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ombm.errors import FrameError
from ombm.transport.rpc_protocol import RtoEstimator, _check_payload, _drain, split
from ombm.transport.wire import Kind, decode_fields, encode

__all__ = ["StreamSender", "StreamReceiver", "MessageReceived", "CreditAvailable",
           "SenderStats", "ReceiverStats"]

_DATA, _CREDIT, _PROBE = Kind.DATA, Kind.CREDIT, Kind.PROBE


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The next message of the stream.  ``data`` is bytes-like."""

    data: bytes | bytearray


@dataclass(frozen=True, slots=True)
class CreditAvailable:
    """The receiver opened its window: ``fragments`` more can be sent now."""

    fragments: int


@dataclass(frozen=True, slots=True)
class SenderStats:
    messages: int        # accepted by send()
    fragments: int       # DATA frames, first transmissions
    retransmits: int     # DATA frames sent again
    probes: int          # window probes
    bad_frames: int
    foreign_frames: int
    unacked: int         # fragments sent and not acknowledged yet
    credit: int          # fragments send() may still emit
    rto_s: float
    srtt_s: float | None


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    messages: int        # delivered
    duplicates: int      # fragments already received
    overruns: int        # fragments beyond the window, dropped
    bad_frames: int      # failed decode, wrong kind, or fragments out of place
    foreign_frames: int
    buffered: int        # out-of-order fragments held
    unreleased: int      # delivered messages the application has not released
    held_fragments: int  # window in use: buffered + partial + delivered-unreleased (<= window)


def _check_window(window: int) -> None:
    if not isinstance(window, int) or not 1 <= window <= 0xFFFFFFFF:
        raise ValueError(f"window must be an int in 1..2**32-1, not {window!r}")


class StreamSender:
    """The sending end of one stream direction."""

    def __init__(self, connection_id: int, max_payload: int, window: int, *,
                 initial_rto: float = 0.005, min_rto: float = 0.0005, max_rto: float = 0.5) -> None:
        _check_payload(max_payload)
        _check_window(window)
        self.connection_id = connection_id
        self.max_payload = max_payload
        self.window = window
        self._rto = RtoEstimator(initial_rto, min_rto, max_rto)
        self._next_seq = 0
        self._acked = 0               # every sequence number below it was received
        self._limit = window          # sequence numbers below it may be sent
        self._unacked: deque[list] = deque()  # [seq, frame, sent_at, retransmitted]
        self._deadline: float | None = None
        self._blocked = False         # send() was refused: probe the window
        self._out: deque[bytes] = deque()
        self._messages = self._fragments = self._retransmits = self._probes = 0
        self._bad = self._foreign = 0

    def send(self, data, now: float) -> bool:
        """Queue one message (bytes-like, copied now); False if the credit cannot take it."""
        pieces = split(data, self.max_payload)
        count = len(pieces)
        if count > self.window:
            raise ValueError(f"a message of {count} fragments can never fit a window of "
                             f"{self.window}")
        seq = self._next_seq
        if seq + count > self._limit:
            if not self._blocked:
                self._blocked = True
                if self._deadline is None:
                    self._deadline = now + self._rto.rto
            return False
        for index, piece in enumerate(pieces):
            frame = encode(_DATA, self.connection_id, seq + index, piece,
                           frag_index=index, frag_count=count)
            self._unacked.append([seq + index, frame, now, False])
            self._out.append(frame)
        self._next_seq = seq + count
        self._messages += 1
        self._fragments += count
        if self._deadline is None:
            self._deadline = now + self._rto.rto
        return True

    def receive_frame(self, view, now: float) -> list[CreditAvailable]:
        """Take a CREDIT frame from the receiver."""
        try:
            kind, connection_id, _, _, _, ack, _, credit = decode_fields(view)
        except FrameError:
            self._bad += 1
            return []
        if connection_id != self.connection_id:
            self._foreign += 1
            return []
        if kind is not _CREDIT or ack > self._next_seq:
            self._bad += 1
            return []
        if ack > self._acked:
            self._acknowledge(ack, now)
        limit = ack + credit
        if limit <= self._limit:
            return []
        self._limit = limit
        self._blocked = False
        if not self._unacked:
            self._deadline = None
        return [CreditAvailable(limit - self._next_seq)]

    def _acknowledge(self, ack: int, now: float) -> None:
        self._acked = ack
        unacked = self._unacked
        newest = None
        while unacked and unacked[0][0] < ack:
            newest = unacked.popleft()
        if newest is not None and not newest[3]:
            self._rto.sample(now - newest[2])
        if unacked or self._blocked:
            self._deadline = now + self._rto.rto
        else:
            self._deadline = None

    def frames_to_send(self, now: float, max_frames: int | None = None) -> list[bytes]:
        """Encoded frames ready to write, oldest first (at most ``max_frames``)."""
        return _drain(self._out, max_frames)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next, or None."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit unacknowledged fragments, or probe a closed window, if it is time."""
        if self._deadline is None or now < self._deadline:
            return
        if self._unacked:
            for entry in self._unacked:
                entry[3] = True
                self._out.append(entry[1])
            self._retransmits += len(self._unacked)
        elif self._blocked:
            self._probes += 1
            self._out.append(encode(_PROBE, self.connection_id, 0))
        else:
            self._deadline = None
            return
        self._deadline = now + self._rto.backoff()

    def statistics(self) -> SenderStats:
        return SenderStats(self._messages, self._fragments, self._retransmits, self._probes,
                           self._bad, self._foreign, len(self._unacked),
                           max(0, self._limit - self._next_seq), self._rto.rto, self._rto.srtt)


class StreamReceiver:
    """The receiving end of one stream direction."""

    def __init__(self, connection_id: int, max_payload: int, window: int, *,
                 auto_release: bool = True) -> None:
        _check_payload(max_payload)
        _check_window(window)
        self.connection_id = connection_id
        self.max_payload = max_payload
        self.window = window
        self.auto_release = auto_release
        self._expected = 0            # next sequence number to deliver
        self._released = 0            # sequence numbers below it are free again
        self._buffer: dict[int, tuple] = {}   # seq -> (index, count, payload), out of order
        self._parts: list = []        # fragments of the message being reassembled
        self._unreleased: deque[int] = deque()  # fragment counts of delivered messages
        self._ack_due = False
        self._messages = self._duplicates = self._overruns = self._bad = self._foreign = 0

    def receive_frame(self, view, now: float) -> list[MessageReceived]:
        """Take a DATA frame (or a window probe); return the messages it completes, in order."""
        try:
            kind, connection_id, seq, index, count, _, payload, _ = decode_fields(view)
        except FrameError:
            self._bad += 1
            return []
        if connection_id != self.connection_id:
            self._foreign += 1
            return []
        if kind is _PROBE:  # the sender probes a closed window
            self._ack_due = True
            return []
        if kind is not _DATA:
            self._bad += 1
            return []
        self._ack_due = True
        if seq < self._expected or seq in self._buffer:
            self._duplicates += 1
            return []
        if seq >= self._released + self.window:
            self._overruns += 1
            return []
        self._buffer[seq] = (index, count, payload)
        events = self._deliver()
        if events and self.auto_release:
            self.release(len(events))
        return events

    def _deliver(self) -> list[MessageReceived]:
        events = []
        buffer, parts = self._buffer, self._parts
        while self._expected in buffer:
            index, count, payload = buffer.pop(self._expected)
            if index != len(parts) or (parts and count != parts[0][0]):
                # Only a broken or hostile sender gets here: a checksummed frame out of place.
                self._bad += 1
                parts.clear()
                if index != 0:
                    self._expected += 1
                    continue
            self._expected += 1
            parts.append((count, payload))
            if index == count - 1:
                data = payload if count == 1 else b"".join(part for _, part in parts)
                parts.clear()
                events.append(MessageReceived(data))
                self._unreleased.append(count)
        self._messages += len(events)
        return events

    def release(self, messages: int = 1) -> None:
        """The application consumed ``messages`` delivered messages: reopen their space."""
        if not 0 <= messages <= len(self._unreleased):
            raise ValueError(f"cannot release {messages} messages: "
                             f"{len(self._unreleased)} delivered and not released")
        freed = 0
        for _ in range(messages):
            freed += self._unreleased.popleft()
        if freed:
            self._released += freed
            self._ack_due = True

    def frames_to_send(self, now: float, max_frames: int | None = None) -> list[bytes]:
        """The CREDIT frame (cumulative ack + credit) if one is due."""
        if not self._ack_due or max_frames == 0:
            return []
        self._ack_due = False
        credit = self._released + self.window - self._expected
        return [encode(_CREDIT, self.connection_id, 0, ack=self._expected, credit=credit)]

    def statistics(self) -> ReceiverStats:
        return ReceiverStats(self._messages, self._duplicates, self._overruns, self._bad,
                             self._foreign, len(self._buffer), len(self._unreleased),
                             self._expected - self._released + len(self._buffer))
