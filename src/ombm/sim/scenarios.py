"""The paper's results, reproduced by running the model (Tables 1 and 4, Figs 5-8).

Each scenario builds machines, runs the simpy model and returns plain data
(dicts, lists, numbers) for the report, the CLI and the tests:

(a) :func:`table1`  kernel components of one signal at L2, both implementations (§5.1);
(b) :func:`fig5`    bus transactions to deliver one message, conventional vs message mode (§3.2.3);
(c) :func:`table4`  Opt./Soft MBM RPC at L2 and L3 on ParaDiGM as built (§5.2);
(d) :func:`fig6`    speedup of a 32-byte transfer vs levels traversed, and its attribution (§6);
(e) :func:`fig7`, :func:`fig8`  speedup vs processor speed, through an L2 and over a fiber link (§6).

The §6 case is a 32-byte message sent to another processor whose null signal
handler reads it: latency from the first store to the end of that read.
**Attribution**: the configurations add the optimizations in §6's order
(signals, then consistency, then signal-on-write); the share of each is the
time it saves when added, divided by the total saving of all three.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import TypedDict

from ombm.sim.machine import Machine, Process, placement
from ombm.sim.mbm import CONSISTENCY, OPTIMIZED, SEQUENCE, SIGNALS, SOFTWARE, Config, Messenger
from ombm.sim.params import FIG7_L2_LINE_US, FIG78_HOP_US, FIG78_L3_LINE_US, FUTURE, PARADIGM, TABLE1_HARDWARE, TABLE1_SOFTWARE, MachineParams
from ombm.sim.rpc import rpc

class Table1Part(TypedDict):
    """One column of Table 1 (software or hardware)."""

    components: list[tuple[str, float, int]]  # (component, time µs, instructions)
    total_us: float
    total_instructions: int


class Fig5Row(TypedDict):
    level: int
    config: str
    latency_us: float
    transactions: dict[str, int]  # "stage kind" -> count
    total: int


class Attribution(TypedDict):
    levels: int
    latency_us: dict[str, float]  # configuration key -> latency
    speedup: float
    share: dict[str, float]  # "signals", "consistency", "signal_on_write" -> share of the saving


class SpeedupRow(TypedDict):
    cpu_speed: float
    speedup: float
    software_us: float
    optimized_us: float


SHARE_KEYS = {SIGNALS.key: "signals", CONSISTENCY.key: "consistency", OPTIMIZED.key: "signal_on_write"}
CPU_SPEEDS = (1, 2, 4, 8, 16, 32)


def transfer(params: MachineParams, config: Config, level: int) -> tuple[float, Machine]:
    """One 32-byte message to a processor ``level`` away; its latency and the machine after."""
    sender, receiver = placement(params, level)
    machine = Machine(params, receiver + 1)
    messenger = Messenger(machine, config)
    channel = messenger.open(sender, receiver)
    done: list[float] = []

    def handler() -> Process:
        signalled = yield from messenger.receive(receiver)
        yield from messenger.read(receiver, signalled)
        done.append(machine.env.now)

    machine.env.process(messenger.send(channel))
    machine.env.process(handler())
    machine.env.run()
    return done[0], machine


def table1(params: MachineParams = PARADIGM) -> dict[str, Table1Part]:
    """(a) Per-component kernel time and instructions of one signal, from the processors' traces."""
    result: dict[str, Table1Part] = {}
    for key, config, column in (("software", SOFTWARE, TABLE1_SOFTWARE),
                                ("hardware", OPTIMIZED, TABLE1_HARDWARE)):
        _, machine = transfer(params, config, 2)
        time_us: dict[str, float] = defaultdict(float)
        instructions: dict[str, int] = defaultdict(int)
        for processor in machine.processors:
            for step in processor.trace:
                if step.name in column:
                    time_us[step.name] += step.time_us
                    instructions[step.name] += step.instructions
        rows = [(name, time_us[name], instructions[name]) for name in column]
        result[key] = {
            "components": rows,
            "total_us": sum(t for _, t, _ in rows),
            "total_instructions": sum(n for _, _, n in rows),
        }
    return result


def fig5(params: MachineParams = FUTURE, levels: tuple[int, ...] = (2, 3, 4)) -> list[Fig5Row]:
    """(b) Transactions per stage to deliver one message, per configuration and level."""
    rows: list[Fig5Row] = []
    for level in levels:
        for config in SEQUENCE:
            latency, machine = transfer(params, config, level)
            rows.append({
                "level": level,
                "config": config.key,
                "latency_us": latency,
                "transactions": {f"{stage} {kind}": n for (stage, kind), n in sorted(machine.counts.items())},
                "total": sum(machine.counts.values()),
            })
    return rows


TABLE4_ROWS = {"opt_l2": (OPTIMIZED, 2), "soft_l2": (SOFTWARE, 2),
               "opt_l3": (OPTIMIZED, 3), "soft_l3": (SOFTWARE, 3)}
TABLE4_CALLS = {"null_us": (0, 0), "send32_us": (32, 32), "send1k_us": (1024, 0)}


def table4(params: MachineParams = PARADIGM) -> dict[str, dict[str, float]]:
    """(c) RPC latency (µs) for Opt./Soft MBM at L2 and L3, on ParaDiGM as built."""
    return {
        row: {col: rpc(params, config, level, req, rep)
              for col, (req, rep) in TABLE4_CALLS.items()}
        for row, (config, level) in TABLE4_ROWS.items()
    }


def attribution(params: MachineParams, level: int) -> Attribution:
    """Latency of every configuration at ``level``, the speedup and the shares of the saving."""
    latency = {config.key: transfer(params, config, level)[0] for config in SEQUENCE}
    saving = latency[SOFTWARE.key] - latency[OPTIMIZED.key]
    share = {
        SHARE_KEYS[config.key]: (latency[before.key] - latency[config.key]) / saving
        for before, config in zip(SEQUENCE, SEQUENCE[1:])
    }
    return {
        "levels": level,
        "latency_us": latency,
        "speedup": latency[SOFTWARE.key] / latency[OPTIMIZED.key],
        "share": share,
    }


def fig6(params: MachineParams = FUTURE, levels: tuple[int, ...] = (2, 3, 4, 5, 6)) -> list[Attribution]:
    """(d) Speedup of a 32-byte transfer vs memory levels traversed (25 MHz)."""
    return [attribution(params, level) for level in levels]


def _speedup_curve(base: MachineParams, level: int, speeds: tuple[float, ...]) -> list[SpeedupRow]:
    rows: list[SpeedupRow] = []
    for speed in speeds:
        params = replace(base, cpu_speed=speed)
        soft = transfer(params, SOFTWARE, level)[0]
        opt = transfer(params, OPTIMIZED, level)[0]
        rows.append({"cpu_speed": speed, "speedup": soft / opt, "software_us": soft, "optimized_us": opt})
    return rows


def fig7(speeds: tuple[float, ...] = CPU_SPEEDS) -> list[SpeedupRow]:
    """(e) Speedup vs processor speed through a shared L2 (L2 bus 0.3 µs per line)."""
    return _speedup_curve(replace(FUTURE, l2_line_us=FIG7_L2_LINE_US), 2, speeds)


def fig8(speeds: tuple[float, ...] = CPU_SPEEDS) -> list[SpeedupRow]:
    """(e) Speedup vs processor speed over one fiber link (2 µs per 32 bytes)."""
    base = replace(FUTURE, l2_line_us=FIG7_L2_LINE_US, l3_line_us=FIG78_L3_LINE_US,
                   hop_line_us=FIG78_HOP_US)
    return _speedup_curve(base, 4, speeds)
