"""The upstream's stream as the sync driver reads it: reads on a worker, close from anywhere.

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
from collections.abc import Iterator
from typing import Any


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

    def __init__(self, stream: Any) -> None:
        self._stream = stream
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


def closable(result: Any) -> Any:
    """An upstream call's result, with a stream made safe to close during a read."""
    if hasattr(result, "__next__") and callable(getattr(result, "close", None)):
        return ClosableStream(result)
    return result
