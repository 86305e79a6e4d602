"""File mappings that hold no descriptor (issue 11, item 6: "a mapping needs no open descriptor").

``mmap.mmap(fd, ...)`` keeps a ``dup`` of ``fd`` for the mapping's whole life, so each mapped
segment header, binding and signal FIFO cost a descriptor, and a server held about 14 per client
(it stopped accepting at about 140 clients under the default ``ulimit -n 1024``).
:func:`map_file` maps the file over the pages of an *anonymous* ``mmap.mmap`` instead
(``_native.map_over``: ``MAP_SHARED | MAP_FIXED``): the object keeps its buffer, its address and its
``munmap`` at close, and holds no descriptor, so the caller closes ``fd`` at once.
"""

from __future__ import annotations

import mmap

from ombm import _native


def map_file(fd: int, length: int, *, writable: bool, offset: int = 0) -> mmap.mmap:
    """A shared mapping of ``length`` bytes of ``fd`` from ``offset`` (page-aligned) that holds no
    descriptor: read-only (``PROT_READ``, a read-only buffer) unless ``writable``."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    mm = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE, prot=prot)
    try:
        _native.map_over(mm, fd, offset, writable)
    except BaseException:
        mm.close()
        raise
    return mm
