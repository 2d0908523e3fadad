"""A stream whose upstream fails to close still leaves its audit record.

The answer was read to its end; closing the upstream's stream then raised. The
call ends normally for the caller, and the record says what failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk

import guardrail
from guardrail.audit import read_records
from guardrail.policy import load_policy_text
from guardrail.testing import ScriptedClassifier


def policy(tmp_path: Path) -> Any:
    return load_policy_text(
        f'version: 1\nname: close\naudit: {{sink: jsonl, path: "{tmp_path / "a.jsonl"}"}}\n'
    )


def chunks() -> list[ChatCompletionChunk]:
    def one(text: str, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
            }
        )

    return [one("Hello there. "), one("Fine.", "stop")]


class BadClose(Iterator[ChatCompletionChunk]):
    def __init__(self) -> None:
        self._chunks = iter(chunks())

    def __next__(self) -> ChatCompletionChunk:
        return next(self._chunks)

    def close(self) -> None:
        raise OSError("close failed")


class AsyncBadClose(AsyncIterator[ChatCompletionChunk]):
    def __init__(self) -> None:
        self._chunks = iter(chunks())

    async def __anext__(self) -> ChatCompletionChunk:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        raise OSError("close failed")


def text_of(received: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in received if c.choices)


def assert_audited(tmp_path: Path) -> None:
    (record,) = read_records(tmp_path / "a.jsonl")
    assert [(e.type, e.message) for e in record.errors] == [("OSError", "close failed")]


def test_a_sync_stream_whose_close_fails_is_audited(tmp_path: Path) -> None:
    raw = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    raw.chat.completions.create = lambda **params: BadClose()  # type: ignore[method-assign]
    guard = guardrail.Guard(policy(tmp_path), classifier=ScriptedClassifier())
    client = guardrail.wrap(raw, guard=guard)
    ask = [{"role": "user", "content": "hi"}]
    received = list(client.chat.completions.create(model="m", messages=ask, stream=True))
    assert text_of(received) == "Hello there. Fine."
    assert_audited(tmp_path)


def test_an_async_stream_whose_close_fails_is_audited(tmp_path: Path) -> None:
    raw = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")

    async def create(**params: Any) -> AsyncBadClose:
        return AsyncBadClose()

    raw.chat.completions.create = create  # type: ignore[method-assign]
    guard = guardrail.Guard(policy(tmp_path), classifier=ScriptedClassifier())
    client = guardrail.wrap(raw, guard=guard)

    async def call() -> list[Any]:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        return [c async for c in stream]

    assert text_of(asyncio.run(call())) == "Hello there. Fine."
    assert_audited(tmp_path)


def test_a_stream_left_early_whose_close_fails_is_audited(tmp_path: Path) -> None:
    raw = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    raw.chat.completions.create = lambda **params: BadClose()  # type: ignore[method-assign]
    guard = guardrail.Guard(policy(tmp_path), classifier=ScriptedClassifier())
    client = guardrail.wrap(raw, guard=guard)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(iter(stream))
    stream.close()  # the caller leaves: the flow is abandoned, its cleanup still runs
    assert_audited(tmp_path)
