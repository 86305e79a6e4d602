"""One replicated segment at one bridge: what the peers hold, what changed, what to send (§3.2.3).

The bridge is a receiver on the whole of every segment it replicates. A signal for a unit means a
write completed it on this host: the unit's new content goes to every peer that binds the segment.
An update that arrives is written into the local binding with :meth:`~ombm.Region.write`, which
raises this host's signals (signal-on-write, §3.3), and goes on to the other peers (the exporter
relays between its importers: a star).

**Only what changed.** A unit can be large (an RPC slot is 128 KiB, the frame at its end), so a
*delta* carries only the bytes from the first one that differs from the *shadow* (the unit's content
as this bridge last sent or wrote it) to the unit's end, whose last byte the receiver's write must
complete. A delta applies only to the content it was computed from: every content of a unit has a
*tag* (32 bits, fresh per update), a delta names its base tag, and a receiver whose unit has another
tag drops the delta and asks for a *full* update (RESYNC). A full update carries the unit from its
first non-zero byte; the receiver zeroes the rest. Per peer, each unit is *in sync* (its tag is ours:
deltas) or not (the next update is full); a new peer starts with no unit in sync. The binding is
compared with the shadow and copied into it from the first byte that differs in one native pass
(``_native.unit_delta``), and updates are sent from the shadow; one that comes in is made in the
shadow and written from there: no copy of a whole unit per update, on either side.

**Echo suppression: a count of own writes per unit.** The bridge's own write of an update raises
its own signal too, which must not go back out. A core write that skips one receiver would need a
change to the native write path (and its route cache) for a single user; content comparison cannot
tell an echo from a process rewriting the same bytes (an RPC retransmission, which must go out). So
the serving thread counts, per unit, the writes it made whose signals it has not yet taken, and
takes one signal per count without sending. One thread does both the writes and the takes, so the
count is exact while the bridge's FIFO drops nothing; if it drops (it counts drops), the counts are
cleared: at worst one echo goes out as a one-byte delta (a duplicate signal, which the layers above
tolerate), never a local write lost.

**Native.** While a replica has one link, the bridge's native data path (``_native.BridgeEngine``)
does what :meth:`Replica.local_update` and :meth:`Replica.apply` do (gathering the parts of long updates), on
this object's own buffers (shadow, tags, own-write counts, the link's in-sync map): :meth:`attach`
and every change of the links tell it (``_sync``), and :meth:`close` takes the segment back from it
before the binding goes.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Callable

from ombm import _native
from ombm.core import namespace
from ombm.core.segment import Region, Segment
from ombm.core.signals import Receiver, SignalHandle
from ombm.transport.updates import Update, cut

__all__ = ["Link", "Replica"]

Address = tuple[str, int]


def _first_nonzero(data: bytes) -> int:
    return len(data) - len(data.lstrip(b"\0"))


@dataclass
class Link:
    """One peer that binds the segment: which units hold, there, the content our tag names."""

    address: Address
    in_sync: bytearray
    exporter: bool = False  # the peer exports the segment (we imported it from there)


@dataclass
class Replica:
    """A segment this bridge replicates: its binding, shadow, tags, own-write counts and links."""

    name: str
    segment: Segment
    key: int
    exported: bool  # a local segment we export (else a replica we made of a remote one)
    region: Region = field(init=False)
    unit: int = field(init=False)
    units: int = field(init=False)
    shadow: bytearray = field(init=False)
    tags: array[int] = field(init=False)
    own: bytearray = field(init=False)
    links: dict[Address, Link] = field(default_factory=dict)
    dirty: dict[int, None] = field(default_factory=dict)
    handle: SignalHandle | None = None
    engine: _native.BridgeEngine | None = None  # the bridge's native data path, if it has one
    used: bool = False   # a local process other than the bridge has held or watched it
    asked_s: float = 0.0  # when it was last made or asked for (the grace before a first user)

    def __post_init__(self) -> None:
        self.region = self.segment.bind(writable=True)
        self.unit = self.segment.unit
        self.units = -(-self.segment.size // self.unit)
        self.shadow = bytearray(self.segment.size)
        self.tags = array("I", bytes(4 * self.units))
        self.own = bytearray(self.units)

    def watch(self, receiver: Receiver) -> None:
        """Take every signal of the segment on ``receiver`` (once)."""
        if self.handle is None:
            self.handle = receiver.add_handler(self.region.address, self.region.size, self.on_signal)

    def on_signal(self, address: int) -> None:
        """A unit was completed on this host: by us (an echo, taken) or by a local writer (dirty)."""
        u = (address - self.region.address) // self.unit
        if self.own[u]:
            self.own[u] -= 1
        else:
            self.dirty[u] = None

    def has_users(self, bridge_pid: int) -> bool:
        """Whether a live local process other than the bridge (``bridge_pid``) holds or watches the
        segment: the bridge stands for the remote processes, these are the local ones it serves."""
        return any(e.pid != bridge_pid and namespace.is_alive(e.pid, e.start)
                   for e in self.segment.directory.entries())

    def send_image(self) -> None:
        """A new importer gets what the segment holds now, not only later writes: every unit that is not
        all zeros is marked dirty (sent whole to the links not in sync with it, a one-byte delta to the
        others: a duplicate signal there, which the layers above tolerate)."""
        buf, zero = self.region.buffer, bytes(self.unit)
        for u in range(self.units):
            lo, hi = self.bounds(u)
            if buf[lo:hi] != zero[:hi - lo]:
                self.dirty[u] = None

    def forget_own_writes(self) -> None:
        """Our FIFO dropped signals: the counts may wait for echoes that never come."""
        self.own[:] = bytes(self.units)

    def link(self, address: Address, *, exporter: bool = False) -> Link:
        """The link to ``address``, new (no unit in sync) or reset if it existed."""
        link = self.links[address] = Link(address, bytearray(self.units), exporter)
        self._sync()
        return link

    def unlink(self, address: Address) -> Link | None:
        """Stop replicating with ``address``: its link, or None if there was none."""
        link = self.links.pop(address, None)
        self._sync()
        return link

    def attach(self, engine: _native.BridgeEngine | None) -> None:
        """Have the bridge's native data path take this segment's updates while it has one link."""
        self.engine = engine
        self._sync()

    def _sync(self) -> None:
        """Tell the native path what it may take: the segment with its one link (the buffers it
        shares with this object: shadow, tags, own-write counts, the link's in-sync map), or nothing
        (no link, or several: relaying between importers stays here)."""
        if self.engine is None:
            return
        if len(self.links) != 1:
            self.engine.remove(self.key)
            return
        link = next(iter(self.links.values()))
        self.engine.add(self.key, self.segment.id, self.region.address, self.segment.size, self.unit, self.shadow,
                        self.tags, self.own, self.region.write, link.address, link.in_sync)

    def bounds(self, u: int) -> tuple[int, int]:
        lo = u * self.unit
        return lo, min(lo + self.unit, self.segment.size)

    # -- sending
    def local_update(self, u: int, tag: int, room: int) -> list[tuple[Address, list[bytes]]]:
        """The entries that carry unit ``u``'s new content (as the binding holds it now) to each peer."""
        lo, hi = self.bounds(u)
        # the binding read once, from its first byte that differs from the shadow, into the shadow:
        # what is sent is the shadow (a local writer may write on meanwhile: its signal follows)
        changed = _native.unit_delta(self.region.buffer, self.shadow, lo, hi)
        return self._fan_out(u, tag, changed, None, room)

    def _fan_out(self, u: int, tag: int, changed: int | None, exclude: Address | None,
                 room: int) -> list[tuple[Address, list[bytes]]]:
        """Send the unit's new content (the shadow now, tagged ``tag``; it differs from the content
        the links in sync hold from byte ``changed`` of the unit on, or anywhere if None) to every link
        but ``exclude``: a delta where the unit is in sync, whole where not; then ``tag`` is the unit's."""
        lo, hi = self.bounds(u)
        last = hi - lo - 1  # the last byte goes in any case: its write raises the signal there
        base = self.tags[u]
        as_delta: list[bytes] | None = None
        as_full: list[bytes] | None = None
        out = []
        for link in self.links.values():
            if link.address == exclude:
                continue
            if link.in_sync[u] and base and changed is not None:
                if as_delta is None:
                    at = lo + min(changed, last)
                    as_delta = cut(self.key, [(at, bytes(self.shadow[at:hi]))], base, tag, False, room)
                out.append((link.address, as_delta))
            else:
                if as_full is None:
                    image = bytes(self.shadow[lo:hi])
                    z = min(_first_nonzero(image), last)
                    as_full = cut(self.key, [(lo + z, image[z:])], 0, tag, True, room)
                link.in_sync[u] = 1
                out.append((link.address, as_full))
        self.tags[u] = tag
        return out

    # -- receiving
    def unit_of(self, update: Update) -> int:
        """The unit an update rewrites; -1 if its ranges are not inside one unit ending at its last byte."""
        first, last = update.ranges[0], update.ranges[-1]
        if first[0] >= self.segment.size:
            return -1
        u = first[0] // self.unit
        lo, hi = self.bounds(u)
        return u if lo <= first[0] and last[0] + len(last[1]) == hi else -1

    def apply(self, update: Update, sender: Address, room: int,
              resync: Callable[[int], None]) -> tuple[str, list[tuple[Address, list[bytes]]]]:
        """Write a whole update from ``sender``: ("applied", the entries relaying it to the other links),
        or why not ("stale": another base, RESYNC asked; "duplicate"; "malformed").

        The update is made in the shadow (its ranges go forward inside the unit: ``unit_of`` and the
        assembler checked), and written from there from its first byte: a delta's bytes before it are
        the content its base names, which the shadow holds."""
        nothing: list[tuple[Address, list[bytes]]] = []
        link = self.links.get(sender)
        u = self.unit_of(update)
        if link is None or u < 0:
            return "malformed", nothing
        if update.tag == self.tags[u] and link.in_sync[u]:
            return "duplicate", nothing
        if not update.full and update.base != self.tags[u]:
            link.in_sync[u] = 0
            resync(u)
            return "stale", nothing
        lo, hi = self.bounds(u)
        shadow = self.shadow
        at = lo  # a full update: the bytes outside its ranges are zero (only those are zeroed: a 1 MiB
        for offset, data in update.ranges:  # stream message is one range, from its first byte)
            if update.full and offset > at:
                shadow[at:offset] = bytes(offset - at)
            shadow[offset:offset + len(data)] = data
            at = offset + len(data)
        start = lo if update.full else update.ranges[0][0]
        with memoryview(shadow) as view:
            self.region.write(start, view[start:hi])  # its last byte raises the signals here
        if self.own[u] < 255:  # its signal is taken by this thread, later: counted once the write is made
            self.own[u] += 1
        link.in_sync[u] = 1
        if len(self.links) == 1:  # no other link to relay to (an importer; an exporter with one importer)
            self.tags[u] = update.tag
            return "applied", nothing
        return "applied", self._fan_out(u, update.tag, None if update.full else start - lo, sender, room)

    def close(self) -> None:
        """Stop watching, unbind, release (the creator of an imported replica removes its name)."""
        if self.engine is not None:  # before the binding goes: the native path holds its address
            self.engine.remove(self.key)
            self.engine = None
        if self.handle is not None:
            self.handle.disable()
            self.handle = None
        self.region.unbind()
        self.segment.release()
