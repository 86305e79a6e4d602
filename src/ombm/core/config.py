"""Process-wide settings of the signal machinery (DESIGN.md §3 "Waiting").

* ``wait``: ``"adaptive"`` (default: spin for a learnt budget of at most
  ``spin_us``, yielding, then sleep on the futex), ``"spin"`` (never sleep;
  lowest latency, burns the core) or ``"sleep"`` (no spinning);
* ``spin_us``: the adaptive spin cap (default 50 µs, env ``OMBM_SPIN_US``);
* ``signal_path``: ``"memory"`` (signal FIFOs in shared memory) or
  ``"kernel"`` (the paper's software-only MBM: every signal is a system call
  into the receiver's kernel queue; env ``OMBM_SIGNAL_PATH``). It applies to
  receivers created after the change;
* ``fifo_capacity``: entries per receiver FIFO (default 128, the paper's);
* ``load_aware``: whether a wait knows the load (default True, env ``OMBM_LOAD_AWARE``
  ``1``/``0``): with more runnable tasks than CPUs it spins at most 10 µs and only while such
  spins win, and while its peer last ran on its own CPU it yields at every check (docs/design.md,
  "Waiting that knows the load"). False: it spins for the budget alone. Process-wide, at once.

Environment variables are read at import; :func:`configure` changes them.

One more, for tests only and not part of :class:`Settings`: ``OMBM_LANES=0``
turns off both native RPC lanes (``LANES``: the client's call lane and the
server's lane; ``1``, the default, leaves them on), so every call takes the
sans-I/O protocol's Python path. The differential test of the lanes
(``tests/integration/test_rpc_lanes_differential.py``) runs the same calls
both ways. Read by clients and servers when they connect and accept.
"""

from __future__ import annotations

import enum
import os

from ombm import _layout, _native  # noqa: F401  (_layout first: importing it checks that the native module is built)
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

WaitMode = Literal["adaptive", "spin", "sleep"]
SignalPath = Literal["memory", "kernel"]
WAIT_MODES: tuple[WaitMode, ...] = ("adaptive", "spin", "sleep")
SIGNAL_PATHS: tuple[SignalPath, ...] = ("memory", "kernel")

_Choice = TypeVar("_Choice", bound=str)


@dataclass(frozen=True)
class Settings:
    wait: WaitMode = "adaptive"
    spin_us: float = 50.0
    signal_path: SignalPath = "memory"
    fifo_capacity: int = 128
    load_aware: bool = True


class _Unchanged(enum.Enum):
    """The default of :func:`configure`'s parameters: keep the current value."""

    UNCHANGED = "unchanged"

    def __repr__(self) -> str:
        return "<unchanged>"


UNCHANGED: Final = _Unchanged.UNCHANGED


def _one_of(name: str, value: object, choices: tuple[_Choice, ...]) -> _Choice:
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"{name} must be one of {choices}, not {value!r}")


def _validate(s: Settings) -> Settings:
    _one_of("wait", s.wait, WAIT_MODES)
    _one_of("signal_path", s.signal_path, SIGNAL_PATHS)
    if isinstance(s.spin_us, bool) or not isinstance(s.spin_us, (int, float)) or not 0 <= s.spin_us <= 1e6:
        raise ValueError("spin_us must be a number of microseconds between 0 and 1e6")
    if isinstance(s.fifo_capacity, bool) or not isinstance(s.fifo_capacity, int):
        raise TypeError("fifo_capacity must be an int")
    if s.fifo_capacity < 2 or s.fifo_capacity > 1 << 20 or s.fifo_capacity & (s.fifo_capacity - 1):
        raise ValueError("fifo_capacity must be a power of two between 2 and 2**20")
    if not isinstance(s.load_aware, bool):
        raise TypeError("load_aware must be a bool")
    return s


def _from_env() -> Settings:
    env = os.environ
    default = Settings()
    spin_us = float(env["OMBM_SPIN_US"]) if "OMBM_SPIN_US" in env else default.spin_us
    wait = _one_of("wait", env["OMBM_WAIT"], WAIT_MODES) if "OMBM_WAIT" in env else default.wait
    signal_path = (_one_of("signal_path", env["OMBM_SIGNAL_PATH"], SIGNAL_PATHS) if "OMBM_SIGNAL_PATH" in env
                   else default.signal_path)
    raw = env.get("OMBM_LOAD_AWARE", "1")
    if raw not in ("0", "1"):
        raise ValueError(f"OMBM_LOAD_AWARE={raw!r}: 1 (waits know the load, the default) or 0 (off)")
    return _validate(Settings(wait, spin_us, signal_path, default.fifo_capacity, raw == "1"))


SETTINGS = _from_env()
_native.set_load_aware(SETTINGS.load_aware)


def _lanes_from_env() -> bool:
    raw = os.environ.get("OMBM_LANES", "1")
    if raw not in ("0", "1"):
        raise ValueError(f"OMBM_LANES={raw!r}: 1 (the native RPC lanes on, the default) or 0 (off, for tests)")
    return raw == "1"


LANES = _lanes_from_env()


def configure(
    *,
    wait: WaitMode | _Unchanged = UNCHANGED,
    spin_us: float | _Unchanged = UNCHANGED,
    signal_path: SignalPath | _Unchanged = UNCHANGED,
    fifo_capacity: int | _Unchanged = UNCHANGED,
    load_aware: bool | _Unchanged = UNCHANGED,
) -> Settings:
    """Change process-wide settings (those not given stay as they are); returns the new :class:`Settings`.

    A bad value raises ``ValueError`` (``TypeError`` for a ``fifo_capacity`` that is not an int or a
    ``load_aware`` that is not a bool) and changes nothing; an unknown keyword raises ``TypeError``."""
    global SETTINGS
    now = SETTINGS
    SETTINGS = _validate(Settings(
        wait=now.wait if wait is UNCHANGED else wait,
        spin_us=now.spin_us if spin_us is UNCHANGED else spin_us,
        signal_path=now.signal_path if signal_path is UNCHANGED else signal_path,
        fifo_capacity=now.fifo_capacity if fifo_capacity is UNCHANGED else fifo_capacity,
        load_aware=now.load_aware if load_aware is UNCHANGED else load_aware,
    ))
    _native.set_load_aware(SETTINGS.load_aware)
    return SETTINGS


def settings() -> Settings:
    return SETTINGS
