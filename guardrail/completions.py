"""Building and editing OpenAI chat-completion objects without touching the network.

Allowed completions are returned exactly as the upstream produced them; these
helpers only build the synthetic objects a policy asks for (a blocked call's
completion, a replaced answer, a stream's closing chunk) and attach the
guard's report to what is returned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from guardrail.report import attach_report

__all__ = [
    "CONTENT_FILTER",
    "attach_report",
    "blocked_completion",
    "closing_chunk",
    "replace_choices",
]

CONTENT_FILTER = "content_filter"


def blocked_completion(*, model: str, message: str, n: int, request_id: str) -> ChatCompletion:
    """A normal-looking completion whose every choice is the block message."""
    return ChatCompletion.model_validate(
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


def replace_choices(completion: ChatCompletion, replacements: dict[int, Any]) -> ChatCompletion:
    """Return a copy with choices replaced, by position.

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
            text, finish_reason = new
            message = type(old.message).model_construct(role="assistant", content=text)
            choices[pos] = type(old).model_construct(
                index=old.index, finish_reason=finish_reason, message=message, logprobs=None
            )
        else:
            choices[pos] = new.model_copy(update={"index": old.index})
    return completion.model_copy(update={"choices": choices})


def closing_chunk(
    template: ChatCompletionChunk | None,
    *,
    model: str,
    request_id: str,
    indices: Sequence[int],
    text: str | None,
    finish_reason: str = CONTENT_FILTER,
) -> ChatCompletionChunk:
    """The last chunk of a stream the guard cut: optional replacement text, then the reason."""
    return ChatCompletionChunk.model_validate(
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
