"""A segment's directory: the software cache directory of paper §3.1.2.

In ParaDiGM each cache line's directory entry holds a mode and P_i bits naming
the processors to signal. Here each segment header holds up to
``_layout.DIR_CAPACITY`` entries of two kinds:

* ``KIND_RECEIVER``: receiver FIFO ``token`` watches ``[offset, offset+size)``
  (the P_i bits of every line in that range);
* ``KIND_HOLDER``: a process holds the segment (created or opened it), so the
  segment is only reclaimed when no live holder remains.

Entries are added and removed lock-free by any process (CAS on the entry's
state, a generation number against torn reads, a directory version bumped
after each change so senders can cache their view). Every entry records its
owner's pid and start time; entries of dead owners are reclaimed lazily by
senders and by ``ombm gc``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
from typing import NamedTuple

from ombm import _layout as L
from ombm import _native
from ombm.core import namespace
from ombm.core.mapping import map_file
from ombm.errors import ClosedError
from ombm.errors import DirectoryFullError as DirectoryFullError  # raised here; importable from here as before


class Entry(NamedTuple):
    position: int  # in the directory, 0 .. DIR_CAPACITY - 1 (not "index": that is tuple.index)
    gen: int
    pid: int
    kind: int
    start: int
    token: int
    offset: int
    size: int


class Directory:
    """Operations on the directory in a mapped segment header."""

    def __init__(self, header: mmap.mmap) -> None:
        self._mm: mmap.mmap | None = header
        self._base = _native.addr_of(header)
        self.version_address = self._base + L.SEG_DIR_VERSION

    def _header(self) -> mmap.mmap:
        """The mapped header; :class:`~ombm.ClosedError` once its segment was released (its
        addresses are unmapped then: a native load there would crash the process)."""
        mm = self._mm
        if mm is None:
            raise ClosedError("the segment of this directory is released")
        return mm

    def close(self) -> None:
        """The segment is being released: every later use raises ClosedError."""
        self._mm = None

    def version(self) -> int:
        self._header()
        return _native.load64(self.version_address)

    def _bump(self) -> None:
        _native.fetch_add64(self.version_address, 1)

    def claim(self, kind: int, token: int, offset: int, size: int) -> Entry:
        """Publish a new entry owned by this process; reclaims dead entries if full."""
        mm = self._header()
        for attempt in range(2):
            for index in range(L.DIR_CAPACITY):
                at = self._base + L.entry_offset(index)
                if _native.load32(at) != L.ENTRY_FREE or not _native.cas32(at, L.ENTRY_FREE, L.ENTRY_CLAIMED):
                    continue
                gen = (_native.load32(at + L.ENTRY_GEN) + 1) & 0xFFFFFFFF
                _native.store32(at + L.ENTRY_GEN, gen)
                pid, start = namespace.me()
                L.DIR_ENTRY.pack_into(
                    mm, L.entry_offset(index), L.ENTRY_CLAIMED, gen, pid, kind, start, token, offset, size
                )
                _native.store32(at, L.ENTRY_LIVE)
                self._bump()
                return Entry(index, gen, pid, kind, start, token, offset, size)
            if attempt == 0 and not self.reclaim_dead():
                break
        raise DirectoryFullError(f"segment directory full ({L.DIR_CAPACITY} live entries)")

    def free(self, entry: Entry) -> bool:
        """Remove ``entry`` if it is still the same publication; False if already gone."""
        self._header()
        at = self._base + L.entry_offset(entry.position)
        if _native.load32(at + L.ENTRY_GEN) != entry.gen or not _native.cas32(at, L.ENTRY_LIVE, L.ENTRY_CLAIMED):
            return False
        if _native.load32(at + L.ENTRY_GEN) != entry.gen:  # reused between our two reads: undo
            _native.store32(at, L.ENTRY_LIVE)
            return False
        _native.store32(at, L.ENTRY_FREE)
        self._bump()
        return True

    def entries(self) -> list[Entry]:
        """A consistent snapshot of the live entries."""
        mm = self._header()
        out = []
        for index in range(L.DIR_CAPACITY):
            off = L.entry_offset(index)
            state, gen = L.DIR_ENTRY.unpack_from(mm, off)[:2]
            if state != L.ENTRY_LIVE:
                continue
            fields = L.DIR_ENTRY.unpack_from(mm, off)
            if fields[0] == L.ENTRY_LIVE and fields[1] == gen and L.DIR_ENTRY.unpack_from(mm, off)[:2] == (
                L.ENTRY_LIVE,
                gen,
            ):
                out.append(Entry(index, *fields[1:]))
        return out

    def reclaim_dead(self) -> int:
        """Free the entries of dead owners (live or half-claimed); returns how many."""
        mm = self._header()
        freed = 0
        for index in range(L.DIR_CAPACITY):
            fields = L.DIR_ENTRY.unpack_from(mm, L.entry_offset(index))
            state, gen, pid, _kind, start = fields[:5]
            if state == L.ENTRY_FREE or namespace.is_alive(pid, start):
                continue
            at = self._base + L.entry_offset(index)
            if _native.load32(at + L.ENTRY_GEN) == gen and _native.cas32(at, state, L.ENTRY_FREE):
                freed += 1
        if freed:
            self._bump()
        return freed


# ---- a segment file's header, for reclamation by name (create_segment) and by `ombm gc`

# Anyone of the user can put anything under a segment's name (a named pipe, a folder, a socket):
# what is not a regular file is never read, and it is opened without blocking (an open of a named
# pipe for reading waits for a writer).
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str, flags: int = _OPEN_FLAGS) -> int | None:
    """A descriptor of the regular file at ``path`` (never following a symbolic link, never
    blocking), or None if there is none: absent, not a regular file, or not to be opened."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def map_header(path: str) -> tuple[int, mmap.mmap] | None:
    """(descriptor, mapping of the header) of the segment file at ``path``, or None if it is not a
    regular file at least a header long."""
    fd = open_regular(path)
    if fd is None:
        return None
    if os.fstat(fd).st_size < L.HEADER_SIZE:
        os.close(fd)
        return None
    return fd, map_file(fd, L.HEADER_SIZE, writable=True)  # guarded: another process may shrink it


def is_current_layout(hdr: mmap.mmap) -> bool:
    """A segment of exactly this layout (another version's directory is not ours to edit)."""
    magic, version = L.SEG_HEADER.unpack_from(hdr)[:2]
    return bool(magic == L.SEG_MAGIC and version == L.SEG_VERSION)


def reclaim_segment_if_dead(path: str, *, creator_death_frees: bool = False) -> bool:
    """Unlink the segment at ``path`` if its name is free to take again; True if removed.

    A creator holds an exclusive ``flock`` on the file from just after creating it until its header
    is published and its hold recorded, so a file whose lock is held is being created (or looked at
    by another reclaimer) and is never touched. With the lock taken here, the name is free when:

    * the file is **half-made**: shorter than a header, or its magic never published (all zero),
      so its creator died while creating it (a live one would hold the lock);
    * **no live process holds it** any more;
    * with ``creator_death_frees``, its **creator is dead**, even if openers still hold it (they keep
      their mappings): for names only their creator serves, such as an RPC service's well-known
      channel, which clients retrying ``connect()`` hold all the time.

    Files of another layout version are never touched.
    """
    fd = open_regular(path)
    if fd is None:
        return False  # nothing of ours (a named pipe, a folder...): not ours to judge
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being created right now (or reclaimed by someone else)
        st = os.fstat(fd)
        if st.st_size < L.HEADER_SIZE:
            head = os.pread(fd, 8, 0)
            if head.strip(b"\0"):
                return False  # not a half-made ombm segment: not ours to judge
        else:
            hdr = map_file(fd, L.HEADER_SIZE, writable=True)
            try:
                magic = L.SEG_HEADER.unpack_from(hdr)[0]
                if magic != b"\0" * 8:  # published: judge its creator and holders
                    if not is_current_layout(hdr):
                        return False
                    creator_pid, creator_start = L.SEG_HEADER.unpack_from(hdr)[7], L.SEG_HEADER.unpack_from(hdr)[9]
                    directory = Directory(hdr)
                    directory.reclaim_dead()
                    creator_dead = creator_death_frees and not namespace.is_alive(creator_pid, creator_start)
                    if not creator_dead and any(e.kind == L.KIND_HOLDER for e in directory.entries()):
                        return False
            finally:
                hdr.close()
        st_path = os.stat(path)
        if (st_path.st_dev, st_path.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)  # releases the lock
