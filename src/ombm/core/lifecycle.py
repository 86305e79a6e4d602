"""Cleanup at process exit: nothing of ours stays in /dev/shm after a normal exit or a SIGTERM.

Modules register closers with :func:`on_exit`; they run (in registration order)
from ``atexit`` and also from multiprocessing's exit finalizers, because a
multiprocessing child leaves through ``os._exit`` and skips ``atexit``.
:func:`arm` is called whenever this process creates a shared object, so a
forked child arms its own hook.

SIGTERM (``docker stop``, ``Process.terminate()``, systemd) kills a process whose
disposition is the default without running ``atexit``. So :func:`arm`, in the
main thread, installs a handler for SIGTERM **only while its disposition is the
default**: it runs the closers, restores the default and kills the process with
SIGTERM again, so the process still dies by the signal its parent sent. A
handler the user installed (before or after) is never replaced: it decides how
the process ends, and an ordinary exit (``sys.exit``) runs the closers through
``atexit``. SIGINT needs nothing: Python's default handler raises
``KeyboardInterrupt``, whose exit runs ``atexit``.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType
from typing import Callable

_closers: list[Callable[[], None]] = []
_armed_pid = 0
_sigterm_pid = 0  # the process whose SIGTERM disposition was looked at


def on_exit(fn: Callable[[], None]) -> None:
    _closers.append(fn)


def run() -> None:
    for fn in _closers:
        try:
            fn()
        except Exception:  # exiting: a failed cleanup must not hide the others
            pass


def arm() -> None:
    """Make sure this process's exit, and a SIGTERM nobody handles, run :func:`run`
    (idempotent per process; the SIGTERM part is taken at the first call from the main thread)."""
    global _armed_pid
    pid = os.getpid()
    if _armed_pid != pid:
        _armed_pid = pid
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            mp_util.Finalize(None, run, exitpriority=100)
    if _sigterm_pid != pid:
        _take_default_sigterm()


def _take_default_sigterm() -> None:
    """Handle SIGTERM with :func:`_on_sigterm` if nobody handles it (main thread only)."""
    global _sigterm_pid
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works in the main thread only; a later arm() there takes it
    _sigterm_pid = os.getpid()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Release what this process holds, then die by SIGTERM as the default would have."""
    try:
        run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


atexit.register(run)
