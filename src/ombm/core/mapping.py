"""Mappings of shared files (issue 11): no descriptor held, and no SIGBUS from a peer.

``mmap.mmap(fd, ...)`` keeps a ``dup`` of ``fd`` for the mapping's whole life, so each mapped
segment header, binding and signal FIFO cost a descriptor, and a server held about 14 per client
(it stopped accepting at about 140 clients under the default ``ulimit -n 1024``).
:func:`map_file` maps the file over the pages of an *anonymous* ``mmap.mmap`` instead
(``_native.map_over``: ``MAP_SHARED | MAP_FIXED``): the object keeps its buffer, its address and its
``munmap`` at close, and holds no descriptor, so the caller closes ``fd`` at once.

Every such mapping is also *guarded* (``_native/mapping.c``): a process that shrinks the file under
it (``ftruncate``), or a full ``/dev/shm``, would make a touch of a page past the end a SIGBUS that
kills this process. Instead the mapping is replaced by zero pages and :attr:`Mapping.broken` turns
true; the channel above it sees corrupt input and ends with an error. The mapping is unguarded just
before it is unmapped (:meth:`Mapping.close`, or when it is collected).

:func:`reserve_file` sizes a new shared file with all of its pages allocated (``posix_fallocate``),
so a full ``/dev/shm`` is :class:`~ombm.SharedMemoryFullError` when the object is made, not a
broken mapping later.
"""

from __future__ import annotations

import errno
import mmap
import os

from ombm import _native
from ombm.errors import SharedMemoryFullError


class Mapping(mmap.mmap):
    """A guarded shared mapping of a file that holds no descriptor (made by :func:`map_file`)."""

    _slot = -1  # its slot in the native table of guarded mappings while guarded
    _start = 0
    _writable = False

    def _guard(self, start: int, writable: bool) -> None:
        self._start, self._writable = start, writable
        self._slot = _native.guard(start, len(self), writable)

    def _unguard(self) -> bool:
        slot, self._slot = self._slot, -1
        if slot >= 0:
            _native.unguard(slot, self._start)
        return slot >= 0

    @property
    def broken(self) -> bool:
        """True once a SIGBUS (the file shrunk under us, or /dev/shm full) replaced it with zeros."""
        return self._slot >= 0 and _native.mapping_broken(self._slot, self._start)

    def close(self) -> None:
        guarded = self._unguard()  # first: its pages are never unmapped while guarded
        try:
            super().close()
        except BufferError:  # views still exported keep it mapped: guarded again until they go
            if guarded:
                self._guard(self._start, self._writable)
            raise

    def __del__(self) -> None:
        self._unguard()  # the munmap follows, in mmap's own dealloc


def map_file(fd: int, length: int, *, writable: bool, offset: int = 0) -> Mapping:
    """A guarded shared mapping of ``length`` bytes of ``fd`` from ``offset`` (page-aligned) that holds
    no descriptor: read-only (``PROT_READ``, a read-only buffer) unless ``writable``."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    mm = Mapping(-1, length, flags=mmap.MAP_PRIVATE, prot=prot)
    try:
        mm._guard(_native.addr_of(mm), writable)  # guarded before the file is there
        _native.map_over(mm, fd, offset, writable)
    except BaseException:
        mm.close()
        raise
    return mm


def reserve_file(fd: int, size: int, what: str) -> None:
    """Give the new file ``fd`` its ``size`` bytes, every page allocated now (``posix_fallocate``):
    :class:`~ombm.SharedMemoryFullError` if the filesystem has no room for ``what``."""
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            raise SharedMemoryFullError(exc.errno, f"no room for {what} ({size} bytes) in the shared-memory "
                                        f"filesystem: {os.strerror(exc.errno)}") from None
        raise
