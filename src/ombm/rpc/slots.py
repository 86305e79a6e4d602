"""RPC channel segments: one direction of a connection, cut into slots (paper §4).

A channel is a message-consistency segment whose signalling unit is one
slot. A frame (payload + trailer, see ``wire``) is written so that it *ends*
at its slot's last byte: that write completes the unit, so signal-on-write
raises exactly one signal, carrying the slot's start address, with no extra
call by the sender. The receiver finds the trailer at the slot's end.

Slots are used round-robin. Message consistency allows a slot to be
overwritten before it was read: the checksum folded into the unmarshal copy
detects it and the reliable transport retransmits.
"""

from __future__ import annotations

import random

from ombm.core import namespace
from ombm.core import segment as _segment
from ombm.core.directory import reclaim_segment_if_dead
from ombm.errors import ClosedError, SegmentExistsError, SegmentFormatError, SegmentNotFoundError
from ombm.transport.wire import TRAILER_SIZE

DEFAULT_SLOT_SIZE = 131072
DEFAULT_SLOTS = 32
WELL_KNOWN_SLOTS = 32
WELL_KNOWN_SLOT_SIZE = 1024


def well_known_name(service: str) -> str:
    """The segment name of ``service``'s well-known channel (clients write CONNECTs into it)."""
    return f"rpc-{namespace.validate_name(service)}"


class SlotChannel:
    """A bound channel segment; ``writable`` on the sending side, read-only on the receiving side.

    The geometry (slot size, slots) comes from the segment's header, read and checked once when
    the segment was opened; another process may have made the segment (a client makes both
    channels of its connection), so nothing here is sized by it: a slot's view is cut when a
    signal names it, and an offset outside every whole slot (a forged signal) gets an empty view,
    which fails the frame check like any damaged frame.
    """

    def __init__(self, segment: _segment.Segment, writable: bool) -> None:
        self.segment = segment
        self.slot_size = segment.unit
        self.slots = segment.size // self.slot_size
        if self.slots < 1 or self.slot_size <= TRAILER_SIZE:
            segment.release()
            raise SegmentFormatError(f"segment {segment.name!r} is not an RPC channel (unit {segment.unit})")
        self.region = segment.bind(writable)
        self.max_payload = self.slot_size - TRAILER_SIZE
        # a message may use at most half the ring, so it never overwrites its own fragments
        self.max_message = max(1, self.slots // 2) * self.max_payload
        self._next = 0
        # the native round-robin send (a read-only binding has none)
        writer = self.region.native_writer
        self.writer = writer if writable and writer is not None and segment.size % self.slot_size == 0 else None
        self._buf: memoryview | None = self.region.buffer
        self._end = self.slots * self.slot_size  # the end of the last whole slot

    @classmethod
    def create(cls, name: str, *, slots: int = DEFAULT_SLOTS, slot_size: int = DEFAULT_SLOT_SIZE,
               take_over_dead_creator: bool = False) -> SlotChannel:
        """Create the channel ``name``. With ``take_over_dead_creator`` (a service's well-known
        channel) a name whose creator died is taken over even while others still hold it (clients
        retrying ``connect()``): only its creator ever served it."""
        try:
            seg = _segment.create_segment(slots * slot_size, name=name, unit=slot_size)
        except SegmentExistsError:
            path = namespace.segment_path(namespace.validate_name(name))
            if not take_over_dead_creator or not reclaim_segment_if_dead(path, creator_death_frees=True):
                raise
            seg = _segment.create_segment(slots * slot_size, name=name, unit=slot_size)
        try:
            return cls(seg, writable=True)
        except BaseException:
            seg.release()
            raise

    @classmethod
    def open(cls, name: str, *, writable: bool, slot_size: int | None = None) -> SlotChannel:
        """Open the channel ``name``: ``SegmentNotFoundError`` if absent, ``SegmentFormatError`` if it
        is not an RPC channel (or its slots are not ``slot_size`` bytes, when given)."""
        seg = _segment.open_segment(name)  # SegmentNotFoundError
        if slot_size is not None and seg.unit != slot_size:
            seg.release()
            raise SegmentFormatError(f"segment {name!r} has {seg.unit}-byte slots, not {slot_size}")
        return cls(seg, writable)

    @property
    def name(self) -> str:
        return self.segment.name

    @property
    def broken(self) -> bool:
        """Another process shrank this channel's file under us (see :attr:`ombm.Region.broken`)."""
        return self.segment.broken

    def send(self, frame: bytes, slot: int | None = None) -> None:
        """Write ``frame`` to end at the end of the next (or given) slot: one signal."""
        if slot is None:
            if self.writer is not None:
                self.writer.send(frame)  # the same, natively, with its own round-robin position
                return
            slot = self._next
            self._next = slot + 1 if slot + 1 < self.slots else 0
        end = (slot + 1) * self.slot_size
        self.region.write(end - len(frame), frame)

    def send_anywhere(self, frame: bytes) -> None:
        """For multi-writer channels (the well-known channel): a random slot."""
        self.send(frame, random.randrange(self.slots))

    def slot_view(self, address: int) -> memoryview:
        """The slot containing ``address`` (a signal's translated address): the frame ends at its end."""
        return self.slot_view_at(address - self.region.address)

    def slot_view_at(self, offset: int) -> memoryview:
        """The slot containing segment offset ``offset`` (a signal, which any process that can signal
        us can forge): an empty view if no whole slot holds it (the frame check refuses it)."""
        buf = self._buf
        if buf is None:
            raise ClosedError(f"RPC channel {self.name!r} is closed")
        if not 0 <= offset < self._end:
            return _NO_SLOT
        start = offset - offset % self.slot_size
        return buf[start:start + self.slot_size]

    def close(self) -> None:
        self.writer = None  # a send after close reaches Region.write: ClosedError
        self._buf = None
        self.region.unbind()
        self.segment.release()


_NO_SLOT = memoryview(b"")


__all__ = ["SlotChannel", "DEFAULT_SLOTS", "DEFAULT_SLOT_SIZE", "WELL_KNOWN_SLOTS", "WELL_KNOWN_SLOT_SIZE",
           "well_known_name"]
