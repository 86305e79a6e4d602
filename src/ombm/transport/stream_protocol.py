"""The stream protocol, sans-I/O (paper §4): every rule of the transport under ``ombm.Stream``.

One :class:`StreamSender` and one :class:`StreamReceiver` turn best-effort fragments into messages
delivered in order, exactly once and intact, with a slow receiver slowing the sender down instead
of losing data.  Like :mod:`ombm.transport.rpc_protocol` this module owns no memory, socket, clock
or thread: fragment headers, frames and ``now`` (seconds, any monotonic origin) go in; decisions,
counters and frames come out.  :mod:`ombm.channels.stream` drives it over two shared-memory
segments (it writes the data in place and publishes the counts as words, for speed); an I/O layer
over datagrams (paper §3.2.3) drives the same two objects with frames alone.

Frames (the layout is :mod:`ombm.transport.wire`'s trailer):

* **DATA**, sender to receiver: a fragment's payload and trailer.  ``message_id`` is its sequence
  number (from 0, counting fragments, not messages), ``frag_index``/``frag_count`` its place in
  its message, ``ack`` the message's total length and ``credit`` its content type (:data:`BYTES`,
  :data:`ARRAY`): the stream direction has no acknowledgement to piggyback.  Its checksum is the
  wire's (a CRC32C of payload and trailer head), continued from the payload's over the trailer
  (:func:`seal`) so that each end copies and checksums the payload in one pass.
* **CREDIT**, receiver to sender, a plain wire frame: ``ack`` is the cumulative acknowledgement
  (every fragment below it arrived) and ``credit`` how many fragments past ``ack`` the receiver can
  take (``released + window - ack``).  Over shared memory the same two counts are also published as
  words; a CREDIT frame then only wakes a waiting sender.

Rules:

* **Sequencing and fragmentation.**  :meth:`StreamSender.begin` announces a message of ``count``
  fragments; each :meth:`StreamSender.sent` takes the next sequence number.  A message longer than
  the window streams through it.  :meth:`StreamReceiver.accept` takes the fragments in order and
  checks that a checksummed fragment is the one the stream expects there (sequence number, place,
  lengths, content): one that is not comes from a broken or foreign sender (:class:`FrameError`),
  not from loss, which a checksum already caught.
* **Flow control.**  Fragment ``s`` may be sent only while ``s < released + window``: its place at
  the receiver is then free.  ``released`` counts the fragments the receiver's application gave
  back (a held array keeps its fragment, and every later one, unreleased); the right edge of the
  window never moves left.  A sender out of credit asks to be woken at :meth:`StreamSender.wake_target`, half a
  window ahead (hysteresis: one wake-up per half window, not per fragment).
* **Impossible credit is a protocol violation.**  A genuine receiver's counts only grow, and
  ``released <= acked <= next_seq``: it cannot acknowledge what was never sent nor free what it
  did not receive.  Counts that break this (an acknowledgement beyond what was sent or moving
  back, a release beyond the acknowledgement or moving back) come from a broken receiver or from
  whoever else wrote its counts: :meth:`StreamSender.on_credit` counts the violation and raises
  :class:`~ombm.errors.StreamProtocolError`, and the sender stays broken (every later
  :meth:`~StreamSender.on_credit` raises again); nothing is clamped and trusted.  Over datagrams
  a CREDIT frame whose counts are both at or below the sender's is stale (reordered) and ignored.
* **Repair timing.**  When the oldest unacknowledged fragment has waited an RTO, it is due for
  repair (:meth:`StreamSender.handle_timer` returns the I/O layer's record of it): the receiver
  takes fragments in order, so the oldest is the one it waits for.  The RTO starts at ``min_rto``,
  doubles at each repair up to ``max_rto``, and returns to ``min_rto`` when the acknowledgement
  moves (the timer restarts then, RFC 6298 §5.3) or a probed window opens.  A sender refused by a
  closed window with nothing unacknowledged gets :data:`PROBE` on the same timer, so a lost window
  update cannot stall it.
* **Datagrams.**  :meth:`StreamReceiver.place` sorts an arriving sequence number: the next one,
  ahead inside the window (keep it), a duplicate (answer with credit: the ack was lost), or beyond
  the window (drop).  Over shared memory the slot ``seq % window`` is that placement.
* **End of stream.**  The sender reports how many fragments and messages it sent
  (:attr:`StreamSender.next_seq`, :attr:`StreamSender.messages`).  A stream whose sender ended is
  complete only when the receiver took exactly that many, between messages
  (:meth:`StreamReceiver.check_end`); anything else is :class:`~ombm.errors.StreamProtocolError`
  saying how many are missing (lost to overwritten slots, e.g. after forged credit).

Only one thread at a time may use each object.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

from ombm._native import checksum as _checksum
from ombm.errors import FrameError, StreamProtocolError
from ombm.transport.fragments import check_max_payload
from ombm.transport.wire import MAGIC, MAX_FRAGMENTS, TRAILER_HEAD, TRAILER_SUM, Kind, decode_fields, encode

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["StreamSender", "StreamReceiver", "Probe", "PROBE", "seal", "unseal",
           "BYTES", "ARRAY", "MORE", "DONE", "REFUSED", "NEXT", "AHEAD", "DUPLICATE", "OVERRUN"]

R = TypeVar("R")

BYTES, ARRAY = 0, 1  # content types: a DATA frame's credit field
MORE, DONE, REFUSED = 0, 1, 2  # StreamReceiver.accept: more to come, message complete, not the wanted content
NEXT, AHEAD, DUPLICATE, OVERRUN = 0, 1, 2, 3  # StreamReceiver.place

_HEAD_SIZE = TRAILER_HEAD.size  # 40: trailer[0:40], what the seal continues the payload's checksum over
_head_fields, _sum_field = TRAILER_HEAD.unpack_from, TRAILER_SUM.unpack_from
_DATA, _CREDIT = int(Kind.DATA), Kind.CREDIT
_CONTENTS = (BYTES, ARRAY)
_U32 = 0xFFFFFFFF


def seal(head: bytes, payload_checksum: int) -> int:
    """A DATA frame's checksum, the wire's: the CRC32C of payload + ``head`` (the trailer's first 40
    bytes), continued from the payload's own (summed while it was copied, at both ends) over ``head``.
    A sealed DATA frame is therefore a valid wire frame (:func:`~ombm.transport.wire.decode` takes it)."""
    checksum: int = _checksum(head, payload_checksum)
    return checksum


def unseal(trailer: bytes, payload_checksum: int) -> tuple[int, ...] | None:
    """The fields of a DATA trailer (``bytes``: a private copy) if it seals the payload whose
    checksum is given, else None (torn, corrupt, or being written):
    ``(connection_id, seq, total, payload_len, content, frag_index, frag_count, kind, flags, magic)``.
    The stored u64 is compared whole: its high half must be zero."""
    # seal(), inlined: once per fragment received
    if _checksum(trailer[:_HEAD_SIZE], payload_checksum) != _sum_field(trailer, _HEAD_SIZE)[0]:
        return None
    return _head_fields(trailer, 0)


def _check_window(window: int) -> None:
    if not isinstance(window, int) or not 1 <= window <= _U32:
        raise ValueError(f"window must be an int in 1..2**32-1, not {window!r}")


class Probe:
    """The window is closed, nothing is unacknowledged and no update came for an RTO: ask the
    receiver for its window (over shared memory: read the published counts again)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PROBE"


PROBE = Probe()


class StreamSender(Generic[R]):
    """The sending end: sequence numbers, credit, acknowledgements and the repair timer.

    ``R`` is the I/O layer's record of a sent fragment, kept until it is acknowledged and handed
    back when the fragment is due for repair.  The fields the I/O layer reads on its per-fragment
    path are plain attributes: ``next_seq`` (the next fragment's sequence number), ``limit``
    (sequence numbers below it may be sent), ``index``/``count``/``total``/``content`` (the message
    being sent; ``count`` 0 between messages) and ``deadline`` (when :meth:`handle_timer` must run
    next; None: nothing to time).
    """

    __slots__ = ("connection_id", "window", "next_seq", "acked", "released", "limit", "index", "count",
                 "total", "content", "rto", "deadline", "_min_rto", "_max_rto", "_records", "_blocked",
                 "messages", "fragments", "bytes", "retransmits", "probes", "bad_frames", "foreign_frames",
                 "violations", "broken")

    def __init__(self, connection_id: int, window: int, *, min_rto: float = 0.1,
                 max_rto: float = 2.0) -> None:
        _check_window(window)
        if not 0 < min_rto <= max_rto:
            raise ValueError("need 0 < min_rto <= max_rto")
        self.connection_id = connection_id
        self.window = window
        self.next_seq = 0
        self.acked = 0            # every sequence number below it was received
        self.released = 0         # every sequence number below it is free at the receiver
        self.limit = window       # sequence numbers below it may be sent
        self.index = self.count = self.total = self.content = 0
        self.rto = self._min_rto = min_rto
        self._max_rto = max_rto
        self.deadline: float | None = None
        self._records: deque[R] = deque()  # the unacknowledged fragments acked, acked + 1, ...
        self._blocked = False     # refused by a closed window: probe it
        self.messages = self.fragments = self.bytes = 0
        self.retransmits = self.probes = self.bad_frames = self.foreign_frames = 0
        self.violations = 0       # impossible credit seen (the first one breaks the sender)
        self.broken: str | None = None  # why the sender is broken, once it is

    @property
    def unacked(self) -> int:
        """Fragments sent and not acknowledged yet."""
        return len(self._records)

    def finished(self) -> bool:
        """Everything begun was sent and acknowledged."""
        return not self._records and not self.count

    # ---- sending
    def begin(self, count: int, total: int, content: int) -> None:
        """The next message: ``count`` fragments, ``total`` bytes, of ``content`` type."""
        if self.count:
            raise ValueError("the previous message is still being sent")
        if not 1 <= count <= MAX_FRAGMENTS or content not in _CONTENTS:
            raise ValueError(f"a message of {count} fragments of content {content} cannot be sent")
        self.count, self.total, self.content, self.index = count, total, content, 0

    def sent(self, record: R, now: float) -> bool:
        """Fragment ``next_seq`` (number ``index`` of its message) went out; keep ``record`` until it
        is acknowledged.  True if it was the message's last fragment."""
        records = self._records
        if not records:
            self.deadline = now + self.rto
        records.append(record)
        self.next_seq += 1
        self.fragments += 1
        index = self.index + 1
        if index < self.count:
            self.index = index
            return False
        self.index = self.count = 0
        self.messages += 1
        self.bytes += self.total
        return True

    def sent_run(self, records: list[R], nbytes: int, now: float) -> None:
        """A run of one-fragment messages went out between messages, fragments ``next_seq``,
        ``next_seq + 1``, ... (one record each, ``nbytes`` payload bytes in all): as many
        :meth:`begin` and :meth:`sent` calls would count them (no credit is checked here: the I/O
        layer wrote them below ``limit``)."""
        if self.count:
            raise ValueError("a message is being sent: a run starts between messages")
        n = len(records)
        if not n:
            return
        if not self._records:
            self.deadline = now + self.rto
        self._records.extend(records)
        self.next_seq += n
        self.fragments += n
        self.messages += n
        self.bytes += nbytes

    def sent_one(self, record: R, nbytes: int, now: float) -> None:
        """A one-fragment message of ``nbytes`` payload bytes went out between messages as fragment
        ``next_seq``: :meth:`sent_run` of one record."""
        if self.count:
            raise ValueError("a message is being sent: a run starts between messages")
        records = self._records
        if not records:
            self.deadline = now + self.rto
        records.append(record)
        self.next_seq += 1
        self.fragments += 1
        self.messages += 1
        self.bytes += nbytes

    def abandon(self) -> bool:
        """Give up the message being sent if none of its fragments went; True if it was given up."""
        if self.count and not self.index:
            self.count = 0
            return True
        return False

    def blocked(self, now: float) -> None:
        """The I/O layer found no credit for the next fragment: probe the window on the timer."""
        if not self._blocked:
            self._blocked = True
            if self.deadline is None:
                self.deadline = now + self.rto

    def wake_target(self) -> int:
        """The released count at which a sender waiting for credit wants to be woken: the next
        fragment's place, or half a window ahead of it if that is sooner (hysteresis)."""
        seq = self.next_seq
        return min(seq, seq + 1 - self.window + self.window // 2)

    # ---- from the receiver
    def on_credit(self, acked: int, released: int, now: float) -> bool:
        """The receiver's counts: every fragment below ``acked`` arrived, every one below ``released``
        is free again.  True if fragment ``next_seq`` may be sent.

        :class:`~ombm.errors.StreamProtocolError` (counted in ``violations``; nothing else changes,
        and the sender stays broken) if the counts are impossible: see the module's rules."""
        if not (self.released <= released <= acked <= self.next_seq and acked >= self.acked) or self.broken:
            self._violation(acked, released)
        self.released = released
        if acked > self.acked:
            records = self._records
            for _ in range(acked - self.acked):
                records.popleft()
            self.acked = acked
            self.rto = self._min_rto
            self.deadline = now + self.rto if records or self._blocked else None
        limit = released + self.window
        if limit > self.limit:
            self.limit = limit
            if self._blocked:  # the window opened: the probes' backoff ends
                self._blocked = False
                self.rto = self._min_rto
                if not self._records:
                    self.deadline = None
        return self.next_seq < self.limit

    def _violation(self, acked: int, released: int) -> None:
        if self.broken is None:
            self.violations += 1
            self.broken = (f"impossible credit: acked {acked}, released {released} after acked {self.acked}, "
                           f"released {self.released}, with {self.next_seq} fragments sent (a broken receiver, "
                           "or another process wrote its counts)")
        raise StreamProtocolError(self.broken)

    def receive_frame(self, view: ReadableBuffer, now: float) -> bool:
        """Take a CREDIT frame (bad, foreign and stale ones are counted or ignored, and dropped;
        impossible counts raise as in :meth:`on_credit`).  True if fragment ``next_seq`` may be sent."""
        try:
            kind, connection_id, _, _, _, ack, _, credit = decode_fields(view)
        except FrameError:
            self.bad_frames += 1
            return self.next_seq < self.limit
        if connection_id != self.connection_id:
            self.foreign_frames += 1
        elif kind is not _CREDIT:
            self.bad_frames += 1
        else:
            released = ack + credit - self.window
            if ack <= self.acked and released <= self.released and not self.broken:
                return self.next_seq < self.limit  # stale: overtaken by a later frame
            return self.on_credit(ack, released, now)  # StreamProtocolError if impossible
        return self.next_seq < self.limit

    # ---- the timer
    def handle_timer(self, now: float) -> R | Probe | None:
        """If ``deadline`` passed: the record of the oldest unacknowledged fragment, due for repair
        (its sequence number is ``acked``), or :data:`PROBE`; the RTO backs off.  Else None."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        rto = self.rto = min(self.rto * 2, self._max_rto)
        self.deadline = now + rto
        if self._records:
            self.retransmits += 1
            return self._records[0]
        if self._blocked:
            self.probes += 1
            return PROBE
        self.deadline = None
        return None


class StreamReceiver:
    """The receiving end: in-order acceptance, reassembly accounting, releases and credit.

    Attributes read on the I/O layer's per-fragment path: ``expected`` (the next sequence number),
    ``released`` (fragments below it are free again), ``count`` (fragments of the message being
    reassembled; 0 between messages), ``index``, ``total``, ``content`` and ``position`` (where the
    next fragment's payload goes in its message).
    """

    __slots__ = ("connection_id", "window", "max_payload", "expected", "released", "_held",
                 "count", "index", "total", "content", "position",
                 "messages", "fragments", "bytes", "bad_frames", "duplicates", "overruns")

    def __init__(self, connection_id: int, window: int, max_payload: int) -> None:
        _check_window(window)
        check_max_payload(max_payload)
        self.connection_id = connection_id
        self.window = window
        self.max_payload = max_payload
        self.expected = 0
        self.released = 0
        self._held: set[int] = set()  # released out of order (arrays freed early), above `released`
        self.count = self.index = self.total = self.content = self.position = 0
        self.messages = self.fragments = self.bytes = 0
        self.bad_frames = self.duplicates = self.overruns = 0  # bad_frames: counted by the I/O layer too

    @property
    def unreleased(self) -> int:
        """Fragments received and not released (held by the application)."""
        return self.expected - self.released

    def place(self, seq: int) -> int:
        """Where an arriving fragment belongs: :data:`NEXT`, :data:`AHEAD` (inside the window: keep
        it for later), :data:`DUPLICATE` (already taken) or :data:`OVERRUN` (beyond the window)."""
        if seq == self.expected:
            return NEXT
        if seq < self.expected:
            self.duplicates += 1
            return DUPLICATE
        if seq < self.released + self.window:
            return AHEAD
        self.overruns += 1
        return OVERRUN

    def accept(self, head: tuple[int, ...], want: int | None = None, take: bool = True) -> int:
        """Take fragment ``expected``, whose checksummed trailer fields (see :func:`unseal`) are
        ``head``: :data:`DONE` if it completes its message, :data:`MORE` if not, :data:`REFUSED`
        (nothing taken) if it begins a message whose content is not ``want``.  With ``take`` False,
        only say so: nothing changes (an I/O layer that must size a buffer before it copies).

        :class:`FrameError` if the fragment does not fit where it must be (a broken or foreign sender).
        """
        connection_id, seq, total, plen, content, index, count, kind, flags, magic = head
        if (connection_id != self.connection_id or seq != self.expected or kind != _DATA or flags
                or magic != MAGIC or plen > self.max_payload):
            self._broken(seq)
        if not self.count:  # the first fragment of a message
            if count == 1:  # and the last: the common case first
                if index or total != plen or content not in _CONTENTS:
                    self._broken(seq)
            else:
                mp = self.max_payload
                if (index or not 2 <= count <= MAX_FRAGMENTS or plen != mp
                        or not (count - 1) * mp < total <= count * mp or content not in _CONTENTS):
                    self._broken(seq)
            if want is not None and content != want:
                return REFUSED
            if take:
                self.expected = seq + 1
                self.fragments += 1
                self.bytes += plen
                if count == 1:
                    self.messages += 1
                else:
                    self.count, self.total, self.content, self.index, self.position = count, total, content, 1, plen
            return DONE if count == 1 else MORE
        last = index == count - 1
        if (index != self.index or count != self.count or total != self.total or content != self.content
                or (self.position + plen != total if last else plen != self.max_payload)):
            self._broken(seq)
        if take:
            self.expected = seq + 1
            self.fragments += 1
            self.bytes += plen
            if last:
                self.count = 0
                self.messages += 1
            else:
                self.index = index + 1
                self.position += plen
        return DONE if last else MORE

    def accept_run(self, n: int, nbytes: int) -> None:
        """Take ``n`` one-fragment :data:`BYTES` messages, fragments ``expected``, ``expected + 1``,
        ... (``nbytes`` payload bytes in all), that the I/O layer checked as :meth:`accept` checks
        one (connection, sequence number, kind, flags, magic, length, index 0 of 1, content) from
        their checksummed trailers: as many :meth:`accept` calls would count them."""
        if self.count:
            raise ValueError("a message is being reassembled: a run starts between messages")
        self.expected += n
        self.fragments += n
        self.messages += n
        self.bytes += nbytes

    def release_run(self, seq: int, n: int) -> None:
        """The application gave fragments ``seq`` .. ``seq + n - 1`` back: as many :meth:`release` calls."""
        if seq == self.released and not self._held and seq + n <= self.expected:
            self.released = seq + n
            return
        for s in range(seq, seq + n):
            self.release(s)

    def check_end(self, fragments: int, messages: int) -> None:
        """The sender ended after sending ``fragments`` fragments making ``messages`` messages (its
        report): return if this receiver took exactly those, between messages (the stream ends
        cleanly), else raise :class:`~ombm.errors.StreamProtocolError` saying how many are missing."""
        if fragments == self.expected and messages == self.messages and not self.count:
            return
        raise StreamProtocolError(
            f"the sender ended after {messages} messages ({fragments} fragments) but this receiver took "
            f"{self.messages} ({self.expected} fragments"
            + (", one message incomplete" if self.count else "") + f"): {messages - self.messages} "
            f"messages ({fragments - self.expected} fragments) missing; a slot was overwritten before "
            "it was read (forged credit?) or the sender is broken")

    def _broken(self, seq: int) -> None:
        raise FrameError(f"fragment {seq} is not what the stream expects there (a broken or foreign sender)")

    def release(self, seq: int) -> int:
        """The application gave fragment ``seq`` back: the new ``released`` count if it moved, else 0."""
        released = self.released
        if seq != released:
            if not released < seq < self.expected or seq in self._held:
                raise ValueError(f"fragment {seq} is not held")
            self._held.add(seq)
            return 0
        if seq >= self.expected:
            raise ValueError(f"fragment {seq} was not received")
        released, held = seq + 1, self._held
        while released in held:
            held.discard(released)
            released += 1
        self.released = released
        return released

    def credit_frame(self) -> bytes:
        """A CREDIT frame: the cumulative acknowledgement and the credit past it."""
        return encode(_CREDIT, self.connection_id, 0, ack=self.expected,
                      credit=self.released + self.window - self.expected)
