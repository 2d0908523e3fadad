"""(e) remote backend throughput, and a thousand concurrent guarded calls.

1. ``RemoteQwen3Guard.aclassify`` against a bare aiohttp loop posting the same
   request at concurrency 64 (the ratio with a target), and a bare httpx loop for
   reference, all against a fixed-answer server in its own process.
2. 1,000 concurrent async chat completions through a wrapped ``AsyncOpenAI``
   (remote guard on a loopback server, upstream LLM on another) against the same
   1,000 calls unguarded. Both clients use openai's aiohttp transport.

Sides alternate within each round, after warm-ups; figures are medians.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import httpx
import openai
from common import Row, median, row
from fastserver import fixed_json_server
from loopback import chat_completion
from upstream import upstream_process

import guardrail
from guardrail import RemoteQwen3Guard
from guardrail.audit import NullSink
from guardrail.policy import load_policy_text
from guardrail.qwen3guard import GuardInput, GuardMessage

CONCURRENCY = 64
CALLS = 1000
PATH = "/v1/chat/completions"
VERDICT = chat_completion("Safety: Safe\nCategories: None", model="guard")
BODY = {
    "model": "guard",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
    "max_tokens": 32,
}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Paris is the capital of France."


# --------------------------------------------------------- (1) classifications/s


def _read(content: bytes) -> str:
    return str(json.loads(content)["choices"][0]["message"]["content"])


async def _bare_aiohttp(url: str, n: int) -> float:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with gate, session.post(url + PATH, json=BODY) as response:
                _read(await response.read())

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


async def _bare_httpx(url: str, n: int) -> float:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with gate:
                _read((await client.post(url + PATH, json=BODY)).content)

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


def throughput(quick: bool) -> list[Row]:
    """Classifications per second, three sides alternating each round; medians."""
    n, rounds = (300, 3) if quick else (2000, 5)
    sides = {"bare aiohttp": _bare_aiohttp, "RemoteQwen3Guard": _guarded, "bare httpx": _bare_httpx}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    with fixed_json_server(json.dumps(VERDICT).encode()) as url:
        for measure in sides.values():  # warm-up
            asyncio.run(measure(url, 100))
        for _ in range(rounds):
            for name, measure in sides.items():
                rates[name].append(asyncio.run(measure(url, n)))
    a, g, h = (median(rates[name]) for name in sides)

    def spread(name: str) -> str:
        return f"{min(rates[name]):.0f}-{max(rates[name]):.0f}/s"

    note = f"concurrency {CONCURRENCY}, {n} requests x {rounds} rounds"
    return [
        row("e", "bare aiohttp", "classifications/s", a, "/s", spread("bare aiohttp"), note),
        row("e", "bare httpx", "classifications/s", h, "/s", spread("bare httpx"), "reference"),
        row("e", "RemoteQwen3Guard", "classifications/s", g, "/s", spread("RemoteQwen3Guard")),
        row(
            "e",
            "RemoteQwen3Guard",
            "guarded / bare",
            g / a,
            "x",
            f"guarded {spread('RemoteQwen3Guard')}, bare {spread('bare aiohttp')}",
            "vs the bare aiohttp loop",
        ),
        row("e", "RemoteQwen3Guard", "guarded / bare httpx", g / h, "x", note="reference"),
    ]


# ------------------------------------------------------ (2) 1,000 guarded calls


def _guard(guard_url: str) -> tuple[guardrail.Guard, RemoteQwen3Guard]:
    policy = load_policy_text(
        "version: 1\nname: bench\naudit: {sink: none}\n"
        "rules:\n  - {id: block-unsafe, stage: prompt, when: {levels: [Unsafe]}, action: block}\n"
        "  - {id: block-unsafe-r, stage: response, when: {levels: [Unsafe]}, action: block}\n",
        source="bench",
    )
    remote = RemoteQwen3Guard(
        guard_url + "/v1", model="guard", max_concurrency=CONCURRENCY, timeout=30
    )
    return guardrail.Guard(policy, classifier=remote, sink=NullSink()), remote


async def _calls(upstream_url: str, guard_url: str | None, n: int) -> float:
    """Seconds for ``n`` concurrent chat completions (guarded when ``guard_url`` is given)."""
    guard, remote = _guard(guard_url) if guard_url is not None else (None, None)
    raw = openai.AsyncOpenAI(
        base_url=upstream_url, api_key="k", max_retries=0, http_client=openai.DefaultAioHttpClient()
    )
    client: Any = guardrail.wrap(raw, guard=guard) if guard is not None else raw
    try:

        async def one() -> str:
            reply = await client.chat.completions.create(model="m", messages=MESSAGES)
            return str(reply.choices[0].message.content)

        t0 = time.perf_counter()
        answers = await asyncio.gather(*(one() for _ in range(n)))
        seconds = time.perf_counter() - t0
    finally:
        await raw.close()
        if guard is not None and remote is not None:
            guard.close()
            await remote.aclose()  # the guard leaves an injected classifier open
    assert answers == [ANSWER] * n
    return seconds


def thousand_calls(quick: bool) -> list[Row]:
    """1,000 concurrent calls, guarded vs unguarded, alternating; median wall times."""
    rounds = 3 if quick else 5
    bare: list[float] = []
    guarded: list[float] = []
    with (
        fixed_json_server(json.dumps(VERDICT).encode()) as guard_url,
        upstream_process(ANSWER) as upstream_url,
    ):
        asyncio.run(_calls(upstream_url, None, 200))  # warm-up
        asyncio.run(_calls(upstream_url, guard_url, 200))
        for _ in range(rounds):
            bare.append(asyncio.run(_calls(upstream_url, None, CALLS)))
            guarded.append(asyncio.run(_calls(upstream_url, guard_url, CALLS)))
    b, g = median(bare), median(guarded)
    spread = (
        f"unguarded {min(bare):.2f}-{max(bare):.2f} s, "
        f"guarded {min(guarded):.2f}-{max(guarded):.2f} s"
    )
    case = f"{CALLS} concurrent async calls"
    note = "remote guard (prompt + response) on loopback; openai's aiohttp client both sides"
    return [
        row("e", case, "unguarded wall time", b, "s", note="same upstream, same client"),
        row("e", case, "guarded wall time", g, "s", note=note),
        row("e", case, "guarded / unguarded", g / b, "x", spread),
    ]


def run(quick: bool) -> list[Row]:
    """Both parts of (e)."""
    return throughput(quick) + thousand_calls(quick)
