"""HTTP plumbing shared by the remote backends (guard server and reward server).

:class:`~guardrail.classifiers.remote.RemoteQwen3Guard` and
:class:`~guardrail.reward.remote.RemoteRewardScorer` each hold a :class:`PooledHTTP`
and own only their request bodies and response parsing. This module owns the rest:

- :class:`PooledHTTP`: the lazily created, pooled sync and loop-aware async httpx
  clients (injected ones are used as they are and never closed), the bearer token
  (never shown), the credential-free URL for messages, and transport-error mapping;
- :class:`HTTPBackend`: the lifecycle a backend holding a :class:`PooledHTTP`
  exposes (``close``/``aclose``, the sync and async context managers,
  ``timeout``, ``model_id``);
- the retry policy (:func:`retry_policy`): :data:`RETRYABLE_STATUS`, timeouts and
  connection failures, jittered backoff honouring a short ``Retry-After``, and no
  attempt started (nor backoff slept into) past the check's deadline
  (:func:`retrying_until`);
- error reporting helpers (:func:`raise_for_status`, :func:`error_snippet`,
  :func:`public_url`, :func:`transport_errors`), worded for the caller's server.

Fanning a batch out over concurrent requests is
:mod:`guardrail.classifiers.batching`'s (:func:`~guardrail.classifiers.batching.run_batch`).

Failures are :class:`~guardrail.errors.RemoteGuardError` subclasses. Only the
remote backends import this module, so ``import guardrail`` does not import httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from guardrail.errors import (
    ConfigurationError,
    GuardConnectionError,
    GuardHTTPError,
    RemoteGuardTimeoutError,
)
from guardrail.secrets import Masker

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_STATUS",
    "HTTPBackend",
    "PooledHTTP",
    "RetryWait",
    "StopAtDeadline",
    "error_snippet",
    "is_retryable",
    "parse_base_url",
    "public_url",
    "raise_for_status",
    "retry_policy",
    "retrying_until",
    "transport_errors",
    "wait_with_retry_after",
]

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt; anything else (400, 401, 404, 422...) is final."""

MAX_RETRY_AFTER_S = 5.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

RetryWait = Callable[[RetryCallState], float]
"""A tenacity wait: seconds to sleep before the next attempt."""

_SNIPPET_CHARS = 200
_B = TypeVar("_B", bound="HTTPBackend")
_R = TypeVar("_R", Retrying, AsyncRetrying)


# --------------------------------------------------------------------------- urls


def public_url(url: httpx.URL) -> str:
    """Drop credentials and query from a URL shown in messages."""
    return str(url.copy_with(username=None, password=None, query=None))


def parse_base_url(base_url: str) -> httpx.URL:
    """Parse a backend's ``base_url``; :class:`ConfigurationError` unless it is http(s)."""
    try:
        root = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"invalid base_url: {exc}") from None
    if root.scheme not in ("http", "https") or not root.host:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {public_url(root)!r}")
    return root


# ------------------------------------------------------------------------- errors


def error_snippet(response: httpx.Response, secret: str | None) -> str:
    """Shorten the server's error message to one line (the body only, never headers).

    ``secret`` (the key the request carried) and any credential the body echoes
    are masked (:class:`~guardrail.secrets.Masker`) before the line is cut short.
    """
    text = response.text
    message: Any = None
    with contextlib.suppress(ValueError):
        data = response.json()
        if isinstance(data, Mapping):
            error = data.get("error", data)
            message = error.get("message") if isinstance(error, Mapping) else error
            message = message or data.get("detail") or data.get("message")
    # A proxy could echo the request back: mask before cutting, so no prefix of a key survives.
    snippet = Masker([secret])(" ".join(str(message or text).split()))
    return snippet if len(snippet) <= _SNIPPET_CHARS else snippet[:_SNIPPET_CHARS] + "..."


def raise_for_status(
    response: httpx.Response, *, server: str, url: str, secret: str | None
) -> None:
    """Raise :class:`GuardHTTPError` for an error status, saying which ``server`` answered.

    Its ``__cause__`` is an ``httpx.HTTPStatusError`` carrying the response (the
    retry policy reads ``Retry-After`` there).
    """
    if response.is_success:
        return
    code = response.status_code
    # built here rather than by httpx's raise_for_status(), whose message shows the
    # full URL, credentials included, in tracebacks
    cause = httpx.HTTPStatusError(f"HTTP {code}", request=response.request, response=response)
    raise GuardHTTPError(
        f"{server} {url} answered HTTP {code}: {error_snippet(response, secret)}",
        url=url,
        status_code=code,
    ) from cause


@contextlib.contextmanager
def transport_errors(server: str, url: str, timeout: float) -> Iterator[None]:
    """Map httpx timeouts and transport failures onto the guard's error types."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RemoteGuardTimeoutError(
            f"{server} {url} did not answer within {timeout:g} s ({type(exc).__name__})",
            url=url,
        ) from exc
    except httpx.TransportError as exc:
        raise GuardConnectionError(
            f"could not reach {server} {url}: {type(exc).__name__}: {exc}", url=url
        ) from exc


# ------------------------------------------------------------------- retry policy


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection failures and :data:`RETRYABLE_STATUS` are worth retrying."""
    if isinstance(exc, GuardHTTPError):
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, (RemoteGuardTimeoutError, GuardConnectionError))


def _retry_after_s(exc: BaseException | None) -> float:
    """Read the numeric ``Retry-After`` of a failed attempt, capped; 0 without one."""
    cause = exc.__cause__ if exc is not None else None
    if not isinstance(cause, httpx.HTTPStatusError):
        return 0.0
    try:
        seconds = float(cause.response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: rely on the backoff
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else 0.0


def wait_with_retry_after(backoff: RetryWait) -> RetryWait:
    """Wait as ``backoff`` says, or longer if the server asked (up to the cap)."""

    def wait_for(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return max(backoff(state), _retry_after_s(exc))

    return wait_for


def retry_policy(max_retries: int, wait: RetryWait | None = None) -> tuple[Retrying, AsyncRetrying]:
    """One policy, two drivers: retry what :func:`is_retryable` accepts, then re-raise.

    ``wait`` defaults to jittered exponential backoff (0.1 s up to 2 s). Run each
    call on a ``.copy()``: tenacity keeps its iteration state per thread, which
    concurrent asyncio tasks would share.
    """
    policy: dict[str, Any] = {
        "stop": stop_after_attempt(max_retries + 1),
        "wait": wait_with_retry_after(wait or wait_random_exponential(multiplier=0.1, max=2)),
        "retry": retry_if_exception(is_retryable),
        "reraise": True,
    }
    return Retrying(**policy), AsyncRetrying(**policy)


class StopAtDeadline(stop_base):
    """A tenacity stop: as ``stop`` says, and at ``deadline`` (``time.monotonic()``).

    Checked after a failed attempt, once the backoff is known (tenacity >= 8.3):
    a retry whose backoff would end past the deadline is not waited for either.
    """

    def __init__(self, deadline: float, stop: Callable[[RetryCallState], bool]) -> None:
        self.deadline = deadline
        self.stop = stop

    def __call__(self, retry_state: RetryCallState) -> bool:
        """Whether to give up: ``stop`` says so, or the deadline passes before the retry."""
        # tenacity < 8.3 checks the stop before the wait and has no upcoming_sleep:
        # there the request itself refuses to start past the deadline.
        sleep = float(getattr(retry_state, "upcoming_sleep", 0.0) or 0.0)
        return self.stop(retry_state) or time.monotonic() + sleep >= self.deadline


def retrying_until(policy: _R, deadline: float | None) -> _R:
    """A copy of ``policy`` for one call, which also stops at ``deadline`` (if any).

    The deadline is the running check's (:mod:`guardrail.deadline`): work nobody
    waits for any more is not retried, even on a worker thread still running an
    abandoned check.
    """
    if deadline is None:
        return policy.copy()
    return policy.copy(stop=StopAtDeadline(deadline, policy.stop))


# ------------------------------------------------------------------------ clients


class PooledHTTP:
    """POST JSON to one URL through pooled httpx clients, sync or async.

    ``api_key`` (else the ``api_key_env`` environment variable, if named) is sent as
    a bearer token and shown nowhere (not in ``repr``, masked in error snippets);
    ``public_url`` is the URL without credentials or query, for messages.
    Transport failures raise :class:`RemoteGuardTimeoutError` /
    :class:`GuardConnectionError` naming ``server`` (e.g. ``"guard server"``).
    Injected clients are used as they are and never closed here; otherwise one
    client per flavour, holding up to ``max_connections``, is created on first use
    and closed by :meth:`close` / :meth:`aclose`. A new event loop gets a new async
    client.
    """

    def __init__(
        self,
        url: httpx.URL,
        *,
        server: str,
        timeout: float,
        max_connections: int,
        api_key: str | None = None,
        api_key_env: str | None = None,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.public_url = public_url(url)
        self.server = server
        self.timeout = timeout
        self.api_key = api_key or (os.environ.get(api_key_env) if api_key_env else None) or None
        self._headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._injected_client = http_client
        self._injected_aclient = async_http_client
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PooledHTTP({self.public_url!r})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API key sent, if any: what error messages and records must never show."""
        return (self.api_key,) if self.api_key else ()

    def raise_for_status(self, response: httpx.Response) -> None:
        """:func:`raise_for_status` for this server, the API key masked."""
        raise_for_status(response, server=self.server, url=self.public_url, secret=self.api_key)

    def _sync_client(self) -> httpx.Client:
        if self._injected_client is not None:
            return self._injected_client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(limits=self._limits)
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        if self._injected_aclient is not None:
            return self._injected_aclient
        # Pooled connections belong to the loop that opened them: a new loop (e.g.
        # one asyncio.run() per call) gets a new client.
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient_loop is not loop:
            self._aclient = httpx.AsyncClient(limits=self._limits)
            self._aclient_loop = loop
        return self._aclient

    def _timeout_until(self, deadline: float | None) -> float:
        """The request timeout, cut to what is left before ``deadline``."""
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise RemoteGuardTimeoutError(
                f"{self.server} {self.public_url}: the check's deadline passed before "
                "the request was sent",
                url=self.public_url,
            )
        return min(self.timeout, left)

    def post(self, body: Mapping[str, Any], *, deadline: float | None = None) -> httpx.Response:
        """POST ``body`` as JSON; the response whatever its status.

        With a ``deadline`` (``time.monotonic()``) the request gives up there.
        """
        timeout = self._timeout_until(deadline)
        with transport_errors(self.server, self.public_url, timeout):
            return self._sync_client().post(
                self.url, json=body, headers=self._headers, timeout=timeout
            )

    async def apost(
        self, body: Mapping[str, Any], *, deadline: float | None = None
    ) -> httpx.Response:
        """Async twin of :meth:`post`."""
        timeout = self._timeout_until(deadline)
        with transport_errors(self.server, self.public_url, timeout):
            return await self._async_client().post(
                self.url, json=body, headers=self._headers, timeout=timeout
            )

    def close(self) -> None:
        """Close the sync client created here (an injected one is left open)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the clients created here, async and sync (injected ones stay open)."""
        client, self._aclient, self._aclient_loop = self._aclient, None, None
        if client is not None:
            await client.aclose()
        self.close()


class HTTPBackend:
    """What a backend calling a served ``model`` through ``self._http`` exposes.

    A mixin with no state of its own: the backend composes the :class:`PooledHTTP`
    and sets ``model``; these members delegate to them.
    """

    model: str
    _http: PooledHTTP

    @property
    def model_id(self) -> str:
        """The served model name sent in every request."""
        return self.model

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API key this backend sends (:class:`~guardrail.secrets.HasSecrets`)."""
        return self._http.secrets

    @property
    def timeout(self) -> float:
        """Seconds each request may take (per attempt)."""
        return self._http.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._http.timeout = seconds

    def close(self) -> None:
        """Close the sync HTTP client created here (an injected one is left open)."""
        self._http.close()

    async def aclose(self) -> None:
        """Close the HTTP clients created here, async and sync (injected ones stay open)."""
        await self._http.aclose()

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _B) -> _B:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
