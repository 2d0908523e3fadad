"""OpenTelemetry spans of guarded calls: the tree, the attributes, the times, the content rule.

Every test reads the spans an SDK ``TracerProvider`` exported into memory (the
in-memory exporter behind a simple span processor), after real guarded calls to
a loopback upstream.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import FakeLLM, fake_llm, last_user
from loopback import JSONResponse, LoopbackServer, Request, chat_completion
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import guardrail
from guardrail import Guard
from guardrail.audit import AuditRecord, JsonlSink, read_records
from guardrail.classifiers.remote import RemoteQwen3Guard
from guardrail.errors import ClassifierError, ConfigurationError
from guardrail.policy import load_policy_text
from guardrail.policy.schema import RewardConfig
from guardrail.reward.base import RewardPair, RewardScore
from guardrail.testing import ScriptedClassifier

UNSAFE = "Safety: Unsafe\nCategories: Violent"
UNSAFE_RESPONSE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
SCRIPT = {"bomb": UNSAFE, "BOOM": UNSAFE_RESPONSE}
UPSTREAM_KEY = "sk-upstream-0123456789abcdef"
GUARD_KEY = "gk-guard-fedcba9876543210"


def policy_text(content: str = "hash", *, extra: str = "", mode: str = "sequential") -> str:
    return (
        textwrap.dedent(
            f"""\
        version: 1
        name: otel-test
        audit: {{content: {content}}}
        execution: {{mode: {mode}}}
        block: {{behavior: message}}
        streaming: {{chunk_chars: 16, sentence_boundary: false}}
        rules:
          - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}},
              action: block}}
          - {{id: block-unsafe-response, stage: response, when: {{levels: [Unsafe]}},
              action: block}}
        """
        )
        + extra
    )


def answers(messages: list[dict[str, Any]], index: int) -> str:
    question = last_user(messages)
    if "loud" in question:
        return "Sure. Here it comes: BOOM and more text after it."
    return "Paris is the capital of France."


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm(answers) as server:
        yield server


def make_guard(
    tmp_path: Path,
    provider: TracerProvider | None,
    *,
    content: str = "hash",
    extra: str = "",
    mode: str = "sequential",
    classifier: Any = None,
    **kwargs: Any,
) -> Guard:
    return Guard(
        load_policy_text(policy_text(content, extra=extra, mode=mode), source="otel.yaml"),
        classifier=classifier if classifier is not None else ScriptedClassifier(SCRIPT),
        sink=JsonlSink(tmp_path / "audit.jsonl"),
        tracer_provider=provider,
        **kwargs,
    )


def client_for(guard: Guard, base_url: str, *, is_async: bool = False) -> Any:
    make = openai.AsyncOpenAI if is_async else openai.OpenAI
    return guardrail.wrap(make(base_url=base_url, api_key=UPSTREAM_KEY, max_retries=0), guard=guard)


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def record(tmp_path: Path) -> AuditRecord:
    (only,) = read_records(tmp_path / "audit.jsonl")
    return only


def tree(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one call span and its children in start order; fails on any other shape."""
    spans = list(exporter.get_finished_spans())
    ids = {s.context.span_id for s in spans}
    roots = [s for s in spans if s.parent is None or s.parent.span_id not in ids]
    assert len(roots) == 1, [s.name for s in roots]
    (root,) = roots
    children = [s for s in spans if s is not root]
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id, child.name
        assert child.context.trace_id == root.context.trace_id
    return root, sorted(children, key=lambda s: (s.start_time or 0, s.end_time or 0))


def assert_nested(root: ReadableSpan, children: Sequence[ReadableSpan]) -> None:
    """Each span starts before it ends, and every child lies within the call's span."""
    assert root.start_time is not None
    assert root.end_time is not None
    assert root.start_time <= root.end_time
    for child in children:
        assert child.start_time is not None
        assert child.end_time is not None
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time, child.name


def names(children: Sequence[ReadableSpan]) -> list[str]:
    return [c.name for c in children]


def check_attributes(
    stage: str,
    *,
    action: str = "allow",
    rule: str = "default",
    level: str = "Safe",
    **more: Any,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "guardrail.stage": stage,
        "guardrail.action": action,
        "guardrail.rule": rule,
        "guardrail.attempt": 0,
        "guardrail.guard_model": "scripted-guard",
        "guardrail.level": level,
    }
    if stage == "response":
        attributes["guardrail.candidate"] = 0
        attributes["guardrail.refusal"] = False
    attributes.update(more)
    return attributes


def call_attributes(guard: Guard, rec: AuditRecord, **more: Any) -> dict[str, Any]:
    return {
        "guardrail.request_id": rec.request_id,
        "guardrail.mode": "sequential",
        "guardrail.action": "allow",
        "guardrail.policy.name": "otel-test",
        "guardrail.policy.version": "1",
        "guardrail.policy.hash": guard.policy.content_hash,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m",
        **more,
    }


UPSTREAM_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "m",
    "gen_ai.response.id": "chatcmpl-fake",
    "gen_ai.response.model": "m",
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.usage.input_tokens": 5,
    "gen_ai.usage.output_tokens": 7,
    "guardrail.attempt": 0,
}


# ------------------------------------------------------------------ completions


def test_a_sync_call_is_one_span_with_its_checks_and_upstream_call(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = make_guard(tmp_path, provider)
    client = client_for(guard, llm.base_url)
    app = provider.get_tracer("app")
    with app.start_as_current_span("request") as outer:
        client.chat.completions.create(model="m", messages=ask("Capital of France?"))
    guard.close()
    spans = list(exporter.get_finished_spans())
    (app_span,) = [s for s in spans if s.name == "request"]
    exporter.clear()
    for span in spans:
        if span is not app_span:
            exporter.export([span])
    root, children = tree(exporter)
    # The call's span nests in the application's trace, under its current span.
    assert root.parent is not None
    assert root.parent.span_id == outer.get_span_context().span_id
    assert root.context.trace_id == app_span.context.trace_id
    assert root.name == "guardrail.chat"
    assert names(children) == ["guardrail.check.prompt", "chat m", "guardrail.check.response"]
    prompt, upstream, response = children
    rec = record(tmp_path)
    assert dict(root.attributes or {}) == call_attributes(guard, rec)
    assert root.status.status_code is StatusCode.UNSET
    assert dict(prompt.attributes or {}) == check_attributes("prompt")
    assert dict(response.attributes or {}) == check_attributes("response")
    assert dict(upstream.attributes or {}) == UPSTREAM_ATTRIBUTES
    assert upstream.kind is SpanKind.CLIENT
    assert_nested(root, children)
    # Sequential mode: the upstream call runs after the prompt check, the answer's after it.
    assert prompt.end_time is not None
    assert upstream.start_time is not None
    assert prompt.end_time <= upstream.start_time
    assert upstream.end_time is not None
    assert response.start_time is not None
    assert upstream.end_time <= response.start_time
    # Content hashed in the record: none in the spans.
    assert rec.content.prompt is not None
    assert rec.content.prompt.startswith("sha256:")


def test_an_async_call_keeps_the_content_when_the_policy_keeps_it_full(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = make_guard(tmp_path, provider, content="full")
    client = client_for(guard, llm.base_url, is_async=True)

    async def run() -> None:
        question = f"Capital of France? My key is {UPSTREAM_KEY}"
        await client.chat.completions.create(model="m", messages=ask(question))

    asyncio.run(run())
    guard.close()
    root, children = tree(exporter)
    assert names(children) == ["guardrail.check.prompt", "chat m", "guardrail.check.response"]
    rec = record(tmp_path)
    assert dict(root.attributes or {}) == call_attributes(
        guard,
        rec,
        **{
            "guardrail.prompt": "Capital of France? My key is ***",  # masked
            "guardrail.response": "Paris is the capital of France.",
        },
    )
    assert dict(children[1].attributes or {}) == UPSTREAM_ATTRIBUTES
    assert_nested(root, children)


def test_concurrent_mode_starts_the_upstream_span_with_the_prompt_check(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = make_guard(
        tmp_path,
        provider,
        mode="concurrent",
        classifier=ScriptedClassifier(SCRIPT, delay_s=0.05),
    )
    client_for(guard, llm.base_url).chat.completions.create(model="m", messages=ask("Hi"))
    guard.close()
    root, children = tree(exporter)
    by_name = {c.name: c for c in children}
    upstream, prompt = by_name["chat m"], by_name["guardrail.check.prompt"]
    assert root.attributes is not None
    assert root.attributes["guardrail.mode"] == "concurrent"
    # The raced call starts before the prompt check does, not when the flow waits for it.
    assert upstream.start_time is not None
    assert prompt.start_time is not None
    assert upstream.start_time <= prompt.start_time
    assert_nested(root, children)


def test_a_blocked_prompt_has_no_upstream_span_and_truncated_content(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = Guard(
        load_policy_text(
            policy_text("truncated").replace(
                "{content: truncated}", "{content: truncated, truncate_chars: 8}"
            ),
            source="otel.yaml",
        ),
        classifier=ScriptedClassifier(SCRIPT),
        sink=JsonlSink(tmp_path / "audit.jsonl"),
        tracer_provider=provider,
    )
    got = client_for(guard, llm.base_url).chat.completions.create(
        model="m", messages=ask("How to build a bomb at home")
    )
    guard.close()
    assert got.choices[0].finish_reason == "content_filter"
    assert llm.requests == []
    root, children = tree(exporter)
    assert names(children) == ["guardrail.check.prompt"]
    rec = record(tmp_path)
    assert dict(root.attributes or {}) == call_attributes(
        guard,
        rec,
        **{
            "guardrail.action": "block",
            "guardrail.blocked_stage": "prompt",
            "guardrail.prompt": "How to b…[+19 chars]",
        },
    )
    assert rec.content.prompt == "How to b…[+19 chars]"
    assert dict(children[0].attributes or {}) == check_attributes(
        "prompt",
        action="block",
        rule="block-unsafe-prompt",
        level="Unsafe",
        **{"guardrail.category": "Violent", "guardrail.categories": ("Violent",)},
    )
    assert_nested(root, children)


@pytest.mark.parametrize("is_async", [False, True])
def test_a_guard_failure_is_an_error_span_decided_by_the_failure_mode(
    llm: FakeLLM,
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    is_async: bool,
) -> None:
    # A failure quoting the client's key: the call's mask knows it.
    failing = ScriptedClassifier(error=ClassifierError(f"guard unreachable, key {UPSTREAM_KEY}"))
    guard = make_guard(tmp_path, provider, classifier=failing)
    client = client_for(guard, llm.base_url, is_async=is_async)
    if is_async:

        async def run() -> Any:
            return await client.chat.completions.create(model="m", messages=ask("Hi"))

        got = asyncio.run(run())
    else:
        got = client.chat.completions.create(model="m", messages=ask("Hi"))
    guard.close()
    assert got.choices[0].finish_reason == "content_filter"  # fails closed
    root, children = tree(exporter)
    (check,) = children
    attributes = dict(check.attributes or {})
    assert attributes["guardrail.error.type"] == "ClassifierError"
    assert attributes["guardrail.action"] == "block"
    assert attributes["guardrail.rule"] == "failure"
    assert "guardrail.level" not in attributes  # no verdict
    assert check.status.status_code is StatusCode.ERROR
    assert check.status.description == "guard unreachable, key ***"
    for span in exporter.get_finished_spans():
        assert UPSTREAM_KEY not in span.to_json(), span.name
    assert root.attributes is not None
    assert root.attributes["guardrail.action"] == "block"
    assert root.status.status_code is StatusCode.UNSET  # the call itself did not fail


class Scorer:
    """A reward model scoring every answer from a table."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    @property
    def model_id(self) -> str:
        return "quality"

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        return [RewardScore(score=self.table.get(a, 0.0), model="quality") for _, a in pairs]

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        return self.score(pairs)


def test_reward_scoring_is_a_span_with_the_scores(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    policy = load_policy_text(policy_text(), source="otel.yaml")
    reward = RewardConfig.model_validate(
        {"models": [{"id": "quality", "kind": "seqcls", "model": "/x"}]}
    )
    guard = Guard(
        policy.model_copy(update={"reward": reward}),
        classifier=ScriptedClassifier(SCRIPT),
        sink=JsonlSink(tmp_path / "audit.jsonl"),
        scorers={"quality": Scorer({"Paris is the capital of France.": 2.5})},
        tracer_provider=provider,
    )
    client_for(guard, llm.base_url).chat.completions.create(model="m", messages=ask("Capital?"))
    guard.close()
    root, children = tree(exporter)
    assert names(children) == [
        "guardrail.check.prompt",
        "chat m",
        "guardrail.check.response",
        "guardrail.reward",
    ]
    response, scoring = children[2], children[3]
    assert dict(scoring.attributes or {}) == {
        "guardrail.attempt": 0,
        "gen_ai.evaluation.name": "quality",
        "gen_ai.evaluation.score.value": 2.5,
        "guardrail.reward.scores": (2.5,),
    }
    # The scoring runs within the response check's time (which counts it).
    assert response.start_time is not None
    assert scoring.start_time is not None
    assert response.end_time is not None
    assert scoring.end_time is not None
    assert response.start_time <= scoring.start_time <= scoring.end_time <= response.end_time
    assert dict(response.attributes or {})["guardrail.reward"] == 2.5
    assert_nested(root, children)


def test_a_regeneration_is_an_attempt_with_its_own_upstream_and_check_spans(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def once_unsafe(messages: list[dict[str, Any]], index: int) -> str:
        regenerated = any(m["role"] == "system" for m in messages)
        return "A calm answer." if regenerated else "BOOM."

    rules = (
        "  - {id: regen, stage: response, when: {levels: [Unsafe]}, action: rewrite,\n"
        "     rewrite: {mode: regenerate, text: Answer calmly., max_attempts: 2}}\n"
    )
    old = "  - {id: block-unsafe-response, stage: response, when: {levels: [Unsafe]},\n"
    text = policy_text().replace(old + "      action: block}\n", rules)
    assert text != policy_text()
    guard = Guard(
        load_policy_text(text, source="otel.yaml"),
        classifier=ScriptedClassifier(SCRIPT),
        sink=JsonlSink(tmp_path / "audit.jsonl"),
        tracer_provider=provider,
    )
    with fake_llm(once_unsafe) as server:
        got = client_for(guard, server.base_url).chat.completions.create(
            model="m", messages=ask("Hi")
        )
    guard.close()
    assert got.choices[0].message.content == "A calm answer."
    root, children = tree(exporter)
    assert names(children) == [
        "guardrail.check.prompt",
        "chat m",
        "guardrail.check.response",
        "chat m",
        "guardrail.check.response",
    ]
    attempts = [dict(c.attributes or {})["guardrail.attempt"] for c in children]
    assert attempts == [0, 0, 0, 1, 1]
    assert dict(children[2].attributes or {})["guardrail.action"] == "rewrite"
    assert dict(children[4].attributes or {})["guardrail.action"] == "allow"
    assert root.attributes is not None
    assert root.attributes["guardrail.action"] == "rewrite"
    assert_nested(root, children)


# --------------------------------------------------------------------- streams


@pytest.mark.parametrize("is_async", [False, True])
def test_a_stream_is_one_span_with_a_check_per_window(
    llm: FakeLLM,
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    is_async: bool,
) -> None:
    guard = make_guard(tmp_path, provider, content="full")
    client = client_for(guard, llm.base_url, is_async=is_async)
    if is_async:

        async def run() -> str:
            stream = await client.chat.completions.create(
                model="m", messages=ask("Capital of France?"), stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream])

        text = asyncio.run(run())
    else:
        stream = client.chat.completions.create(
            model="m", messages=ask("Capital of France?"), stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    guard.close()
    assert text == "Paris is the capital of France."
    root, children = tree(exporter)
    rec = record(tmp_path)
    windows = [c for c in children if c.name == "guardrail.check.response"]
    assert len(windows) == len([s for s in rec.stages if s.stage.value == "response"]) >= 2
    assert names(children)[:2] == ["guardrail.check.prompt", "chat m"]
    assert len(children) == 2 + len(windows)
    assert dict(root.attributes or {}) == call_attributes(
        guard,
        rec,
        **{
            "guardrail.mode": "streaming",
            "guardrail.prompt": "Capital of France?",
            "guardrail.response": "Paris is the capital of France.",
        },
    )
    upstream = children[1]
    assert dict(upstream.attributes or {}) == {
        **{k: v for k, v in UPSTREAM_ATTRIBUTES.items() if not k.startswith("gen_ai.usage")},
    }
    # The upstream stream is read until its end, past the window checks' starts.
    assert upstream.end_time is not None
    assert all(upstream.start_time <= w.start_time for w in windows)  # type: ignore[operator]
    assert_nested(root, children)


def test_a_cut_stream_ends_with_the_blocking_window(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = make_guard(tmp_path, provider)
    stream = client_for(guard, llm.base_url).chat.completions.create(
        model="m", messages=ask("say it loud"), stream=True
    )
    chunks = list(stream)
    guard.close()
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    root, children = tree(exporter)
    windows = [c for c in children if c.name == "guardrail.check.response"]
    actions = [dict(w.attributes or {})["guardrail.action"] for w in windows]
    assert actions[-1] == "block"
    assert set(actions[:-1]) <= {"allow"}
    assert dict(windows[-1].attributes or {})["guardrail.rule"] == "block-unsafe-response"
    attributes = dict(root.attributes or {})
    assert attributes["guardrail.action"] == "block"
    assert attributes["guardrail.blocked_stage"] == "response"
    assert attributes["guardrail.request_id"] == record(tmp_path).request_id
    assert "guardrail.prompt" not in attributes  # content: hash
    assert_nested(root, children)


# ------------------------------------------------------------ errors and secrets


def echo_key(request: Request) -> JSONResponse:
    header = request.headers.get("authorization", "")
    message = f"Incorrect API key provided: {header.removeprefix('Bearer ')}"
    return JSONResponse({"error": {"message": message, "type": "invalid_request"}}, status=401)


def read_whole(client: Any, *, stream: bool) -> Any:
    """One call, a stream read to its end."""
    result = client.chat.completions.create(model="m", messages=ask("Hi"), stream=stream)
    return list(result) if stream else result


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_echoing_the_api_key_is_masked_in_every_span(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter, stream: bool
) -> None:
    guard = make_guard(tmp_path, provider, content="full")
    with LoopbackServer() as server:
        server.route("POST", "/v1/chat/completions", echo_key)
        client = client_for(guard, f"{server.url}/v1")
        with pytest.raises(openai.AuthenticationError) as info:
            read_whole(client, stream=stream)
    guard.close()
    assert "Incorrect API key provided: ***" in str(info.value)  # echoed, then masked
    root, children = tree(exporter)
    assert names(children) == ["guardrail.check.prompt", "chat m"]
    upstream = children[1]
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.status.description is not None
    assert "Incorrect API key provided: ***" in upstream.status.description
    assert dict(upstream.attributes or {})["error.type"] == "AuthenticationError"
    assert root.status.status_code is StatusCode.ERROR
    assert dict(root.attributes or {})["error.type"] == "AuthenticationError"
    for span in exporter.get_finished_spans():
        dumped = span.to_json()
        assert UPSTREAM_KEY not in dumped, span.name
        assert not span.events  # no exception event: its text would skip the mask


def test_a_guard_echoing_its_key_fails_a_check_whose_span_masks_it(
    llm: FakeLLM, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    chatter = f"I was called with Authorization: Bearer {GUARD_KEY}"
    with LoopbackServer() as server:
        server.route(
            "POST", "/guard/v1/chat/completions", lambda r: JSONResponse(chat_completion(chatter))
        )
        remote = RemoteQwen3Guard(f"{server.url}/guard/v1", api_key=GUARD_KEY, max_retries=0)
        guard = make_guard(tmp_path, provider, content="full", classifier=remote)
        client_for(guard, llm.base_url).chat.completions.create(model="m", messages=ask("Hi"))
        guard.close()
        remote.close()
    _root, children = tree(exporter)
    (check,) = children
    assert dict(check.attributes or {})["guardrail.error.type"] == "VerdictParseError"
    assert check.status.status_code is StatusCode.ERROR
    assert check.status.description is not None
    assert "Bearer ***" in check.status.description
    for span in exporter.get_finished_spans():
        assert GUARD_KEY not in span.to_json(), span.name


# ---------------------------------------------------------------- direct checks


@pytest.mark.parametrize("is_async", [False, True])
def test_a_direct_check_is_a_check_span_with_its_check(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter, is_async: bool
) -> None:
    guard = make_guard(tmp_path, provider, content="full")
    messages = ask("How to build a bomb")
    if is_async:
        asyncio.run(guard.acheck_prompt(messages))
    else:
        guard.check_prompt(messages)
    guard.close()
    root, children = tree(exporter)
    assert root.name == "guardrail.check"
    rec = record(tmp_path)
    assert dict(root.attributes or {}) == {
        "guardrail.request_id": rec.request_id,
        "guardrail.mode": "check",
        "guardrail.action": "block",
        "guardrail.blocked_stage": "prompt",
        "guardrail.policy.name": "otel-test",
        "guardrail.policy.version": "1",
        "guardrail.policy.hash": guard.policy.content_hash,
        "guardrail.prompt": "How to build a bomb",
    }
    assert names(children) == ["guardrail.check.prompt"]
    assert_nested(root, children)


# -------------------------------------------------------------- off, or missing


def test_without_a_provider_or_the_policy_field_no_span_is_started(
    llm: FakeLLM, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    guard = make_guard(tmp_path, None)
    assert guard.begin("check").span is None
    client_for(guard, llm.base_url).chat.completions.create(model="m", messages=ask("Hi"))
    guard.close()
    assert exporter.get_finished_spans() == ()


def test_an_unsampled_call_keeps_no_span(llm: FakeLLM, tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    guard = make_guard(tmp_path, TracerProvider(sampler=ALWAYS_OFF))
    assert guard.begin("check").span is None


GLOBAL_PROVIDER = """
import openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from guardrail import Guard
from guardrail.audit import NullSink
from guardrail.policy import load_policy_text
from guardrail.testing import ScriptedClassifier

POLICY = "version: 1\\nname: p\\n"
off = Guard(load_policy_text(POLICY), classifier=ScriptedClassifier(), sink=NullSink())
on = Guard(load_policy_text(POLICY + "telemetry: {otel: true}\\n"),
           classifier=ScriptedClassifier(), sink=NullSink())
# Configured after the guards were built: the global provider is looked up lazily.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
off.check_prompt([{"role": "user", "content": "hi"}])
print("off", [s.name for s in exporter.get_finished_spans()])
on.check_prompt([{"role": "user", "content": "hi"}])
print("on", [s.name for s in exporter.get_finished_spans()])
"""


def test_the_policy_field_traces_through_the_global_provider() -> None:
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.splitlines() == [
        "off []",
        "on ['guardrail.check.prompt', 'guardrail.check']",
    ]


def test_tracing_without_opentelemetry_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"guardrail\[otel\]"):
        Guard(
            load_policy_text(policy_text(extra="telemetry: {otel: true}\n"), source="otel.yaml"),
            classifier=ScriptedClassifier(),
            sink=JsonlSink(tmp_path / "audit.jsonl"),
        )
