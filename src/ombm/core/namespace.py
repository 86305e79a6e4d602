"""Where ombm's shared objects live, what they may be called, and who is alive.

Owns three rules (DESIGN.md §2-§3):

* every object is a file in the per-user folder ``/dev/shm/ombm-<uid>``
  (created 0700; files and sockets 0600), so ``ls /dev/shm`` shows one
  ``ombm`` entry per user and nothing of another user can be opened, or
  reached by a socket, by mistake or on purpose. The folder is *verified* on
  every process's first use (a real folder, not a symlink, owned by us, mode
  exactly 0700) and re-checked (one ``lstat``) at every lookup; when someone
  else took the name ("squatted"), every process of the user uses the same
  private fallback folder instead (see :func:`folder`);
* names are validated: 1-200 characters of ``[A-Za-z0-9._-]``, not starting
  with a dot (so no ``/``, ``..``, NUL or hidden files);
* liveness of a process is its pid *plus its start time* from /proc, never the
  pid alone, so a recycled pid does not resurrect a dead receiver.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
import tempfile
import threading
import warnings

from ombm import _layout
from ombm.errors import FolderSquattedWarning

_NAME_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*")
SHM_ROOT = os.environ.get("OMBM_SHM_DIR", "/dev/shm")
SUN_PATH_MAX = 107  # sun_path is 108 bytes with its NUL

_lock = threading.RLock()
_verified: tuple[str, int, int] | None = None  # (folder, st_dev, st_ino) checked in this process
_dir_fd = -1  # an O_PATH descriptor of the verified folder, opened only for socket paths too long to name


def _check_dir(path: str, *, create: bool) -> tuple[str, os.stat_result | None]:
    """("", stat) if ``path`` is a folder of ours with mode 0700 (created so if absent and ``create``),
    else (what is wrong with it, None). Opened with O_NOFOLLOW|O_DIRECTORY and judged by ``fstat`` of
    that descriptor, so a symlink or a swapped entry is never followed."""
    uid = os.getuid()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link", None
        if e.errno == errno.ENOTDIR:
            return "is not a folder", None
        if e.errno == errno.ENOENT:
            return "does not exist", None
        return f"cannot be opened ({os.strerror(e.errno or 0)})", None
    try:
        st = os.fstat(fd)
        if st.st_uid != uid:
            return f"belongs to uid {st.st_uid}, not {uid}", None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            return f"has mode {mode:04o}: other users may have put objects in it", None
        if mode != 0o700:  # ours, closed to others, but missing owner bits (a strict umask): fix
            os.fchmod(fd, 0o700)
            st = os.fstat(fd)
        return "", st
    finally:
        os.close(fd)


def folder() -> str:
    """This user's folder of ombm objects, verified on first use and re-checked (one ``lstat``) on each.

    Normally ``<SHM_ROOT>/ombm-<uid>`` (``SHM_ROOT`` is ``/dev/shm`` or ``$OMBM_SHM_DIR``), created
    0700. If that name is *squatted* (a symlink, a file, a folder of another user, or one open to
    other users) ombm does not use it: it creates a private folder ``<SHM_ROOT>/ombm-<uid>-<random>``
    (``mkdtemp``: unpredictable, 0700), records its name in a place only this user can write
    (``$XDG_RUNTIME_DIR/ombm/`` or ``~/.cache/ombm/``), and issues a :class:`FolderSquattedWarning`.
    A recorded private folder that is still valid takes precedence, so every process of the user
    finds the same folder even if the squatter removes or restores the squat meanwhile.
    """
    v = _verified
    if v is not None:
        path, dev, ino = v
        try:
            now = os.lstat(path)
            if (stat.S_ISDIR(now.st_mode) and now.st_uid == os.getuid() and stat.S_IMODE(now.st_mode) == 0o700
                    and now.st_dev == dev and now.st_ino == ino):
                return path
        except FileNotFoundError:
            pass
    with _lock:
        return _resolve()


def _set_verified(path: str, st: os.stat_result) -> str:
    global _verified, _dir_fd
    if _dir_fd >= 0 and _verified != (path, st.st_dev, st.st_ino):
        os.close(_dir_fd)  # a descriptor of the folder we used before
        _dir_fd = -1
    _verified = (path, st.st_dev, st.st_ino)
    return path


def _resolve() -> str:
    uid = os.getuid()
    standard = os.path.join(SHM_ROOT, f"ombm-{uid}")
    records = _record_dir(create=False)
    record = os.path.join(records, _record_name()) if records else ""
    if record:
        private = _read_record(record)
        if private:
            problem, st = _check_dir(private, create=False)
            if st is not None:
                why, _ = _check_dir(standard, create=False)
                _warn(standard, why or "was squatted when the private folder was made", private)
                return _set_verified(private, st)
    problem, st = _check_dir(standard, create=True)
    if st is not None:
        return _set_verified(standard, st)
    records = _record_dir(create=True)
    record = os.path.join(records, _record_name()) if records else ""
    if not record:
        private = tempfile.mkdtemp(prefix=f"ombm-{uid}-", dir=SHM_ROOT)
        _warn(standard, problem + "; no private place to record the fallback (set XDG_RUNTIME_DIR), "
              "so other processes will not find it", private)
    else:
        lock_fd = os.open(records, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one fallback for all processes of the user
            private = _read_record(record)
            if not private or _check_dir(private, create=False)[1] is None:
                private = tempfile.mkdtemp(prefix=f"ombm-{uid}-", dir=SHM_ROOT)
                tmp = f"{record}.{os.getpid()}.tmp"
                try:  # whatever is there (a named pipe would block an open for writing) is replaced
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w") as f:
                    f.write(os.path.basename(private) + "\n")
                os.replace(tmp, record)
        finally:
            os.close(lock_fd)  # releases the lock
        _warn(standard, problem, private)
    problem, st = _check_dir(private, create=False)
    if st is None:
        raise PermissionError(f"ombm's private folder {private} {problem}")
    return _set_verified(private, st)


def _warn(standard: str, problem: str, private: str) -> None:
    warnings.warn(FolderSquattedWarning(f"{standard} {problem}; ombm uses the private folder {private}"),
                  stacklevel=2)


def _record_name() -> str:
    root = os.path.realpath(SHM_ROOT)
    return f"folder-{hashlib.sha256(root.encode()).hexdigest()[:16]}"


def _read_record(record: str) -> str:
    """The private folder a record names (only ``ombm-<uid>-<random>`` under SHM_ROOT), or ""."""
    try:  # never waiting: a named pipe there would block a plain open for reading
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o022:
            return ""
        name = os.pread(fd, 256, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)
    if not re.fullmatch(rf"ombm-{os.getuid()}-[A-Za-z0-9_]+", name):
        return ""
    return os.path.join(SHM_ROOT, name)


def _private_base(path: str) -> bool:
    """A folder only this user can write: ours, a real folder, not writable by group or others."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not stat.S_IMODE(st.st_mode) & 0o022


def _record_dir(*, create: bool) -> str:
    """``$XDG_RUNTIME_DIR/ombm`` or ``~/.cache/ombm`` (verified; created 0700 if ``create``), or ""."""
    bases = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        bases.append(runtime)
    home = os.path.expanduser("~")
    if os.path.isabs(home) and _private_base(home):
        cache = os.path.join(home, ".cache")
        if create:
            try:
                os.mkdir(cache, 0o700)
            except OSError:
                pass
        bases.append(cache)
    for base in bases:
        if not _private_base(base):
            continue
        sub = os.path.join(base, "ombm")
        try:
            if _check_dir(sub, create=create)[1] is not None:
                return sub
        except OSError:
            continue
    return ""


def socket_address(name: str) -> str:
    """The address of socket ``name`` in the verified folder, for ``bind``/``sendto``.

    The folder's path when it fits ``sun_path``, else the path through an O_PATH descriptor of
    the verified folder (``/proc/self/fd/N/name``), which is also immune to a swapped folder."""
    global _dir_fd
    path = os.path.join(folder(), name)
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    with _lock:
        if _dir_fd < 0:
            _dir_fd = os.open(folder(), os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{_dir_fd}/{name}"


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid segment or service name, else raise."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not 0 < len(name) <= _layout.MAX_NAME or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: use 1-{_layout.MAX_NAME} characters of letters, digits, '.', '_', '-', "
            "not starting with '.'"
        )
    return name


def segment_path(name: str) -> str:
    return os.path.join(folder(), f"seg-{name}")


def fifo_path(token: int) -> str:
    return os.path.join(folder(), f"fifo-{token:016x}")


def socket_name(token: int) -> str:
    """The name of receiver ``token``'s kernel-path socket or doorbell in the folder."""
    return f"sock-{token:016x}"


def socket_path(token: int) -> str:
    return os.path.join(folder(), socket_name(token))


def new_name() -> str:
    """A fresh name for an anonymous segment."""
    return f"anon-{secrets.token_hex(8)}"


def new_token() -> int:
    """A random non-zero 64-bit identity (segment id, FIFO token)."""
    return secrets.randbits(63) | 1


def start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot, or 0 if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    # the command name is parenthesised and may contain spaces: split after the last ')'
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


def is_alive(pid: int, start: int) -> bool:
    """True if the process ``pid`` that started at ``start`` still runs (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0] != b"Z" and int(fields[19]) == start


class _Me:
    """This process's identity, refreshed after fork."""

    pid = 0
    start = 0

    @classmethod
    def refresh(cls) -> None:
        cls.pid = os.getpid()
        cls.start = start_time(cls.pid)


_Me.refresh()
os.register_at_fork(after_in_child=_Me.refresh)


def me() -> tuple[int, int]:
    """(pid, start time) of the calling process."""
    return _Me.pid, _Me.start
