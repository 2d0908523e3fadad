"""A minimal keep-alive HTTP/1.1 client for whole JSON answers (httptools' parser).

The gateway's upstream call posts one JSON body and reads one whole answer.
aiohttp's general client costs several times the CPU of that exchange per
request (its request and response objects, header multidicts, timers and
traces); :class:`H1Pool` does only the exchange: one write, httptools' C parser
on what comes back, connections kept alive per event loop. Streamed answers still
go through aiohttp (:mod:`~guardrail.gateway.forward`).

Failures are the built-in ones: :class:`ConnectionError` (or another ``OSError``)
when the upstream cannot be reached or drops or cuts its answer, and
:class:`TimeoutError` when it does not connect or goes silent for ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast
from urllib.parse import urlsplit

from guardrail.errors import MissingDependencyError

try:
    import httptools
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "httptools", "gateway") from None

__all__ = ["H1Answer", "H1Pool"]

_IDLE_KEPT = 256
"""Idle connections kept per event loop; more are closed as they come back."""


class H1Answer:
    """A whole answer: status, headers (lower-case names) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[H1Answer] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._received = False
        self._heard = False  # since the silence timer was last armed
        self._until_close = False  # an answer with no length: its body ends with the connection
        self._timer: asyncio.TimerHandle | None = None
        self.reusable = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        self._received = self._heard = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"the upstream answer is not HTTP: {exc}"))

    def eof_received(self) -> bool:
        self.reusable = False
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._until_close and exc is None:
            self._complete()
            return
        cut = "dropped the connection" if not self._received else "cut its answer"
        self._fail(ConnectionError(f"the upstream {cut}"))

    # -- httptools callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        chunked = "chunked" in self._headers.get("transfer-encoding", "").lower()
        self._until_close = not chunked and "content-length" not in self._headers

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._until_close = False
        self.reusable = self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        answer = H1Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # -- the exchange -------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    @property
    def fresh(self) -> bool:
        """Whether nothing of the current answer has arrived yet."""
        return not self._received

    async def exchange(self, request: bytes, timeout_s: float) -> H1Answer:
        """Send ``request``, wait for the whole answer (silence past ``timeout_s``: timeout)."""
        assert self.transport is not None
        self._headers, self._body, self._received = {}, [], False
        self.reusable = False  # until the answer completes on a kept-alive connection
        waiter: asyncio.Future[H1Answer] = self._loop.create_future()
        self._waiter = waiter
        self._heard = False
        self._timer = self._loop.call_later(timeout_s, self._silence, timeout_s)
        self.transport.write(request)
        try:
            return await waiter
        finally:
            self._timer.cancel()

    def _silence(self, timeout_s: float) -> None:
        # Armed per request rather than per read: a read only marks that the upstream spoke.
        if self._waiter is None:
            return
        if self._heard:
            self._heard = False
            self._timer = self._loop.call_later(timeout_s, self._silence, timeout_s)
            return
        self._fail(TimeoutError("the upstream did not answer in time"))

    def close(self) -> None:
        """Close the connection."""
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class H1Pool:
    """Keep-alive connections to one origin, one pool per event loop."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        """``base_url``: ``http(s)://host[:port][/prefix]``; requests name paths under it."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        host = parts.netloc.rsplit("@", 1)[-1]
        self._host_header = host.encode("idna" if not host.isascii() else "ascii")
        self._timeout_s = timeout_s
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._https else None
        self._idle: dict[asyncio.AbstractEventLoop, list[_Connection]] = {}

    def request(self, path: str, headers: bytes, body: bytes) -> bytes:
        """The bytes of a POST of ``body`` to ``path`` (``headers``: CRLF-ended lines)."""
        return b"".join(
            (
                b"POST ",
                (self._prefix + path).encode(),
                b" HTTP/1.1\r\nhost: ",
                self._host_header,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
                headers,
                b"\r\n",
                body,
            )
        )

    async def send(self, request: bytes) -> H1Answer:
        """Send a request made by :meth:`request`; the whole answer.

        A kept-alive connection the upstream closed before answering anything is
        replaced by a new one once (the request never reached a live server).
        """
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(loop, [])
        while idle:
            connection = idle.pop()
            if connection.reusable:
                try:
                    return await self._on(connection, request, idle)
                except ConnectionError:
                    if not connection.fresh:
                        raise
            # closed while idle, or closed on this request before answering: a new one
        return await self._on(await self._connect(loop), request, idle)

    async def _on(
        self, connection: _Connection, request: bytes, idle: list[_Connection]
    ) -> H1Answer:
        try:
            answer = await connection.exchange(request, self._timeout_s)
        except BaseException:
            connection.close()  # mid-answer, failed or cancelled: never reused
            raise
        if connection.reusable and len(idle) < _IDLE_KEPT:
            idle.append(connection)
        else:
            connection.close()
        return answer

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._https else None,
                ),
                self._timeout_s,
            )
        except asyncio.TimeoutError:
            raise TimeoutError("the upstream did not accept a connection in time") from None
        return connection

    def close(self) -> None:
        """Close every idle connection (those in use close when their request ends)."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
