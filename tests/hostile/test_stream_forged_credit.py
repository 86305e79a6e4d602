"""A Stream against forged credit (issue 11, item 7): another process of the same user opens the
stream's credit segment writable and writes acknowledgement and release counts the reader never
published, while a writer and a reader exchange 1,404 messages.

Whatever the forger writes, either every message arrives in order and the stream ends cleanly, or
one end raises :class:`~ombm.ChannelBrokenError` (a :class:`~ombm.StreamProtocolError` when the
forgery is what it detected): never a clean :class:`~ombm.EndOfStream` with messages missing.  Each
child is started through the ``procs`` fixture; nothing asserts an upper bound on time.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import traceback

import pytest

import ombm
from ombm import _native
from ombm.channels.raw import EndOfStream
from ombm.channels.stream import CR_ACKED, CR_RELEASED, CREDIT_SUFFIX, Stream
from ombm.core.segment import open_segment

pytestmark = pytest.mark.processes

TIMEOUT_S = 60.0  # generous: never a performance bound
MESSAGES = 1404
SLOTS = 8
SLOT_BYTES = 512


def message(i: int) -> bytes:
    """Message i: 0 to a few slots long (some take several fragments); its content depends on i."""
    size = (i * 7919) % (3 * SLOT_BYTES)
    return hashlib.sha256(str(i).encode()).digest() * (size // 32) + bytes(size % 32)


def digest_of(count: int) -> str:
    h = hashlib.sha256()
    for i in range(count):
        h.update(message(i))
    return h.hexdigest()


def reader(conn, name: str) -> None:
    """Read until the stream ends or breaks; report what arrived and how it ended."""
    try:
        got, h, ordered = 0, hashlib.sha256(), True
        with Stream.open(name, timeout=TIMEOUT_S) as s:
            conn.send(("ready", os.getpid()))
            try:
                while True:
                    m = bytes(s.recv(TIMEOUT_S))
                    ordered = ordered and m == message(got)
                    h.update(m)
                    got += 1
                    if got % 64 == 0:
                        time.sleep(0.002)  # a reader that is sometimes slow: the window fills
            except EndOfStream:
                conn.send(("end", got, h.hexdigest(), ordered, ""))
            except ombm.ChannelBrokenError as exc:
                conn.send(("broken", got, h.hexdigest(), ordered, f"{type(exc).__name__}: {exc}"))
    except BaseException:
        conn.send(("error", traceback.format_exc(), "", False, ""))
        raise


def forger(conn, name: str, pattern: str, seed: int) -> None:
    """Write forged acked/released counts into the credit segment until told to stop."""
    rng = random.Random(seed)
    seg = open_segment(name + CREDIT_SUFFIX)
    region = seg.bind(writable=True)
    base = region.address
    conn.send(("ready", os.getpid()))
    writes = 0
    try:
        conn.poll(rng.choice((0.0, 0.01, 0.05)))  # sometimes the stream has been flowing for a while
        while not conn.poll(0):
            acked = _native.load64(base + CR_ACKED)
            if pattern == "ahead":       # plausible: a little ahead of the reader, both words
                acked = released = acked + rng.randrange(1, 2 * SLOTS)
            elif pattern == "everything":  # far beyond anything sent
                acked = released = acked + rng.randrange(1 << 20, 1 << 40)
            elif pattern == "backwards":   # counts that move back
                acked = released = max(0, acked - rng.randrange(1, 4 * SLOTS))
            elif pattern == "release_beyond_ack":
                released = acked + rng.randrange(1, SLOTS)
            else:                          # random words
                acked, released = rng.randrange(0, 1 << 64), rng.randrange(0, 1 << 64)
            if pattern != "release_beyond_ack":
                _native.store64(base + CR_ACKED, acked)
            _native.store64(base + CR_RELEASED, released)
            writes += 1
            time.sleep(rng.choice((0.0, 0.0002, 0.001, 0.005)))
    finally:
        region.unbind()
        seg.release()
        conn.send(("writes", writes))


@pytest.mark.parametrize("pattern,seed", [("ahead", 1), ("ahead", 2), ("ahead", 3), ("ahead", 8),
                                          ("everything", 4), ("backwards", 5), ("backwards", 9),
                                          ("release_beyond_ack", 6), ("random", 7)])
def test_forged_credit_never_ends_the_stream_cleanly_with_messages_missing(procs, pattern, seed):
    name = f"forge-{os.getpid()}-{pattern}-{seed}"
    writer_error = None
    with Stream.create(name, slot_bytes=SLOT_BYTES, slots=SLOTS) as w:
        rparent, rchild = procs.pipe()
        procs.fork(reader, rchild, name)
        assert rparent.poll(TIMEOUT_S) and rparent.recv()[0] == "ready"
        fparent, fchild = procs.pipe()
        procs.fork(forger, fchild, name, pattern, seed)
        assert fparent.poll(TIMEOUT_S) and fparent.recv()[0] == "ready"
        try:
            for i in range(MESSAGES):
                w.send(message(i), timeout=TIMEOUT_S)
            w.flush(TIMEOUT_S)
        except ombm.ChannelBrokenError as exc:
            writer_error = exc
        except ombm.ChannelTimeout:
            pass  # a reader that broke stops reading: the writer times out, then closes
        fparent.send("stop")
        sent = w.statistics().messages_sent
    assert rparent.poll(TIMEOUT_S), "the reader neither finished nor broke"
    how, got, digest, ordered, why = rparent.recv()
    assert how != "error", got
    assert fparent.poll(TIMEOUT_S) and fparent.recv()[1] > 0  # the forger did write
    assert ordered and digest == digest_of(got), "a message arrived out of order or changed"
    if how == "end":
        # a clean end: the reader has every message the writer sent, and the writer sent them all
        # unless it raised the documented error
        assert got == sent, f"a clean EndOfStream after {got} of {sent} messages"
        assert writer_error is not None or sent == MESSAGES
    else:
        assert how == "broken", why
