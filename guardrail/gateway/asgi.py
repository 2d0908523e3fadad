"""Raw ASGI plumbing of the gateway: headers, bounded body reads, disconnects, sending.

The guarded endpoints are raw ASGI callables (no Starlette ``Request``), so that
a request body is read once, within its limit, and a client that goes away is
noticed while its call runs (:func:`until_disconnect`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from typing import Any, TypeVar

from guardrail.errors import MissingDependencyError

try:
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "starlette", "gateway") from None

from guardrail.gateway.shapes import ApiError

__all__ = [
    "ABANDON_WAIT_S",
    "DisconnectedError",
    "error_response",
    "event",
    "header",
    "read_body",
    "send_bytes",
    "send_error",
    "send_stream",
    "until_disconnect",
]

T = TypeVar("T")

ABANDON_WAIT_S = 10.0
"""How long a request cancelled by the server waits for its cancelled call to end
(cancelling its checks, closing the upstream connection, writing its record)."""


class DisconnectedError(Exception):
    """The client went away before its answer was sent."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes), or ``None``."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body: 413 past ``limit`` bytes, or the client left first."""
    declared = header(scope, b"content-length")
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


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; raise :class:`DisconnectedError` (cancelling it) if the client goes first.

    When the server cancels the request (a shutdown past its drain timeout), the
    work is cancelled and awaited (up to :data:`ABANDON_WAIT_S`) before the
    cancellation goes on, so an abandoned call's record is written before the
    audit logs are closed.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait((task,), timeout=ABANDON_WAIT_S)
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


def event(data: bytes) -> dict[str, Any]:
    """A body message that more messages follow (one SSE event)."""
    return {"type": "http.response.body", "body": data, "more_body": True}


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send a whole response."""
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


async def send_error(send: Send, error: ApiError, *, request_id: str | None = None) -> None:
    """Send an OpenAI-shaped error (with the call's request id, when it has one)."""
    headers = [(k.encode(), v.encode()) for k, v in error.headers]
    if request_id is not None:
        headers.append((b"x-guardrail-request-id", request_id.encode()))
        if error.type == "guardrail_blocked":
            headers.append((b"x-guardrail-action", b"block"))
    await send_bytes(send, error.status, error.body(), "application/json", headers)


async def send_stream(
    receive: Receive,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    frames: AsyncGenerator[bytes, None],
) -> None:
    """Send a 200 server-sent-events response: ``headers``, then each of ``frames`` as it comes.

    Raises :class:`DisconnectedError` if the client goes first (``frames`` is closed).
    """
    start = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),  # a proxy in front must not buffer the stream
        *headers,
    ]

    async def pump() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": start})
        async with aclosing(frames):
            async for frame in frames:
                await send(event(frame))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    await until_disconnect(receive, pump())


def error_response(error: ApiError) -> Response:
    """An OpenAI-shaped error as a Starlette response (for the plain routes)."""
    return Response(
        error.body(), error.status, headers=dict(error.headers), media_type="application/json"
    )
