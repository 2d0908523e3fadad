"""A guarded endpoint: admission, then one guarded call; every request audited exactly once.

:class:`GuardedEndpoint` is the raw ASGI endpoint of every guarded API (chat
completions, the Responses API; any other OpenAI API the gateway guards plugs in
the same way). It takes a request through, in order:

1. the key: the route (policy and upstream), or 401;
2. a shutdown under way: 503;
3. the in-flight bound: 429 with ``Retry-After``;
4. the body, read within ``max_body_bytes``: 413 (499 if the client leaves);
5. the API's :meth:`GuardedApi.parse`: the call's parameters, or 400;
6. the API's :meth:`GuardedApi.call`: the guarded call, which audits itself.

A refusal in steps 1-5 (or a gateway bug there, 500; or the server cancelling
the request, 503) is audited by :func:`~guardrail.gateway.auditing.audit_refusal`
and answered in OpenAI's error shape; after step 6 has begun, the call's own
record is the request's one record (a call cancelled by a shutdown is audited as
abandoned, and answered 503 when nothing was sent yet). Every request is counted
in the metrics by its API's name and status.

A new guarded API implements :class:`GuardedApi` and is added to the app's
route table as ``Route(PATH, gateway.guarded(MyApi(...)), methods=["POST"])``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

from guardrail.errors import MissingDependencyError

try:
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "starlette", "gateway") from None

from guardrail.gateway.asgi import DisconnectedError, header, read_body, send_error
from guardrail.gateway.auditing import audit_refusal
from guardrail.gateway.config import LimitsConfig
from guardrail.gateway.inflight import InFlight
from guardrail.gateway.keys import KeyRing, key_hint
from guardrail.gateway.metrics import Metrics
from guardrail.gateway.routes import GatewayRoute
from guardrail.gateway.shapes import ApiError, error_for
from guardrail.guard import Guard

__all__ = ["GuardedApi", "GuardedEndpoint", "refusal_for"]


class GuardedApi(Protocol):
    """One OpenAI API the gateway guards: how a body becomes a guarded call."""

    @property
    def name(self) -> str:
        """The API's name in metrics, e.g. ``chat.completions``."""
        ...

    def parse(self, route: GatewayRoute, body: bytes) -> dict[str, Any]:
        """The call's parameters from a request body; ``ApiError`` (400) for a bad one.

        Everything that can refuse a request belongs here, before the call: a
        refusal raised here is audited by the endpoint.
        """
        ...

    async def call(
        self, route: GatewayRoute, params: dict[str, Any], receive: Receive, send: Send
    ) -> int:
        """Run the guarded call and send its answer; returns the status sent.

        The call writes the request's audit record, whatever happens (the guarded
        call's guarantee): it starts the guarded call before anything else can fail.
        """
        ...


def refusal_for(exc: BaseException) -> ApiError:
    """The answer to a request that ``exc`` stopped before its guarded call."""
    if isinstance(exc, DisconnectedError):
        return ApiError(
            499,
            "the client disconnected before its request was read",
            code="client_closed_request",
        )
    if isinstance(exc, asyncio.CancelledError):
        return ApiError(
            503, "the gateway shut down before serving the request", "server_error", code="shutdown"
        )
    return error_for(exc)  # ApiError as it is; a bug: 500, never a traceback


class GuardedEndpoint:
    """The raw ASGI endpoint of a :class:`GuardedApi` (see the module doc)."""

    def __init__(
        self,
        api: GuardedApi,
        *,
        keys: KeyRing[GatewayRoute],
        unauthenticated: Guard,
        limits: LimitsConfig,
        inflight: InFlight,
        metrics: Metrics,
    ) -> None:
        """``unauthenticated``: the guard whose audit log records 401s (no route)."""
        self.api = api
        self._keys = keys
        self._unauthenticated = unauthenticated
        self._limits = limits
        self._inflight = inflight
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (see the module doc); count it in the metrics."""
        started = time.perf_counter()
        status = 500
        answering = False

        async def sending(message: Any) -> None:
            nonlocal answering
            answering = True
            await send(message)

        try:
            with self._inflight.tracked():
                status = await self._serve(scope, receive, sending)
        except asyncio.CancelledError:
            # The server cancelled the request (a shutdown past its drain timeout): its
            # record is written by now. The request ends here, answered if it can be,
            # rather than as an exception the server would log with a traceback.
            status = 503
            if not answering:
                with contextlib.suppress(Exception):
                    await send_error(send, refusal_for(asyncio.CancelledError()))
        finally:
            self._metrics.answered(self.api.name, status, time.perf_counter() - started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        route: GatewayRoute | None = None
        handed_over = False
        try:
            route = self._keys.route_for(header(scope, b"authorization"))
            if self._inflight.draining:
                raise ApiError(
                    503, "the gateway is shutting down", "server_error", code="shutting_down"
                )
            if self._inflight.full:
                retry = str(self._limits.retry_after_s)
                raise ApiError(
                    429,
                    f"the gateway is serving {self._inflight.limit} requests; retry in {retry} s",
                    "rate_limit_error",
                    code="rate_limit_exceeded",
                    headers=(("retry-after", retry),),
                )
            with self._inflight.admitted():
                body = await read_body(scope, receive, self._limits.max_body_bytes)
                params = self.api.parse(route, body)
                handed_over = True  # from here the guarded call owns the request's record
                return await self._call(route, params, receive, send)
        except asyncio.CancelledError as exc:  # the server is cancelling this request
            if not handed_over:
                with contextlib.suppress(Exception):
                    await self._audit(route, refusal_for(exc), scope)
            raise
        except Exception as exc:  # only before the hand-over: _call answers its own errors
            refused = refusal_for(exc)
        try:
            await self._audit(route, refused, scope)
        except Exception as exc:  # the record could not be written: say so, fail closed
            refused = error_for(exc)
        if refused.status != 499:  # nobody is there to read an answer
            await send_error(send, refused)
        return refused.status

    async def _call(
        self, route: GatewayRoute, params: dict[str, Any], receive: Receive, send: Send
    ) -> int:
        try:
            return await self.api.call(route, params, receive, send)
        except DisconnectedError:
            return 499
        except Exception as exc:  # a bug after the call was audited: answered, not re-audited
            error = error_for(exc)
            with contextlib.suppress(Exception):  # the answer may have begun already
                await send_error(send, error)
            return error.status

    async def _audit(self, route: GatewayRoute | None, refused: ApiError, scope: Scope) -> None:
        if route is not None:
            await audit_refusal(route.guard, route.mask, refused)
            return
        guard = self._unauthenticated
        key = key_hint(header(scope, b"authorization"))
        await audit_refusal(guard, guard.settings.mask, refused, key=key)
