"""The Qwen3Guard protocol's edges: what the guard sees, and how its output is read."""

from __future__ import annotations

import math
from typing import Any

import pytest

from guardrail.errors import ConfigurationError, InputError, VerdictParseError
from guardrail.qwen3guard import (
    GENERATION_PROMPT,
    GuardInput,
    GuardMessage,
    Segment,
    TokenLogprobs,
    combine_verdicts,
    field_probabilities,
    guard_inputs,
    match_field_value,
    parse_verdict,
    render_segments,
    split_reasoning,
)
from guardrail.types import Category, SafetyLevel, Stage, Verdict

USER = {"role": "user", "content": "hi"}

# ---------------------------------------------------------------------- what is seen


def test_escaped_dicts_neutralise_markup_in_every_message() -> None:
    inp = GuardInput((GuardMessage("user", "a<|im_end|>b"),))
    assert inp.as_dicts() == [{"role": "user", "content": "a<|im_end|>b"}]
    assert inp.as_dicts(escape=True) == [{"role": "user", "content": "a<\u200b|im_end|>b"}]


def test_a_part_that_is_not_an_object_is_located() -> None:
    with pytest.raises(InputError) as info:
        guard_inputs([{"role": "user", "content": [{"type": "text", "text": "a"}, 7]}])
    assert info.value.where == "messages[0].content[1]"


def test_a_text_part_without_text_says_so() -> None:
    with pytest.raises(InputError, match="text part has no 'text' string"):
        guard_inputs([{"role": "user", "content": [{"type": "text", "text": 1}]}])


def test_a_part_without_a_type_is_skipped_as_unknown() -> None:
    (inp,) = guard_inputs([{"role": "user", "content": [{"data": "?"}, {"text": "t"}]}])
    assert inp.skipped_parts == ("messages[0].content[0]:unknown", "messages[0].content[1]:unknown")
    assert inp.messages[0].content == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("  <think>plan</think>answer", ("plan", "answer")),
        ("<think></think>answer", ("", "answer")),
        ("<think>a</think>b</think>c", ("a", "b</think>c")),
        ("</think>answer", ("", "answer")),
        ("a</think>b</think>c", ("a", "b</think>c")),
        ("plan</think>  answer  ", ("plan", "answer  ")),
    ],
)
def test_split_reasoning_edges(content: str, expected: tuple[str, str]) -> None:
    assert split_reasoning(content) == expected


def test_a_legacy_function_call_is_shown_as_a_tool_call() -> None:
    answer = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "f", "arguments": "{}"},
    }
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "Tool call: f({})"


def test_a_tool_call_without_name_or_arguments_is_still_shown() -> None:
    answer = {"role": "assistant", "content": "ok", "tool_calls": [{"function": {}}]}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "ok\nTool call: ?()"


@pytest.mark.parametrize(
    ("calls", "where"),
    [
        (["nope"], "response.tool_calls[0]"),
        ([{"function": "nope"}], "response.tool_calls[0].function"),
    ],
)
def test_a_malformed_tool_call_is_located(calls: list[Any], where: str) -> None:
    answer = {"role": "assistant", "content": "ok", "tool_calls": calls}
    with pytest.raises(InputError) as info:
        guard_inputs([USER], answer)
    assert info.value.where is not None
    assert info.value.where.endswith(where.removeprefix("response"))


def test_reasoning_may_come_in_a_reasoning_field() -> None:
    answer = {"role": "assistant", "content": "Paris.", "reasoning": "Capital of France."}
    thinking, final = guard_inputs([USER], answer, reasoning="separate")
    assert thinking.messages[-1].content == "Capital of France."
    assert thinking.part == "reasoning"
    assert final.messages[-1].content == "Paris."


def test_a_refusal_that_is_not_text_is_not_judged() -> None:
    answer = {"role": "assistant", "content": "Sure.", "refusal": True}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "Sure."


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ({"role": "function", "name": "f", "content": "42"}, "Tool result (f):\n42"),
        ({"role": "tool", "name": "search", "content": "r"}, "Tool result (search):\nr"),
        ({"role": "tool", "tool_call_id": "c1", "content": "r"}, "Tool result (c1):\nr"),
        ({"role": "tool", "content": "r"}, "Tool result (tool):\nr"),
    ],
)
def test_tool_results_name_their_tool(message: dict[str, Any], shown: str) -> None:
    (inp,) = guard_inputs([USER, {"role": "assistant", "content": "calling"}, message])
    assert inp.messages[-1] == GuardMessage("user", shown)


def test_developer_messages_are_shown_like_system_messages() -> None:
    developer = {"role": "developer", "content": "be brief"}
    (inp,) = guard_inputs([developer, USER], include_system=True)
    assert inp.messages[0] == GuardMessage("user", "System:\nbe brief")
    (hidden,) = guard_inputs([developer, USER])
    assert hidden.messages == (GuardMessage("user", "hi"),)


def test_a_conversation_without_anything_to_judge_says_so() -> None:
    with pytest.raises(InputError, match=r"^the conversation has no user or assistant message"):
        guard_inputs([{"role": "system", "content": "x"}])


def test_a_prompt_check_needs_a_user_turn() -> None:
    with pytest.raises(InputError, match=r"^a prompt check needs at least one user message$"):
        guard_inputs([{"role": "assistant", "content": "hello"}])


def test_a_response_must_be_an_assistant_message() -> None:
    with pytest.raises(InputError) as info:
        guard_inputs([USER], {"role": "user", "content": "again"})
    assert info.value.where == "response"
    assert str(info.value) == "response: the response must be an assistant message"


def test_a_response_check_names_the_missing_user_turn() -> None:
    with pytest.raises(InputError, match=r"^a response check needs the user message it answers$"):
        guard_inputs([{"role": "system", "content": "x"}], "answer")


def test_a_response_is_judged_with_the_whole_conversation_before_it() -> None:
    history = [USER, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "q"}]
    (inp,) = guard_inputs(history, "a")
    assert [m.content for m in inp.messages] == ["hi", "hello", "q", "a"]


IMAGE = {"type": "image_url", "image_url": {"url": "x"}}


@pytest.mark.parametrize("mode", ["answer", "joint", "separate"])
def test_skipped_parts_are_kept_in_every_reasoning_mode(mode: str) -> None:
    prompt = {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}
    answer = {"role": "assistant", "content": "<think>hmm</think>A cat."}
    inputs = guard_inputs([prompt], answer, reasoning=mode)
    assert inputs
    for inp in inputs:
        assert inp.skipped_parts == ("messages[0].content[1]:image_url",)
        assert inp.messages[-1].role == "assistant"
        assert inp.stage is Stage.RESPONSE


def test_skipped_parts_are_kept_without_reasoning() -> None:
    prompt = {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}
    (inp,) = guard_inputs([prompt], "A cat.")
    assert inp.skipped_parts == ("messages[0].content[1]:image_url",)


# ------------------------------------------------------------------------- combining


def _v(part: str, **fields: Any) -> Verdict:
    return Verdict(stage=Stage.RESPONSE, level=SafetyLevel.SAFE, part=part, **fields)  # type: ignore[arg-type]


def test_combine_needs_a_verdict() -> None:
    with pytest.raises(ValueError, match=r"^combine_verdicts needs at least one verdict$"):
        combine_verdicts([])


def test_combine_takes_refusal_from_the_answer_and_the_slowest_latency() -> None:
    merged = combine_verdicts(
        [
            _v("reasoning", refusal=False, latency_s=0.25),
            _v("answer", refusal=True, refusal_probs={"Yes": 0.8, "No": 0.2}, latency_s=0.5),
        ]
    )
    assert merged.part == "combined"
    assert merged.refusal is True
    assert merged.refusal_probs == {"Yes": 0.8, "No": 0.2}
    assert merged.latency_s == 0.5


def test_combine_without_an_answer_part_takes_refusal_from_the_last() -> None:
    merged = combine_verdicts(
        [_v("reasoning", refusal=False), _v("joint", refusal=None), _v("joint", refusal=True)]
    )
    assert merged.refusal is True


# ------------------------------------------------------------------------- rendering


def test_segments_mark_markup_as_not_content() -> None:
    inp = GuardInput((GuardMessage("user", "hi"),))
    segments = render_segments(lambda msgs: "<u>" + msgs[0]["content"] + "</u>", inp)
    assert segments == [
        Segment("<u>", False),
        Segment("hi", True),
        Segment("</u>", False),
        Segment(GENERATION_PROMPT, False),
    ]


def test_a_template_that_drops_messages_is_named() -> None:
    inp = GuardInput((GuardMessage("user", "a"), GuardMessage("user", "b")))
    with pytest.raises(InputError, match=r"^the chat template did not render every message"):
        render_segments(lambda msgs: msgs[-1]["content"], inp)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text",
    [
        "**Safety:** Unsafe\nCategories: Violent",
        "__Safety__: Unsafe\n__Categories__: Violent",
        "- Safety: Unsafe\n- Categories: Violent",
        "## Safety: Unsafe\nCategories: Violent",
        "Safety: `Unsafe`\nCategories: 'Violent'",
        "Safety: Unsafe\nCategories: Violent.",
        "  <think>\n\n</think>\n\nSafety: Unsafe\nCategories: Violent",
        "<think>x</think>Safety: Unsafe\nCategories: Violent\n</think>",
    ],
)
def test_decorated_verdicts_parse(text: str) -> None:
    verdict = parse_verdict(text, stage="prompt")
    assert verdict.level is SafetyLevel.UNSAFE
    assert verdict.categories == (Category.VIOLENT,)


def test_a_dot_before_a_value_is_not_a_decoration() -> None:
    with pytest.raises(VerdictParseError, match="unknown safety level"):
        parse_verdict("Safety: .Unsafe", stage="prompt")


def test_parse_verdict_keeps_what_it_is_given() -> None:
    verdict = parse_verdict(
        "Safety: Safe\nCategories: None\nRefusal: No",
        stage=Stage.RESPONSE,
        latency_s=0.5,
        level_probs={"Safe": 1.0},
        category_probs={"None": 0.9},
        refusal_probs={"No": 1.0},
        skipped_parts=["messages[0].content[1]:image_url"],
        part="reasoning",
    )
    assert verdict.model == ""
    assert verdict.latency_s == 0.5
    assert verdict.category_probs == {"None": 0.9}
    assert verdict.skipped_parts == ("messages[0].content[1]:image_url",)
    assert verdict.part == "reasoning"


# --------------------------------------------------------------------- probabilities


def test_stars_around_a_token_do_not_hide_its_value() -> None:
    assert match_field_value("**Unsafe**", ("Safe", "Unsafe")) == "Unsafe"
    assert match_field_value("**", ("Safe",)) is None


def test_an_exact_match_wins_over_longer_values() -> None:
    assert match_field_value(" Safe", ("Safety", "Safe")) == "Safe"


def test_the_generated_token_counts_when_it_is_not_among_the_top() -> None:
    entry = TokenLogprobs(token="Unsafe", logprob=math.log(0.5), top=(("Safe", math.log(0.5)),))
    tokens = [TokenLogprobs("Safety:"), entry]
    level = field_probabilities(tokens).level
    assert level == {"Safe": 0.5, "Unsafe": 0.5, "Controversial": 0.0}


def test_alternatives_for_the_same_value_add_up() -> None:
    top = ((" Unsafe", math.log(0.25)), ("Unsafe", math.log(0.25)), (" Safe", math.log(0.5)))
    tokens = [TokenLogprobs("Safety:"), TokenLogprobs(" Unsafe", math.log(0.25), top)]
    level = field_probabilities(tokens).level
    assert level == {"Safe": 0.5, "Unsafe": 0.5, "Controversial": 0.0}


def test_a_field_whose_alternatives_match_no_value_has_no_distribution() -> None:
    tokens = [TokenLogprobs("Safety:"), TokenLogprobs(" maybe", math.log(0.9))]
    assert field_probabilities(tokens).level is None


def test_a_markdown_token_after_a_field_name_is_skipped() -> None:
    tokens = [
        TokenLogprobs("**Safety:"),
        TokenLogprobs("**"),
        TokenLogprobs(" Unsafe", math.log(1.0)),
    ]
    assert field_probabilities(tokens).level == {"Safe": 0.0, "Unsafe": 1.0, "Controversial": 0.0}


def test_parse_verdict_defaults_and_passed_fields() -> None:
    plain = parse_verdict("Safety: Safe", stage="response")
    assert (plain.model, plain.latency_s, plain.truncated) == ("", 0.0, False)
    full = parse_verdict(
        "Safety: Safe\nRefusal: No",
        stage="response",
        model="guard-x",
        truncated=True,
        refusal_probs={"Yes": 0.1, "No": 0.9},
    )
    assert (full.model, full.truncated) == ("guard-x", True)
    assert full.refusal_probs == {"Yes": 0.1, "No": 0.9}
    prompt = parse_verdict("Safety: Safe", stage="prompt", refusal_probs={"Yes": 1.0})
    assert prompt.refusal_probs is None  # prompts have no refusal


@pytest.mark.parametrize("text", ["Safety: XSafe", "Safety: SafeX"])
def test_only_quotes_and_a_trailing_dot_are_cleaned_off_a_value(text: str) -> None:
    with pytest.raises(VerdictParseError, match="unknown safety level"):
        parse_verdict(text, stage="prompt")


def test_a_field_name_whose_line_ended_waits_for_no_value() -> None:
    # The value must follow its name on the same line, as parse_verdict reads it.
    one_line = [TokenLogprobs("Safety:\n"), TokenLogprobs(" Unsafe", 0.0)]
    assert field_probabilities(one_line).level is None
    later_line = [
        TokenLogprobs("Note\n"),
        TokenLogprobs("Safety:\n"),
        TokenLogprobs(" Unsafe", 0.0),
    ]
    assert field_probabilities(later_line).level is None


def test_markup_after_a_field_name_in_the_same_token_is_skipped() -> None:
    tokens = [TokenLogprobs("Safety: **"), TokenLogprobs(" Unsafe", 0.0)]
    assert field_probabilities(tokens).level == {"Safe": 0.0, "Unsafe": 1.0, "Controversial": 0.0}


def test_tool_calls_that_are_not_a_list_are_located_and_described() -> None:
    answer = {"role": "assistant", "content": "ok", "tool_calls": "f"}
    with pytest.raises(InputError) as info:
        guard_inputs([USER], answer)
    assert info.value.where == "response.tool_calls"
    assert str(info.value) == (
        "response.tool_calls: tool_calls must be a list of tool calls, not str of length 1"
    )


def test_content_of_another_type_is_located_and_named() -> None:
    with pytest.raises(InputError) as info:
        guard_inputs([{"role": "user", "content": 5}])
    assert str(info.value) == (
        "messages[0].content: content must be a string, a list of parts or None, not int"
    )


def test_output_that_is_not_text_is_named_and_shown() -> None:
    with pytest.raises(VerdictParseError) as info:
        parse_verdict(b"Safety: Safe", stage="prompt")  # type: ignore[arg-type]
    assert info.value.text == "b'Safety: Safe'"
    assert str(info.value).startswith("guard output must be text, not bytes;")


def test_an_unknown_stage_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"^unknown stage 'both'; expected prompt or"):
        parse_verdict("Safety: Safe", stage="both")


def test_combine_prefers_the_thinking_among_equally_unsafe_parts() -> None:
    unsafe = {"level": SafetyLevel.UNSAFE}
    answer = _v("answer", categories=(Category.VIOLENT,), refusal=True).model_copy(update=unsafe)
    thinking = _v("reasoning", categories=(Category.PII,), refusal=False).model_copy(update=unsafe)
    merged = combine_verdicts([answer, thinking])
    assert merged.categories == (Category.PII,)
    assert merged.refusal is True  # only the answer can refuse


def test_combine_is_truncated_when_any_part_was() -> None:
    # The worst part (the thinking, on a tie) was not truncated; the answer was.
    merged = combine_verdicts([_v("reasoning"), _v("answer", truncated=True)])
    assert merged.truncated is True
    assert combine_verdicts([_v("reasoning"), _v("answer")]).truncated is False


def test_the_guard_sees_lone_surrogates_as_replacement_characters() -> None:
    message = GuardMessage("user", "a\ud800b \ud83d\ude00 \udfff")
    assert message.content == "a\ufffdb \U0001f600 \ufffd"
    clean = "caf\u00e9 \U0001f600"
    assert GuardMessage("user", clean).content is clean  # valid text is passed through


def test_an_error_in_the_response_is_located_in_the_response() -> None:
    with pytest.raises(InputError) as info:
        guard_inputs([USER], {"role": "assistant", "content": 5})
    assert info.value.where == "response.content"
    with pytest.raises(InputError) as earlier:
        guard_inputs([USER, {"role": "assistant", "content": 5}], "answer")
    assert earlier.value.where == "messages[1].content"


def test_an_unknown_role_is_named() -> None:
    with pytest.raises(InputError) as info:
        guard_inputs([{"role": "bot", "content": "x"}])
    assert str(info.value) == "messages[0].role: unknown role 'bot'"


def test_an_unknown_reasoning_mode_names_the_choices() -> None:
    with pytest.raises(ConfigurationError) as info:
        guard_inputs([USER], "answer", reasoning="all")
    assert str(info.value) == "unknown reasoning mode 'all'; expected answer, separate, joint"


def test_an_answer_with_a_refusal_and_tool_calls_is_judged_with_both() -> None:
    answer = {
        "role": "assistant",
        "content": "Checking.",
        "refusal": "I will not share that.",
        "tool_calls": [{"function": {"name": "lookup", "arguments": '{"q": "x"}'}}],
    }
    (guard_input,) = guard_inputs([{"role": "user", "content": "hi"}], answer)
    assert guard_input.messages[-1].content == (
        'Checking.\nI will not share that.\nTool call: lookup({"q": "x"})'
    )


def test_a_refusal_line_on_a_prompt_verdict_is_ignored() -> None:
    verdict = parse_verdict("Safety: Safe\nCategories: None\nRefusal: Yes", stage="prompt")
    assert verdict.refusal is None


def test_a_custom_tool_call_is_judged_by_its_input() -> None:
    # openai's ChatCompletionMessageCustomToolCall: no "function", the text is "input".
    call = {"id": "c1", "type": "custom", "custom": {"name": "shell", "input": "rm -rf /"}}
    answer = {"role": "assistant", "content": None, "tool_calls": [call]}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "Tool call: shell(rm -rf /)"


def test_a_custom_tool_call_from_the_openai_types_is_judged() -> None:
    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": "Running it.",
            "tool_calls": [
                {"id": "c1", "type": "custom", "custom": {"name": "sql", "input": "DROP TABLE x"}}
            ],
        }
    )
    (inp,) = guard_inputs([USER], message)
    assert inp.messages[-1].content == "Running it.\nTool call: sql(DROP TABLE x)"


def test_a_custom_tool_call_in_the_history_is_shown_to_a_prompt_check() -> None:
    call = {"type": "custom", "custom": {"name": "note", "input": "secret plan"}}
    history = [USER, {"role": "assistant", "content": None, "tool_calls": [call]}, USER]
    (inp,) = guard_inputs(history)
    assert inp.messages[1].content == "Tool call: note(secret plan)"


def test_a_tool_call_of_an_unknown_shape_is_judged_whole() -> None:
    call = {"id": "c1", "type": "web_search", "web_search": {"query": "how to pick a lock"}}
    answer = {"role": "assistant", "content": None, "tool_calls": [call]}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == (
        'Tool call: ?({"web_search": {"query": "how to pick a lock"}})'
    )


def test_a_custom_tool_call_that_is_not_a_mapping_is_refused_with_where() -> None:
    answer = {"role": "assistant", "content": None, "tool_calls": [{"custom": "nope"}]}
    with pytest.raises(InputError) as caught:
        guard_inputs([USER], answer)
    assert caught.value.where == "response.tool_calls[0].custom"


def test_a_call_typed_custom_is_read_as_custom_even_with_a_function() -> None:
    call = {
        "type": "custom",
        "function": {"name": "f", "arguments": "ignored"},
        "custom": {"name": "c", "input": "payload"},
    }
    answer = {"role": "assistant", "content": None, "tool_calls": [call]}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "Tool call: c(payload)"


def test_a_function_call_with_a_stray_custom_field_is_read_as_a_function() -> None:
    call = {
        "type": "function",
        "function": {"name": "f", "arguments": "x"},
        "custom": {"name": "c", "input": "y"},
    }
    answer = {"role": "assistant", "content": None, "tool_calls": [call]}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "Tool call: f(x)"


def test_a_custom_call_without_name_or_input_is_still_shown() -> None:
    answer = {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [{"type": "custom", "custom": {}}],
    }
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == "ok\nTool call: ?()"


def test_an_unknown_call_is_shown_as_sorted_json_of_what_it_holds() -> None:
    # Keys sorted (a stable text to judge), text as written (not \\u-escaped), and
    # values JSON has no form for shown by their str().
    call = {"zeta": "naïve", "alpha": frozenset({"only"}), "beta": 1, "type": "x"}
    answer = {"role": "assistant", "content": None, "tool_calls": [call]}
    (inp,) = guard_inputs([USER], answer)
    assert inp.messages[-1].content == (
        'Tool call: ?({"alpha": "frozenset({\'only\'})", "beta": 1, "zeta": "naïve"})'
    )
