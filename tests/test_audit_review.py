"""``guardrail audit list | show | stats | export`` on logs written by real guarded calls.

The logs come from a ``Guard`` judged by a ``ScriptedClassifier`` through the
real verdict parser: a wrapped openai client against a loopback upstream
(plain and streamed calls, two candidates) and direct ``check_prompt`` /
``check_response`` calls, with circuit breaker events in between. What each
command should print is computed here from the raw JSON lines, independently of
the scan, the filters and the statistics engines.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import shutil
import struct
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import fake_llm, last_user

import guardrail
from guardrail import Guard
from guardrail.audit import JsonlSink, record_dict, verify_chain, write_event
from guardrail.audit.chain import HashChain, canonical_json, record_hash
from guardrail.audit.export import CSV_COLUMNS
from guardrail.audit.reader import RecordFilter, filter_records, read_entries
from guardrail.audit.scan import scan
from guardrail.audit.stats import compute_stats, duckdb_available
from guardrail.cli import main
from guardrail.policy import load_policy_text
from guardrail.qwen3guard import GuardInput
from guardrail.testing import SAFE_PROMPT, SAFE_RESPONSE, ScriptedClassifier
from guardrail.types import Stage

Record = dict[str, Any]


def script(inp: GuardInput) -> str:
    """Prompt verdicts keyed on the user's text, response verdicts on the answer's."""
    text = inp.messages[-1].content
    if inp.stage is Stage.PROMPT:
        if "fail-p" in text:
            raise RuntimeError("guard down")
        if "unsafe-p" in text:
            return "Safety: Unsafe\nCategories: Violent"
        if "pii-p" in text:
            return "Safety: Unsafe\nCategories: PII"
        if "ctrl-p" in text:
            return "Safety: Controversial\nCategories: Politically Sensitive Topics"
        return SAFE_PROMPT
    if "fail-r" in text:
        raise RuntimeError("guard down")
    if "unsafe-r" in text:
        return "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    if "ctrl-r" in text:
        return "Safety: Controversial\nCategories: Unethical Acts\nRefusal: No"
    if "refuse" in text:
        return "Safety: Safe\nCategories: None\nRefusal: Yes"
    return SAFE_RESPONSE


POLICY = """version: 1
name: review
failure: {prompt: open, response: closed}
block: {behavior: message, message: blocked}
guard: {breaker: {enabled: false}}
audit: {sink: jsonl, path: "PATH", content: CONTENT}
rules:
  - {id: block-unsafe-prompt, stage: prompt, when: {levels: [Unsafe]}, action: block}
  - {id: flag-controversial-prompt, stage: prompt, when: {levels: [Controversial]},
     action: flag, flag: controversial_prompt}
  - {id: block-unsafe-response, stage: response, when: {levels: [Unsafe]}, action: block}
  - id: unnecessary-refusal
    stage: response
    when: {prompt_levels: [Safe], levels: [Safe], refusal: true}
    action: flag
    flag: unnecessary_refusal
  - {id: flag-controversial-response, stage: response, when: {levels: [Controversial]},
     action: flag, flag: controversial_response}
"""

CALLS = (
    ("chat", "hello there"),
    ("chat", "ctrl-p topic"),
    ("chat", "unsafe-p plan"),
    ("chat", "tell a ctrl-r story"),
    ("chat", "tell an unsafe-r story"),
    ("chat", "please refuse this"),
    ("chat", "Please REFUSE again"),
    ("chat", "fail-p now"),
    ("chat", "fail-r now"),
    ("chat2", "two answers"),
    ("stream", "stream a ctrl-r tale"),
    ("stream", "stream hello"),
    ("check_prompt", "ctrl-p direct"),
    ("check_prompt", "pii-p direct"),
    ("check_response", "answer ctrl-r"),
    ("check_response", "I refuse"),
    ("check_prompt", "fail-p direct"),
)


def write_log(path: Path, content: str) -> None:
    """Every call of CALLS through a guard writing ``path``, with breaker events between."""
    text = POLICY.replace("PATH", str(path)).replace("CONTENT", content)
    guard = Guard(load_policy_text(text), classifier=ScriptedClassifier(script))
    with fake_llm(lambda messages, i: f"answer {i}: {last_user(messages)}") as llm:
        client = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)
        for i, (kind, prompt) in enumerate(CALLS):
            messages = [{"role": "user", "content": prompt}]
            if kind in ("chat", "chat2"):
                n = 2 if kind == "chat2" else 1
                client.chat.completions.create(model="m", messages=messages, n=n)
            elif kind == "stream":
                for _ in client.chat.completions.create(model="m", messages=messages, stream=True):
                    pass
            elif kind == "check_prompt":
                guard.check_prompt(messages)
            else:
                guard.check_response([{"role": "user", "content": "hi"}], prompt)
            if i == 4:
                write_event(guard.sink, "breaker.open", {"backend": "guard"})
            if i == 9:
                write_event(guard.sink, "breaker.closed", {"backend": "guard"})
    guard.close()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("review")
    out = {}
    for content in ("full", "hash"):
        out[content] = base / f"{content}.jsonl"
        write_log(out[content], content)
    gz = base / "full.jsonl.1"  # a rotated log: gzip, told by its bytes, not its name
    with open(out["full"], "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    out["gzip"] = gz
    return out


def raw_lines(*paths: Path) -> list[str]:
    """Every record line of the logs, in order, read without the package's readers."""
    lines: list[str] = []
    for path in paths:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        lines += [line for line in data.decode().splitlines() if line.strip()]
    return lines


def calls(lines: list[str]) -> list[Record]:
    return [r for r in map(json.loads, lines) if "kind" not in r]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_logs_hold_what_the_filters_need(logs: dict[str, Path]) -> None:
    records = calls(raw_lines(logs["full"]))
    assert len(records) == len(CALLS)
    assert {r["final_action"] for r in records} == {"allow", "flag", "block"}
    assert any("unnecessary_refusal" in r["flags"] for r in records)
    assert any(e["error"] is not None for r in records for e in r["stages"])
    assert any(r["mode"] == "streaming" for r in records)


# --------------------------------------------------------------------------- list


def _checks(r: Record, test: Callable[[Record], bool]) -> bool:
    return any(test(e) for e in r["stages"])


def _verdict(e: Record, key: str) -> Any:
    return (e["verdict"] or {}).get(key)


# (argv, independent predicate on the raw record dict)
FILTERS: list[tuple[list[str], Callable[[Record], bool]]] = [
    (["--action", "block"], lambda r: r.get("final_action") == "block"),
    (["--action", "FLAG"], lambda r: r.get("final_action") == "flag"),
    (
        ["--rule", "unnecessary-refusal"],
        lambda r: (
            "kind" not in r
            and _checks(r, lambda e: e["decision"]["rule_id"] == "unnecessary-refusal")
        ),
    ),
    (
        ["--stage", "response", "--level", "unsafe"],
        lambda r: (
            "kind" not in r
            and _checks(r, lambda e: e["stage"] == "response" and _verdict(e, "level") == "Unsafe")
        ),
    ),
    (
        ["--stage", "prompt", "--level", "Unsafe", "--category", "pii"],
        lambda r: (
            "kind" not in r
            and _checks(
                r,
                lambda e: (
                    e["stage"] == "prompt"
                    and _verdict(e, "level") == "Unsafe"
                    and _verdict(e, "category") == "PII"
                ),
            )
        ),
    ),
    (
        ["--level", "controversial"],
        lambda r: "kind" not in r and _checks(r, lambda e: _verdict(e, "level") == "Controversial"),
    ),
    (
        ["--category", "Violent"],
        lambda r: "kind" not in r and _checks(r, lambda e: _verdict(e, "category") == "Violent"),
    ),
    (["--flag", "unnecessary_refusal"], lambda r: "unnecessary_refusal" in r.get("flags", [])),
    (["--flag", "guard_error"], lambda r: "guard_error" in r.get("flags", [])),
    (
        ["--text", "refuse"],
        lambda r: (
            "kind" not in r
            and r["content"]["mode"] == "full"
            and any(
                "refuse" in (t or "").lower()
                for t in (r["content"]["prompt"], r["content"]["response"])
            )
        ),
    ),
    (["--kind", "event"], lambda r: r.get("kind") == "event"),
    (["--kind", "call"], lambda r: "kind" not in r),
    (["--event", "breaker.open"], lambda r: r.get("type") == "breaker.open"),
    (
        ["--action", "allow", "--stage", "response"],
        lambda r: (
            r.get("final_action") == "allow" and _checks(r, lambda e: e["stage"] == "response")
        ),
    ),
]


@pytest.mark.parametrize("content", ["full", "hash"])
@pytest.mark.parametrize(
    ("argv", "expected"), FILTERS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_list_returns_exactly_the_matching_records(
    capsys: pytest.CaptureFixture[str],
    logs: dict[str, Path],
    content: str,
    argv: list[str],
    expected: Callable[[Record], bool],
) -> None:
    log = logs[content]
    want = [line for line in raw_lines(log) if expected(json.loads(line))]
    code, out, err = cli(capsys, "list", str(log), *argv, "--json")
    assert code == 0
    assert out.splitlines() == want  # the stored lines verbatim, in order
    assert ("no matching records" in err) == (not want)
    # The table lists the same records, one row each after the header.
    code, table, _ = cli(capsys, "list", str(log), *argv)
    assert len(table.splitlines()) == 1 + len(want)
    # The library's model filter agrees with the dict scan.
    criteria = _criteria(argv)
    by_models = [e.to_json_dict() for e in filter_records(read_entries(log), criteria)]
    assert [canonical_json(d) for d in by_models] == [
        canonical_json(r.data) for r in scan([log], criteria)
    ]


def _criteria(argv: list[str]) -> RecordFilter:
    from guardrail.cli import build_parser
    from guardrail.cli.audit_review import criteria_of

    return criteria_of(build_parser().parse_args(["audit", "list", "x", *argv]))


def test_some_filters_match_and_some_do_not(logs: dict[str, Path]) -> None:
    # The parametrised cases above are not vacuous: most match something, in each log.
    lines = raw_lines(logs["full"])
    matched = [sum(map(pred, map(json.loads, lines))) for _, pred in FILTERS]
    assert sum(1 for n in matched if n) >= len(FILTERS) - 1
    assert all(n < len(lines) for n in matched)


def test_hashed_content_cannot_be_searched(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    code, out, _ = cli(capsys, "list", str(logs["full"]), "--text", "CTRL-P", "--json")
    kept = [
        r["request_id"]
        for r in calls(raw_lines(logs["full"]))
        if any("ctrl-p" in (t or "") for t in (r["content"]["prompt"], r["content"]["response"]))
    ]
    assert code == 0
    assert len(kept) >= 2
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == kept
    code, out, err = cli(capsys, "list", str(logs["hash"]), "--text", "ctrl-p", "--json")
    assert code == 0
    assert out == ""
    assert "no matching records" in err


def test_time_range_and_request_id(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    lines = raw_lines(logs["full"])
    records = [json.loads(line) for line in lines]
    times = sorted({r["time"] for r in records})
    assert len(times) >= 3
    since, until = times[1], times[-1]
    want = [line for line, r in zip(lines, records, strict=True) if since <= r["time"] < until]
    code, out, _ = cli(
        capsys, "list", str(logs["full"]), "--since", since, "--until", until, "--json"
    )
    assert out.splitlines() == want
    # An offset is honoured: the same instant written in UTC+02:00.
    t = datetime.fromisoformat(since.replace("Z", "+00:00")).astimezone(
        timezone(timedelta(hours=2))
    )
    code, out2, _ = cli(
        capsys, "list", str(logs["full"]), "--since", t.isoformat(), "--until", until, "--json"
    )
    assert code == 0
    assert out2 == out
    rid = calls(lines)[3]["request_id"]
    _code, out, _ = cli(capsys, "list", str(logs["full"]), "--request-id", rid, "--json")
    assert [json.loads(x)["request_id"] for x in out.splitlines()] == [rid]


def test_limit_stops_after_n_records(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    lines = raw_lines(logs["full"])
    _code, out, _ = cli(capsys, "list", str(logs["full"]), "--limit", "4", "--json")
    assert out.splitlines() == lines[:4]


def test_search_is_list(capsys: pytest.CaptureFixture[str], logs: dict[str, Path]) -> None:
    a = cli(capsys, "search", str(logs["full"]), "--action", "block")
    b = cli(capsys, "list", str(logs["full"]), "--action", "block")
    assert a == b
    assert a[1].count("\n") > 1


def test_gzip_and_several_logs(capsys: pytest.CaptureFixture[str], logs: dict[str, Path]) -> None:
    _code, out, _ = cli(
        capsys,
        "list",
        str(logs["gzip"]),
        str(logs["hash"]),
        "--flag",
        "unnecessary_refusal",
        "--json",
    )
    want = [
        line
        for line in raw_lines(logs["gzip"], logs["hash"])
        if "unnecessary_refusal" in json.loads(line).get("flags", [])
    ]
    assert len(want) >= 2
    assert out.splitlines() == want
    assert {json.loads(line)["content"]["mode"] for line in want} == {"full", "hash"}
    assert raw_lines(logs["gzip"]) == raw_lines(logs["full"])


# --------------------------------------------------------------------------- show


def test_show_prints_one_record_by_id_or_unique_prefix(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    records = calls(raw_lines(logs["full"]))
    target = records[5]
    code, out, _ = cli(capsys, "show", target["request_id"], str(logs["full"]))
    assert code == 0
    header, body = out.split("\n", 1)
    assert header.startswith(f"# {logs['full']}:")
    assert json.loads(body) == target
    prefix = next(
        target["request_id"][:n]
        for n in range(1, 33)
        if sum(r["request_id"].startswith(target["request_id"][:n]) for r in records) == 1
    )
    code, out, _ = cli(capsys, "show", prefix, str(logs["full"]), "--json")
    assert code == 0
    assert json.loads(out) == target


def test_show_unknown_or_ambiguous_id_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    code, out, err = cli(capsys, "show", "no-such-id", str(logs["full"]))
    assert code == 2
    assert out == ""
    assert err == f"guardrail: error: no record has request id 'no-such-id' (in {logs['full']})\n"
    records = calls(raw_lines(logs["full"]))
    first = Counter(r["request_id"][0] for r in records).most_common(1)[0]
    assert first[1] > 1
    code, out, err = cli(capsys, "show", first[0], str(logs["full"]))
    assert code == 2
    assert out == ""
    assert "is ambiguous" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


# -------------------------------------------------------------------------- stats


def micros(x: float) -> int:
    return math.floor(x * 1e6 + 0.5)


def rank(values: list[int], p: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1] / 1e6


def expected_stats(lines: list[str]) -> dict[str, Any]:
    """The statistics, counted directly from the raw lines."""
    records = [json.loads(line) for line in lines]
    cs = [r for r in records if "kind" not in r]
    events = [r for r in records if "kind" in r]
    checks = [e for r in cs for e in r["stages"]]
    answered = [
        r
        for r in cs
        if r["final_action"] in ("allow", "flag")
        and any(e["stage"] == "response" for e in r["stages"])
    ]
    refused = [
        r
        for r in cs
        if any(e["stage"] == "response" and _verdict(e, "refusal") is True for e in r["stages"])
    ]
    judged = [e for e in checks if e["stage"] == "response" and e["verdict"] is not None]
    unnecessary = [r for r in answered if "unnecessary_refusal" in r["flags"]]
    lat: dict[str, list[int]] = {
        "guard.prompt": [micros(e["latency_s"]) for e in checks if e["stage"] == "prompt"],
        "guard.response": [micros(e["latency_s"]) for e in checks if e["stage"] == "response"],
        "guard": [micros(r["latency"]["guard_s"]) for r in cs],
        "upstream": [
            micros(r["latency"]["upstream_s"]) for r in cs if r["latency"]["upstream_s"] is not None
        ],
        "total": [micros(r["latency"]["total_s"]) for r in cs],
    }
    return {
        "records": len(records),
        "calls": len(cs),
        "by_action": Counter(r["final_action"] for r in cs),
        "by_rule": Counter(
            rule for r in cs for rule in {e["decision"]["rule_id"] for e in r["stages"]}
        ),
        "by_flag": Counter(f for r in cs for f in r["flags"]),
        "checks": Counter(e["stage"] for e in checks),
        "by_level": Counter((e["stage"], _verdict(e, "level")) for e in checks if e["verdict"]),
        "by_category": Counter(
            (e["stage"], _verdict(e, "category")) for e in checks if _verdict(e, "category")
        ),
        "guard_errors": sum(e["error"] is not None for e in checks),
        "breaker": Counter(r["type"] for r in events if r["type"].startswith("breaker.")),
        "answered": len(answered),
        "unnecessary": len(unnecessary),
        "refused": len(refused),
        "refusal_checks": sum(_verdict(e, "refusal") is True for e in judged),
        "response_checks": len(judged),
        "latency": {
            k: (len(v), rank(v, 50), rank(v, 95), rank(v, 99)) for k, v in lat.items() if v
        },
    }


ENGINES = [
    "python",
    pytest.param(
        "duckdb",
        marks=pytest.mark.skipif(
            not duckdb_available(), reason="guardrail[analytics] (duckdb) not installed"
        ),
    ),
]


@pytest.mark.parametrize("index", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("which", [("full",), ("hash",), ("gzip", "hash")])
def test_stats_equal_counts_made_from_the_raw_lines(
    logs: dict[str, Path], engine: str, which: tuple[str, ...], index: bool
) -> None:
    paths = [logs[w] for w in which]
    want = expected_stats(raw_lines(*paths))
    s = compute_stats(paths, engine=engine, index=index)  # type: ignore[arg-type]
    assert s.engine == engine
    # The sink indexed the plain logs; a rotated gzip log is read itself.
    assert s.source == ("index" if index and "gzip" not in which else "log")
    assert s.records == want["records"]
    assert s.calls == want["calls"]
    assert s.by_action == dict(want["by_action"])
    assert s.by_rule == dict(want["by_rule"])
    assert s.by_flag == dict(want["by_flag"])
    assert s.checks == dict(want["checks"])
    assert {(st, k): n for st, d in s.by_level.items() for k, n in d.items()} == dict(
        want["by_level"]
    )
    assert {(st, k): n for st, d in s.by_category.items() for k, n in d.items()} == dict(
        want["by_category"]
    )
    assert s.guard_errors == want["guard_errors"] > 0
    assert s.guard_error_rate == want["guard_errors"] / sum(want["checks"].values())
    assert (
        s.breaker
        == dict(want["breaker"])
        == {"breaker.open": len(which), "breaker.closed": len(which)}
    )
    o = s.over_refusal
    assert (o.answered, o.unnecessary, o.refused) == (
        want["answered"],
        want["unnecessary"],
        want["refused"],
    )
    assert o.unnecessary > 0
    assert o.rate == want["unnecessary"] / want["answered"]
    assert (o.refusal_checks, o.response_checks) == (
        want["refusal_checks"],
        want["response_checks"],
    )
    got = {k: (v.count, v.p50, v.p95, v.p99) for k, v in s.latency.items() if v.count}
    assert got == want["latency"]
    assert sum(b.calls for b in s.buckets) == s.calls


@pytest.mark.skipif(not duckdb_available(), reason="guardrail[analytics] (duckdb) not installed")
def test_both_engines_give_identical_statistics(logs: dict[str, Path], tmp_path: Path) -> None:
    synthetic = tmp_path / "day.jsonl"
    write_day(synthetic)
    how = {"engine", "source", "source_note"}
    for paths in ([logs["full"]], [logs["full"], logs["hash"]], [logs["gzip"]], [synthetic]):
        for bucket in (None, "15m", "1d"):
            base = compute_stats(paths, engine="python", bucket=bucket, index=False)
            assert base.source == "log"
            for engine, index in (("python", True), ("duckdb", True), ("duckdb", False)):
                other = compute_stats(paths, engine=engine, bucket=bucket, index=index)
                assert other.engine == engine
                assert other.model_dump(exclude=how) == base.model_dump(exclude=how)


T0 = datetime(2026, 11, 3, 9, 50, tzinfo=timezone.utc)


def write_day(path: Path) -> list[datetime]:
    """Calls at known times over a day (two per 20 minutes), built by the write side."""
    times = [T0 + timedelta(minutes=20 * i + (i % 2) * 7) for i in range(72)]
    with JsonlSink(path) as sink:
        for i, t in enumerate(times):
            stage = {
                "stage": "prompt",
                "verdict": {"level": "Safe"},
                "decision": {"action": "block" if i % 5 == 0 else "allow", "rule_id": "r"},
                "latency_s": 0.001 * (i + 1),
            }
            data = record_dict(
                policy={"name": "p"}, stages=[_stage(stage)], time=t, content_mode="none"
            )
            sink.write_json(data)
        write_event(sink, "breaker.open", time=T0 + timedelta(hours=3))
    return times


def _stage(s: dict[str, Any]) -> dict[str, Any]:
    from guardrail.audit.record import StageRecord

    return StageRecord.model_validate(s).model_dump(mode="json")


@pytest.mark.parametrize("engine", ENGINES)
def test_time_buckets(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "day.jsonl"
    times = write_day(path)
    for bucket, size in (("1h", 3600), ("15m", 900), ("1d", 86400)):
        s = compute_stats([path], engine=engine, bucket=bucket)  # type: ignore[arg-type]
        assert s.bucket == bucket
        want = Counter(int(t.timestamp()) // size * size for t in times)
        got = {
            int(datetime.fromisoformat(b.start.replace("Z", "+00:00")).timestamp()): b.calls
            for b in s.buckets
        }
        assert {k: v for k, v in got.items() if v} == dict(want)
        blocks = Counter(
            int(t.timestamp()) // size * size for i, t in enumerate(times) if i % 5 == 0
        )
        assert {
            k: b.by_action.get("block", 0)
            for k, b in zip(got, s.buckets, strict=True)
            if b.by_action.get("block")
        } == dict(blocks)
        assert sum(b.events for b in s.buckets) == 1
    # Without --bucket, a day-long log is counted per hour; a short one per 15 minutes.
    assert compute_stats([path], engine=engine).bucket == "1h"  # type: ignore[arg-type]


def test_stats_cli_table_and_json(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    code, out, _ = cli(capsys, "stats", str(logs["full"]), "--json", "--engine", "python")
    assert code == 0
    data = json.loads(out)
    want = expected_stats(raw_lines(logs["full"]))
    assert data["by_action"] == dict(want["by_action"])
    code, text, _ = cli(capsys, "stats", str(logs["full"]), "--engine", "python", "--bucket", "1h")
    assert code == 0
    flat = " ".join(text.split())
    assert f"unnecessary_refusal {want['unnecessary']} {want['answered']}" in flat
    assert "per 1h (UTC)" in flat
    assert (
        cli(capsys, "summary", str(logs["full"]), "--engine", "python", "--bucket", "1h")[1] == text
    )


def test_bad_lines_exit_2_naming_the_line(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = raw_lines(logs["full"])
    bad.write_text("\n".join([*lines[:3], '{"truncated', *lines[3:]]) + "\n")
    engines = ["python", "duckdb"] if duckdb_available() else ["python"]
    for argv in (
        *(["stats", str(bad), "--engine", e] for e in engines),
        ["list", str(bad)],
        ["export", str(bad), "--format", "csv", "-o", str(tmp_path / "o.csv")],
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 2, argv
        assert err.startswith(f"guardrail: error: {bad}:4: not valid JSON"), err
        assert err.count("\n") == 1
    other = tmp_path / "other.jsonl"
    other.write_text('{"level": "info", "msg": "hi"}\n')
    code, _, err = cli(capsys, "stats", str(other))
    assert code == 2
    assert err.startswith(f"guardrail: error: {other}:1: not an audit record: ")


# ------------------------------------------------------------------------- export


def test_export_csv_parses_back_to_the_records(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "calls.csv"
    code, _, err = cli(capsys, "export", str(logs["full"]), "--format", "csv", "-o", str(out))
    assert code == 0
    records = calls(raw_lines(logs["full"]))
    assert err == f"wrote {len(records)} rows to {out}\n"
    with out.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == len(records)
    for row, r in zip(rows, records, strict=True):
        assert row["time"] == r["time"]
        assert row["request_id"] == r["request_id"]
        assert row["final_action"] == r["final_action"]
        flags = row["flags"].split(";") if row["flags"] else []
        assert flags == r["flags"]
        assert row["blocked_stage"] == (r["blocked_stage"] or "")
        assert row["policy_name"] == "review"
        assert row["policy_hash"] == r["policy"]["hash"]
        assert row["prompt"] == (r["content"]["prompt"] or "")
        assert row["response"] == (r["content"]["response"] or "")
        assert float(row["total_s"]) == r["latency"]["total_s"]
        for stage in ("prompt", "response"):
            entries = [e for e in r["stages"] if e["stage"] == stage]
            assert int(row[f"{stage}_checks"]) == len(entries)
            if not entries:
                assert row[f"{stage}_level"] == row[f"{stage}_rule"] == ""
                continue
            last = entries[-1]
            assert row[f"{stage}_level"] == (_verdict(last, "level") or "")
            assert row[f"{stage}_category"] == (_verdict(last, "category") or "")
            refusal = _verdict(last, "refusal")
            assert row[f"{stage}_refusal"] == ("" if refusal is None else str(refusal).lower())
            assert row[f"{stage}_rule"] == last["decision"]["rule_id"]
            assert row[f"{stage}_action"] == last["decision"]["action"]
            assert float(row[f"{stage}_latency_s"]) == last["latency_s"]
            assert row[f"{stage}_error"] == ((last["error"] or {}).get("type") or "")


def test_export_filters_and_jsonl_verbatim(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "blocked.jsonl"
    code, _, _ = cli(
        capsys,
        "export",
        str(logs["gzip"]),
        "--action",
        "block",
        "--format",
        "jsonl",
        "-o",
        str(out),
    )
    assert code == 0
    want = [
        line for line in raw_lines(logs["full"]) if json.loads(line).get("final_action") == "block"
    ]
    assert len(want) >= 3
    assert out.read_text().splitlines() == want
    assert all(record_hash(json.loads(line)) == json.loads(line)["hash"] for line in want)
    code, text, _ = cli(
        capsys,
        "export",
        str(logs["hash"]),
        "--flag",
        "unnecessary_refusal",
        "--format",
        "csv",
        "-o",
        "-",
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    want_ids = [
        r["request_id"]
        for r in calls(raw_lines(logs["hash"]))
        if "unnecessary_refusal" in r["flags"]
    ]
    assert [row["request_id"] for row in rows] == want_ids
    assert all(row["prompt"].startswith("sha256:") for row in rows)  # hash mode keeps hashes


# ------------------------------------------------------------------ verify's fast path


def test_fast_verification_equals_the_canonical_one(logs: dict[str, Path]) -> None:
    for path in (logs["full"], logs["hash"]):
        data = path.read_bytes()
        as_bytes = verify_chain(data.splitlines(keepends=True))
        as_text = verify_chain(data.decode().splitlines(keepends=True))  # the json path
        assert as_bytes == as_text
        assert as_bytes.ok
        assert as_bytes.count == len(CALLS) + 2


def _sealed_lines(records: list[dict[str, Any]]) -> list[bytes]:
    chain = HashChain()
    out = []
    for r in records:
        sealed = chain.seal(r)
        chain.advance(sealed)
        out.append(sealed.line.encode() + b"\n")
    return out


TRICKY_VALUES: list[Any] = [
    1e-05,
    1.5e-07,
    0.0001,
    1e16,
    1.2345678901234568e17,
    -0.0,
    5e-324,
    0.1,
    100.0,
    '\b\f\n\r\t"\\ \x01\x1f\x7f \u2028 é 😀',
    {"z": 1, "é": 2, "😀": 3, "Z": 4},
    2**63 + 5,
    "1e-5 looks like a number",
    [1, 2.5, None, True],
]


def test_fast_path_hashes_exactly_the_canonical_bytes() -> None:
    """Tricky values seal and verify identically on both paths, and a line whose stored
    hash was computed over anything but the canonical bytes fails on both."""
    records = [
        {
            "schema_version": 1,
            "kind": "event",
            "time": "2026-11-03T12:00:00.000Z",
            "type": "t",
            "details": {"v": v},
            "prev_hash": "",
            "hash": "",
        }
        for v in TRICKY_VALUES
    ]
    lines = _sealed_lines(records)
    assert verify_chain(lines).ok
    assert verify_chain(lines) == verify_chain([b.decode() for b in lines])
    # Forgeries: the hash of orjson's (not canonical) encoding, spaces, other key order.
    import orjson

    forged_lines = []
    for r in records[:4]:
        body = {k: v for k, v in r.items() if k != "hash"} | {"prev_hash": "0" * 64}
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        digest = __import__("hashlib").sha256(raw).hexdigest()
        forged_lines.append(raw[:-1] + f',"hash":"{digest}"}}\n'.encode())
        spaced = json.dumps(body, sort_keys=True).encode()
        digest2 = __import__("hashlib").sha256(spaced).hexdigest()
        forged_lines.append(spaced[:-1] + f', "hash": "{digest2}"}}\n'.encode())
    for line in forged_lines:
        fast = verify_chain([line])
        slow = verify_chain([line.decode()])
        assert fast == slow
    # The float forgeries are caught (orjson writes 0.00001, the canonical form 1e-05).
    assert not verify_chain([forged_lines[0]]).ok
    assert not verify_chain([forged_lines[2]]).ok


def test_orjson_and_json_agree_wherever_the_fast_path_trusts_orjson() -> None:
    import orjson

    from guardrail.audit.linefmt import _plain_floats

    rng = random.Random(5)
    trusted = 0
    for i in range(200_000):
        if i % 3:
            x = rng.random() * 10 ** rng.uniform(-30, 30) * rng.choice((1, -1))
        else:
            x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if not math.isfinite(x):
            continue
        fast = orjson.dumps(x)
        if _plain_floats(fast):
            trusted += 1
            assert fast == json.dumps(x).encode(), x
    assert trusted > 40_000


def test_verify_file_reads_lines_as_a_text_reader_does(
    logs: dict[str, Path], tmp_path: Path
) -> None:
    from guardrail.audit.reader import verify_file

    lines = logs["full"].read_bytes().splitlines(keepends=True)
    cases = {
        "carriage return inside a line": [
            *lines[:2],
            lines[2][:50] + b"\r" + lines[2][50:],
            *lines[3:],
        ],
        "CRLF line ends": [line[:-1] + b"\r\n" for line in lines],
        "as written": lines,
    }
    for name, content in cases.items():
        path = tmp_path / "log.jsonl"
        path.write_bytes(b"".join(content))
        with open(path, encoding="utf-8", errors="replace") as fh:
            expected = verify_chain(list(fh))  # the text reader, through json
        assert verify_file(path) == expected, name
        assert expected.ok == (name != "carriage return inside a line")
    assert verify_file(logs["gzip"]) == verify_file(logs["full"])
    assert verify_file(logs["gzip"]).ok


def test_export_csv_limit_counts_rows_of_calls(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path]
) -> None:
    code, text, _ = cli(
        capsys, "export", str(logs["full"]), "--format", "csv", "-o", "-", "--limit", "6"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    # An event sits among the first six records; the rows are still six calls.
    assert [r["request_id"] for r in rows] == [
        r["request_id"] for r in calls(raw_lines(logs["full"]))[:6]
    ]
    assert "kind" in json.loads(raw_lines(logs["full"])[5])


def test_without_duckdb_auto_uses_python_and_duckdb_names_the_extra(
    capsys: pytest.CaptureFixture[str], logs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from guardrail.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "duckdb", None)  # `import duckdb` now fails
    assert compute_stats([logs["full"]]).engine == "python"
    with pytest.raises(MissingDependencyError, match=r"guardrail\[analytics\]"):
        compute_stats([logs["full"]], engine="duckdb")
    code, out, err = cli(capsys, "stats", str(logs["full"]), "--engine", "duckdb")
    assert code == 2
    assert out == ""
    want = "duckdb is required for this feature: pip install 'guardrail[analytics]'"
    assert err == f"guardrail: error: {want}\n"
