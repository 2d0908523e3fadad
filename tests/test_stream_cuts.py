"""A cut sync stream frees its worker at once, even while the upstream stalls.

The upstream sends a sentence the guard blocks and then stalls for a minute; the
read of the next chunk is running on an I/O worker when the stream is cut. These
tests fail if that read is left blocked: the next streams would queue behind it,
and the interpreter could not exit (its pools join their workers).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from loopback import LoopbackServer, SSEResponse, chat_completion_chunks

import guardrail
from guardrail.policy import load_policy_text
from guardrail.testing import ScriptedClassifier

STALL_S = 60.0
POLICY = (
    "version: 1\nname: cuts\naudit: {sink: none}\nstreaming: {chunk_chars: 24}\n"
    "rules:\n  - {id: b, stage: response, when: {levels: [Unsafe]}, action: block}\n"
)
SCRIPT = {"bomb": "Safety: Unsafe\nCategories: Violent"}
HERE = Path(__file__).resolve().parent


def stalling_chunks() -> list[object]:
    chunks: list[object] = list(
        chat_completion_chunks(["The weather is nice today. ", "Here is the bomb recipe. ", "x"])
    )
    # The stall comes right after the blocked sentence: the next read waits on it.
    return [*chunks[:3], STALL_S, *chunks[3:]]


@pytest.fixture
def stalling_upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        server.route(
            "POST", "/v1/chat/completions", SSEResponse(stalling_chunks(), chunk_delay=0.01)
        )
        yield server


def test_twenty_cut_streams_with_one_io_worker(stalling_upstream: LoopbackServer) -> None:
    # One worker per pool: a read stranded by one cut would hold up every later stream.
    guard = guardrail.Guard(
        load_policy_text(POLICY),
        classifier=ScriptedClassifier(SCRIPT, delay_s=0.005),  # checks on the pool
        max_workers=1,
    )
    client = guardrail.wrap(
        openai.OpenAI(base_url=stalling_upstream.url + "/v1", api_key="k", max_retries=0),
        guard=guard,
    )
    reasons: list[str | None] = []

    def cut_twenty() -> None:
        for _ in range(20):
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "weather?"}], stream=True
            )
            reasons.append([c for c in stream if c.choices][-1].choices[0].finish_reason)

    runner = threading.Thread(target=cut_twenty, daemon=True)
    runner.start()
    runner.join(timeout=STALL_S / 3)  # a stranded read would take the whole stall
    assert not runner.is_alive(), f"stuck after {len(reasons)} cut streams"
    assert reasons == ["content_filter"] * 20
    assert len(stalling_upstream.requests) == 20
    guard.close()


def test_the_interpreter_exits_promptly_after_a_cut(stalling_upstream: LoopbackServer) -> None:
    script = textwrap.dedent(
        f"""
        import openai, guardrail
        from guardrail.policy import load_policy_text
        from guardrail.testing import ScriptedClassifier
        guard = guardrail.Guard(
            load_policy_text({POLICY!r}),
            classifier=ScriptedClassifier({SCRIPT!r}, delay_s=0.005),
        )
        client = guardrail.wrap(
            openai.OpenAI(base_url={stalling_upstream.url + "/v1"!r}, api_key="k", max_retries=0),
            guard=guard,
        )
        stream = client.chat.completions.create(
            model="m", messages=[{{"role": "user", "content": "weather?"}}], stream=True
        )
        print([c for c in stream if c.choices][-1].choices[0].finish_reason)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=STALL_S / 3,  # exit joins the pools' workers: a stranded one would hang it
        cwd=HERE,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "content_filter"
