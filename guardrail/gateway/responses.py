"""``POST /v1/responses``: OpenAI's Responses API, every call guarded.

:class:`ResponsesApi` is the gateway's :class:`~guardrail.gateway.endpoint.GuardedApi`
for the Responses API, served by the same endpoint as chat completions (keys,
the drain, the in-flight bound, body limits, the audit record of a refused
request). :meth:`~ResponsesApi.parse` turns a body into the parameters of
``responses.create()`` (400 for what OpenAI would refuse, and for fields that
would reach past the guard); :meth:`~ResponsesApi.call` runs them through the
library's own guarded Responses call
(:func:`guardrail.client.responses.acreate_response`: the same input and output
adapters, flows, async driver, audit records and stream guarantees as
``wrap(AsyncOpenAI(...)).responses.create``) with the route's upstream
``openai`` client, and answers as chat completions are answered
(:func:`~guardrail.gateway.chat.answer`), in the Responses API's shapes:

- a block with ``block.behavior: raise`` is a 400 ``guardrail_blocked`` /
  ``content_filter``; with ``message`` a ``Response`` whose text is the block
  message, status ``incomplete`` and ``incomplete_details.reason``
  ``content_filter``;
- a stream is framed as OpenAI frames it (``event: TYPE`` and ``data: JSON`` per
  event, no ``[DONE]``); a cut stream ends with ``response.incomplete``
  (``content_filter``), an upstream failure mid-stream with an ``error`` event.

Everything under ``/v1/responses/`` (retrieving, cancelling, listing input
items of stored responses) would hand out stored model output unchecked:
:func:`not_guarded` answers it 501, never passes it through.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from typing import Any

from guardrail.errors import MissingDependencyError

try:
    from openai.resources.responses import AsyncResponses
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Receive, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "starlette", "gateway") from None

from guardrail.client.responses import acreate_response
from guardrail.gateway.asgi import error_response
from guardrail.gateway.chat import answer, request_params
from guardrail.gateway.metrics import Metrics
from guardrail.gateway.routes import GatewayRoute
from guardrail.gateway.shapes import ApiError, dump, error_for

__all__ = ["RESPONSES_FIELDS", "RESPONSES_PATH", "ResponsesApi", "not_guarded"]

RESPONSES_PATH = "/v1/responses"

# As for chat: create()'s parameters, less the client-side options that would reach
# past the guard (extra headers, query or body, timeouts).
_CLIENT_OPTIONS = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
RESPONSES_FIELDS = frozenset(inspect.signature(AsyncResponses.create).parameters) - _CLIENT_OPTIONS
"""The body fields of a Responses request the gateway forwards."""


class ResponsesApi:
    """The Responses API, guarded (a :class:`~guardrail.gateway.endpoint.GuardedApi`)."""

    name = "responses"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def parse(self, route: GatewayRoute, body: bytes) -> dict[str, Any]:
        """The parameters of ``responses.create()``; 400 for a body OpenAI would refuse.

        What only the guarded call can judge (the input's shape, ``background``)
        is refused by the call itself, which audits it.
        """
        config = route.upstream.config
        return request_params(body, config, fields=RESPONSES_FIELDS, required=("model",))

    async def call(
        self, route: GatewayRoute, params: dict[str, Any], receive: Receive, send: Send
    ) -> int:
        """Run the guarded call and answer it (JSON, or SSE for ``stream: true``)."""
        create = route.upstream.client.responses.create
        call = acreate_response(route.guard, create, params, route.mask)
        stream = bool(params.get("stream"))
        return await answer(
            self._metrics, route, call, receive, send, stream=stream, frames=_frames
        )


def _frame(kind: str, data: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


async def _frames(stream: Any) -> AsyncGenerator[bytes, None]:
    """A Responses stream's SSE events, as OpenAI frames them; a failure ends with ``error``."""
    sequence = -1
    try:
        async for event in stream:
            number = getattr(event, "sequence_number", None)
            sequence = number if isinstance(number, int) else sequence
            yield _frame(str(event.type), dump(event))
    except Exception as exc:  # the upstream failed mid-stream: an error event ends it
        error = error_for(exc)
        data = {
            "type": "error",
            "code": error.code or error.type,
            "message": error.message,
            "param": error.param,
            "sequence_number": sequence + 1,
        }
        yield _frame("error", dump(data))


async def not_guarded(request: Request) -> Response:
    """Anything under ``/v1/responses/``: stored responses would pass unchecked, so 501."""
    return error_response(
        ApiError(
            501,
            "only POST /v1/responses is guarded by this gateway: stored responses "
            f"({request.method} {request.url.path}) would be returned unchecked",
            "invalid_request_error",
            code="not_implemented",
        )
    )
