"""The gateway's upstream chat-completions client: JSON in, openai's types out.

The gateway forwards a body it already holds as JSON, so it skips what the
``openai`` client does per call for application code (transforming the
parameters through its TypedDicts, building an ``httpx`` request, constructing
the answer field by field): :class:`ChatForwarder` posts the parameters (a
whole answer over :class:`~guardrail.gateway.h1.H1Pool`'s kept-alive
connections, a stream with one aiohttp session per event loop) and validates the
answer (or each streamed chunk) straight from its bytes into ``openai``'s own
``ChatCompletion`` and ``ChatCompletionChunk``, which the guarded flow reads as it reads a wrapped
client's. Upstream failures raise :class:`UpstreamStatusError`,
:class:`UpstreamTimeoutError` or :class:`UpstreamConnectionError`, which
:func:`guardrail.gateway.shapes.error_for` turns into the caller's error.
Connection failures and 408/409/429/5xx answers are retried ``max_retries``
times with a short backoff, as the openai client would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from guardrail.gateway.h1 import H1Pool

__all__ = [
    "ChatForwarder",
    "ChunkStream",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
]

M = TypeVar("M", ChatCompletion, ChatCompletionChunk)

_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
_DONE = b"[DONE]"


class UpstreamStatusError(Exception):
    """The upstream answered with an error status (or an error event mid-stream).

    Shaped like ``openai.APIStatusError`` (``status_code``, ``body``, ``message``,
    ``response.headers``) so the gateway maps both the same way.
    """

    def __init__(self, status_code: int, body: Any, headers: Mapping[str, str]) -> None:
        error = body.get("error", body) if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        self.status_code = status_code
        self.body = body
        self.message = str(message or f"the upstream answered {status_code}")
        self.response = _Answer(headers)
        super().__init__(self.message)


class UpstreamTimeoutError(Exception):
    """The upstream did not answer within the upstream's ``timeout_s``."""


class UpstreamConnectionError(Exception):
    """The upstream could not be reached (or dropped the connection)."""


class _Answer:
    """What :class:`UpstreamStatusError` keeps of the response: its headers."""

    __slots__ = ("headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = {k.lower(): v for k, v in headers.items()}


def _default(value: Any) -> Any:
    # Messages the flow added from an answer (a retry's previous turn) are models.
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_unset=True)
    raise TypeError(f"cannot send {type(value).__name__} upstream")


def parse(kind: type[M], raw: bytes) -> M:
    """An answer from its JSON: validated, or built leniently as the openai client builds it.

    The openai client does not validate answers (servers add and omit fields);
    validation is only the fast path here, and ``construct`` the fallback.
    """
    try:
        return kind.model_validate_json(raw)
    except pydantic.ValidationError:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise UpstreamStatusError(
                502, {"error": {"message": "not a JSON object"}}, {}
            ) from None
        return kind.construct(**data)


def request_body(params: Mapping[str, Any]) -> bytes:
    """The JSON body for ``params``: ``extra_body`` merged in, as the openai client does."""
    body = {k: v for k, v in params.items() if k != "extra_body"}
    extra = params.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return orjson.dumps(body, default=_default)


class ChunkStream:
    """A streamed answer: ``ChatCompletionChunk`` objects from the upstream's SSE events."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._events = self._read()

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        return await self._events.__anext__()

    async def _read(self) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for line in self._response.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event: names
                data = line[5:].strip()
                if data == _DONE:
                    return
                if data.startswith(b'{"error"'):
                    body = orjson.loads(data)
                    raise UpstreamStatusError(502, body, {})
                yield parse(ChatCompletionChunk, data)
        except asyncio.TimeoutError:
            raise UpstreamTimeoutError("the upstream stream stalled") from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"the upstream stream failed: {exc}") from None
        finally:
            self._response.release()

    async def close(self) -> None:
        """Stop reading: the connection is closed, not reused mid-answer."""
        await self._events.aclose()  # type: ignore[attr-defined]
        self._response.close()


class ChatForwarder:
    """Posts chat completions to one upstream; ``create`` is the wrapped client's twin."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        max_retries: int = 0,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._max_retries = max_retries
        self._pool = H1Pool(base_url, timeout_s=timeout_s)
        if any("\r" in v or "\n" in v for v in self._headers.values()):
            raise ValueError("an upstream header value holds a line break")
        self._h1_headers = b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in self._headers.items()
        )
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def _session(self) -> aiohttp.ClientSession:
        # One per event loop: a session is bound to the loop it was made on.
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                json_serialize=None,  # type: ignore[arg-type]
            )
            self._sessions[loop] = session
        return session

    async def create(self, **params: Any) -> ChatCompletion | ChunkStream:
        """``chat.completions.create(**params)`` against the upstream."""
        body = request_body(params)
        attempt = 0
        while True:
            try:
                if params.get("stream"):
                    return await self._post_stream(body)
                return await self._post(body)
            except (UpstreamStatusError, UpstreamConnectionError, UpstreamTimeoutError) as exc:
                status = getattr(exc, "status_code", None)
                if attempt >= self._max_retries or (
                    status is not None and status not in _RETRYABLE
                ):
                    raise
            attempt += 1
            await asyncio.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))

    async def _post(self, body: bytes) -> ChatCompletion:
        request = self._pool.request("/chat/completions", self._h1_headers, body)
        try:
            answer = await self._pool.send(request)
        except (asyncio.TimeoutError, TimeoutError):
            raise UpstreamTimeoutError("the upstream did not answer in time") from None
        except OSError as exc:  # ConnectionError included: refused, dropped, cut
            raise UpstreamConnectionError(f"cannot reach the upstream: {exc}") from None
        if answer.status >= 400:
            raise _status_error(answer.status, answer.body, answer.headers)
        return parse(ChatCompletion, answer.body)

    async def _post_stream(self, body: bytes) -> ChunkStream:
        try:
            response = await self._session().post(self._url, data=body, headers=self._headers)
        except asyncio.TimeoutError:
            raise UpstreamTimeoutError("the upstream did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"cannot reach the upstream: {exc}") from None
        if response.status >= 400:
            try:
                raw = await response.read()
            finally:
                response.release()
            raise _status_error(response.status, raw, response.headers)
        return ChunkStream(response)

    async def close(self) -> None:
        """Close the kept-alive connections and the sessions made on the running loop."""
        self._pool.close()
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            if not session.closed:
                await session.close()


def _status_error(status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = {"error": {"message": raw[:200].decode("utf-8", "replace")}}
    return UpstreamStatusError(status, body, headers)
