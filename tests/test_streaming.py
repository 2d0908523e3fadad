"""The sans-I/O stream state, and the streaming modes end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import FakeLLM, fake_llm
from loopback import JSONResponse, LoopbackServer, SSEResponse, chat_completion
from openai.types.chat import ChatCompletionChunk

import guardrail
from guardrail import Guard
from guardrail.audit import read_records
from guardrail.flow.buffer import SegmentCheck, StreamState
from guardrail.policy import Policy, load_policy_text
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action, SafetyLevel, Stage


def chunk(text: str | None, *, index: int = 0, finish: str | None = None) -> ChatCompletionChunk:
    delta: dict[str, Any] = {} if text is None else {"content": text}
    return ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }
    )


def texts(chunks: list[Any]) -> list[str | None]:
    return [c.choices[0].delta.content for c in chunks]


def test_nothing_is_released_before_it_is_checked() -> None:
    state = StreamState(chunk_chars=10, sentence_boundary=False)
    assert texts(state.feed(chunk("")).release) == [""]  # no text: released at once
    step = state.feed(chunk("hello "))
    assert step.release == []
    assert step.checks == []
    step = state.feed(chunk("world!"))
    assert step.release == []
    (check,) = step.checks
    assert (check.text, check.end, check.final) == ("hello world!", 12, False)
    assert texts(state.passed(check)) == ["hello ", "world!"]


def test_chunks_close_at_sentence_ends_once_large_enough() -> None:
    state = StreamState(chunk_chars=40, sentence_boundary=True)  # min 10 chars at a sentence end
    assert state.feed(chunk("Hi.")).checks == []  # a sentence end, but too short
    (check,) = state.feed(chunk(" That is all.")).checks
    assert check.text == "Hi. That is all."
    plain = StreamState(chunk_chars=40, sentence_boundary=False)
    plain.feed(chunk("Hi."))
    assert plain.feed(chunk(" That is all.")).checks == []


def test_a_window_ends_at_the_last_sentence_end_inside_a_delta() -> None:
    state = StreamState(chunk_chars=40, context_chars=0)  # windows from 10 chars
    (first,) = state.feed(chunk("The sky is blue. ")).checks
    assert texts(state.passed(first)) == ["The sky is blue. "]
    # The next sentence starts inside this delta: its start is not judged as a fragment.
    (second,) = state.feed(chunk("It is warm in the sun. How to")).checks
    assert second.text == "It is warm in the sun. "
    assert state.passed(second) == []  # the chunk also carries "How to": held
    (third,) = state.feed(chunk(" make a kite!")).checks
    assert third.text == "How to make a kite!"
    assert texts(state.passed(third)) == ["It is warm in the sun. How to", " make a kite!"]


def test_a_window_after_a_sentence_cut_covers_the_held_start() -> None:
    state = StreamState(chunk_chars=40, context_chars=8)
    (first,) = state.feed(chunk("It is warm in the sun. How to")).checks
    assert first.text == "It is warm in the sun. "
    assert first.end == len("It is warm in the sun. ")
    (final,) = state.feed(chunk(None, finish="stop")).checks
    assert final.final
    assert final.text == "It is warm in the sun. How to"  # the whole answer
    assert state.passed(first) == []
    assert texts(state.passed(final)) == ["It is warm in the sun. How to", None]


def test_a_sentence_longer_than_the_window_is_cut_at_chunk_chars() -> None:
    state = StreamState(chunk_chars=10, context_chars=0)
    (check,) = state.feed(chunk("a" * 12)).checks
    assert check.text == "a" * 12
    # A sentence end followed by more than a window of text: both are checked.
    first, rest = state.feed(chunk("bbbb. " + "c" * 12)).checks
    assert first.text == "bbbb. "
    assert rest.text == "c" * 12
    assert rest.end == 12 + 6 + 12
    assert texts(state.passed(check)) == ["a" * 12]
    assert state.passed(first) == []  # its chunk carries the unchecked c's
    assert texts(state.passed(rest)) == ["bbbb. " + "c" * 12]


def test_each_check_carries_context_from_before() -> None:
    state = StreamState(chunk_chars=5, sentence_boundary=False, context_chars=3)
    (first,) = state.feed(chunk("abcdef")).checks
    (second,) = state.feed(chunk("ghijkl")).checks
    assert first.text == "abcdef"
    assert second.text == "defghijkl"  # 3 chars of context + the new text


def test_finish_chunk_starts_the_final_check_and_waits_for_it() -> None:
    state = StreamState(chunk_chars=100)
    state.feed(chunk("short answer"))
    step = state.feed(chunk(None, finish="stop"))
    assert step.release == []
    (final,) = step.checks  # started with the finish, not at the stream's end
    assert (final.final, final.text) == (True, "short answer")
    assert state.finish() == []
    released = state.passed(final)
    assert texts(released) == ["short answer", None]
    assert released[-1].choices[0].finish_reason == "stop"


def test_text_after_a_finish_is_judged_again_before_release() -> None:
    state = StreamState(chunk_chars=100)
    (first,) = state.feed(chunk("fine", finish="stop")).checks
    assert state.feed(chunk(" late text")).checks == []
    assert state.passed(first) == []  # the late text is unchecked: nothing goes out
    (again,) = state.finish()
    assert (again.final, again.text) == (True, "fine late text")
    assert texts(state.passed(again)) == ["fine", " late text"]


def test_release_before_check_mode_still_holds_the_finish() -> None:
    state = StreamState(chunk_chars=4, release_before_check=True)
    step = state.feed(chunk("unchecked text"))
    assert texts(step.release) == ["unchecked text"]
    assert len(step.checks) == 1
    step = state.feed(chunk(None, finish="stop"))
    assert step.release == []
    (final,) = step.checks
    assert state.passed(final)[0].choices[0].finish_reason == "stop"


def test_choices_are_tracked_separately() -> None:
    state = StreamState(chunk_chars=3, sentence_boundary=False)
    (a,) = state.feed(chunk("aaa", index=0)).checks
    (b,) = state.feed(chunk("bbb", index=1)).checks
    assert (a.index, b.index) == (0, 1)
    assert texts(state.passed(b)) == []  # choice 0's chunk comes first and is unchecked
    assert texts(state.passed(a)) == ["aaa", "bbb"]
    assert [c.index for c in state.finish()] == [0, 1]
    assert state.text(1) == "bbb"


def test_invalid_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_chars"):
        StreamState(chunk_chars=0)


def test_segment_ids_are_unique() -> None:
    state = StreamState(chunk_chars=1, sentence_boundary=False)
    checks: list[SegmentCheck] = []
    for piece in "abcd":
        checks += state.feed(chunk(piece)).checks
    checks += state.finish()
    assert len({c.id for c in checks}) == len(checks) == 5


# ------------------------------------------------------------------ end to end

LONG = "This starts fine. It goes on well. Then BOOM-RECIPE details follow here. The end."


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm(lambda messages, i: LONG, chunk_delay_s=0.005) as server:
        yield server


def guard(tmp_path: Path, release: str) -> Guard:
    policy = load_policy_text(
        f"""
version: 1
name: stream-test
streaming: {{release: {release}, chunk_chars: 20}}
audit: {{sink: jsonl, path: "{tmp_path / "audit.jsonl"}"}}
rules:
  - id: block-unsafe-response
    stage: response
    when: {{levels: [Unsafe]}}
    action: block
"""
    )
    script = {"BOOM": "Safety: Unsafe\nCategories: Violent\nRefusal: No"}
    return Guard(policy, classifier=ScriptedClassifier(script))


def stream_text(llm: FakeLLM, g: Guard) -> tuple[str, str | None]:
    client = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=g)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].choices[0].finish_reason


def test_check_before_release_never_shows_unchecked_text(llm: FakeLLM, tmp_path: Path) -> None:
    text, finish = stream_text(llm, guard(tmp_path, "check_before_release"))
    assert "BOOM" not in text
    assert finish == "content_filter"


def test_check_after_release_shows_text_first_but_still_cuts(llm: FakeLLM, tmp_path: Path) -> None:
    text, finish = stream_text(llm, guard(tmp_path, "check_after_release"))
    # Chunks are released as they arrive, before any check of them can start:
    # the unsafe text was seen (the mode's documented trade-off), then the stream is cut.
    assert "BOOM" in text
    assert finish == "content_filter"


# ---------------------------------------------------------------- reasoning judged

THINKING = "The user asks about a bomb. I will explain it in detail. "


def reasoning_chunks() -> list[dict[str, Any]]:
    def delta(fields: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
        }

    return [
        delta({"role": "assistant", "reasoning_content": THINKING}),
        delta({"content": "Here is a safe answer."}),
        delta({}, "stop"),
    ]


def reasoning_guard(tmp_path: Path, reasoning: str | None) -> Guard:
    policy = Policy.default()
    update: dict[str, Any] = {
        "streaming": policy.streaming.model_copy(update={"chunk_chars": 24}),
        "audit": policy.audit.model_copy(update={"path": str(tmp_path / "audit.jsonl")}),
    }
    if reasoning is not None:  # None: the default policy's own setting
        update["reasoning"] = reasoning
    return Guard(
        policy.model_copy(update=update),
        classifier=ScriptedClassifier({"bomb": "Safety: Unsafe\nCategories: Violent"}),
    )


@pytest.mark.parametrize("reasoning", [None, "answer"])
def test_streamed_reasoning_is_judged_before_release_by_default(
    tmp_path: Path, reasoning: str | None
) -> None:
    with LoopbackServer() as server:
        server.route("POST", "/v1/chat/completions", SSEResponse(reasoning_chunks()))
        wrapped = guardrail.wrap(
            openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0),
            guard=reasoning_guard(tmp_path, reasoning),
        )
        chunks = list(
            wrapped.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "chemistry?"}], stream=True
            )
        )
    thoughts = [getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks]
    (record,) = read_records(tmp_path / "audit.jsonl")
    if reasoning is None:  # the default judges the thinking: it never reaches the caller
        assert THINKING not in thoughts
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert record.final_action is Action.BLOCK
    else:  # the explicit, documented choice to judge the final answer only
        assert THINKING in thoughts
        assert record.final_action is Action.ALLOW


def test_the_reasoning_of_a_whole_answer_is_judged_by_default(tmp_path: Path) -> None:
    body = chat_completion("Here is a safe answer.", reasoning_content=THINKING)
    with LoopbackServer() as server:
        server.route("POST", "/v1/chat/completions", JSONResponse(body))
        wrapped = guardrail.wrap(
            openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0),
            guard=reasoning_guard(tmp_path, None),
        )
        with pytest.raises(guardrail.BlockedError) as raised:
            wrapped.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "chemistry?"}]
            )
    assert raised.value.decision.stage is Stage.RESPONSE
    assert raised.value.decision.verdict is not None
    assert raised.value.decision.verdict.level is SafetyLevel.UNSAFE  # the thinking's
