"""The Responses API as the guarded flow sees it: pure readers and builders, table-tested.

No client, no network: requests, responses and stream events are plain dicts
(the readers take dicts or pydantic objects alike).
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from guardrail.errors import ConfigurationError, InputError
from guardrail.response_events import EventReader, StreamEnding, event_texts
from guardrail.responses import (
    finish_reason,
    input_view,
    output_message,
    replaced_response,
)

# -------------------------------------------------------------------------- input


def test_a_string_input_is_one_user_turn_after_the_instructions() -> None:
    view = input_view({"input": "hi", "instructions": "Be brief."})
    assert view.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert view.input_for(view.messages) is None  # unchanged: the request goes as it came


def test_items_become_turns_and_tool_results_carry_their_tools_name() -> None:
    items = [
        {"type": "reasoning", "id": "rs", "summary": []},
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "web_search_call", "id": "ws", "status": "completed", "action": {"query": "q"}},
        {"type": "item_reference", "id": "msg_0"},
    ]
    view = input_view({"input": items})
    assert view.messages == [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "ws",
                    "type": "function",
                    "function": {
                        "name": "web_search_call",
                        "arguments": '{"action":{"query":"q"}}',
                    },
                }
            ],
        },
    ]
    assert view.input_for(view.messages) is None


def test_prompt_variables_are_judged_as_the_callers_text() -> None:
    view = input_view({"prompt": {"id": "pmpt", "variables": {"city": "Paris", "n": 3}}})
    assert view.messages == [{"role": "user", "content": "Prompt variables:\ncity: Paris"}]


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"input": {"role": "user", "content": "hi"}}, "input"),
        ({"input": 3}, "input"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"input": ["hi", {"content": "no role, no type"}]}, "input[1]"),
        ({"input": "hi", "instructions": ["not", "text"]}, "instructions"),
    ],
)
def test_input_that_is_not_responses_input_is_located(params: dict[str, Any], where: str) -> None:
    with pytest.raises(InputError) as info:
        input_view(params)
    assert info.value.where == where


def test_an_added_instruction_goes_in_front_and_items_keep_their_order() -> None:
    lead = {"type": "reasoning", "id": "rs", "summary": []}
    tail = {"type": "item_reference", "id": "msg_9"}
    view = input_view({"input": [lead, "first", tail], "instructions": "Be brief."})
    added = {"role": "system", "content": "Answer safely."}
    assert view.input_for([added, *view.messages]) == [
        added,
        lead,
        {"role": "user", "content": "first"},
        tail,
    ]


def test_a_replaced_turn_keeps_its_place_and_a_tool_result_its_item() -> None:
    output = {"type": "function_call_output", "call_id": "c1", "output": "bad"}
    view = input_view({"input": ["look it up", output]})
    rewritten = [view.messages[0], {**view.messages[1], "content": "[removed]"}]
    assert view.input_for(rewritten) == [
        {"role": "user", "content": "look it up"},
        {**output, "output": "[removed]"},
    ]
    replaced_user = [{"role": "user", "content": "[removed]"}, view.messages[1]]
    assert view.input_for(replaced_user) == [{"role": "user", "content": "[removed]"}, output]


@pytest.mark.parametrize("change", ["instructions", "fewer", "reused"])
def test_changes_the_flow_never_makes_fail_closed(change: str) -> None:
    view = input_view({"input": "hi", "instructions": "Be brief."})
    messages = {
        "instructions": [{"role": "system", "content": "other"}, view.messages[1]],
        "fewer": [view.messages[1]],
        "reused": [view.messages[0], *view.messages],
    }[change]
    with pytest.raises(ConfigurationError):
        view.input_for(messages)


# ------------------------------------------------------------------------- output

RESPONSE = {
    "id": "resp_1",
    "status": "completed",
    "output": [
        {"id": "rs", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Think."}]},
        {
            "id": "msg",
            "type": "message",
            "content": [
                {"type": "output_text", "text": "Hello "},
                {"type": "output_text", "text": "there."},
                {"type": "refusal", "refusal": "No more."},
            ],
        },
        {"id": "fc", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"id": "ci", "type": "code_interpreter_call", "code": "print(1)", "outputs": None},
        {"id": "mcp", "type": "mcp_call", "name": "g", "arguments": "{}", "output": "42"},
    ],
}


def test_every_text_of_the_output_is_in_the_judged_message() -> None:
    assert output_message(RESPONSE) == {
        "role": "assistant",
        "content": "Hello there.",
        "refusal": "No more.",
        "reasoning_content": "Think.",
        "tool_calls": [
            _call("c1", "f", "{}"),
            _call("ci", "code_interpreter_call", "print(1)"),
            _call("mcp", "g", '{}\n{"output":"42"}'),
        ],
    }


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"status": "completed"}, "stop"),
        ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length"),
        ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
         "content_filter"),
        ({"status": "failed"}, "error"),
    ],
)  # fmt: skip
def test_statuses_read_as_finish_reasons(response: dict[str, Any], reason: str) -> None:
    assert finish_reason(response) == reason


def test_a_replaced_response_keeps_nothing_of_the_answer() -> None:
    upstream = Response.model_construct(
        **{
            **RESPONSE,
            "object": "response",
            "created_at": 1,
            "model": "m",
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
    )
    data = replaced_response(
        upstream, text="Blocked.", reason="content_filter", request_id="r1", model="x"
    )
    got = Response.model_validate(data)
    assert (got.id, got.model, got.status) == ("resp_1", "m", "incomplete")
    assert got.incomplete_details is not None
    assert got.incomplete_details.reason == "content_filter"
    assert got.output_text == "Blocked."
    assert "Hello" not in got.model_dump_json()
    rewritten = replaced_response(None, text="Calm.", reason="stop", request_id="r2", model="x")
    assert (rewritten["id"], rewritten["status"]) == ("guardrail-r2", "completed")
    assert rewritten["incomplete_details"] is None


# ------------------------------------------------------------------------- events


def _delta(text: str, **at: Any) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
            "delta": text, **at}  # fmt: skip


def test_repeated_text_is_counted_once_and_new_text_is_judged() -> None:
    reader = EventReader()
    assert reader.view(_delta("Hel")).choices[0].delta == {"content": "Hel"}
    assert reader.view(_delta("lo")).choices[0].delta == {"content": "lo"}
    done = {"type": "response.output_text.done", "output_index": 0, "content_index": 0}
    assert reader.view({**done, "text": "Hello"}).choices == []  # nothing new
    assert reader.view({**done, "text": "Hello, world"}).choices[0].delta == {"content": ", world"}
    # Text that disagrees with what came before is judged whole.
    assert reader.view({**done, "text": "Bye"}).choices[0].delta == {"content": "Bye"}


def test_the_final_event_finishes_and_adds_what_no_delta_carried() -> None:
    reader = EventReader()
    reader.view(
        {"type": "response.created", "response": {"id": "r", "created_at": 5, "model": "m"}}
    )
    reader.view(_delta("Hi"))
    final = {
        "type": "response.completed",
        "response": {
            "id": "r",
            "status": "completed",
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
                {"type": "function_call", "name": "f", "arguments": "{}"},
            ],
            "usage": {"input_tokens": 3, "output_tokens": 4},
        },
    }
    view = reader.view(final)
    (choice,) = view.choices
    assert choice.finish_reason == "stop"
    assert choice.delta == {
        "tool_calls": [{"index": 1, "function": {"name": "f", "arguments": "{}"}}]
    }
    assert (view.id, view.created, view.model) == ("r", 5, "m")
    assert view.usage is not None
    assert (view.usage.prompt_tokens, view.usage.completion_tokens) == (3, 4)


@pytest.mark.parametrize(
    ("event", "texts"),
    [
        ({"type": "response.refusal.delta", "output_index": 1, "content_index": 0, "delta": "No"},
         [(("refusal", 1, 0), "No", True)]),
        ({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 2,
          "delta": "hm"}, [(("reasoning", 0, "summary", 2), "hm", True)]),
        ({"type": "response.function_call_arguments.done", "output_index": 3, "arguments": "{}"},
         [(("tool", 3), "{}", False)]),
        ({"type": "response.shell_call_command.delta", "output_index": 2, "delta": "rm -rf"},
         [(("extra", 2, "response.shell_call_command.delta"), "rm -rf", True)]),
        ({"type": "response.audio.delta", "delta": "UklGRg=="}, []),
        ({"type": "response.content_part.done", "output_index": 0, "content_index": 1,
          "part": {"type": "refusal", "refusal": "No."}}, [(("refusal", 0, 1), "No.", False)]),
        ({"type": "response.in_progress", "response": {"output": []}}, []),
    ],
)  # fmt: skip
def test_each_events_texts_have_their_slot(event: dict[str, Any], texts: list[Any]) -> None:
    assert event_texts(event) == texts


def test_a_cut_continues_the_numbering_after_what_was_released() -> None:
    ending = StreamEnding(request_id="r1", model="m")
    started = {"id": "resp_1", "created_at": 1, "model": "m", "output": []}
    ending.released({"type": "response.created", "sequence_number": 0, "response": started})
    ending.released({**_delta("Hi"), "sequence_number": 4})
    events = ending.events("[removed]")
    assert [e["sequence_number"] for e in events] == list(range(5, 5 + len(events)))
    assert events[0]["type"] == "response.output_item.added"
    assert events[0]["output_index"] == 1  # after the item already released
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["id"] == "resp_1"
    assert final["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert [e["type"] for e in StreamEnding(request_id="r", model="m").events(None)] == [
        "response.created",
        "response.incomplete",
    ]
