"""Timing helpers shared by the benchmarks: rows, medians, spreads, loopback servers."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

# The benchmarks reuse the test suite's loopback HTTP server (stdlib only).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


class Row(TypedDict):
    """One measured figure."""

    bench: str
    case: str
    metric: str
    value: float
    unit: str
    spread: str
    note: str


def row(
    bench: str, case: str, metric: str, value: float, unit: str, spread: str = "", note: str = ""
) -> Row:
    """A result row."""
    return Row(
        bench=bench, case=case, metric=metric, value=value, unit=unit, spread=spread, note=note
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def iqr(values: Sequence[float], scale: float = 1.0, unit: str = "") -> str:
    """The interquartile range, as text."""
    return f"IQR {percentile(values, 25) * scale:.3g}-{percentile(values, 75) * scale:.3g}{unit}"


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
