"""The gateway's ASGI app: OpenAI's chat completions and Responses APIs, every call guarded.

``POST /v1/chat/completions`` (:mod:`~guardrail.gateway.chat`) and
``POST /v1/responses`` (:mod:`~guardrail.gateway.responses`) run each request
through the library's own guarded call, sent to the route's upstream (chat by
the :mod:`~guardrail.gateway.forward` client, responses by an
``openai.AsyncOpenAI`` client). The gateway adds only HTTP: keys
(:mod:`~guardrail.gateway.keys`), admission and the audit of refusals
(:mod:`~guardrail.gateway.endpoint`, :mod:`~guardrail.gateway.auditing`), limits
and the drain (:mod:`~guardrail.gateway.inflight`), OpenAI-shaped errors
(:mod:`~guardrail.gateway.shapes`), SSE framing (:mod:`~guardrail.gateway.asgi`)
and metrics. Every request to a guarded endpoint leaves exactly one audit record.

Other routes: ``GET /v1/models`` (the route's upstream's list, filtered by its
``models`` allow-list), ``GET /healthz`` (the process answers), ``GET /readyz``
(every guard's circuit breaker is closed, and no shutdown is under way),
``GET /metrics`` (Prometheus). The rest of ``/v1/responses/`` (stored responses)
answers 501: nothing passes through unguarded. Any other path is a 404. A
guarded API is added to :meth:`Gateway.app`'s route table as
``Route(PATH, self.guarded(MyApi(...)), methods=["POST"])`` (see
:class:`~guardrail.gateway.endpoint.GuardedApi`).

Shutdown (the ASGI lifespan's): :meth:`Gateway.shutdown` drains the requests in
flight (``limits.drain_timeout_s``), then closes the upstream clients and the
guards, flushing and closing their audit logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType

from guardrail.errors import MissingDependencyError

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "starlette", "gateway") from None

from guardrail.audit.keys import AuditKey
from guardrail.audit.workers import worker_sink
from guardrail.classifiers.base import Classifier
from guardrail.gateway.asgi import error_response
from guardrail.gateway.chat import CHAT_PATH, ChatCompletions
from guardrail.gateway.config import GatewayConfig
from guardrail.gateway.endpoint import GuardedApi, GuardedEndpoint
from guardrail.gateway.inflight import InFlight
from guardrail.gateway.keys import KeyRing
from guardrail.gateway.metrics import CONTENT_TYPE, Metrics
from guardrail.gateway.responses import RESPONSES_PATH, ResponsesApi, not_guarded
from guardrail.gateway.routes import GatewayRoute, Upstream, build_upstream
from guardrail.gateway.shapes import ApiError, dump, error_for
from guardrail.guard import Guard
from guardrail.policy import load_policy

__all__ = ["CHAT_PATH", "Gateway", "GatewayRoute", "Upstream", "create_app"]

_ANY = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class Gateway:
    """One gateway process: routes, limits and metrics; :meth:`app` serves it."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        guards: Mapping[str, Guard] | None = None,
        classifier: Classifier | None = None,
        environ: Mapping[str, str] = os.environ,
        per_worker_audit: bool = False,
    ) -> None:
        """Build the guards (unless given, by policy name) and the upstream clients.

        ``classifier`` replaces the guard backend of every policy (a scripted fake
        in tests). Guards built here are closed with the gateway; given ones are not.
        ``per_worker_audit``: this process is one of several workers, and the guards
        built here write their JSONL audit to this worker's own file
        (:func:`~guardrail.audit.workers.worker_sink`).
        """
        self.config = config
        self.metrics = Metrics()
        self.inflight = InFlight(config.limits.max_in_flight, self.metrics)
        given = dict(guards or {})
        self._owned: list[Guard] = []
        self.guards: dict[str, Guard] = {}
        for name, path in config.policies.items():
            if name in given:
                self.guards[name] = given[name]
                continue
            guard = _build_guard(path, classifier, per_worker_audit=per_worker_audit)
            self._owned.append(guard)
            self.guards[name] = guard
        self.upstreams = {
            name: build_upstream(name, upstream, environ)
            for name, upstream in config.upstreams.items()
        }
        self.keys: KeyRing[GatewayRoute] = KeyRing.of(config, self._route, environ)

    def _route(self, name: str, policy: str, upstream: str) -> GatewayRoute:
        guard, up = self.guards[policy], self.upstreams[upstream]
        mask = guard.settings.mask.with_secrets(up.secret)
        return GatewayRoute(name=name, policy=policy, guard=guard, upstream=up, mask=mask)

    def guarded(self, api: GuardedApi) -> GuardedEndpoint:
        """The ASGI endpoint serving ``api`` behind this gateway's keys, limits and audit."""
        return GuardedEndpoint(
            api,
            keys=self.keys,
            unauthenticated=self.guards[self.config.unauthenticated_policy],
            limits=self.config.limits,
            inflight=self.inflight,
            metrics=self.metrics,
        )

    async def shutdown(self) -> None:
        """Drain the requests in flight (``limits.drain_timeout_s``), then :meth:`aclose`.

        Requests arriving meanwhile get 503; those still running at the timeout
        are cancelled, and their guarded calls' records written, before the
        audit logs close.
        """
        cancelled = await self.inflight.drain(self.config.limits.drain_timeout_s)
        if cancelled:
            import structlog  # bound on use: the application configures structlog first

            structlog.get_logger("guardrail").warning(
                "gateway_drain_timeout",
                cancelled=cancelled,
                drain_timeout_s=self.config.limits.drain_timeout_s,
            )
        await self.aclose()

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
                await self.shutdown()

        async def not_found(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 404
            message = f"no route for {request.method} {request.url.path}"
            if status == 405:
                message = f"{request.method} is not allowed on {request.url.path}"
            return error_response(ApiError(status, message, "invalid_request_error"))

        chat = self.guarded(ChatCompletions(self.metrics))
        responses = self.guarded(ResponsesApi(self.metrics))
        routes = [
            Route(CHAT_PATH, chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route(RESPONSES_PATH, responses, methods=["POST"]),
            Route(RESPONSES_PATH + "/{rest:path}", not_guarded, methods=_ANY),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
        ]
        app = _GatewayApp(
            routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found}
        )
        app.guarded = {CHAT_PATH: chat, RESPONSES_PATH: responses}
        app.state.gateway = self
        return app

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
            return error_response(error)
        return Response(dump({"object": "list", "data": data}), media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: 200 when every guard's breaker is closed; 503 then, or when draining."""
        states = self._breaker_states()
        ready = all(state in (None, "closed") for state in states.values())
        status = "ready" if ready else "unavailable"
        if self.inflight.draining:
            ready, status = False, "draining"
        body = {"status": status, "breakers": states}
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


class _GatewayApp(Starlette):
    """Starlette, with the guarded POST endpoints served without its middleware and router.

    A guarded endpoint answers every request itself (its errors included), so the
    error middleware and the route table only cost time on the gateway's hot path.
    """

    guarded: Mapping[str, GuardedEndpoint] = MappingProxyType({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.guarded.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    config: GatewayConfig,
    *,
    guards: Mapping[str, Guard] | None = None,
    classifier: Classifier | None = None,
    environ: Mapping[str, str] = os.environ,
    per_worker_audit: bool = False,
) -> Starlette:
    """The gateway's ASGI app for ``config`` (see :class:`Gateway` for the arguments).

    ``app.state.gateway`` is the :class:`Gateway` (metrics, guards, routes).
    """
    gateway = Gateway(
        config,
        guards=guards,
        classifier=classifier,
        environ=environ,
        per_worker_audit=per_worker_audit,
    )
    return gateway.app()


def _build_guard(path: str, classifier: Classifier | None, *, per_worker_audit: bool) -> Guard:
    if not per_worker_audit:
        return Guard(path, classifier=classifier)
    policy = load_policy(path)
    audit = policy.audit
    key = AuditKey.from_env(audit.hmac_key_env) if audit.hmac_key_env else None
    return Guard(policy, classifier=classifier, sink=worker_sink(audit, key=key))


async def _healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
