"""``POST /v1/chat/completions``: OpenAI's chat completions, every call guarded.

:class:`ChatCompletions` is the gateway's :class:`~guardrail.gateway.endpoint.GuardedApi`
for chat completions: :meth:`~ChatCompletions.parse` turns a body into the
parameters of ``create()`` (400 for what OpenAI would refuse, and for fields
that would reach past the guard); :meth:`~ChatCompletions.call` runs them
through the library's own guarded call
(:func:`guardrail.client.calls.acomplete`: the same parameter checks, flows,
async driver, audit records and stream guarantees as ``wrap(AsyncOpenAI(...))``)
with the route's upstream forwarder (:mod:`~guardrail.gateway.forward`), and
answers JSON or SSE.

What is not chat-specific is shared with the gateway's other guarded APIs
(:mod:`~guardrail.gateway.responses`): :func:`request_params` (a JSON body into
a call's parameters) and :func:`answer` (a guarded call's answer, its headers
and metrics, a stream's events sent as they are released).

A client that disconnects cancels its call: the guarded call's task is
cancelled, which cancels the checks and closes the upstream connection, and the
call's audit record is still written (the async driver's abandonment).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from typing import Any

from guardrail.errors import MissingDependencyError

try:
    from openai.resources.chat.completions import AsyncCompletions
    from starlette.types import Receive, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "starlette", "gateway") from None

from guardrail.client.calls import acomplete
from guardrail.gateway.asgi import (
    DisconnectedError,
    send_bytes,
    send_error,
    send_stream,
    until_disconnect,
)
from guardrail.gateway.config import UpstreamConfig
from guardrail.gateway.metrics import Metrics
from guardrail.gateway.routes import GatewayRoute
from guardrail.gateway.shapes import ApiError, dump, error_for
from guardrail.report import GuardReport, report, request_id_of

__all__ = [
    "CHAT_FIELDS",
    "CHAT_PATH",
    "ChatCompletions",
    "answer",
    "chat_params",
    "guard_headers",
    "request_params",
]

CHAT_PATH = "/v1/chat/completions"

# What a request body may set: OpenAI's create() parameters, less the client-side
# options that would reach past the guard (extra headers, query or body, timeouts).
_CLIENT_OPTIONS = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
CHAT_FIELDS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - _CLIENT_OPTIONS
"""The body fields of a chat completion request the gateway forwards."""


def chat_params(body: bytes, upstream: UpstreamConfig) -> dict[str, Any]:
    """The call's parameters from a request body; 400 for anything OpenAI would refuse."""
    return request_params(body, upstream, fields=CHAT_FIELDS, required=("model", "messages"))


def request_params(
    body: bytes, upstream: UpstreamConfig, *, fields: Collection[str], required: Collection[str]
) -> dict[str, Any]:
    """A guarded API's call parameters from a JSON body; 400 for anything OpenAI would refuse.

    ``fields`` are the API's parameters, forwarded as such; any other field is
    refused unless the upstream allows it in ``extra_params`` (then sent as
    ``extra_body``). ``required`` must be present; ``model`` must be a non-empty
    string, and one of the upstream's ``models`` when it lists them.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in required:
        if name not in data:
            raise ApiError(400, f"missing required parameter: '{name}'", param=name)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a non-empty string", param="model")
    if upstream.models is not None and model not in upstream.models:
        raise ApiError(
            400, f"the model '{model}' does not exist here", param="model", code="model_not_found"
        )
    extra = {k: v for k, v in data.items() if k not in fields}
    unknown = sorted(k for k in extra if k not in upstream.extra_params)
    if unknown:
        raise ApiError(
            400,
            f"unrecognized request argument supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    params = {k: v for k, v in data.items() if k in fields}
    if extra:
        params["extra_body"] = extra
    return params


class ChatCompletions:
    """The chat completions API, guarded (a :class:`~guardrail.gateway.endpoint.GuardedApi`)."""

    name = "chat.completions"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def parse(self, route: GatewayRoute, body: bytes) -> dict[str, Any]:
        """The parameters of ``create()`` (see :func:`chat_params`)."""
        return chat_params(body, route.upstream.config)

    async def call(
        self, route: GatewayRoute, params: dict[str, Any], receive: Receive, send: Send
    ) -> int:
        """Run the guarded call and answer it (JSON, or SSE for ``stream: true``)."""
        call = acomplete(route.guard, route.upstream.forward.create, params, route.mask)
        stream = bool(params.get("stream"))
        return await answer(
            self._metrics, route, call, receive, send, stream=stream, frames=_frames
        )


async def _frames(stream: Any) -> AsyncGenerator[bytes, None]:
    """A chat stream's SSE events: ``data: CHUNK`` each, then ``data: [DONE]``."""
    try:
        async for chunk in stream:
            yield b"data: " + dump(chunk) + b"\n\n"
    except Exception as exc:  # the upstream failed mid-stream: an error event ends it
        yield b"data: " + error_for(exc).body() + b"\n\n"
        return
    yield b"data: [DONE]\n\n"


async def answer(
    metrics: Metrics,
    route: GatewayRoute,
    call: Awaitable[Any],
    receive: Receive,
    send: Send,
    *,
    stream: bool,
    frames: Callable[[Any], AsyncGenerator[bytes, None]],
) -> int:
    """Await a guarded ``call`` and send its answer; returns the status sent.

    The answer is JSON, or for a ``stream`` the SSE events ``frames`` makes of the
    guarded stream (the stream is closed however it ends). A call that raises is
    an OpenAI-shaped error (a blocked call's carries its request id and action);
    every answer carries the ``x-guardrail-*`` headers of its call's report, and
    the report is counted in ``metrics``. A client that leaves cancels the call:
    499, nothing (more) sent.
    """
    try:
        result = await until_disconnect(receive, call)
    except DisconnectedError:
        return 499  # nginx's "client closed request": nothing was sent
    except Exception as exc:
        found = getattr(exc, "report", None)
        if isinstance(found, GuardReport):
            metrics.guarded(route.policy, found)
        error = error_for(exc)
        await send_error(send, error, request_id=request_id_of(exc))
        return error.status
    if not stream:
        done = report(result)
        if done is not None:
            metrics.guarded(route.policy, done)
        await send_bytes(send, 200, dump(result), "application/json", guard_headers(done))
        return 200
    try:
        await send_stream(receive, send, guard_headers(result.report), frames(result))
    except DisconnectedError:
        return 499
    finally:
        await result.close()  # already ended, unless the client went away mid-send
        metrics.guarded(route.policy, result.report)
    return 200


def guard_headers(found: GuardReport | None) -> list[tuple[bytes, bytes]]:
    """``x-guardrail-request-id`` and ``x-guardrail-action`` of a guarded call."""
    if found is None:
        return []
    return [
        (b"x-guardrail-request-id", found.request_id.encode()),
        (b"x-guardrail-action", found.action.value.encode()),
    ]
