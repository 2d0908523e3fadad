"""The raw counts the statistics engines collect (:mod:`~guardrail.audit.stats`).

Every engine, the Python scan, DuckDB (:mod:`~guardrail.audit.duck`) and the
readers of a log's index (:mod:`~guardrail.audit.indexstats`), fills a
:class:`Tallies`; :func:`guardrail.audit.stats.finish` derives the report from
it, so each figure is derived once.

What a record contributes is split in two by :func:`record_facts`: its
**key**, every categorical fact the counts read (kind, final action, flags,
and per check its stage, rule, level, category, refusal and failure), and its
time and latencies. Records with equal keys count the same, so engines count
``(time bucket, key)`` pairs and :meth:`Tallies.add_key` turns each distinct
pair into counts once. The Python scan and the index (which stores each
record's key once, as JSON, and a short id per record) use the same
:func:`record_facts`, so they agree by construction.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardrail.audit.scan import epoch_ms

__all__ = [
    "ANSWERED_ACTIONS",
    "BASE_BUCKET_MS",
    "LATENCY_BIN_EDGES_US",
    "LATENCY_NAMES",
    "PERCENTILES",
    "UNNECESSARY_REFUSAL",
    "BucketTally",
    "Facts",
    "Quantiles",
    "RecordKey",
    "Tallies",
    "histogram",
    "latency_bin",
    "micros",
    "nearest_rank",
    "record_facts",
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

    def see_time(self, first_ms: int, last_ms: int) -> None:
        """Widen the span of record times to include ``first_ms .. last_ms``."""
        if self.first_ms is None or first_ms < self.first_ms:
            self.first_ms = first_ms
        if self.last_ms is None or last_ms > self.last_ms:
            self.last_ms = last_ms

    def add_key(self, index: int, key: RecordKey, n: int) -> None:
        """Count ``n`` records of time bucket ``index`` whose key is ``key``."""
        bucket = self.buckets.get(index)
        if bucket is None:
            bucket = self.buckets[index] = BucketTally()
        if key[0] == OTHER:
            self.kinds[key[1]] += n
            self.events[key[2]] += n
            bucket.events += n
            return
        _, action, flags, checks = key
        self.kinds["call"] += n
        bucket.calls += n
        self.actions[action] += n
        bucket.actions[action] += n
        for flag in flags:
            self.flags[flag] += n
        unnecessary = UNNECESSARY_REFUSAL in flags
        if unnecessary:
            bucket.unnecessary += n
        rules = set()
        responded = refused = False
        for stage, rule, judged, level, category, refusal, failed in checks:
            rules.add(rule)
            self.checks[stage] += n
            if failed:
                self.guard_errors += n
                bucket.guard_errors += n
            if stage == "response":
                responded = True
            if not judged:
                continue
            if level is not None:
                self.levels[stage, level] += n
            if category is not None:
                self.categories[stage, category] += n
            if stage == "response":
                self.response_checks += n
                if refusal:
                    self.refusal_checks += n
                    refused = True
        for rule in rules:
            self.rules[rule] += n
        if responded and action in ANSWERED_ACTIONS:
            self.answered += n
            if unnecessary:
                self.unnecessary += n
        if refused:
            self.refused += n
            if unnecessary:
                self.refused_unnecessary += n


# ------------------------------------------------------------ what a record adds

CALL = 1
"""The first item of a call's :data:`RecordKey`."""
OTHER = 0
"""The first item of the key of a record that is not a call (an event, a recovery)."""

RecordKey = tuple[Any, ...]
"""A record's categorical facts: ``(OTHER, kind, type)``, or ``(CALL, final_action,
flags, checks)`` with ``checks`` a tuple of ``(stage, rule_id, judged, level,
category, refusal, failed)`` per check (``judged``: it has a verdict; ``refusal``: the
verdict's refusal is true; ``failed``: it has an error)."""

Facts = tuple[
    int, RecordKey, tuple[int | None, int | None, int | None], tuple[tuple[Any, int], ...]
]
""":func:`record_facts`: time (ms since the epoch), key, the call's guard, upstream and
total latency (whole microseconds, ``None`` when missing) and ``(stage, microseconds)``
per check that has a latency."""

_NO_LATENCY: tuple[None, None, None] = (None, None, None)


def record_facts(data: Mapping[str, Any]) -> Facts:
    """What one record adds to the statistics.

    Raises ``KeyError``, ``TypeError``, ``ValueError`` or ``AttributeError`` for a
    record the statistics cannot read: a field the review tools read that is missing
    or of the wrong type (as :func:`~guardrail.audit.scan.shape_problem` finds it), a
    missing rule id, a latency that is not a number..., and ``TypeError`` when a fact
    cannot be counted (a list where a name is expected, found when the key is
    hashed); the engines report those as the line's error.
    """
    time = data["time"]
    if not isinstance(time, str):
        raise TypeError("time: not a string")
    ms = epoch_ms(time)
    if "kind" in data:
        kind, event = data["kind"], data.get("type")
        if not (isinstance(kind, str) and isinstance(event, str)):
            raise TypeError("kind and type: not strings")
        return ms, (OTHER, str(kind), str(event)), _NO_LATENCY, ()
    action, flags, stages = data["final_action"], data["flags"], data["stages"]
    if not (
        isinstance(data.get("request_id"), str)
        and isinstance(action, str)
        and isinstance(flags, list)
        and isinstance(stages, list)
    ):
        raise TypeError("request_id, final_action, flags or stages: not of their type")
    checks = []
    check_latency = []
    for entry in stages:
        if not isinstance(entry, dict):
            raise TypeError("stages: not a list of checks")
        stage, decision, verdict = entry.get("stage"), entry.get("decision"), entry.get("verdict")
        if not (isinstance(stage, str) and isinstance(decision, dict)):
            raise TypeError("stages: not a list of checks")
        latency = entry.get("latency_s")
        if latency is not None:
            check_latency.append((stage, _floor(latency * 1000000.0 + 0.5)))  # micros(), inline
        failed = entry.get("error") is not None
        if verdict is None:
            checks.append((stage, decision["rule_id"], False, None, None, False, failed))
        elif isinstance(verdict, dict):
            level, category = verdict.get("level"), verdict.get("category")
            refusal = verdict.get("refusal") is True
            checks.append((stage, decision["rule_id"], True, level, category, refusal, failed))
        else:
            raise TypeError("stages: a verdict that is not an object")
    key = (CALL, action, tuple(flags), tuple(checks))
    record = data.get("latency")
    times: tuple[int | None, int | None, int | None] = _NO_LATENCY
    if isinstance(record, dict):
        guard, upstream, total = (
            record.get("guard_s"),
            record.get("upstream_s"),
            record.get("total_s"),
        )
        times = (  # micros(), inline: this runs for every record a sink writes
            None if guard is None else _floor(guard * 1000000.0 + 0.5),
            None if upstream is None else _floor(upstream * 1000000.0 + 0.5),
            None if total is None else _floor(total * 1000000.0 + 0.5),
        )
    return ms, key, times, tuple(check_latency)


def micros(seconds: float) -> int:
    """Seconds as whole microseconds, rounded half up (both engines round this way)."""
    return _floor(seconds * 1000000.0 + 0.5)


_floor = math.floor


def _cumulative(counts: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """The distinct values in order and the running count of occurrences up to each.

    One C-level sort and accumulation: a log's latencies in microseconds are mostly
    distinct, so this is over as many values as records.
    """
    values = sorted(counts)
    return values, list(itertools.accumulate(map(counts.__getitem__, values)))


def nearest_rank(counts: Mapping[int, int]) -> Quantiles:
    """``(n, p50, p95, p99)`` of values given as value -> occurrences; nearest rank.

    The p-th percentile is the value at 1-based rank ``ceil(p * n / 100)`` of the
    sorted values, as DuckDB's ``quantile_disc`` picks it.
    """
    values, running = _cumulative(counts)
    if not values or running[-1] == 0:
        return (0, 0, 0, 0)
    n = running[-1]
    p50, p95, p99 = (values[bisect.bisect_left(running, (p * n + 99) // 100)] for p in PERCENTILES)
    return (n, p50, p95, p99)


def latency_bin(us: int) -> int:
    """The histogram bin of a latency in whole microseconds (see :data:`LATENCY_BIN_EDGES_US`)."""
    return bisect.bisect_right(LATENCY_BIN_EDGES_US, us)


def histogram(counts: Mapping[int, int]) -> tuple[int, ...]:
    """Counts per latency bin of values given as microseconds -> occurrences."""
    values, running = _cumulative(counts)
    below = [0]  # occurrences below each edge, then in all
    for edge in LATENCY_BIN_EDGES_US:
        i = bisect.bisect_left(values, edge)
        below.append(running[i - 1] if i else 0)
    below.append(running[-1] if running else 0)
    return tuple(below[i + 1] - below[i] for i in range(len(below) - 1))
