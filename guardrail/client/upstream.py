"""The upstream as the drivers call it: errors masked, streams safe to close during a read.

Every error the upstream raises (its call, or a read of its stream) leaves here
with the call's secrets masked in place (:func:`~guardrail.secrets.mask_exception`):
an upstream that echoes the client's API key in a 401 body never puts it into
the caller's exception, the audit record or a log.

The sync driver reads the next chunk on a worker thread while the caller's
thread checks the previous one; when a check cuts the stream, the caller closes
it while that read may still be blocked on the socket. Closing an HTTP response
from another thread does not wake a blocked read (it would wait for the
upstream's next bytes, or the client's read timeout: 600 s by default), so
:class:`ClosableStream` shuts the connection's socket down first, which ends the
read at once. This is the one place a stream is closed with respect to a
running read.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from guardrail.secrets import NO_SECRETS, Masker, mask_exception


def _shutdown_socket(stream: Any) -> None:
    """Shut down the socket under an ``openai.Stream`` (httpx/httpcore), if it can be found."""
    response = getattr(stream, "response", None)
    extensions = getattr(response, "extensions", None)
    network = extensions.get("network_stream") if isinstance(extensions, dict) else None
    get_info = getattr(network, "get_extra_info", None)
    sock = get_info("socket") if callable(get_info) else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class ClosableStream(Iterator[Any]):
    """Iterates an upstream stream; :meth:`close` also ends a read running on another thread."""

    def __init__(self, stream: Any, mask: Masker = NO_SECRETS) -> None:
        self._stream = stream
        self._mask = mask
        self._chunks = iter(stream)
        self._lock = threading.Lock()
        self._reading = False
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._closed:
                raise StopIteration
            self._reading = True
        try:
            return next(self._chunks)
        except StopIteration:
            raise
        except Exception as exc:
            mask_exception(exc, self._mask)
            raise
        finally:
            with self._lock:
                self._reading = False

    def close(self) -> None:
        """Close the stream; a read blocked on it ends now (the connection is not reused)."""
        with self._lock:
            interrupt = self._reading
            self._closed = True
        if interrupt:
            _shutdown_socket(self._stream)
        self._stream.close()


class MaskedAsyncStream(AsyncIterator[Any]):
    """An upstream async stream whose read errors leave with the call's secrets masked."""

    def __init__(self, stream: Any, mask: Masker) -> None:
        self._stream = stream
        self._mask = mask

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            mask_exception(exc, self._mask)
            raise

    async def close(self) -> None:
        """Close the upstream stream."""
        await self._stream.close()


def sync_upstream(create: Callable[..., Any], mask: Masker) -> Callable[[dict[str, Any]], Any]:
    """``create(**params)`` for the sync driver: errors masked, a stream made closable."""

    def call(params: dict[str, Any]) -> Any:
        try:
            result = create(**params)
        except Exception as exc:
            mask_exception(exc, mask)
            raise
        return closable(result, mask)

    return call


def closable(result: Any, mask: Masker = NO_SECRETS) -> Any:
    """An upstream call's result, with a stream made safe to close during a read."""
    # On the type: a pydantic completion would answer through its slow __getattr__.
    if hasattr(type(result), "__next__") and callable(getattr(result, "close", None)):
        return ClosableStream(result, mask)
    return result


def async_upstream(
    create: Callable[..., Awaitable[Any]], mask: Masker
) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """``await create(**params)`` for the async driver: errors masked, also a stream's."""

    async def call(params: dict[str, Any]) -> Any:
        try:
            result = await create(**params)
        except Exception as exc:
            mask_exception(exc, mask)
            raise
        if hasattr(type(result), "__anext__") and callable(getattr(result, "close", None)):
            return MaskedAsyncStream(result, mask)
        return result

    return call
