"""Shared bits of the examples: choosing the guard, and a tiny demo upstream LLM.

Every example talks to an OpenAI-compatible server given by ``--base-url`` (vLLM,
SGLang, Ollama, OpenAI...). Without one, ``--demo-upstream`` starts a small local
server that answers from a fixed script, so the examples run on any machine.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from guardrail import DEFAULT_MODEL, Classifier


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every example takes: the upstream and the guard."""
    up = parser.add_argument_group("upstream LLM")
    up.add_argument("--base-url", default="http://localhost:8000/v1", help="OpenAI-compatible URL")
    up.add_argument("--model", default="local-model", help="upstream model name")
    up.add_argument("--api-key", default="not-needed", help="upstream API key")
    up.add_argument(
        "--demo-upstream", action="store_true", help="start a scripted local upstream instead"
    )
    guard = parser.add_argument_group("guard")
    where = guard.add_mutually_exclusive_group()
    where.add_argument("--guard-model", default=DEFAULT_MODEL, help="hub id or local directory")
    where.add_argument("--guard-url", help="OpenAI-compatible guard server (vLLM/SGLang)")
    guard.add_argument("--guard-served-model", default=DEFAULT_MODEL, help="model name there")
    parser.add_argument("--audit", default="guardrail-audit.jsonl", help="audit log path")


def make_classifier(args: argparse.Namespace) -> Classifier:
    """The guard the flags ask for: a local checkpoint or a guard server."""
    if args.guard_url:
        from guardrail import RemoteQwen3Guard

        return RemoteQwen3Guard(args.guard_url, model=args.guard_served_model)
    from guardrail import LocalQwen3Guard

    return LocalQwen3Guard(args.guard_model)


# ----------------------------------------------------------------- demo upstream

DEMO_ANSWERS = {
    "sourdough": "Mix flour, water and starter, let it rise, then bake it.",
    "pipe bomb": "Fill a metal pipe with explosive powder and seal both ends.",
}
REFUSAL = "I'm sorry, but I can't help with that."


def demo_answer(messages: list[dict[str, Any]]) -> str:
    """The demo upstream's answer to the last user message.

    It refuses the capital-of-France question (an unnecessary refusal) unless a
    system message tells it to answer directly, as the default policy's retry does.
    """
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "").lower()
    told_to_answer = any(
        m["role"] == "system" and "answer it directly" in m["content"].lower() for m in messages
    )
    if "capital of france" in question:
        return "The capital of France is Paris." if told_to_answer else REFUSAL
    for needle, answer in DEMO_ANSWERS.items():
        if needle in question:
            return answer
    return REFUSAL


class _DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        text = demo_answer(body["messages"])
        base = {"id": "chatcmpl-demo", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            payload = json.dumps(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        words = text.split(" ")
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": w if i == 0 else " " + w} for i, w in enumerate(words)
        ]
        for k, delta in enumerate([*deltas, {}]):
            finish = "stop" if k == len(deltas) else None
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.02)
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


@contextmanager
def demo_upstream() -> Iterator[str]:
    """Run the scripted upstream on 127.0.0.1; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DemoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def upstream_url(args: argparse.Namespace) -> Iterator[str]:
    """The upstream base URL: the demo server's when ``--demo-upstream`` is set."""
    if args.demo_upstream:
        with demo_upstream() as url:
            yield url
    else:
        yield args.base_url
