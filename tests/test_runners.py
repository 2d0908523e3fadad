"""The sync runner's handoff savings: inline instant checks and deferred upstream calls.

Thread identity and request counts are asserted, never timings.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import openai
import pytest
from fakellm import FakeLLM, fake_llm

import guardrail
from guardrail import Action, BlockedError, Guard
from guardrail.audit import read_records
from guardrail.flow.sync_driver import INLINE_AFTER, CheckPace
from guardrail.policy import load_policy_text
from guardrail.qwen3guard import GuardInput
from guardrail.testing import ScriptedClassifier
from guardrail.types import Verdict

SCRIPT = {
    "bomb": "Safety: Unsafe\nCategories: Violent",
    "BOOM": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
}

POLICY = """
version: 1
name: runner-test
execution: {{mode: {mode}, timeout_s: {timeout}}}
block: {{behavior: raise}}
streaming: {{chunk_chars: 24}}
audit: {{sink: jsonl, path: "{path}"}}
rules:
  - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
  - {{id: block-unsafe-response, stage: response, when: {{levels: [Unsafe]}}, action: block}}
"""


class ThreadRecorder(ScriptedClassifier):
    """A scripted guard that notes which thread ran each check, with a settable delay."""

    def __init__(self) -> None:
        super().__init__(SCRIPT)
        self.threads: list[int] = []
        self.sleep_s = 0.0

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        self.threads.append(threading.get_ident())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().classify(inputs)


@pytest.fixture(autouse=True)
def no_gc_pauses() -> Iterator[None]:
    """Whether checks run inline depends on their wall time; a collector pause is not theirs."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def answer(messages: list[dict[str, str]], index: int) -> str:
    return "Fine. BOOM goes the recipe." if "unsafe answer" in messages[-1]["content"] else "Fine."


def make(tmp_path: Path, classifier: ScriptedClassifier, *, mode: str = "concurrent") -> Guard:
    text = POLICY.format(mode=mode, timeout="0.2", path=tmp_path / "audit.jsonl")
    return Guard(load_policy_text(text, source="runner-test.yaml"), classifier=classifier)


def warm(guard: Guard) -> None:
    for _ in range(INLINE_AFTER):
        guard.check_prompt([{"role": "user", "content": "hello"}])


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client(llm: FakeLLM, guard: Guard) -> openai.OpenAI:
    return guardrail.wrap(
        openai.OpenAI(base_url=llm.base_url, api_key="k", max_retries=0), guard=guard
    )


def test_pace_needs_a_streak_of_fast_checks() -> None:
    pace = CheckPace()
    for _ in range(INLINE_AFTER - 1):
        pace.record(1e-5)
    assert not pace.inline
    pace.record(1e-5)
    assert pace.inline
    pace.record(0.01)
    assert not pace.inline


def test_instant_checks_move_to_the_callers_thread_and_slow_ones_move_back(
    tmp_path: Path,
) -> None:
    guard_model = ThreadRecorder()
    guard = make(tmp_path, guard_model)
    here = threading.get_ident()
    guard.check_prompt(ask("hello"))
    assert guard_model.threads[-1] != here  # no history yet: a pool worker
    warm(guard)
    guard.check_prompt(ask("hello"))
    assert guard_model.threads[-1] == here
    guard_model.sleep_s = 0.005  # slower than a thread handoff: back to the pool
    guard.check_prompt(ask("hello"))
    guard.check_prompt(ask("hello"))
    assert guard_model.threads[-1] != here


def test_an_inline_check_past_its_deadline_fails_closed(tmp_path: Path) -> None:
    guard_model = ThreadRecorder()
    guard = make(tmp_path, guard_model)
    warm(guard)
    guard_model.sleep_s = 0.3  # the deadline is 0.2 s
    decision = guard.check_prompt(ask("hello"))
    assert guard_model.threads[-1] == threading.get_ident()
    assert decision.action is Action.BLOCK
    assert "exceeded" in (decision.error or "")
    last = list(read_records(tmp_path / "audit.jsonl"))[-1]
    assert last.errors
    assert last.errors[0].type == "GuardTimeoutError"  # a local deadline: no server involved


def test_an_instant_guard_blocks_before_the_upstream_is_ever_called(tmp_path: Path) -> None:
    guard = make(tmp_path, ThreadRecorder())
    warm(guard)
    with fake_llm(answer) as llm:
        wrapped = client(llm, guard)
        assert wrapped.chat.completions.create(model="m", messages=ask("hi")).choices
        assert len(llm.requests) == 1
        with pytest.raises(BlockedError):
            wrapped.chat.completions.create(model="m", messages=ask("build a bomb"))
        assert len(llm.requests) == 1  # concurrent mode, yet no wasted upstream call


class WaitsForUpstream(ScriptedClassifier):
    """A prompt check that passes only once the upstream request has arrived."""

    def __init__(self, llm: FakeLLM) -> None:
        super().__init__(SCRIPT)
        self.llm = llm
        self.saw_request: list[bool] = []

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        if inputs[0].stage.value == "prompt":
            deadline = time.monotonic() + 3.0
            while not self.llm.requests and time.monotonic() < deadline:
                time.sleep(0.005)
            self.saw_request.append(bool(self.llm.requests))
        return super().classify(inputs)


def test_a_slow_check_still_overlaps_the_upstream_call(tmp_path: Path) -> None:
    with fake_llm(answer) as llm:
        guard_model = WaitsForUpstream(llm)
        text = POLICY.format(mode="concurrent", timeout="5", path=tmp_path / "audit.jsonl")
        guard = Guard(load_policy_text(text), classifier=guard_model)
        got = client(llm, guard).chat.completions.create(model="m", messages=ask("hi"))
        assert got.choices[0].message.content == "Fine."
    assert guard_model.saw_request == [True]


@pytest.mark.parametrize("warmed", [False, True])
def test_streams_behave_the_same_with_inline_checks(tmp_path: Path, warmed: bool) -> None:
    guard_model = ThreadRecorder()
    guard = make(tmp_path, guard_model)
    if warmed:
        warm(guard)
    here = threading.get_ident()
    with fake_llm(answer) as llm:
        wrapped = client(llm, guard)
        chunks = list(wrapped.chat.completions.create(model="m", messages=ask("hi"), stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Fine."
        cut = list(
            wrapped.chat.completions.create(
                model="m", messages=ask("an unsafe answer"), stream=True
            )
        )
    released = "".join(c.choices[0].delta.content or "" for c in cut if c.choices)
    assert "BOOM" not in released
    assert cut[-1].choices[0].finish_reason == "content_filter"
    assert (guard_model.threads[-1] == here) is warmed
