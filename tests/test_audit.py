"""Audit records, the hash chain, sinks and the reader."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from guardrail.audit import (
    CONTENT_MODES,
    GENESIS_HASH,
    AuditFileError,
    AuditRecord,
    AuditSink,
    ErrorEntry,
    JsonlSink,
    Latency,
    LoggerSink,
    NullSink,
    PolicyRef,
    RecordFilter,
    RecordParams,
    RewardEntry,
    StageRecord,
    StdoutSink,
    StreamSink,
    canonical_json,
    content_view,
    filter_records,
    json_writer,
    read_records,
    record_dict,
    record_hash,
    record_line,
    sink_from_settings,
    stage_dict,
    summarize,
    verify_chain,
    verify_file,
)
from guardrail.audit.chain import HashChain
from guardrail.errors import AuditError, ConfigurationError, GuardTimeoutError
from guardrail.flow import Trace
from guardrail.guard import Guard
from guardrail.policy import Policy
from guardrail.qwen3guard import combine_verdicts
from guardrail.testing import ScriptedClassifier
from guardrail.types import (
    Action,
    Category,
    Decision,
    Retry,
    Rewrite,
    RewriteMode,
    SafetyLevel,
    Stage,
    Verdict,
)

POLICY = {"name": "balanced", "version": "3", "hash": "sha256:" + "ab" * 32}
REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 3, 12, 0, 0, tzinfo=timezone.utc)

# ------------------------------------------------------------------------ builders


def verdict(
    stage: Stage,
    level: SafetyLevel = SafetyLevel.SAFE,
    category: Category | None = None,
    *,
    refusal: bool | None = None,
    latency_s: float = 0.01,
) -> Verdict:
    return Verdict(
        stage=stage,
        level=level,
        category=category,
        categories=(category,) if category else (),
        refusal=refusal if stage is Stage.RESPONSE else None,
        level_probs={"Safe": 0.1, "Controversial": 0.1, "Unsafe": 0.8},
        raw_text=f"Safety: {level.value}\nCategories: {category.value if category else 'None'}",
        model="Qwen/Qwen3Guard-Gen-0.6B",
        latency_s=latency_s,
    )


def decision(
    stage: Stage,
    action: Action = Action.ALLOW,
    rule_id: str = "default",
    v: Verdict | None = None,
    **kw: Any,
) -> Decision:
    return Decision(
        stage=stage,
        action=action,
        rule_id=rule_id,
        reason=kw.pop("reason", f"{rule_id} matched"),
        verdict=v if v is not None else verdict(stage),
        **kw,
    )


def allow_record(i: int = 0, **kw: Any) -> AuditRecord:
    args: dict[str, Any] = {
        "policy": POLICY,
        "stages": [decision(Stage.PROMPT), decision(Stage.RESPONSE)],
        "model": "gpt-4o-mini",
        "prompt": f"what is the capital of France? #{i}",
        "response": "Paris.",
        "latency": {"guard_s": 0.02, "upstream_s": 0.5, "total_s": 0.52},
        "time": T0 + timedelta(minutes=i),
        "request_id": f"req{i:04d}",
    }
    args.update(kw)
    return AuditRecord.build(**args)


def block_record(i: int = 0, **kw: Any) -> AuditRecord:
    v = verdict(Stage.PROMPT, SafetyLevel.UNSAFE, Category.VIOLENT)
    args: dict[str, Any] = {
        "stages": [decision(Stage.PROMPT, Action.BLOCK, "block-violent", v)],
        "response": None,
        "latency": {"guard_s": 0.03, "upstream_s": None, "total_s": 0.03},
    }
    args.update(kw)
    return allow_record(i, **args)


def flag_record(i: int = 0, **kw: Any) -> AuditRecord:
    rv = verdict(Stage.RESPONSE, refusal=True)
    args: dict[str, Any] = {
        "stages": [
            decision(Stage.PROMPT),
            decision(
                Stage.RESPONSE, Action.FLAG, "over-refusal", rv, flags=("unnecessary_refusal",)
            ),
        ],
        "response": "I can't help with that.",
        "latency": {"guard_s": 0.05, "upstream_s": 0.9, "total_s": 0.95},
    }
    args.update(kw)
    return allow_record(i, **args)


def write_log(path: Path, records: list[AuditRecord]) -> list[str]:
    with JsonlSink(path) as sink:
        for r in records:
            sink.write(r)
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def mixed_records(n: int = 10) -> list[AuditRecord]:
    makers = (allow_record, block_record, flag_record)
    return [makers[i % 3](i) for i in range(n)]


def unchained(record: AuditRecord) -> AuditRecord:
    return record.model_copy(update={"prev_hash": "", "hash": "", "chain": None, "index": None})


# ------------------------------------------------------------------- content modes


def test_content_view_modes() -> None:
    text = "héllo wörld " * 30  # 360 chars, non-ASCII
    assert content_view(text, "full") == text
    assert content_view(text, "none") is None
    assert content_view(text, "truncated", 20) == text[:20] + "…[+340 chars]"
    assert content_view("short", "truncated", 20) == "short"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert content_view(text, "hash") == f"sha256:{digest}"
    for mode in ("full", "truncated", "hash", "none"):
        assert content_view(None, mode) is None


def test_content_view_rejects_bad_settings() -> None:
    with pytest.raises(ConfigurationError, match="unknown audit content mode 'raw'"):
        content_view("x", "raw")
    with pytest.raises(ConfigurationError, match="truncate_chars"):
        content_view("x", "truncated", -1)


@pytest.mark.parametrize(
    ("mode", "prompt", "raw_kept"),
    [
        ("full", "tell me a secret", True),
        ("truncated", "tell…[+12 chars]", False),
        ("hash", "sha256:" + hashlib.sha256(b"tell me a secret").hexdigest(), False),
        ("none", None, False),
    ],
)
def test_record_content_modes(mode: str, prompt: str | None, raw_kept: bool) -> None:
    prebuilt = StageRecord.from_decision(decision(Stage.RESPONSE), raw_text=True)
    record = AuditRecord.build(
        policy=POLICY,
        stages=[decision(Stage.PROMPT), prebuilt],
        prompt="tell me a secret",
        response=None,
        content_mode=mode,
        truncate_chars=4,
    )
    assert record.content.mode == mode
    assert record.content.prompt == prompt
    assert record.content.response is None
    # The guard's raw output quotes the judged text's verdict: kept in full mode only,
    # whether the stage came as a Decision or as a prepared StageRecord.
    raws = [s.raw_text for s in record.stages]
    if raw_kept:
        assert raws == ["Safety: Safe\nCategories: None"] * 2
    else:
        assert raws == [None, None]


# -------------------------------------------------------------------------- records


def test_allow_record_fields() -> None:
    r = allow_record(1)
    assert r.schema_version == 1
    assert r.final_action is Action.ALLOW
    assert r.blocked_stage is None
    assert r.flags == ()
    assert r.guard_model == "Qwen/Qwen3Guard-Gen-0.6B"
    assert r.policy.hash == POLICY["hash"]
    assert [s.stage for s in r.stages] == [Stage.PROMPT, Stage.RESPONSE]
    assert r.stages[0].verdict is not None
    assert r.stages[0].verdict.level_probs == {"Safe": 0.1, "Controversial": 0.1, "Unsafe": 0.8}
    assert r.stages[0].latency_s == 0.01
    assert r.latency.upstream_s == 0.5
    data = r.to_json_dict()
    assert data["time"] == "2026-11-03T12:01:00.000Z"
    # Summaries, not raw model dumps.
    assert set(data["stages"][0]["verdict"]) >= {"level", "category", "refusal", "part"}
    assert "model" not in data["stages"][0]["verdict"]
    assert "verdict" not in data["stages"][0]["decision"]


def test_block_record_derives_action_and_stage() -> None:
    r = block_record()
    assert r.final_action is Action.BLOCK
    assert r.blocked_stage is Stage.PROMPT
    assert r.stages[0].decision.rule_id == "block-violent"
    assert r.stages[0].decision.reason == "block-violent matched"
    assert r.stages[0].verdict is not None
    assert r.stages[0].verdict.category is Category.VIOLENT
    assert r.content.response is None


def test_flag_record_unions_flags() -> None:
    r = flag_record(flags=["reviewed"])
    assert r.final_action is Action.FLAG
    assert r.flags == ("reviewed", "unnecessary_refusal")
    assert r.stages[1].verdict is not None
    assert r.stages[1].verdict.refusal is True


def test_defaults_request_id_time_and_guard_latency() -> None:
    before = datetime.now(timezone.utc)
    r = AuditRecord.build(policy=POLICY, stages=[decision(Stage.PROMPT), decision(Stage.RESPONSE)])
    assert len(r.request_id) == 32
    int(r.request_id, 16)
    assert r.time >= before.replace(microsecond=0)
    assert r.latency.guard_s == pytest.approx(0.02)
    assert r.final_action is Action.ALLOW
    assert r.content.mode == "hash"


def test_explicit_final_action_wins() -> None:
    r = allow_record(final_action="rewrite", blocked_stage=None)
    assert r.final_action is Action.REWRITE


def test_naive_and_offset_times_are_utc() -> None:
    naive = allow_record(time=datetime(2026, 1, 1, 10, 0))
    assert naive.to_json_dict()["time"] == "2026-01-01T10:00:00.000Z"
    cet = allow_record(
        time=datetime(2026, 1, 1, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    )
    assert cet.to_json_dict()["time"] == "2026-01-01T10:00:00.123Z"


def test_guard_failure_is_recorded_as_error() -> None:
    exc = GuardTimeoutError("no answer within 2.0s")
    failed = Decision(
        stage=Stage.PROMPT,
        action=Action.BLOCK,
        rule_id="failure",
        reason="guard failed; failing closed",
        error=str(exc),
    )
    with_type = StageRecord.from_decision(failed, error=exc, latency_s=2.0)
    r = AuditRecord.build(
        policy=POLICY,
        stages=[with_type],
        errors=[{"stage": None, "type": "APIConnectionError", "message": "upstream down"}],
    )
    assert r.stages[0].verdict is None
    assert r.stages[0].error is not None
    assert r.stages[0].error.type == "GuardTimeoutError"
    assert [(e.stage, e.type) for e in r.errors] == [
        (Stage.PROMPT, "GuardTimeoutError"),
        (None, "APIConnectionError"),
    ]
    assert r.final_action is Action.BLOCK
    assert r.blocked_stage is Stage.PROMPT
    # A bare Decision still records its error message.
    bare = AuditRecord.build(policy=POLICY, stages=[failed])
    assert bare.errors[0].message == "no answer within 2.0s"


def test_stage_attempts_candidates_rewrite_and_retry() -> None:
    regen = decision(
        Stage.RESPONSE,
        Action.REWRITE,
        "regen-unsafe",
        verdict(Stage.RESPONSE, SafetyLevel.UNSAFE, Category.PII),
        rewrite=Rewrite(mode=RewriteMode.REGENERATE, text="answer safely", max_attempts=2),
    )
    retry = decision(
        Stage.RESPONSE, Action.FLAG, "over-refusal", retry=Retry(instruction="please answer")
    )
    stages = [
        StageRecord.from_decision(decision(Stage.PROMPT)),
        StageRecord.from_decision(regen, attempt=1, candidate=0),
        StageRecord.from_decision(retry, attempt=2, candidate=0),
    ]
    r = AuditRecord.build(policy=POLICY, stages=stages)
    assert r.final_action is Action.REWRITE
    assert r.stages[1].decision.rewrite == "regenerate"
    assert r.stages[2].decision.retry is True
    assert [(s.attempt, s.candidate) for s in r.stage_entries("response")] == [(1, 0), (2, 0)]
    with pytest.raises(ValueError, match="attempt"):
        StageRecord.from_decision(regen, attempt=0)


def test_combined_verdict_keeps_component_summaries() -> None:
    thinking = verdict(Stage.RESPONSE, SafetyLevel.UNSAFE, Category.VIOLENT).model_copy(
        update={"part": "reasoning"}
    )
    answer = verdict(Stage.RESPONSE, refusal=False)
    combined = combine_verdicts([thinking, answer])
    entry = StageRecord.from_decision(decision(Stage.RESPONSE, Action.BLOCK, "r", combined))
    assert entry.verdict is not None
    assert entry.verdict.part == "combined"
    assert [(c.part, c.level) for c in entry.verdict.components] == [
        ("reasoning", SafetyLevel.UNSAFE),
        ("answer", SafetyLevel.SAFE),
    ]


def test_rewards_are_generic_and_finite() -> None:
    r = allow_record(
        rewards=[
            {"candidate": 0, "model": "beaver-7b-cost", "score": float("nan")},
            {
                "candidate": 1,
                "model": "beaver-7b-cost",
                "score": -1.5,
                "normalized": 0.2,
                "hybrid": 0.7,
            },
        ]
    )
    assert r.rewards[0].score is None
    assert r.rewards[1].hybrid == 0.7
    json.dumps(r.to_json_dict(), allow_nan=False)


def test_builder_rejects_typos_and_bad_modes() -> None:
    with pytest.raises(ValueError, match="extra"):
        AuditRecord.build(policy={"name": "p", "verison": "1"})
    with pytest.raises(ConfigurationError):
        AuditRecord.build(policy=POLICY, content_mode="everything")


@pytest.mark.parametrize("maker", [allow_record, block_record, flag_record])
def test_records_round_trip_through_a_file(tmp_path: Path, maker: Any) -> None:
    original = maker(3)
    assert AuditRecord.model_validate(original.to_json_dict()) == original
    path = tmp_path / "audit.jsonl"
    write_log(path, [original])
    (back,) = read_records(path)
    assert back.prev_hash == GENESIS_HASH
    assert back.hash == json.loads(path.read_text())["hash"]
    assert unchained(back) == original


# ---------------------------------------------------------------------------- chain


def test_chain_verifies_over_many_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, mixed_records(25))
    result = verify_chain(lines)
    assert result.ok
    assert result.count == 25
    assert result.problem is None
    assert result.head == json.loads(lines[-1])["hash"]
    assert verify_file(path) == result
    # Every line is canonical JSON of the record without its hash, hash appended last.
    for line in lines:
        data = json.loads(line)
        assert record_hash(data) == data["hash"]
        assert line.rstrip("\n").endswith(f',"hash":"{data["hash"]}"}}')
    assert json.loads(lines[1])["prev_hash"] == json.loads(lines[0])["hash"]


def test_empty_log_verifies() -> None:
    result = verify_chain([])
    assert result.ok
    assert result.count == 0
    assert result.head == GENESIS_HASH


def _edit(lines: list[str], index: int, **changes: Any) -> None:
    data = json.loads(lines[index])
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[leaf] = value
    lines[index] = json.dumps(data) + "\n"


def _rehash(lines: list[str], index: int) -> None:
    data = json.loads(lines[index])
    data["hash"] = record_hash(data)
    lines[index] = record_line(data) + "\n"  # laid out as a sink writes it


def _edit_and_rehash(lines: list[str]) -> None:
    _edit(lines, 4, final_action="allow")
    _rehash(lines, 4)


@pytest.fixture
def log_lines(tmp_path: Path) -> list[str]:
    return write_log(tmp_path / "audit.jsonl", mixed_records(8))


TAMPERING: dict[str, tuple[Callable[[list[str]], object], int, str]] = {
    # name: (how, expected line, expected kind)
    "edit final_action": (lambda ls: _edit(ls, 4, final_action="allow"), 5, "hash_mismatch"),
    "edit rule id": (
        lambda ls: _edit(ls, 4, stages__0__decision__rule_id="default"),
        5,
        "hash_mismatch",
    ),
    "edit a latency": (lambda ls: _edit(ls, 4, latency__total_s=0.001), 5, "hash_mismatch"),
    "remove a flag": (lambda ls: _edit(ls, 5, flags=[]), 6, "hash_mismatch"),
    "edit time": (lambda ls: _edit(ls, 4, time="2020-01-01T00:00:00.000Z"), 5, "hash_mismatch"),
    "add a field": (lambda ls: _edit(ls, 4, note="ok"), 5, "hash_mismatch"),
    "edit and rehash": (_edit_and_rehash, 6, "prev_hash_mismatch"),
    "delete a line": (lambda ls: ls.pop(4), 5, "prev_hash_mismatch"),
    "delete the first line": (lambda ls: ls.pop(0), 1, "prev_hash_mismatch"),
    "swap two lines": (
        lambda ls: ls.__setitem__(slice(3, 5), [ls[4], ls[3]]),
        4,
        "prev_hash_mismatch",
    ),
    "insert a copy": (lambda ls: ls.insert(5, ls[1]), 6, "prev_hash_mismatch"),
    "insert a forged record": (
        lambda ls: ls.insert(5, json.dumps(allow_record(99).to_json_dict()) + "\n"),
        6,
        "hash_mismatch",
    ),
    "truncate a record": (lambda ls: ls.__setitem__(4, ls[4][:200] + "\n"), 5, "bad_json"),
    "truncate the last record": (lambda ls: ls.__setitem__(7, ls[7][:-40]), 8, "bad_json"),
    "insert a blank line": (lambda ls: ls.insert(2, "\n"), 3, "bad_json"),
    "replace with garbage": (lambda ls: ls.__setitem__(4, "hello\n"), 5, "bad_json"),
    "a JSON array": (lambda ls: ls.__setitem__(4, "[1, 2]\n"), 5, "bad_json"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_is_detected(log_lines: list[str], name: str) -> None:
    tamper, line, kind = TAMPERING[name]
    tamper(log_lines)
    result = verify_chain(log_lines)
    assert not result.ok
    assert result.problem is not None
    assert (result.problem.line, result.problem.kind) == (line, kind)
    assert result.count == line - 1
    assert result.problem.message


def test_tampering_messages_say_what_happened(log_lines: list[str]) -> None:
    edited = list(log_lines)
    _edit(edited, 2, final_action="allow")
    problem = verify_chain(edited).problem
    assert problem is not None
    assert "edited" in problem.message
    deleted = list(log_lines)
    deleted.pop(2)
    problem = verify_chain(deleted).problem
    assert problem is not None
    assert "deleted, inserted or moved" in problem.message


def test_verify_a_slice_without_genesis(log_lines: list[str]) -> None:
    assert not verify_chain(log_lines[3:]).ok
    result = verify_chain(log_lines[3:], genesis=None)
    assert result.ok
    assert result.count == 5


def test_verify_accepts_dicts_records_and_bytes(log_lines: list[str]) -> None:
    assert verify_chain(json.loads(x) for x in log_lines).ok
    assert verify_chain(x.encode() for x in log_lines).ok
    records = [AuditRecord.model_validate(json.loads(x)) for x in log_lines]
    assert verify_chain(records).count == 8


def test_failed_seal_does_not_advance_the_chain() -> None:
    chain = HashChain()
    bad = allow_record().to_json_dict()
    bad["stages"][0]["verdict"]["level_probs"]["Unsafe"] = float("nan")
    with pytest.raises(AuditError, match="not serialisable"):
        chain.seal(bad)
    assert chain.head == GENESIS_HASH


# ---------------------------------------------------------------------------- sinks


def test_jsonl_sink_resumes_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "nested" / "audit.jsonl"  # parents are created
    first = JsonlSink(path)
    for r in mixed_records(3):
        first.write(r)
    head = first.head
    first.close()
    second = JsonlSink(path)  # a new process would do exactly this
    assert second.head == head
    for i in range(3, 6):
        second.write(allow_record(i))
    second.close()
    result = verify_file(path)
    assert result.ok
    assert result.count == 6


def test_jsonl_sink_resumes_after_long_records(tmp_path: Path) -> None:
    # The tail is read backwards in blocks; a record longer than a block must still resume.
    path = tmp_path / "audit.jsonl"
    long_prompt = "x" * 20000
    write_log(path, [allow_record(0), allow_record(1, prompt=long_prompt, content_mode="full")])
    with JsonlSink(path) as sink:
        sink.write(allow_record(2))
    assert verify_file(path).count == 3


def test_two_sinks_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    # Two writers with their own descriptors and cached heads, as two worker processes
    # would have: each notices the other's appends and chains after them.
    path = tmp_path / "audit.jsonl"
    a, b = JsonlSink(path), JsonlSink(path)
    for i in range(10):
        (a if i % 3 else b).write(allow_record(i))
    a.close()
    b.close()
    result = verify_file(path)
    assert result.ok
    assert result.count == 10


def test_two_processes_append_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_audit import allow_record
        from guardrail.audit import JsonlSink
        with JsonlSink({str(path)!r}) as sink:
            for i in range(200):
                sink.write(allow_record(i))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    result = verify_file(path)
    assert result.problem is None
    assert result.count == 600


def test_concurrent_threads_keep_a_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path)
    barrier = threading.Barrier(8)

    def worker(k: int) -> None:
        barrier.wait()
        for i in range(40):
            sink.write(allow_record(k * 100 + i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    result = verify_file(path)
    assert result.ok
    assert result.count == 320
    assert len({r.request_id for r in read_records(path)}) == 320


async def test_writes_from_async_tasks(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, fsync=True) as sink:
        await asyncio.gather(*(asyncio.to_thread(sink.write, allow_record(i)) for i in range(30)))
    assert verify_file(path).count == 30


class FlakyStream:
    """A text stream whose next write fails when told to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fail_next = False

    def write(self, text: str) -> int:
        if self.fail_next:
            self.fail_next = False
            raise OSError(28, "No space left on device")
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_failed_stream_write_raises_and_the_chain_continues() -> None:
    stream = FlakyStream()
    sink = StreamSink(stream)  # type: ignore[arg-type]
    sink.write(allow_record(0))
    stream.fail_next = True
    with pytest.raises(AuditError, match="No space left"):
        sink.write(allow_record(1))
    sink.write(allow_record(2))
    assert [json.loads(x)["request_id"] for x in stream.lines] == ["req0000", "req0002"]
    result = verify_chain(stream.lines)
    assert result.ok
    assert result.count == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_failed_file_write_rolls_back_and_the_chain_continues(tmp_path: Path) -> None:
    # A real failed write: the file-size limit lets half a record through, then the
    # write fails with EFBIG. The sink must truncate the partial line, raise, and keep
    # chaining from the last complete record once writes succeed again.
    path = tmp_path / "audit.jsonl"
    script = textwrap.dedent(
        f"""
        import os, resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_audit import allow_record
        from guardrail.audit import JsonlSink
        from guardrail.errors import AuditError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        sink = JsonlSink({str(path)!r})
        sink.write(allow_record(0))
        sink.write(allow_record(1))
        size = os.path.getsize({str(path)!r})
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
        try:
            sink.write(allow_record(2))
        except AuditError as exc:
            print("raised:", exc)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert os.path.getsize({str(path)!r}) == size, "partial line left behind"
        sink.write(allow_record(3))
        sink.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "raised:" in done.stdout
    assert "File too large" in done.stdout
    result = verify_file(path)
    assert result.ok
    assert [r.request_id for r in read_records(path)] == ["req0000", "req0001", "req0003"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_write_to_a_full_device_raises() -> None:
    sink = JsonlSink("/dev/full")
    with pytest.raises(AuditError, match="/dev/full: audit record not written"):
        sink.write(allow_record())
    sink.close()


def test_unopenable_path_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AuditError, match="cannot open audit log"):
        JsonlSink(blocker / "audit.jsonl")


def test_write_after_close_raises(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "audit.jsonl")
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        sink.write(allow_record())


def test_refuses_to_append_after_a_complete_line_that_is_not_a_record(tmp_path: Path) -> None:
    # A whole last line that is not a record is no crash's doing: refused, left alone.
    # (A torn last line, which a crash does leave, is moved aside: test_audit_recovery.py.)
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, mixed_records(2))
    for tail in ("not json\n", "not json\n" + lines[1][:50]):
        path.write_text(lines[0] + tail, encoding="utf-8")
        with pytest.raises(AuditError, match="not an audit record"):
            JsonlSink(path)
        assert path.read_text(encoding="utf-8") == lines[0] + tail  # left untouched
    # Nothing moved aside (the index is the one the log was written with).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.index"]


def test_unserialisable_record_raises_and_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    nan = verdict(Stage.PROMPT).model_copy(update={"level_probs": {"Safe": float("nan")}})
    bad = allow_record(1, stages=[decision(Stage.PROMPT, v=nan)])
    with JsonlSink(path) as sink:
        sink.write(allow_record(0))
        with pytest.raises(AuditError):
            sink.write(bad)
        sink.write(allow_record(2))
    assert verify_file(path).count == 2


def test_stdout_sink_writes_chained_lines(capsys: pytest.CaptureFixture[str]) -> None:
    sink = StdoutSink()
    for r in mixed_records(3):
        sink.write(r)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert verify_chain(out).ok


def test_logger_sink_uses_the_apps_structlog_logger() -> None:
    with capture_logs() as logs:
        sink = LoggerSink(structlog.get_logger("app").bind(service="api"))
        sink.write(block_record(1))
        sink.write(allow_record(2))
    assert [e["event"] for e in logs] == ["guardrail.audit", "guardrail.audit"]
    first = logs[0]
    assert first["service"] == "api"
    assert first["final_action"] == "block"
    assert first["stages"][0]["decision"]["rule_id"] == "block-violent"
    assert first["prev_hash"] == GENESIS_HASH
    assert logs[1]["prev_hash"] == first["hash"]
    chained = [
        {k: v for k, v in e.items() if k not in ("event", "service", "log_level")} for e in logs
    ]
    assert verify_chain(chained).ok


def test_logger_sink_default_logger_is_bound_lazily() -> None:
    sink = LoggerSink()
    with capture_logs() as logs:
        sink.write(allow_record())
    assert logs[0]["event"] == "guardrail.audit"
    assert logs[0]["request_id"] == "req0000"


def test_logger_sink_failure_raises_and_does_not_advance() -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []
            self.fail = True

        def info(self, event: str, **fields: Any) -> None:
            if self.fail:
                self.fail = False
                raise RuntimeError("handler down")
            self.calls.append(fields)

    logger = Broken()
    sink = LoggerSink(logger)
    with pytest.raises(AuditError, match="handler down"):
        sink.write(allow_record(0))
    sink.write(allow_record(1))
    assert logger.calls[0]["prev_hash"] == GENESIS_HASH


def test_sink_from_settings(tmp_path: Path) -> None:
    jsonl = sink_from_settings("jsonl", str(tmp_path / "a.jsonl"), True)
    assert isinstance(jsonl, JsonlSink)
    assert jsonl.fsync
    jsonl.close()
    assert isinstance(sink_from_settings("stdout", ""), StdoutSink)
    assert isinstance(sink_from_settings("none", ""), NullSink)
    logger = structlog.get_logger()
    assert isinstance(sink_from_settings("logger", "", False, logger), LoggerSink)
    for sink in (jsonl, StdoutSink(), NullSink(), LoggerSink()):
        assert isinstance(sink, AuditSink)
    with pytest.raises(ConfigurationError, match="needs a path"):
        sink_from_settings("jsonl", "")
    with pytest.raises(ConfigurationError, match="unknown audit sink 'kafka'"):
        sink_from_settings("kafka", "")


def test_null_sink_accepts_anything() -> None:
    with NullSink() as sink:
        sink.write(allow_record())


# --------------------------------------------------------------------------- reader


@pytest.fixture
def fixture_log(tmp_path: Path) -> Path:
    """Ten calls: allow / block / flag in turn, one minute apart, plus a guard failure."""
    path = tmp_path / "audit.jsonl"
    records = mixed_records(9)
    failed = Decision(
        stage=Stage.RESPONSE, action=Action.BLOCK, rule_id="failure", reason="guard down"
    )
    records.append(
        allow_record(
            9,
            stages=[
                decision(
                    Stage.PROMPT, v=verdict(Stage.PROMPT, SafetyLevel.CONTROVERSIAL, Category.PII)
                ),
                StageRecord.from_decision(failed, error=GuardTimeoutError("timeout")),
            ],
            latency={"guard_s": 2.0, "upstream_s": 0.4, "total_s": 2.4},
        )
    )
    write_log(path, records)
    return path


def _ids(records: Iterator[AuditRecord]) -> list[int]:
    return [int(r.request_id[3:]) for r in records]


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({}, list(range(10))),
        ({"action": "block"}, [1, 4, 7, 9]),
        ({"action": "FLAG"}, [2, 5, 8]),
        ({"rule_id": "block-violent"}, [1, 4, 7]),
        ({"flag": "unnecessary_refusal"}, [2, 5, 8]),
        ({"stage": "response", "level": "safe"}, [0, 2, 3, 5, 6, 8]),
        ({"level": "Unsafe"}, [1, 4, 7]),
        ({"stage": "response", "level": "unsafe"}, []),  # one check must match both
        ({"category": "violent"}, [1, 4, 7]),
        ({"category": "PII", "level": "controversial"}, [9]),
        ({"stage": "response", "rule_id": "failure"}, [9]),
        ({"stage": "prompt", "rule_id": "failure"}, []),
        ({"request_id": "req0003"}, [3]),
        ({"since": T0 + timedelta(minutes=3), "until": T0 + timedelta(minutes=6)}, [3, 4, 5]),
        ({"since": datetime(2026, 11, 3, 12, 8)}, [8, 9]),  # naive = UTC
        ({"action": "block", "since": T0 + timedelta(minutes=5)}, [7, 9]),
    ],
)
def test_filters(fixture_log: Path, criteria: dict[str, Any], expected: list[int]) -> None:
    assert _ids(filter_records(read_records(fixture_log), RecordFilter(**criteria))) == expected


def test_summary_counts(fixture_log: Path) -> None:
    s = summarize(read_records(fixture_log))
    assert s.records == 10
    assert s.first_time == T0
    assert s.last_time == T0 + timedelta(minutes=9)
    assert s.by_action == {"allow": 3, "block": 4, "flag": 3}
    assert s.by_rule == {"default": 7, "block-violent": 3, "over-refusal": 3, "failure": 1}
    assert s.by_flag == {"unnecessary_refusal": 3}
    assert s.unnecessary_refusals == 3
    assert s.checks == {"prompt": 10, "response": 7}
    assert s.by_level["prompt"] == {"Safe": 6, "Unsafe": 3, "Controversial": 1}
    assert s.by_level["response"] == {"Safe": 6}
    assert s.by_category["prompt"] == {"Violent": 3, "PII": 1}
    assert s.by_category["response"] == {}
    assert s.refusals == 3
    assert s.guard_errors == 1
    assert s.errors == 1
    guard = s.latency["guard"]
    assert (guard.count, guard.p50, guard.p95) == (10, 0.03, 2.0)
    upstream = s.latency["upstream"]
    assert (upstream.count, upstream.p50, upstream.p95) == (7, 0.5, 0.9)
    assert s.latency["total"].p50 == 0.52


def test_summary_of_nothing() -> None:
    s = summarize([])
    assert s.records == 0
    assert s.latency["total"].p50 is None
    assert s.unnecessary_refusals == 0


def test_reader_is_lazy_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, mixed_records(4))
    path.write_text("".join(lines[:3]) + "\n{oops\n" + lines[3], encoding="utf-8")
    seen: list[AuditRecord] = []
    records = read_records(path)
    with pytest.raises(AuditFileError) as info:
        seen.extend(records)
    assert len(seen) == 3  # blank line 4 skipped, bad line 5
    assert info.value.line == 5
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:5: not valid JSON")


def test_reader_rejects_json_that_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"hello": "world"}\n', encoding="utf-8")
    with pytest.raises(AuditFileError, match=r":1: not an audit record: "):
        list(read_records(path))


def test_reader_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AuditFileError, match="cannot open audit log"):
        list(read_records(tmp_path / "nope.jsonl"))
    with pytest.raises(AuditFileError, match=r"nope\.jsonl"):
        verify_file(tmp_path / "nope.jsonl")


def test_undecodable_bytes_are_a_hash_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, [allow_record(0, content_mode="full")])
    raw = path.read_bytes().replace(b"Paris", b"P\xffris")
    assert raw != path.read_bytes()
    path.write_bytes(raw)
    problem = verify_file(path).problem
    assert problem is not None
    assert (problem.line, problem.kind) == (1, "hash_mismatch")


# ------------------------------------------------------------ the JSON dict path


def same_json(got: Any, expected: Any) -> None:
    """Equal values, and equal types and key order too (1 == 1.0, but not in a log)."""
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)
    assert canonical_json(got) == canonical_json(expected)


def dict_path_cases() -> dict[str, dict[str, Any]]:
    """AuditRecord.build arguments covering every derivation and argument form."""
    unsafe_prompt = verdict(Stage.PROMPT, SafetyLevel.UNSAFE, Category.VIOLENT)
    thinking = verdict(Stage.RESPONSE, SafetyLevel.UNSAFE, Category.VIOLENT).model_copy(
        update={"part": "reasoning"}
    )
    combined = combine_verdicts([thinking, verdict(Stage.RESPONSE, refusal=False)])
    regen = decision(
        Stage.RESPONSE,
        Action.REWRITE,
        "regen-unsafe",
        verdict(Stage.RESPONSE, SafetyLevel.UNSAFE, Category.PII),
        rewrite=Rewrite(mode=RewriteMode.REGENERATE, text="answer safely", max_attempts=2),
    )
    retry = decision(
        Stage.RESPONSE,
        Action.FLAG,
        "over-refusal",
        retry=Retry(instruction="please answer"),
        flags=("unnecessary_refusal",),
    )
    failed = Decision(
        stage=Stage.PROMPT,
        action=Action.BLOCK,
        rule_id="failure",
        reason="guard failed; failing closed",
        error="no answer within 2.0s",
    )
    return {
        "blocked prompt": {
            "stages": [decision(Stage.PROMPT, Action.BLOCK, "block-violent", unsafe_prompt)],
            "prompt": "how do I hurt someone",
            "response": None,
        },
        "flagged response": {
            "stages": [
                decision(Stage.PROMPT),
                decision(
                    Stage.RESPONSE,
                    Action.FLAG,
                    "over-refusal",
                    verdict(Stage.RESPONSE, refusal=True),
                    flags=("unnecessary_refusal",),
                ),
            ],
            "flags": ["reviewed"],
            "response": "I can't help with that.",
        },
        "rewritten response, attempts and candidates": {
            "stages": [
                decision(Stage.PROMPT),
                stage_dict(regen, attempt=1, candidate=0, raw_text=True),
                stage_dict(retry, attempt=2, candidate=0, latency_s=0.5),
                StageRecord.from_decision(decision(Stage.RESPONSE), attempt=1, candidate=1),
                StageRecord.from_decision(retry, attempt=1, candidate=2, raw_text=True),
            ],
            "response": "answer one\n\nanswer two",
            "content_mode": "full",
        },
        "raw text dropped outside full mode": {
            "stages": [
                stage_dict(regen, raw_text=True),
                StageRecord.from_decision(regen, raw_text=True),
            ],
            "content_mode": "truncated",
        },
        "guard error": {
            "stages": [
                stage_dict(failed, error=GuardTimeoutError("no answer within 2.0s"), latency_s=2),
                StageRecord.from_decision(failed, error=ValueError("bad")),
                failed,
            ],
            "errors": [
                {"stage": None, "type": "APIConnectionError", "message": "upstream down"},
                {"stage": Stage.RESPONSE, "type": "ValueError", "message": "reward model: oom"},
                {"type": "X", "message": "no stage"},
                ErrorEntry(stage=Stage.RESPONSE, type="RuntimeError", message="boom"),
            ],
        },
        "rewards with NaN": {
            "rewards": [
                {"candidate": 0, "model": "beaver-7b-cost", "score": float("nan")},
                {
                    "candidate": 1,
                    "model": "beaver-7b-cost",
                    "score": -1,
                    "normalized": 0.2,
                    "hybrid": float("inf"),
                },
                {"model": "rm", "score": 2.5, "normalized": float("-inf")},
                RewardEntry(candidate=2, model="rm", score=1.5, hybrid=0.75),
            ],
        },
        "combined verdict with components": {
            "stages": [decision(Stage.RESPONSE, Action.BLOCK, "r", combined)],
            "content_mode": "full",
        },
        "explicit fields": {
            "policy": PolicyRef(name="strict", version="7", hash="sha256:00"),
            "stages": [decision(Stage.PROMPT, Action.BLOCK, "block", unsafe_prompt)],
            "final_action": "rewrite",
            "blocked_stage": "response",
            "mode": "streaming",
            "model": "gpt-4o",
            "guard_model": "remote-guard",
            "latency": Latency(guard_s=0.5, upstream_s=1e-05, total_s=3.0),
        },
        "enum arguments and a latency mapping with ints": {
            "stages": [decision(Stage.PROMPT), decision(Stage.RESPONSE, Action.BLOCK)],
            "final_action": Action.BLOCK,
            "blocked_stage": Stage.RESPONSE,
            "latency": {"guard_s": 1, "total_s": 2},
        },
        "naive time": {"time": datetime(2026, 1, 1, 10, 0, 0, 999999)},
        "offset time": {
            "time": datetime(2026, 1, 1, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
        },
        "policy mapping with defaults": {"policy": {"name": "bare"}},
        "nothing checked": {"stages": []},
    }


@pytest.mark.parametrize("case", list(dict_path_cases()))
def test_record_dict_is_the_built_records_json(case: str) -> None:
    kw: dict[str, Any] = {
        "policy": POLICY,
        "model": "gpt-4o-mini",
        "prompt": "what is the capital of France?",
        "response": "Paris.",
        "time": T0,
        "request_id": "req0001",
        **dict_path_cases()[case],
    }
    same_json(record_dict(**kw), AuditRecord.build(**kw).to_json_dict())


@pytest.mark.parametrize("mode", CONTENT_MODES)
def test_record_dict_content_modes(mode: str) -> None:
    kw: dict[str, Any] = {
        "policy": POLICY,
        "stages": [decision(Stage.PROMPT), decision(Stage.RESPONSE)],
        "prompt": "héllo wörld ✓ " * 30,
        "response": "Paris ✓",
        "content_mode": mode,
        "truncate_chars": 9,
        "time": T0,
        "request_id": "req0001",
    }
    data = record_dict(**kw)
    same_json(data, AuditRecord.build(**kw).to_json_dict())
    assert data["content"]["mode"] == mode
    assert data["content"]["prompt"] == content_view(kw["prompt"], mode, 9)


def test_record_dict_defaults_and_checks() -> None:
    data = record_dict(policy=POLICY, stages=[decision(Stage.PROMPT)])
    int(data["request_id"], 16)
    assert len(data["request_id"]) == 32
    assert data["time"].endswith("Z")
    assert AuditRecord.model_validate(data).to_json_dict() == data
    with pytest.raises(ConfigurationError):
        record_dict(policy=POLICY, content_mode="everything")
    with pytest.raises(ValueError, match="'final'"):
        record_dict(policy=POLICY, final_action="final")
    # build validates what record_dict takes on trust.
    with pytest.raises(ValueError, match="extra"):
        AuditRecord.build(policy=POLICY, latency={"guard_s": 1.0, "totl_s": 2.0})
    with pytest.raises(ValueError, match="greater than or equal"):
        AuditRecord.build(policy=POLICY, stages=[stage_dict(decision(Stage.PROMPT), attempt=0)])
    with pytest.raises(ValueError, match="decision"):
        AuditRecord.build(policy=POLICY, stages=[{"stage": "prompt"}])


@pytest.mark.parametrize("build", [record_dict, AuditRecord.build])
def test_record_params_are_checked_by_name(build: Callable[..., Any]) -> None:
    # A misspelt keyword is refused, not ignored (untyped callers get no type checker).
    with pytest.raises(TypeError, match="'stagess'; did you mean 'stages'"):
        build(policy=POLICY, stagess=[decision(Stage.PROMPT)])
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'$"):
        build(policy=POLICY, colour="blue")
    with pytest.raises(TypeError, match="missing required keyword argument 'policy'"):
        build(stages=[decision(Stage.PROMPT)])
    assert RecordParams.__required_keys__ == {"policy"}


def test_a_built_record_is_the_record_read_back(tmp_path: Path) -> None:
    # build is record_dict validated: the record in hand is the one its line parses
    # into, its time included (written, and kept, to the millisecond).
    when = datetime(2026, 1, 1, 10, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2)))
    built = allow_record(time=when)
    assert built.time == datetime(2026, 1, 1, 8, 0, 0, 999000, tzinfo=timezone.utc)
    write_log(tmp_path / "a.jsonl", [built])
    (read,) = read_records(tmp_path / "a.jsonl")
    assert unchained(read) == built


def test_the_write_side_imports_no_read_side_module() -> None:
    # params <- build <- record: the derivation never needs the models it is validated by.
    def audit_imports(module: str) -> set[str]:
        tree = ast.parse((REPO / "guardrail" / "audit" / f"{module}.py").read_text("utf-8"))
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return {n for n in names if n.startswith("guardrail.audit")}

    # keys (the audit key) is a leaf both sides may use.
    assert audit_imports("keys") == set()
    assert audit_imports("params") == {"guardrail.audit.keys"}
    assert audit_imports("kinds") == set()
    assert audit_imports("summaries") == set()
    assert audit_imports("content") == {"guardrail.audit.params", "guardrail.audit.keys"}
    assert audit_imports("build") == {
        "guardrail.audit.params",
        "guardrail.audit.content",
        "guardrail.audit.kinds",
        "guardrail.audit.summaries",
    }
    assert audit_imports("record") == {"guardrail.audit.build", "guardrail.audit.params"}


def test_stage_dict_is_the_stage_records_json() -> None:
    failed = Decision(stage=Stage.RESPONSE, action=Action.BLOCK, rule_id="failure", error="down")
    combined = combine_verdicts(
        [
            verdict(Stage.RESPONSE, SafetyLevel.UNSAFE).model_copy(update={"part": "reasoning"}),
            verdict(Stage.RESPONSE, refusal=False),
        ]
    )
    cases: list[tuple[Decision, dict[str, Any]]] = [
        (decision(Stage.PROMPT), {}),
        (decision(Stage.PROMPT), {"raw_text": True, "latency_s": 1}),
        (decision(Stage.RESPONSE), {"verdict": combined, "attempt": 3, "candidate": 2}),
        (failed, {}),
        (failed, {"error": GuardTimeoutError("late"), "latency_s": 2.0}),
        (failed, {"error": "plain message"}),
    ]
    for d, kw in cases:
        same_json(stage_dict(d, **kw), StageRecord.from_decision(d, **kw).model_dump(mode="json"))


def _pinned_records() -> list[AuditRecord]:
    return [
        allow_record(0),
        block_record(1),
        flag_record(2, flags=["reviewed"], content_mode="full", prompt="héllo ✓"),
    ]


def test_a_line_of_chain_version_1_is_reproduced(tmp_path: Path) -> None:
    # The chain heads of this log as releases before chain version 2 wrote it: the
    # canonical serialisation and the version-1 line are unchanged, byte for byte, and
    # such a log still verifies.
    expected = [
        "f1334821b3b401a51d64aec44cc816b022510913eb961dcf8354a2bebc7c79ad",
        "1cf7bf47a44685a0ee3a2677dd76213b3dec527c2c2167555d2f568ff0ace2a7",
        "9a6374ea2e2030e8568c53a2707ac15884aa2a9747f30807770c7ac25e9b3fbe",
    ]
    chain = HashChain(version=1)
    lines = []
    for r in _pinned_records():
        sealed = chain.seal(r.to_json_dict())
        lines.append(sealed.line + "\n")
        chain.advance(sealed)
    assert [json.loads(x)["hash"] for x in lines] == expected
    assert all("chain" not in json.loads(x) for x in lines)
    for line in lines:  # version 1: the canonical JSON of the record, hash appended
        data = json.loads(line)
        assert line == record_line(data) + "\n"
        assert record_hash(data) == data["hash"]
    path = tmp_path / "v1.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    assert verify_chain(lines).ok
    assert verify_file(path) == verify_chain(lines)
    assert [unchained(r) for r in read_records(path)] == _pinned_records()


def test_a_line_of_chain_version_2_is_reproduced(tmp_path: Path) -> None:
    # The heads of this log as this release writes it (chain version 2, with an index).
    # Regenerate only for a deliberate change of the record layout or the line format.
    expected = [
        "157d26725800864ffdb8205e9c8e6679ec309157eeab59edfa1ba1c84fa0e587",
        "640cca5fb2dfd8290f8bccf085b23c5723692cb3d6bea6d5284d0c58ca3b69eb",
        "0b5f038935d95408b56e8ebfd3a22f16a6162ae5269d212e388eaee591fe0d2a",
    ]
    lines = write_log(tmp_path / "records.jsonl", _pinned_records())
    assert [json.loads(x)["hash"] for x in lines] == expected
    for line in lines:  # the layout: chain fields first, the hash over the line's bytes
        assert line.startswith('{"chain":2,"prev_hash":"')
        data = json.loads(line)
        assert line == record_line(data) + "\n"
        cut = line.rindex(',"hash":"')
        assert hashlib.sha256(line[:cut].encode() + b"}").hexdigest() == data["hash"]
    with JsonlSink(tmp_path / "dicts.jsonl") as sink:
        for r in _pinned_records():
            sink.write_json(r.to_json_dict())
    assert (tmp_path / "dicts.jsonl").read_text(encoding="utf-8") == "".join(lines)
    assert verify_chain(lines).ok


def test_canonical_json_is_the_documented_serialisation() -> None:
    data = flag_record(1, content_mode="full", prompt="héllo ✓\u2028\x00").to_json_dict()
    assert canonical_json(data) == json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    cyclic: dict[str, Any] = {"a": []}
    cyclic["a"].append(cyclic)
    with pytest.raises(AuditError, match="not serialisable"):
        canonical_json(cyclic)
    with pytest.raises(AuditError, match="not serialisable"):
        canonical_json({"when": T0})


def test_seal_leaves_the_dict_alone() -> None:
    data = allow_record().to_json_dict()
    before = json.dumps(data)
    sealed = HashChain().seal(data)
    assert json.dumps(data) == before
    assert json.loads(sealed.line)["prev_hash"] == GENESIS_HASH


class RecordingSink:
    """A custom sink: only what the AuditSink protocol promises."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


class DictSink(RecordingSink):
    """A custom sink that opts in to being given JSON dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.dicts: list[dict[str, Any]] = []

    def write_json(self, data: dict[str, Any]) -> None:
        self.dicts.append(data)


class OverridingSink(JsonlSink):
    """A built-in sink whose subclass overrides write: it is given records."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(record)
        super().write(record)


def test_json_writer_only_for_sinks_whose_write_is_write_json(tmp_path: Path) -> None:
    jsonl = JsonlSink(tmp_path / "a.jsonl")
    for sink in (jsonl, StdoutSink(), StreamSink(FlakyStream()), LoggerSink(), NullSink()):
        assert json_writer(sink) == sink.write_json
    overriding = OverridingSink(tmp_path / "b.jsonl")
    assert json_writer(overriding) is None
    assert json_writer(RecordingSink()) is None
    assert isinstance(RecordingSink(), AuditSink)
    dicts = DictSink()
    assert json_writer(dicts) == dicts.write_json
    jsonl.close()
    overriding.close()


def test_write_json_equals_write_for_every_sink(tmp_path: Path) -> None:
    records = mixed_records(4)
    dicts = [r.to_json_dict() for r in records]
    copies = json.loads(json.dumps(dicts))
    lines = write_log(tmp_path / "write.jsonl", records)
    with JsonlSink(tmp_path / "write_json.jsonl") as sink:
        for d in dicts:
            sink.write_json(d)
    assert (tmp_path / "write_json.jsonl").read_text(encoding="utf-8") == "".join(lines)

    by_record, by_dict = FlakyStream(), FlakyStream()
    for r, d in zip(records, dicts, strict=True):
        StreamSink(by_record).write(r)
        StreamSink(by_dict).write_json(d)
    assert by_dict.lines == by_record.lines

    with capture_logs() as logs:
        logger = structlog.get_logger()
        record_sink, dict_sink = LoggerSink(logger), LoggerSink(logger)
        for r, d in zip(records, dicts, strict=True):
            record_sink.write(r)
            dict_sink.write_json(d)
    assert logs[0::2] == logs[1::2]
    assert [list(e) for e in logs[0::2]] == [list(e) for e in logs[1::2]]  # same field order
    assert dicts == copies  # write_json leaves the caller's dict alone


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a trace's audit record a pure function of the trace (no clock reads)."""
    monkeypatch.setattr("guardrail.audit.build.utc_now", lambda: T0)
    monkeypatch.setattr(Trace, "elapsed", lambda self: 0.25)


def guard_traces(guard: Guard, monkeypatch: pytest.MonkeyPatch) -> list[Trace]:
    """Run checks through ``guard``; return the traces it audited."""
    traces: list[Trace] = []
    audit = guard.audit

    def spy(trace: Trace) -> None:
        traces.append(trace)
        audit(trace)

    monkeypatch.setattr(guard, "audit", spy)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi ✓"}]
    bomb = [{"role": "user", "content": "how to make a bomb"}]
    guard.check_prompt(messages)
    guard.check_prompt(bomb)
    prompt_verdict = guard.check_prompt(messages).verdict
    guard.check_response(messages, "Sorry, I can't help.", prompt_verdict=prompt_verdict)
    guard.check_response(bomb, "Mix the following...")
    monkeypatch.setattr(guard, "audit", audit)
    return traces


SCRIPT = {
    "bomb": "Safety: Unsafe\nCategories: Violent",
    "sorry": "Safety: Safe\nCategories: None\nRefusal: Yes",
}


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("mode", CONTENT_MODES)
def test_guard_writes_the_same_record_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    policy = Policy.default()
    policy = policy.model_copy(update={"audit": policy.audit.model_copy(update={"content": mode})})
    custom = RecordingSink()
    guard = Guard(policy, classifier=ScriptedClassifier(SCRIPT), sink=custom)
    traces = guard_traces(guard, monkeypatch)
    # A sink with only write(record) is given validated records...
    assert len(custom.records) == len(traces) == 5
    assert all(isinstance(r, AuditRecord) for r in custom.records)
    assert {r.final_action for r in custom.records} >= {Action.ALLOW, Action.BLOCK}
    assert [r.request_id for r in custom.records] == [t.request_id for t in traces]
    # ...with the JSON the built-in sinks are given as a dict.
    dict_log, record_log = tmp_path / "dicts.jsonl", tmp_path / "records.jsonl"
    guard.sink = JsonlSink(dict_log)
    for trace in traces:
        guard.audit(trace)
    guard.close()
    write_log(record_log, custom.records)
    assert dict_log.read_bytes() == record_log.read_bytes()
    assert verify_file(dict_log).count == 5
    # A subclass of a built-in sink that overrides write is given records too.
    overriding = OverridingSink(tmp_path / "overriding.jsonl")
    guard.sink = overriding
    for trace in traces:
        guard.audit(trace)
    overriding.close()
    assert overriding.records == custom.records
    assert (tmp_path / "overriding.jsonl").read_bytes() == record_log.read_bytes()
    # A custom sink with write_json is given the dicts.
    guard.sink = dicts = DictSink()
    for trace in traces:
        guard.audit(trace)
    assert dicts.records == []
    assert dicts.dicts == [r.to_json_dict() for r in custom.records]


def test_guard_with_a_null_sink_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**kw: Any) -> Any:
        raise AssertionError("built a record for a NullSink")

    monkeypatch.setattr("guardrail.flow.trace.record_dict", fail)
    guard = Guard(Policy.default(), classifier=ScriptedClassifier(), sink=NullSink())
    assert guard.check_prompt([{"role": "user", "content": "hi"}]).action is Action.ALLOW


def test_only_sinks_that_may_wait_are_blocking(tmp_path: Path) -> None:
    assert NullSink().blocking is False
    assert JsonlSink(tmp_path / "a.jsonl").blocking is False  # page cache: microseconds
    assert JsonlSink(tmp_path / "b.jsonl", fsync=True).blocking is True
    assert StreamSink().blocking is True
    assert LoggerSink().blocking is True


class _CustomSink:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("fsync", "inline"), [(False, True), (True, False)])
async def test_an_async_call_writes_off_the_event_loop_only_when_the_sink_may_wait(
    tmp_path: Path, fsync: bool, inline: bool
) -> None:
    sink = JsonlSink(tmp_path / "a.jsonl", fsync=fsync)
    threads: list[int] = []
    write_json = sink.write_json

    def spy(data: dict[str, Any]) -> None:
        threads.append(threading.get_ident())
        write_json(data)

    sink.write_json = spy  # type: ignore[method-assign]
    guard = Guard(Policy.default(), classifier=ScriptedClassifier(), sink=sink)
    await guard.acheck_prompt([{"role": "user", "content": "hi"}])
    guard.close()
    assert len(threads) == 1
    assert (threads[0] == threading.get_ident()) is inline
    assert len(list(read_records(tmp_path / "a.jsonl"))) == 1


async def test_a_sink_that_says_nothing_is_written_off_the_event_loop() -> None:
    sink = _CustomSink()
    loop_thread = threading.get_ident()
    seen: list[int] = []
    write = sink.write
    sink.write = lambda record: (seen.append(threading.get_ident()), write(record))[1]  # type: ignore[method-assign]
    guard = Guard(Policy.default(), classifier=ScriptedClassifier(), sink=sink)
    await guard.acheck_prompt([{"role": "user", "content": "hi"}])
    assert len(sink.records) == 1
    assert seen[0] != loop_thread


def test_request_ids_are_random_version_4_uuids() -> None:
    import uuid

    from guardrail.audit import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid
        assert len(rid) == 32
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # The random bits vary: every hex position but the version digit takes several values.
    for pos in range(32):
        seen = {rid[pos] for rid in ids}
        assert len(seen) == 1 if pos == 12 else len(seen) > 2, pos
