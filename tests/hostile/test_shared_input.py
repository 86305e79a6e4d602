"""Shared memory and the per-user folder are hostile input (issue 11, item 1), beyond the FIFOs.

Each test here pins one defect the audit or the hostile-peer suite (test_hostile_peers.py) found:
a value another process of the user can write (a segment's header or directory, an RPC slot, a
signal FIFO's entry, a file under an object's name) drove an address, a loop, an allocation or a
blocking call, and a process crashed, hung, or raised an exception no ombm document names.
Each test failed before its fix.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

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
report = admin.gc()
listed = admin.list_segments()
print(report.fifos_removed, report.segments_removed, sorted((s.name, s.error) for s in listed))
print(sorted(os.listdir(folder)))
"""


def test_gc_and_ls_skip_files_that_are_not_regular(procs, shm_root):
    """A named pipe called ``fifo-*`` hung ``ombm gc`` for good (it opened it for reading, which
    waits for a writer), and one called ``seg-*`` made it raise ``OSError`` (ESPIPE): whatever is
    not a regular file is neither read nor removed."""
    try:
        done = procs.python(NOT_REGULAR, env={"OMBM_SHM_DIR": shm_root}, timeout=CHILD_TIMEOUT_S)
    except Exception as exc:  # subprocess.TimeoutExpired: the child hung (it is killed)
        pytest.fail(f"ombm gc hung on a named pipe: {exc}")
    assert done.returncode == 0, done.stderr
    counts, names = done.stdout.splitlines()
    assert counts.startswith("0 0 ")
    assert "'folder', 'unreadable or truncated'" in counts and "'pipe', 'unreadable or truncated'" in counts
    assert names == str(sorted(["fifo-00000000000000ab", "seg-folder", "seg-pipe"]))
