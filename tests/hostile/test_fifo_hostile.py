"""A peer that writes a signal FIFO cannot crash, freeze or fool the processes that use it (issue 11).

A receiver's FIFO (``fifo-<token>`` in the per-user folder) is mapped read-write by every sender,
so any of them, or the receiver itself, can write any word of it. Here the test process plays
that peer: it maps a well-behaved receiver's FIFO and rewrites its header (capacity, positions,
sleep word) and its cells (sequence words, entries), while a well-behaved sender and receiver,
each in its own process, keep going. No process may die by a signal or hang past a timeout, and
once the writes stop the pair works again (design.md, "What a hostile peer can and cannot do").
"""

from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import time

import pytest

import ombm
from ombm import _layout as L
from ombm.core.signals import Receiver

pytestmark = pytest.mark.processes

SEG_SIZE = 4096
JOIN_S = 30.0  # a child that takes longer than this to answer hangs


def _receiver(conn, name: str) -> None:
    """Count the signals on the whole segment; answer "count" with the count, "stop" with it and exit."""
    seg = ombm.open_segment(name)
    region = seg.bind()
    got = [0]

    def on_signal(address: int) -> None:
        got[0] += 1

    handle = ombm.signal_handler(region.address, region.size, on_signal)
    conn.send(("ready", handle.receiver.fifo.path))
    while True:
        ombm.sig_wait(0.02)
        if conn.poll():
            message = conn.recv()
            conn.send(("count", got[0], ombm.stats()))
            if message == "stop":
                handle.disable()
                return


def _sender(conn, name: str) -> None:
    """Signal the segment's units round robin until told to stop; answer with how many were sent."""
    seg = ombm.open_segment(name)
    region = seg.bind()
    n = 0
    while not conn.poll():
        ombm.signal(region.address + (n * 64) % region.size)
        n += 1
        if n % 32 == 0:
            time.sleep(0.0002)
    conn.recv()
    conn.send(("sent", n, ombm.stats()))


def _answer(conn, process, what: str):
    assert conn.poll(JOIN_S), f"{what} did not answer (exit code {process.exitcode}: a signal kills with < 0)"
    return conn.recv()


class Pair:
    """A well-behaved receiver and sender, each in its own process, on one segment."""

    def __init__(self, procs, name: str) -> None:
        self.rx_conn, rx_end = procs.pipe()
        self.tx_conn, tx_end = procs.pipe()
        self.rx = procs.fork(_receiver, rx_end, name)
        tag, self.fifo_path = _answer(self.rx_conn, self.rx, "the receiver")
        assert tag == "ready"
        self.tx = procs.fork(_sender, tx_end, name)
        self.mm: mmap.mmap | None = None  # the peer's mapping of the receiver's FIFO, for the report
        # signals flow before the peer starts: the sender mapped the FIFO while its header was
        # sound (one that opens a FIFO with a rewritten header skips that receiver: it cannot
        # validate it)
        self.assert_working()

    def count(self) -> int:
        self.rx_conn.send("count")
        return _answer(self.rx_conn, self.rx, "the receiver")[1]

    def assert_alive(self) -> None:
        for who, p in (("receiver", self.rx), ("sender", self.tx)):
            assert p.exitcode is None, f"the {who} died (exit code {p.exitcode})"

    def assert_working(self, within_s: float = 10.0) -> None:
        """The receiver gets signals again: its count moves within `within_s`."""
        start = self.count()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.count() > start:
                return
        self.assert_alive()
        state = ""
        if self.mm is not None:
            mm = self.mm
            seqs = [_u64(mm, L.FIFO_CELLS + i * L.FIFO_CELL_SIZE) for i in range(_cells(mm))]
            state = f": tail {_u64(mm, L.FIFO_TAIL):#x} head {_u64(mm, L.FIFO_HEAD):#x} seqs {[hex(x) for x in seqs]}"
        raise AssertionError(f"the receiver got no signal for {within_s} s after the peer stopped{state}")

    def stop(self) -> tuple[dict, dict]:
        self.tx_conn.send("stop")
        sent = _answer(self.tx_conn, self.tx, "the sender")
        self.rx_conn.send("stop")
        got = _answer(self.rx_conn, self.rx, "the receiver")
        for p in (self.tx, self.rx):
            p.join(JOIN_S)
            assert p.exitcode == 0, f"exit code {p.exitcode}"
        return sent[2], got[2]


@pytest.fixture
def segment():
    with ombm.create_segment(SEG_SIZE, name=f"hostile-fifo-{os.getpid()}-{random.getrandbits(32):08x}") as seg:
        yield seg


def _map(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _u64(mm: mmap.mmap, at: int) -> int:
    return int(struct.unpack_from("<Q", mm, at)[0])


def _put64(mm: mmap.mmap, at: int, value: int) -> None:
    struct.pack_into("<Q", mm, at, value & (2**64 - 1))


def _cells(mm: mmap.mmap) -> int:
    return (len(mm) - L.FIFO_CELLS) // L.FIFO_CELL_SIZE


def _rewrite_capacity(mm: mmap.mmap) -> None:
    """Capacity 2^30 and positions just below it: a cell 32 GiB past the mapping for whoever trusts them."""
    struct.pack_into("<I", mm, 12, 1 << 30)
    for at in (L.FIFO_TAIL, L.FIFO_HEAD):
        _put64(mm, at, (1 << 30) - 1)


def _hostile_receiver(segment, procs, rewrite) -> None:
    """This process is a receiver that never consumes and rewrites its own FIFO; a sender in a child
    signals it: the sender must live on, answer, and exit 0."""
    receiver = Receiver()
    try:
        region = segment.bind()
        receiver.add_handler(region.address, region.size, lambda address: None)
        tx_conn, tx_end = procs.pipe()
        tx = procs.fork(_sender, tx_end, segment.name)
        mm = _map(receiver.fifo.path)
        time.sleep(0.05)  # the sender maps the FIFO while its header is sound
        rewrite(mm)
        time.sleep(0.3)
        assert tx.exitcode is None, f"the sender died (exit code {tx.exitcode})"
        tx_conn.send("stop")
        tag, sent, _ = _answer(tx_conn, tx, "the sender")
        tx.join(JOIN_S)
        assert tx.exitcode == 0 and sent > 0
        mm.close()
    finally:
        receiver.close()


def test_a_receiver_that_rewrites_its_fifo_capacity_cannot_crash_its_senders(procs, segment):
    """On main every push then addressed a cell gigabytes past the mapping: the sender died by SIGSEGV."""
    _hostile_receiver(segment, procs, _rewrite_capacity)


def _ahead_by_five(mm: mmap.mmap) -> None:
    tail = _u64(mm, L.FIFO_TAIL)
    _put64(mm, L.FIFO_CELLS + (tail % _cells(mm)) * L.FIFO_CELL_SIZE, tail + 5)


def test_an_overwritten_sequence_word_cannot_freeze_a_sender(procs, segment):
    """The cell at the tail says "ahead by 5": on main the push re-read the tail forever with the GIL
    held (the sender never answered, SIGTERM was ignored)."""
    _hostile_receiver(segment, procs, _ahead_by_five)


def test_a_corrupt_cell_of_a_working_pair_is_repaired(procs, segment):
    """The same word rewritten under a receiver that consumes: the sender drops and counts, the
    receiver repairs the cell, and signals flow again."""
    pair = Pair(procs, segment.name)
    mm = _map(pair.fifo_path)
    for _ in range(200):  # the receiver drains and the sender pushes: hit the cell at the tail
        _ahead_by_five(mm)
        time.sleep(0.001)
    pair.assert_alive()
    pair.assert_working()
    sent, got = pair.stop()
    assert sent["signals_corrupt"] + got["signals_corrupt"] > 0, "the words no ombm process writes are counted"
    mm.close()


class _Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


def _server(conn, name: str) -> None:
    srv = ombm.rpc.Server(name, _Adder())
    conn.send(("ready", os.getpid()))
    srv.serve_forever()
    conn.send(("stopped", os.getpid()))


def _rewriting_client(conn, name: str) -> None:
    """A client that rewrites its own FIFO's capacity and positions, then keeps calling."""
    with ombm.rpc.connect(name, timeout=5.0) as cli:
        assert cli.add(1, 2) == 3
        mm = _map(cli._receiver.fifo.path)
        _rewrite_capacity(mm)
        for i in range(50):
            try:
                cli.add(i, i)
            except Exception:  # its own calls may fail: it broke its own FIFO
                pass
    conn.send(("done", os.getpid()))


def test_a_client_that_rewrites_its_fifo_header_cannot_crash_the_server(procs):
    """On main the server's reply push trusted the client's header: the server died by SIGSEGV."""
    name = f"hostile-fifo-srv-{os.getpid()}-{random.getrandbits(24):06x}"
    srv_conn, srv_end = procs.pipe()
    server = procs.fork(_server, srv_end, name)
    _answer(srv_conn, server, "the server")
    cli_conn, cli_end = procs.pipe()
    client = procs.fork(_rewriting_client, cli_end, name)
    client.join(JOIN_S)  # (the hostile one: how it ends is its own business)
    assert server.exitcode is None, f"the server died (exit code {server.exitcode})"
    with ombm.rpc.connect(name, timeout=10.0) as cli:  # a well-behaved client is still served
        assert [cli.add(i, 1) for i in range(20)] == [i + 1 for i in range(20)]
    os.kill(server.pid, signal.SIGTERM)
    _answer(srv_conn, server, "the server")
    server.join(JOIN_S)
    assert server.exitcode == 0


def _hostile_value(rng: random.Random, near: int, cells: int) -> int:
    return rng.choice([
        rng.getrandbits(64),
        near + rng.randint(-3 * cells, 3 * cells),
        near,
        near + 1,
        0,
        2**63 | rng.getrandbits(63),  # a claim word naming some process
        2**64 - 1,
    ])


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_writes_to_every_fifo_word_never_kill_or_freeze_the_pair(procs, segment, seed):
    """Seeded rounds of writes to the capacity, the positions, the sleep word, and cells' sequence
    words and entries, while the pair keeps going; afterwards the pair works again."""
    rng = random.Random(seed)
    pair = Pair(procs, segment.name)
    mm = pair.mm = _map(pair.fifo_path)
    cells = _cells(mm)
    for _ in range(1500):
        target = rng.randrange(6)
        tail, head = _u64(mm, L.FIFO_TAIL), _u64(mm, L.FIFO_HEAD)
        if target == 0:
            struct.pack_into("<I", mm, 12, rng.choice([0, 1, 3, 1 << 31, rng.getrandbits(32)]))
        elif target == 1:
            _put64(mm, L.FIFO_TAIL, _hostile_value(rng, tail, cells))
        elif target == 2:
            _put64(mm, L.FIFO_HEAD, _hostile_value(rng, head, cells))
        elif target == 3:
            struct.pack_into("<I", mm, L.FIFO_SLEEP, rng.getrandbits(32))
        else:
            pos = rng.choice([tail, head, rng.randrange(cells)])
            word = 0 if target == 4 else rng.randrange(1, 4)
            _put64(mm, L.FIFO_CELLS + (pos % cells) * L.FIFO_CELL_SIZE + 8 * word, _hostile_value(rng, pos, cells))
        if rng.random() < 0.2:
            time.sleep(0.001)
    pair.assert_alive()
    pair.assert_working()
    pair.stop()
    mm.close()
