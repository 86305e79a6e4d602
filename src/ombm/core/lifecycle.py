"""Cleanup at process exit: nothing of ours stays in /dev/shm after a normal exit.

Modules register closers with :func:`on_exit`; they run (once, in
registration order) from ``atexit`` and also from multiprocessing's exit
finalizers, because a multiprocessing child leaves through ``os._exit`` and
skips ``atexit``. :func:`arm` is called whenever this process creates a shared
object, so a forked child arms its own hook.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Callable

_closers: list[Callable[[], None]] = []
_armed_pid = 0


def on_exit(fn: Callable[[], None]) -> None:
    _closers.append(fn)


def run() -> None:
    for fn in _closers:
        try:
            fn()
        except Exception:  # exiting: a failed cleanup must not hide the others
            pass


def arm() -> None:
    """Make sure this process's exit runs :func:`run` (idempotent per process)."""
    global _armed_pid
    pid = os.getpid()
    if _armed_pid == pid:
        return
    _armed_pid = pid
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, run, exitpriority=100)


atexit.register(run)
