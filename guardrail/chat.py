"""The one reader and builder of OpenAI chat objects, dict or attribute alike.

Applications hand the SDK messages as plain dicts or as the ``openai`` package's
pydantic objects, and upstreams answer with pydantic objects; every module reads
them through the functions here, so "a message's role" means one thing everywhere.

The builders make the synthetic objects a policy asks for (a blocked call's
completion, a replaced answer, a stream's closing chunk). They never import
``openai``: the completion and chunk classes come in as :class:`ChatShapes`, so
the flow that calls them stays free of client libraries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.errors import InputError

CONTENT_FILTER = "content_filter"
"""The ``finish_reason`` of an answer or stream the guard cut."""

# ------------------------------------------------------------------------- reading


_MAPPING_TYPES: dict[type, bool] = {dict: True}
"""Whether a type is a :class:`Mapping`, per type seen: the ABC check costs a Python call."""


def is_mapping(obj: Any) -> bool:
    """``isinstance(obj, Mapping)``, remembered per type (pydantic messages are read often)."""
    kind = type(obj)
    known = _MAPPING_TYPES.get(kind)
    if known is None:
        known = isinstance(obj, Mapping)
        if len(_MAPPING_TYPES) < 1024:  # classes made per call must not grow it forever
            _MAPPING_TYPES[kind] = known
    return known


def get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` otherwise; ``default`` when absent."""
    if type(obj) is dict or is_mapping(obj):
        return obj.get(name, default)
    return getattr(obj, name, default)


def role(message: Any) -> Any:
    """A message's role (``None`` when it has none)."""
    return get(message, "role")


def as_mapping(message: Any, where: str) -> Mapping[str, Any]:
    """A message (or part, or tool call) as a mapping; ``where`` names it in errors.

    Raises :class:`~guardrail.errors.InputError` for anything that is neither a
    mapping nor a pydantic object.
    """
    if type(message) is dict or is_mapping(message):
        mapping: Mapping[str, Any] = message
        return mapping
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        try:  # parsed messages hold user types that pydantic warns about when dumping
            data = dump(warnings=False)
        except TypeError:
            data = dump()
        if isinstance(data, Mapping):
            return data
    raise InputError(
        f"expected a message dict or pydantic object, got {type(message).__name__}", where=where
    )


def message_list(messages: Any, where: str = "messages") -> list[Any]:
    """A conversation as a list of messages; ``where`` names it in errors.

    Raises :class:`~guardrail.errors.InputError` unless ``messages`` is an
    iterable of messages: not ``None``, a number, text, bytes, or a single
    message (a mapping or a pydantic object).
    """
    if type(messages) is list:  # the usual case, and never a single message
        return list(messages)
    single = isinstance(messages, Mapping) or callable(getattr(messages, "model_dump", None))
    if single or isinstance(messages, (str, bytes, bytearray)):
        raise InputError(
            f"expected a list of messages, got {describe(messages)} "
            "(wrap a single message in a list)",
            where=where,
        )
    if not isinstance(messages, Iterable):
        raise InputError(f"expected a list of messages, got {describe(messages)}", where=where)
    return list(messages)


def describe(value: Any) -> str:
    """What a value is, for error messages: its type, and its length for containers."""
    if value is None:
        return "None"
    kind = type(value).__name__
    if isinstance(value, (str, bytes, bytearray, Mapping, list, tuple)):
        return f"{kind} of length {len(value)}"
    return kind


def as_dict(message: Any) -> dict[str, Any]:
    """A copy of a message as a plain dict (pydantic messages without their unset fields)."""
    if isinstance(message, Mapping):
        return dict(message)
    dump = getattr(message, "model_dump", None)
    return dict(dump(exclude_none=True)) if callable(dump) else {"role": role(message)}


def content_text(message: Any) -> str:
    """A message's content when it is a plain string, else ``""``; a string is itself."""
    if isinstance(message, str):
        return message
    content = get(message, "content")
    return content if isinstance(content, str) else ""


def answer_text(message: Any) -> str:
    """What an assistant message says to the user: its content and refusal text."""
    content, refusal = get(message, "content"), get(message, "refusal")
    text = content if isinstance(content, str) else ""
    if isinstance(refusal, str) and refusal:
        return f"{text}\n{refusal}" if text else refusal
    return text


def parts_text(content: Any) -> str:
    """The text parts of a content list joined by newlines (a string is itself)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def last_user_text(messages: Iterable[Any] | None) -> str | None:
    """The text of the last user message (``None`` when there is none)."""
    for message in reversed(list(messages or ())):
        if role(message) == "user":
            return parts_text(get(message, "content"))
    return None


def user_texts(messages: Iterable[Any]) -> list[str]:
    """The plain-string contents of the user messages, in order."""
    out = []
    for message in messages:
        content = get(message, "content")
        if role(message) == "user" and isinstance(content, str):
            out.append(content)
    return out


def delta_parts(delta: Any) -> tuple[str, str, list[tuple[int, str, str]]]:
    """(visible text, reasoning, tool-call pieces) carried by one streamed choice delta.

    Visible text is the content and refusal; tool-call pieces are
    ``(index, name, arguments)`` fragments.
    """
    if delta is None:
        return "", "", []
    visible = "".join(p for p in (get(delta, "content"), get(delta, "refusal")) if p)
    reasoning = get(delta, "reasoning_content") or get(delta, "reasoning")
    tools = []
    for call in get(delta, "tool_calls") or ():
        function = get(call, "function")
        name = get(function, "name") or ""
        arguments = get(function, "arguments") or ""
        tools.append((int(get(call, "index", 0) or 0), name, arguments))
    return visible, reasoning if isinstance(reasoning, str) else "", tools


# ---------------------------------------------------------------------- requests


def with_instruction(params: dict[str, Any], instruction: str) -> dict[str, Any]:
    """Request parameters with a system instruction put in front of the conversation."""
    messages = [{"role": "system", "content": instruction}, *params["messages"]]
    return {**params, "messages": messages}


def replace_judged_turn(messages: Sequence[Any], content: str) -> list[Any]:
    """The conversation with its last user or tool turn's content replaced.

    That turn is what a prompt check judged; a tool result keeps its role and ids.
    """
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        who = role(out[i])
        if who == "user":
            out[i] = {"role": "user", "content": content}
            break
        if who in ("tool", "function"):
            out[i] = {**as_dict(out[i]), "content": content}
            break
    return out


# ---------------------------------------------------------------------- building


@dataclass(frozen=True)
class ChatShapes:
    """The classes synthetic objects are built as (``openai``'s, for a wrapped client)."""

    completion: type[Any]
    """A pydantic model shaped like ``openai.types.chat.ChatCompletion``."""
    chunk: type[Any]
    """A pydantic model shaped like ``openai.types.chat.ChatCompletionChunk``."""


def blocked_completion(
    shapes: ChatShapes, *, model: str, message: str, n: int, request_id: str
) -> Any:
    """A normal-looking completion whose every choice is the block message."""
    return shapes.completion.model_validate(
        {
            "id": f"guardrail-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "finish_reason": CONTENT_FILTER,
                    "message": {"role": "assistant", "content": message},
                }
                for i in range(n)
            ],
        }
    )


def replace_choices(completion: Any, replacements: Mapping[int, Any]) -> Any:
    """A copy of a completion with choices replaced, by position.

    A ``(text, finish_reason)`` pair becomes a fresh assistant message holding only
    that text: nothing of the replaced answer survives (not its logprobs, tool
    calls, ``parsed`` object, reasoning or audio). A choice object (a regenerated
    answer) replaces the choice whole, keeping the original's index.
    """
    if not replacements:
        return completion
    choices = list(completion.choices)
    for pos, new in replacements.items():
        old = choices[pos]
        if isinstance(new, tuple):
            content, finish_reason = new
            message = type(old.message).model_construct(role="assistant", content=content)
            choices[pos] = type(old).model_construct(
                index=old.index, finish_reason=finish_reason, message=message, logprobs=None
            )
        else:
            choices[pos] = new.model_copy(update={"index": old.index})
    return completion.model_copy(update={"choices": choices})


def closing_chunk(
    shapes: ChatShapes,
    template: Any,
    *,
    model: str,
    request_id: str,
    indices: Sequence[int],
    text: str | None,
    finish_reason: str = CONTENT_FILTER,
) -> Any:
    """The last chunk of a stream the guard cut: optional replacement text, then the reason.

    ``template`` (the last chunk received, or ``None``) lends its id, time and model.
    """
    return shapes.chunk.model_validate(
        {
            "id": template.id if template is not None else f"guardrail-{request_id}",
            "object": "chat.completion.chunk",
            "created": template.created if template is not None else int(time.time()),
            "model": template.model if template is not None else model,
            "choices": [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": text} if text else {},
                    "finish_reason": finish_reason,
                }
                for i in indices
            ],
        }
    )
