"""The async transport: aiohttp sessions, one per event loop, created inside it.

httpx's async pool slows down sharply with many concurrent connections
(encode/httpx#3215); aiohttp's keeps its throughput, so the async path of the
remote backends posts through :class:`AioSessions`. A session (and its
connector, holding up to ``max_connections``) belongs to the loop that created
it: each loop that posts gets its own, created lazily on first use inside it.
:meth:`AioSessions.aclose` closes them: the running loop's is awaited, a session
of another loop is closed there (scheduled on it when it runs elsewhere, right
away when it is idle or already closed, since nothing is left to wait for).

aiohttp is imported when this module is, which only the async path does: a
sync-only program never loads it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.payload import BytesPayload
from yarl import URL

from guardrail.http.errors import Reply, TransportErrors

__all__ = ["AIOHTTP_ERRORS", "AioSessions"]

AIOHTTP_ERRORS = TransportErrors(
    # aiohttp's ServerTimeoutError (connect, socket read) is an asyncio.TimeoutError,
    # as is the total timeout of a request
    timeouts=(asyncio.TimeoutError,),
    # ClientError: ServerDisconnectedError, ClientPayloadError (a body cut short),
    # ClientConnectorError, ClientOSError...; a bare reset may escape unwrapped
    failures=(aiohttp.ClientError, ConnectionError),
)
"""aiohttp's timeouts and failures (for :func:`~guardrail.http.errors.transport_errors`)."""


class AioSessions:
    """POST bytes to one URL through a pooled aiohttp session per event loop.

    ``session`` (injected) is used as it is, from its own loop, and never closed
    here. ``headers`` are sent with every request.
    """

    errors = AIOHTTP_ERRORS
    """The exceptions :meth:`post` raises, for :func:`~guardrail.http.errors.transport_errors`."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        max_connections: int,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._url = URL(url, encoded=True)
        self._headers = dict(headers) or None
        self._max_connections = max_connections
        self._injected = session
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._lock = threading.Lock()

    def _session(self) -> aiohttp.ClientSession:
        if self._injected is not None:
            return self._injected
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._open(loop)
        return session

    def _open(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        session = aiohttp.ClientSession(
            connector=connector,
            # the per-request timeout is passed with each request; no cookies kept
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            json_serialize=_compact_json,
        )
        with self._lock:
            self._sessions[loop] = session
            gone = [(old, s) for old, s in self._sessions.items() if old.is_closed()]
            for old, _ in gone:
                del self._sessions[old]
        for old, stale in gone:  # loops that ended without aclose(): release their pools
            _close_elsewhere(old, stale)
        return session

    async def post(self, body: Mapping[str, Any], *, timeout: float) -> Reply:
        """POST ``body`` as JSON; the whole response, whatever its status.

        ``timeout`` bounds the whole request (waiting for a pooled connection,
        sending, reading the body). Raises aiohttp's exceptions (see
        :data:`AIOHTTP_ERRORS`).
        """
        async with self._session().post(
            self._url,
            data=BytesPayload(_encode(body), content_type="application/json"),
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            content = await response.read()
            return Reply(response.status, response.headers, content, response.charset)

    async def aclose(self) -> None:
        """Close the sessions created here (the running loop's is awaited)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, session in sessions.items():
            if loop is running:
                await session.close()
            else:
                _close_elsewhere(loop, session)

    def close(self) -> None:
        """Close the sessions created here without awaiting (from sync code)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            _close_elsewhere(loop, session)


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _encode(body: Mapping[str, Any]) -> bytes:
    """``body`` as compact UTF-8 JSON, through orjson (the JSON of :func:`_compact_json`)."""
    try:
        return orjson.dumps(body)
    except TypeError:  # what orjson refuses (non-str keys, huge ints) fails or passes as before
        return _compact_json(body).encode()


def _close_elsewhere(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
    """Close ``session``, which belongs to ``loop``, from outside a coroutine of that loop."""
    if session.closed:
        return
    if loop.is_running():
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if not here:  # running in another thread: close it there
            asyncio.run_coroutine_threadsafe(session.close(), loop)
            return
    # A closed loop, an idle one, or this one from sync code: closing the session
    # closes its connections at once and marks it closed; only waiting for the
    # sockets to finish closing is left, which this loop does by itself (a closed
    # loop's sockets go with the garbage, as with any pool left on a finished loop).
    _run_without_waiting(session.close())


def _run_without_waiting(close: Coroutine[Any, Any, None]) -> None:
    """Run ``close`` up to its first wait, and leave the rest to its loop."""
    try:
        close.send(None)
    except StopIteration:
        return
    close.close()
