"""Responses API stream events, read for the guarded flow and built for a cut stream.

:class:`EventReader` turns each upstream event into a chat-chunk view
(:class:`EventView`) that :class:`~guardrail.flow.buffer.StreamState` buffers
like any chunk: every text the event carries (output text, refusals, reasoning,
function and tool-call arguments, hosted tools' deltas) is checked before the
event is released, and a released view is the upstream's event again, untouched.
:class:`StreamEnding` follows what was released and builds the events that end
a stream the guard cut: the replacement text (if any) as a message of its own,
then ``response.incomplete`` with ``incomplete_details.reason == "content_filter"``.

Nothing here imports ``openai``; events are built as dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guardrail.chat import CONTENT_FILTER, get
from guardrail.responses import (
    ChatUsage,
    Key,
    TextSlots,
    chat_usage,
    finish_reason,
    item_texts,
    message_item,
    response_base,
)

# Events whose delta is binary (audio, images): skipped like image and audio parts.
_BINARY = frozenset({"response.audio.delta", "response.image_generation_call.partial_image"})
_LIFECYCLE = frozenset(
    {"response.created", "response.in_progress", "response.queued"}
    | {"response.completed", "response.incomplete", "response.failed"}
)
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Event type -> (slot, the field holding its text); a "delta" field adds to the slot,
# any other field holds the slot's whole text so far.
_SLOTS: dict[str, tuple[str, str]] = {
    "response.output_text.delta": ("content", "delta"),
    "response.output_text.done": ("content", "text"),
    "response.refusal.delta": ("refusal", "delta"),
    "response.refusal.done": ("refusal", "refusal"),
    "response.reasoning_summary_text.delta": ("summary", "delta"),
    "response.reasoning_summary_text.done": ("summary", "text"),
    "response.reasoning_summary_part.added": ("summary", "part"),
    "response.reasoning_summary_part.done": ("summary", "part"),
    "response.reasoning_text.delta": ("reasoning", "delta"),
    "response.reasoning_text.done": ("reasoning", "text"),
    "response.function_call_arguments.delta": ("tool", "delta"),
    "response.function_call_arguments.done": ("tool", "arguments"),
    "response.custom_tool_call_input.delta": ("tool", "delta"),
    "response.custom_tool_call_input.done": ("tool", "input"),
    "response.mcp_call_arguments.delta": ("tool", "delta"),
    "response.mcp_call_arguments.done": ("tool", "arguments"),
    "response.code_interpreter_call_code.delta": ("tool", "delta"),
    "response.code_interpreter_call_code.done": ("tool", "code"),
    "response.audio.transcript.delta": ("transcript", "delta"),
    "response.content_part.added": ("part", "part"),
    "response.content_part.done": ("part", "part"),
}


def _slot_key(slot: str, event: Any, part: Any) -> Key | None:
    index = get(event, "output_index")
    content = get(event, "content_index")
    if slot == "summary":
        return ("reasoning", index, "summary", get(event, "summary_index"))
    if slot == "reasoning":
        return ("reasoning", index, "content", content)
    if slot == "part":  # a content part: its type says which slot
        kind = get(part, "type")
        if kind == "refusal":
            return ("refusal", index, content)
        if kind == "reasoning_text":
            return ("reasoning", index, "content", content)
        return ("content", index, content)
    if slot == "tool":
        return ("tool", index)
    if slot == "transcript":
        return ("content", "transcript")
    return (slot, index, content)


def event_texts(event: Any) -> list[tuple[Key, str, bool]]:
    """``(slot, text, is_delta)`` for each text an event carries.

    Unknown events carrying a text ``delta`` (a newer hosted tool's) count as tool
    text; binary deltas (audio, partial images) are skipped.
    """
    kind = str(get(event, "type") or "")
    if kind in _LIFECYCLE:
        output = get(get(event, "response"), "output") or ()
        return [(k, t, False) for i, item in enumerate(output) for k, t in item_texts(item, i)]
    if kind in ("response.output_item.added", "response.output_item.done"):
        index = int(get(event, "output_index") or 0)
        return [(k, t, False) for k, t in item_texts(get(event, "item"), index)]
    found = _SLOTS.get(kind)
    if found is not None:
        slot, name = found
        value = get(event, name)
        part = value if name == "part" else None
        if part is not None:
            value = get(part, "refusal") if get(part, "type") == "refusal" else get(part, "text")
        key = _slot_key(slot, event, part)
        if not isinstance(value, str) or key is None:
            return []
        return [(key, value, name == "delta")]
    delta = get(event, "delta")
    if isinstance(delta, str) and kind not in _BINARY:
        index = get(event, "output_index")
        return [(("extra", index if isinstance(index, int) else -1, kind), delta, True)]
    return []


@dataclass
class ViewChoice:
    """One choice of a chunk view: what the stream buffer reads."""

    index: int
    delta: dict[str, Any]
    finish_reason: str | None = None


@dataclass
class EventView:
    """An upstream stream event seen as a chat chunk; released, it is the event again."""

    event: Any
    choices: list[ViewChoice]
    id: str
    created: int
    model: str
    usage: ChatUsage | None = None


class EventReader:
    """Reads one stream's events into chunk views, each text counted once.

    Text an event repeats (``response.output_text.done``, ``output_item.done``,
    ``response.completed``...) adds only what earlier events of its slot did not
    carry; text that disagrees with them is judged whole.
    """

    def __init__(self) -> None:
        self._seen: dict[Key, str] = {}
        self.id = ""
        self.created = 0
        self.model = ""

    def view(self, event: Any) -> EventView:
        """The chunk view of the next event."""
        kind = get(event, "type")
        response = get(event, "response") if kind in _LIFECYCLE else None
        if response is not None:
            self.id = str(get(response, "id") or self.id)
            self.created = int(get(response, "created_at") or self.created)
            self.model = str(get(response, "model") or self.model)
        message = TextSlots()
        for key, text, is_delta in event_texts(event):
            before = self._seen.get(key, "")
            if is_delta:
                new, self._seen[key] = text, before + text
            elif text.startswith(before):
                new, self._seen[key] = text[len(before) :], text
            else:
                new, self._seen[key] = text, before + text
            if new:
                message.add(key, new)
        finish = finish_reason(response) if kind in _TERMINAL else None
        delta = message.delta()
        choices = [ViewChoice(0, delta, finish)] if delta or finish else []
        usage = chat_usage(response) if finish is not None else None
        return EventView(event, choices, self.id, self.created, self.model, usage)


class StreamEnding:
    """Follows the events released to the caller; builds those that end a cut stream."""

    def __init__(self, *, request_id: str, model: str) -> None:
        self._request_id = request_id
        self._model = model
        self._sequence = -1
        self._next_index = 0
        self._template: Any = None

    def released(self, event: Any) -> None:
        """An event went to the caller."""
        sequence = get(event, "sequence_number")
        if isinstance(sequence, int):
            self._sequence = max(self._sequence, sequence)
        index = get(event, "output_index")
        if isinstance(index, int):
            self._next_index = max(self._next_index, index + 1)
        if get(event, "type") in _LIFECYCLE and self._template is None:
            self._template = get(event, "response")

    def events(self, text: str | None) -> list[dict[str, Any]]:
        """The events that end the stream, numbered on from the last one released.

        ``text`` (if any) comes as a message of its own, then ``response.incomplete``
        (reason ``content_filter``).
        The final response holds only that message: text released before the cut
        is in the caller's events, never repeated unchecked in a summary.
        """
        base = response_base(self._template, request_id=self._request_id, model=self._model)
        out: list[dict[str, Any]] = []
        if self._template is None:  # nothing was released: the stream starts here
            out.append({"type": "response.created", "response": {**base, "status": "in_progress"}})
        output: list[dict[str, Any]] = []
        if text:
            item_id, index = f"msg_guardrail_{self._request_id}", self._next_index
            item = message_item(item_id, text, "incomplete")
            empty = {"type": "output_text", "text": "", "annotations": []}
            at = {"item_id": item_id, "output_index": index, "content_index": 0}
            out += [
                {"type": "response.output_item.added", "output_index": index,
                 "item": {**item, "status": "in_progress", "content": []}},
                {"type": "response.content_part.added", **at, "part": empty},
                {"type": "response.output_text.delta", **at, "delta": text, "logprobs": []},
                {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
                {"type": "response.content_part.done", **at, "part": item["content"][0]},
                {"type": "response.output_item.done", "output_index": index, "item": item},
            ]  # fmt: skip
            output.append(item)
        final = {
            **base,
            "output": output,
            "status": "incomplete",
            "incomplete_details": {"reason": CONTENT_FILTER},
            "error": None,
        }
        out.append({"type": "response.incomplete", "response": final})
        for event in out:
            self._sequence += 1
            event["sequence_number"] = self._sequence
        return out
