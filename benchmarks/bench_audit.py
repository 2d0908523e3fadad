"""(h) Reading audit logs for review: records per second of stats, list, export, verify.

A synthetic but realistic log (:mod:`auditlog`: records built by the write side
and sealed by the hash chain; about 1.9 KB a record) of 1,000,000 records in full
mode and 100,000 in quick mode is generated once and cached in the temp
directory. Each command runs in process on the whole log, output discarded;
figures are records read per second (median of the runs). Context rows measure
the readers they replace on the same records, side by side: validating every
line as a model (``read_entries``), and verifying through the ``json`` module.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from auditlog import cached_log
from common import Row, iqr, median, row

from guardrail.audit.chain import verify_chain
from guardrail.audit.reader import read_entries
from guardrail.audit.scan import scan
from guardrail.audit.stats import compute_stats, duckdb_available
from guardrail.audit.verify import verify_log
from guardrail.cli import main as cli

BENCH = "h"
UNIT = "records/s"


def _rate(records: int, fn: Callable[[], object], runs: int) -> tuple[float, str]:
    """Median records/s over ``runs`` timed runs, and their spread."""
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        rates.append(records / (time.perf_counter() - started))
    return median(rates), iqr(rates, 1e-3, "k")


def _quiet(argv: list[str]) -> Callable[[], object]:
    def run() -> object:
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            code = cli(argv)
        if code != 0:
            raise RuntimeError(f"guardrail {' '.join(argv)} exited {code}")
        return code

    return run


def _duckdb_scan(path: str) -> object:
    import duckdb

    from guardrail.audit.duck import _source

    source, params = _source([path])
    with duckdb.connect() as con:
        return con.execute(
            "SELECT count(*), sum(len(stages)), count(kind), count(time), sum(len(flags)), "
            f"count(final_action), sum(latency.total_s) FROM ({source})",
            params,
        ).fetchall()


def _duckdb_lines(path: str) -> object:
    import duckdb

    with duckdb.connect() as con:
        return con.execute(
            "SELECT count(*) FROM read_csv(?, columns={'line': 'VARCHAR'}, delim='\x01', "
            "quote='', escape='', header=false)",
            [path],
        ).fetchall()


def _prefix(path: Path, records: int) -> list[bytes]:
    lines = []
    with open(path, "rb") as fh:
        for _ in range(records):
            lines.append(fh.readline())
    return lines


def run(quick: bool) -> list[Row]:
    """The audit review benchmark rows."""
    records = 100_000 if quick else 1_000_000
    runs = 3 if quick else 2
    started = time.perf_counter()
    log = cached_log(records)
    print(
        f"bench_audit: log of {records} records ready in {time.perf_counter() - started:.0f} s "
        f"({log.stat().st_size / 1e6:.0f} MB)",
        file=sys.stderr,
    )
    path = str(log)
    compute_stats([path], engine="python")  # warm-up: the file in the page cache
    rows: list[Row] = []
    note = f"{records} records, {log.stat().st_size / records:.0f} B each"
    engines = ["duckdb", "python"] if duckdb_available() else ["python"]
    for engine in engines:
        value, spread = _rate(records, lambda e=engine: compute_stats([path], engine=e), runs)
        rows.append(row(BENCH, f"stats ({engine})", UNIT, value, UNIT, spread, note))
    if duckdb_available():
        # Context: DuckDB's floor on this machine, its bare scan of the fields stats reads,
        # and merely splitting the file into lines.
        scan_rate, _ = _rate(records, lambda: _duckdb_scan(path), 1)
        lines_rate, _ = _rate(records, lambda: _duckdb_lines(path), 1)
        rows.append(
            row(
                BENCH,
                "stats (duckdb)",
                "/ bare JSON scan",
                rows[0]["value"] / scan_rate,
                "x",
                "",
                f"bare scan {scan_rate / 1e3:.0f}k/s; lines only {lines_rate / 1e3:.0f}k/s",
            )
        )
    value, spread = _rate(records, _quiet(["audit", "list", path, "--action", "block"]), runs)
    rows.append(row(BENCH, "list --action block", UNIT, value, UNIT, spread, note))
    out = os.devnull
    value, spread = _rate(
        records, _quiet(["audit", "export", path, "--format", "csv", "-o", out]), runs
    )
    rows.append(row(BENCH, "export --format csv", UNIT, value, UNIT, spread, note))
    value, spread = _rate(records, lambda: verify_log(path), runs)
    rows.append(row(BENCH, "verify", UNIT, value, UNIT, spread, note))

    # Context, on the first 100,000 records: the readers these paths replace.
    n = min(records, 100_000)
    lines = _prefix(log, n)
    texts = [line.decode() for line in lines]
    fast, _ = _rate(n, lambda: verify_chain(lines), runs)
    slow, _ = _rate(n, lambda: verify_chain(texts), runs)
    rows.append(
        row(BENCH, "verify chain", "fast path / json path", fast / slow, "x", "", f"{n} records")
    )
    with tempfile.TemporaryDirectory() as tmp:
        head = Path(tmp) / "head.jsonl"
        head.write_bytes(b"".join(lines))
        models, _ = _rate(n, lambda: sum(1 for _ in read_entries(head)), 1)
        scanned, _ = _rate(n, lambda: sum(1 for _ in scan([head])), 1)
    rows.append(
        row(
            BENCH,
            "scan",
            "dict scan / model reader",
            scanned / models,
            "x",
            "",
            f"{n} records; models: {models / 1e3:.0f}k records/s",
        )
    )
    return rows
