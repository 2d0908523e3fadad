"""(g) the gateway's cost: latency added and throughput kept, against the upstream direct.

Three processes: a fixed-answer upstream (``fastserver``), the gateway (uvicorn,
one worker, an instant scripted guard, audit to a JSONL file as deployed), and
this one, the load: an aiohttp client keeping 64 requests in flight, sent
straight to the upstream or through the gateway, alternating, three rounds each.
Figures are medians over the rounds; latencies are each round's percentiles.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import Row, median, percentile, row
from fastserver import fixed_json_server
from loopback import chat_completion

CONCURRENCY = 64
PATH = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "Plan a picnic"}]}

POLICY = """
version: 1
name: bench-gateway
audit: {{sink: jsonl, path: "{audit}", content: hash}}
rules:
  - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
  - {{id: block-unsafe-response, stage: response, when: {{levels: [Unsafe]}}, action: block}}
"""


def _gateway_main(upstream: str, workdir: str, ready: Any) -> None:
    import uvicorn

    from guardrail.gateway import GatewayConfig, create_app
    from guardrail.testing import ScriptedClassifier

    policy = Path(workdir) / "policy.yaml"
    policy.write_text(POLICY.format(audit=Path(workdir) / "audit.jsonl"))
    config = GatewayConfig.simple(policy=str(policy), upstream=upstream + "/v1")
    config = config.model_copy(
        update={"limits": config.limits.model_copy(update={"max_in_flight": 1024})}
    )
    app = create_app(config, classifier=ScriptedClassifier())
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (a socket
    # made with proto 0 stalls each two-write response on the client's delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    ready.put(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, backlog=1024)
    )
    server.run(sockets=[sock])


@contextmanager
def gateway_process(upstream: str) -> Iterator[str]:
    """The gateway in a child process in front of ``upstream``; yields its URL."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    with tempfile.TemporaryDirectory() as workdir:
        process = ctx.Process(target=_gateway_main, args=(upstream, workdir, ready), daemon=True)
        process.start()
        try:
            url = f"http://127.0.0.1:{ready.get(timeout=60)}"
            deadline = time.monotonic() + 30
            while True:  # bound the start-up: /healthz answers once uvicorn serves
                try:
                    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the gateway did not start") from None
                    time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.join(10)


async def _load(url: str, n: int, concurrency: int = CONCURRENCY) -> tuple[float, list[float]]:
    """(requests per second, each request's latency in seconds) for ``n`` requests."""
    import aiohttp

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(concurrency)
        data = json.dumps(BODY)
        headers = {"content-type": "application/json", "authorization": "Bearer x"}

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                async with session.post(url + PATH, data=data, headers=headers) as response:
                    body = await response.read()
                latencies.append(time.perf_counter() - started)
                assert response.status == 200, body[:200]

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0), latencies


def run(quick: bool) -> list[Row]:
    """Latency added (p50, p99) and throughput ratio at concurrency 64, medians of 3 rounds."""
    n = 600 if quick else 3000
    body = json.dumps(chat_completion("Here is a plan for a picnic.", model="m")).encode()
    direct: list[tuple[float, list[float]]] = []
    guarded: list[tuple[float, list[float]]] = []
    alone_d: list[tuple[float, list[float]]] = []
    alone_g: list[tuple[float, list[float]]] = []
    with fixed_json_server(body) as upstream, gateway_process(upstream) as gateway:
        asyncio.run(_load(upstream, 200))  # warm-ups: connections, caches, code paths
        asyncio.run(_load(gateway, 200))
        for _ in range(3):
            direct.append(asyncio.run(_load(upstream, n)))
            guarded.append(asyncio.run(_load(gateway, n)))
            alone_d.append(asyncio.run(_load(upstream, n // 6, 1)))
            alone_g.append(asyncio.run(_load(gateway, n // 6, 1)))

    def pct(rounds: list[tuple[float, list[float]]], q: float) -> float:
        return median([percentile(lat, q) for _, lat in rounds])

    alone50 = (pct(alone_g, 50) - pct(alone_d, 50)) * 1e3
    added50 = (pct(guarded, 50) - pct(direct, 50)) * 1e3
    added99 = (pct(guarded, 99) - pct(direct, 99)) * 1e3
    rate_d = median([r for r, _ in direct])
    rate_g = median([r for r, _ in guarded])
    spread = (
        f"direct {min(r for r, _ in direct):.0f}-{max(r for r, _ in direct):.0f}/s, "
        f"gateway {min(r for r, _ in guarded):.0f}-{max(r for r, _ in guarded):.0f}/s"
    )
    note = f"concurrency {CONCURRENCY}, instant guard, JSONL audit"
    return [
        row("g", "direct", "requests/s", rate_d, "/s", note=note),
        row("g", "gateway", "requests/s", rate_g, "/s"),
        row(
            "g",
            "gateway",
            "p50 latency added",
            added50,
            "ms",
            f"p50 direct {pct(direct, 50) * 1e3:.2f} ms",
        ),
        row(
            "g",
            "gateway",
            "p99 latency added",
            added99,
            "ms",
            f"p99 direct {pct(direct, 99) * 1e3:.2f} ms",
        ),
        row("g", "gateway", "gateway / direct throughput", rate_g / rate_d, "x", spread),
        row(
            "g",
            "gateway, one at a time",
            "p50 latency added",
            alone50,
            "ms",
            f"p50 direct {pct(alone_d, 50) * 1e3:.2f} ms",
        ),
    ]
