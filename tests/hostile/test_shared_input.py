"""Shared memory and the per-user folder are hostile input (issue 11, item 1), beyond the FIFOs.

Each test here pins one defect the audit or the hostile-peer suite (test_hostile_peers.py) found:
a value another process of the user can write (a segment's header or directory, an RPC slot, a
signal FIFO's entry, a file under an object's name) drove an address, a loop, an allocation or a
blocking call, and a process crashed, hung, or raised an exception no ombm document names.
Each test failed before its fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
import tracemalloc

import msgpack
import pytest

import ombm
from ombm import _layout as L
from ombm import _native
from ombm.channels.raw import CONTROL, CONTROL_MAGIC, CONTROL_SIZE, CONTROL_VERSION, KIND_RAW, MAX_SLOTS
from ombm.transport import wire

pytestmark = pytest.mark.processes

CHILD_TIMEOUT_S = 60.0


@pytest.fixture
def shm_root():
    """An empty stand-in for /dev/shm (mode 1777), removed afterwards: what a child does there
    cannot touch the real per-user folder."""
    root = tempfile.mkdtemp(prefix="ombmtest-root-", dir="/dev/shm")
    os.chmod(root, 0o1777)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- ombm gc / ombm ls
NOT_REGULAR = r"""
import os, sys
from ombm.core import admin, namespace
folder = namespace.folder()
os.mkfifo(os.path.join(folder, "fifo-00000000000000ab"))  # a plain open() of it waits for a writer
os.mkfifo(os.path.join(folder, "seg-pipe"))                # pread() of it fails with ESPIPE
os.mkdir(os.path.join(folder, "seg-folder"))
os.mkdir(os.path.join(folder, "sock-00000000000000ef"))    # unlink() of it raises IsADirectoryError
os.mkfifo(os.path.join(folder, "sock-00000000000000cd"))   # not a socket: not gc's to remove
report = admin.gc()
listed = admin.list_segments()
print(report.fifos_removed, report.segments_removed, sorted((s.name, s.error) for s in listed))
print(sorted(os.listdir(folder)))
"""


def test_gc_and_ls_skip_files_that_are_not_regular(procs, shm_root):
    """A named pipe called ``fifo-*`` hung ``ombm gc`` for good (it opened it for reading, which
    waits for a writer), one called ``seg-*`` made it raise ``OSError`` (ESPIPE), and a folder
    called ``sock-*`` ``IsADirectoryError``: whatever is not a regular file (nor, for ``sock-*``, a
    socket) is neither read nor removed."""
    try:
        done = procs.python(NOT_REGULAR, env={"OMBM_SHM_DIR": shm_root}, timeout=CHILD_TIMEOUT_S)
    except Exception as exc:  # subprocess.TimeoutExpired: the child hung (it is killed)
        pytest.fail(f"ombm gc hung on a named pipe: {exc}")
    assert done.returncode == 0, done.stderr
    counts, names = done.stdout.splitlines()
    assert counts.startswith("0 0 ")
    assert "'folder', 'unreadable or truncated'" in counts and "'pipe', 'unreadable or truncated'" in counts
    assert names == str(sorted(["fifo-00000000000000ab", "seg-folder", "seg-pipe", "sock-00000000000000cd",
                                   "sock-00000000000000ef"]))


# ---------------------------------------------------------------- RPC: forged signals, forged ACKs
class Calc:
    def add(self, a, b):
        return a + b


@pytest.fixture
def service(own_receiver):
    name = f"shared-input-{os.getpid()}-{ombm.core.namespace.new_token() & 0xFFFFFF:06x}"
    server = ombm.rpc.Server(name, Calc()).start()
    try:
        yield name
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["past-the-end", "last-partial-slot", "top-bit"])
def test_a_forged_reply_signal_beyond_the_slots_is_dropped(service, where):
    """A signal FIFO entry naming the client's reply segment with an offset past its last slot (any
    process that can signal the client can push one) made the call raise ``IndexError``: the slot
    was looked up in a list without a bound. It is a frame that fails its checks: counted, dropped."""
    with ombm.rpc.connect(service, timeout=5.0) as client:
        assert client.add(1, 2) == 3
        reply = client._reply
        offset = {"past-the-end": reply.segment.size, "last-partial-slot": reply.slots * reply.slot_size + 1,
                  "top-bit": 1 << 63}[where]
        fifo = client._receiver.fifo.fifo_map
        for _ in range(3):  # taken by the call lane, by the protocol's wait, by a dispatch
            _native.fanout((fifo,), client._reply_segment, offset)
            assert client.add(2, 3) == 5
        assert client.statistics().bad_frames >= 1


def _forge_ack(client, payload: bytes) -> None:
    """Write an ACK frame carrying ``payload`` for ``client``'s CONNECT into its reply channel, as
    any process of the user can (the nonce is in the CONNECT frame, in the well-known channel)."""
    frame = wire.encode(wire.Kind.ACK, 0, client._nonce, payload)
    client._reply.send(frame, 0)


@pytest.mark.parametrize("hello", [[1, 2], {"pid": "x", "start": 0, "max_payload": 10}, {"pid": 1},
                                   {"pid": 1, "start": 2, "max_payload": -5}, 7, {"pid": 2**64 - 1, "start": 0, "max_payload": 100}])
def test_a_forged_ack_is_ignored_while_connecting(service, hello, monkeypatch):
    """The server's ACK is untrusted: a forged one (not a map, fields missing, not ints, out of
    range) made ``connect`` raise ``TypeError``, ``KeyError`` or ``ValueError``. It is dropped and the
    client waits for the real ACK."""
    real = ombm.rpc.client.Client._connect

    def connect_with_forgery(self, well_known, slots, slot_size):
        original_send = well_known.send_anywhere
        sent = []

        def forge_first(frame):  # the first CONNECT is not sent: the forged ACK comes alone
            if not sent:
                _forge_ack(self, msgpack.packb(hello))
            else:
                original_send(frame)
            sent.append(frame)

        well_known.send_anywhere = forge_first
        return real(self, well_known, slots, slot_size)

    monkeypatch.setattr(ombm.rpc.client.Client, "_connect", connect_with_forgery)
    with ombm.rpc.connect(service, timeout=5.0) as client:
        assert client.add(2, 3) == 5


def test_a_well_known_channel_of_another_geometry_is_not_a_service(own_receiver):
    """A segment under a service's well-known name whose slots cannot hold a CONNECT frame (its
    header is anyone's to write) made ``connect`` raise ``AddressError`` (the frame was written
    before the slot's start). The client reads the geometry once and refuses it: not a service."""
    service = f"shared-input-geometry-{os.getpid()}"
    with ombm.create_segment(2 * 64, name=ombm.rpc.slots.well_known_name(service), unit=64):
        with pytest.raises(ombm.ServiceNotFoundError):
            ombm.rpc.connect(service, timeout=0.5)


def _sparse_channel(name: str, size: int, unit: int) -> str:
    """A published segment file of ``size`` data bytes that costs no memory (a sparse file), made
    by hand as any process of the user can."""
    path = ombm.core.namespace.segment_path(name)
    pid, start = ombm.core.namespace.me()
    header = L.SEG_HEADER.pack(L.SEG_MAGIC, L.SEG_VERSION, 1, size, unit, L.FLAG_SIGNAL_ON_WRITE, 0x5EED, pid,
                               L.DIR_CAPACITY, start, 0)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, L.HEADER_SIZE + -(-size // 4096) * 4096)
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    return path


def test_opening_a_channel_allocates_nothing_per_slot():
    """A server opens the channels its clients made: a client naming a sparse channel of 64 MiB
    cut into 64-byte slots made the server allocate a view per slot (about 200 MB here, and a
    server hung, then died of memory, for a channel of a TiB). Views are cut when a signal names
    a slot."""
    name = f"shared-input-sparse-{os.getpid()}"
    path = _sparse_channel(name, 1 << 26, 64)
    try:
        tracemalloc.start()
        try:
            channel = ombm.rpc.slots.SlotChannel.open(name, writable=False)
            allocated = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        try:
            assert channel.slots == 1 << 20
            assert allocated < 1 << 20, f"{allocated} bytes allocated to open a channel"
            assert bytes(channel.slot_view_at(5 * 64 + 3)) == bytes(64)
        finally:
            channel.close()
    finally:
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.parametrize("full", ["request", "reply", "request-after-hold", "tiny-reply-slots"])
def test_a_connect_naming_unusable_channels_does_not_stop_the_server(service, full):
    """A CONNECT naming channels whose directory is full (every entry held by a live process: any
    process of the user can claim them) made the server's open raise ``DirectoryFullError`` out of
    its serving loop: its thread died and nobody was served any more; so did reply slots too small for
    the server's ACK (``ValueError``). Both are bad connects."""
    tag = f"{os.getpid()}-{full}"
    req = ombm.rpc.slots.SlotChannel.create(f"{service}-evil-{tag}-req", slots=4, slot_size=1024)
    rep = ombm.rpc.slots.SlotChannel.create(f"{service}-evil-{tag}-rep", slots=4,
                                            slot_size=64 if full == "tiny-reply-slots" else 1024)
    directory = (rep if full == "reply" else req).segment.directory
    # all entries but one; for "request-after-hold", the server's hold takes the last and its handler finds none
    held = [directory.claim(L.KIND_HOLDER, 0, 0, 0) for _ in range(L.DIR_CAPACITY - 2)]
    if full in ("request", "reply"):
        held.append(directory.claim(L.KIND_HOLDER, 0, 0, 0))
    elif full == "tiny-reply-slots":  # no full directory: reply slots the ACK does not fit (ValueError)
        for entry in held:
            directory.free(entry)
        held = []
    try:
        pid, start = ombm.core.namespace.me()
        hello = msgpack.packb({"req": req.name, "rep": rep.name, "conn": 77, "pid": pid, "start": start})
        well_known = ombm.rpc.slots.SlotChannel.open(ombm.rpc.slots.well_known_name(service), writable=True)
        try:
            well_known.send(wire.encode(wire.Kind.CALL, 0, 0x5EED, hello), 0)
        finally:
            well_known.close()
        with ombm.rpc.connect(service, timeout=5.0) as client:  # served after it
            assert client.add(2, 3) == 5
    finally:
        for entry in held:
            directory.free(entry)
        req.close()
        rep.close()


# ---------------------------------------------------------------- the namespace's record
RESOLVE = r"""
from ombm.core import namespace
print(namespace.folder())
"""


@pytest.mark.parametrize("what", ["named pipe", "folder", "junk"])
def test_a_record_that_is_not_a_file_does_not_stop_a_process_from_starting(procs, shm_root, what):
    """The record naming the user's private folder (``$XDG_RUNTIME_DIR/ombm/folder-<hash>``), which
    every process reads when it starts, replaced by a named pipe (any process of the user can)
    hung every process that started afterwards in its first use of ombm: the record was opened for
    reading, which waits for a writer. It is read only if it is a regular file, without waiting."""
    runtime = tempfile.mkdtemp(prefix="ombmtest-run-")
    try:
        records = os.path.join(runtime, "ombm")
        os.mkdir(records, 0o700)
        digest = hashlib.sha256(os.path.realpath(shm_root).encode()).hexdigest()[:16]
        record = os.path.join(records, f"folder-{digest}")
        if what == "named pipe":
            os.mkfifo(record, 0o600)
        elif what == "folder":
            os.mkdir(record, 0o700)
        else:
            with open(record, "wb") as f:
                f.write(b"ombm-0-../../etc\n\0\xff")
        env = {"OMBM_SHM_DIR": shm_root, "XDG_RUNTIME_DIR": runtime}
        try:
            done = procs.python(RESOLVE, env=env, timeout=CHILD_TIMEOUT_S)
        except Exception as exc:  # subprocess.TimeoutExpired: the child hung (it is killed)
            pytest.fail(f"a process hung reading the record: {exc}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == os.path.join(shm_root, f"ombm-{os.getuid()}")
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


# ---------------------------------------------------------------- names that are not segments
@pytest.mark.parametrize("what", ["folder", "socket", "named pipe"])
def test_opening_a_name_that_is_not_a_segment_file_is_a_format_error(what):
    """Any process of the user can put a folder, a socket or a named pipe under a segment's name:
    opening it raised ``IsADirectoryError`` or ``OSError`` (ENXIO), which no document names (a
    client connecting to a service whose well-known name was a folder got it). It is not an ombm
    segment: ``SegmentFormatError``."""
    name = f"shared-input-not-a-file-{os.getpid()}"
    path = ombm.core.namespace.segment_path(name)
    sock = None
    if what == "folder":
        os.mkdir(path, 0o700)
    elif what == "named pipe":
        os.mkfifo(path, 0o600)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
    try:
        with pytest.raises(ombm.SegmentFormatError):
            ombm.open_segment(name)
    finally:
        if sock is not None:
            sock.close()
        if what == "folder":
            os.rmdir(path)
        else:
            os.unlink(path)


# ---------------------------------------------------------------- channels: a control block of many slots
def _sparse_raw_channel(name: str, slots: int, slot_size: int = 64) -> str:
    """A raw channel of ``slots`` slots that costs no memory (a sparse segment file), published by
    hand as any process of the user can."""
    first = CONTROL_SIZE
    path = _sparse_channel(name, first + slots * slot_size, slot_size)
    pid, start = ombm.core.namespace.me()
    control = CONTROL.pack(CONTROL_MAGIC, CONTROL_VERSION, KIND_RAW, slot_size, slots, first, 0x77, pid, 1, start, 0,
                           0)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.pwrite(fd, control, L.HEADER_SIZE)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(path)
        raise
    return path


def test_a_channel_of_more_slots_than_a_channel_has_is_a_format_error(own_receiver):
    """A reader keeps per-slot state (a raw reader a generation per unit, a stream reader a flag
    per slot), sized by the control block: a channel of 2**22 slots of 64 bytes (a sparse file,
    no memory) made a raw reader allocate 4 million entries, and more slots exhaust memory. A
    channel has at most MAX_SLOTS slots: more is a corrupt control block, and cannot be created."""
    name = f"shared-input-many-slots-{os.getpid()}"
    path = _sparse_raw_channel(name, 1 << 22)
    try:
        with pytest.raises(ombm.SegmentFormatError):
            ombm.RawChannel.open(name).close()
    finally:
        if os.path.exists(path):  # (the reader, its last holder, removed it)
            os.unlink(path)
    with pytest.raises(ValueError):
        ombm.RawChannel.create(unit_size=1, units=MAX_SLOTS + 1)
    with pytest.raises(ValueError):
        ombm.Stream.create(slot_bytes=1, slots=MAX_SLOTS + 1)



# ---------------------------------------------------------------- streams: a frame put back
def test_a_fragment_put_back_between_the_check_and_the_copy_is_not_taken(own_receiver):
    """A stream reader checked the first fragment of a message in its slot, then copied it and
    checked the copy, but kept the fields of the first check: a peer that put an earlier fragment
    back into the slot in between (any process of the user can write the slot; no checksum to
    forge: the frame is the writer's own, of the same length and fragment count) had the reader
    deliver, as a clean message, the earlier fragment's bytes under the later message's header.
    The copy's fields must be the checked ones, else the reader looks again (and the writer's
    repair writes the fragment again)."""
    name = f"shared-input-put-back-{os.getpid()}"
    first, second = b"A" * 300, b"B" * 300  # two fragments each: 272 bytes in a 320-byte slot, then 28
    with ombm.Stream.create(name, slot_bytes=64, slots=2) as writer, ombm.Stream.open(name) as reader:
        writer.send(first)
        assert reader.recv(timeout=5.0) == first
        slot = slice(writer.first, writer.first + writer.slot_size)  # fragment 0's slot, and fragment 2's
        earlier = bytes(writer._buf[slot])
        writer.send(second)
        copy_out = reader._copy_out

        def put_back_then_copy(*args):
            reader._copy_out = copy_out  # once
            writer._buf[slot] = earlier  # the earlier fragment, written back as it was
            return copy_out(*args)

        reader._copy_out = put_back_then_copy
        flushing = threading.Thread(target=writer.flush, args=(10.0,))  # repairs what the peer spoilt
        flushing.start()
        try:
            assert reader.recv(timeout=10.0) == second
        finally:
            flushing.join(30.0)
