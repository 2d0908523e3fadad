"""The gateway's HTTP/1.1 upstream client against scripted raw servers: framing, reuse, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from guardrail.gateway.h1 import H1Pool

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
Script = Callable[[int, int, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A server running ``script(connection, request, writer)`` for each request it reads.

    Yields its URL and the connection number of every request, in order.
    """
    seen: list[int] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number, request = connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                request += 1
                seen.append(number)
                await script(number, request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/v1", seen


async def post(pool: H1Pool, body: bytes = b"{}") -> tuple[int, bytes]:
    answer = await pool.send(pool.request("/chat/completions", b"x-test: 1\r\n", body))
    return answer.status, answer.body


def whole(body: bytes) -> bytes:
    return HEAD + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


async def test_answers_come_back_whole_over_one_kept_alive_connection() -> None:
    async def script(connection: int, request: int, writer: asyncio.StreamWriter) -> None:
        writer.write(whole(b'{"n": %d}' % request))

    async with raw_server(script) as (url, seen):
        pool = H1Pool(url, timeout_s=5)
        assert await post(pool) == (200, b'{"n": 1}')
        assert await post(pool) == (200, b'{"n": 2}')
        pool.close()
    assert seen == [1, 1]


async def test_chunked_and_unsized_answers_are_read_to_their_end() -> None:
    async def script(connection: int, request: int, writer: asyncio.StreamWriter) -> None:
        if request == 1:
            writer.write(HEAD + b"transfer-encoding: chunked\r\n\r\n")
            writer.write(b'3\r\n{"a\r\n3\r\n":1\r\n1\r\n}\r\n0\r\n\r\n')
        else:  # no length: the body ends when the connection does
            writer.write(HEAD + b"\r\n" + b'{"b":2}')
            await writer.drain()
            writer.close()

    async with raw_server(script) as (url, seen):
        pool = H1Pool(url, timeout_s=5)
        assert await post(pool) == (200, b'{"a":1}')
        assert await post(pool) == (200, b'{"b":2}')
        assert await post(pool) == (200, b'{"a":1}')  # a new connection after the close
        pool.close()
    assert seen == [1, 1, 2]


async def test_a_kept_alive_connection_closed_before_answering_is_replaced_once() -> None:
    async def script(connection: int, request: int, writer: asyncio.StreamWriter) -> None:
        if connection == 1 and request == 2:
            writer.close()  # the server dropped its idle connection as the request came
            return
        writer.write(whole(b"{}"))

    async with raw_server(script) as (url, seen):
        pool = H1Pool(url, timeout_s=5)
        assert await post(pool) == (200, b"{}")
        assert await post(pool) == (200, b"{}")
        pool.close()
    assert seen == [1, 1, 2]


async def test_a_new_connection_dropped_or_cut_is_a_connection_error() -> None:
    async def script(connection: int, request: int, writer: asyncio.StreamWriter) -> None:
        if connection == 2:
            writer.write(HEAD + b"content-length: 100\r\n\r\n{")  # cut mid-body
        writer.close()

    async with raw_server(script) as (url, seen):
        pool = H1Pool(url, timeout_s=5)
        with pytest.raises(ConnectionError, match="dropped"):
            await post(pool)
        with pytest.raises(ConnectionError, match="cut"):
            await post(pool)
    assert seen == [1, 2]


async def test_silence_times_out_but_a_slow_trickle_does_not() -> None:
    async def script(connection: int, request: int, writer: asyncio.StreamWriter) -> None:
        if request == 1:
            writer.write(HEAD + b"content-length: 4\r\n\r\n")
            for piece in (b"[", b"1", b"2", b"]"):  # 0.6 s in all, never 0.3 s silent
                await asyncio.sleep(0.15)
                writer.write(piece)
                await writer.drain()
        else:
            await asyncio.sleep(1.0)

    async with raw_server(script) as (url, _):
        pool = H1Pool(url, timeout_s=0.3)
        assert await post(pool) == (200, b"[12]")
        with pytest.raises(TimeoutError):
            await post(pool)
        pool.close()


async def test_a_cancelled_request_closes_its_connection() -> None:
    async def script(connection: int, request: int, writer: asyncio.StreamWriter) -> None:
        if connection == 1:
            await asyncio.sleep(0.5)
        writer.write(whole(b"{}"))

    async with raw_server(script) as (url, seen):
        pool = H1Pool(url, timeout_s=5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(pool), 0.1)
        assert await post(pool) == (200, b"{}")  # not the abandoned connection's late answer
        pool.close()
    assert seen == [1, 2]


def test_the_request_names_the_host_path_and_length() -> None:
    pool = H1Pool("https://api.example.com:8443/v1/", timeout_s=5)
    request = pool.request("/chat/completions", b"authorization: Bearer k\r\n", b"{}")
    assert request == (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.example.com:8443\r\n"
        b"content-length: 2\r\nauthorization: Bearer k\r\n\r\n{}"
    )
    with pytest.raises(ValueError, match="not an http"):
        H1Pool("ftp://example.com", timeout_s=5)
