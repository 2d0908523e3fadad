"""(b) middleware overhead, (c) latency hiding, (d) streaming: the guard flow around the LLM.

All three use the real ``openai`` client against a loopback upstream served from
another process, with a scripted in-process guard so that only the SDK's own
work (or its scheduling of the guard's delay) is measured.
"""

from __future__ import annotations

import asyncio
import inspect
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
from common import Row, iqr, median, percentile, row
from openai.types.chat import ChatCompletion
from upstream import upstream_process

import guardrail
from guardrail.audit import JsonlSink, NullSink
from guardrail.policy import evaluate, load_policy_text
from guardrail.testing import ScriptedClassifier
from guardrail.types import Stage

ANSWER = "Paris is the capital of France. " * 2
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


FEATURES = ("index", "breaker")
"""Features a comparison with an older build may turn off (``benchmarks.against --without``):
``index``, the JSONL sink's log index; ``breaker``, the guard backend's circuit breaker."""

features_off: frozenset[str] = frozenset()
"""The :data:`FEATURES` these benchmarks turn off, in a library that has them."""


def present_features() -> list[str]:
    """The :data:`FEATURES` the imported library has (an older build may lack some)."""
    # Looked for in the imported package's own folder: an editable install of another
    # checkout may answer an import of a module this build lacks.
    home = Path(guardrail.__file__).resolve().parent
    has = {
        "index": "index" in inspect.signature(JsonlSink).parameters,
        "breaker": (home / "breaker").is_dir() or (home / "breaker.py").is_file(),
    }
    return [f for f in FEATURES if has[f]]


def _off(feature: str) -> bool:
    return feature in features_off and feature in present_features()


def _jsonl(path: Path) -> JsonlSink:
    """The JSONL sink the benchmarks write to (without its index when that is turned off)."""
    if _off("index"):
        return JsonlSink(path, index=False)
    return JsonlSink(path)  # an older build's JsonlSink may take no ``index``


def _policy(extra: str = "") -> Any:
    if _off("breaker"):
        extra += "guard: {breaker: {enabled: false}}\n"
    return load_policy_text(
        "version: 1\nname: bench\naudit: {sink: none}\n"
        + extra
        + "rules:\n  - {id: block-unsafe, stage: prompt, when: {levels: [Unsafe]}, action: block}\n"
        "  - {id: block-unsafe-r, stage: response, when: {levels: [Unsafe]}, action: block}\n",
        source="bench",
    )


# ------------------------------------------------------------------ (b) overhead


def overhead(quick: bool) -> list[Row]:
    """Wrapped vs raw client, sync and async, interleaved call by call, with an instant guard."""
    n, warm = (300, 50) if quick else (1500, 100)
    rows: list[Row] = []
    with upstream_process(ANSWER) as url, tempfile.TemporaryDirectory() as tmp:
        for flavour in ("sync", "async"):
            for label, sink in (
                ("audit to JSONL", _jsonl(Path(tmp) / f"{flavour}.jsonl")),
                ("no audit sink", NullSink()),
            ):
                guard = guardrail.Guard(_policy(), classifier=ScriptedClassifier(), sink=sink)
                if flavour == "sync":
                    raw_t, diff = _side_by_side(url, guard, n + warm)
                else:
                    raw_t, diff = asyncio.run(_aside_by_side(url, guard, n + warm))
                guard.close()
                rows += _overhead_rows(f"{flavour}, {label}", raw_t[warm:], diff[warm:])
    return rows


def _side_by_side(url: str, guard: guardrail.Guard, n: int) -> tuple[list[float], list[float]]:
    """Raw call times and (wrapped - raw) differences, the two calls alternating."""
    raw = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    wrapped = guardrail.wrap(openai.OpenAI(base_url=url, api_key="k", max_retries=0), guard=guard)
    raw_t: list[float] = []
    diff: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        raw.chat.completions.create(model="m", messages=MESSAGES)
        t1 = time.perf_counter()
        wrapped.chat.completions.create(model="m", messages=MESSAGES)
        t2 = time.perf_counter()
        raw_t.append(t1 - t0)
        diff.append((t2 - t1) - (t1 - t0))
    return raw_t, diff


async def _aside_by_side(
    url: str, guard: guardrail.Guard, n: int
) -> tuple[list[float], list[float]]:
    """The async counterpart of :func:`_side_by_side`, on one event loop."""
    raw = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
    wrapped = guardrail.wrap(
        openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0), guard=guard
    )
    raw_t: list[float] = []
    diff: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await raw.chat.completions.create(model="m", messages=MESSAGES)
        t1 = time.perf_counter()
        await wrapped.chat.completions.create(model="m", messages=MESSAGES)
        t2 = time.perf_counter()
        raw_t.append(t1 - t0)
        diff.append((t2 - t1) - (t1 - t0))
    await raw.close()
    await wrapped.close()
    return raw_t, diff


def _overhead_rows(case: str, raw_t: list[float], diff: list[float]) -> list[Row]:
    added = median(diff)
    return [
        row("b", case, "raw call (median)", median(raw_t) * 1e3, "ms", iqr(raw_t, 1e3)),
        row("b", case, "added per call (median)", added * 1e6, "us", iqr(diff, 1e6)),
        row("b", case, "added per call (p99)", percentile(diff, 99) * 1e6, "us"),
        row("b", case, "added wall time", added / median(raw_t) * 100, "%"),
    ]


class _TimedJsonlSink(JsonlSink):
    """A JSONL sink that times its own writes (sealing, hashing, the append)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seconds: list[float] = []

    def write_json(self, data: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        super().write_json(data)
        self.seconds.append(time.perf_counter() - t0)


def _completion() -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": ANSWER},
                }
            ],
        }
    )


def _in_process_sync(guards: list[guardrail.Guard], n: int, blocks: int) -> list[list[float]]:
    """Per-call times of wrapped clients whose upstream answers at once, taking turns."""
    answer = _completion()
    clients = []
    for guard in guards:
        raw = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
        raw.chat.completions.create = lambda **params: answer  # type: ignore[method-assign]
        clients.append(guardrail.wrap(raw, guard=guard))
    times: list[list[float]] = [[] for _ in guards]
    for block in range(blocks + 1):  # the first block warms up
        for client, out in zip(clients, times, strict=True):
            for _ in range(n):
                t0 = time.perf_counter()
                client.chat.completions.create(model="m", messages=MESSAGES)
                if block:
                    out.append(time.perf_counter() - t0)
    return times


async def _in_process_async(
    guards: list[guardrail.Guard], n: int, blocks: int
) -> list[list[float]]:
    """The async counterpart of :func:`_in_process_sync`, on one event loop."""
    answer = _completion()

    async def create(**params: Any) -> ChatCompletion:
        return answer

    clients = []
    for guard in guards:
        raw = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
        raw.chat.completions.create = create  # type: ignore[method-assign]
        clients.append(guardrail.wrap(raw, guard=guard))
    times: list[list[float]] = [[] for _ in guards]
    for block in range(blocks + 1):
        for client, out in zip(clients, times, strict=True):
            for _ in range(n):
                t0 = time.perf_counter()
                await client.chat.completions.create(model="m", messages=MESSAGES)
                if block:
                    out.append(time.perf_counter() - t0)
    for client in clients:  # on this loop: closed later, they would need it again
        await client.close()
    return times


def _each_us(fn: Any, n: int) -> float:
    """Median microseconds of one call of ``fn``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times[n // 5 :]) * 1e6


def breakdown(quick: bool) -> list[Row]:
    """Where the SDK's time per call goes, in process (no HTTP): totals and their parts.

    Each part is timed on its own, the same work as one call does: judging the two
    checks (conversation normalisation, the breaker, the scripted guard's parsed
    verdicts), the policy's two decisions, and the JSONL sink's sealing and append;
    building the audit record is what JSONL adds beyond that append. The rest is the
    flow, its driver, the openai adaptation and the report attached to the answer.
    """
    n = 1000 if quick else 4000
    rows: list[Row] = []
    policy = _policy()
    prompt_conv = [(MESSAGES, None)]
    reply = {"role": "assistant", "content": ANSWER}
    response_conv = [(MESSAGES, reply)]
    with tempfile.TemporaryDirectory() as tmp:
        null_guard = guardrail.Guard(policy, classifier=ScriptedClassifier(), sink=NullSink())
        judge = _each_us(
            lambda: (
                null_guard.classify(Stage.PROMPT, prompt_conv),
                null_guard.classify(Stage.RESPONSE, response_conv),
            ),
            n,
        )
        (pv,) = null_guard.classify(Stage.PROMPT, prompt_conv)
        (rv,) = null_guard.classify(Stage.RESPONSE, response_conv)
        decide = _each_us(
            lambda: (
                evaluate(policy, Stage.PROMPT, pv),
                evaluate(policy, Stage.RESPONSE, rv, prompt_verdict=pv),
            ),
            n,
        )
        for flavour in ("sync", "async"):
            aio = flavour == "async"
            sink = _TimedJsonlSink(Path(tmp) / f"{flavour}.jsonl")
            jsonl_guard = guardrail.Guard(policy, classifier=ScriptedClassifier(), sink=sink)
            guards = [null_guard, jsonl_guard]
            if aio:  # the two sinks take turns, in blocks
                null_t, jsonl_t = asyncio.run(_in_process_async(guards, n // 4, 4))
            else:
                null_t, jsonl_t = _in_process_sync(guards, n // 4, 4)
            sink.seconds = sink.seconds[n // 4 :]  # the warm-up block's writes
            jsonl_guard.close()
            total, with_audit = median(null_t) * 1e6, median(jsonl_t) * 1e6
            append = median(sink.seconds) * 1e6
            case = f"{flavour}, in process"
            rows += [
                row("b", case, "SDK work per call, no sink", total, "us", iqr(null_t, 1e6)),
                row("b", case, "SDK work per call, JSONL", with_audit, "us", iqr(jsonl_t, 1e6)),
                row("b", case, "part: judging 2 checks", judge, "us", "", _JUDGE),
                row("b", case, "part: 2 policy decisions", decide, "us"),
                row(
                    "b",
                    case,
                    "part: flow, driver, client, report",
                    total - judge - decide,
                    "us",
                    "",
                    "the rest of the no-sink call",
                ),
                row("b", case, "part: audit record build", with_audit - total - append, "us"),
                row("b", case, "part: audit seal + append", append, "us", "", _APPEND),
            ]
        null_guard.close()
    return rows


_JUDGE = "normalising the conversation, the breaker, parsing the scripted verdict"
_APPEND = "canonical JSON, sha256 chain, one write() under the file lock"


# -------------------------------------------------------------- (c) latency hiding

UPSTREAM_S, GUARD_S = 0.3, 0.1


def latency_hiding(quick: bool) -> list[Row]:
    """Upstream 300 ms, guard 100 ms per check: guarded latency over the ideal 400 ms."""
    reps = 2 if quick else 6
    ideal = max(UPSTREAM_S, GUARD_S) + GUARD_S
    rows: list[Row] = []
    with upstream_process(ANSWER, delay_s=UPSTREAM_S) as url:
        guard = guardrail.Guard(
            _policy(), classifier=ScriptedClassifier(delay_s=GUARD_S), sink=NullSink()
        )
        client = guardrail.wrap(openai.OpenAI(base_url=url, api_key="k"), guard=guard)
        aclient = guardrail.wrap(openai.AsyncOpenAI(base_url=url, api_key="k"), guard=guard)
        client.chat.completions.create(model="m", messages=MESSAGES)  # warm-up
        sync_t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            client.chat.completions.create(model="m", messages=MESSAGES)
            sync_t.append(time.perf_counter() - t0)

        async def measure() -> list[float]:
            await aclient.chat.completions.create(model="m", messages=MESSAGES)
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                await aclient.chat.completions.create(model="m", messages=MESSAGES)
                out.append(time.perf_counter() - t0)
            return out

        async_t = asyncio.run(measure())
        guard.close()
    for label, times in (("sync", sync_t), ("async", async_t)):
        rows.append(
            row(
                "c",
                label,
                "guarded / ideal",
                median(times) / ideal,
                "x",
                f"min {min(times) / ideal:.3f} max {max(times) / ideal:.3f}",
                f"ideal = max(upstream {UPSTREAM_S:.1f}, guard {GUARD_S:.1f}) + guard (s)",
            )
        )
    return rows


# --------------------------------------------------------------------- (d) streaming

STREAM_TEXT = "The quick brown fox jumps over the lazy dog. " * 8  # 360 chars, 60 chunks
CHUNK_DELAY_S, CHECK_S = 0.01, 0.05


def _stream(client: Any) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def streaming(quick: bool) -> list[Row]:
    """Check-before-release streaming: time to first released token and total time."""
    reps = 3 if quick else 6
    policy = _policy("streaming: {release: check_before_release, chunk_chars: 120}\n")
    with upstream_process(STREAM_TEXT, chunk_delay_s=CHUNK_DELAY_S) as url:
        raw = openai.OpenAI(base_url=url, api_key="k")
        guard = guardrail.Guard(
            policy, classifier=ScriptedClassifier(delay_s=CHECK_S), sink=NullSink()
        )
        wrapped = guardrail.wrap(openai.OpenAI(base_url=url, api_key="k"), guard=guard)
        _stream(raw)
        _stream(wrapped)
        raw_runs = []
        guarded_runs = []
        for _ in range(reps):
            raw_runs.append(_stream(raw))
            guarded_runs.append(_stream(wrapped))
        guard.close()
    raw_ttft, raw_total = (median([r[k] for r in raw_runs]) for k in (0, 1))
    g_ttft, g_total = (median([r[k] for r in guarded_runs]) for k in (0, 1))
    note = (
        f"60 chunks every {CHUNK_DELAY_S * 1e3:.0f} ms, 120-char checks of {CHECK_S * 1e3:.0f} ms"
    )
    return [
        row("d", "unguarded", "time to first token", raw_ttft * 1e3, "ms", note=note),
        row("d", "guarded", "time to first token", g_ttft * 1e3, "ms", note=note),
        row("d", "unguarded", "total", raw_total * 1e3, "ms", note=note),
        row("d", "guarded", "total", g_total * 1e3, "ms", note=note),
        row(
            "d",
            "guarded",
            "added total / one check",
            (g_total - raw_total) / CHECK_S,
            "checks",
            note="target: at most one chunk check added",
        ),
    ]


def run(quick: bool) -> list[Row]:
    """Benchmarks (b), (c) and (d)."""
    return overhead(quick) + breakdown(quick) + latency_hiding(quick) + streaming(quick)
