"""Which APIs of a wrapped client answer, and which raise: the one rule, written once.

An API of the ``openai`` client either goes through the guard, or returns no
text a model wrote, or is refused:

- guarded: ``chat.completions.create`` / ``parse`` and ``responses.create`` /
  ``parse`` (:data:`~guardrail.policy.handling.GUARDED_APIS`);
- passed through, as they return no model output: :data:`NO_MODEL_OUTPUT`
  (``models``, ``files``, ``embeddings``, ``moderations``...);
- every other API raises :class:`~guardrail.errors.UnguardedAccessError`
  (legacy ``completions``, ``responses.retrieve``, ``realtime``,
  ``beta.threads``, ``audio``, ``images``...), unless the policy lists it under
  ``client.passthrough``: then it passes through, unchecked. An API a newer
  ``openai`` adds is refused until it is known or listed: a guard that does not
  know an API fails closed.

``with_raw_response`` and ``with_streaming_response`` are always refused on the
client, ``beta`` and the guarded resources, whatever the policy lists: they would
hand out the guarded APIs' raw answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openai._resource import AsyncAPIResource, SyncAPIResource

from guardrail.errors import UnguardedAccessError

__all__ = [
    "NO_MODEL_OUTPUT",
    "RAW_HELPERS",
    "checked",
    "is_api",
    "passes",
    "raw_refusal",
    "refusal",
]

NO_MODEL_OUTPUT = frozenset(
    {"models", "files", "uploads", "embeddings", "moderations", "vector_stores"}
    | {"fine_tuning", "containers", "skills", "webhooks", "admin", "safety"}
    | {"content_provenance_checks", "beta.assistants"}
    | {"chat.completions.delete", "responses.delete", "responses.input_items"}
    | {"responses.input_tokens"}
)
"""APIs that return no text a model wrote for the call; they always pass through."""

RAW_HELPERS = ("with_raw_response", "with_streaming_response")
"""Helpers that would return a guarded API's raw answer: always refused."""


def is_api(value: Any) -> bool:
    """Whether ``value`` is one of the ``openai`` client's API resources."""
    return isinstance(value, (SyncAPIResource, AsyncAPIResource))


def passes(path: str, passthrough: Sequence[str]) -> bool:
    """Whether the API at ``path`` (``responses.retrieve``) passes through unguarded.

    A ``passthrough`` entry names an API or everything under it (``beta.threads``).
    """
    if path in NO_MODEL_OUTPUT:
        return True
    return any(path == name or path.startswith(name + ".") for name in passthrough)


def refusal(path: str) -> UnguardedAccessError:
    """The error for an API that would return model output without the guard."""
    return UnguardedAccessError(
        f"{path} is not guarded by guardrail: what it returns is never checked. Use "
        "chat.completions.create(...) or responses.create(...) (stream=True to stream), "
        f"or list '{path}' under client.passthrough in the policy to let it through unchecked"
    )


def raw_refusal(path: str) -> UnguardedAccessError:
    """The error for a raw-response helper: always refused, whatever the policy lists."""
    return UnguardedAccessError(
        f"{path} is not guarded by guardrail: it would return guarded APIs' raw answers "
        "unchecked. Use chat.completions.create(...) or responses.create(...) "
        "(stream=True to stream)"
    )


def checked(path: str, value: Any, passthrough: Sequence[str]) -> Any:
    """``value`` (the attribute at ``path``) if it may pass; raises otherwise."""
    if passes(path, passthrough):
        return value
    raise refusal(path)
