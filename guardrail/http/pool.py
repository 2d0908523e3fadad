"""The pooled clients a remote backend posts through, and the lifecycle it exposes.

:class:`PooledHTTP` holds the endpoint, the credentials (never shown) and two
transports: httpx for the sync path, aiohttp for the async one
(:class:`~guardrail.http.aio.AioSessions`, one session per event loop). Both
return an :class:`~guardrail.http.errors.HTTPResponse` and map their failures
through :func:`~guardrail.http.errors.transport_errors`, so everything above the
request (status checks, parsing, the retry policy) is written once.
:class:`HTTPBackend` is the lifecycle a backend holding one exposes.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from guardrail.errors import RemoteGuardTimeoutError
from guardrail.http.errors import (
    HTTPResponse,
    mapped_transport_error,
    public_url,
    raise_for_status,
    transport_errors,
)

if TYPE_CHECKING:
    import aiohttp

    from guardrail.http.aio import AioSessions

__all__ = ["HTTPBackend", "PooledHTTP"]

_B = TypeVar("_B", bound="HTTPBackend")


def _credentials(url: httpx.URL, api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header: the URL's user-info (as httpx sends it), else the key."""
    if url.username or url.password:
        token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class PooledHTTP:
    """POST JSON to one URL through pooled clients: httpx when sync, aiohttp when async.

    ``api_key`` (else the ``api_key_env`` environment variable, if named) is sent as
    a bearer token and shown nowhere (not in ``repr``, masked in error snippets);
    credentials in the URL itself are sent as basic auth instead, as httpx does.
    ``public_url`` is the URL without credentials or query, for messages.
    Transport failures raise :class:`RemoteGuardTimeoutError` /
    :class:`GuardConnectionError` naming ``server`` (e.g. ``"guard server"``).

    Injected clients are used as they are and never closed here: ``http_client``
    (httpx) for the sync path, ``async_http_client`` for the async one (an
    ``aiohttp.ClientSession``, used from its own loop, or an ``httpx.AsyncClient``).
    Otherwise the sync client, and one aiohttp session per event loop, are created
    on first use, hold up to ``max_connections`` each, and are closed by
    :meth:`close` / :meth:`aclose`.
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
        async_http_client: httpx.AsyncClient | aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.public_url = public_url(url)
        self.server = server
        self.timeout = timeout
        self.api_key = api_key or (os.environ.get(api_key_env) if api_key_env else None) or None
        self._headers = _credentials(url, self.api_key)
        # the credentials travel in the header: the URL sent carries none
        self._send_url = url.copy_with(username=None, password=None)
        self._max_connections = max_connections
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._injected_client = http_client
        self._injected_httpx: httpx.AsyncClient | None = None
        self._injected_session: aiohttp.ClientSession | None = None
        if isinstance(async_http_client, httpx.AsyncClient):
            self._injected_httpx = async_http_client
        else:
            self._injected_session = async_http_client
        self._client: httpx.Client | None = None
        self._aio: AioSessions | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PooledHTTP({self.public_url!r})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API key sent, if any: what error messages and records must never show."""
        return (self.api_key,) if self.api_key else ()

    def raise_for_status(self, response: HTTPResponse) -> None:
        """:func:`~guardrail.http.errors.raise_for_status` for this server, the key masked."""
        raise_for_status(response, server=self.server, url=self.public_url, secret=self.api_key)

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

    # -------------------------------------------------------------------- sync

    def _sync_client(self) -> httpx.Client:
        if self._injected_client is not None:
            return self._injected_client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(limits=self._limits)
            return self._client

    def post(self, body: Mapping[str, Any], *, deadline: float | None = None) -> HTTPResponse:
        """POST ``body`` as JSON; the response whatever its status.

        With a ``deadline`` (``time.monotonic()``) the request gives up there.
        """
        timeout = self._timeout_until(deadline)
        with transport_errors(self.server, self.public_url, timeout):
            return self._sync_client().post(
                self._send_url, json=body, headers=self._headers, timeout=timeout
            )

    # ------------------------------------------------------------------- async

    def _sessions(self) -> AioSessions:
        with self._lock:
            if self._aio is None:
                from guardrail.http.aio import AioSessions  # loads aiohttp

                self._aio = AioSessions(
                    str(self._send_url),
                    headers=self._headers,
                    max_connections=self._max_connections,
                    session=self._injected_session,
                )
            return self._aio

    async def apost(
        self, body: Mapping[str, Any], *, deadline: float | None = None
    ) -> HTTPResponse:
        """Async twin of :meth:`post` (through aiohttp unless an httpx client was injected)."""
        timeout = self._timeout_until(deadline)
        if self._injected_httpx is not None:
            with transport_errors(self.server, self.public_url, timeout):
                return await self._injected_httpx.post(
                    self._send_url, json=body, headers=self._headers, timeout=timeout
                )
        aio = self._aio or self._sessions()
        # transport_errors written out: no context-manager generator per request
        try:
            return await aio.post(body, timeout=timeout)
        except Exception as exc:
            mapped = mapped_transport_error(exc, self.server, self.public_url, timeout, aio.errors)
            if mapped is None:
                raise
            raise mapped from exc

    # --------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the sync client created here, and async sessions of loops not running here.

        Injected clients are left open.
        """
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._aio is not None:
            self._aio.close()

    async def aclose(self) -> None:
        """Close the clients created here, async and sync (injected ones stay open)."""
        if self._aio is not None:
            await self._aio.aclose()
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
        """Close the HTTP clients created here from sync code (injected ones stay open)."""
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
