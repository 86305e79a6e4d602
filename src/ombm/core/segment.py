"""Channel segments and their bindings into this address space (paper §3.2.1, §3.3).

* :func:`create_segment` is the paper's ``CreateSegment(attributes, mode,
  flags)``: a file in the per-user folder with a header page (magic, version,
  mode, unit, directory) and the data; :func:`open_segment` finds it by name
  in another process and checks the header as hostile input.
* :meth:`Segment.bind` maps the data writable or read-only; a read-only
  binding is enforced by the MMU (``PROT_READ``). Each binding has its own
  base address, so the same offset has a different address in every binding:
  that is what address-valued signals translate.
* :meth:`Region.write` is the message write path: with message-oriented
  consistency and signal-on-write, the write raises one signal per **unit
  whose last byte it writes** (paper §3.3: "when the last byte ... is
  written"), carrying the unit's start address, with no extra call.
* ``release`` drops this process's hold; the creator's release (or the last
  live holder's) removes the name. Dead holders are reclaimed by ``ombm gc``.
"""

from __future__ import annotations

import bisect
import enum
import errno
import fcntl
import mmap
import os
import stat
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ombm import _layout as L
from ombm import _native
from ombm.core import lifecycle, namespace
from ombm.core.delivery import Router
from ombm.core.directory import Directory, Entry, reclaim_segment_if_dead
from ombm.core.mapping import Mapping, map_file, reserve_file
from ombm.errors import AddressError, ClosedError, ReadOnlyError, SegmentExistsError, SegmentFormatError
from ombm.errors import SegmentNotFoundError, SharedMemoryFullError
from ombm.core.faults import FAULTS

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from ombm.core.fifo import FifoRef
    from ombm.core.signals import SignalHandle

CACHE_LINE = L.CACHE_LINE
PAGE = mmap.PAGESIZE
MAX_SEGMENT_SIZE = 1 << 44


class Mode(enum.IntEnum):
    """Consistency mode of a segment (paper §3.2)."""

    MESSAGE_CONSISTENCY = 1  #: readers see data only after its signal; may be lost/overwritten
    CONVENTIONAL = 2  #: ordinary coherent shared memory; signals only by explicit signal()


MESSAGE_CONSISTENCY = Mode.MESSAGE_CONSISTENCY
CONVENTIONAL = Mode.CONVENTIONAL


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _shm_free_bytes() -> int:
    st = os.statvfs(namespace.SHM_ROOT)
    return st.f_bavail * st.f_frsize


def _validate_create(size: int, mode: int, unit: int, signal_on_write: bool | None) -> tuple[int, Mode, int, bool]:
    size = _check_int(size, "size")
    if size <= 0:
        raise ValueError(f"segment size must be positive, not {size}")
    if size > MAX_SEGMENT_SIZE:
        raise ValueError(f"segment size {size} is beyond what this machine can map (at most {MAX_SEGMENT_SIZE})")
    if L.HEADER_SIZE + _round_up(size, PAGE) > _shm_free_bytes():  # the early answer; reserve_file the sure one
        raise SharedMemoryFullError(errno.ENOSPC, f"no room for a segment of {size} bytes in {namespace.SHM_ROOT}")
    try:
        mode = Mode(mode)
    except ValueError:
        raise ValueError(f"unknown mode {mode!r}: use ombm.MESSAGE_CONSISTENCY or ombm.CONVENTIONAL") from None
    unit = _check_int(unit, "unit")
    if unit <= 0 or unit % CACHE_LINE:
        raise ValueError(f"unit must be a positive multiple of the {CACHE_LINE}-byte cache line, not {unit}")
    if signal_on_write is None:
        signal_on_write = mode == Mode.MESSAGE_CONSISTENCY
    if not isinstance(signal_on_write, bool):
        raise TypeError("signal_on_write must be a bool")
    if signal_on_write and mode != Mode.MESSAGE_CONSISTENCY:
        raise ValueError("signal_on_write needs mode=MESSAGE_CONSISTENCY (paper §3.3: a message mode)")
    return size, mode, unit, signal_on_write


# ---- this process's bindings, by address (the "virtual address" side of translation)
_index_lock = threading.Lock()
_starts: list[int] = []
_regions: list[weakref.ref[Region]] = []  # weak: a Region dropped unbound is collected (and warns)


def find_region(address: object) -> Region:
    """The bound region containing ``address`` (an int in this process)."""
    address = _check_int(address, "address")
    i = bisect.bisect_right(_starts, address) - 1
    if i >= 0:
        region = _regions[i]()
        if region is not None and address < region.address + region.size:
            return region
    raise AddressError(f"address {address:#x} is not in any region bound by this process")


class Region:
    """A binding of a segment's data into this address space."""

    def __init__(self, segment: Segment, writable: bool, fd: int) -> None:
        self.segment = segment
        self.writable = writable
        self.size = segment.size
        self._pid = os.getpid()
        self._mm: Mapping | None = map_file(fd, _round_up(segment.size, PAGE), writable=writable,
                                              offset=L.HEADER_SIZE)  # holds no descriptor
        self.address: int = _native.addr_of(self._mm)
        view = memoryview(self._mm)
        self._view = view
        self.buffer: memoryview = view[: self.size]
        self._wbuf: memoryview | None = self.buffer if writable else None
        # the write path's constants (signal-on-write unit, 0 if this segment raises none)
        self._message = segment._message
        self._sow_unit = segment.unit if segment._message and segment.signal_on_write else 0
        self._deliver = segment._router.deliver
        self._handles: weakref.WeakSet[SignalHandle] = weakref.WeakSet()
        self._writer: _native.Writer[FifoRef] | None = None
        if writable:  # the native write path (fault injection included)
            router = segment._router
            self._writer = _native.Writer(
                self.address, self.size, self._sow_unit, router.version_address, segment.id,
                Region.write.__get__(self), router.route, router.deliver, router.after_fanout, self._message,
            )
            # shadows the method below, which stays its slow path (mypy: a method is not assigned to)
            self.write = self._writer.write  # type: ignore[method-assign, assignment]
        self._ref = weakref.ref(self)  # its entry in the index of bindings
        with _index_lock:
            i = bisect.bisect(_starts, self.address)
            _starts.insert(i, self.address)
            _regions.insert(i, self._ref)

    # -- the message write path (paper §3.3)
    def write(self, offset: int, data: ReadableBuffer) -> None:
        """Write ``data`` at ``offset``; raise one signal per unit whose last byte this writes.

        A writable binding's ``write`` is the native ``_native.Writer.write``, which does the same
        (copy, then one signal per completed unit through the segment's cached routes; fault
        injection too) and calls this method for anything it does not take itself: bad arguments, a
        closed binding, an offset that is an int of another type.
        """
        wbuf = self._wbuf
        if wbuf is None:
            raise ClosedError("region is unbound") if self._mm is None else ReadOnlyError("region is bound read-only")
        if type(offset) is not int:
            offset = _check_int(offset, "offset")
        if type(data) is bytes or type(data) is bytearray:
            n = len(data)
        else:
            data = memoryview(data)
            if data.format != "B" or data.ndim != 1:
                data = data.cast("B")
            n = data.nbytes
        end = offset + n
        if offset < 0 or end > self.size:
            raise AddressError(f"write of {n} bytes at offset {offset} overruns the {self.size}-byte region")
        wbuf[offset:end] = data
        if self._message and n:
            if FAULTS.active:
                bit = FAULTS.corrupt_bit(n)  # counted where it is drawn
                if bit >= 0:
                    wbuf[offset + (bit >> 3)] ^= 1 << (bit & 7)
            unit = self._sow_unit
            if unit:
                # units whose last byte lies in [offset, end); the last unit ends at the segment's end
                size = self.size
                start = offset // unit * unit
                if min(start + unit, size) <= end:
                    deliver = self._deliver
                    while start < size and min(start + unit, size) <= end:
                        deliver(start)
                        start += unit

    def read(self, offset: int, nbytes: int) -> bytes:
        if self._mm is None:
            raise ClosedError("region is unbound")
        offset = _check_int(offset, "offset")
        nbytes = _check_int(nbytes, "nbytes")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise AddressError(f"read of {nbytes} bytes at offset {offset} overruns the {self.size}-byte region")
        return bytes(self.buffer[offset : offset + nbytes])

    def offset_of(self, address: int) -> int:
        """The segment offset of an address in this region (the 'physical address')."""
        if self._mm is None:
            raise ClosedError("region is unbound")
        address = _check_int(address, "address")
        if not self.address <= address < self.address + self.size:
            raise AddressError(f"address {address:#x} is outside this region")
        return address - self.address

    @property
    def native_writer(self) -> _native.Writer[FifoRef] | None:
        """The native write path of a writable binding (None when read-only): lanes and slot
        channels write frames through it."""
        return self._writer

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def broken(self) -> bool:
        """True once another process shrank the segment's file under this binding (or ``/dev/shm``
        had no page for it): the SIGBUS that would have killed this process replaced the binding
        with zero pages (``core/mapping.py``). Nothing written through it reaches anyone any more:
        a channel on it ends with :class:`~ombm.ChannelBrokenError`."""
        mm = self._mm
        return mm is not None and mm.broken

    def unbind(self) -> None:
        """Idempotent: disable handlers on this region and unmap it."""
        self._unbind(release_views=True)

    def _unbind(self, release_views: bool) -> None:
        if self._mm is None:
            return
        for handle in list(self._handles):
            handle.disable()
        with _index_lock:
            i = bisect.bisect_left(_starts, self.address)
            while i < len(_regions) and _regions[i] is not self._ref:
                i += 1
            if i < len(_regions):
                del _starts[i], _regions[i]
        mm, self._mm = self._mm, None
        self._wbuf = None
        if self._writer is not None:
            self._writer.close()
        if release_views:
            self.buffer.release()
            self._view.release()
        else:  # from the finalizer: a view still held elsewhere keeps the mapping until it goes
            del self.buffer, self._view
        try:
            mm.close()
        except BufferError:
            pass  # views derived by the user keep the mapping alive until they go
        self.segment._regions.discard(self)

    def __del__(self) -> None:
        """Dropped still bound: warn (``ResourceWarning``, as for an unclosed file) and unmap; never raises."""
        lifecycle.finalize_unclosed(
            self, lambda: self.__dict__.get("_mm") is not None and self._pid == os.getpid(),
            lambda: self._unbind(release_views=False))

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unbind()

    def __repr__(self) -> str:
        state = "unbound" if self._mm is None else f"at {self.address:#x}"
        return f"<ombm.Region {self.segment.name!r} {'rw' if self.writable else 'ro'} {self.size} bytes {state}>"


class Segment:
    """A channel segment (one shared object), created or opened by this process."""

    def __init__(self, name: str, fd: int, creator: bool) -> None:
        self.name = name
        self.path = namespace.segment_path(name)
        # the descriptor is kept only until the first bind (then closed: a mapping needs none);
        # the file's identity tells a later bind, and release's unlink, that the name is still it
        self._fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._pid = os.getpid()
        self.creator = creator
        self._hdr: Mapping | None = None
        hdr = map_file(fd, L.HEADER_SIZE, writable=True)  # holds no descriptor
        try:
            self._parse(L.SEG_HEADER.unpack_from(hdr, 0), st.st_size)
        except BaseException:
            self._fd = -1  # the caller closes it
            hdr.close()
            raise
        self._hdr = hdr
        self.directory = Directory(self._hdr)
        self._router = Router(self.id, self.directory)
        self._regions: weakref.WeakSet[Region] = weakref.WeakSet()
        self._holder: Entry | None = None

    def _parse(self, fields: tuple[Any, ...], file_size: int) -> None:
        magic, version, mode, size, unit, flags, seg_id, _pid, cap, _start, _ver = fields
        where = f"segment {self.name!r}"
        if magic != L.SEG_MAGIC:
            raise SegmentFormatError(f"{where} is not an ombm segment (bad magic), or is still being created")
        if version != L.SEG_VERSION:
            raise SegmentFormatError(f"{where} has layout version {version}; this ombm reads {L.SEG_VERSION}")
        if mode not in (1, 2) or unit <= 0 or unit % CACHE_LINE or size <= 0 or cap != L.DIR_CAPACITY:
            raise SegmentFormatError(f"{where} has a corrupt header")
        if L.HEADER_SIZE + _round_up(size, PAGE) > file_size:
            raise SegmentFormatError(f"{where} is truncated ({file_size} bytes for a {size}-byte segment)")
        self.mode = Mode(mode)
        self.size: int = size
        self.unit: int = unit
        self.signal_on_write = bool(flags & L.FLAG_SIGNAL_ON_WRITE)
        self.id: int = seg_id
        self._message = self.mode == Mode.MESSAGE_CONSISTENCY

    def bind(self, writable: bool = True) -> Region:
        """Map the segment's data into this process: the paper's 'Bind Memory Region'."""
        if self._hdr is None:
            raise ClosedError(f"segment {self.name!r} is released")
        if not isinstance(writable, bool):
            raise TypeError("writable must be a bool")
        fd, self._fd = self._fd, -1
        if fd < 0:
            fd = self._reopen()  # a second binding (rare): the name must still be this segment
        try:
            region = Region(self, writable, fd)
        finally:
            os.close(fd)
        self._regions.add(region)
        return region

    def _reopen(self) -> int:
        """A descriptor of this segment's file, opened by name and checked to be the same file."""
        gone = SegmentNotFoundError(f"segment {self.name!r} was removed (its creator released it or died): "
                                    "it can no longer be bound again; bind it before that")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, OSError):
            raise gone from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            raise gone
        return fd

    @property
    def released(self) -> bool:
        return self._hdr is None

    @property
    def broken(self) -> bool:
        """True once the header or a binding of this segment broke (see :attr:`Region.broken`)."""
        hdr = self._hdr
        return hdr is not None and (hdr.broken or any(region.broken for region in list(self._regions)))

    def release(self) -> None:
        """Idempotent: unbind our regions, drop our hold; the creator (or last holder) removes the name."""
        hdr = self._hdr
        if hdr is None:
            return
        for region in list(self._regions):
            region.unbind()
        if self._holder is not None:
            self.directory.free(self._holder)
            self._holder = None
        others = [
            e for e in self.directory.entries() if e.kind == L.KIND_HOLDER and namespace.is_alive(e.pid, e.start)
        ]
        if self.creator or not others:
            _unlink_if_same(self.path, self._ident)
        self.directory.close()  # its addresses go with the header: later uses raise ClosedError
        self._hdr = None
        try:
            hdr.close()
        except BufferError:
            pass
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        _LIVE.discard(self)

    def __del__(self) -> None:
        """Dropped unreleased: warn (``ResourceWarning``, as for an unclosed file) and release; never raises."""
        if self.__dict__.get("_hdr") is None or self._pid != os.getpid():
            fd = self.__dict__.get("_fd", -1)
            if fd >= 0:  # a forked child's copy, or a constructor that failed: the descriptor only
                self._fd = -1
                try:
                    os.close(fd)
                except OSError:
                    pass
            return
        lifecycle.finalize_unclosed(self, lambda: True, self.release, word="unreleased")

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"<ombm.Segment {self.name!r} size={self.size} mode={self.mode.name} unit={self.unit} "
            f"signal_on_write={self.signal_on_write}{' released' if self.released else ''}>"
        )


def _unlink_if_same(path: str, ident: tuple[int, int]) -> None:
    """Unlink ``path`` only if it is still the file whose (st_dev, st_ino) is ``ident``."""
    try:
        st_path = os.stat(path)
        if (st_path.st_dev, st_path.st_ino) == ident:
            os.unlink(path)
    except FileNotFoundError:
        pass


_LIVE: weakref.WeakSet[Segment] = weakref.WeakSet()


def _register(seg: Segment) -> Segment:
    lifecycle.arm()
    try:
        seg._holder = seg.directory.claim(L.KIND_HOLDER, 0, 0, 0)
    except BaseException:
        seg.release()
        raise
    _LIVE.add(seg)
    return seg


def create_segment(
    size: int,
    *,
    name: str | None = None,
    mode: Mode = MESSAGE_CONSISTENCY,
    unit: int = CACHE_LINE,
    signal_on_write: bool | None = None,
) -> Segment:
    """Create a channel segment (paper ``CreateSegment``).

    ``unit`` is the signalling/consistency unit in bytes (``CACHE_LINE``,
    ``PAGE`` or any multiple of the line). ``signal_on_write`` defaults to on
    for message consistency and must be off for ``CONVENTIONAL`` segments.
    """
    size, mode, unit, signal_on_write = _validate_create(size, mode, unit, signal_on_write)
    name = namespace.new_name() if name is None else namespace.validate_name(name)
    path = namespace.segment_path(name)
    fd = _create_locked(path, name)
    try:
        reserve_file(fd, L.HEADER_SIZE + _round_up(size, PAGE), f"segment {name!r}")
        pid, start = namespace.me()
        flags = L.FLAG_SIGNAL_ON_WRITE if signal_on_write else 0
        header = L.SEG_HEADER.pack(
            b"\0" * 8, L.SEG_VERSION, mode, size, unit, flags, namespace.new_token(), pid, L.DIR_CAPACITY, start, 0
        )
        os.pwrite(fd, header, 0)
        os.pwrite(fd, L.SEG_MAGIC, 0)  # published last: a half-made segment has no magic
        seg = Segment(name, fd, creator=True)
    except BaseException:
        st = os.fstat(fd)
        _unlink_if_same(path, (st.st_dev, st.st_ino))
        os.close(fd)
        raise
    try:
        return _register(seg)
    finally:
        if seg._fd >= 0:
            fcntl.flock(seg._fd, fcntl.LOCK_UN)  # published and held: reclaimers judge it from now on


def _create_locked(path: str, name: str) -> int:
    """Create the file at ``path`` (``O_EXCL``) and take its creation lock (an exclusive ``flock``,
    held until the header is published and our hold recorded: ``reclaim_segment_if_dead`` never
    touches a locked file). A name left by dead processes, or a half-made file whose creator died,
    is reclaimed first (DESIGN.md §3)."""
    for attempt in range(8):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if attempt == 7 or not reclaim_segment_if_dead(path):
                raise SegmentExistsError(f"segment {name!r} already exists") from None
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        st = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)  # a reclaimer took our empty file for a dead creator's before we locked it: again
    raise SegmentExistsError(f"segment {name!r} could not be created (its name kept changing)")


def open_segment(name: str) -> Segment:
    """Open an existing segment by name; ``SegmentNotFoundError`` if absent.

    A remote name ``name@HOST:PORT`` opens the local replica that this host's bridge makes of the
    segment the bridge at HOST:PORT exports (``core/remote.py``; ``BridgeNotRunningError`` without one)."""
    if isinstance(name, str) and "@" in name:  # -- remote names (issue 12): the bridge's replica
        from ombm.core import remote

        name = remote.import_segment(name)
    name = namespace.validate_name(name)
    path = namespace.segment_path(name)
    try:  # anyone of the user can put anything under the name: a named pipe must not make us wait
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SegmentNotFoundError(f"no segment named {name!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SegmentFormatError(f"{path} is a symbolic link, not an ombm segment") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a folder, a socket
            raise SegmentFormatError(f"{path} is not a file, so not an ombm segment") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SegmentFormatError(f"{path} is not a regular file, so not an ombm segment")
        if st.st_size < L.HEADER_SIZE:
            raise SegmentFormatError(f"segment {name!r} is truncated or not an ombm segment")
        seg = Segment(name, fd, creator=False)
    except BaseException:
        os.close(fd)
        raise
    return _register(seg)


def live_segments() -> list[Segment]:
    return list(_LIVE)


def _after_fork_in_child() -> None:
    """A forked child inherits mappings but not ownership: it never frees its parent's holds."""
    for seg in list(_LIVE):
        seg.creator = False
        seg._holder = None
    _LIVE.clear()


def _release_all() -> None:
    for seg in live_segments():
        seg.release()


lifecycle.on_exit(_release_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
