"""A wrapped client's chat completion, run through the guarded-call flow.

The one adapter between the ``openai`` client and :mod:`guardrail.flow`: it
checks the call's parameters, picks the flow (streaming or not), gives it
``openai``'s completion and chunk classes to build synthetic answers with, and
runs it with the guard's sync or async driver around the client's own
``create``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from guardrail.chat import ChatShapes
from guardrail.client.streams import AsyncGuardedStream, GuardedStream
from guardrail.client.upstream import closable
from guardrail.errors import ConfigurationError
from guardrail.flow import Trace, completion_flow, stream_flow

if TYPE_CHECKING:
    from guardrail.guard import Guard

OPENAI_SHAPES = ChatShapes(completion=ChatCompletion, chunk=ChatCompletionChunk)
"""Synthetic answers are built as ``openai``'s own types."""

# Parameters the guard reads: setting them behind its back (extra_body) would change
# what the upstream gets without the guard knowing.
_CHECKED_PARAMS = ("messages", "n", "stream", "stream_options")


def normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    """The call's parameters with ``messages`` as a list; refuses what would bypass the guard."""
    if "messages" not in params:
        raise ConfigurationError("chat.completions.create() needs messages=")
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        overlap = sorted(set(extra) & set(_CHECKED_PARAMS))
        if overlap:
            raise ConfigurationError(
                f"extra_body may not set {', '.join(overlap)}: pass them as parameters"
            )
    return {**params, "messages": list(params["messages"])}


def _trace(guard: Guard, params: dict[str, Any]) -> Trace:
    mode = "streaming" if params.get("stream") else guard.policy.execution.mode
    return Trace.begin(mode, model=str(params.get("model", "")), messages=params["messages"])


def complete(guard: Guard, create: Callable[..., Any], params: dict[str, Any]) -> Any:
    """A guarded sync ``create(**params)``: a completion, or a started guarded stream."""
    params = normalise_params(params)
    trace = _trace(guard, params)
    driver = guard.sync_driver(lambda p: closable(create(**p)))
    if params.get("stream"):
        steps = driver.stream(stream_flow(guard.settings, trace, params, OPENAI_SHAPES))
        return GuardedStream(steps, trace).start()
    return driver.run(completion_flow(guard.settings, trace, params, OPENAI_SHAPES))


async def acomplete(guard: Guard, create: Callable[..., Any], params: dict[str, Any]) -> Any:
    """A guarded async ``await create(**params)``: a completion, or a started guarded stream."""
    params = normalise_params(params)
    trace = _trace(guard, params)

    async def upstream(p: dict[str, Any]) -> Any:
        return await create(**p)

    driver = guard.async_driver(upstream)
    if params.get("stream"):
        steps = driver.stream(stream_flow(guard.settings, trace, params, OPENAI_SHAPES))
        return await AsyncGuardedStream(steps, trace).start()
    return await driver.run(completion_flow(guard.settings, trace, params, OPENAI_SHAPES))
