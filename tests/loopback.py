"""A real HTTP server on 127.0.0.1 for tests: scripted routes, recorded requests.

Stdlib only (``http.server.ThreadingHTTPServer``), so any client works against it
(httpx, the ``openai`` client, urllib). HTTP/1.1 keep-alive is supported: JSON
responses carry ``Content-Length``; SSE streams use chunked transfer encoding.

Usage::

    with LoopbackServer() as server:
        server.route("POST", "/v1/chat/completions", [
            JSONResponse({"error": {"message": "busy"}}, status=503),  # first request
            JSONResponse(chat_completion("Safety: Safe\\nCategories: None")),  # then always
        ])
        client = httpx.Client(base_url=server.url)  # server.url is "http://127.0.0.1:PORT"
        ...
        assert len(server.requests_to("POST", "/v1/chat/completions")) == 2

A route's handler is one of:

- a response object (:class:`JSONResponse`, :class:`SSEResponse`, :class:`RawResponse`,
  :class:`Drop`, :class:`Truncated`): returned for every request;
- a list of them: a queue, one per request, the last one repeated once the queue runs dry;
- a callable ``handler(request: Request) -> response`` (``request.json`` is the parsed
  body); it may also return a plain dict/list, sent as a 200 JSON response.

Every response type has a ``delay`` (seconds slept before answering, e.g. to trigger
client timeouts); stopping the server wakes sleeping handlers. Unrouted requests get a
404 JSON error. Streaming a chat completion::

    server.route("POST", "/v1/chat/completions", lambda req: (
        SSEResponse(chat_completion_chunks(["Hel", "lo"]), chunk_delay=0.01)
        if req.json.get("stream") else JSONResponse(chat_completion("Hello"))
    ))
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Drop",
    "JSONResponse",
    "LoopbackServer",
    "RawResponse",
    "Request",
    "SSEResponse",
    "Truncated",
    "chat_completion",
    "chat_completion_chunks",
    "closed_port_url",
]


@dataclass(frozen=True)
class Request:
    """A request the server received. ``headers`` keys are lower-case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int] = ("", 0)
    """The client's address: the same port on several requests means a kept-alive connection."""

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``None`` when empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass(frozen=True)
class JSONResponse:
    """A JSON response with ``Content-Length`` (keeps the connection alive)."""

    body: Any = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class RawResponse:
    """Arbitrary bytes (e.g. malformed JSON) with ``Content-Length``."""

    body: bytes | str = b""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "text/plain"


@dataclass(frozen=True)
class SSEResponse:
    """A ``text/event-stream`` response sent with chunked transfer encoding.

    Each chunk is sent as one ``data: ...`` event: dicts/lists are JSON-encoded,
    strings sent as they are. ``done`` appends ``data: [DONE]`` (the OpenAI ending).
    ``chunk_delay`` is slept before each event; a ``float`` item in ``chunks`` sleeps
    that long instead of being sent (for one long pause mid-stream).
    """

    chunks: Sequence[Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    done: bool = True


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering (after ``delay``): a server crash."""

    delay: float = 0.0


@dataclass(frozen=True)
class Truncated:
    """Announce ``length`` bytes of body, send only ``body``, then close: a cut mid-body."""

    body: bytes | str = b""
    length: int = 1000
    status: int = 200
    delay: float = 0.0


Response = JSONResponse | RawResponse | SSEResponse | Drop | Truncated
Handler = Response | Sequence[Response] | Callable[[Request], Any]


class _Route:
    def __init__(self, handler: Handler) -> None:
        self._lock = threading.Lock()
        self._handler = handler
        self._queue = list(handler) if isinstance(handler, (list, tuple)) else None

    def respond(self, request: Request) -> Response:
        if self._queue is not None:
            with self._lock:
                return self._queue.pop(0) if len(self._queue) > 1 else self._queue[0]
        if callable(self._handler):
            result = self._handler(request)
            if isinstance(result, (JSONResponse, RawResponse, SSEResponse, Drop, Truncated)):
                return result
            return JSONResponse(result)
        return self._handler  # type: ignore[return-value]


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when many clients connect at once.
    request_queue_size = 256


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (ephemeral port), used as a context manager."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], _Route] = {}
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scripting

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` (exact path, query ignored) with ``handler``; replaces any."""
        with self._lock:
            self._routes[(method.upper(), path)] = _Route(handler)

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[Request]:
        """The requests received for one route."""
        return [r for r in self.requests if r.method == method.upper() and r.path == path]

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open now (a closed one is gone once noticed)."""
        with self._lock:
            return len(self._connections)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LoopbackServer:
        """Bind an ephemeral port and serve in a background thread."""
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"loopback": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers, close open connections and join threads."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # unblock handler threads waiting on keep-alive reads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _record(self, request: Request) -> _Route | None:
        with self._lock:
            self._requests.append(request)
            return self._routes.get((request.method, request.path))

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when the server is stopping."""
        return seconds > 0 and self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK stall every response by ~40 ms.
    disable_nagle_algorithm = True
    timeout = 30  # idle keep-alive connections give up eventually
    loopback: LoopbackServer

    def setup(self) -> None:
        super().setup()
        with self.loopback._lock:
            self.loopback._connections.add(self.connection)

    def finish(self) -> None:
        with self.loopback._lock:
            self.loopback._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # the client went away (e.g. it timed out mid-delay)
            self.close_connection = True

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            client=(str(self.client_address[0]), int(self.client_address[1])),
        )
        route = self.loopback._record(request)
        if route is None:
            message = f"loopback: no route for {request.method} {request.path}"
            response: Response = JSONResponse({"error": {"message": message}}, status=404)
        else:
            try:
                response = route.respond(request)
            except Exception as exc:  # a broken test handler shows up as a 500 with its error
                response = JSONResponse({"error": {"message": repr(exc)}}, status=500)
        if self.loopback._sleep(response.delay):
            self.close_connection = True
            return
        if isinstance(response, Drop):
            self.close_connection = True
        elif isinstance(response, Truncated):
            raw = response.body.encode() if isinstance(response.body, str) else response.body
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(response.length))
            self.end_headers()
            self.wfile.write(raw)
            self.wfile.flush()
            self.close_connection = True
        elif isinstance(response, SSEResponse):
            self._send_sse(response)
        elif isinstance(response, RawResponse):
            raw = response.body.encode() if isinstance(response.body, str) else response.body
            self._send_bytes(response.status, raw, response.content_type, response.headers)
        else:
            raw = b"" if response.body is None else json.dumps(response.body).encode()
            self._send_bytes(response.status, raw, "application/json", response.headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch  # noqa: N815

    def _send_bytes(
        self, status: int, raw: bytes, content_type: str, headers: Mapping[str, str]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _send_sse(self, response: SSEResponse) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        for event in _sse_events(response):
            if isinstance(event, float):
                if self.loopback._sleep(event):
                    self.close_connection = True
                    return
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _sse_events(response: SSEResponse) -> Iterator[bytes | float]:
    items = [*response.chunks, "[DONE]"] if response.done else list(response.chunks)
    for item in items:
        if isinstance(item, float):
            yield item
            continue
        if response.chunk_delay:
            yield float(response.chunk_delay)
        data = item if isinstance(item, str) else json.dumps(item)
        yield f"data: {data}\n\n".encode()


def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` for a port nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------ OpenAI-shaped bodies


def chat_completion(
    content: str | None,
    *,
    model: str = "loopback-model",
    reasoning_content: str | None = None,
    reasoning: str | None = None,
    logprobs: Sequence[Mapping[str, Any]] | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A ``chat.completion`` body; ``logprobs`` is the ``choices[0].logprobs.content`` list."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning is not None:
        message["reasoning"] = reasoning
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None if logprobs is None else {"content": list(logprobs)},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def chat_completion_chunks(
    pieces: Sequence[str], *, model: str = "loopback-model", finish_reason: str = "stop"
) -> list[dict[str, Any]]:
    """``chat.completion.chunk`` bodies streaming ``pieces`` (role first, finish last)."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, finish_reason),
    ]
