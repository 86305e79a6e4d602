"""Every byte offset and struct format ombm puts in shared memory.

Nobody else hard-codes an offset. Two kinds of shared object live in the
per-user folder ``/dev/shm/ombm-<uid>/`` (mode 0700, files 0600):

Segment ``seg-<name>`` (paper §3.2.1 ``CreateSegment``)::

    0        8        16       24       32       40       48       56      64
    +--------+--------+--------+--------+--------+--------+--------+--------+
    | magic  |ver|mode| size   |unit|flg| seg id |pid|cap| start  |dir ver |  header
    +--------+--------+--------+--------+--------+--------+--------+--------+
    | 64..127: reserved                                                     |
    +-----------------------------------------------------------------------+
    | 128: directory, DIR_CAPACITY entries of 64 bytes (the cache directory |
    |      of paper §3.1.2: which receivers watch which offset ranges, and  |
    |      which processes hold the segment)                                |
    +-----------------------------------------------------------------------+
    | HEADER_SIZE (page aligned): data, `size` bytes                        |
    +-----------------------------------------------------------------------+

Directory entry (64 bytes)::

    0 state u32 | 4 gen u32 | 8 pid u32 | 12 kind u32 | 16 start u64 |
    24 token u64 | 32 offset u64 | 40 size u64 | 48..63 reserved

``state`` goes FREE -> CLAIMED (CAS, fields written) -> LIVE (published) and
back; ``gen`` is bumped on every claim so a reader that saw the same gen
before and after reading the fields read a consistent entry. ``dir ver`` is
bumped after every change: senders cache their view of the directory until it
moves.

Receiver signal FIFO ``fifo-<token>`` (paper §3.1.2, one per receiving thread)::

    0 magic u64 | 8 version u32 | 12 capacity u32 | 16 pid u32 | 20 flags u32 |
    24 start u64 | 32 token u64 | 40 drops u64 | 48 peer cpu u32 | 52..63 reserved
    64  tail u64   (own cache line: producers' claim position)
    128 head u64   (own cache line: the consumer's position) | 136 state u32 (the consumer's)
    192 sleep u32  (own cache line: futex word; bits 0-1 the receiver's state 0 awake / 1 futex /
                   2 doorbell, set and cleared by the receiver only; above them a wake generation
                   that producers bump before a futex wake)
    256 cells: capacity x 32 bytes (seq u64, segment id u64, offset u64, pad)

A cell's ``seq`` for position ``pos`` is ``pos`` (free), a claim word (top bit
set: the claiming producer's pid and start time), ``pos + 1`` (published) or
``pos + capacity`` (taken); see ``_native/fifo.h``. The capacity is read once,
validated, by whoever maps the FIFO; the native side never reads it again.

``state`` and ``peer cpu`` are hints for the wait (``_native/sync.c``), written with plain
stores and never trusted: ``state`` is the receiver's (``RECEIVER_*`` in its low byte: running,
spinning or asleep, and above it the CPU it waits on + 1), ``peer cpu`` the producers' (the CPU
the last push came from + 1, 0 unknown). Older builds leave both 0 ("unknown"): no version bump.

The FIFO offsets are shared with ``_native/native.h``; ``check_native()`` proves it.
"""

from __future__ import annotations

import os
import struct

try:
    from ombm import _native
except ImportError as exc:
    if any(n.startswith("_native.") and n.endswith(".so") for n in os.listdir(os.path.dirname(__file__))):
        raise  # built, and it fails to load: that error says why
    raise ImportError(  # a source tree never built, or a copy without its module
        f"ombm's native module is not built in {os.path.dirname(__file__)}: use an installed ombm (do not put "
        "a source tree's src on PYTHONPATH), or build it there with `pip install -e .` or `python setup.py "
        f"build_ext --inplace` ({exc})") from exc

CACHE_LINE = 64

# ---- segment header
SEG_MAGIC = b"OMBMSEG\x01"
SEG_VERSION = 1
SEG_HEADER = struct.Struct("<8sII Q II Q II Q Q")  # magic ver mode size unit flags segid pid cap start dirver
SEG_DIR_VERSION = 56  # u64, bumped after each directory change
SEG_DIR = 128
DIR_ENTRY_SIZE = 64
DIR_CAPACITY = 126
HEADER_SIZE = 8192  # SEG_DIR + DIR_CAPACITY * DIR_ENTRY_SIZE, page aligned
FLAG_SIGNAL_ON_WRITE = 1

# directory entry
DIR_ENTRY = struct.Struct("<IIII QQQQ")  # state gen pid kind start token offset size
ENTRY_STATE = 0
ENTRY_GEN = 4
ENTRY_FREE, ENTRY_CLAIMED, ENTRY_LIVE = 0, 1, 2
KIND_HOLDER, KIND_RECEIVER = 1, 2

# ---- receiver FIFO
FIFO_MAGIC = b"OMBMFIFO"
FIFO_VERSION = 2  # 2: a claimed cell's seq names its producer (_native/fifo.h)
FIFO_HEADER = struct.Struct("<8sIIII QQQ")  # magic ver capacity pid flags start token drops
FIFO_DROPS = 40
FIFO_PEER_CPU = 48  # u32 hint, the producers': the CPU of the last push + 1 (0: unknown)
RECEIVER_RUNNING, RECEIVER_SPINNING, RECEIVER_ASLEEP = 0, 1, 2
FIFO_TAIL = 64
FIFO_HEAD = 128
FIFO_STATE = 136  # u32 hint, the receiver's: RECEIVER_* | (its CPU + 1) << 8
FIFO_SLEEP = 192
FIFO_CELLS = 256
FIFO_CELL_SIZE = 32
FIFO_FLAG_KERNEL = 1  # software-only path: signals go through the receiver's kernel socket
FIFO_FLAG_DOORBELL = 2  # the receiver may sleep in an event loop on its socket

SLEEP_AWAKE, SLEEP_FUTEX, SLEEP_DOORBELL, SLEEP_WOKEN = 0, 1, 2, 3  # SLEEP_WOKEN: asleep, a wake on its way (fifo.h)

# the signal value a FIFO carries: (segment id, offset); segment id 0 is ombm's own
NUDGE_SEGMENT = 0

MAX_NAME = 200


def fifo_size(capacity: int) -> int:
    return FIFO_CELLS + capacity * FIFO_CELL_SIZE


def entry_offset(index: int) -> int:
    return SEG_DIR + index * DIR_ENTRY_SIZE


def check_native() -> None:
    """Fail loudly if the native module is missing (a source tree never built) or disagrees with this layout."""
    if getattr(_native, "__file__", None) is None:  # the C sources' folder, imported as a namespace package
        raise ImportError(
            f"ombm's native module is not built in {os.path.dirname(__file__)}: use an installed ombm (do not put "
            "a source tree's src on PYTHONPATH), or build it there with `pip install -e .` or `python setup.py "
            "build_ext --inplace`")
    pairs = {
        "FIFO_TAIL": FIFO_TAIL,
        "FIFO_HEAD": FIFO_HEAD,
        "FIFO_SLEEP": FIFO_SLEEP,
        "FIFO_CELLS": FIFO_CELLS,
        "CELL_SIZE": FIFO_CELL_SIZE,
        "FIFO_CAPACITY": 12,
        "FIFO_DROPS": FIFO_DROPS,
        "FIFO_STATE": FIFO_STATE,
        "FIFO_PEER_CPU": FIFO_PEER_CPU,
        "RECEIVER_SPINNING": RECEIVER_SPINNING,
        "RECEIVER_ASLEEP": RECEIVER_ASLEEP,
        "FIFO_VERSION": FIFO_VERSION,
    }
    for name, value in pairs.items():
        if getattr(_native, name) != value:
            raise ImportError(f"ombm._native disagrees with _layout on {name}; rebuild the extension")
    assert SEG_HEADER.size == 64 and DIR_ENTRY.size == 48 and FIFO_HEADER.size == 48
    assert SEG_DIR + DIR_CAPACITY * DIR_ENTRY_SIZE <= HEADER_SIZE


check_native()
