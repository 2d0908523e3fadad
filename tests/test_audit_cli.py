"""``guardrail audit verify | search | summary``, driven through the audit subcommand's parser."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from guardrail.audit import AuditRecord, JsonlSink, record_hash
from guardrail.cli import audit_cmd
from guardrail.errors import GuardrailError
from guardrail.types import Action, Category, Decision, SafetyLevel, Stage, Verdict

T0 = datetime(2026, 11, 3, 12, 0, 0, tzinfo=timezone.utc)


def _decision(
    stage: Stage,
    action: Action = Action.ALLOW,
    rule: str = "default",
    level: SafetyLevel = SafetyLevel.SAFE,
    category: Category | None = None,
    flags: tuple[str, ...] = (),
    refusal: bool | None = None,
) -> Decision:
    v = Verdict(
        stage=stage,
        level=level,
        category=category,
        refusal=refusal,
        model="guard",
        latency_s=0.01,
    )
    return Decision(stage=stage, action=action, rule_id=rule, reason=rule, verdict=v, flags=flags)


def _record(i: int, kind: str) -> AuditRecord:
    p = Stage.PROMPT
    r = Stage.RESPONSE
    stages = {
        "allow": [_decision(p), _decision(r)],
        "block": [_decision(p, Action.BLOCK, "no-pii", SafetyLevel.UNSAFE, Category.PII)],
        "flag": [
            _decision(p),
            _decision(r, Action.FLAG, "over-refusal", flags=("unnecessary_refusal",), refusal=True),
        ],
    }[kind]
    return AuditRecord.build(
        policy={"name": "strict", "version": "1", "hash": "sha256:00"},
        stages=stages,
        model="gpt-4o-mini",
        prompt=f"prompt {i}",
        response=None if kind == "block" else "answer",
        latency={"guard_s": 0.01 * (i + 1), "upstream_s": 0.1, "total_s": 0.2 + i / 100},
        time=T0 + timedelta(hours=i),
        request_id=f"{kind}{i}",
    )


KINDS = ["allow", "block", "flag", "allow", "block", "allow"]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        for i, kind in enumerate(KINDS):
            sink.write(_record(i, kind))
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardrail")
    sub = parser.add_subparsers(dest="command", required=True)
    audit_cmd.add_parser(sub)
    return parser


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Parse and run like the dispatcher: GuardrailError -> one line on stderr, exit 2."""
    args = _parser().parse_args(["audit", *argv])
    try:
        code: int = args.func(args)
    except GuardrailError as exc:
        print(f"guardrail: error: {exc}", file=sys.stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- verify


def _head(log: Path) -> str:
    head: str = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])["hash"]
    return head


def _ok_text(log: Path) -> str:
    return (
        f"OK  {log}  6 records, chain intact\n  head        {_head(log)}\n"
        f"  index       {log}.index: ok, 6 rows match the log\n"
    )


def test_verify_ok(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    code, out, _ = run(capsys, "verify", str(log))
    assert code == 0
    assert out == _ok_text(log)


def test_verify_edited_record(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    data = json.loads(lines[2])
    data["final_action"] = "allow"
    lines[2] = json.dumps(data) + "\n"
    log.write_text("".join(lines), encoding="utf-8")
    code, out, _ = run(capsys, "verify", str(log))
    assert code == 1
    first_hash = json.loads(lines[1])["hash"]
    assert out.splitlines()[0].startswith(f"{log}:3: hash mismatch, the record was edited")
    assert out.splitlines()[1:] == [
        f"    {log}  2 records verified before line 3",
        f"  head        {first_hash}",
    ]


def test_verify_deleted_record(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    del lines[3]
    log.write_text("".join(lines), encoding="utf-8")
    code, out, _ = run(capsys, "verify", str(log))
    assert code == 1
    assert out.startswith(f"{log}:4: prev_hash mismatch")


def test_verify_non_json_line(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(1, "this is not json\n")
    log.write_text("".join(lines), encoding="utf-8")
    code, out, _ = run(capsys, "verify", str(log))
    assert code == 1
    assert out.startswith(f"{log}:2: not valid JSON")


def test_verify_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    code, out, err = run(capsys, "verify", str(missing))
    assert code == 2
    assert out == ""
    assert err.startswith(f"guardrail: error: {missing}: cannot open audit log")
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- search


def _table_ids(out: str) -> list[str]:
    rows = out.splitlines()
    assert rows[0].split()[:3] == ["time", "request", "action"]
    return [row.split()[1] for row in rows[1:]]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["allow0", "block1", "flag2", "allow3", "block4", "allow5"]),
        (["--action", "block"], ["block1", "block4"]),
        (["--action", "BLOCK", "--since", "2026-11-03T13:30:00Z"], ["block4"]),
        (["--rule", "over-refusal"], ["flag2"]),
        (["--flag", "unnecessary_refusal"], ["flag2"]),
        (["--stage", "response"], ["allow0", "flag2", "allow3", "allow5"]),
        (["--level", "unsafe", "--category", "pii"], ["block1", "block4"]),
        (["--stage", "response", "--level", "unsafe"], []),
        (
            ["--since", "2026-11-03T14:00:00", "--until", "2026-11-03T17:00:00+01:00"],
            ["flag2", "allow3"],
        ),
        (["--until", "2026-11-03"], []),
        (["--request-id", "flag2"], ["flag2"]),
        (["--request-id", "flag"], []),
    ],
)
def test_search_table(
    capsys: pytest.CaptureFixture[str], log: Path, argv: list[str], expected: list[str]
) -> None:
    code, out, err = run(capsys, "search", str(log), *argv)
    assert code == 0
    assert _table_ids(out) == expected
    assert ("no matching records" in err) == (not expected)


def test_search_table_row_content(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    code, out, _ = run(capsys, "search", str(log), "--action", "flag")
    assert code == 0
    (row,) = out.splitlines()[1:]
    cells = row.split()
    assert cells[0] == "2026-11-03T14:00:00.000Z"
    assert cells[2:5] == ["flag", "-", "default,over-refusal"]
    assert "Safe refusal" in row
    assert "unnecessary_refusal" in row
    block = run(capsys, "search", str(log), "--action", "block")[1].splitlines()[1]
    assert block.split()[2:6] == ["block", "prompt", "no-pii", "Unsafe/PII"]


def test_search_json(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    code, out, _ = run(capsys, "search", str(log), "--action", "block", "--json")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    originals = log.read_text(encoding="utf-8").splitlines()
    # Each printed line is the stored line, chain fields included and still checkable.
    assert lines == [originals[1], originals[4]]
    for line in lines:
        data = json.loads(line)
        assert data["final_action"] == "block"
        assert record_hash(data) == data["hash"]


def test_search_rejects_unknown_names(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    for argv in (["--level", "dangerous"], ["--action", "deny"], ["--since", "yesterday"]):
        with pytest.raises(SystemExit) as info:
            _parser().parse_args(["audit", "search", str(log), *argv])
        assert info.value.code == 2


def test_search_unknown_level_message(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["audit", "search", str(log), "--level", "dangerous"])
    assert "'dangerous' is not one of: Safe, Unsafe, Controversial" in capsys.readouterr().err


def test_search_stops_at_a_bad_line_after_printing_matches(
    capsys: pytest.CaptureFixture[str], log: Path
) -> None:
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(3, '{"truncated": \n')
    log.write_text("".join(lines), encoding="utf-8")
    code, out, err = run(capsys, "search", str(log))
    assert code == 2
    assert _table_ids(out) == ["allow0", "block1", "flag2"]
    assert err.startswith(f"guardrail: error: {log}:4: not valid JSON")
    assert err.count("\n") == 1


def test_search_record_that_is_not_a_record(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"level": "info", "msg": "hello"}\n', encoding="utf-8")
    code, _, err = run(capsys, "search", str(path))
    assert code == 2
    assert err.startswith(f"guardrail: error: {path}:1: not an audit record: ")


# -------------------------------------------------------------------------- summary


def test_summary_is_stats_as_text(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    code, out, _ = run(capsys, "summary", str(log), "--engine", "python")
    assert code == 0
    title = f"{log}: 6 calls  (2026-11-03T12:00:00.000Z .. 2026-11-03T17:00:00.000Z)"
    assert out.startswith(f"{title}  [engine python, index]\n")  # read from the log's index
    assert run(capsys, "stats", str(log), "--engine", "python")[1] == out
    code, full, err = run(capsys, "stats", str(log), "--engine", "python", "--no-index")
    assert (code, err) == (0, "")
    assert full == out.replace("[engine python, index]", "[engine python]", 1)
    text = " ".join(out.split())
    assert "action count allow 3 block 2 flag 1" in text
    assert "rule count default 4 no-pii 2 over-refusal 1" in text
    assert "flag count unnecessary_refusal 1" in text
    assert "prompt 6 Safe=4 Unsafe=2 PII=2" in text
    assert "response 4 Safe=4 -" in text
    assert "answers flagged unnecessary_refusal 1 4 25.00%" in text
    assert "guard errors (checks) 0 10 0.00%" in text
    assert "total 6 220.0 250.0 250.0" in text
    assert "per 15m (UTC)" in text


def test_summary_is_stats_as_json(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    code, out, _ = run(capsys, "summary", str(log), "--json")
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    assert data["calls"] == 6
    assert data["by_action"] == {"allow": 3, "block": 2, "flag": 1}
    assert data["by_flag"] == {"unnecessary_refusal": 1}
    assert data["by_level"]["response"] == {"Safe": 4}
    guard = data["latency"]["guard"]
    assert guard["count"] == 6
    assert guard["p50"] == pytest.approx(0.03)
    assert guard["p95"] == pytest.approx(0.06)
    assert guard["p99"] == pytest.approx(0.06)


def test_summary_bad_file(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    with log.open("a", encoding="utf-8") as fh:
        fh.write("garbage\n")
    code, out, err = run(capsys, "summary", str(log))
    assert code == 2
    assert out == ""
    assert err.startswith(f"guardrail: error: {log}:7: not valid JSON")


def test_audit_needs_an_action() -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["audit"])
    assert info.value.code == 2


@pytest.mark.skipif(
    any(
        importlib.util.find_spec(f"guardrail.cli.{name}_cmd") is None
        for name in ("check", "policy")
    ),
    reason="the other subcommands are not in the tree yet",
)
def test_through_the_dispatcher(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    from guardrail.cli import main

    assert main(["audit", "verify", str(log)]) == 0
    assert capsys.readouterr().out == _ok_text(log)
    assert main(["audit", "verify", str(log.parent / "missing.jsonl")]) == 2
    assert "cannot open audit log" in capsys.readouterr().err


def test_verify_json_ok(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    code, out, _ = run(capsys, "verify", "--json", str(log))
    assert code == 0
    assert json.loads(out) == {
        "path": str(log),
        "ok": True,
        "chain_ok": True,
        "count": 6,
        "kinds": {"call": 6},
        "head": _head(log),
        "problem": None,
        "anchors": [],
        "recoveries": [],
        "index": {
            "path": f"{log}.index",
            "state": "ok",
            "message": "6 rows match the log",
            "line": None,
        },
    }


def test_verify_json_names_the_problem_and_a_failed_anchor(
    capsys: pytest.CaptureFixture[str], log: Path
) -> None:
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    log.write_text("".join(lines[:-1]), encoding="utf-8")  # the tail cut
    code, out, _ = run(capsys, "verify", "--json", "--min-count", "6", str(log))
    assert code == 1
    data = json.loads(out)
    assert (data["ok"], data["chain_ok"], data["count"], data["problem"]) == (False, True, 5, None)
    (anchor,) = data["anchors"]
    assert anchor["anchor"] == "--min-count 6"
    assert anchor["ok"] is False
