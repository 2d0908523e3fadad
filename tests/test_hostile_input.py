"""Hostile input: every public entry point raises only typed errors, and every call is recorded.

Property-based (hypothesis) over the four places input enters the SDK: the
policy loader (arbitrary bytes, text and YAML structures: a Policy or
PolicyError), the verdict parser (arbitrary text: a Verdict or
VerdictParseError), message normalisation (arbitrary JSON-like messages: guard
inputs or InputError) and the guarded client (arbitrary messages through a real
``openai`` client and a loopback upstream: typed errors only, exactly one audit
record per call). Then the named cases that used to escape untyped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from fakellm import fake_llm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardrail
from guardrail import Guard
from guardrail.audit import verify_file
from guardrail.audit.chain import HashChain, canonical_json, record_hash
from guardrail.errors import (
    ConfigurationError,
    GuardrailError,
    InputError,
    PolicyError,
    VerdictParseError,
)
from guardrail.policy import Policy, load_policy, load_policy_text
from guardrail.policy.loader import MAX_POLICY_BYTES, MAX_POLICY_DEPTH, MAX_POLICY_NODES
from guardrail.qwen3guard import GuardInput, guard_inputs, parse_verdict
from guardrail.testing import ScriptedClassifier
from guardrail.types import ReasoningMode, SafetyLevel, Stage, Verdict

# Pure functions: a generous deadline still catches a blow-up (exponential aliases,
# quadratic scans) without flaking on a busy machine.
PURE = settings(max_examples=150, deadline=timedelta(seconds=5))
# Real HTTP round trips: fewer examples, no deadline.
CLIENT = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ------------------------------------------------------------------- strategies

# Text with what breaks naive code: control characters, lone surrogates, markup.
hostile_text = st.text(
    alphabet=st.characters(exclude_categories=()), max_size=40
) | st.sampled_from(
    [
        "",
        "\x00",
        "\udc80",
        "a\ud83d\ude00b",
        "<|im_end|>",
        "</think>",
        "bomb",
        "Safety: Unsafe",
        "\u202e",
        "9" * 5000,
    ]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | hostile_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function"]) | (
    json_scalars
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "input_text", "?"]) | json_scalars},
    optional={"text": json_values, "refusal": json_values, "image_url": json_values},
)
contents = hostile_text | json_scalars | st.lists(parts | json_values, max_size=3)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values,
            "type": json_values,
            "function": st.fixed_dictionaries(
                {}, optional={"name": json_values, "arguments": json_values}
            )
            | json_values,
            "custom": st.fixed_dictionaries(
                {}, optional={"name": json_values, "input": json_values}
            )
            | json_values,
        },
    )
    | json_values,
    max_size=2,
)
messages_one = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": contents,
        "tool_calls": tool_calls | json_values,
        "function_call": json_values,
        "refusal": json_values,
        "reasoning_content": json_values,
        "name": json_values,
        "tool_call_id": json_values,
    },
)
# Well-formed conversations with hostile text, so that calls also reach the upstream...
plain_conversations = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": hostile_text}
    ),
    min_size=1,
    max_size=4,
)
# ...and anything at all.
conversations = plain_conversations | st.lists(messages_one | json_values, max_size=5) | json_values


# ------------------------------------------------------------- the policy loader


def check_loads(text: str | bytes) -> None:
    """A policy or PolicyError, nothing else."""
    try:
        result: Policy | PolicyError = load_policy_text(text, "p.yaml")
    except PolicyError as exc:
        result = exc
    if isinstance(result, PolicyError):
        assert result.source == "p.yaml"
        assert str(result).startswith("p.yaml")
    else:
        assert isinstance(result, Policy)


@PURE
@given(st.binary(max_size=512))
def test_policy_loader_on_arbitrary_bytes(data: bytes) -> None:
    check_loads(data)


@PURE
@given(st.text(max_size=300) | hostile_text)
def test_policy_loader_on_arbitrary_text(text: str) -> None:
    check_loads(text)


yaml_punctuation = st.text(alphabet=":-[]{}&*!|>?#,'\" \n\t%@`abc1", max_size=200)


@PURE
@given(yaml_punctuation)
def test_policy_loader_on_yaml_punctuation(text: str) -> None:
    check_loads(text)


@PURE
@given(
    st.dictionaries(
        st.sampled_from(
            ["version", "name", "rules", "guard", "audit", "streaming", "failure", "block", "x"]
        ),
        json_values,
        max_size=6,
    )
)
def test_policy_loader_on_yaml_structures(data: dict[str, Any]) -> None:
    try:
        text = yaml.safe_dump({"version": 1, "name": "p", **data}, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML at all: nothing to load
    check_loads(text)


@PURE
@given(st.data())
def test_policy_loader_on_mutations_of_the_default_policy(data: st.DataObject) -> None:
    base = yaml.safe_load(
        Path(__file__).parent.parent.joinpath("policies/default.yaml").read_text()
    )
    path: list[Any] = []
    node = base
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(
            st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node)))
        )
        path.append(key)
        node = node[key]
    replacement = data.draw(json_values)
    if path:
        parent = base
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = replacement
    else:
        base = replacement
    check_loads(json.dumps(base, allow_nan=True))  # JSON is YAML


def test_control_characters_are_located() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 1\nname: a\x00b\n", "p.yaml")
    assert (info.value.line, info.value.column) == (2, 8)
    assert "U+0000 (NUL)" in info.value.reason
    with pytest.raises(PolicyError, match=r"U\+0007 \(BEL\).*\\x07"):
        load_policy_text("version: 1\nname: a\x07b\n")


def test_a_lone_surrogate_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match=r"lone surrogate \(U\+DC80\)") as info:
        load_policy_text("version: 1\nname: '\udc80'\n")
    assert (info.value.line, info.value.column) == (2, 8)


def test_a_huge_integer_is_located() -> None:
    with pytest.raises(PolicyError, match="too many digits") as info:
        load_policy_text("version: 1\nname: x\nexecution: {timeout_s: " + "9" * 5000 + "}\n")
    assert (info.value.line, info.value.column) == (3, 24)


def test_an_impossible_date_is_located() -> None:
    with pytest.raises(PolicyError, match="day is out of range") as info:
        load_policy_text("version: 1\nname: x\ndescription: 2001-02-30\n")
    assert info.value.line == 3


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        "a: " + "{b: " * 10_000 + "1" + "}" * 10_000,
        "".join(" " * i + "a:\n" for i in range(200)),
        "- " * 10_000 + "x",
    ],
    ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"],
)
def test_deep_nesting_is_refused_before_it_recurses(text: str) -> None:
    with pytest.raises(PolicyError, match=f"at most {MAX_POLICY_DEPTH} levels deep"):
        load_policy_text(text)


def test_too_many_values_are_refused_while_parsing() -> None:
    text = "version: 1\nname: x\nrules: [" + ",".join(["1"] * 20_000) + "]\n"
    assert len(text) < MAX_POLICY_BYTES
    with pytest.raises(PolicyError, match=f"at most {MAX_POLICY_NODES:,} values"):
        load_policy_text(text)


def test_recursive_aliases_are_refused() -> None:
    text = "a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\n" + "".join(
        f"c{i}: &c{i} [" + ", ".join([f"*{'b' if i == 0 else f'c{i - 1}'}"] * 8) + "]\n"
        for i in range(6)
    )
    with pytest.raises(PolicyError, match="once its aliases are followed"):
        load_policy_text(text)


def test_a_5_mb_mapping_is_refused_by_size_before_parsing(tmp_path: Path) -> None:
    text = "".join(f"k{i}: v{i}\n" for i in range(500_000))
    with pytest.raises(PolicyError, match=f"limited to {MAX_POLICY_BYTES:,} bytes"):
        load_policy_text(text)
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="too large") as info:
        load_policy(path)
    assert info.value.source == str(path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_is_read_only_up_to_the_cap() -> None:
    with pytest.raises(PolicyError, match="too large"):
        load_policy("/dev/zero")


@pytest.mark.parametrize("value", [None, 5, ["version: 1"], object()])
def test_non_text_is_a_policy_error(value: Any) -> None:
    with pytest.raises(PolicyError, match="must be YAML text or bytes"):
        load_policy_text(value)


@pytest.mark.parametrize("path", [None, 5, "bad\x00path.yaml"])
def test_unusable_paths_are_policy_errors(path: Any) -> None:
    with pytest.raises(PolicyError):
        load_policy(path)


# -------------------------------------------------------------- the verdict parser

verdict_lines = st.lists(
    st.sampled_from(
        [
            "Safety: Safe",
            "Safety: Unsafe",
            "Safety: Controversial",
            "Safety: maybe",
            "**Safety**: Safe",
            "Categories: None",
            "Categories: Violent, PII",
            "Categories: Nonsense",
            "Refusal: Yes",
            "Refusal: perhaps",
            "<think>",
            "</think>",
            "```",
            "- Safety: Unsafe",
            "",
        ]
    )
    | hostile_text,
    max_size=5,
).map("\n".join)


@PURE
@given(st.text() | verdict_lines, st.sampled_from(["prompt", "response"]))
def test_verdict_parser_on_arbitrary_text(text: str, stage: str) -> None:
    try:
        result: Verdict | VerdictParseError = parse_verdict(text, stage=stage)
    except VerdictParseError as exc:
        result = exc
    if isinstance(result, VerdictParseError):
        assert result.text == text
    else:
        assert isinstance(result, Verdict)
        assert result.level in SafetyLevel
        assert "safety" in text.lower()  # never Safe by default


@pytest.mark.parametrize("value", [None, 5, b"Safety: Safe"])
def test_verdict_parser_on_non_text(value: Any) -> None:
    with pytest.raises(VerdictParseError, match="must be text"):
        parse_verdict(value, stage="prompt")


def test_verdict_parser_on_an_unknown_stage() -> None:
    with pytest.raises(ConfigurationError, match="unknown stage"):
        parse_verdict("Safety: Safe", stage="middle")


# --------------------------------------------------------- message normalisation


@PURE
@given(
    conversations,
    st.none() | hostile_text | messages_one | json_values,
    st.sampled_from(list(ReasoningMode)),
    st.booleans(),
)
def test_guard_inputs_on_arbitrary_messages(
    messages: Any, response: Any, reasoning: ReasoningMode, include_system: bool
) -> None:
    try:
        result: tuple[GuardInput, ...] | InputError = guard_inputs(
            messages, response, reasoning=reasoning, include_system=include_system
        )
    except InputError as exc:
        result = exc
    if isinstance(result, InputError):
        assert str(result)
    else:
        assert result
        for item in result:
            assert isinstance(item, GuardInput)
            assert item.messages
            for message in item.messages:
                message.content.encode("utf-8")  # valid Unicode, ready for any backend
            assert item.stage is (Stage.PROMPT if response is None else Stage.RESPONSE)


@pytest.mark.parametrize(
    ("messages", "response", "where"),
    [
        (None, None, "messages"),
        (5, None, "messages"),
        ("hello", None, "messages"),
        ({"role": "user", "content": "hi"}, None, "messages"),
        ([None], None, "messages[0]"),
        ([{"role": "user", "content": 5}], None, "messages[0].content"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "tool_calls": 5},
                {"role": "user", "content": "again"},
            ],
            None,
            "messages[1].tool_calls",
        ),
        (
            [{"role": "assistant", "content": "x", "tool_calls": "abc"}],
            None,
            "messages[0].tool_calls",
        ),
        ([{"role": "user", "content": "hi"}], 5, "response"),
        ([{"role": "user", "content": "hi"}], {"role": "user", "content": "x"}, "response"),
    ],
)
def test_guard_inputs_name_where(messages: Any, response: Any, where: str) -> None:
    with pytest.raises(InputError) as info:
        guard_inputs(messages, response)
    assert info.value.where == where


def test_an_unknown_reasoning_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown reasoning mode"):
        guard_inputs([{"role": "user", "content": "hi"}], reasoning="sideways")


def test_lone_surrogates_reach_the_guard_as_replacement_characters() -> None:
    (item,) = guard_inputs([{"role": "user", "content": "a\udc80b \ud83d\ude00"}])
    assert item.messages[-1].content == "a\ufffdb \U0001f600"


# ------------------------------------------------------------ direct Guard checks


def audit_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def guard_for(tmp_path: Path, *, fail: str = "closed", mode: str = "concurrent") -> Guard:
    policy = load_policy_text(
        f"""
version: 1
name: hostile
execution: {{mode: {mode}, timeout_s: 5}}
failure: {{prompt: {fail}, response: {fail}}}
block: {{behavior: raise}}
audit: {{sink: jsonl, path: "{tmp_path / "audit.jsonl"}", content: full}}
rules:
  - {{id: block-unsafe, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
  - {{id: block-unsafe-answer, stage: response, when: {{levels: [Unsafe]}}, action: block}}
"""
    )
    script = {"bomb": "Safety: Unsafe\nCategories: Violent"}
    return Guard(policy, classifier=ScriptedClassifier(script))


@pytest.mark.parametrize("messages", [None, 5, "hello", {"role": "user", "content": "hi"}])
def test_checks_refuse_what_is_not_a_conversation_with_one_record(
    tmp_path: Path, messages: Any
) -> None:
    log = tmp_path / "audit.jsonl"
    with guard_for(tmp_path) as guard:
        for run in (
            lambda: guard.check_prompt(messages),
            lambda: guard.check_response(messages, "an answer"),
            lambda: asyncio.run(guard.acheck_prompt(messages)),
            lambda: asyncio.run(guard.acheck_response(messages, "an answer")),
        ):
            before = audit_lines(log)
            with pytest.raises(InputError, match=r"^messages: expected a list of messages"):
                run()
            assert audit_lines(log) == before + 1
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["final_action"] == "block"
    assert record["errors"][0]["type"] == "InputError"
    assert record["errors"][0]["stage"] == "prompt"
    assert verify_file(log).ok


def test_a_response_check_without_a_response_is_an_input_error(tmp_path: Path) -> None:
    with guard_for(tmp_path) as guard, pytest.raises(InputError, match=r"^response: "):
        guard.check_response([{"role": "user", "content": "hi"}], None)
    assert audit_lines(tmp_path / "audit.jsonl") == 1


def test_direct_checks_on_arbitrary_messages(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"

    @settings(PURE, suppress_health_check=[HealthCheck.too_slow])
    @given(conversations, st.none() | hostile_text | messages_one)
    def run(messages: Any, response: Any) -> None:
        before = audit_lines(log)
        try:
            if response is None:
                decision = guard.check_prompt(messages)
            else:
                decision = guard.check_response(messages, response)
        except InputError:
            pass  # not a conversation: refused
        else:  # judged, or decided by the failure mode when the guard could not judge it
            assert decision.stage is (Stage.PROMPT if response is None else Stage.RESPONSE)
        assert audit_lines(log) == before + 1

    with guard_for(tmp_path) as guard:
        run()
    assert verify_file(log).ok


# -------------------------------------------------- lone surrogates in audit records


def test_a_lone_surrogate_is_recorded_losslessly_and_verifies(tmp_path: Path) -> None:
    prompt = "tell me \udc80 about \ud800x and \ud83d\ude00"
    with guard_for(tmp_path) as guard:
        decision = guard.check_prompt([{"role": "user", "content": prompt}])
    assert decision.action.value == "allow"
    log = tmp_path / "audit.jsonl"
    raw = log.read_bytes()
    raw.decode("utf-8")  # valid UTF-8 on disk
    assert b"\\udc80" in raw  # JSON escapes, read back exactly
    assert b"\\ud800" in raw
    record = json.loads(raw)
    # the pair is the character it encodes, as any JSON reader reads it
    assert record["content"]["prompt"] == "tell me \udc80 about \ud800x and \U0001f600"
    assert verify_file(log).ok


def test_canonical_json_without_surrogates_is_unchanged() -> None:
    # Records without surrogates hash exactly as before (pinned).
    data = {"b": "é ü 日本 \U0001f600", "a": [1, 2.5, None, True], "c": {"x": "\\udc80"}}
    assert canonical_json(data) == (
        '{"a":[1,2.5,null,true],"b":"é ü 日本 \U0001f600","c":{"x":"\\\\udc80"}}'
    )
    assert record_hash(data) == "a5ef4d2b98efac921036566808fc79eed376b4fe38b88e868418b76a7a4933cc"


def test_sealed_lines_with_surrogates_rehash_from_their_parsed_form() -> None:
    sealed = HashChain().seal({"prompt": "x\udc80y", "pair": "\ud83d\ude00"})
    sealed.line.encode("utf-8")
    assert record_hash(json.loads(sealed.line)) == sealed.hash


# ---------------------------------------------------------------- the wrapped client


def answer(messages: Any, index: int) -> str:
    return "A calm answer. Nothing else."


@pytest.fixture
def upstream() -> Iterator[Any]:
    with fake_llm(answer) as llm:
        yield llm


def allowed_error(exc: BaseException, record: dict[str, Any]) -> bool:
    """Typed: the guard's own errors, openai's, or the upstream's own error, recorded."""
    if isinstance(exc, (GuardrailError, openai.OpenAIError)):
        return True
    upstream_errors = [e["type"] for e in record["errors"] if e["stage"] is None]
    return type(exc).__name__ in upstream_errors


def read_last(log: Path) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(log.read_bytes().splitlines()[-1])
    return last


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("fail", ["closed", "open"])
def test_wrapped_sync_client_on_arbitrary_messages(
    upstream: Any, tmp_path: Path, stream: bool, fail: str
) -> None:
    log = tmp_path / "audit.jsonl"
    guard = guard_for(tmp_path, fail=fail)
    raw = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
    client = guardrail.wrap(raw, guard=guard)

    @CLIENT
    @given(conversations)
    def run(messages: Any) -> None:
        before = audit_lines(log)
        error: BaseException | None = None
        try:
            result = client.chat.completions.create(model="m", messages=messages, stream=stream)
            if stream:
                for _ in result:
                    pass
        except Exception as exc:
            error = exc
        assert audit_lines(log) == before + 1
        if error is not None:
            assert allowed_error(error, read_last(log)), repr(error)

    try:
        run()
    finally:
        guard.close()
        raw.close()
    assert verify_file(log).ok


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_wrapped_async_client_on_arbitrary_messages(
    upstream: Any, tmp_path: Path, stream: bool
) -> None:
    log = tmp_path / "audit.jsonl"
    guard = guard_for(tmp_path, fail="open", mode="sequential")

    async def once(messages: Any) -> None:
        async with openai.AsyncOpenAI(
            base_url=upstream.base_url, api_key="sk-test", max_retries=0
        ) as raw:
            client = guardrail.wrap(raw, guard=guard)
            result = await client.chat.completions.create(
                model="m", messages=messages, stream=stream
            )
            if stream:
                async for _ in result:
                    pass

    @CLIENT
    @given(conversations)
    def run(messages: Any) -> None:
        before = audit_lines(log)
        error: BaseException | None = None
        try:
            asyncio.run(once(messages))
        except Exception as exc:
            error = exc
        assert audit_lines(log) == before + 1
        if error is not None:
            assert allowed_error(error, read_last(log)), repr(error)

    try:
        run()
    finally:
        guard.close()
    assert verify_file(log).ok


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize(
    "params",
    [
        {"messages": None},
        {"messages": 5},
        {"messages": "hello"},
        {},
        {"messages": [{"role": "user", "content": "hi"}], "n": -1},
        {"messages": [{"role": "user", "content": "hi"}], "n": "two"},
        {"messages": [{"role": "user", "content": "hi"}], "extra_body": {"messages": []}},
    ],
    ids=["none", "int", "str", "missing", "n-negative", "n-text", "extra-body"],
)
def test_wrapped_client_refusals_are_typed_and_recorded(
    upstream: Any, tmp_path: Path, params: dict[str, Any], stream: bool
) -> None:
    log = tmp_path / "audit.jsonl"
    with guard_for(tmp_path) as guard:
        raw = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
        client = guardrail.wrap(raw, guard=guard)
        with pytest.raises((InputError, ConfigurationError)) as info:
            client.chat.completions.create(model="m", stream=stream, **params)
        raw.close()
    assert audit_lines(log) == 1
    record = read_last(log)
    assert record["errors"] == [
        {"message": str(info.value), "stage": "prompt", "type": type(info.value).__name__}
    ]
    assert upstream.requests == []  # nothing was sent


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_parse_with_stream_is_refused_and_recorded(
    upstream: Any, tmp_path: Path, is_async: bool
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with guard_for(tmp_path) as guard:
        if is_async:
            raw: Any = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
            client = guardrail.wrap(raw, guard=guard)
            with pytest.raises(ConfigurationError, match="does not stream"):
                asyncio.run(
                    client.chat.completions.parse(model="m", messages=messages, stream=True)
                )
        else:
            raw = openai.OpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
            client = guardrail.wrap(raw, guard=guard)
            with pytest.raises(ConfigurationError, match="does not stream"):
                client.chat.completions.parse(model="m", messages=messages, stream=True)
    assert audit_lines(tmp_path / "audit.jsonl") == 1
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_lone_surrogate_through_the_client_is_recorded_with_the_upstreams_own_error(
    upstream: Any, tmp_path: Path, stream: bool
) -> None:
    log = tmp_path / "audit.jsonl"
    raw = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
    unwrapped_error: BaseException | None = None
    try:
        raw.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi \udc80"}], stream=stream
        )
    except Exception as exc:
        unwrapped_error = exc
    assert unwrapped_error is not None  # openai cannot send it either
    with guard_for(tmp_path) as guard:
        client = guardrail.wrap(raw, guard=guard)
        with pytest.raises(type(unwrapped_error)):
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi \udc80"}], stream=stream
            )
    raw.close()
    record = read_last(log)
    assert record["content"]["prompt"] == "hi \udc80"  # kept exactly
    assert record["errors"][0]["type"] == type(unwrapped_error).__name__
    assert verify_file(log).ok
