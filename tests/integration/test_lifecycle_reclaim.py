"""Half-made segments and dead servers' names (issue 11, item 6). Red team: a creator killed before
its header was complete left a file ``ombm gc`` never removed, and the name stayed taken; a server
killed by SIGKILL could not be restarted under its name while a client kept retrying ``connect()``.

A creator holds an exclusive ``flock`` on the file while it builds it: ``ombm gc`` and
``create_segment`` never touch a locked file, and reclaim an unlocked half-made one (its creator
died). A service's well-known channel whose creator (the server) died is taken over by the next
``Server`` of that name even while clients hold it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import ombm
from ombm import _layout as L
from ombm.core import admin, namespace
from rpc_helpers import Calc, Children, child, expect, serve_forever, service_name, wait_until

pytestmark = pytest.mark.processes


def _stall_creation(conn, name: str, where: str) -> None:
    """A creator that stops for good inside create_segment (its lock held), at ``where``."""
    real_ftruncate, real_pwrite = os.ftruncate, os.pwrite

    def stop_here() -> None:
        conn.send(("inside", os.getpid()))
        time.sleep(120)

    def ftruncate(fd, length):
        if where == "empty":
            stop_here()
        return real_ftruncate(fd, length)

    def pwrite(fd, data, offset):
        if where == "no magic" and bytes(data) == L.SEG_MAGIC:
            stop_here()
        return real_pwrite(fd, data, offset)

    os.ftruncate, os.pwrite = ftruncate, pwrite  # this forked child's os module only
    ombm.create_segment(4096, name=name)


@pytest.mark.parametrize("where", ["empty", "no magic"])
def test_a_creator_killed_mid_create_leaves_a_file_gc_removes_but_never_while_it_builds(procs, where):
    name = f"life-half-{os.getpid()}-{namespace.new_token() & 0xFFFFFF:06x}"
    path = namespace.segment_path(name)
    mine, theirs = procs.pipe()
    p = procs.fork(_stall_creation, theirs, name, where)
    assert mine.poll(30) and mine.recv()[0] == "inside"
    assert os.path.exists(path)
    # a live creator is still building it: neither gc nor a create of the same name touches it
    assert admin.gc().segments_removed == 0
    with pytest.raises(ombm.SegmentExistsError):
        ombm.create_segment(4096, name=name)
    assert os.path.exists(path)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    # its creator is dead: gc recognizes the half-made file and frees the name
    assert admin.gc().segments_removed == 1
    assert not os.path.exists(path)
    with ombm.create_segment(4096, name=name) as seg:
        assert seg.size == 4096


def test_a_half_made_file_of_a_dead_creator_does_not_keep_its_name(procs):
    name = f"life-dead-{os.getpid()}-{namespace.new_token() & 0xFFFFFF:06x}"
    path = namespace.segment_path(name)
    for content in (b"", bytes(100), bytes(L.HEADER_SIZE + 4096)):  # as a creator killed at each step leaves it
        with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as f:
            f.write(content)
        with ombm.create_segment(4096, name=name) as seg:  # create reclaims it at once
            assert seg.bind().size == 4096
        assert not os.path.exists(path)


def test_gc_leaves_foreign_files_alone():
    path = namespace.segment_path(f"life-foreign-{os.getpid()}")
    with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as f:
        f.write(b"not ours")
    try:
        admin.gc()
        assert os.path.exists(path)
    finally:
        os.unlink(path)


@child
def _connect_until_served(conn, name: str) -> None:
    """A process that holds the dead server's well-known channel (as a client waiting for its answer
    did, before connect() learnt to see a dead server at once) while it waits, in connect(), for the
    service to be served again."""
    from ombm.rpc.slots import WELL_KNOWN_SLOT_SIZE, SlotChannel

    dead = SlotChannel.open(f"rpc-{name}", writable=True, slot_size=WELL_KNOWN_SLOT_SIZE)
    conn.send(("retrying", os.getpid()))
    try:
        with ombm.rpc.connect(name, timeout=2.0, wait=60.0) as cli:
            conn.send(("result", (cli.add(20, 22), cli.add(1, 2))))
    finally:
        dead.close()


def _holders(channel: str) -> int:
    try:
        return admin.describe(channel).holders
    except OSError:
        return 0


def test_a_dead_servers_name_is_served_again_at_once_while_a_client_retries():
    name = service_name("restart")
    well_known = f"rpc-{name}"
    with Children() as children:
        server, server_conn = children.spawn(serve_forever, name, "calc")
        expect(server_conn, "ready")
        os.kill(server.pid, signal.SIGKILL)
        server.join(10)
        client, client_conn = children.spawn(_connect_until_served, name)
        expect(client_conn, "retrying")
        # the client holds the dead server's well-known channel, and is inside connect()
        assert wait_until(lambda: _holders(well_known) >= 1, 30)
        srv = ombm.rpc.Server(name, Calc()).start()  # no SegmentExistsError
        try:
            assert expect(client_conn, "result") == (42, 3)
            with ombm.rpc.connect(name, timeout=5.0) as cli:
                assert cli.add(2, 3) == 5
        finally:
            srv.stop()
        client.join(10)
    admin.gc()  # the killed server's FIFO
