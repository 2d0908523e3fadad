"""A thousand concurrent async guarded calls: no errors, one distinct record each, bounded memory.

Run in a fresh interpreter so its peak memory is the load's own: a loopback
upstream, a scripted guard, the real ``openai.AsyncOpenAI`` client and the JSONL
audit sink.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CALLS = 1000
HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    import openai, guardrail
    from fakellm import fake_llm
    from guardrail.policy import load_policy_text
    from guardrail.testing import ScriptedClassifier

    calls, path = int(sys.argv[1]), sys.argv[2]
    policy = load_policy_text(
        "version: 1\\nname: load\\n"
        f"audit: {{sink: jsonl, path: {json.dumps(path)}}}\\n"
        "rules:\\n  - {id: b, stage: prompt, when: {levels: [Unsafe]}, action: block}\\n"
    )

    def answer(messages, index):
        return "Fine: " + messages[-1]["content"]

    async def main(url):
        guard = guardrail.Guard(policy, classifier=ScriptedClassifier({"bomb": "Safety: Unsafe"}))
        client = guardrail.wrap(openai.AsyncOpenAI(base_url=url, api_key="k"), guard=guard)
        async def one(i):
            text = f"bomb {i}" if i % 10 == 0 else f"question {i}"
            try:
                reply = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": text}]
                )
                return reply.choices[0].message.content == "Fine: " + text
            except guardrail.BlockedError:
                return i % 10 == 0
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = await asyncio.gather(*(one(i) for i in range(calls)), return_exceptions=True)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        guard.close()
        return results, before, after

    with fake_llm(answer) as llm:
        results, before, after = asyncio.run(main(llm.base_url))
    print(json.dumps({
        "ok": sum(r is True for r in results),
        "errors": [repr(r) for r in results if r is not True][:5],
        "rss_before_kb": before,
        "rss_peak_kb": after,
    }))
    """
)


def test_a_thousand_concurrent_async_calls(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(CALLS), str(log)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    assert out["ok"] == CALLS
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == CALLS
    assert len({r["request_id"] for r in records}) == CALLS
    assert sum(r["final_action"] == "block" for r in records) == CALLS // 10
    # Memory stays bounded: the load adds well under 1 MB per call in flight.
    assert out["rss_peak_kb"] - out["rss_before_kb"] < 400 * 1024, out
    from guardrail.audit import verify_file

    assert verify_file(log).ok
