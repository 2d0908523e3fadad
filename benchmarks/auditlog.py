"""A synthetic but realistic audit log for the audit benchmarks (h).

Records are built by the write side itself (:func:`guardrail.audit.build.record_dict`)
and written by the real sink (:class:`~guardrail.audit.jsonl.JsonlSink`, with its
index), so the log verifies and has exactly the layout a guarded app writes: two
checks per call (prompt, response) with the verdict's level probabilities, a prompt
blocked now and then (one check), a regenerated answer (three checks), guard
failures decided by the failure mode, unnecessary refusals, and circuit breaker
events. Times span one day; content is kept as hashes (the default content mode).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from guardrail.audit.build import event_dict, record_dict
from guardrail.audit.chain import HashChain
from guardrail.audit.index import index_path
from guardrail.audit.jsonl import JsonlSink

VERSION = 2  # bump when the generated records change: cached logs are keyed by it

START = datetime(2026, 11, 3, tzinfo=timezone.utc)
POLICY = {"name": "default", "version": "3", "hash": "9a920ea37e8d19e17681cdfe9b9ab2582dddd03f"}
CATEGORIES = ("Violent", "PII", "Non-violent Illegal Acts", "Jailbreak", "Unethical Acts")


def _verdict(rng: random.Random, level: str, *, refusal: bool | None) -> dict[str, Any]:
    category = None if level == "Safe" else rng.choice(CATEGORIES)
    top = rng.uniform(0.6, 0.999)
    rest = ["Safe", "Controversial", "Unsafe"]
    rest.remove(level)
    return {
        "level": level,
        "category": category,
        "categories": [category] if category else [],
        "refusal": refusal,
        "level_probs": {level: top, rest[0]: (1 - top) * 0.7, rest[1]: (1 - top) * 0.3},
        "category_probs": None,
        "refusal_probs": None,
        "part": "answer",
        "truncated": False,
        "skipped_parts": [],
        "components": [],
    }


def _check(
    rng: random.Random,
    stage: str,
    level: str | None,
    action: str,
    rule: str,
    *,
    refusal: bool | None = None,
    flags: tuple[str, ...] = (),
    attempt: int = 1,
) -> dict[str, Any]:
    failed = level is None
    return {
        "stage": stage,
        "verdict": None if failed else _verdict(rng, level, refusal=refusal),
        "decision": {
            "action": action,
            "rule_id": rule,
            "reason": f"rule {rule} matched" if rule != "default" else "no rule matched",
            "flags": list(flags),
            "rewrite": "regenerate" if action == "rewrite" else None,
            "retry": False,
        },
        "latency_s": rng.lognormvariate(-3.5, 0.5),
        "error": {"type": "TimeoutError", "message": "guard timed out"} if failed else None,
        "attempt": attempt,
        "candidate": None,
        "raw_text": None,
    }


def _level(rng: random.Random) -> str:
    x = rng.random()
    return "Safe" if x < 0.85 else ("Controversial" if x < 0.95 else "Unsafe")


def call_record(rng: random.Random, time: datetime, i: int) -> dict[str, Any]:
    """One guarded call's record (unsealed), drawn from the mix described above."""
    stages: list[dict[str, Any]] = []
    if rng.random() < 0.01:  # the guard failed on the prompt: fail open, flagged
        stages.append(_check(rng, "prompt", None, "allow", "failure", flags=("guard_error",)))
    else:
        level = _level(rng)
        if level == "Unsafe":
            stages.append(_check(rng, "prompt", level, "block", "block-unsafe-prompt"))
        elif level == "Controversial":
            flags = ("controversial_prompt",)
            stages.append(_check(rng, "prompt", level, "flag", "flag-controversial", flags=flags))
        else:
            stages.append(_check(rng, "prompt", level, "allow", "default"))
    prompt_blocked = stages[0]["decision"]["action"] == "block"
    upstream = None
    if not prompt_blocked:
        upstream = rng.lognormvariate(-0.5, 0.6)
        x = rng.random()
        if x < 0.005:
            stages.append(_check(rng, "response", None, "block", "failure"))
        elif x < 0.03:
            stages.append(_check(rng, "response", "Unsafe", "rewrite", "regenerate-unsafe"))
            stages.append(_check(rng, "response", "Safe", "allow", "default", attempt=2))
        elif x < 0.07:
            flags = ("unnecessary_refusal",) if stages[0]["verdict"] is not None else ()
            rule = "unnecessary-refusal" if flags else "default"
            action = "flag" if flags else "allow"
            stages.append(_check(rng, "response", "Safe", action, rule, refusal=True, flags=flags))
        elif x < 0.09:
            stages.append(_check(rng, "response", "Unsafe", "block", "block-unsafe-response"))
        else:
            stages.append(_check(rng, "response", "Safe", "allow", "default", refusal=False))
    guard_s = sum(s["latency_s"] for s in stages)
    total = guard_s + (upstream or 0.0) + rng.uniform(0.0005, 0.002)
    return record_dict(
        policy=POLICY,
        stages=stages,
        time=time,
        request_id=f"{rng.getrandbits(128):032x}",
        mode="concurrent",
        model="gpt-4o-mini" if i % 3 else "qwen3-32b",
        guard_model="Qwen/Qwen3Guard-Gen-4B",
        prompt=f"user prompt {i}",
        response=None if prompt_blocked else f"answer {i}",
        latency={"guard_s": guard_s, "upstream_s": upstream, "total_s": total},
        content_mode="hash",
    )


def records(count: int, *, seed: int = 7) -> Iterator[dict[str, Any]]:
    """The log's records, unsealed: calls and, every ~5000, a breaker event."""
    rng = random.Random(seed)
    step = timedelta(days=1) / max(count, 1)
    for i in range(count):
        time = START + step * i
        if i % 5000 == 4999:
            kind = ("breaker.open", "breaker.half_open", "breaker.closed")[(i // 5000) % 3]
            yield event_dict(kind, {"backend": "guard", "failures": 5}, time=time)
        else:
            yield call_record(rng, time, i)


def write_log(path: Path, count: int, *, index: bool = True) -> None:
    """Write ``count`` records through the JSONL sink (with its index unless told not to)."""
    with JsonlSink(path, index=index) as sink:
        for data in records(count):
            sink.write_json(data)


def write_v1_log(path: Path, count: int) -> None:
    """The same records in the previous chain layout (version 1), as older releases wrote."""
    chain = HashChain(version=1)
    with open(path, "wb") as fh:
        for data in records(count):
            sealed = chain.seal(data)
            fh.write(sealed.payload)
            chain.advance(sealed)


def cached_log(count: int) -> Path:
    """The synthetic log of ``count`` records (and its index), written once per machine."""
    path = Path(tempfile.gettempdir()) / f"guardrail-bench-audit-v{VERSION}-{count}.jsonl"
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        for stale in (partial, index_path(partial)):
            stale.unlink(missing_ok=True)
        write_log(partial, count)
        index_path(partial).replace(index_path(path))
        partial.replace(path)
    return path
