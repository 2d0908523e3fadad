"""A deterministic OpenAI Responses API upstream on a loopback server, for client and gateway tests.

``POST /v1/responses`` answers with the output items ``answer(body)`` returns:
a ``Response`` body, or (``stream: true``) the event sequence the Responses API
sends for those items (``response.created``, item and part events, text and
argument deltas, ``.done`` events, ``response.completed``). Ids and times are
fixed, so answers can be compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from loopback import JSONResponse, LoopbackServer, Request, SSEResponse

CREATED = 1_700_000_000
PATH = "/v1/responses"

Answer = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""(request body) -> the response's output items."""


def message(text: str, *, item_id: str = "msg_1") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [part],
    }


def function_call(name: str, arguments: str, *, call_id: str = "call_1") -> dict[str, Any]:
    return {
        "id": "fc_1",
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def reasoning(summary: str) -> dict[str, Any]:
    return {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": summary}],
    }


def response_body(
    output: list[dict[str, Any]],
    *,
    model: str = "m",
    status: str = "completed",
    rid: str = "resp_1",
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": CREATED,
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 5,
            "output_tokens": 7,
            "total_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _item_events(item: dict[str, Any], index: int, size: int) -> list[dict[str, Any]]:
    kind = item["type"]
    if kind == "message":
        text = item["content"][0]["text"]
        at = {"item_id": item["id"], "output_index": index, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": []}
        return [
            {"type": "response.output_item.added", "output_index": index,
             "item": {**item, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **at, "part": empty},
            *({"type": "response.output_text.delta", **at, "delta": p, "logprobs": []}
              for p in _pieces(text, size)),
            {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **at, "part": item["content"][0]},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]  # fmt: skip
    if kind == "function_call":
        at = {"item_id": item["id"], "output_index": index}
        return [
            {"type": "response.output_item.added", "output_index": index,
             "item": {**item, "arguments": "", "status": "in_progress"}},
            *({"type": "response.function_call_arguments.delta", **at, "delta": p}
              for p in _pieces(item["arguments"], size)),
            {"type": "response.function_call_arguments.done", **at,
             "arguments": item["arguments"]},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]  # fmt: skip
    if kind == "reasoning":
        text = item["summary"][0]["text"]
        at = {"item_id": item["id"], "output_index": index, "summary_index": 0}
        return [
            {"type": "response.output_item.added", "output_index": index,
             "item": {**item, "summary": []}},
            {"type": "response.reasoning_summary_part.added", **at,
             "part": {"type": "summary_text", "text": ""}},
            *({"type": "response.reasoning_summary_text.delta", **at, "delta": p}
              for p in _pieces(text, size)),
            {"type": "response.reasoning_summary_text.done", **at, "text": text},
            {"type": "response.reasoning_summary_part.done", **at,
             "part": {"type": "summary_text", "text": text}},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]  # fmt: skip
    raise ValueError(f"no events for {kind}")


def stream_events(
    output: list[dict[str, Any]], *, model: str = "m", size: int = 6
) -> list[dict[str, Any]]:
    """The events the Responses API streams for ``output``, numbered from 0."""
    started = response_body([], model=model, status="in_progress")
    started.pop("usage")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(output):
        events += _item_events(item, index, size)
    events.append({"type": "response.completed", "response": response_body(output, model=model)})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the request's last user message (a string input is one)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return raw
    for item in reversed(raw or []):
        if item.get("role") == "user":
            content = item["content"]
            if isinstance(content, str):
                return content
            return "\n".join(p.get("text", "") for p in content)
    return ""


def system_texts(body: dict[str, Any]) -> list[str]:
    """The instructions and the system messages of the request's input."""
    out = [body["instructions"]] if body.get("instructions") else []
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("role") in ("system", "developer"):
            out.append(item["content"])
    return out


class FakeResponses:
    """Scripted Responses upstream: ``answer(body)`` decides the output items."""

    def __init__(self, answer: Answer, *, delay_s: float = 0.0, chunk_delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.chunk_delay_s = chunk_delay_s
        self.server = LoopbackServer()
        self.server.route("POST", PATH, self._handle)
        self.count = 0

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [r.json for r in self.server.requests_to("POST", PATH)]

    def _handle(self, request: Request) -> JSONResponse | SSEResponse:
        body = request.json
        model = body.get("model", "m")
        output = self.answer(body)
        self.count += 1
        if body.get("stream"):
            return SSEResponse(
                stream_events(output, model=model),
                chunk_delay=self.chunk_delay_s,
                delay=self.delay_s,
                done=False,
            )
        body_out = response_body(output, model=model, rid=f"resp_{self.count}")
        return JSONResponse(body_out, delay=self.delay_s)


@contextmanager
def fake_responses(answer: Answer, **kwargs: Any) -> Iterator[FakeResponses]:
    upstream = FakeResponses(answer, **kwargs)
    with upstream.server:
        yield upstream
