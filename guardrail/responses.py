"""The one reader and builder of OpenAI Responses API objects, as the guarded flow sees them.

The guarded call (:mod:`guardrail.flow`) judges chat conversations; a Responses
call is adapted to it, never given a second flow:

- :func:`input_view` reads a request's ``instructions``, ``prompt`` variables and
  ``input`` (a string, or input items: messages, function calls and their
  outputs...) into the chat messages a prompt check judges, and
  :meth:`InputView.input_for` maps the messages the flow sends upstream (a
  rewritten turn, an added instruction) back to Responses input;
- :func:`output_message` reads a ``Response``'s output (text, refusals,
  reasoning, function and tool calls) into the assistant message a response
  check judges;
- :func:`replaced_response` builds what the caller gets instead of a blocked
  answer: a ``Response`` whose status is ``incomplete`` with
  ``incomplete_details.reason == "content_filter"`` (a template rewrite:
  ``completed``).

Stream events are read and built in :mod:`guardrail.response_events`.

Like :mod:`guardrail.chat`, nothing here imports ``openai``: objects are read as
dicts or attributes, and built as plain dicts the client validates into
``openai``'s types.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrail.chat import CONTENT_FILTER, as_mapping, describe, get
from guardrail.errors import ConfigurationError, InputError

_ROLES = ("user", "assistant", "system", "developer")
# Item fields that name or link an item rather than say anything.
_QUIET = frozenset(
    {"id", "type", "status", "call_id", "name", "arguments", "input", "code", "caller"}
    | {"approval_request_id", "encrypted_content", "result", "server_label", "namespace"}
)

# ------------------------------------------------------------------------- input


@dataclass(frozen=True)
class _Source:
    """Where one view message came from, and the view-less items just before it."""

    kind: str  # "instructions", "prompt" or "item"
    item: Any = None
    lead: tuple[Any, ...] = ()


@dataclass(frozen=True)
class InputView:
    """A Responses request's input as chat messages, and the way back."""

    messages: list[dict[str, Any]]
    """What the prompt check judges, in order."""
    sources: tuple[_Source, ...]
    tail: tuple[Any, ...] = ()
    """Input items after the last one the guard sees (item references...)."""

    def input_for(self, messages: Sequence[Any]) -> list[Any] | None:
        """The ``input`` to send for the flow's ``messages``; ``None`` when unchanged.

        The flow only puts instructions in front of the conversation and replaces
        the judged turn in place; anything else cannot be mapped back and raises
        :class:`~guardrail.errors.ConfigurationError` (the call fails closed).
        """
        extra = len(messages) - len(self.messages)
        known = {id(m) for m in self.messages}
        if extra < 0 or any(id(m) in known for m in messages[:extra]):
            raise ConfigurationError("the checked conversation cannot be sent as Responses input")
        out: list[Any] = [_input_message(m) for m in messages[:extra]]
        changed = extra > 0
        for view, source, sent in zip(self.messages, self.sources, messages[extra:], strict=True):
            out.extend(source.lead)
            if sent is view:
                if source.kind == "item":
                    out.append(
                        _input_message(source.item) if isinstance(source.item, str) else source.item
                    )
                continue
            if source.kind != "item":
                raise ConfigurationError(f"the request's {source.kind} cannot be rewritten")
            changed = True
            out.append(_replaced_item(sent, source.item))
        out.extend(self.tail)
        return out if changed else None


def _input_message(message: Any) -> dict[str, Any]:
    if isinstance(message, str):
        return {"role": "user", "content": message}
    return {"role": get(message, "role"), "content": get(message, "content")}


def _replaced_item(sent: Any, original: Any) -> Any:
    if get(sent, "role") == "tool" and not isinstance(original, str):
        return {**as_mapping(original, "input"), "output": get(sent, "content")}
    return _input_message(sent)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _rest(item: Mapping[str, Any]) -> str:
    """What an item says besides its name and main text, as compact JSON ("" for nothing)."""
    rest = {k: v for k, v in item.items() if k not in _QUIET and v not in (None, "", [], {})}
    return _compact(rest) if rest else ""


def _item_message(
    item: Mapping[str, Any], where: str, names: dict[str, str]
) -> dict[str, Any] | None:
    kind = item.get("type")
    role = item.get("role")
    if kind in (None, "message") and role is not None:
        if role not in _ROLES:
            raise InputError(f"unknown role {role!r}", where=f"{where}.role")
        return {"role": role, "content": item.get("content")}
    if kind is None:
        raise InputError("an input item needs a type or a role", where=where)
    if kind in ("reasoning", "item_reference", "compaction"):
        return None  # earlier thinking is not judged; references are held by the server
    call_id = item.get("call_id") or item.get("id") or ""
    if str(kind).endswith("_output"):
        output = item.get("output")
        content = output if isinstance(output, (str, list)) else _compact(output)
        name = names.get(str(call_id)) or str(kind)
        return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}
    name = str(item.get("name") or kind)
    names[str(call_id)] = name
    text = item.get("arguments") or item.get("input") or item.get("code") or ""
    arguments = "\n".join(p for p in (str(text), _rest(item)) if p)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _variables_text(prompt: Any) -> str:
    variables = get(prompt, "variables")
    if not isinstance(variables, Mapping):
        return ""
    lines = []
    for key, value in variables.items():
        text = value if isinstance(value, str) else get(value, "text")
        if isinstance(text, str):
            lines.append(f"{key}: {text}")
    return "Prompt variables:\n" + "\n".join(lines) if lines else ""


def input_view(params: Mapping[str, Any]) -> InputView:
    """The chat view of a request's ``instructions``, ``prompt`` variables and ``input``.

    Raises :class:`~guardrail.errors.InputError`, located (``input[2].role``), for
    an input that is neither a string nor a list of items, or an item that is not one.
    """
    messages: list[dict[str, Any]] = []
    sources: list[_Source] = []
    instructions = params.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InputError(
                f"expected a string, got {describe(instructions)}", where="instructions"
            )
        messages.append({"role": "system", "content": instructions})
        sources.append(_Source("instructions"))
    variables = _variables_text(params.get("prompt"))
    if variables:  # the caller's text for a stored prompt: judged like input
        messages.append({"role": "user", "content": variables})
        sources.append(_Source("prompt"))
    raw = params.get("input")
    if raw is None:
        return InputView(messages, tuple(sources))
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
        sources.append(_Source("item", raw))
        return InputView(messages, tuple(sources))
    if isinstance(raw, (bytes, bytearray, Mapping)) or not isinstance(raw, Iterable):
        raise InputError(
            f"expected a string or a list of items, got {describe(raw)}", where="input"
        )
    lead: list[Any] = []
    names: dict[str, str] = {}
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        message = (
            {"role": "user", "content": item}
            if isinstance(item, str)
            else _item_message(as_mapping(item, where), where, names)
        )
        if message is None:
            lead.append(item)
            continue
        messages.append(message)
        sources.append(_Source("item", item, tuple(lead)))
        lead = []
    return InputView(messages, tuple(sources), tuple(lead))


# ------------------------------------------------------------------------ output

Key = tuple[Any, ...]
"""A text slot of a response: ``("content", output_index, content_index)``, ``("tool", i)``..."""


def item_texts(item: Any, index: int) -> list[tuple[Key, str]]:
    """The texts one output item carries, each with its slot."""
    data = as_mapping(item, f"output[{index}]")
    kind = data.get("type")
    out: list[tuple[Key, str]] = []
    if kind == "message":
        for j, part in enumerate(data.get("content") or ()):
            part_type, text = get(part, "type"), get(part, "text")
            if part_type == "refusal":
                out.append((("refusal", index, j), str(get(part, "refusal") or "")))
            elif isinstance(text, str):
                out.append((("content", index, j), text))
        return out
    if kind == "reasoning":
        for group in ("summary", "content"):
            for j, part in enumerate(data.get(group) or ()):
                text = get(part, "text")
                if isinstance(text, str):
                    out.append((("reasoning", index, group, j), text))
        return out
    out.append((("name", index), str(data.get("name") or kind)))
    text = data.get("arguments") or data.get("input") or data.get("code")
    if isinstance(text, str):
        out.append((("tool", index), text))
    rest = _rest(data)
    if rest:
        out.append((("extra", index), rest))
    return out


@dataclass
class TextSlots:
    """An assistant message assembled from text slots (a whole output, or one event's)."""

    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tools: dict[int, list[str]] = field(default_factory=dict)  # index -> [name, text]

    def add(self, key: Key, text: str) -> None:
        """Append ``text`` to its slot's channel (a tool call's name or text, by index)."""
        kind = key[0]
        if kind in ("content", "refusal", "reasoning"):
            getattr(self, kind).append(text)
            return
        slot = self.tools.setdefault(int(key[1]), ["", ""])
        if kind == "name":
            slot[0] += text
        else:  # a tool's other fields (its output...) follow its arguments on a line
            slot[1] += "\n" + text if kind == "extra" and slot[1] else text

    def delta(self) -> dict[str, Any]:
        """The texts as a chat chunk's delta (only the channels that have text)."""
        out: dict[str, Any] = {}
        for name, parts in (("content", self.content), ("refusal", self.refusal)):
            if parts:
                out[name] = "".join(parts)
        if self.reasoning:
            out["reasoning_content"] = "".join(self.reasoning)
        if self.tools:
            out["tool_calls"] = [
                {"index": i, "function": {"name": name, "arguments": text}}
                for i, (name, text) in sorted(self.tools.items())
            ]
        return out


def finish_reason(response: Any) -> str:
    """A chat ``finish_reason`` for a response's status (what telemetry and the buffer read)."""
    status = get(response, "status")
    if status == "incomplete":
        reason = get(get(response, "incomplete_details"), "reason")
        return CONTENT_FILTER if reason == CONTENT_FILTER else "length"
    return "error" if status == "failed" else "stop"


def output_message(response: Any) -> dict[str, Any]:
    """The assistant message a response check judges: every text the output carries.

    Visible text is the output text and refusals; reasoning summaries and texts
    are the reasoning; function, custom-tool and hosted-tool calls are tool calls
    (name, arguments or input or code, and what else they say, as JSON).
    """
    message = TextSlots()
    ids: dict[int, str] = {}
    for index, item in enumerate(get(response, "output") or ()):
        for key, text in item_texts(item, index):
            message.add(key, text)
        ids[index] = str(get(item, "call_id") or get(item, "id") or f"item_{index}")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(message.content) or None}
    if message.refusal:
        out["refusal"] = "".join(message.refusal)
    if message.reasoning:
        out["reasoning_content"] = "\n".join(message.reasoning)
    if message.tools:
        out["tool_calls"] = [
            {"id": ids[i], "type": "function", "function": {"name": name, "arguments": text}}
            for i, (name, text) in sorted(message.tools.items())
        ]
    return out


@dataclass(frozen=True)
class ChatUsage:
    """A response's token usage in chat terms (what telemetry reads)."""

    prompt_tokens: int | None
    completion_tokens: int | None


def chat_usage(response: Any) -> ChatUsage | None:
    """The token usage a response reports, in chat terms; ``None`` when it reports none."""
    usage = get(response, "usage")
    if usage is None:
        return None
    return ChatUsage(get(usage, "input_tokens"), get(usage, "output_tokens"))


# ---------------------------------------------------------------------- building


def response_base(template: Any, *, request_id: str, model: str) -> dict[str, Any]:
    """A response's fields as a dict: ``template``'s (an upstream response), or fresh ones."""
    dump = getattr(template, "model_dump", None)
    if callable(dump):  # as received: unset fields stay unset
        return dict(dump(exclude_unset=True, warnings=False))
    if template is not None:
        return dict(as_mapping(template, "response"))
    return {
        "id": f"guardrail-{request_id}",
        "object": "response",
        "created_at": time.time(),
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """An assistant message output item holding ``text``."""
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def replaced_response(
    base: Any, *, text: str, reason: str, request_id: str, model: str
) -> dict[str, Any]:
    """A response whose whole output is ``text``: nothing of the replaced answer survives.

    ``base`` (the upstream's response, or ``None`` for a blocked prompt) lends its
    id, time, model, settings and usage. ``reason`` ``content_filter`` (a block)
    makes it ``incomplete`` with ``incomplete_details.reason == "content_filter"``;
    anything else (a template rewrite) ``completed``.
    """
    blocked = reason == CONTENT_FILTER
    status = "incomplete" if blocked else "completed"
    data = response_base(base, request_id=request_id, model=model)
    data.update(
        output=[message_item(f"msg_guardrail_{request_id}", text, status)],
        status=status,
        incomplete_details={"reason": CONTENT_FILTER} if blocked else None,
        error=None,
    )
    return data
