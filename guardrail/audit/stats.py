"""What audit logs add up to: counts, time buckets, over-refusal, latencies, errors.

:func:`compute_stats` reads one or more logs once and returns :class:`AuditStats`
(``guardrail audit stats``). Two engines compute the same numbers:

- ``python``: a streaming scan of record dicts (:mod:`~guardrail.audit.scan`),
  no models built;
- ``duckdb``: DuckDB's JSON reader, parallel and much faster, when the
  ``guardrail[analytics]`` extra is installed (:mod:`~guardrail.audit.duck`).

Each engine reads a log's **index** instead when every log has one that
matches it (:mod:`~guardrail.audit.index`: a short row per record, written by
the JSONL sink and bound to the log by its hash chain; read by
:mod:`~guardrail.audit.indexstats`), and the logs themselves otherwise
(:attr:`AuditStats.source` says which, and why); the Python engine over the logs
is :mod:`~guardrail.audit.pyengine`. All of them fill the same
:class:`Tallies`, which :func:`finish` turns into the report, so each figure is
derived once. Latencies are counted in whole
microseconds (rounded half up) and percentiles are nearest-rank, an observed
value: the engines agree exactly, and the Python engine's memory grows with the
number of distinct microsecond values, not with the number of records.

Units: ``calls`` and the ``by_action`` / ``by_rule`` / ``by_flag`` counts are
guarded calls (a rule that fired on several checks of one call counts once);
``checks``, ``by_level``, ``by_category`` and guard errors count guard checks.
Records that are not calls (events, recoveries) are counted per kind and type.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from guardrail.audit.index import BoundIndex, check_index, snapshot_index
from guardrail.audit.kinds import iso_ms
from guardrail.audit.pyengine import python_tallies
from guardrail.audit.tally import (
    BASE_BUCKET_MS,
    LATENCY_BIN_EDGES_US,
    LATENCY_NAMES,
    BucketTally,
    Quantiles,
    Tallies,
)
from guardrail.errors import ConfigurationError, MissingDependencyError

__all__ = [
    "AuditStats",
    "BucketStats",
    "LATENCY_BINS_S",
    "LatencyStats",
    "OverRefusal",
    "compute_stats",
    "duckdb_available",
    "finish",
    "parse_bucket",
]

Engine = Literal["auto", "duckdb", "python"]


_BUCKET = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_bucket(text: str) -> int:
    """A bucket size such as ``15m``, ``1h`` or ``1d``, in milliseconds.

    Raises ``ConfigurationError`` for anything else.
    """
    m = _BUCKET.match(text.strip())
    if m is None:
        raise ConfigurationError(
            f"bucket {text!r} is not a duration: a number and m, h or d (15m, 1h, 1d)"
        )
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def bucket_name(ms: int) -> str:
    """``15m``, ``1h``, ``1d``: the shortest name of a bucket size."""
    for unit in ("d", "h", "m"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"  # pragma: no cover - sizes come from parse_bucket


def default_bucket(span_ms: int) -> int:
    """The bucket size for a log spanning ``span_ms``: 15m up to 12 h, 1h up to 7 days, 1d."""
    if span_ms <= 12 * _UNIT_MS["h"]:
        return BASE_BUCKET_MS
    if span_ms <= 7 * _UNIT_MS["d"]:
        return _UNIT_MS["h"]
    return _UNIT_MS["d"]


# ------------------------------------------------------------------------ the report


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


LATENCY_BINS_S = tuple(edge / 1e6 for edge in LATENCY_BIN_EDGES_US)
"""The edges of :attr:`LatencyStats.histogram`'s bins, in seconds."""


class LatencyStats(_Frozen):
    """Nearest-rank percentiles of one latency, in seconds (``None`` without data)."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    histogram: tuple[int, ...] = ()
    """Counts per bin: bin ``i`` from edge ``i - 1`` (0 for the first) up to edge ``i``
    of :data:`LATENCY_BINS_S`, the last from the last edge on; empty without data."""


class BucketStats(_Frozen):
    """What happened in one time bucket."""

    start: str
    """The bucket's start, UTC (buckets are aligned on the Unix epoch)."""
    calls: int = 0
    by_action: dict[str, int] = {}
    unnecessary_refusals: int = 0
    """Calls flagged ``unnecessary_refusal``."""
    guard_errors: int = 0
    """Guard checks that failed (the failure mode decided)."""
    events: int = 0
    """Records that are not calls."""


class OverRefusal(_Frozen):
    """How often answers were refused without need.

    ``rate`` = ``unnecessary`` / ``answered``: of the calls whose answer reached the
    user (final action allow or flag, with a response check), the share flagged
    ``unnecessary_refusal``. ``of_refusals`` = ``refused_unnecessary`` / ``refused``:
    of the calls whose response the guard judged a refusal, the share flagged so.
    ``refusal_rate`` = ``refusal_checks`` / ``response_checks``: of the judged
    response checks, the share judged a refusal.
    """

    answered: int = 0
    unnecessary: int = 0
    rate: float | None = None
    refused: int = 0
    refused_unnecessary: int = 0
    of_refusals: float | None = None
    response_checks: int = 0
    refusal_checks: int = 0
    refusal_rate: float | None = None


class AuditStats(_Frozen):
    """What one or more audit logs add up to (see the module notes for units)."""

    engine: str
    """``python`` or ``duckdb``: which engine computed it (the figures are the same)."""
    source: Literal["index", "log"] = "log"
    """What was read: the logs' indexes, or the logs themselves (the figures are the same)."""
    source_note: str = ""
    """Why the logs were read although an index was asked for (empty otherwise)."""
    records: int = 0
    """Records of every kind."""
    calls: int = 0
    first_time: str | None = None
    last_time: str | None = None
    by_kind: dict[str, int] = {}
    by_event: dict[str, int] = {}
    """Records that are not calls, per type (``breaker.open``, ``torn_line``...)."""
    breaker: dict[str, int] = {}
    """Circuit breaker events (``breaker.*``), per type."""
    by_action: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    by_flag: dict[str, int] = {}
    checks: dict[str, int] = {}
    """Guard checks per stage."""
    by_level: dict[str, dict[str, int]] = {}
    """Per stage: judged checks per safety level."""
    by_category: dict[str, dict[str, int]] = {}
    """Per stage: judged checks per category (checks without one are not counted)."""
    guard_errors: int = 0
    guard_error_rate: float | None = None
    """``guard_errors`` / all checks."""
    over_refusal: OverRefusal = OverRefusal()
    latency: dict[str, LatencyStats] = {}
    """``guard.prompt`` / ``guard.response`` (one check each), ``guard`` (a call's guard
    time), ``upstream`` (calls that reached it), ``total``."""
    bucket: str = ""
    """The size of the time buckets (``15m``, ``1h``, ``1d``)."""
    buckets: tuple[BucketStats, ...] = ()


def _ranked(counts: Mapping[Any, int]) -> dict[str, int]:
    """Counts, most frequent first, ties by name (the same order from either engine)."""
    return {str(k): v for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))}


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _nested(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for (stage, name), n in counts.items():
        out.setdefault(stage, Counter())[name] += n
    return {stage: _ranked(out[stage]) for stage in sorted(out)}


def _latency(q: Quantiles | None, hist: tuple[int, ...] | None) -> LatencyStats:
    if q is None or q[0] == 0:
        return LatencyStats()
    n, p50, p95, p99 = q
    return LatencyStats(count=n, p50=p50 / 1e6, p95=p95 / 1e6, p99=p99 / 1e6, histogram=hist or ())


def _iso(ms: int) -> str:
    return iso_ms(datetime.fromtimestamp(ms / 1000, tz=timezone.utc))


def finish(
    t: Tallies,
    *,
    engine: str,
    bucket_ms: int | None,
    source: Literal["index", "log"] = "log",
    source_note: str = "",
) -> AuditStats:
    """The report from an engine's tallies; ``bucket_ms=None`` picks a size for the span."""
    size = bucket_ms
    buckets = t.buckets
    if size is None:
        span = 0 if t.first_ms is None or t.last_ms is None else t.last_ms - t.first_ms
        size = default_bucket(span)
    if size != t.bucket_ms:  # merge the base buckets into the size chosen
        if size % t.bucket_ms:
            raise ValueError("bucket sizes must be multiples of the collected size")
        merged: dict[int, BucketTally] = {}
        for index, tally in t.buckets.items():
            start = index * t.bucket_ms
            merged.setdefault(start // size, BucketTally()).merge(tally)
        buckets = merged
    calls = t.kinds.get("call", 0)
    checks = sum(t.checks.values())
    o = OverRefusal(
        answered=t.answered,
        unnecessary=t.unnecessary,
        rate=_rate(t.unnecessary, t.answered),
        refused=t.refused,
        refused_unnecessary=t.refused_unnecessary,
        of_refusals=_rate(t.refused_unnecessary, t.refused),
        response_checks=t.response_checks,
        refusal_checks=t.refusal_checks,
        refusal_rate=_rate(t.refusal_checks, t.response_checks),
    )
    kinds = dict(t.kinds)
    kinds.setdefault("call", 0)
    return AuditStats(
        engine=engine,
        source=source,
        source_note=source_note,
        records=sum(t.kinds.values()),
        calls=calls,
        first_time=_iso(t.first_ms) if t.first_ms is not None else None,
        last_time=_iso(t.last_ms) if t.last_ms is not None else None,
        by_kind=_ranked(kinds),
        by_event=_ranked(t.events),
        breaker=_ranked({k: n for k, n in t.events.items() if k.startswith("breaker.")}),
        by_action=_ranked(t.actions),
        by_rule=_ranked(t.rules),
        by_flag=_ranked(t.flags),
        checks={s: t.checks[s] for s in sorted(t.checks)},
        by_level=_nested(t.levels),
        by_category=_nested(t.categories),
        guard_errors=t.guard_errors,
        guard_error_rate=_rate(t.guard_errors, checks),
        over_refusal=o,
        latency={
            name: _latency(t.latency.get(name), t.latency_hist.get(name)) for name in LATENCY_NAMES
        },
        bucket=bucket_name(size),
        buckets=tuple(
            BucketStats(
                start=_iso(index * size),
                calls=b.calls,
                by_action=_ranked(b.actions),
                unnecessary_refusals=b.unnecessary,
                guard_errors=b.guard_errors,
                events=b.events,
            )
            for index, b in sorted(buckets.items())
        ),
    )


def duckdb_available() -> bool:
    """Whether the ``analytics`` extra (DuckDB) is installed."""
    import importlib.util

    try:
        return importlib.util.find_spec("duckdb") is not None
    except (ImportError, ValueError):  # a module entry of None: treated as not installed
        return False


def compute_stats(
    paths: Iterable[str | os.PathLike[str]],
    *,
    bucket: str | None = None,
    engine: Engine = "auto",
    index: bool = True,
) -> AuditStats:
    """Read the logs once and add them up (see :class:`AuditStats`).

    ``bucket`` is the time bucket size (``15m``, ``1h``, ``1d``...; default: chosen
    from the logs' span). ``engine``: ``duckdb`` (needs ``guardrail[analytics]``),
    ``python``, or ``auto``, DuckDB when installed. With ``index`` (the default),
    the logs' indexes are read when every log has one that matches it
    (:func:`~guardrail.audit.index.bind_index`), the logs otherwise. Every way
    gives the same figures. A line that is not a record raises
    :class:`~guardrail.audit.reader.AuditFileError` naming the file and line.
    """
    files = [os.fspath(p) for p in paths]
    size = parse_bucket(bucket) if bucket is not None else None
    collect = size if size is not None else BASE_BUCKET_MS
    use_duckdb = engine == "duckdb" or (engine == "auto" and duckdb_available())
    if engine == "duckdb" and not duckdb_available():
        raise MissingDependencyError("duckdb", "analytics")
    name = "duckdb" if use_duckdb else "python"
    note = ""
    if index and files:
        found = _snapshots(files)
        if isinstance(found, str):
            note = found
        else:
            from guardrail.audit.indexstats import (
                IndexReadError,
                duckdb_index_tallies,
                python_index_tallies,
            )

            read = duckdb_index_tallies if use_duckdb else python_index_tallies
            # The indexes are hashed while they are read (hashlib and DuckDB both let
            # go of the GIL), and the figures are used only if every digest matched.
            problems: list[str] = []
            checking = threading.Thread(target=_check, args=(found, problems))
            checking.start()
            failed = ""
            try:
                tallies = read(found, collect)
            except IndexReadError as exc:
                failed = f"index not used: {exc}"
            finally:
                checking.join()
            if not problems and not failed:
                return finish(tallies, engine=name, bucket_ms=size, source="index")
            note = problems[0] if problems else failed
    if use_duckdb:
        from guardrail.audit.duck import DuckReadError, duckdb_tallies

        try:
            return finish(
                duckdb_tallies(files, collect), engine=name, bucket_ms=size, source_note=note
            )
        except DuckReadError:
            # DuckDB could not read a line: the Python engine names the file and line
            # (AuditFileError), or reads what DuckDB could not, with the same meaning.
            pass
    return finish(python_tallies(files, collect), engine="python", bucket_ms=size, source_note=note)


def _snapshots(files: Sequence[str]) -> list[BoundIndex] | str:
    """Every log's index as it stands (not yet hashed), or why one has none (naming it)."""
    found = []
    for path in files:
        snapshot = snapshot_index(path)
        if isinstance(snapshot, str):
            return f"{path}: {snapshot}"
        found.append(snapshot)
    return found


def _check(indexes: Sequence[BoundIndex], problems: list[str]) -> None:
    """Hash each index against the digest its log commits; note the first problem."""
    for bound in indexes:
        problem = check_index(bound)
        if problem is not None:
            problems.append(f"{bound.log}: {problem}")
            return
