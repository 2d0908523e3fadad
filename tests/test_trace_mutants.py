"""Trace -> audit record: every field a finished call's record takes from its trace."""

from __future__ import annotations

import time

import pytest

from guardrail.audit import AuditKey, AuditRecord, PolicyRef
from guardrail.errors import ClassifierError, InputError
from guardrail.flow import Recording, Trace, audit_record
from guardrail.policy import Policy, evaluate
from guardrail.report import StageOutcome
from guardrail.reward.base import RewardScore
from guardrail.types import Action, SafetyLevel, Stage, Verdict

MESSAGES = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "second question"},
]
POLICY = Policy.model_validate(
    {
        "version": 1,
        "name": "t",
        "rules": [
            {
                "id": "no-bombs",
                "stage": "response",
                "when": {"levels": ["Unsafe"]},
                "action": "block",
                "flag": "bomb",
            },
        ],
    }
)
REF = PolicyRef(name="t", version="1", hash="h")


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


def verdict(stage: Stage, level: SafetyLevel, raw: str) -> Verdict:
    return Verdict(stage=stage, level=level, raw_text=raw, model="guard-x")


def finished_trace(clock: Clock, mode: str = "sequential") -> Trace:
    trace = Trace(
        request_id="req-1", mode=mode, model="gpt-x", messages=MESSAGES, started=clock.now
    )
    prompt = evaluate(POLICY, Stage.PROMPT, verdict(Stage.PROMPT, SafetyLevel.SAFE, "Safety: Safe"))
    trace.outcomes.append(StageOutcome(stage=Stage.PROMPT, decision=prompt, latency_s=0.5))
    unsafe = verdict(Stage.RESPONSE, SafetyLevel.UNSAFE, "Safety: Unsafe")
    blocked = evaluate(POLICY, Stage.RESPONSE, unsafe)
    trace.outcomes.append(
        StageOutcome(stage=Stage.RESPONSE, decision=blocked, latency_s=0.25, attempt=1, candidate=2)
    )
    guard_down = ClassifierError("guard down")
    failed = evaluate(POLICY, Stage.RESPONSE, None, error=guard_down)
    trace.outcome_errors[2] = guard_down
    trace.outcomes.append(StageOutcome(stage=Stage.RESPONSE, decision=failed, latency_s=0.125))
    trace.errors += [
        ("response", guard_down),  # carried by its stage, not listed again
        ("upstream", ConnectionError("retry failed")),
        ("reward", RuntimeError("scorer crashed")),
    ]
    trace.rewards += [
        (None, RewardScore(score=1.5, normalized=0.5, model="rm"), 0.75),
        (2, RewardScore(score=-1.0, model="rm"), -0.5),
    ]
    trace.guard_s, trace.upstream_s = 0.875, 3.0
    trace.took(Action.BLOCK, flags=["bomb"])
    trace.blocked_stage = Stage.RESPONSE
    trace.responses += ["first answer", "second answer"]
    clock.now += 4.0
    return trace


def test_a_record_takes_every_field_from_the_trace(clock: Clock) -> None:
    trace = finished_trace(clock)
    record = audit_record(
        trace, Recording(policy=REF, content="full", truncate_chars=5), guard_model="guard-x"
    )
    assert record["request_id"] == "req-1"
    assert (record["mode"], record["model"], record["guard_model"]) == (
        "sequential",
        "gpt-x",
        "guard-x",
    )
    assert record["final_action"] == "block"
    assert record["flags"] == ["bomb", "guard_error"]
    assert record["blocked_stage"] == "response"
    assert record["latency"] == {"guard_s": 0.875, "upstream_s": 3.0, "total_s": 4.0}
    stages = record["stages"]
    assert [(s["stage"], s["latency_s"], s["attempt"], s["candidate"]) for s in stages] == [
        ("prompt", 0.5, 1, None),
        ("response", 0.25, 2, 2),
        ("response", 0.125, 1, None),
    ]
    assert [s["raw_text"] for s in stages] == ["Safety: Safe", "Safety: Unsafe", None]
    assert [s["error"] and s["error"]["type"] for s in stages] == [None, None, "ClassifierError"]
    assert record["errors"] == [
        {"stage": "response", "type": "ClassifierError", "message": "guard down"},
        {"stage": None, "type": "ConnectionError", "message": "retry failed"},
        {"stage": "response", "type": "RuntimeError", "message": "reward model: scorer crashed"},
    ]
    assert record["rewards"] == [
        {"candidate": 0, "model": "rm", "score": 1.5, "normalized": 0.5, "hybrid": 0.75},
        {"candidate": 2, "model": "rm", "score": -1.0, "normalized": None, "hybrid": -0.5},
    ]
    assert record["content"] == {
        "mode": "full",
        "prompt": "second question",
        "response": "first answer\n\nsecond answer",
    }
    AuditRecord.model_validate(record)  # a valid record


def test_a_record_keeps_content_as_its_recording_says(clock: Clock) -> None:
    trace = finished_trace(clock)
    truncated = audit_record(
        trace, Recording(policy=REF, content="truncated", truncate_chars=5), guard_model="g"
    )
    assert truncated["content"]["prompt"] == "secon…[+10 chars]"
    assert [s["raw_text"] for s in truncated["stages"]] == [None, None, None]
    hashed = audit_record(trace, Recording(policy=REF), guard_model="g")
    assert hashed["content"]["mode"] == "hash"
    assert hashed["content"]["prompt"].startswith("sha256:")


def test_a_direct_check_has_no_upstream_time(clock: Clock) -> None:
    trace = finished_trace(clock, mode="check")
    record = audit_record(trace, Recording(policy=REF), guard_model="g")
    assert record["latency"]["upstream_s"] is None


def test_a_call_without_answers_records_no_response(clock: Clock) -> None:
    trace = Trace(request_id="r", mode="check", model="", messages=MESSAGES, started=clock.now)
    record = audit_record(trace, Recording(policy=REF, content="full"), guard_model="g")
    assert record["content"]["response"] is None
    assert record["final_action"] == "allow"
    assert record["blocked_stage"] is None


def test_a_trace_begins_with_its_messages_and_a_fresh_id() -> None:
    first = Trace.begin("check", model="m", messages=MESSAGES)
    second = Trace.begin("check")
    assert first.messages is MESSAGES
    assert (first.mode, first.model) == ("check", "m")
    assert first.request_id != second.request_id
    assert first.action is Action.ALLOW
    assert (second.model, second.messages) == ("", ())
    masked = Trace.begin("check", mask=str.upper)
    assert masked.mask("key") == "KEY"


def test_the_strongest_action_is_reported_and_flags_kept_once() -> None:
    trace = Trace.begin("check")
    trace.took(Action.FLAG, flags=["a"])
    trace.took(Action.BLOCK, flags=["b", "a"])
    trace.took(Action.REWRITE, flags=["c"])
    report = trace.report()
    assert report.action is Action.BLOCK
    assert report.flags == ("a", "b", "c")


def test_a_record_reports_the_calls_outcome_not_the_strongest_check(clock: Clock) -> None:
    # A refusal that was flagged and then regenerated: the call's action is the
    # rewrite, though no single check decided one; one of two answers blocked
    # does not make the call blocked.
    trace = Trace(request_id="r", mode="sequential", model="m", messages=MESSAGES, started=0.0)
    safe = verdict(Stage.RESPONSE, SafetyLevel.SAFE, "Safety: Safe")
    unsafe = verdict(Stage.RESPONSE, SafetyLevel.UNSAFE, "Safety: Unsafe")
    for decision in (
        evaluate(POLICY, Stage.RESPONSE, safe),
        evaluate(POLICY, Stage.RESPONSE, unsafe),
    ):
        trace.outcomes.append(StageOutcome(stage=Stage.RESPONSE, decision=decision))
    trace.took(Action.REWRITE)
    record = audit_record(trace, Recording(policy=REF), guard_model="g")
    assert record["final_action"] == "rewrite"
    assert record["blocked_stage"] is None


def test_an_upstream_step_runs_from_its_start_or_from_the_raced_start(clock: Clock) -> None:
    trace = Trace.begin("sequential")
    error, answer = ConnectionError("down"), object()
    clock.now = 510.0
    trace.upstream_took(502.0, error=error, result=answer)
    trace.raced_at = 501.0  # the first call raced the prompt check; a retry does not
    clock.now = 520.0
    trace.upstream_took(515.0)
    trace.upstream_took(518.0, attempt=1)
    assert [(s.what, s.started, s.ended, s.attempt) for s in trace.steps] == [
        ("upstream", 502.0, 510.0, 0),
        ("upstream", 501.0, 520.0, 0),
        ("upstream", 518.0, 520.0, 1),
    ]
    assert (trace.steps[0].error, trace.steps[0].result) == (error, answer)
    assert (trace.steps[1].error, trace.steps[1].result) == (None, None)
    assert trace.upstream_s == 8.0 + 5.0 + 2.0  # the time waited, not the raced time


def test_a_record_keeps_each_scored_checks_reward(clock: Clock) -> None:
    trace = finished_trace(clock)
    trace.outcome_rewards[1] = 0.75
    record = audit_record(trace, Recording(policy=REF), guard_model="g")
    assert [s.get("reward") for s in record["stages"]] == [None, 0.75, None]


def test_a_record_lists_a_call_refused_for_its_input(clock: Clock) -> None:
    trace = Trace(request_id="r", mode="check", model="", messages=[], started=clock.now)
    trace.errors.append(("input", InputError("messages must be a list", where="messages")))
    record = audit_record(trace, Recording(policy=REF), guard_model="g")
    assert record["errors"] == [
        {"stage": "prompt", "type": "InputError", "message": "messages: messages must be a list"}
    ]


def test_a_record_takes_the_traces_own_flags_and_blocked_stage(clock: Clock) -> None:
    # Not only what the stages imply: a trace may be blocked with no check recorded.
    trace = Trace(request_id="r", mode="check", model="", messages=MESSAGES, started=clock.now)
    trace.took(Action.BLOCK, flags=["oversized"])
    trace.blocked_stage = Stage.PROMPT
    record = audit_record(trace, Recording(policy=REF), guard_model="g")
    assert (record["flags"], record["blocked_stage"]) == (["oversized"], "prompt")


def test_a_record_hashes_content_with_the_recordings_key(clock: Clock) -> None:
    key = AuditKey(b"k" * 32)
    record = audit_record(
        finished_trace(clock), Recording(policy=REF, content_key=key), guard_model="g"
    )
    assert record["content"]["prompt"] == key.content_hash(b"second question")
    assert record["content"]["prompt"].startswith("hmac-sha256:")
