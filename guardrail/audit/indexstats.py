"""Statistics from logs' indexes (:mod:`~guardrail.audit.index`), by DuckDB or in Python.

Both engines count ``(time bucket, key id)`` pairs and the latencies, decode each
key once and fill the same :class:`~guardrail.audit.tally.Tallies` as the
engines that read the logs, through the same
:meth:`~guardrail.audit.tally.Tallies.add_key`. Only indexes
:func:`~guardrail.audit.index.bind_index` accepted are read, and only their
first ``size`` bytes (rows appended since are left out, as records appended to
a log after the index was bound). An index whose rows do not add up (a key id
without a definition or with two, a row count other than the one bound) raises
:class:`IndexReadError`; :func:`~guardrail.audit.stats.compute_stats` then reads
the logs themselves.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from guardrail.audit.index import BoundIndex, decode_key
from guardrail.audit.tally import (
    LATENCY_BIN_EDGES_US,
    LATENCY_NAMES,
    RecordKey,
    Tallies,
    histogram,
    nearest_rank,
)
from guardrail.errors import AuditError

__all__ = ["IndexReadError", "duckdb_index_tallies", "python_index_tallies"]

_CHUNK = 1 << 22
# Index columns holding each latency (the first prompt and response checks; further
# checks' latencies are in `more` as p<us> / r<us>).
_COLUMNS = (
    ("guard", "guard_us"),
    ("upstream", "upstream_us"),
    ("total", "total_us"),
    ("guard.prompt", "prompt_us"),
    ("guard.response", "response_us"),
)
_MORE = {"p": "guard.prompt", "r": "guard.response"}


class IndexReadError(AuditError):
    """An index did not add up; the statistics read the logs instead."""


def _keys(definitions: dict[str, str]) -> dict[str, RecordKey]:
    try:
        return {kid: decode_key(text) for kid, text in definitions.items()}
    except (ValueError, TypeError) as exc:
        raise IndexReadError(f"a key definition is not a record key ({exc})") from exc


def _fill(
    t: Tallies,
    groups: Iterator[tuple[int, str, int]],
    keys: dict[str, RecordKey],
) -> None:
    for index, kid, n in groups:
        key = keys.get(kid)
        if key is None:
            raise IndexReadError(f"key id {kid!r} has no definition")
        t.add_key(index, key, n)


# ------------------------------------------------------------------------- Python


def _rows(bound: BoundIndex) -> Iterator[list[bytes]]:
    """The index's lines up to its bound size, without the header, as split rows."""
    with open(bound.path, "rb") as fh:
        fh.readline()
        pos = fh.tell()
        rest = b""
        while pos < bound.size:
            chunk = fh.read(min(_CHUNK, bound.size - pos))
            if not chunk:
                raise IndexReadError(f"{bound.path}: shorter than when it was bound")
            pos += len(chunk)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            yield data[:cut].split(b"\n")[:-1]


def python_index_tallies(indexes: Sequence[BoundIndex], bucket_ms: int) -> Tallies:
    """The Python engine over indexes: one pass over their rows, counted by C-level Counters."""
    try:
        return _python(indexes, bucket_ms)
    except (ValueError, KeyError, IndexError) as exc:  # a row that is not a row
        raise IndexReadError(f"a row could not be read ({type(exc).__name__}: {exc})") from exc


def _python(indexes: Sequence[BoundIndex], bucket_ms: int) -> Tallies:
    groups: Counter[tuple[int, bytes]] = Counter()
    lat: dict[str, Counter[bytes]] = {name: Counter() for name in LATENCY_NAMES}
    more: list[bytes] = []
    definitions: dict[str, str] = {}
    first: int | None = None
    last: int | None = None
    rows = 0
    for bound in indexes:
        seen = 0
        for lines in _rows(bound):
            for line in lines:
                fields = line.split(b"\t")
                if len(fields) != 9:
                    raise IndexReadError(f"{bound.path}: a row without 9 columns")
                seq, ms_text, kid, guard, upstream, total, prompt, response, extra = fields
                if seq == b"0":
                    _define(definitions, kid.decode("ascii", "replace"), extra.decode("ascii"))
                    continue
                seen += 1
                ms = int(ms_text)
                if first is None or ms < first:
                    first = ms
                if last is None or ms > last:
                    last = ms
                groups[ms // bucket_ms, kid] += 1
                lat["guard"][guard] += 1
                lat["upstream"][upstream] += 1
                lat["total"][total] += 1
                lat["guard.prompt"][prompt] += 1
                lat["guard.response"][response] += 1
                if extra:
                    more.append(extra)
        if seen != bound.rows:
            raise IndexReadError(f"{bound.path}: {seen} rows, {bound.rows} bound")
        rows += seen
    t = Tallies(bucket_ms=bucket_ms)
    keys = _keys(definitions)
    _fill(t, ((i, k.decode("ascii", "replace"), n) for (i, k), n in groups.items()), keys)
    if first is not None and last is not None:
        t.see_time(first, last)
    micro: dict[str, Counter[int]] = {}
    for name, counts in lat.items():
        counts.pop(b"", None)
        micro[name] = Counter(dict(zip(map(int, counts), counts.values(), strict=True)))
    for extra in more:
        for token in extra.split(b" "):
            micro[_MORE[chr(token[0])]][int(token[1:])] += 1
    t.latency = {name: nearest_rank(c) for name, c in micro.items() if c}
    t.latency_hist = {name: histogram(c) for name, c in micro.items() if c}
    return t


def _bin_sql(v: str, lo: int = 0, hi: int = len(LATENCY_BIN_EDGES_US) + 1) -> str:
    """SQL for the histogram bin (in ``lo..hi-1``) of ``v``: a balanced tree of comparisons.

    Bin ``i`` holds values below edge ``i`` and from edge ``i - 1`` on
    (:func:`~guardrail.audit.tally.latency_bin`); four comparisons a value.
    """
    if hi - lo == 1:
        return str(lo)
    mid = (lo + hi) // 2
    edge = LATENCY_BIN_EDGES_US[mid - 1]
    return f"CASE WHEN {v} < {edge} THEN {_bin_sql(v, lo, mid)} ELSE {_bin_sql(v, mid, hi)} END"


def _latency(t: Tallies, name: str, n: Any, values: Any, bins: Any) -> None:
    """Note one latency's count, percentiles and histogram (bin -> count) from DuckDB."""
    if n:
        p50, p95, p99 = values
        t.latency[name] = (int(n), int(p50), int(p95), int(p99))
        counts = [0] * (len(LATENCY_BIN_EDGES_US) + 1)
        for index, k in bins.items():
            counts[int(index)] = int(k)
        t.latency_hist[name] = tuple(counts)


def _define(definitions: dict[str, str], kid: str, text: str) -> None:
    known = definitions.setdefault(kid, text)
    if known != text:
        raise IndexReadError(f"key id {kid!r} has two definitions")


# ------------------------------------------------------------------------- DuckDB

_CSV_COLUMNS = (
    "{'seq': 'BIGINT', 'ms': 'BIGINT', 'key': 'VARCHAR', 'guard_us': 'BIGINT', "
    "'upstream_us': 'BIGINT', 'total_us': 'BIGINT', 'prompt_us': 'BIGINT', "
    "'response_us': 'BIGINT', 'more': 'VARCHAR'}"
)


def duckdb_index_tallies(indexes: Sequence[BoundIndex], bucket_ms: int) -> Tallies:
    """The DuckDB engine over indexes: parallel CSV reading, grouped counts, quantiles."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        return _duck(con, indexes, bucket_ms)
    except duckdb.Error as exc:
        raise IndexReadError(f"duckdb could not read the index: {exc}") from exc
    finally:
        con.close()


def _duck(con: Any, indexes: Sequence[BoundIndex], bucket_ms: int) -> Tallies:
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")  # not on the command's stderr
    parts = []
    params: list[Any] = []
    for bound in indexes:
        # Rows appended after the index was bound (seq beyond it) are left out; a row
        # being written meanwhile may be cut short, hence ignore_errors (the count of
        # rows read is checked below).
        params += [os.path.abspath(bound.path), bound.rows]
        parts.append(
            "SELECT * FROM read_csv(?, delim='\t', header=false, skip=1, quote='', "
            f"escape='', columns={_CSV_COLUMNS}, auto_detect=false, ignore_errors=true, "
            "null_padding=true) WHERE seq <= ?"
        )
    con.execute("CREATE TEMP TABLE r AS " + " UNION ALL ".join(parts), params)
    definitions: dict[str, str] = {}
    for kid, text in con.execute("SELECT DISTINCT key, more FROM r WHERE seq = 0").fetchall():
        _define(definitions, str(kid), str(text))
    keys = _keys(definitions)
    row = con.execute("SELECT count(*), min(ms), max(ms) FROM r WHERE seq > 0").fetchone()
    count, first, last = row if row is not None else (0, None, None)
    if count != sum(b.rows for b in indexes):
        raise IndexReadError("the index's rows do not add up to its bound count")
    t = Tallies(bucket_ms=bucket_ms)
    groups = con.execute(
        f"SELECT ms // {bucket_ms}, key, count(*) FROM r WHERE seq > 0 GROUP BY ALL"
    ).fetchall()
    _fill(t, ((int(i), str(k), int(n)) for i, k, n in groups), keys)
    if first is not None and last is not None:
        t.see_time(first, last)
    # The latencies: the columns, and for the check stages the tokens of `more` too.
    # Each is read once for its count, percentiles and histogram.
    call = ", ".join(
        f"count({c}), quantile_disc({c}, [0.5, 0.95, 0.99]), "
        f"histogram({_bin_sql(c)}) FILTER (WHERE {c} IS NOT NULL)"
        for _, c in _COLUMNS[:3]
    )
    row = con.execute(f"SELECT {call} FROM r WHERE seq > 0").fetchone()
    assert row is not None
    for k, (name, _) in enumerate(_COLUMNS[:3]):
        _latency(t, name, *row[3 * k : 3 * k + 3])
    for token, name in _MORE.items():
        column = dict(_COLUMNS)[name]
        found = con.execute(
            f"SELECT count(v), quantile_disc(v, [0.5, 0.95, 0.99]), histogram({_bin_sql('v')}) "
            f"FROM (SELECT {column} AS v FROM r WHERE seq > 0 AND {column} IS NOT NULL "
            "UNION ALL SELECT CAST(tok[2:] AS BIGINT) FROM (SELECT unnest(string_split(more, "
            f"' ')) AS tok FROM r WHERE seq > 0 AND more IS NOT NULL) WHERE tok[1] = '{token}')"
        ).fetchone()
        assert found is not None
        _latency(t, name, *found)
    return t
