"""(e) remote backend throughput: RemoteQwen3Guard vs a bare httpx loop, concurrency 64."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from common import Row, median, row
from fastserver import fixed_json_server
from loopback import chat_completion

from guardrail import RemoteQwen3Guard
from guardrail.qwen3guard import GuardInput, GuardMessage

CONCURRENCY = 64
PATH = "/v1/chat/completions"
VERDICT = chat_completion("Safety: Safe\nCategories: None", model="guard")


async def _bare(url: str, n: int) -> float:
    body = {
        "model": "guard",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0,
        "max_tokens": 32,
    }
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with gate:
                response = await client.post(url + PATH, json=body)
                json.loads(response.content)["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


async def _guarded(url: str, n: int) -> float:
    guard = RemoteQwen3Guard(url + "/v1", model="guard", max_concurrency=CONCURRENCY, timeout=30)
    inputs = [GuardInput((GuardMessage("user", "hello"),))] * n
    try:
        t0 = time.perf_counter()
        verdicts = await guard.aclassify(inputs)
        rate = n / (time.perf_counter() - t0)
    finally:
        await guard.aclose()
    assert len(verdicts) == n
    return rate


def run(quick: bool) -> list[Row]:
    """Classifications per second, each side measured three times, alternating; medians."""
    n = 100 if quick else 1000
    with fixed_json_server(json.dumps(VERDICT).encode()) as url:
        asyncio.run(_bare(url, 50 if quick else 100))  # warm-up
        asyncio.run(_guarded(url, 50 if quick else 100))
        bare, guarded = [], []
        for _ in range(3):
            bare.append(asyncio.run(_bare(url, n)))
            guarded.append(asyncio.run(_guarded(url, n)))
    b, g = median(bare), median(guarded)
    spread = (
        f"bare {min(bare):.0f}-{max(bare):.0f}/s, guarded {min(guarded):.0f}-{max(guarded):.0f}/s"
    )
    return [
        row("e", "bare httpx", "classifications/s", b, "/s", note=f"concurrency {CONCURRENCY}"),
        row("e", "RemoteQwen3Guard", "classifications/s", g, "/s"),
        row("e", "RemoteQwen3Guard", "guarded / bare", g / b, "x", spread),
    ]
