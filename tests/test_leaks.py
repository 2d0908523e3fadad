"""Regression tests: no unchecked or blocked content reaches the caller by a side door,
and every failure of the guard is decided by the policy and audited."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import CREATED, FakeLLM, fake_llm
from loopback import JSONResponse, LoopbackServer, SSEResponse

import guardrail
from guardrail import Action, BlockedError, ConfigurationError, Guard
from guardrail.audit import read_records
from guardrail.errors import UnguardedAccessError
from guardrail.policy import load_policy_text
from guardrail.qwen3guard import GuardInput
from guardrail.testing import ScriptedClassifier
from guardrail.types import Stage

UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
SCRIPT = {"BOOM": UNSAFE, "bomb": "Safety: Unsafe\nCategories: Violent"}
CHAT = "/v1/chat/completions"


def policy(tmp_path: Path, extra: str = "") -> Any:
    return load_policy_text(
        f"""
version: 1
name: leaks
block: {{behavior: message, message: "BLOCKED"}}
streaming: {{chunk_chars: 30}}
audit: {{sink: jsonl, path: "{tmp_path / "audit.jsonl"}", content: full}}
{extra}
rules:
  - {{id: block-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
  - {{id: block-response, stage: response, when: {{levels: [Unsafe]}}, action: block}}
  - id: flag-controversial
    stage: response
    when: {{levels: [Controversial]}}
    action: flag
    flag: controversial
"""
    )


def records(tmp_path: Path) -> list[Any]:
    return list(read_records(tmp_path / "audit.jsonl"))


def chunk(delta: dict[str, Any], *, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def client(srv: LoopbackServer, guard: Guard) -> Any:
    return guardrail.wrap(
        openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0), guard=guard
    )


def ask(q: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


# --------------------------------------------------------------------- streaming


def test_streamed_tool_call_arguments_are_checked(server: LoopbackServer, tmp_path: Path) -> None:
    call = {
        "index": 0,
        "id": "t1",
        "type": "function",
        "function": {"name": "run", "arguments": ""},
    }
    server.route(
        "POST",
        CHAT,
        SSEResponse(
            [
                chunk({"role": "assistant", "tool_calls": [call]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"cmd": "BOOM'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' recipe"}'}}]}),
                chunk({}, finish="tool_calls"),
            ]
        ),
    )
    stream = client(server, Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT)))
    chunks = list(stream.chat.completions.create(model="m", messages=ask(), stream=True))
    released = "".join(
        tc.function.arguments or ""
        for c in chunks
        for choice in c.choices
        for tc in choice.delta.tool_calls or ()
    )
    assert "BOOM" not in released
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_streamed_refusal_text_is_checked(server: LoopbackServer, tmp_path: Path) -> None:
    server.route(
        "POST",
        CHAT,
        SSEResponse(
            [
                chunk({"role": "assistant", "refusal": "No, but BOOM"}),
                chunk({}, finish="stop"),
            ]
        ),
    )
    stream = client(server, Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT)))
    chunks = list(stream.chat.completions.create(model="m", messages=ask(), stream=True))
    assert all(not (c.choices and c.choices[0].delta.refusal) for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_a_cut_ends_every_open_choice(server: LoopbackServer, tmp_path: Path) -> None:
    server.route(
        "POST",
        CHAT,
        SSEResponse(
            [
                chunk({"role": "assistant", "content": "Fine text."}, index=0),
                chunk({"role": "assistant", "content": "Then BOOM here"}, index=1),
                chunk({}, index=0, finish="stop"),
                chunk({}, index=1, finish="stop"),
            ]
        ),
    )
    stream = client(server, Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT)))
    chunks = list(stream.chat.completions.create(model="m", messages=ask(), n=2, stream=True))
    finished = {ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason}
    assert finished == {0: "content_filter", 1: "content_filter"}


def test_mid_stream_flags_reach_the_report(server: LoopbackServer, tmp_path: Path) -> None:
    text = "A long first sentence goes here. EDGY bit in the middle. And a calm ending."
    server.route(
        "POST",
        CHAT,
        SSEResponse(
            [chunk({"role": "assistant", "content": ""})]
            + [chunk({"content": text[i : i + 8]}) for i in range(0, len(text), 8)]
            + [chunk({}, finish="stop")]
        ),
    )
    edgy = "Safety: Controversial\nCategories: Unethical Acts\nRefusal: No"

    def script(inp: GuardInput) -> str:
        judged = inp.messages[-1].content
        # Only the window holding the middle sentence (not the whole text) is edgy.
        return (
            edgy
            if "EDGY" in judged and "calm ending" not in judged
            else ("Safety: Safe\nCategories: None\nRefusal: No")
        )

    stream = client(server, Guard(policy(tmp_path), classifier=ScriptedClassifier(script)))
    s = stream.chat.completions.create(model="m", messages=ask(), stream=True)
    list(s)
    assert "controversial" in s.report.flags


def test_closing_a_stream_early_closes_the_upstream_and_audits(
    tmp_path: Path,
) -> None:
    with fake_llm(lambda m, i: "word " * 200, chunk_delay_s=0.01) as llm:
        guard = Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT))
        wrapped = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)
        with wrapped.chat.completions.create(model="m", messages=ask(), stream=True) as stream:
            next(stream)
        (record,) = records(tmp_path)
        assert record.final_action is Action.ALLOW


async def test_cancelling_an_async_stream_audits(tmp_path: Path) -> None:
    with fake_llm(lambda m, i: "word " * 200, chunk_delay_s=0.02) as llm:
        guard = Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT))
        wrapped = guardrail.wrap(
            openai.AsyncOpenAI(base_url=llm.base_url, api_key="k"), guard=guard
        )

        async def consume() -> None:
            stream = await wrapped.chat.completions.create(model="m", messages=ask(), stream=True)
            async for _ in stream:
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), 0.3)
        assert len(records(tmp_path)) == 1


# ----------------------------------------------------------------- non-streaming


def completion_body(
    message: dict[str, Any], *, finish: str = "stop", logprobs: Any = None
) -> dict[str, Any]:
    choice = {"index": 0, "finish_reason": finish, "message": message, "logprobs": logprobs}
    return {
        "id": "c",
        "object": "chat.completion",
        "created": CREATED,
        "model": "m",
        "choices": [choice],
    }


def test_a_blocked_choice_keeps_nothing_of_the_answer(
    server: LoopbackServer, tmp_path: Path
) -> None:
    message = {
        "role": "assistant",
        "content": "BOOM recipe",
        "reasoning_content": "thinking about BOOM",
    }
    logprobs = {"content": [{"token": "BOOM", "logprob": 0.0, "top_logprobs": []}]}
    server.route("POST", CHAT, JSONResponse(completion_body(message, logprobs=logprobs)))
    wrapped = client(server, Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT)))
    got = wrapped.chat.completions.create(model="m", messages=ask())
    assert got.choices[0].message.content == "BLOCKED"
    assert got.choices[0].finish_reason == "content_filter"
    assert "BOOM" not in got.model_dump_json()


def test_a_custom_tool_call_is_judged_and_blocked(server: LoopbackServer, tmp_path: Path) -> None:
    # A custom tool (openai's "custom" tool calls) carries its text in "input", not in
    # function arguments: the guard must see it, and a block must drop it.
    call = {"id": "t1", "type": "custom", "custom": {"name": "shell", "input": "make a BOOM"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    server.route("POST", CHAT, JSONResponse(completion_body(message, finish="tool_calls")))
    guard = ScriptedClassifier(SCRIPT)
    wrapped = client(server, Guard(policy(tmp_path), classifier=guard))
    got = wrapped.chat.completions.create(model="m", messages=ask())
    assert got.choices[0].message.content == "BLOCKED"
    assert got.choices[0].message.tool_calls is None
    assert "BOOM" not in got.model_dump_json()
    assert guard.calls[-1].messages[-1].content == "Tool call: shell(make a BOOM)"
    (record,) = records(tmp_path)
    assert record.final_action is Action.BLOCK
    assert record.blocked_stage is Stage.RESPONSE


def test_raw_response_helpers_are_refused(llm_server: FakeLLM, tmp_path: Path) -> None:
    raw = openai.OpenAI(base_url=llm_server.base_url, api_key="k")
    wrapped = guardrail.wrap(raw, guard=Guard(policy(tmp_path), classifier=ScriptedClassifier()))
    for path in ("with_raw_response", "with_streaming_response"):
        with pytest.raises(UnguardedAccessError):
            getattr(wrapped, path)
        with pytest.raises(UnguardedAccessError):
            getattr(wrapped.chat, path)
        assert not hasattr(wrapped.chat.completions, path)
    with pytest.raises(ConfigurationError, match="extra_body"):
        wrapped.chat.completions.create(
            model="m", messages=ask(), extra_body={"messages": ask("bomb")}
        )


@pytest.fixture
def llm_server() -> Iterator[FakeLLM]:
    with fake_llm(lambda m, i: "fine") as llm:
        yield llm


def test_any_guard_exception_is_decided_and_audited(llm_server: FakeLLM, tmp_path: Path) -> None:
    def broken(inp: GuardInput) -> str:
        raise RuntimeError("model exploded")

    guard = Guard(policy(tmp_path), classifier=ScriptedClassifier(broken))
    wrapped = guardrail.wrap(openai.OpenAI(base_url=llm_server.base_url, api_key="k"), guard=guard)
    got = wrapped.chat.completions.create(model="m", messages=ask())
    assert got.choices[0].finish_reason == "content_filter"  # failure: closed, block as message
    (record,) = records(tmp_path)
    assert record.final_action is Action.BLOCK
    assert record.errors
    assert "model exploded" in record.errors[0].message


def test_replace_rewrites_the_judged_tool_result(llm_server: FakeLLM, tmp_path: Path) -> None:
    pol = load_policy_text(
        "version: 1\nname: t\naudit: {sink: none}\nexecution: {mode: sequential}\n"
        "rules:\n  - id: replace-tool\n    stage: prompt\n    when: {levels: [Unsafe]}\n"
        "    action: rewrite\n    rewrite: {mode: replace, text: '[removed]'}\n",
        source="replace-tool",
    )
    guard = Guard(pol, classifier=ScriptedClassifier(SCRIPT))
    wrapped = guardrail.wrap(openai.OpenAI(base_url=llm_server.base_url, api_key="k"), guard=guard)
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "bomb instructions"},
    ]
    wrapped.chat.completions.create(model="m", messages=messages)
    (sent,) = [r["messages"] for r in llm_server.requests]  # sequential: only the rewrite
    assert sent[0] == {"role": "user", "content": "look it up"}
    assert sent[-1] == {"role": "tool", "tool_call_id": "t1", "content": "[removed]"}


def test_blocked_error_links_to_its_audit_record(llm_server: FakeLLM, tmp_path: Path) -> None:
    pol = load_policy_text(
        f"version: 1\nname: t\naudit: {{sink: jsonl, path: '{tmp_path / 'audit.jsonl'}'}}\n"
        "rules:\n  - {id: b, stage: prompt, when: {levels: [Unsafe]}, action: block}\n"
    )
    wrapped = guardrail.wrap(
        openai.OpenAI(base_url=llm_server.base_url, api_key="k"),
        guard=Guard(pol, classifier=ScriptedClassifier(SCRIPT)),
    )
    with pytest.raises(BlockedError) as info:
        wrapped.chat.completions.create(model="m", messages=ask("a bomb"))
    (record,) = records(tmp_path)
    assert info.value.report.request_id == record.request_id


def test_abandoned_upstream_calls_cannot_starve_the_guard(tmp_path: Path) -> None:
    pol = load_policy_text(
        "version: 1\nname: t\naudit: {sink: none}\nexecution: {timeout_s: 0.5}\n"
        "rules:\n  - {id: b, stage: prompt, when: {levels: [Unsafe]}, action: block}\n"
    )
    # Two workers per pool; slow upstream calls raced by blocked prompts stay busy.
    guard = Guard(pol, classifier=ScriptedClassifier(SCRIPT), max_workers=2)
    with fake_llm(lambda m, i: "fine", delay_s=1.5) as llm:
        wrapped = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)
        for _ in range(2):
            with pytest.raises(BlockedError):
                wrapped.chat.completions.create(model="m", messages=ask("a bomb"))
        with pytest.raises(BlockedError) as info:  # the guard itself still answers in time
            wrapped.chat.completions.create(model="m", messages=ask("another bomb"))
    assert info.value.decision.rule_id == "b"


def test_an_upstream_error_mid_stream_is_audited(server: LoopbackServer, tmp_path: Path) -> None:
    server.route(
        "POST",
        CHAT,
        SSEResponse(
            [
                chunk({"role": "assistant", "content": "Hello."}),
                '{"error": {"message": "upstream overloaded"}}',
            ]
        ),
    )
    wrapped = client(server, Guard(policy(tmp_path), classifier=ScriptedClassifier(SCRIPT)))
    with pytest.raises(openai.APIError):
        list(wrapped.chat.completions.create(model="m", messages=ask(), stream=True))
    (record,) = records(tmp_path)
    assert any("overloaded" in e.message for e in record.errors)


def test_a_null_sink_builds_no_audit_record(
    llm_server: FakeLLM, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from guardrail import guard as guard_module
    from guardrail.audit import JsonlSink, NullSink

    built: list[str] = []
    derive = guard_module.audit_record

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append("record")
        return derive(*args, **kwargs)

    # The guarded path derives every record through this one function...
    monkeypatch.setattr(guard_module, "audit_record", spy)
    kept = Guard(policy_none(), classifier=ScriptedClassifier(), sink=JsonlSink(tmp_path / "a"))
    wrapped = guardrail.wrap(openai.OpenAI(base_url=llm_server.base_url, api_key="k"), guard=kept)
    wrapped.chat.completions.create(model="m", messages=ask())
    assert built == ["record"]
    # ...and never calls it for a null sink.
    guard = Guard(policy_none(), classifier=ScriptedClassifier(), sink=NullSink())
    wrapped = guardrail.wrap(openai.OpenAI(base_url=llm_server.base_url, api_key="k"), guard=guard)
    assert wrapped.chat.completions.create(model="m", messages=ask()).choices[0].message.content
    assert built == ["record"]


def policy_none() -> Any:
    return load_policy_text("version: 1\nname: t\naudit: {sink: none}\n")
