"""Statistics and markdown for the benchmark suites (DESIGN.md §5).

Owns how a measurement becomes text: percentiles of latency samples, the formatting of µs,
ratios and rates, markdown tables, the "targets" table (target, measured, met?), the machine
description, and the replacement of one suite's section in ``docs/benchmarks.md`` between
``<!-- bench:<suite> -->`` and ``<!-- /bench:<suite> -->`` markers, so that running one suite
keeps the others' sections. Nothing here measures, and nothing rounds a number in anyone's
favour: a target is met only if the measured value, as measured, satisfies it.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


# --- statistics -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) quantile, nearest rank on the sorted samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def median(samples: Sequence[float]) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class Latency:
    """A summary of per-iteration latencies in µs."""

    median_us: float
    p99_us: float
    count: int

    @classmethod
    def of(cls, samples_us: Sequence[float]) -> Latency:
        return cls(median(samples_us), percentile(samples_us, 0.99), len(samples_us))


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else math.nan


def ratio(slower: float, faster: float) -> float:
    """How many times ``faster`` is faster than ``slower`` (nan if either is missing)."""
    if not (slower > 0 and faster > 0) or math.isinf(slower) or math.isinf(faster):
        return math.nan
    return slower / faster


# --- formatting -------------------------------------------------------------------------------


def us(value: float) -> str:
    """µs with a precision that suits the magnitude."""
    if value is None or math.isnan(value):
        return "—"
    if value < 10:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def times(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.1f}×"


def rate(per_s: float) -> str:
    if per_s is None or math.isnan(per_s):
        return "—"
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    return f"{per_s / 1e3:.0f} k/s"


def percent(value: float, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f} %"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one of l/r/c per column (default: first l, rest r)."""
    headers = [str(h) for h in headers]
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


# --- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One goal from an issue: ``measured`` against ``limit`` (``at_most`` or at least)."""

    name: str
    limit: float
    measured: float
    unit: str = ""
    at_most: bool = True
    note: str = ""

    @property
    def met(self) -> bool | None:
        """True/False, or None when the measurement is missing (a peer was skipped)."""
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def cells(self) -> list[str]:
        sign = "≤" if self.at_most else "≥"
        verdict = {True: "yes", False: "**no**", None: "n/a"}[self.met]
        return [self.name, f"{sign} {_number(self.limit)}{self.unit}", f"{_number(self.measured)}{self.unit}",
                verdict, self.note]


def _number(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    if float(value).is_integer() or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"  # enough digits that a value just short of its limit does not print as it


def targets_table(targets: Sequence[Target]) -> str:
    return md_table(["target", "goal", "measured", "met?", "how"], [t.cells() for t in targets], "lrrcl")


# --- the document ------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "kernel": platform.release(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def machine_line(info: dict[str, str]) -> str:
    return (f"{info['cpus']} × {info['cpu']}, Linux {info['kernel']}, {info['python']}, "
            f"measured {info['date']}")


TITLE = "# ombm benchmarks"


def replace_section(document: str, key: str, body: str) -> str:
    """``document`` with the section ``key`` (between its markers) replaced by ``body``.

    A missing section is appended; the title is added if the document has none.
    """
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    if not document.strip():
        document = TITLE + "\n"
    return document.rstrip() + "\n\n" + block + "\n"


def order_sections(document: str, keys: Sequence[str]) -> str:
    """Put the known sections in ``keys`` order after whatever precedes the first of them."""
    blocks = {}
    for key in keys:
        match = re.search(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->", document, re.S)
        if match:
            blocks[key] = match.group(0)
    if not blocks:
        return document
    first = min(document.index(b) for b in blocks.values())
    rest = document[first:]
    for block in blocks.values():
        rest = rest.replace(block, "")
    tail = rest.strip()
    body = "\n\n".join(blocks[k] for k in keys if k in blocks)
    return document[:first].rstrip() + "\n\n" + body + ("\n\n" + tail if tail else "") + "\n"
