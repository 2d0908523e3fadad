"""A minimal keep-alive HTTP/1.1 server in its own process, answering one fixed JSON body.

Used where the fake server must not be the bottleneck or share the measured
client's interpreter lock (the remote-backend throughput benchmark).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


async def _serve(body: bytes, ready: Any, delay_s: float = 0.0) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if delay_s:  # a model's time to answer; requests on other connections overlap
                    await asyncio.sleep(delay_s)
                writer.write(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    ready.put(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _main(body: bytes, ready: Any, delay_s: float) -> None:
    asyncio.run(_serve(body, ready, delay_s))


@contextmanager
def fixed_json_server(body: bytes) -> Iterator[str]:
    """Serve ``body`` to every request from a child process; yields ``http://127.0.0.1:PORT``."""
    with fixed_json_process(body) as (url, _):
        yield url


@contextmanager
def fixed_json_process(body: bytes, delay_s: float = 0.0) -> Iterator[tuple[str, int]]:
    """:func:`fixed_json_server` answering after ``delay_s``; yields its URL and process id."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    process = ctx.Process(target=_main, args=(body, ready, delay_s), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=30)
        assert process.pid is not None
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.join(10)
