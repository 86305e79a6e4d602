"""Process-wide settings of the signal machinery (DESIGN.md §3 "Waiting").

* ``wait``: ``"adaptive"`` (default: spin for a learnt budget of at most
  ``spin_us``, yielding, then sleep on the futex), ``"spin"`` (never sleep;
  lowest latency, burns the core) or ``"sleep"`` (no spinning);
* ``spin_us``: the adaptive spin cap (default 50 µs, env ``OMBM_SPIN_US``);
* ``signal_path``: ``"memory"`` (signal FIFOs in shared memory) or
  ``"kernel"`` (the paper's software-only MBM: every signal is a system call
  into the receiver's kernel queue; env ``OMBM_SIGNAL_PATH``). It applies to
  receivers created after the change;
* ``fifo_capacity``: entries per receiver FIFO (default 128, the paper's).

Environment variables are read at import; :func:`configure` changes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

WAIT_MODES = ("adaptive", "spin", "sleep")
SIGNAL_PATHS = ("memory", "kernel")


@dataclass(frozen=True)
class Settings:
    wait: str = "adaptive"
    spin_us: float = 50.0
    signal_path: str = "memory"
    fifo_capacity: int = 128


def _validate(s: Settings) -> Settings:
    if s.wait not in WAIT_MODES:
        raise ValueError(f"wait must be one of {WAIT_MODES}, not {s.wait!r}")
    if s.signal_path not in SIGNAL_PATHS:
        raise ValueError(f"signal_path must be one of {SIGNAL_PATHS}, not {s.signal_path!r}")
    if isinstance(s.spin_us, bool) or not isinstance(s.spin_us, (int, float)) or not 0 <= s.spin_us <= 1e6:
        raise ValueError("spin_us must be a number of microseconds between 0 and 1e6")
    if isinstance(s.fifo_capacity, bool) or not isinstance(s.fifo_capacity, int):
        raise TypeError("fifo_capacity must be an int")
    if s.fifo_capacity < 2 or s.fifo_capacity > 1 << 20 or s.fifo_capacity & (s.fifo_capacity - 1):
        raise ValueError("fifo_capacity must be a power of two between 2 and 2**20")
    return s


def _from_env() -> Settings:
    s = Settings()
    if "OMBM_SPIN_US" in os.environ:
        s = replace(s, spin_us=float(os.environ["OMBM_SPIN_US"]))
    if "OMBM_SIGNAL_PATH" in os.environ:
        s = replace(s, signal_path=os.environ["OMBM_SIGNAL_PATH"])
    if "OMBM_WAIT" in os.environ:
        s = replace(s, wait=os.environ["OMBM_WAIT"])
    return _validate(s)


SETTINGS = _from_env()


def configure(**changes: object) -> Settings:
    """Change process-wide settings; returns the new :class:`Settings`. Unknown keys raise TypeError."""
    global SETTINGS
    SETTINGS = _validate(replace(SETTINGS, **changes))  # type: ignore[arg-type]
    return SETTINGS


def settings() -> Settings:
    return SETTINGS
