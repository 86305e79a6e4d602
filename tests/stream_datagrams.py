"""A minimal datagram I/O layer for the stream protocol, for tests (the shape issue 12's will take).

:class:`ombm.Stream` drives :mod:`ombm.transport.stream_protocol` over shared memory; these two
classes drive the very same protocol objects with frames alone, as datagrams would: DATA frames
(payload + trailer, sealed by :func:`~ombm.transport.stream_protocol.seal`) one way, CREDIT and
PROBE frames (plain wire frames) the other.  Frames may be lost, duplicated, reordered, delayed and
corrupted on the way; the protocol must still deliver every message once, in order, intact.  The
I/O here is only what a datagram layer must own: frame bytes, a slot per place in the window
(:meth:`StreamReceiver.place` says where a frame belongs), copying fragments into messages.
"""

from __future__ import annotations

from collections import deque

from ombm._native import checksum
from ombm.transport import wire
from ombm.transport.fragments import split
from ombm.transport.stream_protocol import AHEAD, BYTES, DONE, DUPLICATE, NEXT, PROBE, StreamReceiver
from ombm.transport.stream_protocol import StreamSender, seal, unseal

TRAILER = wire.TRAILER_SIZE


def data_frame(connection_id, seq, index, count, total, content, payload) -> bytes:
    """A DATA frame as a datagram carries it."""
    payload = bytes(payload)
    head = wire.TRAILER_HEAD.pack(connection_id, seq, total, len(payload), content, index, count,
                                  int(wire.Kind.DATA), 0, wire.MAGIC)
    return payload + head + wire.TRAILER_SUM.pack(seal(head, checksum(payload)))


class DatagramSender:
    """Messages in, DATA frames out as credit allows; repairs and probes on the protocol's timer."""

    def __init__(self, tx: StreamSender, max_payload: int) -> None:
        self.tx, self.max_payload = tx, max_payload
        self.queue: deque[bytes] = deque()  # messages not begun yet
        self.pieces: list = []              # the message being sent

    def send(self, message: bytes) -> None:
        self.queue.append(message)

    @property
    def idle(self) -> bool:
        """Everything queued was sent and acknowledged."""
        return not self.queue and self.tx.finished()

    def frames_to_send(self, now: float) -> list[bytes]:
        tx, out = self.tx, []
        while tx.count or self.queue:
            if tx.next_seq >= tx.limit:
                tx.blocked(now)
                break
            if not tx.count:
                message = self.queue.popleft()
                self.pieces = split(message, self.max_payload)
                tx.begin(len(self.pieces), len(message), BYTES)
            frame = data_frame(tx.connection_id, tx.next_seq, tx.index, tx.count, tx.total, tx.content,
                               self.pieces[tx.index])
            out.append(frame)
            tx.sent(frame, now)
        return out

    def receive_frame(self, view, now: float) -> None:
        self.tx.receive_frame(view, now)

    def handle_timer(self, now: float) -> list[bytes]:
        due = self.tx.handle_timer(now)
        if due is None:
            return []
        if due is PROBE:
            return [wire.encode(wire.Kind.PROBE, self.tx.connection_id, 0)]
        return [due]  # the frame itself: a datagram layer sends it again


class DatagramReceiver:
    """DATA frames in, in any order and state, kept in the window's slots; whole messages out, in
    order, when the application asks (:meth:`recv`); credit frames back.

    Like :class:`ombm.Stream`'s reader, a fragment is taken (acknowledged) when the application
    reads it and released once copied out, except a message the application holds (``hold``: a
    one-fragment message kept in place, as a zero-copy array is), released by :meth:`release`
    in any order.  A slow application therefore closes the window.
    """

    def __init__(self, rx: StreamReceiver) -> None:
        self.rx = rx
        self.slots: list = [None] * rx.window  # (seq, head, payload) kept in place seq % window
        self.parts: list[bytes] = []
        self.held: list[int] = []  # fragments of messages the application holds
        self.credit_due = False
        self.foreign = 0

    def receive_frame(self, view, now: float) -> None:
        """Take one datagram: keep a DATA frame in its slot, answer a probe or a duplicate."""
        frame = bytes(view)
        rx = self.rx
        if len(frame) >= TRAILER and wire.peek_kind(frame) == wire.Kind.PROBE:
            try:
                wire.decode(frame)
            except wire.FrameError:
                rx.bad_frames += 1
                return
            self.credit_due = True  # the sender asks for the window
            return
        head = None
        if len(frame) >= TRAILER:
            payload = frame[:-TRAILER]
            head = unseal(frame[-TRAILER:], checksum(payload))
        if head is None or head[3] != len(payload):
            rx.bad_frames += 1
            return
        if head[0] != rx.connection_id:
            self.foreign += 1
            return
        seq = head[1]
        where = rx.place(seq)
        if where == DUPLICATE:
            self.credit_due = True  # our acknowledgement was lost: say it again
        elif where in (NEXT, AHEAD):
            self.slots[seq % rx.window] = (seq, head, payload)

    def recv(self, hold: bool = False) -> bytes | None:
        """The next message if all its fragments are here (taking those that are), else None."""
        rx = self.rx
        while True:
            kept = self.slots[rx.expected % rx.window]
            if kept is None or kept[0] != rx.expected:
                return None
            seq, head, payload = kept
            verdict = rx.accept(head)
            self.credit_due = True
            if hold and verdict == DONE and not self.parts:
                self.held.append(seq)  # kept in place: released later, in any order
                return payload
            self.parts.append(payload)
            if rx.release(seq):
                self.credit_due = True
            if verdict == DONE:
                message, self.parts = b"".join(self.parts), []
                return message

    def release(self, i: int = 0) -> None:
        """The application is done with held message ``i`` (any of them)."""
        self.rx.release(self.held.pop(i % len(self.held)))
        self.credit_due = True

    def frames_to_send(self, now: float) -> list[bytes]:
        if not self.credit_due:
            return []
        self.credit_due = False
        return [self.rx.credit_frame()]
