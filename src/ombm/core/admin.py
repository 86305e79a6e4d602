"""Looking at and reclaiming what lives in the per-user folder (``ombm ls``, ``ombm gc``).

Everything is read as hostile input: a foreign or half-made file is reported,
never trusted. Reclamation (DESIGN.md §3) removes

* signal FIFOs whose owner (pid + start time) is dead,
* sockets (kernel path, doorbells) that no process holds any more,
* directory entries of dead holders and receivers in every segment,
* segments whose creator died (its release would have removed the name) or with no live holder
  left, and half-made segments whose creator died before publishing the header (a creator holds
  an exclusive ``flock`` on the file while it builds it, so one being built is never touched).
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import stat
import time
from dataclasses import dataclass

from ombm import _layout as L
from ombm.core import namespace
from ombm.core.directory import Directory, is_current_layout, map_header, open_regular, reclaim_segment_if_dead


@dataclass(frozen=True)
class ReceiverInfo:
    token: int
    pid: int
    alive: bool
    offset: int
    size: int
    depth: int
    drops: int


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    size: int
    mode: str
    unit: int
    signal_on_write: bool
    holders: int  # live processes that created or opened it
    receivers: tuple[ReceiverInfo, ...]
    error: str = ""


def _fifo_state(token: int) -> tuple[int, int, int, int] | None:
    """(pid, start, depth, drops) of a FIFO file, or None if unreadable."""
    fd = open_regular(namespace.fifo_path(token), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if fd is None:
        return None  # gone, or not a FIFO of ours (a named pipe would block a plain open)
    try:
        data = os.pread(fd, L.FIFO_CELLS, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) < L.FIFO_CELLS or data[:8] != L.FIFO_MAGIC:
        return None
    _m, _v, _cap, pid, _flags, start, _tok, drops = L.FIFO_HEADER.unpack_from(data)
    tail = int.from_bytes(data[L.FIFO_TAIL : L.FIFO_TAIL + 8], "little")
    head = int.from_bytes(data[L.FIFO_HEAD : L.FIFO_HEAD + 8], "little")
    return pid, start, max(tail - head, 0), drops


def describe(name: str) -> SegmentInfo:
    path = namespace.segment_path(name)
    mapped = map_header(path)
    if mapped is None:
        return SegmentInfo(name, 0, "?", 0, False, 0, (), error="unreadable or truncated")
    fd, hdr = mapped
    try:
        magic, version, mode, size, unit, flags, *_ = L.SEG_HEADER.unpack_from(hdr)
        if magic != L.SEG_MAGIC or version != L.SEG_VERSION:
            return SegmentInfo(name, 0, "?", 0, False, 0, (), error="not an ombm segment of this version")
        entries = Directory(hdr).entries()
        holders = sum(1 for e in entries if e.kind == L.KIND_HOLDER and namespace.is_alive(e.pid, e.start))
        receivers = []
        for e in entries:
            if e.kind != L.KIND_RECEIVER:
                continue
            state = _fifo_state(e.token)
            depth, drops = (state[2], state[3]) if state else (0, 0)
            alive = namespace.is_alive(e.pid, e.start)
            receivers.append(ReceiverInfo(e.token, e.pid, alive, e.offset, e.size, depth, drops))
        mode_name = {1: "message", 2: "conventional"}.get(mode, "?")
        return SegmentInfo(name, size, mode_name, unit, bool(flags & L.FLAG_SIGNAL_ON_WRITE), holders, tuple(receivers))
    finally:
        hdr.close()
        os.close(fd)


def list_segments() -> list[SegmentInfo]:
    names = sorted(f[4:] for f in os.listdir(namespace.folder()) if f.startswith("seg-"))
    return [describe(n) for n in names]


def _stale(path: str, age_s: float = 10.0) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > age_s
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class GcReport:
    fifos_removed: int
    entries_freed: int
    segments_removed: int
    sockets_removed: int = 0


def gc() -> GcReport:
    """Reclaim everything dead processes left behind in this user's folder."""
    folder = namespace.folder()
    fifos = entries = segments = 0
    for f in os.listdir(folder):
        if f.startswith("fifo-"):
            try:
                token = int(f[5:], 16)
            except ValueError:
                continue
            state = _fifo_state(token)
            path = os.path.join(folder, f)
            if state is None and not _stale(path):
                continue  # being created right now, or unreadable: leave it
            if state is None or not namespace.is_alive(state[0], state[1]):
                try:
                    os.unlink(path)
                    fifos += 1
                except FileNotFoundError:
                    pass
    for f in os.listdir(folder):
        if not f.startswith("seg-"):
            continue
        path = os.path.join(folder, f)
        mapped = map_header(path)
        if mapped is not None:
            fd, hdr = mapped
            try:
                if is_current_layout(hdr):
                    entries += Directory(hdr).reclaim_dead()
            finally:
                hdr.close()
                os.close(fd)
        segments += reclaim_segment_if_dead(path)  # also a half-made one (shorter than its header)
    return GcReport(fifos, entries, segments, _reclaim_sockets(folder))


def _held(path: str) -> bool:
    """False if no process holds the socket bound at ``path`` (connecting is refused), else True."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError as e:
        return e.errno != errno.ECONNREFUSED
    finally:
        probe.close()
    return True


def _reclaim_sockets(folder: str) -> int:
    """Unlink the ``sock-*`` files nobody holds: their owner died (or closed them without unlinking).

    A socket's file exists from the moment it is bound, so one being created is never taken for dead."""
    removed = 0
    for f in os.listdir(folder):
        if not f.startswith("sock-"):
            continue
        path = os.path.join(folder, f)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue  # not a socket (a folder, a named pipe): not ours to judge
        except FileNotFoundError:
            continue
        if len(os.fsencode(path)) > namespace.SUN_PATH_MAX:
            path = namespace.socket_address(f)
        if not _held(path):
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
