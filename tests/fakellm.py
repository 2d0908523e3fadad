"""A deterministic OpenAI-compatible upstream LLM on a loopback server, for client tests.

The answer to a request is chosen from the last user message (and any system
instruction the guard added), so each test can script exactly what the
upstream says. Bodies are fixed (ids, timestamps) so a wrapped and an
unwrapped client can be compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from loopback import JSONResponse, LoopbackServer, Request, SSEResponse

CREATED = 1_700_000_000

Answer = Callable[[list[dict[str, Any]], int], str]
"""(request messages, choice index) -> answer text."""


def completion_body(texts: list[str], *, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i, text in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def chunk_bodies(text: str, *, model: str, piece_chars: int = 6) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    pieces = [text[i : i + piece_chars] for i in range(0, len(text), piece_chars)]
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": p}) for p in pieces),
        chunk({}, "stop"),
    ]


class FakeLLM:
    """Scripted upstream: ``answer(messages, index)`` decides each choice's text."""

    def __init__(self, answer: Answer, *, delay_s: float = 0.0, chunk_delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.chunk_delay_s = chunk_delay_s
        self.server = LoopbackServer()
        self.server.route("POST", "/v1/chat/completions", self._handle)

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [r.json for r in self.server.requests_to("POST", "/v1/chat/completions")]

    def _handle(self, request: Request) -> JSONResponse | SSEResponse:
        body = request.json
        model = body.get("model", "fake")
        n = int(body.get("n") or 1)
        texts = [self.answer(body["messages"], i) for i in range(n)]
        if body.get("stream"):
            return SSEResponse(
                chunk_bodies(texts[0], model=model),
                chunk_delay=self.chunk_delay_s,
                delay=self.delay_s,
            )
        return JSONResponse(completion_body(texts, model=model), delay=self.delay_s)


@contextmanager
def fake_llm(answer: Answer, **kwargs: Any) -> Iterator[FakeLLM]:
    llm = FakeLLM(answer, **kwargs)
    with llm.server:
        yield llm


def last_user(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def has_system(messages: list[dict[str, Any]], needle: str) -> bool:
    return any(m["role"] == "system" and needle in m["content"] for m in messages)
