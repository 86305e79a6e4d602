"""No SIGBUS from a peer (issue 11, item 2; docs/design.md, "What a hostile peer can and cannot do").

A page of a shared file mapping past the file's end raises SIGBUS when touched. Before, a client
that shrank its own request channel (``ftruncate``) and signalled killed the server, and a
bystander that shrank a Stream's segment killed its reader. Now every mapping of a shared file is
guarded (``core/mapping.py``): the fault replaces the mapping with zero pages, the channel on it
ends with ``ChannelBrokenError``, and the process lives. Every object is reserved when it is made
(``posix_fallocate``), so a full ``/dev/shm`` is ``SharedMemoryFullError`` at creation.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ombm
from ombm import _layout as L
from ombm.core.mapping import map_file
from conftest import SRC

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "integration"))  # the RPC test helpers
from rpc_helpers import Children, add_many, expect, join, send_signal, serve_forever, service_name  # noqa: E402

pytestmark = pytest.mark.processes


@pytest.fixture
def shm_file():
    path = f"/dev/shm/ombm-test-sigbus-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)
        os.unlink(path)


@pytest.mark.parametrize("writable", [False, True])
def test_a_file_shrunk_under_a_mapping_breaks_it_instead_of_killing_us(shm_file, writable):
    os.ftruncate(shm_file, 3 * 4096)
    os.pwrite(shm_file, b"hello", 0)
    before = ombm.stats()["mappings_broken"]
    mm = map_file(shm_file, 3 * 4096, writable=writable)
    try:
        assert bytes(mm[:5]) == b"hello" and not mm.broken
        os.ftruncate(shm_file, 4096)  # pages 1 and 2 are gone
        assert bytes(mm[:5]) == b"hello"  # page 0 is still the file's
        assert mm[2 * 4096] == 0  # the SIGBUS: the whole mapping is zero pages now
        assert mm.broken
        assert bytes(mm[:5]) == bytes(5)
        if writable:
            mm[0] = 1  # reaches nobody
            assert os.pread(shm_file, 1, 0) == b"h"
        assert ombm.stats()["mappings_broken"] == before + 1
    finally:
        mm.close()


def test_a_sigbus_anywhere_else_still_kills_the_process(procs):
    """The guard absorbs faults in its own mappings only; another mapping's SIGBUS kills as before
    (through faulthandler's report when it is on, even if it was turned on after ombm's import)."""
    for enable in ("", "faulthandler.enable()"):
        code = textwrap.dedent(f"""
            import faulthandler, mmap, os
            import ombm
            from ombm.core.mapping import map_file
            {enable}
            path = '/dev/shm/ombm-test-sigbus-elsewhere-{os.getpid()}'
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
            os.unlink(path)
            os.ftruncate(fd, 8192)
            guarded = map_file(fd, 4096, writable=True)
            plain = mmap.mmap(fd, 8192)
            os.ftruncate(fd, 0)
            guarded[0] = 1
            print('guarded', guarded.broken, flush=True)
            plain[0]
            print('survived', flush=True)
        """)
        done = procs.python(code)
        assert done.stdout.split() == ["guarded", "True"], done.stderr
        assert done.returncode == -signal.SIGBUS, done.stderr
        assert ("Bus error" in done.stderr) == bool(enable)


def _truncate_data(segment: ombm.Segment) -> None:
    """What a peer can do with any segment of its user: shrink the file to its header."""
    os.truncate(segment.path, L.HEADER_SIZE)


@pytest.mark.parametrize("channel", ["request", "reply"])
def test_a_client_that_shrinks_its_channels_does_not_kill_the_server(channel):
    name = service_name("sigbus")
    with Children() as children:
        server, sconn = children.spawn(serve_forever, name, "calc")
        expect(sconn, "ready")
        hostile = ombm.rpc.connect(name, timeout=2.0)
        try:
            assert hostile.add(1, 2) == 3
            request, reply = hostile._request, hostile._reply
            if channel == "request":
                # shrink, then signal a slot: the server reads a page that is gone
                _truncate_data(request.segment)
                for slot in range(request.slots):
                    ombm.signal(request.region.address + slot * request.slot_size)
            else:
                # shrink, then call: the server writes its reply into a page that is gone
                _truncate_data(reply.segment)
            with pytest.raises((ombm.ChannelBrokenError, ombm.CallTimeout)):
                hostile.add(2, 3)
        finally:
            hostile.close()
        good, gconn = children.spawn(add_many, name, 7, 3000)  # outlives the server's reap interval
        expect(gconn, "ready")
        result = expect(gconn, "result")
        assert result["wrong"] == [] and join(good) == 0
        assert server.is_alive(), f"the server died (exit code {server.exitcode})"
        send_signal(server, signal.SIGTERM)
        stats = expect(sconn, "result")
        assert join(server) == 0
    if channel == "request":
        assert stats["ombm"]["mappings_broken"] >= 1
    assert stats["stats"]["calls"] >= 3001


def _stream_writer(conn, name: str) -> None:
    stream = ombm.Stream.create(name, slot_bytes=4096, slots=8)
    conn.send(("ready", stream.region.segment.path))
    outcome = "none"
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            stream.send(b"x" * 3000, timeout=30.0)
    except ombm.ChannelBrokenError as exc:
        outcome = type(exc).__name__
    finally:
        stream.close(flush_timeout=0)
    conn.send(("result", {"outcome": outcome, "broken": ombm.stats()["mappings_broken"]}))


def test_a_bystander_that_shrinks_a_stream_ends_it_with_an_error(procs):
    name = f"sigbus-stream-{os.getpid()}"
    parent, child = procs.pipe("fork")
    writer = procs.fork(_stream_writer, child, name)
    kind, path = parent.recv()
    assert kind == "ready"
    reader = ombm.Stream.open(name, timeout=10.0)
    try:
        for _ in range(20):
            assert reader.recv(timeout=30.0) == b"x" * 3000
        os.truncate(path, L.HEADER_SIZE)  # the bystander
        with pytest.raises(ombm.ChannelBrokenError, match="shrank"):
            for _ in range(10_000):
                reader.recv(timeout=30.0)
        assert ombm.stats()["mappings_broken"] >= 1
    finally:
        reader.close()
    assert parent.poll(60), "the writer did not end"
    kind, result = parent.recv()
    writer.join(30)
    assert writer.exitcode == 0, f"the writer died (exit code {writer.exitcode})"
    assert result["outcome"] == "ChannelBrokenError"


_FULL_SHM = """
import errno, os, sys
import ombm
from ombm.core import segment
from ombm.core.fifo import Fifo
root = os.environ["OMBM_SHM_DIR"]
free = lambda: os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
seg = ombm.create_segment(1 << 20, name="reserved")
region = seg.bind()
# fill the filesystem to the last page
with open(os.path.join(root, "filler"), "wb") as f:
    try:
        while True:
            f.write(bytes(65536)); f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
print("full", free(), flush=True)
region.write(0, b"y" * (1 << 20))  # its pages were reserved at create: no SIGBUS
print("wrote", region.broken, flush=True)
try:
    ombm.create_segment(1 << 20)
except ombm.SharedMemoryFullError as exc:
    print("early", exc.errno == errno.ENOSPC, flush=True)
segment._shm_free_bytes = lambda: 1 << 40  # past the early answer: the reservation must refuse it
try:
    ombm.create_segment(1 << 20, name="refused")
except ombm.SharedMemoryFullError as exc:
    print("reserve", exc.errno == errno.ENOSPC, flush=True)
try:
    Fifo(4096)
except ombm.SharedMemoryFullError:
    print("fifo", flush=True)
print("left", sorted(os.listdir(os.path.join(root, f"ombm-{os.getuid()}"))), flush=True)
region.unbind()
seg.release()
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to mount a tmpfs")
def test_a_full_shm_is_an_error_at_create_not_a_sigbus_later(tmp_path):
    """In a private mount namespace, a 4 MiB tmpfs stands for a full /dev/shm (gone with the process)."""
    root = tmp_path / "shm"
    root.mkdir()
    env = dict(os.environ, OMBM_SHM_DIR=str(root), PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env = {k: v for k, v in env.items() if not k.startswith("OMBM_FAULT_")}
    script = tmp_path / "full.py"
    script.write_text(_FULL_SHM)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$1" "$2"', str(root), sys.executable, str(script)],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("full ")
    assert lines[1:5] == ["wrote False", "early True", "reserve True", "fifo"], done.stdout
    assert lines[5] == "left ['seg-reserved']", done.stdout  # nothing half-made is left
