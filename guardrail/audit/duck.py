"""The DuckDB engine of :func:`~guardrail.audit.stats.compute_stats`.

DuckDB (the ``guardrail[analytics]`` extra) reads JSON lines, plain or gzip,
in parallel C++, with only the fields the statistics use projected out of each
record; the counts come back as small grouped results and fill the same
:class:`~guardrail.audit.stats.Tallies` as the Python engine, so every figure
is derived by the same code afterwards. Percentiles are DuckDB's
``quantile_disc`` (nearest rank, as the Python engine computes them) over the
same whole microseconds.

The projected columns are held in a DuckDB table while the counts run (a few
hundred bytes a record; DuckDB spills to its temp directory past its memory
limit). Imported only when the engine is used: ``import guardrail`` never loads
DuckDB.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from guardrail.audit.tally import (
    ANSWERED_ACTIONS,
    LATENCY_BIN_EDGES_US,
    UNNECESSARY_REFUSAL,
    BucketTally,
    Tallies,
)
from guardrail.errors import AuditError

__all__ = ["DuckReadError", "duckdb_tallies"]

_GZIP_MAGIC = b"\x1f\x8b"

# Only what the statistics read; other fields of a record are skipped by the reader.
_COLUMNS = {
    "kind": "VARCHAR",
    "type": "VARCHAR",
    "time": "VARCHAR",
    "final_action": "VARCHAR",
    "flags": "VARCHAR[]",
    "stages": (
        "STRUCT(stage VARCHAR, verdict STRUCT(level VARCHAR, category VARCHAR, "
        "refusal BOOLEAN), decision STRUCT(rule_id VARCHAR), latency_s DOUBLE, "
        "error STRUCT(type VARCHAR))[]"
    ),
    "latency": "STRUCT(guard_s DOUBLE, upstream_s DOUBLE, total_s DOUBLE)",
}


class DuckReadError(AuditError):
    """DuckDB could not read a log (the Python engine then reads it, or names the line)."""


def _micros(expr: str) -> str:
    # Whole microseconds, rounded half up: the Python engine's micros().
    return f"CAST(floor({expr} * 1000000.0 + 0.5) AS BIGINT)"


def _source(files: Sequence[str]) -> tuple[str, list[Any]]:
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _COLUMNS.items()) + "}"
    parts: list[str] = []
    params: list[Any] = []
    groups: dict[str, list[str]] = {"uncompressed": [], "gzip": []}
    for path in files:
        try:
            with open(path, "rb") as fh:
                compressed = fh.read(2) == _GZIP_MAGIC
        except OSError as exc:
            raise DuckReadError(f"{path}: {exc.strerror or exc}") from exc
        groups["gzip" if compressed else "uncompressed"].append(os.path.abspath(path))
    for compression, paths in groups.items():
        if not paths:
            continue
        params.append(paths)
        parts.append(
            f"SELECT * FROM read_json(${len(params)}, format='newline_delimited', "
            f"compression='{compression}', columns={columns}, "
            "maximum_object_size=268435456)"
        )
    return " UNION ALL ".join(parts), params


def duckdb_tallies(files: Sequence[str], bucket_ms: int) -> Tallies:
    """The DuckDB engine: the logs read once into a projected table, then counted."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        return _tallies(con, files, bucket_ms)
    except duckdb.Error as exc:
        raise DuckReadError(f"duckdb could not read the logs: {exc}") from exc
    finally:
        con.close()


def _tallies(con: Any, files: Sequence[str], bucket_ms: int) -> Tallies:
    source, params = _source(files)
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")  # not on the command's stderr
    answered = "list_contains(?::VARCHAR[], final_action)"
    con.execute(
        f"""CREATE TEMP TABLE r AS
        SELECT kind, type, epoch_ms(CAST(time AS TIMESTAMPTZ)) AS ms, final_action,
               flags, stages, latency,
               list_contains(flags, '{UNNECESSARY_REFUSAL}') AS unnecessary,
               len(list_filter(stages, s -> s.stage = 'response')) > 0 AS responded,
               len(list_filter(stages, s -> s.stage = 'response'
                                        AND s.verdict.refusal IS TRUE)) > 0 AS refused,
               len(list_filter(stages, s -> s.error IS NOT NULL)) AS errors,
               time IS NULL OR (kind IS NULL AND (final_action IS NULL OR stages IS NULL
                                OR flags IS NULL)) OR (kind IS NOT NULL AND type IS NULL)
                   AS malformed
        FROM ({source})""",
        params,
    )
    bad = con.execute("SELECT count(*) FROM r WHERE malformed").fetchone()
    if bad is not None and bad[0]:
        raise DuckReadError("records lack fields the statistics read")
    t = Tallies(bucket_ms=bucket_ms)
    for kind, type_, n in con.execute(
        "SELECT coalesce(kind, 'call'), type, count(*) FROM r GROUP BY ALL"
    ).fetchall():
        t.kinds[kind] += n
        if kind != "call":
            t.events[type_] += n
    first, last = con.execute("SELECT min(ms), max(ms) FROM r").fetchone() or (None, None)
    t.first_ms = first
    t.last_ms = last
    t.actions = Counter(
        dict(
            con.execute(
                "SELECT final_action, count(*) FROM r WHERE kind IS NULL GROUP BY 1"
            ).fetchall()
        )
    )
    t.flags = Counter(
        dict(
            con.execute(
                "SELECT f, count(*) FROM (SELECT unnest(flags) AS f FROM r WHERE kind IS NULL) "
                "GROUP BY 1"
            ).fetchall()
        )
    )
    t.rules = Counter(
        dict(
            con.execute(
                "SELECT x, count(*) FROM (SELECT unnest(list_distinct(list_transform(stages, "
                "s -> s.decision.rule_id))) AS x FROM r WHERE kind IS NULL) GROUP BY 1"
            ).fetchall()
        )
    )
    con.execute(
        "CREATE TEMP TABLE c AS SELECT s.stage AS stage, s.verdict.level AS level, "
        "s.verdict.category AS category, s.verdict IS NOT NULL AS judged, "
        "s.verdict.refusal IS TRUE AS refusal, s.error IS NOT NULL AS failed, "
        "s.latency_s AS latency_s "
        "FROM (SELECT unnest(stages) AS s FROM r WHERE kind IS NULL)"
    )
    for stage, level, category, judged, refusal, failed, n in con.execute(
        "SELECT stage, level, category, judged, refusal, failed, count(*) FROM c GROUP BY ALL"
    ).fetchall():
        t.checks[stage] += n
        if failed:
            t.guard_errors += n
        if not judged:
            continue
        if level is not None:
            t.levels[stage, level] += n
        if category is not None:
            t.categories[stage, category] += n
        if stage == "response":
            t.response_checks += n
            if refusal:
                t.refusal_checks += n
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE responded AND {answered}),
                  count(*) FILTER (WHERE responded AND {answered} AND unnecessary),
                  count(*) FILTER (WHERE refused),
                  count(*) FILTER (WHERE refused AND unnecessary)
           FROM r WHERE kind IS NULL""",
        [list(ANSWERED_ACTIONS), list(ANSWERED_ACTIONS)],
    ).fetchone()
    if row is not None:
        t.answered, t.unnecessary, t.refused, t.refused_unnecessary = row
    for index, calls, events, unnecessary, errors in con.execute(
        f"""SELECT ms // {bucket_ms}, count(*) FILTER (WHERE kind IS NULL),
                  count(*) FILTER (WHERE kind IS NOT NULL),
                  count(*) FILTER (WHERE kind IS NULL AND unnecessary),
                  coalesce(sum(errors) FILTER (WHERE kind IS NULL), 0)
           FROM r GROUP BY 1"""
    ).fetchall():
        t.buckets[index] = BucketTally(
            calls=calls, unnecessary=unnecessary, guard_errors=int(errors), events=events
        )
    for index, action, n in con.execute(
        f"SELECT ms // {bucket_ms}, final_action, count(*) FROM r WHERE kind IS NULL GROUP BY ALL"
    ).fetchall():
        t.buckets[index].actions[action] += n
    quantiles = "count(v), quantile_disc(v, 0.5), quantile_disc(v, 0.95), quantile_disc(v, 0.99)"
    for stage, n, p50, p95, p99 in con.execute(
        f"SELECT stage, {quantiles} FROM (SELECT stage, {_micros('latency_s')} AS v FROM c "
        "WHERE latency_s IS NOT NULL) GROUP BY 1"
    ).fetchall():
        t.latency["guard." + stage] = (n, p50, p95, p99)
    for name, key in (("guard", "guard_s"), ("upstream", "upstream_s"), ("total", "total_s")):
        row = con.execute(
            f"SELECT {quantiles} FROM (SELECT {_micros('latency.' + key)} AS v FROM r "
            f"WHERE kind IS NULL AND latency.{key} IS NOT NULL)"
        ).fetchone()
        if row is not None and row[0]:
            t.latency[name] = (row[0], row[1], row[2], row[3])
    bins: dict[str, list[int]] = {}
    for name, index, n in con.execute(
        f"SELECT 'guard.' || stage, {_bin('v')}, count(*) FROM (SELECT stage, "
        f"{_micros('latency_s')} AS v FROM c WHERE latency_s IS NOT NULL) GROUP BY ALL "
        + "".join(
            f"UNION ALL SELECT '{name}', {_bin('v')}, count(*) FROM (SELECT "
            f"{_micros('latency.' + key)} AS v FROM r WHERE kind IS NULL AND "
            f"latency.{key} IS NOT NULL) GROUP BY ALL "
            for name, key in (
                ("guard", "guard_s"),
                ("upstream", "upstream_s"),
                ("total", "total_s"),
            )
        )
    ).fetchall():
        bins.setdefault(name, [0] * (len(LATENCY_BIN_EDGES_US) + 1))[index] += n
    t.latency_hist = {name: tuple(counts) for name, counts in bins.items()}
    return t


def _bin(v: str) -> str:
    """SQL for :func:`~guardrail.audit.tally.latency_bin` of the microseconds ``v``."""
    cases = " ".join(f"WHEN {v} < {edge} THEN {i}" for i, edge in enumerate(LATENCY_BIN_EDGES_US))
    return f"CASE {cases} ELSE {len(LATENCY_BIN_EDGES_US)} END"
