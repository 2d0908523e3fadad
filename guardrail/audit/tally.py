"""The raw counts the statistics engines collect (:mod:`~guardrail.audit.stats`).

Both engines, the Python scan and DuckDB (:mod:`~guardrail.audit.duck`), fill a
:class:`Tallies`; :func:`guardrail.audit.stats.finish` derives the report from
it, so each figure is derived once.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ANSWERED_ACTIONS",
    "BASE_BUCKET_MS",
    "LATENCY_BIN_EDGES_US",
    "LATENCY_NAMES",
    "PERCENTILES",
    "UNNECESSARY_REFUSAL",
    "BucketTally",
    "Quantiles",
    "Tallies",
    "histogram",
    "latency_bin",
    "micros",
    "nearest_rank",
]

UNNECESSARY_REFUSAL = "unnecessary_refusal"
ANSWERED_ACTIONS = ("allow", "flag")
"""Final actions under which the app's user got the upstream's answer."""
PERCENTILES = (50, 95, 99)
BASE_BUCKET_MS = 15 * 60 * 1000
"""Without ``--bucket``, records are counted per 15 minutes, then merged to a size
that suits the log's span (:func:`default_bucket`)."""

LATENCY_NAMES = ("guard.prompt", "guard.response", "guard", "upstream", "total")

LATENCY_BIN_EDGES_US = (
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
)
"""The latency histogram's bin edges, in microseconds: bin ``i`` holds values from
edge ``i - 1`` (inclusive; 0 for the first) up to edge ``i`` (exclusive); the last
bin holds everything from the last edge on."""


# --------------------------------------------------------------------- the tallies


@dataclass
class BucketTally:
    """Counts of one time bucket, as an engine collects them."""

    calls: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    unnecessary: int = 0
    guard_errors: int = 0
    events: int = 0

    def merge(self, other: BucketTally) -> None:
        """Add another bucket's counts to this one."""
        self.calls += other.calls
        self.actions.update(other.actions)
        self.unnecessary += other.unnecessary
        self.guard_errors += other.guard_errors
        self.events += other.events


Quantiles = tuple[int, int, int, int]
"""``(count, p50, p95, p99)`` of a latency, in whole microseconds."""


@dataclass
class Tallies:
    """The raw counts an engine collects; :func:`finish` derives the report from them."""

    kinds: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None
    actions: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    levels: Counter[tuple[str, str]] = field(default_factory=Counter)
    categories: Counter[tuple[str, str]] = field(default_factory=Counter)
    guard_errors: int = 0
    answered: int = 0
    unnecessary: int = 0
    refused: int = 0
    refused_unnecessary: int = 0
    response_checks: int = 0
    refusal_checks: int = 0
    bucket_ms: int = BASE_BUCKET_MS
    buckets: dict[int, BucketTally] = field(default_factory=dict)
    """Per bucket index (the bucket's start / ``bucket_ms``)."""
    latency: dict[str, Quantiles] = field(default_factory=dict)
    latency_hist: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per latency name: counts per bin of :data:`LATENCY_BIN_EDGES_US`."""


def micros(seconds: float) -> int:
    """Seconds as whole microseconds, rounded half up (both engines round this way)."""
    return math.floor(seconds * 1000000.0 + 0.5)


def nearest_rank(counts: Mapping[int, int]) -> Quantiles:
    """``(n, p50, p95, p99)`` of values given as value -> occurrences; nearest rank.

    The p-th percentile is the value at 1-based rank ``ceil(p * n / 100)`` of the
    sorted values, as DuckDB's ``quantile_disc`` picks it.
    """
    n = sum(counts.values())
    if n == 0:
        return (0, 0, 0, 0)
    ranks = [(p * n + 99) // 100 for p in PERCENTILES]
    out: list[int] = []
    seen = 0
    it = iter(sorted(counts.items()))
    value, k = next(it)
    seen = k
    for rank in ranks:
        while seen < rank:
            value, k = next(it)
            seen += k
        out.append(value)
    return (n, out[0], out[1], out[2])


def latency_bin(us: int) -> int:
    """The histogram bin of a latency in whole microseconds (see :data:`LATENCY_BIN_EDGES_US`)."""
    return bisect.bisect_right(LATENCY_BIN_EDGES_US, us)


def histogram(counts: Mapping[int, int]) -> tuple[int, ...]:
    """Counts per latency bin of values given as microseconds -> occurrences."""
    bins = [0] * (len(LATENCY_BIN_EDGES_US) + 1)
    for value, k in counts.items():
        bins[latency_bin(value)] += k
    return tuple(bins)
