"""The guarded-call flows, driven by hand: every effect answered by a script.

No threads, sockets or models: :class:`Script` answers each effect a flow
yields (verdicts come from :class:`~guardrail.testing.ScriptedClassifier`
through the real parser), and the tests pin which effects the flow asks for,
in which order, and what it decides.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from guardrail.chat import ChatShapes, answer_text
from guardrail.classifiers.base import Conversation, moderate_many
from guardrail.errors import BlockedError, ClassifierError, GuardTimeoutError, RemoteGuardError
from guardrail.flow import FlowSettings, Trace, check_flow, completion_flow, stream_flow
from guardrail.flow.drive import Stepper, timeout_error
from guardrail.flow.effects import (
    END,
    Abandoned,
    Audit,
    Await,
    CallUpstream,
    Cancel,
    Classify,
    CloseStream,
    Effect,
    Emit,
    First,
    Flow,
    Handle,
    ReadChunk,
    Run,
    Score,
    Start,
    WaitFirst,
)
from guardrail.policy import GUARD_ERROR_FLAG, Policy, load_policy_text
from guardrail.reward.base import RewardScore
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action, Stage

SHAPES = ChatShapes(completion=ChatCompletion, chunk=ChatCompletionChunk)

SCRIPT = {
    "bomb": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
    "sorry": "Safety: Safe\nCategories: None\nRefusal: Yes",
    "hurt myself": "Safety: Controversial\nCategories: Suicide & Self-Harm\nRefusal: No",
}


# ------------------------------------------------------------------------ script


class ScriptHandle(Handle[Any]):
    __slots__ = ("cancelled", "id")

    def __init__(self, job: Any, number: int) -> None:
        super().__init__(job)
        self.id = number
        self.cancelled = False


@dataclass
class Script:
    """Answers effects: verdicts by keyword, scripted upstream answers and streams."""

    upstream: Callable[[dict[str, Any]], Any] = lambda params: completion("Fine.")
    classify: Callable[[Stage, Sequence[Conversation]], Any] | None = None
    rewards: dict[str, float] = field(default_factory=dict)
    first: First = "check"
    log: list[Effect] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    judged: list[Conversation] = field(default_factory=list)
    emitted: list[Any] = field(default_factory=list)
    audited: list[Trace] = field(default_factory=list)
    closed: list[Any] = field(default_factory=list)
    close_error: Exception | None = None
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def perform(self, effect: Effect) -> Any:
        if isinstance(effect, Start):
            return ScriptHandle(effect.job, next(self._ids))
        if isinstance(effect, Run):
            return self.run(effect.job)
        if isinstance(effect, Await):
            handle = effect.handle
            assert isinstance(handle, ScriptHandle)
            assert not handle.cancelled, "awaited a cancelled job"
            return self.run(handle.job)
        if isinstance(effect, Cancel):
            assert isinstance(effect.handle, ScriptHandle)
            effect.handle.cancelled = True
            return None
        if isinstance(effect, WaitFirst):
            return self.first
        if isinstance(effect, CloseStream):
            self.closed.append(effect.stream)
            if self.close_error is not None:
                raise self.close_error
            return None
        if isinstance(effect, Audit):
            self.audited.append(effect.trace)
            return None
        raise AssertionError(f"unexpected effect {effect!r}")

    def run(self, job: Any) -> Any:
        if isinstance(job, Classify):
            self.judged.extend(job.conversations)
            if self.classify is not None:
                return self.classify(job.stage, job.conversations)
            return moderate_many(ScriptedClassifier(SCRIPT), job.conversations)
        if isinstance(job, Score):
            return [
                RewardScore(score=self.rewards[answer_text(response)], model="r")
                for _, response in job.conversations
            ]
        if isinstance(job, CallUpstream):
            self.calls.append(job.params)
            return self.upstream(job.params)
        if isinstance(job, ReadChunk):
            return next(job.stream, END)
        raise AssertionError(f"unexpected job {job!r}")

    def drive(self, flow: Flow[Any]) -> Any:
        """Step ``flow`` to its end by hand; its exception propagates."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            self.log.append(effect)
            if isinstance(effect, Emit):
                self.emitted.append(effect.chunk)
                continue
            try:
                value = self.perform(effect)
            except Exception as exc:
                error = exc

    def kinds(self) -> list[str]:
        """The log as effect names, jobs spelled out (``Start:CallUpstream``, ``Run:Classify``)."""
        out = []
        for effect in self.log:
            if isinstance(effect, Start | Run | Await | Cancel):
                job = effect.job if isinstance(effect, Start | Run) else effect.handle.job
                out.append(f"{type(effect).__name__}:{type(job).__name__}")
            else:
                out.append(type(effect).__name__)
        return out


# --------------------------------------------------------------------- builders


def completion(*answers: str, finish: str = "stop") -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": i,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": {"content": []},
                }
                for i, text in enumerate(answers)
            ],
        }
    )


def chunk(text: str | None, *, index: int = 0, finish: str | None = None) -> ChatCompletionChunk:
    delta = {"role": "assistant", "content": text} if text is not None else {}
    return ChatCompletionChunk.model_validate(
        {
            "id": "s1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }
    )


def stream_of(*pieces: str) -> Iterator[ChatCompletionChunk]:
    return iter([*(chunk(p) for p in pieces), chunk(None, finish="stop")])


def policy(extra: str = "", *, rules: str = "") -> Policy:
    """The default policy's blocking and refusal rules, with settings (and rules) added."""
    text = (
        "version: 1\nname: flow-test\n"
        + extra
        + "rules:\n"
        + rules
        + "  - {id: block-unsafe-prompt, stage: prompt, when: {levels: [Unsafe]}, action: block}\n"
        "  - {id: block-unsafe-response, stage: response, when: {levels: [Unsafe]},"
        " action: block}\n"
        "  - id: unnecessary-refusal\n    stage: response\n"
        "    when: {prompt_levels: [Safe], levels: [Safe], refusal: true}\n"
        "    action: flag\n    flag: unnecessary_refusal\n"
        "    retry: {instruction: Answer it., max_attempts: 1}\n"
    )
    return load_policy_text(text, source="flow-test.yaml")


def ask(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def run_completion(script: Script, settings: FlowSettings, params: dict[str, Any]) -> Any:
    trace = Trace.begin(settings.policy.execution.mode, model="m", messages=params["messages"])
    return script.drive(completion_flow(settings, trace, params, SHAPES))


def run_stream(script: Script, settings: FlowSettings, params: dict[str, Any]) -> Trace:
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(settings, trace, {**params, "stream": True}, SHAPES))
    return trace


def texts(chunks: Sequence[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ------------------------------------------------------------ the prompt phase


def test_a_blocked_prompt_cancels_the_raced_upstream_call() -> None:
    script = Script()
    settings = FlowSettings.of(policy("execution: {mode: concurrent}\n"))
    with pytest.raises(BlockedError) as raised:
        run_completion(script, settings, ask("how to build a bomb"))
    assert script.kinds() == [
        "Start:CallUpstream",  # raced with the prompt check
        "Run:Classify",
        "Cancel:CallUpstream",
        "Audit",
    ]
    assert script.calls == []  # its answer is never awaited
    assert raised.value.decision.rule_id == "block-unsafe-prompt"
    (trace,) = script.audited
    assert trace.action is Action.BLOCK
    assert trace.blocked_stage is Stage.PROMPT


def test_a_blocked_prompt_can_answer_with_the_block_message() -> None:
    script = Script()
    extra = "execution: {mode: concurrent}\nblock: {behavior: message, message: No.}\n"
    result = run_completion(script, FlowSettings.of(policy(extra)), {**ask("bomb"), "n": 2})
    assert [c.message.content for c in result.choices] == ["No.", "No."]
    assert {c.finish_reason for c in result.choices} == {"content_filter"}
    assert "Cancel:CallUpstream" in script.kinds()
    assert script.calls == []


def test_an_allowed_prompt_awaits_the_raced_call() -> None:
    script = Script()
    result = run_completion(script, FlowSettings.of(policy()), ask("capital of France?"))
    assert script.kinds()[:3] == [
        "Start:CallUpstream",
        "Run:Classify",
        "Await:CallUpstream",
    ]
    assert "Cancel:CallUpstream" not in script.kinds()
    assert result.choices[0].message.content == "Fine."


def test_sequential_mode_calls_the_upstream_after_the_check() -> None:
    script = Script()
    settings = FlowSettings.of(policy("execution: {mode: sequential}\n"))
    with pytest.raises(BlockedError):
        run_completion(script, settings, ask("bomb"))
    assert script.kinds() == ["Run:Classify", "Audit"]
    run_completion(script, settings, ask("hello"))
    assert script.kinds()[2:4] == ["Run:Classify", "Run:CallUpstream"]


def test_a_rewritten_prompt_cancels_the_raced_call_and_asks_again() -> None:
    rules = (
        "  - id: soften\n    stage: prompt\n    when: {levels: [Controversial]}\n"
        "    action: rewrite\n    rewrite: {mode: add_instruction, text: Be careful.}\n"
    )
    script = Script()
    settings = FlowSettings.of(policy(rules=rules))
    run_completion(script, settings, ask("I want to hurt myself"))
    kinds = script.kinds()
    assert kinds[:4] == [
        "Start:CallUpstream",
        "Run:Classify",
        "Cancel:CallUpstream",
        "Run:CallUpstream",  # the rewritten prompt's own call
    ]
    (sent,) = script.calls
    assert sent["messages"][0] == {"role": "system", "content": "Be careful."}


# -------------------------------------------------------------- the answer phase


def test_the_unnecessary_refusal_retry_replaces_the_refusal() -> None:
    answers = iter([completion("Sorry, I can't."), completion("Here is a picnic plan.")])
    script = Script(upstream=lambda params: next(answers))
    result = run_completion(script, FlowSettings.of(policy()), ask("plan a picnic"))
    assert result.choices[0].message.content == "Here is a picnic plan."
    first, retry = script.calls
    assert retry["messages"][0] == {"role": "system", "content": "Answer it."}
    assert retry["messages"][1:] == first["messages"]
    assert retry["n"] == 1
    (trace,) = script.audited
    assert trace.flags == ["unnecessary_refusal"]
    assert trace.action is Action.REWRITE
    assert [(o.stage, o.attempt) for o in trace.outcomes] == [
        (Stage.PROMPT, 0),
        (Stage.RESPONSE, 0),
        (Stage.RESPONSE, 1),
    ]
    assert trace.responses == ["Sorry, I can't.", "Here is a picnic plan."]


def test_a_failed_retry_keeps_the_flagged_refusal() -> None:
    script = Script(upstream=lambda params: completion("Sorry, no."))
    result = run_completion(script, FlowSettings.of(policy()), ask("plan a picnic"))
    assert result.choices[0].message.content == "Sorry, no."
    assert len(script.calls) == 2
    assert script.audited[0].flags == ["unnecessary_refusal"]
    assert script.audited[0].action is Action.FLAG


def test_a_retry_is_not_taken_for_an_unsafe_prompt() -> None:
    script = Script(upstream=lambda params: completion("Sorry, no."))
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    run_completion(script, settings, ask("a bomb?"))
    assert script.calls == []


def test_best_of_n_returns_the_best_candidate_the_policy_let_through() -> None:
    reward = "reward: {best_of_n: 3, models: [{id: r, kind: seqcls, model: /r}]}\n"
    settings = FlowSettings.of(policy(reward + "block: {behavior: message}\n"))
    answers = ("An answer.", "A great answer.", "A bomb answer.")
    script = Script(
        upstream=lambda params: completion(*answers),
        rewards={"An answer.": 0.1, "A great answer.": 0.9, "A bomb answer.": 5.0},
    )
    result = run_completion(script, settings, ask("help me"))
    (sent,) = script.calls
    assert sent["n"] == 3
    assert [(c.index, c.message.content) for c in result.choices] == [(0, "A great answer.")]
    (trace,) = script.audited
    assert [(c, s.score) for c, s, _ in trace.rewards] == [(0, 0.1), (1, 0.9), (2, 5.0)]
    assert trace.action is Action.ALLOW  # the blocked candidate was not chosen
    assert trace.blocked_stage is None


def test_best_of_n_with_every_candidate_blocked_blocks() -> None:
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    settings = FlowSettings.of(policy(reward))
    script = Script(
        upstream=lambda params: completion("bomb one", "bomb two"),
        rewards={"bomb one": 1.0, "bomb two": 2.0},
    )
    with pytest.raises(BlockedError):
        run_completion(script, settings, ask("help me"))
    assert script.audited[0].blocked_stage is Stage.RESPONSE


def test_a_partly_blocked_answer_keeps_the_choices_that_passed() -> None:
    settings = FlowSettings.of(policy("block: {behavior: raise}\n"))
    script = Script(upstream=lambda params: completion("Nice.", "A bomb."))
    result = run_completion(script, settings, {**ask("two please"), "n": 2})
    assert [c.message.content for c in result.choices] == [
        "Nice.",
        "Sorry, I can't help with that.",
    ]
    assert result.choices[1].finish_reason == "content_filter"
    assert result.choices[1].logprobs is None  # nothing of the blocked answer survives
    (trace,) = script.audited
    assert trace.action is Action.BLOCK
    assert trace.blocked_stage is None  # the call as a whole was not blocked


def test_an_upstream_failure_is_audited_and_raised() -> None:
    def fail(params: dict[str, Any]) -> Any:
        raise ConnectionError("upstream down")

    script = Script(upstream=fail)
    with pytest.raises(ConnectionError):
        run_completion(script, FlowSettings.of(policy()), ask("hello"))
    (trace,) = script.audited
    assert [(where, type(e)) for where, e in trace.errors] == [("upstream", ConnectionError)]


# ---------------------------------------------------------------- failure modes


@pytest.mark.parametrize("stage", [Stage.PROMPT, Stage.RESPONSE])
@pytest.mark.parametrize("mode", ["closed", "open"])
@pytest.mark.parametrize(
    "error", [ClassifierError("guard down"), GuardTimeoutError("late"), RuntimeError("bug")]
)
def test_a_failed_check_is_decided_by_its_stage_failure_mode(
    stage: Stage, mode: str, error: Exception
) -> None:
    def classify(at: Stage, conversations: Sequence[Conversation]) -> Any:
        if at is stage:
            raise error
        return moderate_many(ScriptedClassifier(SCRIPT), conversations)

    script = Script(classify=classify)
    settings = FlowSettings.of(policy(f"failure: {{{stage.value}: {mode}}}\n"))
    if mode == "closed":
        with pytest.raises(BlockedError) as raised:
            run_completion(script, settings, ask("hello"))
        decision = raised.value.decision
        assert decision.action is Action.BLOCK
    else:
        result = run_completion(script, settings, ask("hello"))
        assert result.choices[0].message.content == "Fine."
        (decision,) = script.audited[0].report().decisions(stage)
        assert decision.action is Action.ALLOW
    assert decision.rule_id == "failure"
    assert GUARD_ERROR_FLAG in decision.flags
    assert decision.verdict is None
    (trace,) = script.audited
    (where, recorded), *_ = trace.errors
    assert where == stage.value
    assert isinstance(recorded, ClassifierError)  # any failure becomes a guard error
    position = next(i for i, o in enumerate(trace.outcomes) if o.stage is stage)
    assert trace.outcome_errors[position] is recorded


def test_verdicts_that_do_not_fit_the_check_fail_it() -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        return moderate_many(ScriptedClassifier(SCRIPT), conversations) * 2

    script = Script(classify=classify)
    with pytest.raises(BlockedError) as raised:
        run_completion(script, FlowSettings.of(policy()), ask("hello"))
    assert raised.value.decision.rule_id == "failure"


def test_a_reward_failure_leaves_answers_unscored() -> None:
    reward = "reward: {models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script()  # no reward for "Fine.": scoring raises KeyError
    result = run_completion(script, FlowSettings.of(policy(reward)), ask("hello"))
    assert result.choices[0].message.content == "Fine."
    (trace,) = script.audited
    assert [where for where, _ in trace.errors] == ["reward"]
    assert trace.rewards == []
    assert trace.action is Action.ALLOW


# ------------------------------------------------------------------- streaming

STREAMING = "streaming: {chunk_chars: 24}\nblock: {behavior: message}\n"


def test_a_stream_is_released_as_its_checks_pass() -> None:
    pieces = ("The weather is nice. ", "It will be sunny all day. ", "Enjoy it.")
    script = Script(upstream=lambda params: stream_of(*pieces))
    trace = run_stream(script, FlowSettings.of(policy(STREAMING)), ask("weather?"))
    assert texts(script.emitted) == "".join(pieces)
    assert script.emitted[-1].choices[0].finish_reason == "stop"
    assert trace.action is Action.ALLOW
    final = script.judged[-1][1]
    assert final["content"] == "".join(pieces)  # the last check judged the whole answer
    assert script.kinds()[-2:] == ["CloseStream", "Audit"]


def test_a_stream_is_cut_when_a_check_blocks() -> None:
    pieces = ("The weather is nice. ", "Now the bomb recipe: ", "mix things. ")
    script = Script(upstream=lambda params: stream_of(*pieces))
    trace = run_stream(script, FlowSettings.of(policy(STREAMING)), ask("weather?"))
    *released, closing = script.emitted
    assert texts(released) == "The weather is nice. "
    assert "bomb" not in texts(script.emitted)
    (choice,) = closing.choices
    assert choice.finish_reason == "content_filter"
    assert choice.delta.content is None  # no replacement configured
    assert trace.action is Action.BLOCK
    assert trace.blocked_stage is Stage.RESPONSE
    assert script.kinds()[-4:] == [
        "Emit",  # the closing chunk
        "Cancel:ReadChunk",  # the read started while the unsafe text was checked
        "CloseStream",
        "Audit",
    ]
    assert len(script.closed) == 1


def test_a_cut_stream_ends_every_open_choice_with_the_template() -> None:
    rules = (
        "  - id: calm\n    stage: response\n    when: {categories: [Violent]}\n"
        "    action: rewrite\n"
        "    rewrite: {mode: template, text: Let's talk about something else.}\n"
    )

    def two_choices(params: dict[str, Any]) -> Iterator[ChatCompletionChunk]:
        return iter(
            [
                chunk("Hello there, friend. ", index=0),
                chunk("Hi there, my friend. ", index=1),
                chunk("A bomb is made by ", index=1),
                chunk(None, index=0, finish="stop"),
                chunk(None, index=1, finish="stop"),
            ]
        )

    script = Script(upstream=two_choices)
    trace = run_stream(script, FlowSettings.of(policy(STREAMING, rules=rules)), ask("hi"))
    closing = script.emitted[-1]
    assert sorted(c.index for c in closing.choices) == [0, 1]
    assert {c.delta.content for c in closing.choices} == {"Let's talk about something else."}
    assert {c.finish_reason for c in closing.choices} == {"content_filter"}
    assert trace.action is Action.REWRITE
    assert trace.blocked_stage is None


def test_refusal_is_judged_on_a_stream_final_check_only() -> None:
    pieces = ("Sorry, I cannot help you. ", "I will not do it, sorry. ", "Ask me another.")
    script = Script(upstream=lambda params: stream_of(*pieces))
    trace = run_stream(script, FlowSettings.of(policy(STREAMING)), ask("plan a picnic"))
    refusals = [o.decision.verdict.refusal for o in trace.outcomes[1:] if o.decision.verdict]
    assert len(refusals) >= 3
    assert refusals[:-1] == [None] * (len(refusals) - 1)  # partial answers: masked
    assert refusals[-1] is True  # the whole answer: judged
    assert trace.flags == ["unnecessary_refusal"]
    assert texts(script.emitted) == "".join(pieces)  # a flag does not cut the stream


def test_a_blocked_prompt_ends_a_stream_before_any_upstream_chunk() -> None:
    script = Script(upstream=lambda params: stream_of("never"))
    settings = FlowSettings.of(policy("block: {behavior: message, message: No.}\n"))
    run_stream(script, settings, {**ask("bomb"), "n": 2})
    (closing,) = script.emitted
    assert [(c.index, c.delta.content) for c in closing.choices] == [(0, "No."), (1, "No.")]
    assert script.calls == []
    assert "Cancel:CallUpstream" in script.kinds()
    assert script.closed == []


def test_a_stream_read_failure_is_audited_and_the_stream_closed() -> None:
    def broken(params: dict[str, Any]) -> Iterator[ChatCompletionChunk]:
        yield chunk("Hello. ")
        raise ConnectionResetError("cut")

    script = Script(upstream=broken)
    with pytest.raises(ConnectionResetError):
        run_stream(script, FlowSettings.of(policy(STREAMING)), ask("hi"))
    (trace,) = script.audited
    assert [where for where, _ in trace.errors] == ["upstream"]
    assert script.kinds()[-2:] == ["CloseStream", "Audit"]


def test_a_stream_whose_close_fails_is_still_audited_and_ends_normally() -> None:
    script = Script(
        upstream=lambda params: stream_of("Hello there. ", "Fine."),
        close_error=OSError("close failed"),
    )
    trace = run_stream(script, FlowSettings.of(policy(STREAMING)), ask("hi"))
    assert texts(script.emitted) == "Hello there. Fine."
    assert script.audited == [trace]
    assert [(where, str(error)) for where, error in trace.errors] == [("upstream", "close failed")]
    assert script.kinds()[-2:] == ["CloseStream", "Audit"]


def test_an_abandoned_stream_still_cleans_up_and_emits_nothing_more() -> None:
    pieces = ("One sentence here. ", "Another one there. ", "And a third one.")
    script = Script(upstream=lambda params: stream_of(*pieces))
    trace = Trace.begin("streaming", model="m", messages=ask("hi")["messages"])
    stepper = Stepper(stream_flow(FlowSettings.of(policy(STREAMING)), trace, ask("hi"), SHAPES))
    while (effect := stepper.next_effect()) is not None:
        script.log.append(effect)
        if isinstance(effect, Emit):
            break  # the caller leaves after the first chunk
        stepper.resolve(script.perform(effect))
    assert stepper.abandon()
    after: list[Effect] = []
    while (effect := stepper.next_effect()) is not None:
        after.append(effect)
        stepper.resolve(script.perform(effect))
    assert stepper.finished
    assert not any(isinstance(e, Emit) for e in after)
    assert [type(e).__name__ for e in after][-2:] == ["CloseStream", "Audit"]
    assert any(isinstance(e, Cancel) for e in after)
    assert script.audited == [trace]
    assert not stepper.abandon()  # finished: nothing more to abandon


def test_a_check_abandoned_while_it_runs_is_audited_and_its_job_left_to_the_driver() -> None:
    script = Script()
    messages = ask("hi")["messages"]
    stepper = Stepper(check_flow(FlowSettings.of(policy()), Stage.PROMPT, messages, None, None))
    run = stepper.next_effect()
    assert isinstance(run, Run)
    assert isinstance(run.job, Classify)
    assert stepper.abandon()  # the caller went away while the check ran
    after: list[Effect] = []
    while (effect := stepper.next_effect()) is not None:
        after.append(effect)
        stepper.resolve(script.perform(effect))
    # A Run's job is the driver's to drop (it holds the only handle): the flow only audits.
    assert [type(e) for e in after] == [Audit]
    assert stepper.finished


# --------------------------------------------------------------- direct checks


def test_a_direct_check_is_decided_and_audited_never_raised() -> None:
    script = Script()
    settings = FlowSettings.of(policy("block: {behavior: raise}\n"))
    decision = script.drive(check_flow(settings, Stage.PROMPT, ask("bomb")["messages"], None, None))
    assert decision.action is Action.BLOCK
    assert script.kinds() == ["Run:Classify", "Audit"]
    (trace,) = script.audited
    assert trace.mode == "check"
    assert trace.blocked_stage is Stage.PROMPT


def test_a_direct_response_check_records_the_answer() -> None:
    script = Script()
    flow = check_flow(
        FlowSettings.of(policy()), Stage.RESPONSE, ask("hi")["messages"], "Sorry.", None
    )
    decision = script.drive(flow)
    assert decision.verdict is not None
    assert decision.verdict.refusal is True
    assert script.audited[0].responses == ["Sorry."]


# ------------------------------------------------------------------- stepping


def test_the_stepper_passes_outcomes_and_returns_the_result() -> None:
    def flow() -> Flow[int]:
        first = yield Emit("a")
        try:
            yield Emit("b")
        except KeyError as exc:
            return int(first) + len(str(exc))
        return -1

    stepper: Stepper[int] = Stepper(flow())
    assert stepper.next_effect() == Emit("a")
    stepper.resolve("40")
    assert stepper.next_effect() == Emit("b")
    stepper.reject(KeyError("x"))
    assert stepper.next_effect() is None
    assert stepper.finished
    assert stepper.result == 40 + len("'x'")


def test_the_stepper_raises_what_the_flow_raises() -> None:
    def flow() -> Flow[None]:
        yield Emit("a")
        raise ValueError("boom")

    stepper: Stepper[None] = Stepper(flow())
    stepper.next_effect()
    with pytest.raises(ValueError, match="boom"):
        stepper.next_effect()
    assert stepper.finished
    assert not stepper.abandon()


def test_an_abandoned_flow_that_swallows_the_signal_still_finishes() -> None:
    def flow() -> Flow[str]:
        try:
            yield Emit("a")
        except Abandoned:
            yield Emit("dropped")
            yield Audit(Trace.begin("check"))
        return "done"

    stepper: Stepper[str] = Stepper(flow())
    stepper.next_effect()
    assert stepper.abandon()
    effect = stepper.next_effect()
    assert isinstance(effect, Audit)  # the Emit was dropped: nobody listens
    assert stepper.next_effect() is None
    assert stepper.result == "done"


def test_abandoned_raised_without_abandoning_propagates() -> None:
    def flow() -> Flow[None]:
        yield Emit("a")
        raise Abandoned

    stepper: Stepper[None] = Stepper(flow())
    stepper.next_effect()
    with pytest.raises(Abandoned):
        stepper.next_effect()


def test_a_missed_deadline_is_a_timeout_not_a_server_failure() -> None:
    error = timeout_error(Classify(Stage.PROMPT, []), 0.25)
    assert isinstance(error, GuardTimeoutError)
    assert not isinstance(error, RemoteGuardError)  # no server was involved
    assert str(error) == "prompt check exceeded its 0.25s deadline"
    assert str(timeout_error(Score([]), 2)) == "reward check exceeded its 2s deadline"
