"""(h) Reading audit logs for review: records per second of stats, list, export, verify.

A synthetic but realistic log (:mod:`auditlog`: records built by the write side
and written by the real JSONL sink, with its index; about 1.9 KB a record) of
1,000,000 records in full mode and 100,000 in quick mode is generated once and
cached in the temp directory. Each command runs in process on the whole log,
output discarded; figures are records read per second.

The headline figures (``stats (duckdb, index)``, ``verify``) are each command's
FIRST run on the log, cold: the log's and the index's pages are dropped from
the page cache first (``fsync`` + ``posix_fadvise(DONTNEED)``), so the files are
read from disk, and nothing a run computes is kept for the next. The runs after
it are warm (pages cached); their median is in the note. Comparison rows
measure the paths they replace on the same records: ``stats`` reading the log
itself (``--no-index``), verifying a log of the previous chain layout (version
1, on its first 100,000 records), validating every line as a model.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from auditlog import cached_log, records, write_v1_log
from common import Row, iqr, median, row

from guardrail.audit.chain import verify_chain
from guardrail.audit.index import index_path
from guardrail.audit.jsonl import JsonlSink
from guardrail.audit.reader import read_entries
from guardrail.audit.scan import scan
from guardrail.audit.stats import compute_stats, duckdb_available
from guardrail.audit.verify import verify_log
from guardrail.cli import main as cli

BENCH = "h"
UNIT = "records/s"


def _drop_cache(*paths: Path) -> None:
    """Evict the files' pages from the page cache: the next read comes from disk."""
    for path in paths:
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _spread(rates: list[float]) -> str:
    """The IQR of rates, in k/s or M/s."""
    return iqr(rates, 1e-6, "M") if median(rates) >= 1e6 else iqr(rates, 1e-3, "k")


def _rate(records: int, fn: Callable[[], object], runs: int) -> tuple[float, str]:
    """Median records/s over ``runs`` timed runs, and their spread."""
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        rates.append(records / (time.perf_counter() - started))
    return median(rates), _spread(rates)


def _cold_then_warm(
    records: int, fn: Callable[[], object], files: list[Path], warm: int
) -> tuple[float, float, list[float]]:
    """records/s of a first run after dropping the files' cached pages, then warm runs."""
    _drop_cache(*files)
    started = time.perf_counter()
    fn()
    cold = records / (time.perf_counter() - started)
    rates = []
    for _ in range(warm):
        started = time.perf_counter()
        fn()
        rates.append(records / (time.perf_counter() - started))
    return cold, median(rates), rates


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


def _stats(path: str, engine: str, index: bool) -> Callable[[], object]:
    def run() -> object:
        result = compute_stats([path], engine=engine, index=index)  # type: ignore[arg-type]
        want = "index" if index else "log"
        if result.source != want:
            raise RuntimeError(f"stats read the {result.source}: {result.source_note}")
        return result

    return run


def _verify(path: str) -> Callable[[], object]:
    def run() -> object:
        result = verify_log(path)
        if not result.ok or (result.index is not None and result.index.state != "ok"):
            raise RuntimeError(f"verify failed: {result}")
        return result

    return run


def _sink_cost(tmp: Path, count: int) -> tuple[float, float]:
    """Median time per record of JsonlSink.write_json with and without the index, in us.

    Batches of 500 records alternate between the two sinks, so both see the same
    machine; each batch's per-record time is one sample.
    """
    data = list(records(count))
    sinks = {
        True: JsonlSink(tmp / "indexed.jsonl"),
        False: JsonlSink(tmp / "plain.jsonl", index=False),
    }
    samples: dict[bool, list[float]] = {True: [], False: []}
    try:
        for start in range(0, count, 500):
            batch = data[start : start + 500]
            for indexed in (True, False) if start % 1000 else (False, True):
                write = sinks[indexed].write_json
                began = time.perf_counter()
                for record in batch:
                    write(record)
                samples[indexed].append((time.perf_counter() - began) / len(batch) * 1e6)
    finally:
        for sink in sinks.values():
            sink.close()
    return statistics.median(samples[True]), statistics.median(samples[False])


def run(quick: bool) -> list[Row]:
    """The audit review benchmark rows."""
    count = 100_000 if quick else 1_000_000
    warm = 2
    started = time.perf_counter()
    log = cached_log(count)
    index = index_path(log)
    size = log.stat().st_size
    print(
        f"bench_audit: log of {count} records ready in {time.perf_counter() - started:.0f} s "
        f"({size / 1e6:.0f} MB, index {index.stat().st_size / 1e6:.0f} MB)",
        file=sys.stderr,
    )
    path = str(log)
    rows: list[Row] = []
    note = f"{count} records, {size / count:.0f} B each"
    both = [log, index]
    engines = ["duckdb", "python"] if duckdb_available() else ["python"]
    if duckdb_available():
        import duckdb  # imported before timing: a process imports it once

        duckdb.connect().close()

    for engine in engines:
        cold, warm_rate, rates = _cold_then_warm(count, _stats(path, engine, True), both, warm)
        rows.append(
            row(
                BENCH,
                f"stats ({engine}, index)",
                UNIT,
                cold,
                UNIT,
                "warm " + _spread(rates),
                f"{note}; first run, cold cache; warm median {warm_rate / 1e3:.0f}k/s",
            )
        )
    for engine in engines:
        runs = warm if engine == "duckdb" or quick else 1
        value, spread = _rate(count, _stats(path, engine, False), runs)
        rows.append(
            row(
                BENCH,
                f"stats ({engine}, full log)",
                UNIT,
                value,
                UNIT,
                spread,
                f"{note}; --no-index, the previous path; warm",
            )
        )
    if duckdb_available():
        rows.append(
            row(
                BENCH,
                "stats (duckdb)",
                "index / full log",
                rows[0]["value"] / rows[len(engines)]["value"],
                "x",
                "",
                "index: first run, cold; full log: warm median",
            )
        )

    cold, warm_rate, rates = _cold_then_warm(count, _verify(path), both, warm)
    rows.append(
        row(
            BENCH,
            "verify",
            UNIT,
            cold,
            UNIT,
            "warm " + _spread(rates),
            f"{note}; chain v2 and its index; first run, cold cache; "
            f"warm median {warm_rate / 1e3:.0f}k/s",
        )
    )
    value, spread = _rate(count, _quiet(["audit", "list", path, "--action", "block"]), warm)
    rows.append(row(BENCH, "list --action block", UNIT, value, UNIT, spread, note))
    value, spread = _rate(
        count, _quiet(["audit", "export", path, "--format", "csv", "-o", os.devnull]), warm
    )
    rows.append(row(BENCH, "export --format csv", UNIT, value, UNIT, spread, note))

    # Context, on 100,000 records: the previous chain layout, and the readers replaced.
    n = min(count, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "v1.jsonl"
        write_v1_log(old, n)
        v1_rate, v1_spread = _rate(n, _verify(str(old)), warm)
        rows.append(
            row(
                BENCH,
                "verify (chain v1 log)",
                UNIT,
                v1_rate,
                UNIT,
                v1_spread,
                f"{n} records in the previous layout (parse and re-encode each); warm",
            )
        )
        lines = old.read_bytes().splitlines(keepends=True)
        texts = [line.decode() for line in lines]
        fast, _ = _rate(n, lambda: verify_chain(lines), warm)
        slow, _ = _rate(n, lambda: verify_chain(texts), warm)
        rows.append(
            row(
                BENCH,
                "verify chain v1",
                "orjson path / json path",
                fast / slow,
                "x",
                "",
                f"{n} records",
            )
        )
        head = Path(tmp) / "head.jsonl"
        with open(log, "rb") as fh:
            head.write_bytes(b"".join(fh.readline() for _ in range(n)))
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
        with_index, without = _sink_cost(Path(tmp), 20_000 if quick else 40_000)
    rows.append(
        row(
            BENCH,
            "JSONL sink",
            "index: added per record",
            with_index - without,
            "us",
            "",
            f"write_json median {with_index:.1f} us with the index, {without:.1f} us without "
            "(seal, write, index row, its digest)",
        )
    )
    return rows
