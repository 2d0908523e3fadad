"""The flows, driven by hand (see test_flow): what the trace, the report and the caller get.

A scripted clock makes the latencies exact: each classify call takes 1 s, each
upstream call 10 s, so the trace's sums can be pinned without timing anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk
from test_flow import (
    SCRIPT,
    SHAPES,
    STREAMING,
    Script,
    ask,
    chunk,
    completion,
    policy,
    run_completion,
    run_stream,
    stream_of,
    texts,
)

from guardrail.chat import answer_text
from guardrail.classifiers.base import Conversation, moderate_many
from guardrail.errors import BlockedError, ClassifierError, GuardrailError, InputError, PolicyError
from guardrail.flow import FlowSettings, Trace, check_flow, completion_flow, stream_flow
from guardrail.flow.checks import as_guard_error
from guardrail.flow.drive import Stepper, timeout_error
from guardrail.flow.effects import Classify, Emit, Flow, Score
from guardrail.flow.stream import MAX_IN_FLIGHT
from guardrail.flow.trace import StreamEnd
from guardrail.qwen3guard import parse_verdict
from guardrail.reward.base import RewardScore
from guardrail.secrets import Masker
from guardrail.testing import ScriptedClassifier
from guardrail.types import Action, Stage


class Clock:
    """A perf_counter that moves only when the script says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def after_the_prompt_check(kinds: list[str]) -> list[str]:
    """The effects a stream flow asked for after its prompt check (one Run)."""
    return kinds[kinds.index("Run:Classify") + 1 :]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


def timed_script(clock: Clock, *answers: Any, **fields: Any) -> Script:
    """Checks take 1 s and upstream calls 10 s; answers are completions or callables."""
    replies = iter(answers)

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        clock.advance(1.0)
        return moderate_many(ScriptedClassifier(SCRIPT), conversations)

    def upstream(params: dict[str, Any]) -> Any:
        clock.advance(10.0)
        reply = next(replies)
        return reply(params) if callable(reply) else reply

    return Script(upstream=upstream, classify=classify, **fields)


def trace_at(clock: Clock, params: dict[str, Any], mode: str = "sequential") -> Trace:
    return Trace(
        request_id="req", mode=mode, model="m", messages=params["messages"], started=clock.now
    )


SEQUENTIAL = "execution: {mode: sequential}\n"

# ------------------------------------------------------------------ errors and stepping


def test_a_timeout_error_names_the_check_and_its_deadline() -> None:
    prompt = timeout_error(Classify(Stage.PROMPT, []), 0.25)
    assert str(prompt) == "prompt check exceeded its 0.25s deadline"
    assert str(timeout_error(Score([]), 2.0)) == "reward check exceeded its 2s deadline"


def test_a_stepper_has_no_result_before_its_flow_returns() -> None:
    def flow() -> Flow[int]:
        yield Emit("a")
        return 1

    stepper: Stepper[int] = Stepper(flow())
    assert (stepper.result, stepper.finished) == (None, False)
    stepper.next_effect()
    assert (stepper.result, stepper.finished) == (None, False)
    assert stepper.next_effect() is None
    assert (stepper.result, stepper.finished) == (1, True)


def test_any_check_failure_becomes_a_guard_error_that_keeps_its_cause() -> None:
    bug = KeyError("slot")
    error = as_guard_error(bug)
    assert isinstance(error, ClassifierError)
    assert str(error) == "the guard failed: KeyError: 'slot'"
    assert error.__cause__ is bug
    own = PolicyError("bad")
    assert as_guard_error(own) is own


def test_verdicts_that_do_not_fit_name_the_check() -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        return moderate_many(ScriptedClassifier(SCRIPT), conversations) * 2

    script = Script(classify=classify)
    with pytest.raises(BlockedError):
        run_completion(script, FlowSettings.of(policy()), ask("hello"))
    (where, error), *_ = script.audited[0].errors
    assert where == "prompt"
    assert str(error) == "the guard's verdicts do not fit a prompt check"


def test_a_blocked_error_says_which_rule_blocked_which_stage() -> None:
    with pytest.raises(BlockedError, match=r"^prompt blocked by rule 'block-unsafe-prompt'$"):
        run_completion(Script(), FlowSettings.of(policy()), ask("bomb"))


# ------------------------------------------------------------------------ latencies


def test_a_call_adds_up_its_guard_and_upstream_time(clock: Clock) -> None:
    script = timed_script(clock, completion("Fine."))
    params = ask("hello")
    trace = trace_at(clock, params)
    script.drive(completion_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    assert [o.latency_s for o in trace.outcomes] == [1.0, 1.0]
    assert trace.guard_s == 2.0
    assert trace.upstream_s == 10.0
    assert trace.elapsed() == 12.0


def test_a_retry_adds_its_upstream_and_guard_time(clock: Clock) -> None:
    script = timed_script(clock, completion("Sorry, I can't."), completion("Here you go."))
    params = ask("plan a picnic")
    trace = trace_at(clock, params)
    result = script.drive(
        completion_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES)
    )
    assert result.choices[0].message.content == "Here you go."
    assert trace.upstream_s == 20.0
    assert trace.guard_s == 3.0
    assert [(o.attempt, o.latency_s) for o in trace.outcomes] == [(0, 1.0), (0, 1.0), (1, 1.0)]


def test_a_failed_retry_call_is_audited_and_keeps_the_refusal(clock: Clock) -> None:
    def down(params: dict[str, Any]) -> Any:
        raise ConnectionError("down")

    script = timed_script(clock, completion("Sorry, I can't."), down)
    params = ask("plan a picnic")
    trace = trace_at(clock, params)
    result = script.drive(
        completion_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES)
    )
    assert result.choices[0].message.content == "Sorry, I can't."
    assert [(where, str(e)) for where, e in trace.errors] == [("upstream", "down")]
    assert trace.upstream_s == 20.0
    assert trace.flags == ["unnecessary_refusal"]


def test_a_stream_counts_its_upstream_time_once(clock: Clock) -> None:
    def pieces(params: dict[str, Any]) -> Iterator[ChatCompletionChunk]:
        return stream_of("Hello there. ", "Bye now.")

    script = timed_script(clock, pieces)
    params = {**ask("hi"), "stream": True}
    trace = trace_at(clock, params, "streaming")
    script.drive(stream_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    assert texts(script.emitted) == "Hello there. Bye now."
    checks = len(trace.outcomes) - 1
    assert trace.guard_s == 1.0 + checks
    # From the upstream call to the end of the upstream: the call and the checks
    # settled before the stream ended.
    assert 10.0 <= trace.upstream_s <= trace.elapsed() - 1.0
    assert [o.attempt for o in trace.outcomes] == [0] * len(trace.outcomes)


def test_a_stream_blocked_at_the_prompt_spends_no_upstream_time(clock: Clock) -> None:
    script = timed_script(clock)
    params = {**ask("bomb"), "stream": True}
    trace = trace_at(clock, params, "streaming")
    settings = FlowSettings.of(policy(SEQUENTIAL + "block: {behavior: message, message: No.}\n"))
    script.drive(stream_flow(settings, trace, params, SHAPES))
    assert trace.upstream_s == 0.0
    (closing,) = script.emitted
    assert closing.id == "guardrail-req"
    assert closing.model == "m"
    assert [(c.index, c.delta.content) for c in closing.choices] == [(0, "No.")]


# ------------------------------------------------------------------------- prompts


FLAG_PROMPT = (
    "  - {id: note, stage: prompt, when: {levels: [Controversial]}, action: flag,"
    " flag: sensitive}\n"
)


def test_a_flagged_prompt_reports_its_flag() -> None:
    script = Script()
    result = run_completion(script, FlowSettings.of(policy(rules=FLAG_PROMPT)), ask("hurt myself"))
    assert result.choices[0].message.content == "Fine."
    (trace,) = script.audited
    assert trace.flags == ["sensitive"]
    assert trace.action is Action.FLAG


def test_a_direct_check_reports_its_flag() -> None:
    script = Script()
    settings = FlowSettings.of(policy(rules=FLAG_PROMPT))
    messages = ask("hurt myself")["messages"]
    decision = script.drive(check_flow(settings, Stage.PROMPT, messages, None, None))
    assert decision.flags == ("sensitive",)
    assert script.audited[0].flags == ["sensitive"]
    assert script.audited[0].report().flags == ("sensitive",)


def test_a_blocked_prompt_answers_in_the_shape_of_a_completion() -> None:
    script = Script()
    settings = FlowSettings.of(policy("block: {behavior: message, message: No.}\n"))
    params = ask("bomb")
    trace = Trace.begin("sequential", model="m", messages=params["messages"])
    result = script.drive(completion_flow(settings, trace, params, SHAPES))
    assert result.id == f"guardrail-{trace.request_id}"
    assert result.model == "m"
    assert [(c.index, c.message.content) for c in result.choices] == [(0, "No.")]


def test_a_blocked_prompt_without_a_model_names_none() -> None:
    script = Script()
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    params = {"messages": ask("bomb")["messages"]}
    result = script.drive(completion_flow(settings, Trace.begin("sequential"), params, SHAPES))
    assert result.model == ""


# ------------------------------------------------------------------------- answers


def test_each_retry_is_checked_against_the_prompt_verdict() -> None:
    # The refusal rule needs a Safe prompt verdict: a retry judged without it
    # would not count as a refusal again, and would be accepted.
    script = Script(upstream=lambda params: completion("Sorry, no."))
    result = run_completion(script, FlowSettings.of(policy()), ask("plan a picnic"))
    assert result.choices[0].message.content == "Sorry, no."
    (trace,) = script.audited
    retry = trace.outcomes[-1]
    assert retry.attempt == 1
    assert retry.decision.rule_id == "unnecessary-refusal"
    assert retry.candidate == 0


def test_a_template_rewrite_replaces_the_answer_and_goes_on_to_the_next_choice() -> None:
    rules = (
        "  - id: calm\n    stage: response\n    when: {categories: [Violent]}\n"
        "    action: rewrite\n    rewrite: {mode: template, text: Let's not.}\n"
    )
    script = Script(upstream=lambda params: completion("A bomb.", "Nice.", "Sorry."))
    result = run_completion(
        script, FlowSettings.of(policy(rules=rules)), {**ask("three please"), "n": 3}
    )
    got = [(c.message.content, c.finish_reason) for c in result.choices]
    assert got == [("Let's not.", "stop"), ("Nice.", "stop"), ("Sorry.", "stop")]
    (trace,) = script.audited
    assert trace.action is Action.REWRITE


def test_a_regenerated_answer_replaces_the_choice() -> None:
    rules = (
        "  - id: redo\n    stage: response\n    when: {categories: [Violent]}\n"
        "    action: rewrite\n"
        "    rewrite: {mode: regenerate, text: Stay safe., max_attempts: 2}\n"
    )
    answers = iter([completion("A bomb.", "Nice."), completion("Sorry."), completion("Calm.")])
    script = Script(upstream=lambda params: next(answers))
    result = run_completion(script, FlowSettings.of(policy(rules=rules)), {**ask("hi"), "n": 2})
    # A refusal is an acceptable regeneration: only a retry of a refusal wants more.
    assert [c.message.content for c in result.choices] == ["Sorry.", "Nice."]
    assert len(script.calls) == 2
    assert script.calls[1]["messages"][0] == {"role": "system", "content": "Stay safe."}
    (trace,) = script.audited
    assert [o.candidate for o in trace.outcomes[1:]] == [0, 1, 0]


def test_a_failed_regeneration_blocks_with_the_block_message() -> None:
    rules = (
        "  - id: redo\n    stage: response\n    when: {categories: [Violent]}\n"
        "    action: rewrite\n"
        "    rewrite: {mode: regenerate, text: Stay safe., max_attempts: 1}\n"
    )
    script = Script(upstream=lambda params: completion("A bomb.", "Nice."))
    settings = FlowSettings.of(policy("block: {behavior: message, message: No.}\n", rules=rules))
    result = run_completion(script, settings, {**ask("hi"), "n": 2})
    assert [(c.message.content, c.finish_reason) for c in result.choices] == [
        ("No.", "content_filter"),
        ("Nice.", "stop"),
    ]


def test_every_choice_blocked_blocks_the_call() -> None:
    script = Script(upstream=lambda params: completion("A bomb.", "Bomb again."))
    with pytest.raises(BlockedError) as raised:
        run_completion(script, FlowSettings.of(policy()), {**ask("two"), "n": 2})
    assert raised.value.decision.rule_id == "block-unsafe-response"
    assert script.audited[0].blocked_stage is Stage.RESPONSE


def test_an_answer_without_choices_is_returned_as_it_is() -> None:
    script = Script(upstream=lambda params: completion())
    result = run_completion(script, FlowSettings.of(policy()), ask("hello"))
    assert result.choices == []
    assert script.audited[0].blocked_stage is None


def test_n_given_by_the_caller_turns_best_of_n_off() -> None:
    reward = "reward: {best_of_n: 3, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script(
        upstream=lambda params: completion("One.", "Two."), rewards={"One.": 0.0, "Two.": 1.0}
    )
    result = run_completion(script, FlowSettings.of(policy(reward)), {**ask("hi"), "n": 2})
    assert script.calls[0]["n"] == 2
    assert [c.message.content for c in result.choices] == ["One.", "Two."]


def test_best_of_two_asks_for_two_and_returns_one() -> None:
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script(
        upstream=lambda params: completion("One.", "Two."), rewards={"One.": 0.0, "Two.": 1.0}
    )
    result = run_completion(script, FlowSettings.of(policy(reward)), ask("hi"))
    assert script.calls[0]["n"] == 2
    assert [(c.index, c.message.content) for c in result.choices] == [(0, "Two.")]


def test_best_of_n_without_a_reward_model_score_takes_the_first() -> None:
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script(upstream=lambda params: completion("One.", "Two."))  # scoring fails
    result = run_completion(script, FlowSettings.of(policy(reward)), ask("hi"))
    assert [c.message.content for c in result.choices] == ["One."]


def test_best_of_n_ties_go_to_the_first_candidate() -> None:
    reward = "reward: {best_of_n: 3, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script(
        upstream=lambda params: completion("One.", "Two.", "Three."),
        rewards={"One.": 0.5, "Two.": 0.5, "Three.": 0.5},
    )
    result = run_completion(script, FlowSettings.of(policy(reward)), ask("hi"))
    assert [c.message.content for c in result.choices] == ["One."]


@pytest.mark.parametrize("flagged", ["first", "second"])
def test_best_of_n_ranks_allowed_and_flagged_answers_alike(flagged: str) -> None:
    # An allowed and a flagged answer are both untouched: the reward decides.
    rules = "  - {id: note, stage: response, when: {refusal: true}, action: flag, flag: refused}\n"
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    answers = ("Sorry, I can't.", "Fine.") if flagged == "first" else ("Fine.", "Sorry, I can't.")
    scores = {answers[0]: 0.1, answers[1]: 0.9}
    script = Script(upstream=lambda params: completion(*answers), rewards=scores)
    settings = FlowSettings.of(policy(reward, rules=rules))
    result = run_completion(script, settings, ask("plan a picnic"))
    assert [c.message.content for c in result.choices] == [answers[1]]


def test_best_of_n_prefers_a_rewrite_to_a_block() -> None:
    rules = (
        "  - id: calm\n    stage: response\n    when: {categories: [Violent]}\n"
        "    action: rewrite\n    rewrite: {mode: template, text: Let's not.}\n"
    )
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    # "hurt myself" is Controversial (allowed by default): make it blocked by a rule.
    block = "  - {id: no-harm, stage: response, when: {levels: [Controversial]}, action: block}\n"
    script = Script(
        upstream=lambda params: completion("I will hurt myself.", "A bomb."),
        rewards={"I will hurt myself.": 5.0, "A bomb.": 0.0},
    )
    settings = FlowSettings.of(policy(reward + "block: {behavior: message}\n", rules=rules + block))
    result = run_completion(script, settings, ask("hi"))
    assert [c.message.content for c in result.choices] == ["Let's not."]


def test_best_of_n_prefers_an_untouched_answer_to_a_rewrite() -> None:
    rules = (
        "  - id: calm\n    stage: response\n    when: {categories: [Violent]}\n"
        "    action: rewrite\n    rewrite: {mode: template, text: Let's not.}\n"
    )
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script(
        upstream=lambda params: completion("A bomb.", "Fine."),
        rewards={"A bomb.": 5.0, "Fine.": 0.0},
    )
    result = run_completion(script, FlowSettings.of(policy(reward, rules=rules)), ask("hi"))
    assert [c.message.content for c in result.choices] == ["Fine."]


def test_best_of_n_with_every_candidate_blocked_raises_the_first_block() -> None:
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = Script(
        upstream=lambda params: completion("bomb one", "bomb two"),
        rewards={"bomb one": 1.0, "bomb two": 2.0},
    )
    with pytest.raises(BlockedError) as raised:
        run_completion(script, FlowSettings.of(policy(reward)), ask("help me"))
    assert raised.value.decision.rule_id == "block-unsafe-response"


# ----------------------------------------------------------------------- streaming


def test_a_sequential_stream_calls_the_upstream_after_the_prompt_check() -> None:
    script = Script(upstream=lambda params: stream_of("Hello there. ", "Bye."))
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(
        stream_flow(FlowSettings.of(policy(SEQUENTIAL + STREAMING)), trace, params, SHAPES)
    )
    assert script.kinds()[:2] == ["Run:Classify", "Run:CallUpstream"]
    (sent,) = script.calls
    assert sent["messages"] == params["messages"]
    assert texts(script.emitted) == "Hello there. Bye."


def test_a_sequential_stream_that_cannot_start_is_audited() -> None:
    def down(params: dict[str, Any]) -> Any:
        raise ConnectionError("down")

    script = Script(upstream=down)
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    with pytest.raises(ConnectionError):
        script.drive(stream_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    assert [(where, str(e)) for where, e in trace.errors] == [("upstream", "down")]
    assert script.closed == []  # no stream was opened
    assert script.audited == [trace]


def test_a_rewritten_prompt_is_what_the_stream_checks_answers_against() -> None:
    rules = (
        "  - id: soften\n    stage: prompt\n    when: {levels: [Controversial]}\n"
        "    action: rewrite\n    rewrite: {mode: add_instruction, text: Be careful.}\n"
    )
    script = Script(upstream=lambda params: stream_of("Please talk to someone. "))
    params = {**ask("I want to hurt myself"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(FlowSettings.of(policy(rules=rules)), trace, params, SHAPES))
    judged_prompts = [messages for messages, response in script.judged if response is not None]
    assert judged_prompts
    assert all(m[0] == {"role": "system", "content": "Be careful."} for m in judged_prompts)


def test_a_stream_check_failure_is_decided_by_the_failure_mode() -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        if stage is Stage.RESPONSE:
            raise RuntimeError("guard crashed")
        return moderate_many(ScriptedClassifier(SCRIPT), conversations)

    script = Script(upstream=lambda params: stream_of("Hello there. "), classify=classify)
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(FlowSettings.of(policy(STREAMING)), trace, params, SHAPES))
    closing = script.emitted[-1]
    assert closing.choices[0].finish_reason == "content_filter"
    assert trace.blocked_stage is Stage.RESPONSE
    (where, error), *_ = trace.errors
    assert where == "response"
    assert isinstance(error, GuardrailError)
    assert "RuntimeError: guard crashed" in str(error)
    assert trace.outcomes[-1].decision.rule_id == "failure"


def test_stream_checks_judge_every_choice_by_its_index() -> None:
    def two(params: dict[str, Any]) -> Iterator[ChatCompletionChunk]:
        return iter(
            [
                chunk("Hello there, friend. ", index=0),
                chunk("Hi there, my friend. ", index=1),
                chunk(None, index=0, finish="stop"),
                chunk(None, index=1, finish="stop"),
            ]
        )

    script = Script(upstream=two)
    params = {**ask("hi"), "stream": True, "n": 2}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(FlowSettings.of(policy(STREAMING)), trace, params, SHAPES))
    assert {o.candidate for o in trace.outcomes[1:]} == {0, 1}
    assert trace.responses == ["Hello there, friend. ", "Hi there, my friend. "]


def test_a_cut_stream_closes_with_the_upstream_chunk_identity() -> None:
    script = Script(upstream=lambda params: stream_of("The weather is nice. ", "A bomb is "))
    params = {**ask("weather?"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(FlowSettings.of(policy(STREAMING)), trace, params, SHAPES))
    closing = script.emitted[-1]
    assert closing.id == "s1"
    assert closing.choices[0].finish_reason == "content_filter"
    assert trace.flags == []
    assert trace.action is Action.BLOCK


def test_a_stream_cut_by_a_flagging_block_rule_reports_the_flag() -> None:
    rules = (
        "  - {id: cut, stage: response, when: {categories: [Violent]}, action: block,"
        " flag: violent}\n"
    )
    script = Script(upstream=lambda params: stream_of("The weather is nice. ", "A bomb is "))
    params = {**ask("weather?"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(
        stream_flow(FlowSettings.of(policy(STREAMING, rules=rules)), trace, params, SHAPES)
    )
    assert trace.flags == ["violent"]


def test_a_stream_cut_during_its_final_checks_releases_nothing_after() -> None:
    # A short unsafe answer: no check before the end, the final check cuts it.
    script = Script(upstream=lambda params: iter([chunk("Bomb."), chunk(None, finish="stop")]))
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    settings = FlowSettings.of(
        policy("streaming: {chunk_chars: 400}\nblock: {behavior: message}\n")
    )
    script.drive(stream_flow(settings, trace, params, SHAPES))
    (closing,) = script.emitted
    assert closing.choices[0].finish_reason == "content_filter"
    assert "Bomb" not in texts(script.emitted)


def test_a_stream_without_a_finish_reason_is_judged_whole_at_its_end() -> None:
    script = Script(upstream=lambda params: iter([chunk("Hello. "), chunk("Bye.")]))
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    settings = FlowSettings.of(policy("streaming: {chunk_chars: 400}\n"))
    script.drive(stream_flow(settings, trace, params, SHAPES))
    assert texts(script.emitted) == "Hello. Bye."
    final = script.judged[-1][1]
    assert final["content"] == "Hello. Bye."
    # An answer that ends with a refusal-free final check is allowed whole.
    assert trace.action is Action.ALLOW


def test_a_stream_cut_while_later_chunks_are_checked_stops_reading() -> None:
    # Many short sentences: checks pile up; the unsafe one cuts the stream even
    # while more chunks wait to be checked.
    pieces = [f"Sentence number {i} is here. " for i in range(6)] + ["A bomb is here. "]
    pieces += [f"More text {i} follows. " for i in range(6)]
    script = Script(upstream=lambda params: stream_of(*pieces))
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(FlowSettings.of(policy(STREAMING)), trace, params, SHAPES))
    assert "bomb" not in texts(script.emitted).lower()
    assert script.emitted[-1].choices[0].finish_reason == "content_filter"
    assert "More text 5" not in "".join(str(m[1]) for m in script.judged if m[1])
    assert script.kinds()[-1] == "Audit"


# ----------------------------------------------------------------------- rewards and more

REWARD = "reward: {models: [{id: r, kind: seqcls, model: /r}]}\n"


def test_a_reward_condition_sees_the_answers_score() -> None:
    rules = "  - {id: good, stage: response, when: {reward_above: 0.5}, action: flag, flag: good}\n"
    settings = FlowSettings.of(policy(REWARD, rules=rules))
    liked = Script(rewards={"Fine.": 0.9})
    run_completion(liked, settings, ask("hello"))
    assert liked.audited[0].flags == ["good"]
    disliked = Script(rewards={"Fine.": 0.1})
    run_completion(disliked, settings, ask("hello"))
    assert disliked.audited[0].flags == []


class PartlyScored(Script):
    """Scores only the answers it has a reward for; ``None`` for the others."""

    def run(self, job: Any) -> Any:
        if isinstance(job, Score):
            return [
                RewardScore(score=self.rewards[text], model="r") if text in self.rewards else None
                for text in (answer_text(response) for _, response in job.conversations)
            ]
        return super().run(job)


def test_best_of_n_prefers_a_scored_candidate_to_an_unscored_one() -> None:
    reward = "reward: {best_of_n: 2, models: [{id: r, kind: seqcls, model: /r}]}\n"
    script = PartlyScored(
        upstream=lambda params: completion("One.", "Two."), rewards={"Two.": -3.0}
    )
    result = run_completion(script, FlowSettings.of(policy(reward)), ask("hi"))
    assert [c.message.content for c in result.choices] == ["Two."]


def test_a_stream_without_sentence_boundaries_waits_for_chunk_chars() -> None:
    script = Script(upstream=lambda params: stream_of("Hello there. ", "Bye now."))
    settings = FlowSettings.of(policy("streaming: {chunk_chars: 40, sentence_boundary: false}\n"))
    run_stream(script, settings, ask("hi"))
    assert [response["content"] for _, response in script.judged[1:]] == ["Hello there. Bye now."]


def test_a_stream_blocked_at_the_prompt_without_a_model_names_none() -> None:
    script = Script()
    settings = FlowSettings.of(policy("block: {behavior: message}\n"))
    params = {"messages": ask("bomb")["messages"], "stream": True}
    script.drive(stream_flow(settings, Trace.begin("streaming"), params, SHAPES))
    (closing,) = script.emitted
    assert closing.model == ""


def test_every_choice_left_open_at_the_end_is_judged_and_released() -> None:
    def two(params: dict[str, Any]) -> Iterator[ChatCompletionChunk]:
        return iter([chunk("Hi there. ", index=0), chunk("Hello you. ", index=1)])

    script = Script(upstream=two)
    settings = FlowSettings.of(policy("streaming: {chunk_chars: 400}\n"))
    trace = run_stream(script, settings, {**ask("hi"), "n": 2})
    released = {c.choices[0].index: c.choices[0].delta.content for c in script.emitted}
    assert released == {0: "Hi there. ", 1: "Hello you. "}
    assert sorted(o.candidate for o in trace.outcomes[1:]) == [0, 1]


def test_a_cut_with_checks_in_flight_cancels_them_and_checks_nothing_more() -> None:
    # Reads run ahead of checks: three checks are running when the first one blocks.
    pieces = ("A bomb is made so. ", "Then you wait a bit. ", "And then it goes. ", "End. ")
    script = Script(upstream=lambda params: stream_of(*pieces), first="read")
    trace = run_stream(script, FlowSettings.of(policy(STREAMING)), ask("hi"))
    kinds = after_the_prompt_check(script.kinds())
    (cut,) = [i for i, kind in enumerate(kinds) if kind == "Await:Classify"]
    started = kinds[:cut].count("Start:Classify")
    assert started > 1
    assert "Start:Classify" not in kinds[cut:]
    assert kinds[cut:].count("Cancel:Classify") == started - 1
    closings = [c for c in script.emitted if c.choices[0].finish_reason == "content_filter"]
    assert len(closings) == 1
    assert script.emitted == closings
    assert trace.blocked_stage is Stage.RESPONSE


def test_a_cut_after_an_early_check_passed_checks_nothing_more() -> None:
    pieces = ("The weather is nice. ", "A bomb is made so. ", "More text here. ", "End. ")
    script = Script(upstream=lambda params: stream_of(*pieces))
    run_stream(script, FlowSettings.of(policy(STREAMING)), ask("hi"))
    kinds = script.kinds()
    cut = len(kinds) - 1 - kinds[::-1].index("Await:Classify")
    assert "Start:Classify" not in kinds[cut:]
    closings = [c for c in script.emitted if c.choices[0].finish_reason == "content_filter"]
    assert len(closings) == 1


def test_partial_answers_are_not_judged_by_refusal_probabilities() -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        judged = moderate_many(ScriptedClassifier(SCRIPT), conversations)
        if stage is Stage.PROMPT:
            return judged
        return [v.model_copy(update={"refusal_probs": {"Yes": 0.9, "No": 0.1}}) for v in judged]

    rules = (
        "  - {id: refusing, stage: response, when: {min_probability: {Refusal: 0.5}},"
        " action: flag, flag: refusing}\n"
    )
    pieces = ("The weather is nice. ", "It will be sunny all day. ", "Enjoy it.")
    script = Script(upstream=lambda params: stream_of(*pieces), classify=classify)
    trace = run_stream(script, FlowSettings.of(policy(STREAMING, rules=rules)), ask("weather?"))
    *partial, final = trace.outcomes[1:]
    assert partial
    assert {o.decision.rule_id for o in partial} == {"default"}
    assert final.decision.rule_id == "refusing"


def test_a_direct_check_audits_the_conversation_it_judged() -> None:
    script = Script()
    messages = ask("hello")["messages"]
    script.drive(check_flow(FlowSettings.of(policy()), Stage.PROMPT, messages, None, None))
    (trace,) = script.audited
    assert trace.messages == messages


def test_a_direct_response_check_without_an_answer_is_refused_and_audited() -> None:
    script = Script()
    messages = ask("hello")["messages"]
    flow = check_flow(FlowSettings.of(policy()), Stage.RESPONSE, messages, None, None)
    with pytest.raises(InputError) as raised:
        script.drive(flow)
    assert str(raised.value) == "response: a response check needs the answer to judge"
    assert raised.value.where == "response"
    assert script.judged == []
    (trace,) = script.audited
    assert trace.errors == [("input", raised.value)]
    assert trace.action is Action.BLOCK


def test_a_direct_check_masks_the_guards_secrets_in_its_decision() -> None:
    secret = "sk-guard-key-0123456789abcdef"

    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        raise ClassifierError(f"the guard said no to {secret}")

    script = Script(classify=classify)
    settings = FlowSettings.of(policy(), mask=Masker([secret]))
    messages = ask("hello")["messages"]
    decision = script.drive(check_flow(settings, Stage.PROMPT, messages, None, None))
    assert decision.reason is not None
    assert "the guard said no to" in decision.reason
    assert secret not in decision.reason


def test_each_retry_call_is_a_step_with_its_attempt_error_and_answer(clock: Clock) -> None:
    refusal, answer = completion("Sorry, I can't."), completion("Here you go.")
    script = timed_script(clock, refusal, answer)
    params = ask("plan a picnic")
    trace = trace_at(clock, params)
    script.drive(completion_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    assert [(s.what, s.attempt, s.error, s.result) for s in trace.steps] == [
        ("upstream", 0, None, refusal),
        ("upstream", 1, None, answer),
    ]


def test_a_failed_retry_call_is_a_step_with_its_error_and_no_answer(clock: Clock) -> None:
    down = ConnectionError("down")

    def fail(params: dict[str, Any]) -> Any:
        raise down

    script = timed_script(clock, completion("Sorry, I can't."), fail)
    params = ask("plan a picnic")
    trace = trace_at(clock, params)
    script.drive(completion_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    retry = trace.steps[-1]
    assert (retry.attempt, retry.error, retry.result) == (1, down, None)


def test_a_streams_upstream_step_keeps_its_last_chunk_and_finish_reasons() -> None:
    pieces = [chunk("Hello there. "), chunk(None, finish="stop")]
    script = Script(upstream=lambda params: iter(pieces))
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    script.drive(stream_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    (step,) = trace.steps
    assert (step.what, step.error) == ("upstream", None)
    assert step.result == StreamEnd(pieces[-1], ("stop",))


def test_a_stream_whose_read_fails_records_the_failure_on_its_upstream_step() -> None:
    broken = ConnectionError("reset")
    first = chunk("Hello there. ")

    def pieces() -> Iterator[ChatCompletionChunk]:
        yield first
        raise broken

    script = Script(upstream=lambda params: pieces())
    params = {**ask("hi"), "stream": True}
    trace = Trace.begin("streaming", model="m", messages=params["messages"])
    with pytest.raises(ConnectionError):
        script.drive(stream_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    (step,) = trace.steps
    assert step.error is broken
    assert step.result == StreamEnd(first, ())


def test_two_checks_stay_in_flight_while_the_next_chunk_is_read() -> None:
    pieces = ("The weather is nice. ", "Then you wait a bit. ", "And then it rains. ", "End. ")
    script = Script(upstream=lambda params: stream_of(*pieces), first="read")
    run_stream(script, FlowSettings.of(policy(STREAMING)), ask("hi"))
    running, at_reads = 0, []
    for kind in after_the_prompt_check(script.kinds()):
        if kind == "Start:Classify":
            running += 1
        elif kind in ("Await:Classify", "Cancel:Classify"):
            running -= 1
        elif kind == "Await:ReadChunk":
            at_reads.append(running)
    assert max(at_reads) == MAX_IN_FLIGHT == 2
    assert texts(script.emitted) == "".join(pieces)


def test_a_failed_upstream_call_is_a_step_with_its_error_and_no_answer(clock: Clock) -> None:
    down = ConnectionError("down")

    def fail(params: dict[str, Any]) -> Any:
        raise down

    script = timed_script(clock, fail)
    params = ask("hello")
    trace = trace_at(clock, params)
    with pytest.raises(ConnectionError):
        script.drive(completion_flow(FlowSettings.of(policy(SEQUENTIAL)), trace, params, SHAPES))
    (step,) = trace.steps
    assert (step.what, step.attempt, step.error, step.result) == ("upstream", 0, down, None)


def test_scoring_is_a_step_and_each_check_keeps_its_start_and_reward(clock: Clock) -> None:
    script = timed_script(clock, completion("Fine."), rewards={"Fine.": 0.9})
    params = ask("hello")
    trace = trace_at(clock, params)
    settings = FlowSettings.of(policy(SEQUENTIAL + REWARD))
    script.drive(completion_flow(settings, trace, params, SHAPES))
    upstream, scoring = trace.steps
    assert upstream.what == "upstream"
    # The prompt check runs 1000-1001, the upstream 1001-1011, the answer's check 1011-1012.
    assert (scoring.what, scoring.started, scoring.ended, scoring.attempt) == (
        "reward",
        1012.0,
        1012.0,
        0,
    )
    assert scoring.error is None
    assert [s.goodness for s in scoring.result] == [0.9]
    assert trace.check_starts == [1000.0, 1011.0]
    assert trace.outcome_rewards == {1: 0.9}


SCORER_DOWN = RuntimeError("scorer down")


class FailingScorer(Script):
    """Every scoring fails."""

    def run(self, job: Any) -> Any:
        if isinstance(job, Score):
            raise SCORER_DOWN
        return super().run(job)


def test_a_failed_scoring_is_a_step_with_its_error() -> None:
    script = FailingScorer()
    params = ask("hello")
    trace = Trace.begin("sequential", model="m", messages=params["messages"])
    settings = FlowSettings.of(policy(SEQUENTIAL + REWARD))
    script.drive(completion_flow(settings, trace, params, SHAPES))
    scoring = trace.steps[-1]
    assert (scoring.what, scoring.error, scoring.result) == ("reward", SCORER_DOWN, None)
    assert ("reward", SCORER_DOWN) in trace.errors
    assert trace.outcome_rewards == {}


def test_verdicts_of_the_other_stage_do_not_fit_the_check() -> None:
    def classify(stage: Stage, conversations: Sequence[Conversation]) -> Any:
        # Answers judged as answers whatever was asked: a prompt check gets response verdicts.
        return [parse_verdict("Safety: Safe\nCategories: None\nRefusal: No", stage=Stage.RESPONSE)]

    script = Script(classify=classify)
    with pytest.raises(BlockedError):  # the failure mode (closed) decides the prompt
        run_completion(script, FlowSettings.of(policy()), ask("hello"))
    (trace,) = script.audited
    (outcome, *_) = trace.outcomes
    assert outcome.decision.action is Action.BLOCK
    assert outcome.decision.verdict is None
    (where, error), *_ = trace.errors
    assert (where, str(error)) == ("prompt", "the guard's verdicts do not fit a prompt check")


def test_a_raced_upstream_call_is_timed_from_its_start() -> None:
    script = Script()
    trace = Trace.begin("concurrent", model="m", messages=ask("hello")["messages"])
    before = time.perf_counter()
    script.drive(completion_flow(FlowSettings.of(policy()), trace, ask("hello"), SHAPES))
    (upstream,) = [s for s in trace.steps if s.what == "upstream"]
    # Started with the prompt check, not after it: it ran while the check did.
    assert before <= upstream.started <= trace.check_starts[0]


def test_a_rewritten_prompts_new_call_is_timed_from_its_own_start() -> None:
    rules = (
        "  - id: soften\n    stage: prompt\n    when: {levels: [Controversial]}\n"
        "    action: rewrite\n    rewrite: {mode: add_instruction, text: Be careful.}\n"
    )
    script = Script()
    trace = Trace.begin("concurrent", model="m", messages=ask("x")["messages"])
    params = ask("I want to hurt myself")
    script.drive(completion_flow(FlowSettings.of(policy(rules=rules)), trace, params, SHAPES))
    (upstream,) = [s for s in trace.steps if s.what == "upstream"]
    # The raced call was cancelled: the call that answered began after the prompt check.
    assert upstream.started >= trace.check_starts[0]
