"""A log's index (LOG.index): written by the sink, trusted only when the chain commits it.

The logs are written by real guarded calls (``test_audit_review.write_log``).
``stats`` must give the same figures from the index as from the log, and read
the log instead whenever the index is missing, stale, edited or cannot describe
a record; ``verify`` must find an edited index (at its line), and tell an index
a crash left behind (which the next sink catches up) from one that was edited.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_audit_review import ENGINES, write_log

from guardrail.audit import AuditFileError, JsonlSink, record_dict, verify_log, write_event
from guardrail.audit.index import INDEX_HEADER, BoundIndex, bind_index, index_path
from guardrail.audit.indexstats import duckdb_index_tallies, python_index_tallies
from guardrail.audit.indexwriter import INDEX_DROPPED
from guardrail.audit.linefmt import v2_index
from guardrail.audit.stats import AuditStats, compute_stats, duckdb_available

HOW = {"engine", "source", "source_note"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("index") / "audit.jsonl"
    write_log(path, "full")
    return path


@pytest.fixture
def log(written: Path, tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    shutil.copy(written, path)
    shutil.copy(index_path(written), index_path(path))
    return path


def stats(path: Path, *, engine: str = "python", index: bool = True) -> AuditStats:
    return compute_stats([path], engine=engine, index=index)  # type: ignore[arg-type]


def same(a: AuditStats, b: AuditStats) -> bool:
    return a.model_dump(exclude=HOW) == b.model_dump(exclude=HOW)


def index_lines(path: Path) -> list[bytes]:
    return index_path(path).read_bytes().splitlines(keepends=True)


def append_calls(path: Path, n: int, **sink: bool) -> None:
    with JsonlSink(path, **sink) as s:
        for i in range(n):
            s.write_json(
                record_dict(
                    policy={"name": "p"},
                    stages=[],
                    time=datetime(2026, 11, 4, 10, i, tzinfo=timezone.utc),
                    content_mode="none",
                )
            )


# ------------------------------------------------------------------- what is written


def test_the_sink_writes_an_index_the_log_commits(log: Path) -> None:
    rows = index_lines(log)
    assert rows[0] == INDEX_HEADER
    records = log.read_bytes().splitlines()
    data = [r for r in rows[1:] if not r.startswith(b"0\t")]
    assert [int(r.split(b"\t")[0]) for r in data] == list(range(1, len(records) + 1))
    definitions = [r for r in rows[1:] if r.startswith(b"0\t")]
    assert len(definitions) == len({r.split(b"\t")[2] for r in data})  # each key once
    bound = bind_index(log)
    assert isinstance(bound, BoundIndex)
    assert bound.rows == len(records)
    # The last record's line commits the SHA-256 of the whole index.
    import hashlib

    digest = hashlib.sha256(index_path(log).read_bytes()).hexdigest().encode()
    assert v2_index(records[-1]) == digest


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bucket", [None, "15m", "1h"])
def test_stats_from_the_index_equal_stats_from_the_log(
    log: Path, engine: str, bucket: str | None
) -> None:
    full = compute_stats([log], engine="python", bucket=bucket, index=False)
    fast = compute_stats([log], engine=engine, bucket=bucket)  # type: ignore[arg-type]
    assert (fast.source, full.source) == ("index", "log")
    assert same(fast, full)
    assert fast.calls > 0
    assert fast.latency["guard.response"].count > 0


@pytest.mark.skipif(not duckdb_available(), reason="guardrail[analytics] (duckdb) not installed")
def test_several_logs_from_their_indexes(log: Path, written: Path) -> None:
    both = [log, written]
    full = compute_stats(both, engine="python", index=False)
    for engine in ("python", "duckdb"):
        fast = compute_stats(both, engine=engine)  # type: ignore[arg-type]
        assert fast.source == "index"
        assert same(fast, full)
    # One log without an index: all of them are read themselves, with the reason.
    index_path(log).unlink()
    mixed = compute_stats(both)
    assert mixed.source == "log"
    assert mixed.source_note.startswith(f"{log}: no index")
    assert same(mixed, full)


# ---------------------------------------------------------- refused, and the log read


def _edit_row(path: Path, number: int, column: int, value: bytes) -> int:
    """Set one column of record ``number``'s row; the row's index line."""
    rows = index_lines(path)
    at = next(i for i, r in enumerate(rows) if r.startswith(b"%d\t" % number))
    fields = rows[at].rstrip(b"\n").split(b"\t")
    fields[column] = value
    rows[at] = b"\t".join(fields) + b"\n"
    index_path(path).write_bytes(b"".join(rows))
    return at + 1


@pytest.mark.parametrize("engine", ENGINES)
def test_an_edited_index_is_refused_by_stats_and_found_by_verify(log: Path, engine: str) -> None:
    full = stats(log, index=False)
    line = _edit_row(log, 3, 5, b"1")  # record 3's total latency: 1 us
    s = stats(log, engine=engine)
    assert s.source == "log"
    assert "does not match the log's last record" in s.source_note
    assert same(s, full)
    result = verify_log(log)
    assert result.chain.ok
    assert not result.ok
    assert result.index is not None
    assert (result.index.state, result.index.line) == ("mismatch", line)
    assert "was edited, added or removed" in result.index.message


def test_an_edited_key_definition_is_found_at_its_line(log: Path) -> None:
    rows = index_lines(log)
    at = next(i for i, r in enumerate(rows) if r.startswith(b"0\t"))
    rows[at] = rows[at].replace(b'"allow"', b'"block"')
    index_path(log).write_bytes(b"".join(rows))
    assert stats(log).source == "log"
    result = verify_log(log)
    assert result.index is not None
    assert result.index.state == "mismatch"
    # The definition precedes the first row using it: that row's digest differs.
    assert result.index.line == at + 2


def test_rows_removed_or_added_are_found(log: Path) -> None:
    rows = index_lines(log)
    removed = [*rows[:5], *rows[6:]]
    index_path(log).write_bytes(b"".join(removed))
    result = verify_log(log)
    assert result.index is not None
    assert result.index.state == "mismatch"
    index_path(log).write_bytes(b"".join([*rows, rows[-1]]))
    result = verify_log(log)
    assert result.index is not None
    assert result.index.state == "mismatch"
    assert "rows past the log's last record" in result.index.message
    assert stats(log).source == "log"


def test_an_index_behind_the_log_is_caught_up_by_the_next_sink(log: Path) -> None:
    # A crash between a record's line and its row: the index ends one record early.
    full = stats(log, index=False)
    rows = index_lines(log)
    last = int(rows[-1].split(b"\t")[0])
    keep = next(i for i, r in enumerate(rows) if r.startswith(b"%d\t" % (last - 1))) + 1
    index_path(log).write_bytes(b"".join(rows[:keep]))  # the last row (and its key) gone
    s = stats(log)
    assert s.source == "log"
    assert same(s, full)
    result = verify_log(log)
    assert result.ok  # not a finding
    assert result.index is not None
    assert result.index.state == "behind"
    count = result.count
    assert f"ends at record {count - 1} of {count}" in result.index.message
    # A torn row at the end too (the crash hit the row's write).
    with open(index_path(log), "ab") as fh:
        fh.write(rows[keep][:7])
    assert "incomplete row" in str(bind_index(log))
    append_calls(log, 2)  # the next sink drops the torn bytes, rebuilds the row, goes on
    assert isinstance(bind_index(log), BoundIndex)
    after = verify_log(log)
    assert after.ok
    assert after.index is not None
    assert after.index.state == "ok"
    assert stats(log).source == "index"
    assert same(stats(log), stats(log, index=False))


def test_a_deleted_index_of_a_short_log_is_rebuilt(log: Path) -> None:
    before = index_path(log).read_bytes()
    index_path(log).unlink()
    assert "no index" in str(bind_index(log))
    assert verify_log(log).index is not None  # "missing": the records commit one
    assert verify_log(log).index.state == "missing"  # type: ignore[union-attr]
    with JsonlSink(log):
        pass
    assert index_path(log).read_bytes() == before  # a function of the records alone


def test_records_written_without_an_index_make_it_stale(log: Path) -> None:
    append_calls(log, 3, index=False)
    s = stats(log)
    assert s.source == "log"
    assert "commits no index" in s.source_note
    result = verify_log(log)
    assert result.ok
    assert result.index is not None
    assert result.index.state == "unbound"
    append_calls(log, 1)  # a log that has records without an index stays without one
    assert v2_index(log.read_bytes().splitlines()[-1]) is None


def test_a_record_stats_cannot_read_keeps_the_index_unused(log: Path) -> None:
    with JsonlSink(log) as sink:
        sink.write_json({"time": "2026-11-04T00:00:00.000Z", "final_action": ["x"]})
    assert "cannot read" in str(bind_index(log))
    with pytest.raises(AuditFileError) as info:
        stats(log)
    assert info.value.line == len(log.read_bytes().splitlines())
    assert verify_log(log).ok


def test_an_emptied_log_starts_a_new_index(log: Path) -> None:
    log.write_bytes(b"")  # rotated by copying and truncating
    append_calls(log, 2)
    assert index_lines(log)[0] == INDEX_HEADER
    bound = bind_index(log)
    assert isinstance(bound, BoundIndex)
    assert bound.rows == 2
    assert stats(log).calls == 2


def test_a_gzip_log_is_read_itself(log: Path, tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "audit.jsonl.1"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    shutil.copy(index_path(log), index_path(gz))
    s = stats(gz)
    assert s.source == "log"
    assert "gzip" in s.source_note
    assert same(s, stats(log))


# ------------------------------------------------------------------- writers and readers


def test_two_sinks_on_one_log_keep_its_index(log: Path) -> None:
    first, second = JsonlSink(log), JsonlSink(log)
    try:
        for i in range(6):
            sink = first if i % 2 else second
            write_event(sink, "breaker.open", {"n": i})
    finally:
        first.close()
        second.close()
    assert verify_log(log).index.state == "ok"  # type: ignore[union-attr]
    assert stats(log).source == "index"
    assert same(stats(log), stats(log, index=False))


@pytest.mark.parametrize("engine", ENGINES)
def test_rows_appended_after_binding_are_left_out(log: Path, engine: str) -> None:
    bound = bind_index(log)
    assert isinstance(bound, BoundIndex)
    before = stats(log)
    append_calls(log, 4)  # a live log: the files grow after the index was bound
    read = duckdb_index_tallies if engine == "duckdb" else python_index_tallies
    tallies = read([bound], 15 * 60 * 1000)
    assert sum(tallies.kinds.values()) == before.records


def test_a_failed_index_write_drops_the_index_and_says_so(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import guardrail.audit.indexwriter as writer

    def full_disk(fd: int, payload: bytes) -> None:
        raise OSError(28, "No space left on device")

    with JsonlSink(log) as sink:
        monkeypatch.setattr(writer, "write_all", full_disk)
        write_event(sink, "breaker.open", {"backend": "guard"})  # the record is written
        write_event(sink, "breaker.closed", {"backend": "guard"})
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    assert [x.get("type") for x in lines[-3:]] == ["breaker.open", INDEX_DROPPED, "breaker.closed"]
    assert lines[-2]["details"] == {
        "index": "audit.jsonl.index",
        "error": "No space left on device",
    }
    assert "index" not in lines[-1]
    result = verify_log(log)
    assert result.ok
    assert result.index is not None
    assert result.index.state == "unbound"
    assert stats(log).source == "log"
    assert same(stats(log), stats(log, index=False))


def test_verify_cli_reports_an_edited_index_as_a_finding(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from guardrail.cli import main

    line = _edit_row(log, 2, 3, b"7")
    assert main(["audit", "verify", str(log)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{log}.index:{line}: the index through this row does not match")
    assert out[1].endswith("chain intact, findings above")
    assert main(["audit", "stats", str(log), "--engine", "python"]) == 0
    captured = capsys.readouterr()
    assert "[engine python]" in captured.out
    assert captured.err.startswith("note: reading the logs, not their indexes: ")


def test_a_policy_can_turn_the_index_off(tmp_path: Path) -> None:
    from guardrail import Guard
    from guardrail.policy import load_policy_text
    from guardrail.testing import ScriptedClassifier

    for index in ("true", "false"):
        path = tmp_path / f"{index}.jsonl"
        text = f"version: 1\nname: p\naudit: {{path: '{path}', index: {index}}}\n"
        guard = Guard(load_policy_text(text), classifier=ScriptedClassifier({}))
        guard.check_prompt([{"role": "user", "content": "hi"}])
        guard.close()
        assert index_path(path).exists() == (index == "true")
        assert verify_log(path).ok
        assert stats(path).source == ("index" if index == "true" else "log")
