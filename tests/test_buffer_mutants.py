"""StreamState: the channels besides content, the defaults, and multi-choice chunks."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from guardrail.flow.buffer import StreamState


def chunk(*choices: dict[str, Any]) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": list(choices),
        }
    )


def choice(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


def said(text: str, index: int = 0, finish: str | None = None) -> ChatCompletionChunk:
    return chunk(choice(index, finish, content=text))


def tool(k: int, name: str = "", arguments: str = "") -> dict[str, Any]:
    return {"index": k, "function": {"name": name, "arguments": arguments}}


def test_the_defaults_check_every_400_characters_or_at_a_sentence_after_100() -> None:
    state = StreamState()
    assert state.feed(said("x" * 98 + ". ")).checks != []  # 100 characters, a sentence end
    state = StreamState()
    assert state.feed(said("x" * 97 + ". ")).checks == []  # 99 characters
    assert state.feed(said("y")).checks == []  # 100 characters, no sentence end
    assert state.feed(said("y" * 299)).checks == []  # 399
    assert state.feed(said("y")).checks != []  # 400
    plain = StreamState(sentence_boundary=False, chunk_chars=400)
    assert plain.feed(said("x" * 98 + ". ")).checks == []


@pytest.mark.parametrize(("chunk_chars", "short"), [(4, "."), (10, "a.")])
def test_a_sentence_end_closes_a_check_at_a_quarter_of_chunk_chars(
    chunk_chars: int, short: str
) -> None:
    # A quarter, rounded down, and at least one character.
    assert StreamState(chunk_chars=chunk_chars).feed(said(short)).checks != []


def test_exactly_a_quarter_with_a_sentence_end_is_enough() -> None:
    assert StreamState(chunk_chars=40).feed(said("123456789.")).checks != []
    assert StreamState(chunk_chars=40).feed(said("12345678.")).checks == []


def test_chunk_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^chunk_chars must be positive$"):
        StreamState(chunk_chars=0)


def test_reasoning_is_judged_and_counted() -> None:
    state = StreamState(chunk_chars=12, sentence_boundary=False)
    assert state.feed(chunk(choice(reasoning_content="Let me think"))).checks != []
    assert state.text() == ""  # reasoning is not visible text


def test_each_check_judges_a_window_of_the_reasoning_before_it() -> None:
    state = StreamState(chunk_chars=8, sentence_boundary=False, context_chars=4)
    (first,) = state.feed(chunk(choice(reasoning_content="abcdefgh"))).checks
    assert first.message["reasoning_content"] == "abcdefgh"
    (second,) = state.feed(chunk(choice(reasoning_content="ijklmnop"))).checks
    assert second.message["reasoning_content"] == "efghijklmnop"  # 4 before, 8 new
    (final,) = state.feed(chunk(choice(finish="stop", reasoning_content="q"))).checks
    assert final.final
    assert final.message["reasoning_content"] == "abcdefghijklmnopq"


def test_tool_calls_are_judged_as_function_calls_in_index_order() -> None:
    state = StreamState(chunk_chars=400)
    state.feed(chunk(choice(tool_calls=[tool(1, "second", '{"b":')])))
    state.feed(chunk(choice(tool_calls=[tool(0, "get_", "{")])))
    state.feed(chunk(choice(tool_calls=[tool(0, "weather", '"x": 1}'), tool(1, "", " 2}")])))
    (final,) = state.feed(chunk(choice(finish="tool_calls"))).checks
    assert final.message["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"x": 1}'}},
        {"type": "function", "function": {"name": "second", "arguments": '{"b": 2}'}},
    ]
    assert "reasoning_content" not in final.message


def test_tool_call_names_and_arguments_count_towards_a_check() -> None:
    state = StreamState(chunk_chars=10, sentence_boundary=False)
    assert state.feed(chunk(choice(tool_calls=[tool(0, "abc", "defghi")]))).checks == []
    assert state.feed(chunk(choice(tool_calls=[tool(0, "", "j")]))).checks != []


def test_text_defaults_to_the_first_choice_and_is_empty_for_unseen_ones() -> None:
    state = StreamState()
    state.feed(chunk(choice(0, content="zero"), choice(1, content="one")))
    assert state.text() == "zero"
    assert state.text(1) == "one"
    assert state.text(7) == ""


def test_a_chunk_without_choices_passes_through() -> None:
    state = StreamState()
    usage_only = object()
    assert state.feed(usage_only).release == [usage_only]


def test_a_finish_does_not_stop_the_other_choices_of_the_same_chunk() -> None:
    state = StreamState(chunk_chars=400)
    step = state.feed(chunk(choice(0, finish="stop", content="Done."), choice(1, content="Go")))
    assert [c.index for c in step.checks] == [0]
    assert state.text(1) == "Go"
    assert state.indices == [0, 1]


def test_an_empty_chunk_after_a_finish_needs_no_new_final_check() -> None:
    state = StreamState(chunk_chars=400)
    (final,) = state.feed(said("Done.", finish="stop")).checks
    assert state.feed(chunk(choice(0))).checks == []
    state.passed(final)
    assert state.finish() == []


def test_text_after_a_finish_is_judged_again() -> None:
    state = StreamState(chunk_chars=400)
    state.feed(said("Done.", finish="stop"))
    state.feed(said(" More."))
    (again,) = state.finish()
    assert again.final
    assert again.text == "Done. More."


def test_unfinished_lists_the_choices_whose_end_was_not_released() -> None:
    state = StreamState(chunk_chars=400)
    state.feed(said("Hi.", index=0))
    (final,) = state.feed(said("", index=0, finish="stop")).checks
    state.feed(said("Hey.", index=1))
    assert state.unfinished == [0, 1]
    state.passed(final)
    assert state.unfinished == [1]


def test_finished_says_whether_the_upstream_ended() -> None:
    state = StreamState()
    assert state.finished is False
    state.finish()
    assert state.finished is True


def test_the_last_chunk_is_the_most_recent_one_held() -> None:
    state = StreamState(chunk_chars=400)
    assert state.last_chunk() is None
    held = [said("one "), said("two "), said("three ")]
    for c in held:
        state.feed(c)
    assert state.last_chunk() is held[-1]


def test_text_joins_a_choices_content_as_received() -> None:
    state = StreamState()
    state.feed(said("Hel"))
    state.feed(said("lo"))
    assert state.text() == "Hello"
    assert state.text(1) == ""


def test_the_latest_chunk_and_the_finish_reasons_are_kept() -> None:
    state = StreamState()
    first = chunk(choice(0, content="a"), choice(1, "length", content="b"))
    state.feed(first)
    assert state.latest is first
    assert state.finish_reasons() == ("length",)
    last = chunk(choice(0, "stop"))
    state.feed(last)
    assert state.latest is last
    assert state.finish_reasons() == ("stop", "length")


def test_a_sentence_after_reasoning_is_cut_at_its_offset_on_every_channel() -> None:
    state = StreamState(chunk_chars=40)  # a sentence end closes a window after 10 characters
    assert state.feed(chunk(choice(reasoning_content="r" * 20))).checks == []
    (check,) = state.feed(said("Hi. there")).checks  # 24 characters, 4 of them content
    assert (check.end, check.text, check.final) == (24, "Hi. ", False)


def test_a_short_sentence_after_a_checked_window_waits_for_more() -> None:
    state = StreamState(chunk_chars=40)
    assert [c.end for c in state.feed(said("Hello there. ")).checks] == [13]
    assert state.feed(said("Hi. ")).checks == []  # 4 characters since the last window


def test_a_sentence_longer_than_chunk_chars_is_cut_as_a_partial_check() -> None:
    state = StreamState(chunk_chars=8, sentence_boundary=False)
    (check,) = state.feed(said("x" * 8)).checks
    assert (check.end, check.final) == (8, False)


def test_no_chunk_is_the_latest_before_the_first() -> None:
    assert StreamState().latest is None
