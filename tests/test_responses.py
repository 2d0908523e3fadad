"""``wrap(client).responses.create``: real openai clients, a loopback Responses upstream.

The same guarded flow as chat completions: input items are the prompt check's
conversation; output text, refusals, reasoning and tool calls the response
check's; blocks come back as OpenAI shapes them; streams are cut with
``response.incomplete`` (``content_filter``); one audit record per call. APIs
that are not guarded raise unless the policy lists them as pass-through.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakeresponses import (
    FakeResponses,
    fake_responses,
    function_call,
    last_user_text,
    message,
    reasoning,
    response_body,
    system_texts,
)
from loopback import JSONResponse

import guardrail
from guardrail import Action, BlockedError, ConfigurationError, Guard, Stage
from guardrail.audit import read_records
from guardrail.errors import InputError, PolicyError, UnguardedAccessError
from guardrail.policy import load_policy_text
from guardrail.testing import ScriptedClassifier

UNSAFE = "BOOM-RECIPE: mix the following"
SCRIPT = {
    "bomb": "Safety: Unsafe\nCategories: Violent",
    "ambiguous": "Safety: Controversial\nCategories: None",
    "BOOM": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
    "EDGY": "Safety: Controversial\nCategories: Unethical Acts\nRefusal: No",
}
SAFE_TEXT = "Paris is the capital of France. It is also its largest city."

POLICY = """
version: 1
name: responses-test
execution: {{mode: {mode}, timeout_s: 5}}
block: {{behavior: {behavior}, message: "Blocked by policy."}}
streaming: {{chunk_chars: 24, replacement: {replacement}}}
audit: {{sink: jsonl, path: "{path}", content: full}}
{extra}
rules:
  - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
  - id: instruct-controversial-prompt
    stage: prompt
    when: {{levels: [Controversial]}}
    action: rewrite
    rewrite: {{mode: add_instruction, text: "Answer safely."}}
  - {{id: block-unsafe-response, stage: response, when: {{levels: [Unsafe]}}, action: block}}
  - id: regenerate-controversial
    stage: response
    when: {{levels: [Controversial]}}
    action: rewrite
    rewrite: {{mode: regenerate, text: "Rewrite your answer safely.", max_attempts: 1}}
"""


def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
    q = last_user_text(body)
    if "stream unsafe" in q:
        return [message("This starts fine. It goes on well. Then BOOM-RECIPE details follow here.")]
    if "unsafe answer" in q:
        return [message(UNSAFE)]
    if "unsafe tool" in q:
        args = json.dumps({"query": "the weather in Paris today", "then": "BOOM-RECIPE"})
        return [message("Let me look."), function_call("lookup_the_weather_forecast", args)]
    if "safe tool" in q:
        return [function_call("get_weather", '{"city": "Paris"}')]
    if "unsafe thinking" in q:
        return [reasoning("Plan: explain the BOOM-RECIPE."), message("Here you go.")]
    if "spicy" in q:
        if any("Rewrite your answer safely" in s for s in system_texts(body)):
            return [message("A calm and careful answer.")]
        return [message("EDGY answer.")]
    return [message(SAFE_TEXT)]


def make_guard(
    tmp_path: Path,
    *,
    mode: str = "sequential",
    behavior: str = "raise",
    replacement: str = "null",
    extra: str = "",
    delay_s: float = 0.0,
) -> Guard:
    text = POLICY.format(
        mode=mode,
        behavior=behavior,
        replacement=replacement,
        path=tmp_path / "audit.jsonl",
        extra=extra,
    )
    classifier = ScriptedClassifier(SCRIPT, delay_s=delay_s)
    return Guard(load_policy_text(text, source="responses.yaml"), classifier=classifier)


@pytest.fixture
def upstream() -> Iterator[FakeResponses]:
    with fake_responses(answer) as server:
        yield server


def wrapped(upstream: FakeResponses, guard: Guard) -> openai.OpenAI:
    raw = openai.OpenAI(base_url=upstream.base_url, api_key="test-key", max_retries=0)
    return guardrail.wrap(raw, guard=guard)


def records(tmp_path: Path) -> list[Any]:
    return list(read_records(tmp_path / "audit.jsonl"))


# ------------------------------------------------------------------ non-streaming


def test_an_allowed_response_is_the_upstreams_own(upstream: FakeResponses, tmp_path: Path) -> None:
    raw = openai.OpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
    client = wrapped(upstream, make_guard(tmp_path))
    got = client.responses.create(model="m", input="Capital of France?", temperature=0.2)
    expected = raw.responses.create(model="m", input="Capital of France?")
    assert type(got) is type(expected)
    assert got.output_text == expected.output_text == SAFE_TEXT
    assert upstream.requests[0] == {"model": "m", "input": "Capital of France?", "temperature": 0.2}
    found = guardrail.report(got)
    assert found is not None
    assert found.action is Action.ALLOW
    assert [o.stage for o in found.outcomes] == [Stage.PROMPT, Stage.RESPONSE]
    (record,) = records(tmp_path)
    assert record.request_id == found.request_id
    assert (record.content.prompt, record.content.response) == ("Capital of France?", SAFE_TEXT)


@pytest.mark.parametrize("mode", ["concurrent", "sequential"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_blocked_prompt_raises_and_never_returns_the_answer(
    upstream: FakeResponses, tmp_path: Path, mode: str, stream: bool
) -> None:
    # The guard answers after the upstream: concurrent mode races it, then drops it.
    client = wrapped(upstream, make_guard(tmp_path, mode=mode, delay_s=0.3))
    with pytest.raises(BlockedError) as info:
        client.responses.create(model="m", input="how to build a bomb", stream=stream)
    assert info.value.decision.rule_id == "block-unsafe-prompt"
    assert len(upstream.requests) == (1 if mode == "concurrent" else 0)
    (record,) = records(tmp_path)
    assert (record.final_action, record.blocked_stage) == (Action.BLOCK, Stage.PROMPT)


def test_a_blocked_answer_as_message_is_an_incomplete_response(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    client = wrapped(upstream, make_guard(tmp_path, behavior="message"))
    got = client.responses.create(model="m", input="give me the unsafe answer")
    assert got.status == "incomplete"
    assert got.incomplete_details is not None
    assert got.incomplete_details.reason == "content_filter"
    assert got.output_text == "Blocked by policy."
    assert got.id == "resp_1"  # the upstream's response, its output replaced
    assert "BOOM" not in got.model_dump_json()
    (record,) = records(tmp_path)
    assert (record.final_action, record.blocked_stage) == (Action.BLOCK, Stage.RESPONSE)
    assert record.content.response == UNSAFE  # what the guard judged, kept by the audit


def test_a_blocked_prompt_as_message_never_calls_the_upstream(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    client = wrapped(upstream, make_guard(tmp_path, behavior="message"))
    got = client.responses.create(model="m", input=[{"role": "user", "content": "a bomb"}])
    assert (got.status, got.output_text) == ("incomplete", "Blocked by policy.")
    assert got.id.startswith("guardrail-")
    assert upstream.requests == []


@pytest.mark.parametrize("question", ["call the unsafe tool", "show unsafe thinking"])
def test_tool_calls_and_reasoning_are_judged(
    upstream: FakeResponses, tmp_path: Path, question: str
) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    with pytest.raises(BlockedError) as info:
        client.responses.create(model="m", input=question)
    assert info.value.decision.rule_id == "block-unsafe-response"


def test_a_safe_function_call_passes(upstream: FakeResponses, tmp_path: Path) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    got = client.responses.create(model="m", input="use the safe tool")
    (call,) = got.output
    assert (call.type, call.name, call.arguments) == (
        "function_call",
        "get_weather",
        '{"city": "Paris"}',
    )


def test_tool_results_in_the_input_are_judged(upstream: FakeResponses, tmp_path: Path) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "look it up"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "bomb instructions"},
    ]
    with pytest.raises(BlockedError):
        client.responses.create(model="m", input=items, instructions="Be brief.")
    (record,) = records(tmp_path)
    assert record.blocked_stage is Stage.PROMPT


def test_an_added_instruction_reaches_the_upstream_as_input(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    client.responses.create(model="m", input="an ambiguous question", instructions="Be brief.")
    (sent,) = upstream.requests
    assert sent["instructions"] == "Be brief."
    assert sent["input"] == [
        {"role": "system", "content": "Answer safely."},
        {"role": "user", "content": "an ambiguous question"},
    ]


def test_a_replaced_tool_result_keeps_its_item(upstream: FakeResponses, tmp_path: Path) -> None:
    extra_rule = "  - {id: r, stage: prompt, when: {levels: [Unsafe]}, action: rewrite, "
    text = (
        "version: 1\nname: t\naudit: {sink: none}\nexecution: {mode: sequential}\nrules:\n"
        + extra_rule
        + "rewrite: {mode: replace, text: '[removed]'}}\n"
    )
    guard = Guard(load_policy_text(text), classifier=ScriptedClassifier(SCRIPT))
    items = [
        {"type": "reasoning", "id": "rs_0", "summary": []},
        {"role": "user", "content": "look it up"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "bomb instructions"},
    ]
    wrapped(upstream, guard).responses.create(model="m", input=items)
    (sent,) = upstream.requests
    assert sent["input"] == [
        *items[:3],
        {"type": "function_call_output", "call_id": "c1", "output": "[removed]"},
    ]


def test_regeneration_returns_the_new_response(upstream: FakeResponses, tmp_path: Path) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    got = client.responses.create(model="m", input="something spicy")
    assert got.output_text == "A calm and careful answer."
    assert got.id == "resp_2"
    first, second = upstream.requests
    assert first["input"] == "something spicy"
    assert second["input"][0] == {"role": "system", "content": "Rewrite your answer safely."}
    (record,) = records(tmp_path)
    assert record.final_action is Action.REWRITE


# ---------------------------------------------------------------------- streaming


def test_an_allowed_stream_is_the_upstreams_events(upstream: FakeResponses, tmp_path: Path) -> None:
    raw = openai.OpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
    expected = list(raw.responses.create(model="m", input="Capital?", stream=True))
    stream = wrapped(upstream, make_guard(tmp_path)).responses.create(
        model="m", input="Capital?", stream=True
    )
    with stream:
        events = list(stream)
    assert [e.model_dump() for e in events] == [e.model_dump() for e in expected]
    assert events[-1].type == "response.completed"
    assert stream.report.action is Action.ALLOW
    (record,) = records(tmp_path)
    assert record.content.response == SAFE_TEXT


def _stream(client: openai.OpenAI, question: str) -> list[Any]:
    return list(client.responses.create(model="m", input=question, stream=True))


def test_a_cut_stream_ends_incomplete_with_content_filter(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    client = wrapped(upstream, make_guard(tmp_path, replacement='"[removed]"'))
    events = _stream(client, "stream unsafe please")
    assert all("BOOM" not in e.model_dump_json() for e in events)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "content_filter"
    assert last.response.output_text == "[removed]"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas[0].delta == "This s"  # checked text before the cut was released
    assert deltas[-1].delta == "[removed]"
    assert deltas[-1].item_id != deltas[0].item_id
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    (record,) = records(tmp_path)
    assert (record.final_action, record.blocked_stage) == (Action.BLOCK, Stage.RESPONSE)


def test_streamed_tool_arguments_are_checked_before_release(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    events = _stream(wrapped(upstream, make_guard(tmp_path)), "call the unsafe tool")
    assert all("BOOM" not in e.model_dump_json() for e in events)
    assert events[-1].type == "response.incomplete"
    assert any(e.type == "response.function_call_arguments.delta" for e in events)  # checked
    assert not any(
        e.type == "response.output_item.done" and e.item.type == "function_call" for e in events
    )


def test_a_stream_whose_prompt_is_blocked_is_a_whole_incomplete_stream(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    events = _stream(wrapped(upstream, make_guard(tmp_path, behavior="message")), "a bomb")
    assert [e.type for e in events] == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert events[3].delta == "Blocked by policy."
    assert upstream.requests == []


async def test_the_async_client_creates_and_streams(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    raw = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
    client = guardrail.wrap(raw, guard=make_guard(tmp_path))
    got = await client.responses.create(model="m", input="Capital?")
    stream = await client.responses.create(model="m", input="stream unsafe", stream=True)
    async with stream:
        events = [e async for e in stream]
    with pytest.raises(BlockedError):
        await client.responses.create(model="m", input="bomb", stream=True)
    await raw.close()
    assert got.output_text == SAFE_TEXT
    assert events[-1].type == "response.incomplete"
    assert all("BOOM" not in e.model_dump_json() for e in events)
    assert [r.final_action for r in records(tmp_path)] == [Action.ALLOW, Action.BLOCK, Action.BLOCK]


# ------------------------------------------------------------------- refused calls


@pytest.mark.parametrize(
    ("params", "error", "needle"),
    [
        ({"input": "hi", "background": True}, ConfigurationError, "background"),
        ({"input": "hi", "extra_body": {"input": "bomb"}}, ConfigurationError, "extra_body"),
        ({"input": {"role": "user"}}, InputError, "input"),
        ({"input": [{"role": "robot", "content": "hi"}]}, InputError, "input[0].role"),
    ],
)
def test_calls_the_guard_cannot_judge_are_refused_and_audited(
    upstream: FakeResponses, tmp_path: Path, params: dict[str, Any], error: type, needle: str
) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    with pytest.raises(error, match=needle.replace("[", r"\[")):
        client.responses.create(model="m", **params)
    assert upstream.requests == []
    (record,) = records(tmp_path)
    assert record.final_action is Action.BLOCK


def test_nothing_to_judge_fails_closed(upstream: FakeResponses, tmp_path: Path) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    with pytest.raises(BlockedError) as info:  # no user text: the guard cannot judge it
        client.responses.create(model="m", instructions="only instructions")
    assert info.value.decision.rule_id == "failure"
    assert upstream.requests == []


def test_parse_is_guarded_and_does_not_stream(upstream: FakeResponses, tmp_path: Path) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    with pytest.raises(BlockedError):
        client.responses.parse(model="m", input="give me the unsafe answer")
    with pytest.raises(ConfigurationError, match="does not stream"):
        client.responses.parse(model="m", input="hi", stream=True)


# --------------------------------------------------------------------- pass-through


@pytest.mark.parametrize(
    "path",
    [
        "responses.retrieve",
        "responses.cancel",
        "responses.stream",
        "completions",
        "beta.threads",
        "realtime",
        "chat.completions.retrieve",
        "chat.completions.stream",
        "beta.chat",
        "audio",
    ],
)
def test_unguarded_generation_apis_raise(
    upstream: FakeResponses, tmp_path: Path, path: str
) -> None:
    client = wrapped(upstream, make_guard(tmp_path))
    with pytest.raises(UnguardedAccessError, match=f"{path} is not guarded.*client.passthrough"):
        functools.reduce(getattr, path.split("."), client)
    assert not hasattr(client.responses, "with_raw_response")


@pytest.mark.parametrize("where", ["", "chat.", "chat.completions.", "responses.", "beta."])
def test_raw_response_helpers_are_always_refused(
    upstream: FakeResponses, tmp_path: Path, where: str
) -> None:
    guard = make_guard(tmp_path, extra="client: {passthrough: [chat, responses, beta]}")
    client = wrapped(upstream, guard)
    for helper in ("with_raw_response", "with_streaming_response"):
        with pytest.raises(UnguardedAccessError, match="raw answers unchecked") as info:
            functools.reduce(getattr, f"{where}{helper}".split("."), client)
        assert "passthrough" not in str(info.value)


def test_apis_without_model_output_pass(upstream: FakeResponses, tmp_path: Path) -> None:
    raw = openai.OpenAI(base_url=upstream.base_url, api_key="k")
    client = guardrail.wrap(raw, guard=make_guard(tmp_path))
    assert client.models.list == raw.models.list
    assert client.embeddings.create == raw.embeddings.create
    assert client.beta.assistants.create == raw.beta.assistants.create
    assert client.responses.input_items.list == raw.responses.input_items.list
    assert client.api_key == raw.api_key


def test_listed_apis_pass_through_unchecked(upstream: FakeResponses, tmp_path: Path) -> None:
    stored = response_body([message(UNSAFE)], rid="resp_9")
    upstream.server.route("GET", "/v1/responses/resp_9", JSONResponse(stored))
    guard = make_guard(tmp_path, extra="client: {passthrough: [responses.retrieve, beta.threads]}")
    client = wrapped(upstream, guard)
    assert client.responses.retrieve("resp_9").output_text == UNSAFE  # unchecked, as listed
    assert client.beta.threads.create is not None
    with pytest.raises(UnguardedAccessError):
        _ = client.completions
    assert records(tmp_path) == []  # nothing guarded, nothing audited


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ("[responses.create]", "client.passthrough[0]: responses.create is always guarded"),
        ("[completions, completions]", "client.passthrough[1]: 'completions' is listed twice"),
        ("[responses.with_raw_response]", "raw-response helpers are always refused"),
        ("[Responses.Retrieve]", "is not an API of the openai client"),
        ("responses.retrieve", "expected a list"),
    ],
)
def test_passthrough_entries_are_checked_where_they_are(entries: str, needle: str) -> None:
    text = f"version: 1\nname: t\nclient:\n  passthrough: {entries}\n"
    with pytest.raises(PolicyError, match=re.escape(needle)) as info:
        load_policy_text(text, source="p.yaml")
    assert str(info.value).startswith("p.yaml:4:")


def test_a_resource_above_a_guarded_api_leaves_it_guarded(
    upstream: FakeResponses, tmp_path: Path
) -> None:
    client = wrapped(upstream, make_guard(tmp_path, extra="client: {passthrough: [responses]}"))
    assert client.responses.retrieve is not None
    with pytest.raises(BlockedError):
        client.responses.create(model="m", input="give me the unsafe answer")
