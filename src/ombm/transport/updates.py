"""Updates of one unit across hosts, sans-I/O: cut into datagram entries, packed, reassembled (§3.2.3).

An *update* is the new content of one unit of a replicated segment (``datagram`` draws the entry).
A sender cuts its ranges into entries that fit the path's MTU (:func:`cut`) and packs entries, of
one update or several, into datagrams (:class:`Packer`).  A receiver gathers the parts of an update
that spans several datagrams in a bounded buffer (:class:`Assembler`) and hands the update on only
when every part came: the bridge writes it in one go, so its data becomes visible with its signal
(message-oriented consistency, §3.2).  An update missing a part past ``timeout_s``, or pushed out
because the buffer is full, is dropped and counted (``incomplete``): the bridge, like the paper's
memory layer, never retransmits; reliability stays with RPC and streams above.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ombm.transport.datagram import HEADER_SIZE, Entry, entry_room, pack_entry

__all__ = ["Update", "cut", "Packer", "Assembler"]


@dataclass(slots=True)
class Update:
    """A whole update: ``ranges`` (offset, bytes) in part order, from sender ``sender``."""

    sender: int
    key: int
    base: int
    tag: int
    full: bool
    ranges: list[tuple[int, bytes | memoryview]]


def cut(key: int, ranges: list[tuple[int, bytes]], base: int, tag: int, full: bool, room: int) -> list[bytes]:
    """The entries of one update whose ``ranges`` (offset, bytes; in increasing offsets) each hold at
    most ``room`` bytes (see :func:`~ombm.transport.datagram.entry_room`)."""
    pieces = [(offset + at, data[at:at + room]) for offset, data in ranges for at in range(0, len(data), room)]
    if not 1 <= len(pieces) <= 0xFFFF:
        raise ValueError(f"an update of {len(pieces)} parts")
    return [pack_entry(key, offset, base, tag, part, len(pieces), full, data)
            for part, (offset, data) in enumerate(pieces)]


class Packer:
    """Entries for one destination, packed into datagram bodies of at most ``mtu`` bytes (sealed)."""

    def __init__(self, mtu: int, trailer: int) -> None:
        self.room = mtu - HEADER_SIZE - trailer
        if entry_room(mtu, trailer) < 1:
            raise ValueError(f"an MTU of {mtu} bytes leaves no room for an entry")
        self._entries: list[bytes] = []
        self._size = 0

    def add(self, entry: bytes) -> tuple[bytes, int] | None:
        """Queue ``entry``; if it does not fit, first return the queued ones (body, count) to send."""
        full = None
        if self._entries and self._size + len(entry) > self.room:
            full = self.take()
        self._entries.append(entry)
        self._size += len(entry)
        return full

    def take(self) -> tuple[bytes, int] | None:
        """The queued entries (body, count), or None if there are none."""
        if not self._entries:
            return None
        body, count = b"".join(self._entries), len(self._entries)
        self._entries, self._size = [], 0
        return body, count

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Pending:
    first_s: float
    base: int
    full: bool
    parts: int
    got: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    size: int = 0


class Assembler:
    """Gathers the parts of updates that span several datagrams, within bounds.

    At most ``max_updates`` partial updates and ``max_bytes`` of their data are kept; the oldest goes
    when a new one would pass either bound, and an update whose next part would pass ``max_bytes``
    goes itself.  Counters: ``incomplete`` (dropped, expired or pushed
    out), ``inconsistent`` (a part that disagrees with the others of its update, or parts whose
    ranges overlap or go backwards: the whole update is dropped), ``duplicates`` (a part that came
    twice: ignored).
    """

    def __init__(self, *, max_updates: int = 256, max_bytes: int = 8 << 20, timeout_s: float = 0.5) -> None:
        self.max_updates = max_updates
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._pending: dict[tuple[int, int, int], _Pending] = {}
        self._bytes = 0
        self.incomplete = 0
        self.inconsistent = 0
        self.duplicates = 0

    def add(self, sender: int, entry: Entry, now_s: float) -> Update | None:
        """Take one entry; the update it completes, if any."""
        if entry.parts == 1:
            return Update(sender, entry.key, entry.base, entry.tag, entry.full, [(entry.offset, entry.data)])
        ident = (sender, entry.key, entry.tag)
        pending = self._pending.get(ident)
        if pending is None:
            self._make_room(len(entry.data))
            pending = self._pending[ident] = _Pending(now_s, entry.base, entry.full, entry.parts)
        elif (pending.base, pending.full, pending.parts) != (entry.base, entry.full, entry.parts):
            self._drop(ident)
            self.inconsistent += 1
            return None
        if entry.part in pending.got:
            self.duplicates += 1
            return None
        if pending.got and self._bytes + len(entry.data) > self.max_bytes:  # the bound holds: this update goes
            self._drop(ident)
            self.incomplete += 1
            return None
        pending.got[entry.part] = (entry.offset, bytes(entry.data))
        pending.size += len(entry.data)
        self._bytes += len(entry.data)
        if len(pending.got) < pending.parts:
            return None
        self._drop(ident)
        ranges = [pending.got[i] for i in range(pending.parts)]
        if any(a[0] + len(a[1]) > b[0] for a, b in zip(ranges, ranges[1:])):
            self.inconsistent += 1
            return None
        return Update(sender, entry.key, pending.base, entry.tag, pending.full, list(ranges))

    def _make_room(self, nbytes: int) -> None:
        while self._pending and (len(self._pending) >= self.max_updates or self._bytes + nbytes > self.max_bytes):
            self._drop(next(iter(self._pending)))
            self.incomplete += 1

    def _drop(self, ident: tuple[int, int, int]) -> None:
        pending = self._pending.pop(ident)
        self._bytes -= pending.size

    def expire(self, now_s: float) -> int:
        """Drop the partial updates older than ``timeout_s``; how many."""
        old = [ident for ident, p in self._pending.items() if now_s - p.first_s > self.timeout_s]
        for ident in old:
            self._drop(ident)
        self.incomplete += len(old)
        return len(old)

    def forget(self, key: int) -> None:
        """Drop the partial updates of segment ``key`` (no longer replicated); not counted."""
        for ident in [i for i in self._pending if i[1] == key]:
            self._drop(ident)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def next_expiry_s(self) -> float | None:
        """When the oldest partial update expires (on the ``now_s`` clock), or None."""
        if not self._pending:
            return None
        return min(p.first_s for p in self._pending.values()) + self.timeout_s

