"""Every number the simulator starts from, with where it comes from (paper §5, §6).

This module owns the model's inputs and nothing else: the kernel software
components of Table 1, the RPC components of Table 2, the memory-system
transfer times of §6, the ParaDiGM geometry of §3.1.2 and §5, and the values
the paper does not give, each with the assumption and the reason for it.
The reference values the paper *reports* (Table 4, the §6 attribution) are
kept apart in :data:`PAPER`, only to be printed beside the simulated ones.

Rules:

* A time is in microseconds at the speed of the 25 MHz MC68040 (``cpu_speed``
  1.0). Kernel and library software scales as ``time_us / cpu_speed``;
  bus and link transfers do not scale.
* :class:`MachineParams` is frozen; a scenario derives a variant with
  :func:`dataclasses.replace`.
* Every :class:`MachineParams` field carries its source (``_param``) and
  ``PROVENANCE`` names that of every workload constant, so the report can print
  one table of all of them (:func:`parameter_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple, TypedDict, TypeVar

_T = TypeVar("_T")
_PAPER = "paper"
_ASSUMED = "assumed"


class Component(NamedTuple):
    """One kernel or library software step: time (µs at 25 MHz) and 68040 instructions."""

    name: str
    time_us: float
    instructions: int


def _table(*rows: tuple[str, float, int]) -> dict[str, Component]:
    return {name: Component(name, t, n) for name, t, n in rows}


# Table 1 (§5.1): the kernel components of one signal, as (µs, instructions) in the software-only
# and the hardware-supported column; None where a column has no such step. The software column's
# "invalidate L1 cache lines" shows "–" for time: 7 instructions that take no measurable time.
_TABLE1: tuple[tuple[str, tuple[float, int] | None, tuple[float, int] | None], ...] = (
    ("sender system call", (3, 13), None),
    ("virtual-to-physical mapping", (3, 16), None),
    ("determine receiving processors", (4, 23), None),
    ("insert in kernel queue", (6, 55), None),
    ("generate interrupt", (1, 4), None),
    ("remove from kernel queue", (6, 45), None),
    ("get physical address from FIFO", None, (2, 11)),
    ("physical-to-virtual mapping", (1, 9), (1, 9)),
    ("invalidate L1 cache lines", (0, 7), (1, 7)),
    ("check if kernel is receiver", (1, 4), (1, 4)),
    ("signal function scheduling", (6, 37), (6, 37)),
    ("return to user code", (4, 25), (4, 25)),
    ("user-level state save/restore", (1, 11), (1, 11)),
)
TABLE1_SOFTWARE = _table(*((name, *software) for name, software, _ in _TABLE1 if software is not None))
TABLE1_HARDWARE = _table(*((name, *hardware) for name, _, hardware in _TABLE1 if hardware is not None))

# Table 2 (§5.2): RPC library components per request or reply, 32-byte message.
# "trigger signal" is not a software step here: with signal-on-write it is the
# last store and its signal bus transaction, which the model simulates.
TABLE2 = _table(  # the paper gives no instruction counts here
    ("map from object to channel", 1, 0),
    ("marshal 32-bytes", 2, 0),
    ("trigger signal", 1, 0),
    ("map from channel to object", 1, 0),
    ("unmarshal 32-bytes", 2, 0),
)


def _param(default: _T, source: str, section: str, note: str) -> _T:
    """A :class:`MachineParams` field: its default, and where it comes from (see ``PROVENANCE``)."""
    return field(default=default, metadata={"provenance": (source, section, note)})


@dataclass(frozen=True)
class MachineParams:
    """The ParaDiGM machine the simulator builds (§3.1.2, Fig. 3, Fig. 4, §6)."""

    cpu_speed: float = _param(1.0, _PAPER, "§5, §6", "1.0 = the 25 MHz MC68040; Figs 7-8 vary it")
    cpu_mhz: float = _param(25.0, _PAPER, "§5", "MC68040 clock; converts the RTL's cycles to µs")
    line_bytes: int = _param(32, _PAPER, "§6", "a cache line, the message of Figs 6-8")
    l2_line_us: float = _param(1.12, _PAPER, "§6", "measured L1 fill: one 32-byte line over the L2 bus")
    l3_line_us: float = _param(3.36, _PAPER, "§6", "estimated hardware-supported L2 fill: a line over the L3 bus")
    hop_line_us: float = _param(6.1, _PAPER, "§6", "one fiber-optic hop for 32 bytes")
    l2_address_fraction: float = _param(1.0, _ASSUMED, "calibrated", "an address-only L2-bus transaction "
                                        "(invalidate, request, signal) costs a whole bus transaction: the 1.12 µs "
                                        "fill is L2-controller latency, not data beats")
    lower_address_fraction: float = _param(0.7, _ASSUMED, "calibrated", "an address-only packet on the L3 bus or a "
                                           "fiber hop costs 0.7 of a line: header and latency dominate a 32-byte "
                                           "payload; fitted to the §6 attribution")
    lock_bus_transactions: int = _param(3, _ASSUMED, "calibrated", "kernel-queue lock: TAS is a locked read and "
                                        "write, release a write; the 68040 performs these on the bus, bypassing "
                                        "its cache")
    processors_per_board: int = _param(4, _PAPER, "§3.1.2, §5", "four 68040s share one L2")
    boards_per_cluster: int = _param(4, _ASSUMED, "geometry", "§5's machine has two boards on one L3; four per L3 "
                                     "cluster lets scenario (g) reach 64 processors; clusters are joined in a "
                                     "line by fiber, so hops = cluster distance")
    fifo_entries: int = _param(128, _PAPER, "§3.1.2", "per-processor signal FIFO; a full FIFO drops the signal")
    l3_software_consistency: bool = _param(False, _PAPER, "§5, §5.2", "True on ParaDiGM as built (Table 4 L3 "
                                           "rows), False on §6's future machine")
    sw_l3_fault_us: float = _param(205.0, _ASSUMED, "calibrated", "kernel handling of one conventional coherence "
                                   "miss between boards under software L3 consistency; fitted to Soft MBM (L3) "
                                   "1860 µs (§5.2: 'partially-optimized')")
    sw_l3_signal_us: float = _param(36.0, _ASSUMED, "calibrated", "kernel work to make a message unit signalled "
                                    "from another board consistent; fitted to Opt. MBM (L3) 127 µs")
    rtl_entries: int = _param(0, _PAPER, "§3.1.3", "reverse TLB size; 0 = no RTL (the measured system); 4-8 proposed")
    rtl_hit_cycles: int = _param(7, _PAPER, "§3.1.3", "signal to user handler in under 7 cycles on an RTL hit")
    rtl_load_us: float = _param(1.0, _ASSUMED, "extension", "kernel loads the missing RTL entry after the standard "
                                "path: about one mapping step")

    def cpu_us(self, time_us: float) -> float:
        """Time of a software step of ``time_us`` (at 25 MHz) on this machine's processors."""
        return time_us / self.cpu_speed


PARADIGM = MachineParams(l3_software_consistency=True)
"""ParaDiGM as built and measured in §5: L3 consistency is kernel software."""

FUTURE = MachineParams()
"""§6's simulated machine: hardware write-invalidate (or message mode) at every level."""

FIG7_L2_LINE_US = 0.3
FIG78_HOP_US = 2.0
FIG78_L3_LINE_US = 0.9

# Workload constants of the exploration scenarios (f)-(h).
FIFO_SENDERS = 4
FIFO_BURSTS_PER_SENDER = 5
FIFO_MEAN_GAP_US = 3000.0
ALLOCATOR_US = 2.0
ALLOCATOR_LINES = 2
THINK_US = 50.0
ALLOCATIONS_PER_CLIENT = 8
RTL_SIGNALS = 200
RTL_GAP_US = 60.0
HANDLER_US = 4.0

# name: (source, section or reason, note) of every workload constant; a MachineParams field
# carries its own (``_param``)
PROVENANCE: dict[str, tuple[str, str, str]] = {
    "FIG7_L2_LINE_US": (_PAPER, "§6, Fig. 7", "L2 bus line time in Figs 7-8, not scaled with CPU speed"),
    "FIG78_HOP_US": (_PAPER, "§6, Figs 7-8", "a 32-byte message over a fiber link"),
    "FIG78_L3_LINE_US": (_ASSUMED, "Fig. 8",
                         "L3 bus in Figs 7-8 kept at ParaDiGM's 3:1 ratio to the L2 bus (3.36/1.12)"),
    "FIFO_SENDERS": (_ASSUMED, "scenario (f)", "three on the receiver's board, one on the next"),
    "FIFO_BURSTS_PER_SENDER": (_ASSUMED, "scenario (f)", "bursts each sender writes"),
    "FIFO_MEAN_GAP_US": (_ASSUMED, "scenario (f)", "mean of the exponential gap before each burst"),
    "ALLOCATOR_US": (_ASSUMED, "scenario (g)", "allocator code: ~50 68040 instructions"),
    "ALLOCATOR_LINES": (_ASSUMED, "scenario (g)", "allocator data lines besides the lock+queue line"),
    "THINK_US": (_ASSUMED, "scenario (g)", "mean of the exponential work on each allocated item"),
    "ALLOCATIONS_PER_CLIENT": (_ASSUMED, "scenario (g)", "allocations each processor performs"),
    "RTL_SIGNALS": (_ASSUMED, "scenario (h)", "signals per run"),
    "RTL_GAP_US": (_ASSUMED, "scenario (h)", "spacing of signals: no queueing, pure dispatch latency"),
    "HANDLER_US": (_ASSUMED, "scenarios (f), (h)", "user signal handler body"),
}

_COMPONENT_NOTES = {
    "trigger signal": "not a software step: the configuration's signal path is simulated instead",
    "marshal 32-bytes": "charged per 32-byte line (a copy); a null message costs none",
    "unmarshal 32-bytes": "charged per 32-byte line, after the line is read",
    "invalidate L1 cache lines": "charged per line of the message",
}


class PaperValues(TypedDict):
    table1: dict[str, tuple[int, int]]  # "software"/"hardware" -> (µs, instructions)
    table4: dict[str, tuple[int, int, int]]  # row -> (null RPC, 32 bytes, 1 KB) µs
    fig6_share: dict[int, dict[str, float]]  # levels -> share of the saving per optimization


# Values the paper reports; printed beside the simulated ones, never used by the model.
PAPER: PaperValues = {
    "table1": {"software": (36, 249), "hardware": (16, 104)},
    "table4": {
        "opt_l2": (44, 47, 215),
        "opt_l3": (120, 127, 502),
        "soft_l2": (121, 124, 268),
        "soft_l3": (1857, 1860, 12580),
    },
    "fig6_share": {
        2: {"signals": 0.79, "consistency": 0.06, "signal_on_write": 0.15},
        6: {"signals": 0.56, "consistency": 0.37, "signal_on_write": 0.07},
    },
}


def parameter_table() -> list[tuple[str, str, str, str, str]]:
    """(name, value, source, section/reason, note) for every model input."""
    defaults = MachineParams()
    table = [(f.name, repr(getattr(defaults, f.name)), *f.metadata["provenance"]) for f in fields(MachineParams)]
    table += [(name, repr(globals()[name]), *PROVENANCE[name]) for name in PROVENANCE]
    for label, section, column in (("Table 1 software", "§5.1 Table 1", TABLE1_SOFTWARE),
                                   ("Table 1 hardware", "§5.1 Table 1", TABLE1_HARDWARE),
                                   ("Table 2", "§5.2 Table 2", TABLE2)):
        for c in column.values():
            value = f"{c.time_us:g} µs" + (f", {c.instructions} instr" if c.instructions else "")
            table.append((f"{label}: {c.name}", value, _PAPER, section, _COMPONENT_NOTES.get(c.name, "")))
    return table
