"""Suite-wide guards: no test may leave shared-memory objects or child processes behind.

* ``_no_leftovers`` (autouse) snapshots ``/dev/shm`` and the per-user folder
  ``/dev/shm/ombm-<uid>/`` before each test. Afterwards it kills (SIGKILL) and
  reaps every child process the test started and fails the test if one was
  still running; then it fails the test if a new ombm object *owned by this
  test* remains (objects of children that just exited get ~2 s to go). It
  never runs ``ombm gc``: a test that kills processes reclaims explicitly and
  asserts that it did.

  Other programs may use the same folder while the suite runs, so ownership
  is decided by the pid an ombm object records in its header: the pytest
  process, any child started during the test (every ``multiprocessing``
  process and ``subprocess.Popen`` is recorded), or a live descendant.

* ``procs``: start children (``procs.fork(fn, ...)``, ``procs.spawn(...)``,
  ``procs.python(code, ...)``) that are daemonic and always killed and joined.

* ``ombm.configure`` settings are restored after every test.

* ``shm_env``: the environment of a test's own ombm processes (a fresh stand-in for /dev/shm and a
  private ``XDG_RUNTIME_DIR``, removed afterwards); ``other_user``: a throwaway Unix user (skipped
  unless root), removed afterwards; ``as_user`` drops a forked child to it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ombm

SHM_ROOT = os.environ.get("OMBM_SHM_DIR", "/dev/shm")  # where ombm keeps its objects (core/namespace.py)
FOLDER = os.path.join(SHM_ROOT, f"ombm-{os.getuid()}")
SRC = os.path.dirname(os.path.dirname(ombm.__file__))  # where the ombm under test lives (installed or src/)
LEFTOVER_GRACE_S = float(os.environ.get("OMBM_TEST_LEFTOVER_GRACE_S", "2.0"))  # for objects of exiting children

# header offsets of the owner pid (see ombm/_layout.py); a guard must not trust the library it guards
_PID_AT = {"seg-": 40, "fifo-": 16}

# ---- recording every child process a test starts
_started: list = []
_orig_mp_start = multiprocessing.process.BaseProcess.start
_orig_popen_init = subprocess.Popen.__init__


def _recording_mp_start(self, *args, **kwargs):
    _orig_mp_start(self, *args, **kwargs)
    _started.append(self)


def _recording_popen_init(self, *args, **kwargs):
    _orig_popen_init(self, *args, **kwargs)
    _started.append(self)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "processes: the test starts real processes (fork, spawn or subprocess)")
    config.addinivalue_line("markers", "fault_injection: the test runs children with OMBM_FAULT_* set")
    multiprocessing.process.BaseProcess.start = _recording_mp_start
    subprocess.Popen.__init__ = _recording_popen_init


def pytest_unconfigure(config: pytest.Config) -> None:
    multiprocessing.process.BaseProcess.start = _orig_mp_start
    subprocess.Popen.__init__ = _orig_popen_init


# ---- shared-memory snapshots
_PID_NAMED = re.compile(r"ombm(\d+)[a-z][0-9a-f]+_")  # iceoryx2's files under the benchmark's prefix (peers.py)


def _listdir(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def _snapshot() -> tuple[set[str], set[str]]:
    top = {f for f in _listdir(SHM_ROOT) if "ombm" in f}
    return top, _listdir(FOLDER)


def _owner_pid(filename: str, folder: str = FOLDER) -> int:
    """The pid recorded in an ombm object's header, or 0 if unknown/unreadable."""
    for prefix, at in _PID_AT.items():
        if filename.startswith(prefix):
            try:
                with open(os.path.join(folder, filename), "rb") as f:
                    f.seek(at)
                    raw = f.read(4)
            except OSError:
                return 0
            return int.from_bytes(raw, "little") if len(raw) == 4 else 0
    return 0


def objects_of(pid: int, folder: str = FOLDER) -> set[str]:
    """The segments and FIFOs of ``folder`` whose header names ``pid`` as their owner."""
    return {f for f in _listdir(folder) if _owner_pid(f, folder) == pid}


def _descendants(root: int) -> set[int]:
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
                parent_of[int(entry)] = int(data[data.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def _pid_of(p) -> int | None:
    try:
        return p.pid
    except ValueError:  # a multiprocessing.Process closed by its owner (close() after join)
        return None


def _our_pids(children) -> set[int]:
    pids = {os.getpid()} | _descendants(os.getpid())
    pids |= {pid for p in children if (pid := _pid_of(p))}
    return pids


def _leftovers(before: tuple[set[str], set[str]], children) -> list[str]:
    top_before, folder_before = before
    top_now, folder_now = _snapshot()
    left = [
        os.path.join(SHM_ROOT, f)
        for f in sorted(top_now - top_before)
        if not os.path.isdir(os.path.join(SHM_ROOT, f))  # other per-user/per-run folders are not ours to judge
    ]
    named = {f: int(m.group(1)) for f in left if (m := _PID_NAMED.match(os.path.basename(f)))}
    if named:  # the benchmark's iceoryx2 objects name their creator: another run's (a benchmark beside us) are not ours
        ours = _our_pids(children)
        left = [f for f in left if f not in named or named[f] in ours]
    new = sorted(folder_now - folder_before)
    if new:
        ours = _our_pids(children)
        left += [os.path.join(FOLDER, f) for f in new if _owner_pid(f) in ours]
    return left


# ---- child processes
def _alive(p) -> bool:
    if isinstance(p, subprocess.Popen):
        return p.poll() is None
    try:
        return p.is_alive()
    except (AssertionError, ValueError):  # not our child (started elsewhere) or closed
        return False


def _kill_and_reap(children) -> list[str]:
    survivors = []
    for p in children:
        if not _alive(p):
            continue
        survivors.append(f"pid {p.pid} ({getattr(p, 'name', None) or getattr(p, 'args', '?')})")
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in children:
        try:
            if isinstance(p, subprocess.Popen):
                p.wait(timeout=10)
            else:
                p.join(10)
        except (AssertionError, ValueError, subprocess.TimeoutExpired):
            pass
    return survivors


@pytest.fixture(autouse=True)
def _no_leftovers():
    before = _snapshot()
    config_mod = sys.modules.get("ombm.core.config")
    saved_settings = config_mod.SETTINGS if config_mod is not None else None
    del _started[:]
    yield
    children = list(_started)
    del _started[:]
    survivors = _kill_and_reap(children)
    config_mod = sys.modules.get("ombm.core.config")
    if config_mod is not None:
        config_mod.SETTINGS = saved_settings if saved_settings is not None else config_mod._from_env()
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    left = _leftovers(before, children)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _leftovers(before, children)
    problems = []
    if survivors:
        problems.append("child processes still running after the test (killed): " + ", ".join(survivors))
    if left:
        problems.append("shared-memory objects left behind: " + ", ".join(left))
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


class Procs:
    """Starts children that are daemonic and always killed + joined after the test."""

    def __init__(self) -> None:
        self.children: list = []

    def _start(self, method: str, target, args) -> multiprocessing.process.BaseProcess:
        p = multiprocessing.get_context(method).Process(target=target, args=args, daemon=True)
        p.start()
        self.children.append(p)
        return p

    def fork(self, target, *args):
        return self._start("fork", target, args)

    def spawn(self, target, *args):
        return self._start("spawn", target, args)

    def pipe(self, method: str = "fork"):
        return multiprocessing.get_context(method).Pipe()

    def python(self, code: str, *, env: dict | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``python -c code`` with ombm importable; returns the completed process."""
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
        for key in [k for k in full_env if k.startswith("OMBM_FAULT_")]:
            del full_env[key]
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout
        )

    def close(self) -> None:
        # a child that finished its work may still be running its exit cleanup (closing its
        # receivers): give all of them up to 1 s together to exit by themselves, then kill
        deadline = time.monotonic() + 1.0
        for p in self.children:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if isinstance(p, subprocess.Popen):
                    p.wait(timeout=left)
                else:
                    p.join(left)
            except (AssertionError, ValueError, subprocess.TimeoutExpired):
                pass
        _kill_and_reap(self.children)


@pytest.fixture
def procs():
    group = Procs()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def own_receiver():
    """Close the calling (main) thread's ombm receiver after a test that used sig_wait in it."""
    yield
    signals = sys.modules.get("ombm.core.signals")
    receiver = getattr(signals._local, "receiver", None) if signals is not None else None
    if receiver is not None:
        receiver.close()


# ---- another user, and a folder of our own (tests/integration/test_core_isolation.py, tests/hostile/)
@pytest.fixture
def other_user():
    """(uid, gid) of a throwaway system user, deleted afterwards (skips unless root with useradd)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd/userdel")
    name = f"ombmtest{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=60)
    try:
        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        done = subprocess.run(["userdel", name], capture_output=True, timeout=60)
        if done.returncode != 0:
            subprocess.run(["userdel", "-f", name], capture_output=True, timeout=60)


@pytest.fixture
def shm_env():
    """The environment of this test's ombm processes: a stand-in for /dev/shm (mode 1777) and a
    private XDG_RUNTIME_DIR, both removed afterwards."""
    root = tempfile.mkdtemp(prefix="ombmtest-root-", dir="/dev/shm")
    runtime = tempfile.mkdtemp(prefix="ombmtest-run-")
    os.chmod(root, 0o1777)
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    for key in [k for k in env if k.startswith("OMBM_")]:
        del env[key]
    env.update(OMBM_SHM_DIR=root, XDG_RUNTIME_DIR=runtime)
    try:
        yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


def as_user(uid: int, gid: int) -> None:
    """In a forked child: become the other user for good."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    assert os.getuid() == uid and os.geteuid() == uid
