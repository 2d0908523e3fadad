"""The wrapped OpenAI client end to end: real openai clients, real HTTP, scripted guard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import FakeLLM, fake_llm, has_system, last_user

import guardrail
from guardrail import Action, BlockedError, ConfigurationError, Guard, Stage
from guardrail.audit import read_records, verify_file
from guardrail.errors import GuardTimeoutError, UnguardedAccessError
from guardrail.policy import load_policy_text
from guardrail.qwen3guard import GuardInput
from guardrail.testing import ScriptedClassifier
from guardrail.types import Verdict

UNSAFE_ANSWER = "BOOM-RECIPE: mix the following"

GUARD_SCRIPT = {
    "bomb": "Safety: Unsafe\nCategories: Violent",
    "ambiguous": "Safety: Controversial\nCategories: None",
    "BOOM-RECIPE": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
    "I cannot help": "Safety: Safe\nCategories: None\nRefusal: Yes",
    "EDGY": "Safety: Controversial\nCategories: Unethical Acts\nRefusal: No",
    "OPINION": "Safety: Controversial\nCategories: Politically Sensitive Topics\nRefusal: No",
}


def answer(messages: list[dict[str, Any]], index: int) -> str:
    q = last_user(messages)
    if "two choices" in q:
        return "A fine answer." if index == 0 else UNSAFE_ANSWER
    if "bomb" in q:
        return UNSAFE_ANSWER
    if "refuse me" in q:
        if has_system(messages, "Answer the question directly"):
            return "Here is the answer: 42."
        return "I cannot help with that."
    if "always spicy" in q:
        return "EDGY again."
    if "spicy" in q:
        if has_system(messages, "Rewrite your answer safely"):
            return "A calm and careful answer."
        return "EDGY answer."
    if "opinion" in q:
        return "OPINION: vote for X."
    if "ambiguous" in q:
        return "Careful answer." if has_system(messages, "Answer safely.") else "Careless answer."
    if "stream unsafe" in q:
        return "This starts fine. It goes on well. Then BOOM-RECIPE details follow here."
    return "Paris is the capital of France. It is also its largest city."


POLICY = """
version: 1
name: client-test
execution: {{mode: {mode}, timeout_s: 5}}
block: {{behavior: {behavior}, message: "Blocked by policy."}}
failure: {{prompt: {fail}, response: {fail}}}
streaming: {{chunk_chars: 24, replacement: "[removed]"}}
audit: {{sink: jsonl, path: "{path}", content: full}}
rules:
  - id: block-unsafe-prompt
    stage: prompt
    when: {{levels: [Unsafe]}}
    action: block
  - id: rewrite-controversial-prompt
    stage: prompt
    when: {{levels: [Controversial]}}
    action: rewrite
    rewrite: {{mode: add_instruction, text: "Answer safely."}}
  - id: block-unsafe-response
    stage: response
    when: {{levels: [Unsafe]}}
    action: block
  - id: template-political
    stage: response
    when: {{levels: [Controversial], categories: [Politically Sensitive Topics]}}
    action: rewrite
    rewrite: {{mode: template, text: "I'd rather not weigh in on that."}}
  - id: regenerate-controversial
    stage: response
    when: {{levels: [Controversial]}}
    action: rewrite
    rewrite: {{mode: regenerate, text: "Rewrite your answer safely.", max_attempts: 2}}
  - id: unnecessary-refusal
    stage: response
    when: {{prompt_levels: [Safe], levels: [Safe], refusal: true}}
    action: flag
    flag: unnecessary_refusal
    retry: {{instruction: "Answer the question directly.", max_attempts: 1}}
"""


def make_guard(
    tmp_path: Path,
    *,
    mode: str = "concurrent",
    behavior: str = "raise",
    fail: str = "closed",
    classifier: ScriptedClassifier | None = None,
) -> Guard:
    text = POLICY.format(mode=mode, behavior=behavior, fail=fail, path=tmp_path / "audit.jsonl")
    policy = load_policy_text(text, source="client-test.yaml")
    return Guard(policy, classifier=classifier or ScriptedClassifier(GUARD_SCRIPT))


def ask(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm(answer) as server:
        yield server


def raw_client(llm: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.base_url, api_key="test-key", max_retries=0)


def audit_records(tmp_path: Path) -> list[Any]:
    return list(read_records(tmp_path / "audit.jsonl"))


# ------------------------------------------------------------------------ allowed


def test_allowed_call_returns_exactly_what_the_raw_client_returns(
    llm: FakeLLM, tmp_path: Path
) -> None:
    raw = raw_client(llm)
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    params: dict[str, Any] = {"model": "m", "messages": ask("capital of France?"), "n": 2}
    expected = raw.chat.completions.create(**params)
    got = wrapped.chat.completions.create(**params)
    assert type(got) is type(expected)
    assert got.model_dump() == expected.model_dump()
    report = guardrail.report(got)
    assert report is not None
    assert report.action is Action.ALLOW
    assert [o.stage for o in report.outcomes] == [Stage.PROMPT, Stage.RESPONSE, Stage.RESPONSE]


def test_tools_and_extra_parameters_reach_the_upstream(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    wrapped.chat.completions.create(
        model="m",
        messages=ask("capital of France?"),
        tools=tools,
        temperature=0.3,
        extra_body={"top_k": 5},
    )
    sent = llm.requests[-1]
    assert sent["tools"] == tools
    assert sent["temperature"] == 0.3
    assert sent["top_k"] == 5


def test_other_attributes_pass_through(llm: FakeLLM, tmp_path: Path) -> None:
    raw = raw_client(llm)
    wrapped = guardrail.wrap(raw, guard=make_guard(tmp_path))
    assert wrapped.base_url == raw.base_url
    assert wrapped.models is not None
    with pytest.raises(UnguardedAccessError, match=r"client\.passthrough"):
        _ = wrapped.chat.completions.retrieve  # stored completions: model output, unchecked
    with pytest.raises(ConfigurationError, match="not guarded"):
        _ = wrapped.chat.completions.with_raw_response
    clone = wrapped.with_options(timeout=3)
    with pytest.raises(BlockedError):
        clone.chat.completions.create(model="m", messages=ask("how to build a bomb"))


# ------------------------------------------------------------------------- prompt


@pytest.mark.parametrize("mode", ["concurrent", "sequential"])
def test_blocked_prompt_raises_and_never_returns_the_answer(tmp_path: Path, mode: str) -> None:
    slow_guard = ScriptedClassifier(GUARD_SCRIPT, delay_s=0.3)
    with fake_llm(answer) as llm:  # the upstream answers long before the guard
        wrapped = guardrail.wrap(
            raw_client(llm), guard=make_guard(tmp_path, mode=mode, classifier=slow_guard)
        )
        with pytest.raises(BlockedError) as info:
            wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"))
        assert info.value.decision.rule_id == "block-unsafe-prompt"
        assert UNSAFE_ANSWER not in str(info.value)
        # Concurrent mode raced the upstream; sequential mode never called it.
        assert len(llm.requests) == (1 if mode == "concurrent" else 0)
    (record,) = audit_records(tmp_path)
    assert record.final_action is Action.BLOCK
    assert record.blocked_stage is Stage.PROMPT
    assert record.content.response is None


def test_blocked_prompt_with_message_behaviour(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path, behavior="message"))
    got = wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"), n=2)
    assert [c.message.content for c in got.choices] == ["Blocked by policy."] * 2
    assert {c.finish_reason for c in got.choices} == {"content_filter"}
    assert UNSAFE_ANSWER not in got.model_dump_json()
    report = guardrail.report(got)
    assert report is not None
    assert report.blocked


def test_prompt_rewrite_adds_an_instruction(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    got = wrapped.chat.completions.create(model="m", messages=ask("an ambiguous question"))
    assert got.choices[0].message.content == "Careful answer."
    assert any(has_system(r["messages"], "Answer safely.") for r in llm.requests)
    report = guardrail.report(got)
    assert report is not None
    assert report.action is Action.REWRITE


# ----------------------------------------------------------------------- response


def test_unsafe_response_is_blocked(llm: FakeLLM, tmp_path: Path) -> None:
    # "stream unsafe" prompts are Safe, but the answer is not.
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    with pytest.raises(BlockedError) as info:
        wrapped.chat.completions.create(model="m", messages=ask("stream unsafe please"))
    assert info.value.decision.rule_id == "block-unsafe-response"
    assert info.value.decision.stage is Stage.RESPONSE


def test_one_unsafe_choice_of_two_is_replaced(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    got = wrapped.chat.completions.create(model="m", messages=ask("two choices"), n=2)
    assert got.choices[0].message.content == "A fine answer."
    assert got.choices[0].finish_reason == "stop"
    assert got.choices[1].message.content == "Blocked by policy."
    assert got.choices[1].finish_reason == "content_filter"
    assert UNSAFE_ANSWER not in got.model_dump_json()
    report = guardrail.report(got)
    assert report is not None
    assert report.action is Action.BLOCK  # the strongest action taken on a choice
    assert not report.blocked  # but the call itself went through


def test_template_rewrite(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    got = wrapped.chat.completions.create(model="m", messages=ask("your opinion?"))
    assert got.choices[0].message.content == "I'd rather not weigh in on that."


def test_regenerate_rechecks_and_uses_the_safe_attempt(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    got = wrapped.chat.completions.create(model="m", messages=ask("something spicy"))
    assert got.choices[0].message.content == "A calm and careful answer."
    assert len(llm.requests) == 2
    assert has_system(llm.requests[1]["messages"], "Rewrite your answer safely")
    report = guardrail.report(got)
    assert report is not None
    attempts = [o.attempt for o in report.outcomes if o.stage is Stage.RESPONSE]
    assert attempts == [0, 1]


def test_regenerate_falls_back_to_block(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    with pytest.raises(BlockedError):
        wrapped.chat.completions.create(model="m", messages=ask("always spicy"))
    assert len(llm.requests) == 3  # the answer plus two regenerations, all re-checked


def test_unnecessary_refusal_is_flagged_and_retried(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    got = wrapped.chat.completions.create(model="m", messages=ask("please refuse me"))
    assert got.choices[0].message.content == "Here is the answer: 42."
    report = guardrail.report(got)
    assert report is not None
    assert "unnecessary_refusal" in report.flags
    (record,) = audit_records(tmp_path)
    assert "unnecessary_refusal" in record.flags
    assert [s.attempt for s in record.stages] == [1, 1, 2]


# ------------------------------------------------------------------------ failure


def test_guard_failure_fails_closed(llm: FakeLLM, tmp_path: Path) -> None:
    broken = ScriptedClassifier(error=GuardTimeoutError("guard server timed out"))
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path, classifier=broken))
    with pytest.raises(BlockedError) as info:
        wrapped.chat.completions.create(model="m", messages=ask("capital of France?"))
    assert info.value.decision.rule_id == "failure"
    (record,) = audit_records(tmp_path)
    assert record.errors[0].type == "GuardTimeoutError"


def test_guard_failure_fails_open_when_the_policy_says_so(llm: FakeLLM, tmp_path: Path) -> None:
    broken = ScriptedClassifier(error=GuardTimeoutError("guard server timed out"))
    guard = make_guard(tmp_path, fail="open", classifier=broken)
    got = guardrail.wrap(raw_client(llm), guard=guard).chat.completions.create(
        model="m", messages=ask("capital of France?")
    )
    assert got.choices[0].message.content.startswith("Paris")
    report = guardrail.report(got)
    assert report is not None
    assert "guard_error" in report.flags
    (record,) = audit_records(tmp_path)
    assert len(record.errors) == 2


def test_a_slow_guard_times_out_and_fails_closed(llm: FakeLLM, tmp_path: Path) -> None:
    text = POLICY.format(
        mode="concurrent", behavior="raise", fail="closed", path=tmp_path / "audit.jsonl"
    ).replace("timeout_s: 5", "timeout_s: 0.2")
    guard = Guard(load_policy_text(text), classifier=ScriptedClassifier(GUARD_SCRIPT, delay_s=1.0))
    with pytest.raises(BlockedError) as info:
        guardrail.wrap(raw_client(llm), guard=guard).chat.completions.create(
            model="m", messages=ask("capital of France?")
        )
    assert "exceeded" in (info.value.decision.error or "")


# ----------------------------------------------------------------------- streaming


def collect(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_allowed_stream_matches_the_raw_stream(llm: FakeLLM, tmp_path: Path) -> None:
    raw_text, raw_chunks = collect(
        raw_client(llm).chat.completions.create(
            model="m", messages=ask("capital of France?"), stream=True
        )
    )
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    stream = wrapped.chat.completions.create(
        model="m", messages=ask("capital of France?"), stream=True
    )
    text, chunks = collect(stream)
    assert text == raw_text
    assert [c.model_dump() for c in chunks] == [c.model_dump() for c in raw_chunks]
    assert stream.report.action is Action.ALLOW  # type: ignore[attr-defined]


def test_unsafe_stream_is_cut_before_the_unsafe_text(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    text, chunks = collect(
        wrapped.chat.completions.create(model="m", messages=ask("stream unsafe"), stream=True)
    )
    assert "BOOM" not in text
    assert text.startswith("This starts fine.")
    assert text.endswith("[removed]")
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    (record,) = audit_records(tmp_path)
    assert record.final_action is Action.BLOCK


def test_blocked_prompt_stream_raises_at_create(llm: FakeLLM, tmp_path: Path) -> None:
    # Like openai's streams, which raise request errors at create(), not mid-iteration.
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    with pytest.raises(BlockedError) as info:
        wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"), stream=True)
    assert info.value.report is not None
    (record,) = audit_records(tmp_path)
    assert record.request_id == info.value.report.request_id


# --------------------------------------------------------------------------- async


async def test_async_allowed_and_blocked(llm: FakeLLM, tmp_path: Path) -> None:
    raw = openai.AsyncOpenAI(base_url=llm.base_url, api_key="k", max_retries=0)
    expected = await raw.chat.completions.create(model="m", messages=ask("capital of France?"))
    wrapped = guardrail.wrap(
        openai.AsyncOpenAI(base_url=llm.base_url, api_key="k", max_retries=0),
        guard=make_guard(tmp_path),
    )
    got = await wrapped.chat.completions.create(model="m", messages=ask("capital of France?"))
    assert got.model_dump() == expected.model_dump()
    with pytest.raises(BlockedError):
        await wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"))
    got = await wrapped.chat.completions.create(model="m", messages=ask("please refuse me"))
    assert got.choices[0].message.content == "Here is the answer: 42."


async def test_async_stream_is_cut(llm: FakeLLM, tmp_path: Path) -> None:
    wrapped = guardrail.wrap(
        openai.AsyncOpenAI(base_url=llm.base_url, api_key="k", max_retries=0),
        guard=make_guard(tmp_path),
    )
    stream = await wrapped.chat.completions.create(
        model="m", messages=ask("stream unsafe"), stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "BOOM" not in text
    assert chunks[-1].choices[0].finish_reason == "content_filter"


class WaitsForTheUpstream(ScriptedClassifier):
    """Answers only once the raced upstream request has reached the server (≤ 5 s)."""

    def __init__(self, llm: FakeLLM) -> None:
        super().__init__(GUARD_SCRIPT)
        self.llm = llm

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        for _ in range(500):
            if self.llm.requests:
                break
            await asyncio.sleep(0.01)
        return await super().aclassify(inputs)


async def test_async_blocked_prompt_cancels_the_upstream(tmp_path: Path) -> None:
    with fake_llm(answer, delay_s=5.0) as llm:
        client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="k", max_retries=0)
        create = client.chat.completions.create
        outcome: list[str] = []

        async def observed(**params: Any) -> Any:
            try:
                result = await create(**params)
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            outcome.append("answered")
            return result

        client.chat.completions.create = observed  # type: ignore[method-assign]
        guard = make_guard(tmp_path, classifier=WaitsForTheUpstream(llm))
        wrapped = guardrail.wrap(client, guard=guard)
        with pytest.raises(BlockedError):
            await wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"))
        for _ in range(500):  # the cancellation lands at the call's next await
            if outcome:
                break
            await asyncio.sleep(0.01)
        assert len(llm.requests) == 1  # the raced request was in flight...
        assert outcome == ["cancelled"]  # ...and was cancelled, not answered
    (record,) = audit_records(tmp_path)
    assert record.final_action is Action.BLOCK


# --------------------------------------------------------------------- audit chain


def test_one_verified_record_per_call_and_tampering_is_detected(
    llm: FakeLLM, tmp_path: Path
) -> None:
    wrapped = guardrail.wrap(raw_client(llm), guard=make_guard(tmp_path))
    wrapped.chat.completions.create(model="m", messages=ask("capital of France?"))
    with pytest.raises(BlockedError):
        wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"))
    collect(wrapped.chat.completions.create(model="m", messages=ask("hello"), stream=True))
    path = tmp_path / "audit.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert verify_file(path).ok
    first = json.loads(lines[0])
    first["final_action"] = "block"
    lines[0] = json.dumps(first)
    path.write_text("\n".join(lines) + "\n")
    result = verify_file(path)
    assert not result.ok


# ------------------------------------------------------------------- direct guard


def test_guard_checks_without_a_client(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    prompt = guard.check_prompt(ask("what is 2+2?"))
    assert prompt.action is Action.ALLOW
    response = guard.check_response(
        ask("what is 2+2?"), "I cannot help with that.", prompt_verdict=prompt.verdict
    )
    assert response.action is Action.FLAG
    assert response.flags == ("unnecessary_refusal",)
    assert guard.check_prompt(ask("a bomb")).blocked
    assert len(audit_records(tmp_path)) == 3


async def test_guard_async_checks(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    decision = await guard.acheck_prompt(ask("a bomb"))
    assert decision.blocked
    decision = await guard.acheck_response(ask("q"), UNSAFE_ANSWER)
    assert decision.rule_id == "block-unsafe-response"


def test_prompt_replace_rewrite(llm: FakeLLM, tmp_path: Path) -> None:
    policy = load_policy_text(
        f"""
version: 1
name: replace-test
audit: {{sink: jsonl, path: "{tmp_path / "audit.jsonl"}"}}
rules:
  - id: replace-unsafe
    stage: prompt
    when: {{levels: [Unsafe]}}
    action: rewrite
    rewrite: {{mode: replace, text: "What is the capital of France?"}}
"""
    )
    guard = Guard(policy, classifier=ScriptedClassifier(GUARD_SCRIPT))
    wrapped = guardrail.wrap(raw_client(llm), guard=guard)
    got = wrapped.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "be brief"}, *ask("how to build a bomb")],
    )
    assert got.choices[0].message.content.startswith("Paris")
    # Concurrent mode raced the original prompt too (abandoned, possibly arriving
    # last); the answer returned is the one to the rewritten prompt.
    rewritten = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert rewritten in [r["messages"] for r in llm.requests]


@pytest.mark.parametrize("name", ["default", "strict", "monitor"])
def test_shipped_policies_drive_a_wrapped_client(llm: FakeLLM, tmp_path: Path, name: str) -> None:
    from guardrail.audit import NullSink

    policy = guardrail.load_policy(Path(__file__).parent.parent / "policies" / f"{name}.yaml")
    guard = Guard(policy, classifier=ScriptedClassifier(GUARD_SCRIPT), sink=NullSink())
    wrapped = guardrail.wrap(raw_client(llm), guard=guard)
    ok = wrapped.chat.completions.create(model="m", messages=ask("capital of France?"))
    assert ok.choices[0].message.content.startswith("Paris")
    if name == "monitor":  # monitoring flags, never blocks
        got = wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"))
        report = guardrail.report(got)
        assert report is not None
        assert report.flags
        assert report.action is Action.FLAG
    else:
        with pytest.raises(BlockedError):
            wrapped.chat.completions.create(model="m", messages=ask("how to build a bomb"))
