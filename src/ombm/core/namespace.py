"""Where ombm's shared objects live, what they may be called, and who is alive.

Owns three rules (DESIGN.md §2-§3):

* every object is a file in the per-user folder ``/dev/shm/ombm-<uid>``
  (created 0700; files 0600), so ``ls /dev/shm`` shows one ``ombm`` entry per
  user and nothing of another user can be opened by mistake;
* names are validated: 1-200 characters of ``[A-Za-z0-9._-]``, not starting
  with a dot (so no ``/``, ``..``, NUL or hidden files);
* liveness of a process is its pid *plus its start time* from /proc, never the
  pid alone, so a recycled pid does not resurrect a dead receiver.
"""

from __future__ import annotations

import os
import re
import secrets
import stat

from ombm import _layout

_NAME_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*")
SHM_ROOT = os.environ.get("OMBM_SHM_DIR", "/dev/shm")


def folder() -> str:
    """The per-user folder, created on first use with mode 0700."""
    path = os.path.join(SHM_ROOT, f"ombm-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{path} exists but is not a folder owned by uid {os.getuid()}") from None
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    return path


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
