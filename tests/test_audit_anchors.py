"""Anchors against a cut tail (head, count, checkpoints), keyed content hashes, event records."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import pickle
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from test_audit import POLICY, allow_record, write_log

from guardrail.audit import (
    AuditKey,
    AuditRecord,
    EventRecord,
    JsonlSink,
    LoggerSink,
    NullSink,
    RecordFilter,
    StreamSink,
    content_view,
    filter_records,
    read_entries,
    read_records,
    record_dict,
    summarize,
    verify_chain,
    verify_log,
    write_event,
)
from guardrail.audit.index import index_path
from guardrail.cli import audit_cmd
from guardrail.errors import AuditError, ConfigurationError, GuardrailError, PolicyError
from guardrail.guard import Guard
from guardrail.policy import Policy, load_policy
from guardrail.testing import ScriptedClassifier

SECRET = "k" * 24 + "-not-a-real-key-0123456789"
KEY = AuditKey(SECRET.encode())
T0 = datetime(2026, 11, 3, 12, 0, 0, tzinfo=timezone.utc)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``guardrail audit ...`` as the dispatcher does (GuardrailError -> exit 2)."""
    parser = argparse.ArgumentParser(prog="guardrail")
    audit_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    try:
        code: int = args.func(args)
    except GuardrailError as exc:
        print(f"guardrail: error: {exc}", file=sys.stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


def cut_tail(path: Path, n: int, *, keep_index: bool = False) -> None:
    """Cut the log's last ``n`` records, as an attacker would (removing its index too)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-n]), encoding="utf-8")
    if not keep_index:
        index_path(path).unlink(missing_ok=True)


@pytest.fixture
def log200(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, [allow_record(i) for i in range(200)])
    return path


# ---------------------------------------------------------------- head and count


def test_verify_prints_the_count_and_the_head(
    capsys: pytest.CaptureFixture[str], log200: Path
) -> None:
    head = json.loads(log200.read_text(encoding="utf-8").splitlines()[-1])["hash"]
    code, out, _ = run(capsys, "verify", str(log200))
    assert code == 0
    assert out.splitlines()[:2] == [
        f"OK  {log200}  200 records, chain intact",
        f"  head        {head}",
    ]


def test_a_cut_tail_verifies_without_an_anchor_and_is_caught_with_one(
    capsys: pytest.CaptureFixture[str], log200: Path
) -> None:
    head = json.loads(log200.read_text(encoding="utf-8").splitlines()[-1])["hash"]
    assert run(capsys, "verify", str(log200), "--min-count", "200", "--expect-head", head)[0] == 0
    cut_tail(log200, 10, keep_index=True)

    # The index, written with the log, still has rows for the cut records (its lines: the
    # header, one key's definition, then a row per record: 193 is the 191st record's).
    code, out, _ = run(capsys, "verify", str(log200))
    assert code == 1
    assert out.splitlines()[0] == (
        f"{log200}.index:193: the index has rows past the log's last record (190): "
        "records were cut from the end of the log, or rows were added to the index"
    )
    index_path(log200).unlink()  # whoever cut the log removes its index too
    code, out, _ = run(capsys, "verify", str(log200))
    assert code == 0  # the chain alone cannot tell: what is left is a valid chain

    code, out, _ = run(capsys, "verify", str(log200), "--min-count", "200")
    assert code == 1
    assert out.splitlines()[0] == (
        f"{log200}:191: --min-count 200: the log holds 190 records, 10 fewer than 200: "
        "records were cut from the end"
    )
    code, out, _ = run(capsys, "verify", str(log200), "--expect-head", head)
    assert code == 1
    assert out.startswith(f"{log200}:191: --expect-head {head[:12]}…: no record has this hash")


def test_an_earlier_head_is_reached_by_a_grown_log(log200: Path) -> None:
    hashes = [json.loads(x)["hash"] for x in log200.read_text(encoding="utf-8").splitlines()]
    report = verify_log(log200, expect_head=hashes[149], min_count=150)
    assert report.ok
    assert [a.message for a in report.anchors] == ["reached at record 150", "reached (200 records)"]


def test_bad_anchor_flags_are_usage_errors(
    capsys: pytest.CaptureFixture[str], log200: Path
) -> None:
    for argv in (["--expect-head", "abc"], ["--min-count", "-1"], ["--min-count", "many"]):
        with pytest.raises(SystemExit) as info:
            run(capsys, "verify", str(log200), *argv)
        assert info.value.code == 2
    code, _, err = run(capsys, "verify", str(log200), "--checkpoint", str(log200) + ".missing")
    assert code == 2
    assert "cannot read checkpoint file" in err
    code, _, err = run(capsys, "verify", str(log200), "--key-env", "GUARDRAIL_AUDIT_KEY")
    assert code == 2
    assert err == "guardrail: error: --key-env is only used with --checkpoint\n"
    with pytest.raises(ConfigurationError):
        verify_log(log200, expect_head="A" * 64)


# ------------------------------------------------------------------- checkpoints


def write_checkpointed(path: Path, n: int, key: AuditKey | None = None) -> Path:
    with JsonlSink(path, checkpoint_every=50, key=key) as sink:
        for i in range(n):
            sink.write(allow_record(i))
    assert sink.checkpoint_path is not None
    return sink.checkpoint_path


@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed"])
def test_a_checkpoint_catches_a_cut_tail(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key: AuditKey | None
) -> None:
    path = tmp_path / "audit.jsonl"
    checkpoints = write_checkpointed(path, 200, key)
    assert checkpoints == tmp_path / "audit.jsonl.checkpoint"
    counts = [json.loads(x)["count"] for x in checkpoints.read_text().splitlines()]
    assert counts == [50, 100, 150, 200]  # none again at close: 200 was just anchored
    env = {"GUARDRAIL_TEST_AUDIT_KEY": SECRET} if key else {}
    flags = ["--checkpoint", str(checkpoints)]
    if key:
        flags += ["--key-env", "GUARDRAIL_TEST_AUDIT_KEY"]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        code, out, _ = run(capsys, "verify", str(path), *flags)
        assert code == 0
        signed = "signature valid" if key else "unsigned"
        assert f"  anchor      {checkpoints}:4: ok, record 200 matches ({signed})" in out

        cut_tail(path, 10)
        code, out, _ = run(capsys, "verify", str(path), *flags)
    assert code == 1
    assert out.splitlines()[0] == (
        f"{path}:191: {checkpoints}:4: the log holds 190 records, the checkpoint anchors "
        f"record 200 (10 records cut from the end; checkpoint {signed})"
    )
    assert f"{checkpoints}:3: ok, record 150 matches" in out  # the earlier ones still hold


def test_a_rewritten_log_does_not_match_its_checkpoint(tmp_path: Path) -> None:
    # Records rewritten and re-chained with fresh hashes: the chain verifies, the
    # checkpoint does not.
    path = tmp_path / "audit.jsonl"
    checkpoints = write_checkpointed(path, 60)
    rewritten = tmp_path / "rewritten.jsonl"
    write_log(rewritten, [allow_record(i, model="other") for i in range(60)])
    path.write_bytes(rewritten.read_bytes())
    report = verify_log(path, checkpoints=checkpoints)
    assert report.chain.ok
    assert not report.ok
    (bad,) = [a for a in report.anchors if not a.ok][:1]
    assert "record 50 is not the checkpointed one" in bad.message
    assert bad.line == 50


def test_forged_and_unsigned_checkpoints_are_rejected_with_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    checkpoints = write_checkpointed(path, 100, KEY)
    cut_tail(path, 30)
    genuine = checkpoints.read_text().splitlines()
    # An attacker who cut the tail rewrites the checkpoints to match what is left.
    first = json.loads(genuine[0])
    lines = path.read_text(encoding="utf-8").splitlines()
    forged = {**first, "count": 70, "head": json.loads(lines[69])["hash"]}
    unsigned = {k: v for k, v in forged.items() if k != "mac"}
    checkpoints.write_text(json.dumps(forged) + "\n" + json.dumps(unsigned) + "\n")

    monkeypatch.setenv("GUARDRAIL_AUDIT_KEY", SECRET)
    code, out, _ = run(capsys, "verify", str(path), "--checkpoint", str(checkpoints))
    assert code == 1
    assert out.splitlines()[:2] == [
        f"{checkpoints}:1: checkpoint signature does not match: the checkpoint was forged "
        "or altered (or signed with another key)",
        f"{checkpoints}:2: unsigned checkpoint, but a key was given: with a key every "
        "checkpoint must be signed (an unsigned one can be forged)",
    ]
    # The key never appears in what verify prints.
    assert SECRET not in out

    # A signature from another key is no better.
    other = AuditKey(b"another key of enough length!!!")
    wrong = {
        **unsigned,
        "mac": other.sign(json.dumps(unsigned, sort_keys=True, separators=(",", ":"))),
    }
    checkpoints.write_text(json.dumps(wrong) + "\n")
    report = verify_log(path, checkpoints=checkpoints, key=KEY)
    assert not report.ok
    # Without the key, signatures are reported unchecked, and only the anchor is checked.
    report = verify_log(path, checkpoints=checkpoints)
    assert report.ok
    assert report.anchors[0].message == "record 70 matches (signature not checked: no key)"


def test_malformed_checkpoints_are_findings(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    checkpoints = write_checkpointed(path, 50)
    checkpoints.write_text(
        'not json\n{"checkpoint": 1, "count": 0, "head": "x", "log": "a", "time": "t"}\n'
        '{"checkpoint": 1, "count": 5, "head": "' + "0" * 64 + '", "log": "a", "time": "t", '
        '"extra": 1}\n'
    )
    report = verify_log(path, checkpoints=checkpoints)
    assert not report.ok
    reasons = [a.message for a in report.anchors]
    assert reasons[0].startswith("not a checkpoint: not valid JSON")
    assert reasons[1] == "not a checkpoint: count must be a positive integer, got 0"
    assert reasons[2] == "not a checkpoint: unknown fields: extra"


def test_checkpoints_count_every_writers_records(tmp_path: Path) -> None:
    # Two sinks on one file (two worker processes): the count is the file's.
    path = tmp_path / "audit.jsonl"
    a = JsonlSink(path, checkpoint_every=5)
    b = JsonlSink(path, checkpoint_every=5)
    for i in range(12):
        (a if i % 3 else b).write(allow_record(i))
    write_event(a, "breaker.open", {"backend": "guard"})  # events count too
    a.close()
    b.close()
    assert a.checkpoint_path is not None
    counts = [json.loads(x)["count"] for x in a.checkpoint_path.read_text().splitlines()]
    # Every 5th record of the file, whoever wrote it; then at close, by the sink that
    # wrote since its last checkpoint (b wrote record 10, its last, and so none).
    assert counts == [5, 10, 13]
    report = verify_log(path, checkpoints=a.checkpoint_path)
    assert report.ok
    assert len(report.anchors) == 3


def test_checkpoints_through_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDRAIL_AUDIT_KEY", SECRET)
    path = tmp_path / "logs" / "audit.jsonl"
    checkpoints = tmp_path / "elsewhere" / "anchors.jsonl"
    policy = Policy.default().model_copy(
        update={
            "audit": {
                "sink": "jsonl",
                "path": str(path),
                "checkpoint_every": 2,
                "checkpoint_path": str(checkpoints),
                "hmac_key_env": "GUARDRAIL_AUDIT_KEY",
            }
        }
    )
    with Guard(policy, classifier=ScriptedClassifier()) as guard:
        for i in range(3):
            guard.check_prompt([{"role": "user", "content": f"hi {i}"}])
    assert [json.loads(x)["count"] for x in checkpoints.read_text().splitlines()] == [2, 3]
    report = verify_log(path, checkpoints=checkpoints, key=AuditKey.from_env("GUARDRAIL_AUDIT_KEY"))
    assert report.ok
    assert [a.message for a in report.anchors] == [
        "record 2 matches (signature valid)",
        "record 3 matches (signature valid)",
    ]


def test_a_failed_checkpoint_write_says_the_record_was_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = JsonlSink(path, checkpoint_every=1, checkpoint_path=blocker / "anchors")
    with pytest.raises(AuditError, match="audit checkpoint not written"):
        sink.write(allow_record(0))
    assert verify_log(path).count == 1
    with pytest.raises(AuditError, match="audit checkpoint not written"):
        sink.close()
    with pytest.raises(AuditError, match="closed"):
        sink.write(allow_record(1))


def test_the_verify_note_points_at_a_checkpoint_file_next_to_the_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    checkpoints = write_checkpointed(path, 50)
    _, out, _ = run(capsys, "verify", str(path))
    assert f"  note        {checkpoints} exists: check the log against it with --checkpoint" in out


# ---------------------------------------------------------------- keyed content hash


def test_a_keyed_content_hash_differs_from_the_plain_one_and_matches_with_the_key() -> None:
    text = "how do I reset my password?"
    plain = content_view(text, "hash")
    keyed = content_view(text, "hash", key=KEY)
    assert plain == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert keyed is not None
    assert keyed.startswith("hmac-sha256:")
    assert keyed != plain
    # The documented construction, computed by hand with the key:
    label = b"guardrail.audit.content\n"
    expected = hmac.new(SECRET.encode(), label + text.encode(), hashlib.sha256).hexdigest()
    assert keyed == "hmac-sha256:" + expected
    assert KEY.content_hash(text.encode()) == keyed
    # Another key gives another hash, so guessing needs the key.
    assert content_view(text, "hash", key=AuditKey(b"x" * 32)) != keyed
    # Other modes ignore the key.
    assert content_view(text, "full", key=KEY) == text


def test_a_record_says_which_hash_it_keeps() -> None:
    plain = record_dict(policy=POLICY, prompt="hi", response="hello")
    keyed = record_dict(policy=POLICY, prompt="hi", response="hello", content_key=KEY)
    assert plain["content"]["prompt"].startswith("sha256:")
    assert keyed["content"]["prompt"].startswith("hmac-sha256:")
    assert keyed["content"]["mode"] == plain["content"]["mode"] == "hash"
    assert AuditRecord.model_validate(keyed).content.prompt == keyed["content"]["prompt"]


def test_a_guard_with_a_key_keeps_keyed_hashes_and_never_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_AUDIT_KEY", SECRET)
    path = tmp_path / "audit.jsonl"
    policy = Policy.default().model_copy(
        update={"audit": {"sink": "jsonl", "path": str(path), "hmac_key_env": "APP_AUDIT_KEY"}}
    )
    with Guard(policy, classifier=ScriptedClassifier()) as guard:
        guard.check_prompt([{"role": "user", "content": "hi"}])
        shown = repr(guard.sink) + repr(guard.policy) + repr(vars(guard))
    (record,) = read_records(path)
    assert record.content.prompt == KEY.content_hash(b"hi")
    assert SECRET not in path.read_text(encoding="utf-8")
    assert "AuditKey(<hidden>)" in shown  # the key is there, and not shown
    assert SECRET not in shown
    assert repr(KEY) == str(KEY) == "AuditKey(<hidden>)"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(KEY)


def test_a_missing_or_short_key_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = Policy.default().model_copy(
        update={"audit": {"sink": "none", "hmac_key_env": "APP_AUDIT_KEY"}}
    )
    monkeypatch.delenv("APP_AUDIT_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="APP_AUDIT_KEY is not set"):
        Guard(policy, classifier=ScriptedClassifier())
    monkeypatch.setenv("APP_AUDIT_KEY", "short-secret")
    with pytest.raises(ConfigurationError, match="too short") as info:
        Guard(policy, classifier=ScriptedClassifier())
    assert "short-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("audit", "field", "message"),
    [
        ({"sink": "stdout", "checkpoint_every": 10}, "checkpoint_every", "only used with sink"),
        ({"sink": "stdout", "index": "false"}, "index", "only used with sink"),
        ({"checkpoint_path": "a.ckpt"}, "checkpoint_path", "only used with checkpoint_every"),
        ({"content": "full", "hmac_key_env": "K"}, "hmac_key_env", "only used with content"),
        ({"checkpoint_every": 0}, "checkpoint_every", "must be > 0"),
        ({"hmac_key_env": "not a name"}, "hmac_key_env", "may contain only"),
    ],
)
def test_audit_settings_are_checked(
    tmp_path: Path, audit: dict[str, Any], field: str, message: str
) -> None:
    lines = "\n".join(f"  {k}: {v}" for k, v in audit.items())
    path = tmp_path / "policy.yaml"
    path.write_text(f"version: 1\nname: p\naudit:\n{lines}\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert field in str(info.value)
    assert message in str(info.value)


def test_audit_settings_with_a_key_and_checkpoints_load(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\nname: p\naudit:\n  content: none\n  checkpoint_every: 100\n"
        "  hmac_key_env: GUARDRAIL_AUDIT_KEY\n",
        encoding="utf-8",
    )
    audit = load_policy(path).audit
    assert (audit.checkpoint_every, audit.checkpoint_path) == (100, None)
    assert audit.hmac_key_env == "GUARDRAIL_AUDIT_KEY"


# -------------------------------------------------------------------- event records


def test_write_event_appends_a_chained_event_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        sink.write(allow_record(0))
        write_event(sink, "breaker.open", {"backend": "guard", "failures": 5}, time=T0)
        sink.write(allow_record(1))
    lines = path.read_text(encoding="utf-8").splitlines()
    event = json.loads(lines[1])
    assert event == {
        "chain": 2,
        "schema_version": 1,
        "kind": "event",
        "time": "2026-11-03T12:00:00.000Z",
        "type": "breaker.open",
        "details": {"backend": "guard", "failures": 5},
        "prev_hash": json.loads(lines[0])["hash"],
        "index": event["index"],
        "hash": event["hash"],
    }
    # A record that is not a call names its kind right after the chain fields.
    assert lines[1].startswith(
        f'{{"chain":2,"prev_hash":"{event["prev_hash"]}","index":"{event["index"]}","kind":"event",'
    )
    assert verify_chain(lines).ok

    entries = list(read_entries(path))
    assert [e.kind for e in entries] == ["call", "event", "call"]
    assert isinstance(entries[1], EventRecord)
    assert entries[1].details == {"backend": "guard", "failures": 5}
    assert [r.request_id for r in read_records(path)] == ["req0000", "req0001"]
    summary = summarize(entries)
    assert (summary.records, summary.by_kind, summary.by_event) == (
        2,
        {"call": 2, "event": 1},
        {"breaker.open": 1},
    )
    assert sum(summary.by_action.values()) == 2  # events are not counted as calls
    assert list(filter_records(entries, RecordFilter(kind="event"))) == [entries[1]]
    assert list(filter_records(entries, RecordFilter(event="BREAKER.OPEN"))) == [entries[1]]
    assert list(filter_records(entries, RecordFilter(action="allow"))) == [entries[0], entries[2]]


def test_event_records_in_every_built_in_sink() -> None:
    stream = io.StringIO()
    sink = StreamSink(stream)
    sink.write(allow_record(0))
    write_event(sink, "breaker.close")
    assert verify_chain(stream.getvalue().splitlines(keepends=True)).count == 2
    with capture_logs() as logs:
        write_event(LoggerSink(structlog.get_logger()), "breaker.half_open", {"probe": 1})
    assert logs[0]["kind"] == "event"
    assert logs[0]["type"] == "breaker.half_open"
    write_event(NullSink(), "breaker.open")  # kept nowhere, as every record


class ModelOnlySink:
    """A custom sink that takes call records only."""

    def write(self, record: AuditRecord) -> None:
        pass

    def close(self) -> None:
        pass


def test_bad_events_raise_typed_errors(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path)
    for bad in ("", "has space", "x" * 101):
        with pytest.raises(ConfigurationError, match="event type"):
            write_event(sink, bad)
    with pytest.raises(ConfigurationError, match="string keys"):
        write_event(sink, "breaker.open", {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(AuditError, match="not serialisable"):
        write_event(sink, "breaker.open", {"when": T0})
    with pytest.raises(AuditError, match="ModelOnlySink cannot take event records"):
        write_event(ModelOnlySink(), "breaker.open")
    write_event(sink, "breaker.open")
    sink.close()
    assert verify_log(path).count == 1  # the failed ones left nothing behind


def test_search_and_summary_show_events(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        sink.write(allow_record(0))
        write_event(sink, "breaker.open", {"backend": "guard"}, time=T0)
    code, out, _ = run(capsys, "search", str(path), "--kind", "event")
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[:5] == ["2026-11-03T12:00:00.000Z", "-", "event", "-", "breaker.open"]
    code, out, _ = run(capsys, "search", str(path), "--json")
    assert verify_chain(out.splitlines(keepends=True)).count == 2  # lines as written
    code, out, _ = run(capsys, "search", str(path), "--action", "allow")
    assert len(out.splitlines()) == 2  # the header and the call
    code, out, _ = run(capsys, "summary", str(path))
    assert "1 calls, 1 other records" in out.splitlines()[0]
    text = " ".join(out.split())
    assert "type count breaker.open 1" in text
    with pytest.raises(SystemExit):
        run(capsys, "search", str(path), "--kind", "call-ish")
    code, out, _ = run(capsys, "verify", str(path))
    assert out.startswith(f"OK  {path}  2 records (1 call, 1 event), chain intact")
