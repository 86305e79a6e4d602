"""The report's figures as PNG files (matplotlib, Agg canvas), paper values beside simulated ones.

One function per figure; each takes the plain data a scenario returned and a
path, draws and saves. Figures are drawn on their own Agg canvas, without
pyplot, so nothing here changes matplotlib's global backend or state.
Nothing here computes a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, overload

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ombm.sim.explore import FifoLoss, RtlRow, Shipping
from ombm.sim.params import PAPER
from ombm.sim.scenarios import Attribution, Fig5Row, SpeedupRow

_SHARES = (("signals", "address-valued signals", "#4c72b0"),
           ("consistency", "message consistency", "#dd8452"),
           ("signal_on_write", "signal-on-write", "#55a868"))
_LEVEL_NAMES = {2: "L2", 3: "L3", 4: "1 hop", 5: "2 hops", 6: "3 hops"}


@overload
def _figure(columns: Literal[1] = 1, width: float = 6) -> tuple[Figure, Axes]: ...
@overload
def _figure(columns: Literal[2], width: float = 6) -> tuple[Figure, tuple[Axes, Axes]]: ...
def _figure(columns: int = 1, width: float = 6) -> tuple[Figure, Axes | tuple[Axes, Axes]]:
    """A figure of one row of ``columns`` axes (one: its Axes; two: a pair)."""
    fig = Figure(figsize=(width, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns)
    return fig, axes if columns == 1 else tuple(axes)


def _log2_axis(ax: Axes, ticks: Sequence[float], xlabel: str, ylabel: str, title: str, *,
               from_zero: bool = True, legend_fontsize: float | None = None) -> None:
    """The rest of a plot against a power-of-two x axis: labels, a light grid, the legend."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if from_zero:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fig5(rows: list[Fig5Row], path: Path) -> None:
    levels = sorted({r["level"] for r in rows})
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, ax = _figure(width=7)
    width = 0.8 / len(configs)
    for i, config in enumerate(configs):
        totals = [next(r["total"] for r in rows if r["level"] == lv and r["config"] == config)
                  for lv in levels]
        xs = [j + i * width for j in range(len(levels))]
        bars = ax.bar(xs, totals, width, label=config)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))],
                  [_LEVEL_NAMES.get(lv, str(lv)) for lv in levels])
    ax.set_ylabel("bus + link transactions per message")
    ax.set_title("Fig. 5: transactions to deliver one 32-byte message (simulated)")
    ax.legend(fontsize=8)
    _save(fig, path)


def fig6(rows: list[Attribution], path: Path) -> None:
    fig, (left, right) = _figure(2, width=10)
    levels = [r["levels"] for r in rows]
    left.plot(levels, [r["speedup"] for r in rows], "o-", label="simulated")
    left.set_xticks(levels, [f"{lv}\n{_LEVEL_NAMES[lv]}" for lv in levels])
    left.set_xlabel("memory levels traversed")
    left.set_ylabel("speedup (software-only / optimized)")
    left.set_title("Fig. 6: speedup of a 32-byte transfer (25 MHz)")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend()
    bars: list[tuple[str, Mapping[str, float]]] = [(f"{_LEVEL_NAMES[r['levels']]}\nsim", r["share"]) for r in rows]
    for level, share in PAPER["fig6_share"].items():
        index = next(i for i, (name, _) in enumerate(bars) if name.startswith(_LEVEL_NAMES[level]))
        bars.insert(index + 1, (f"{_LEVEL_NAMES[level]}\npaper", share))
    bottom = [0.0] * len(bars)
    for key, label, color in _SHARES:
        values = [100 * share[key] for _, share in bars]
        right.bar(range(len(bars)), values, bottom=bottom, color=color, label=label,
                  edgecolor="white")
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, (name, _) in enumerate(bars):
        if name.endswith("paper"):
            right.bar(i, 100, fill=False, edgecolor="black", linewidth=1.5)
    right.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=7)
    right.set_ylabel("share of the saving (%)")
    right.set_title("attribution (outlined: paper §6)")
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    _save(fig, path)


def speedup_vs_cpu(rows: list[SpeedupRow], title: str, path: Path) -> None:
    fig, ax = _figure()
    speeds = [r["cpu_speed"] for r in rows]
    ax.plot(speeds, [r["speedup"] for r in rows], "o-", label="simulated")
    _log2_axis(ax, speeds, "processor speed (× 25 MHz 68040)", "speedup (software-only / optimized)", title)
    _save(fig, path)


def fifo_loss(rows: list[FifoLoss], path: Path) -> None:
    fig, ax = _figure()
    for burst in sorted({r["burst"] for r in rows}):
        pts = [r for r in rows if r["burst"] == burst]
        ax.plot([r["fifo_entries"] for r in pts], [100 * r["loss"] for r in pts], "o-",
                label=f"bursts of {burst} signals")
    ax.axvline(128, color="grey", linestyle=":", label="ParaDiGM's 128 entries")
    _log2_axis(ax, sorted({r["fifo_entries"] for r in rows}), "signal FIFO entries", "signals lost (%)",
               "(f) signal loss vs FIFO size, 4 bursty senders", from_zero=False, legend_fontsize=8)
    _save(fig, path)


def shipping(rows: list[Shipping], path: Path) -> None:
    fig, (left, right) = _figure(2, width=10)
    for mode, marker in (("data", "o-"), ("function", "s-")):
        pts = [r for r in rows if r["mode"] == mode]
        ns = [r["n"] for r in pts]
        left.plot(ns, [r["throughput_per_ms"] for r in pts], marker, label=f"{mode} shipping")
        right.plot(ns, [r["transactions_per_allocation"] for r in pts], marker, label=f"{mode} shipping")
    left.set_title("(g) work-queue allocations per ms")
    right.set_title("(g) bus + link transactions per allocation")
    for ax in (left, right):
        ax.set_xlabel("processors N")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def rtl(rows: list[RtlRow], path: Path) -> None:
    fig, ax = _figure()
    for entries in sorted({r["rtl_entries"] for r in rows}):
        pts = [r for r in rows if r["rtl_entries"] == entries]
        label = "no RTL (kernel path)" if entries == 0 else f"{entries}-entry RTL"
        ax.plot([r["regions"] for r in pts], [r["mean_latency_us"] for r in pts], "o-", label=label)
    _log2_axis(ax, sorted({r["regions"] for r in rows}), "signalled regions in use", "signal to handler (µs)",
               "(h) reverse TLB: signal-to-handler latency at L2", legend_fontsize=8)
    _save(fig, path)
