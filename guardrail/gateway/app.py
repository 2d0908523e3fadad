"""The gateway's ASGI app: OpenAI's chat-completions API, every call guarded.

``POST /v1/chat/completions`` runs each request through the library's own
guarded call (:func:`guardrail.client.calls.acomplete`: the same parameter
checks, flows, async driver, audit records and stream guarantees as
``wrap(AsyncOpenAI(...))``), with an ``openai.AsyncOpenAI`` client pointed at the
route's upstream. The gateway adds only HTTP: keys (:mod:`~guardrail.gateway.keys`),
limits (in-flight bound -> 429, body size -> 413), OpenAI-shaped errors
(:mod:`~guardrail.gateway.shapes`), SSE framing and metrics.

Other routes: ``GET /v1/models`` (the route's upstream's list, filtered by its
``models`` allow-list), ``GET /healthz`` (the process answers), ``GET /readyz``
(every guard's circuit breaker is closed), ``GET /metrics`` (Prometheus).
``/v1/responses`` answers 501: the Responses API is not guarded here yet, and
nothing passes through unguarded. Any other path is a 404.

A client that disconnects cancels its call: the guarded call's task is
cancelled, which cancels the checks and closes the upstream connection, and the
call's audit record is still written (the async driver's abandonment).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from guardrail.errors import ConfigurationError, InputError, MissingDependencyError

try:
    import openai
    from openai.resources.chat.completions import AsyncCompletions
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "starlette", "gateway") from None

from guardrail.classifiers.base import Classifier
from guardrail.client.calls import acomplete
from guardrail.flow import Trace, refuse
from guardrail.gateway.config import GatewayConfig, UpstreamConfig
from guardrail.gateway.forward import ChatForwarder
from guardrail.gateway.keys import KeyRing
from guardrail.gateway.metrics import CONTENT_TYPE, Metrics
from guardrail.gateway.shapes import ApiError, dump, error_for
from guardrail.guard import Guard
from guardrail.report import GuardReport, report
from guardrail.secrets import Masker

__all__ = ["Gateway", "GatewayRoute", "Upstream", "create_app"]

T = TypeVar("T")

CHAT_PATH = "/v1/chat/completions"
_ANY = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# What a request body may set: OpenAI's create() parameters, less the client-side
# options that would reach past the guard (extra headers, query or body, timeouts).
_CLIENT_OPTIONS = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
CHAT_FIELDS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - _CLIENT_OPTIONS
"""The body fields of a chat completion request the gateway forwards."""


@dataclass(frozen=True)
class Upstream:
    """An upstream server: its client and what callers may send it."""

    name: str
    config: UpstreamConfig
    client: openai.AsyncOpenAI
    """For the APIs passed through as they are (``/v1/models``)."""
    forward: ChatForwarder
    """Guarded chat completions go through this leaner client."""
    secret: str | None
    """The upstream's API key (masked in every error and record; never logged)."""

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self.config.base_url!r})"


@dataclass(frozen=True)
class GatewayRoute:
    """What one key gets: a policy's guard and an upstream."""

    name: str
    """The key's id (``open`` for an open gateway)."""
    policy: str
    guard: Guard
    upstream: Upstream
    mask: Masker
    """The guard's secrets and the upstream's key."""


class DisconnectedError(Exception):
    """The client went away before its answer was sent."""


class Gateway:
    """One gateway process: routes, limits and metrics; :meth:`app` serves it."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        guards: Mapping[str, Guard] | None = None,
        classifier: Classifier | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """Build the guards (unless given, by policy name) and the upstream clients.

        ``classifier`` replaces the guard backend of every policy (a scripted fake
        in tests). Guards built here are closed with the gateway; given ones are not.
        """
        self.config = config
        self.metrics = Metrics()
        given = dict(guards or {})
        self._owned: list[Guard] = []
        self.guards: dict[str, Guard] = {}
        for name, path in config.policies.items():
            if name in given:
                self.guards[name] = given[name]
                continue
            guard = Guard(path, classifier=classifier)
            self._owned.append(guard)
            self.guards[name] = guard
        self.upstreams = {
            name: _upstream(name, upstream, environ) for name, upstream in config.upstreams.items()
        }
        self.keys: KeyRing[GatewayRoute] = KeyRing.of(config, self._route, environ)
        self._limit = config.limits.max_in_flight

    def _route(self, name: str, policy: str, upstream: str) -> GatewayRoute:
        guard, up = self.guards[policy], self.upstreams[upstream]
        mask = guard.settings.mask.with_secrets(up.secret)
        return GatewayRoute(name=name, policy=policy, guard=guard, upstream=up, mask=mask)

    async def aclose(self) -> None:
        """Close the upstream clients and the guards built here (flushing their audit)."""
        for upstream in self.upstreams.values():
            await upstream.forward.close()
            await upstream.client.close()
        for guard in self._owned:
            await asyncio.to_thread(guard.close)

    # -- the app ------------------------------------------------------------------

    def app(self) -> Starlette:
        """The Starlette app serving this gateway."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            try:
                yield
            finally:
                await self.aclose()

        async def not_found(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 404
            message = f"no route for {request.method} {request.url.path}"
            if status == 405:
                message = f"{request.method} is not allowed on {request.url.path}"
            return _error_response(ApiError(status, message, "invalid_request_error"))

        routes = [
            Route(CHAT_PATH, _Endpoint(self, self.chat_completions), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/responses", _not_guarded, methods=_ANY),
            Route("/v1/responses/{rest:path}", _not_guarded, methods=_ANY),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
        ]
        app = Starlette(
            routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found}
        )
        app.state.gateway = self
        return app

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Serve one chat completion; returns the status sent."""
        route = self.keys.route_for(_header(scope, b"authorization"))
        if self.metrics.in_flight >= self._limit:
            retry = str(self.config.limits.retry_after_s)
            raise ApiError(
                429,
                f"the gateway is serving {self._limit} requests; retry in {retry} s",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers=(("retry-after", retry),),
            )
        self.metrics.in_flight += 1
        try:
            body = await _read_body(scope, receive, self.config.limits.max_body_bytes)
            try:
                params = _params(body, route.upstream.config)
            except ApiError as refused:
                await _audit_refusal(route, refused)
                raise
            return await self._guarded(route, params, receive, send)
        finally:
            self.metrics.in_flight -= 1

    async def _guarded(
        self, route: GatewayRoute, params: dict[str, Any], receive: Receive, send: Send
    ) -> int:
        create = route.upstream.forward.create
        try:
            result = await _until_disconnect(
                receive, acomplete(route.guard, create, params, route.mask)
            )
        except DisconnectedError:
            return 499  # nginx's "client closed request": nothing was sent
        except Exception as exc:
            found = getattr(exc, "report", None)
            if isinstance(found, GuardReport):
                self.metrics.guarded(route.policy, found)
            error = error_for(exc)
            request_id = found.request_id if isinstance(found, GuardReport) else None
            await _send_error(send, error, request_id=request_id)
            return error.status
        if params.get("stream"):
            return await self._stream(route, result, receive, send)
        done = report(result)
        headers = _guard_headers(done)
        if done is not None:
            self.metrics.guarded(route.policy, done)
        await _send_bytes(send, 200, dump(result), "application/json", headers)
        return 200

    async def _stream(self, route: GatewayRoute, stream: Any, receive: Receive, send: Send) -> int:
        headers = [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *_guard_headers(stream.report),
        ]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), *headers],
            }
        )

        async def pump() -> None:
            try:
                async for chunk in stream:
                    await send(_event(b"data: " + dump(chunk) + b"\n\n"))
                tail = b"data: [DONE]\n\n"
            except Exception as exc:  # the upstream failed mid-stream: an error event ends it
                tail = b"data: " + error_for(exc).body() + b"\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": False})

        try:
            await _until_disconnect(receive, pump())
        except DisconnectedError:
            return 499
        finally:
            await stream.close()  # already ended, unless the client went away mid-send
            self.metrics.guarded(route.policy, stream.report)
        return 200

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the route's upstream's models (its allow-list, when set)."""
        try:
            route = self.keys.route_for(request.headers.get("authorization"))
            upstream = route.upstream
            try:
                page = await upstream.client.models.list()
            except Exception as exc:
                from guardrail.secrets import mask_exception

                raise error_for(mask_exception(exc, route.mask)) from None
            allowed = upstream.config.models
            data = [
                m.model_dump(exclude_unset=True)
                for m in page.data
                if allowed is None or m.id in allowed
            ]
        except ApiError as error:
            return _error_response(error)
        return Response(dump({"object": "list", "data": data}), media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: 200 when every guard's circuit breaker is closed, else 503."""
        states = self._breaker_states()
        ready = all(state in (None, "closed") for state in states.values())
        body = {"status": "ready" if ready else "unavailable", "breakers": states}
        return Response(dump(body), 200 if ready else 503, media_type="application/json")

    def _breaker_states(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name, guard in self.guards.items():
            breaker = guard.breaker
            out[name] = None if breaker is None else breaker.state.value
        return out

    async def render_metrics(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text format."""
        body = self.metrics.render(self._breaker_states())
        return Response(body, media_type=CONTENT_TYPE)


def create_app(
    config: GatewayConfig,
    *,
    guards: Mapping[str, Guard] | None = None,
    classifier: Classifier | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Starlette:
    """The gateway's ASGI app for ``config`` (see :class:`Gateway` for the arguments).

    ``app.state.gateway`` is the :class:`Gateway` (metrics, guards, routes).
    """
    return Gateway(config, guards=guards, classifier=classifier, environ=environ).app()


# ------------------------------------------------------------------------ helpers


class _Endpoint:
    """A raw ASGI endpoint: errors become OpenAI-shaped responses, every request is counted."""

    def __init__(
        self, gateway: Gateway, serve: Callable[[Scope, Receive, Send], Awaitable[int]]
    ) -> None:
        self._metrics = gateway.metrics
        self._serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status = await self._serve(scope, receive, send)
        except DisconnectedError:
            status = 499
        except Exception as exc:  # ApiError, or a bug: answered, never a traceback on the wire
            error = error_for(exc)
            status = error.status
            await _send_error(send, error)
        finally:
            self._metrics.answered("chat.completions", status, time.perf_counter() - started)


def _upstream(name: str, config: UpstreamConfig, environ: Mapping[str, str]) -> Upstream:
    secret: str | None = None
    if config.api_key_env is not None:
        secret = environ.get(config.api_key_env)
        if not secret:
            raise ConfigurationError(
                f"upstreams.{name}.api_key_env: the environment variable "
                f"{config.api_key_env} is not set"
            )
    # The key is always given: left unset, the openai client would read OPENAI_API_KEY
    # and send it to whatever server the upstream is.
    client = openai.AsyncOpenAI(
        base_url=config.base_url,
        api_key=secret or "EMPTY",
        timeout=config.timeout_s,
        max_retries=config.max_retries,
        http_client=openai.DefaultAioHttpClient(timeout=config.timeout_s),
    )
    forward = ChatForwarder(
        config.base_url,
        api_key=secret or "EMPTY",
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
    )
    return Upstream(name=name, config=config, client=client, forward=forward, secret=secret)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    too_large = ApiError(
        413, f"the request body is larger than {limit} bytes", "invalid_request_error"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise DisconnectedError
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_large
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _params(body: bytes, upstream: UpstreamConfig) -> dict[str, Any]:
    """The call's parameters from a request body; 400 for anything OpenAI would refuse."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in ("model", "messages"):
        if name not in data:
            raise ApiError(400, f"missing required parameter: '{name}'", param=name)
    model = data["model"]
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a non-empty string", param="model")
    if upstream.models is not None and model not in upstream.models:
        raise ApiError(
            400, f"the model '{model}' does not exist here", param="model", code="model_not_found"
        )
    extra = {k: v for k, v in data.items() if k not in CHAT_FIELDS}
    unknown = sorted(k for k in extra if k not in upstream.extra_params)
    if unknown:
        raise ApiError(
            400,
            f"unrecognized request argument supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    params = {k: v for k, v in data.items() if k in CHAT_FIELDS}
    if extra:
        params["extra_body"] = extra
    return params


async def _audit_refusal(route: GatewayRoute, refused: ApiError) -> None:
    """A body refused before the guarded call still leaves its one audit record."""
    guard = route.guard
    trace = Trace.begin(guard.policy.execution.mode, mask=route.mask)
    with contextlib.suppress(InputError):
        await guard.async_driver().run(refuse(trace, InputError(refused.message)))
    refused.headers = (*refused.headers, ("x-guardrail-request-id", trace.request_id))


async def _until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; raise :class:`DisconnectedError` (cancelling it) if the client goes first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is shutting down this request
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()  # cancels the guarded call: its checks, its upstream call, its stream
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved: the call ended anyway as the client left
    raise DisconnectedError


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _guard_headers(found: GuardReport | None) -> list[tuple[bytes, bytes]]:
    if found is None:
        return []
    return [
        (b"x-guardrail-request-id", found.request_id.encode()),
        (b"x-guardrail-action", found.action.value.encode()),
    ]


def _event(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[bytes, bytes]],
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: ApiError, *, request_id: str | None = None) -> None:
    headers = [(k.encode(), v.encode()) for k, v in error.headers]
    if request_id is not None:
        headers.append((b"x-guardrail-request-id", request_id.encode()))
        if error.type == "guardrail_blocked":
            headers.append((b"x-guardrail-action", b"block"))
    await _send_bytes(send, error.status, error.body(), "application/json", headers)


def _error_response(error: ApiError) -> Response:
    return Response(
        error.body(), error.status, headers=dict(error.headers), media_type="application/json"
    )


async def _healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _not_guarded(request: Request) -> Response:
    return _error_response(
        ApiError(
            501,
            "the Responses API is not guarded by this gateway yet; use /v1/chat/completions",
            "invalid_request_error",
            code="not_implemented",
        )
    )
