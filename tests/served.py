"""An ASGI app served by uvicorn on 127.0.0.1 in a thread, for the gateway tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["serving"]


@contextmanager
def serving(app: Any, *, drain_s: float | None = None) -> Iterator[tuple[str, uvicorn.Server]]:
    """uvicorn on a free 127.0.0.1 port in a thread; yields its URL and the server.

    ``drain_s`` is uvicorn's ``timeout_graceful_shutdown``, as ``guardrail serve`` sets it
    from ``limits.drain_timeout_s``. Leaving the block stops the server (bounded).
    """
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (a socket
    # made with proto 0 stalls each two-write response on the client's delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=drain_s,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the gateway did not start"
        assert time.monotonic() < deadline, "the gateway did not start within 15 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the gateway did not stop within 20 s"
