"""A wrapped client's chat completion, run through the guarded-call flow.

The one adapter between the ``openai`` client and :mod:`guardrail.flow`: it
checks the call's parameters, picks the flow (streaming or not), gives it
``openai``'s completion and chunk classes to build synthetic answers with, and
runs it with the guard's sync or async driver around the client's own
``create``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from guardrail.chat import ChatShapes, message_list
from guardrail.client.streams import AsyncGuardedStream, GuardedStream
from guardrail.client.upstream import async_upstream, sync_upstream
from guardrail.errors import ConfigurationError, GuardrailError
from guardrail.flow import Trace, completion_flow, refuse, stream_flow
from guardrail.secrets import Masker

if TYPE_CHECKING:
    from guardrail.guard import Guard

OPENAI_SHAPES = ChatShapes(completion=ChatCompletion, chunk=ChatCompletionChunk)
"""Synthetic answers are built as ``openai``'s own types."""

# Parameters the guard reads: setting them behind its back (extra_body) would change
# what the upstream gets without the guard knowing.
_CHECKED_PARAMS = ("messages", "n", "stream", "stream_options")


def normalise_params(params: dict[str, Any], *, streams: bool = True) -> dict[str, Any]:
    """The call's parameters with ``messages`` as a list; refuses what would bypass the guard.

    Raises :class:`~guardrail.errors.InputError` when ``messages`` is not a list of
    messages, :class:`~guardrail.errors.ConfigurationError` for parameters the
    guard cannot honour (``stream`` for a method that does not stream, ``streams=False``).
    """
    if params.get("stream") and not streams:
        raise ConfigurationError("parse() does not stream; use create(stream=True)")
    if "messages" not in params:
        raise ConfigurationError("chat.completions.create() needs messages=")
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        overlap = sorted(set(extra) & set(_CHECKED_PARAMS))
        if overlap:
            raise ConfigurationError(
                f"extra_body may not set {', '.join(overlap)}: pass them as parameters"
            )
    n = params.get("n")
    if n and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigurationError(f"n must be a positive integer, got {n!r}")
    return {**params, "messages": message_list(params["messages"])}


def _trace(guard: Guard, params: dict[str, Any], mask: Masker) -> Trace:
    mode = "streaming" if params.get("stream") else guard.policy.execution.mode
    return guard.begin(mode, model=str(params.get("model", "")), mask=mask)


def complete(
    guard: Guard,
    create: Callable[..., Any],
    params: dict[str, Any],
    mask: Masker,
    *,
    streams: bool = True,
) -> Any:
    """A guarded sync ``create(**params)``: a completion, or a started guarded stream.

    ``mask`` knows the secrets of the guard and of the wrapped client; ``streams``
    is False for a method that cannot stream (``parse``). Every call leaves one
    audit record, a refused one included.
    """
    trace = _trace(guard, params, mask)
    driver = guard.sync_driver(sync_upstream(create, mask))
    try:
        params = normalise_params(params, streams=streams)
    except GuardrailError as exc:
        return driver.run(refuse(trace, exc))
    trace.messages = params["messages"]
    if params.get("stream"):
        steps = driver.stream(stream_flow(guard.settings, trace, params, OPENAI_SHAPES))
        return GuardedStream(steps, trace).start()
    return driver.run(completion_flow(guard.settings, trace, params, OPENAI_SHAPES))


async def acomplete(
    guard: Guard,
    create: Callable[..., Awaitable[Any]],
    params: dict[str, Any],
    mask: Masker,
    *,
    streams: bool = True,
) -> Any:
    """A guarded async ``await create(**params)``: a completion, or a started guarded stream."""
    trace = _trace(guard, params, mask)
    driver = guard.async_driver(async_upstream(create, mask))
    try:
        params = normalise_params(params, streams=streams)
    except GuardrailError as exc:
        return await driver.run(refuse(trace, exc))
    trace.messages = params["messages"]
    if params.get("stream"):
        steps = driver.stream(stream_flow(guard.settings, trace, params, OPENAI_SHAPES))
        return await AsyncGuardedStream(steps, trace).start()
    return await driver.run(completion_flow(guard.settings, trace, params, OPENAI_SHAPES))
