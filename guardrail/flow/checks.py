"""The checks every flow shares: judge, score, let the policy decide, record it.

:func:`check` is one checked step (a prompt, or a batch of answers):
classify, score answers when reward models are configured, and turn each
verdict (or the guard's failure) into the policy's decision, recorded on the
trace. :func:`prompt_phase` is the start of every guarded call,
:func:`check_flow` the whole of a direct ``Guard.check_*`` call, and
:func:`refuse` the whole of a call whose arguments are not a conversation.
Failures are stated in decisions with the trace's secrets masked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from guardrail.chat import content_text, message_list, replace_judged_turn, with_instruction
from guardrail.classifiers.base import Conversation
from guardrail.errors import BlockedError, ClassifierError, GuardrailError, InputError
from guardrail.flow.effects import (
    Audit,
    CallUpstream,
    Cancel,
    Classify,
    Flow,
    Handle,
    Run,
    Score,
    Start,
)
from guardrail.flow.settings import FlowSettings
from guardrail.flow.trace import Step, Trace
from guardrail.report import StageOutcome
from guardrail.reward.base import RewardScore
from guardrail.reward.hybrid import hybrid_score
from guardrail.types import Action, Decision, RewriteMode, Stage, Verdict


def as_guard_error(exc: Exception) -> GuardrailError:
    """Any failure of a check, as a guard error the failure mode can decide on."""
    if isinstance(exc, GuardrailError):
        return exc
    error = ClassifierError(f"the guard failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def decide(
    settings: FlowSettings,
    trace: Trace,
    stage: Stage,
    verdicts: Sequence[Verdict] | GuardrailError,
    count: int,
    *,
    started: float,
    prompt_verdict: Verdict | None = None,
    attempt: int = 0,
    candidates: Sequence[int | None] | None = None,
    rewards: Sequence[RewardScore | None] | None = None,
) -> list[Decision]:
    """Let the policy decide each verdict, or the failure mode decide a guard failure.

    Every decision becomes an outcome on the trace, its latency counted from
    ``started`` (the check's ``perf_counter`` start); a failure is recorded with it.
    """
    elapsed = time.perf_counter() - started
    error: GuardrailError | None = None
    checked: Sequence[Verdict | None] | None = None
    if isinstance(verdicts, GuardrailError):
        error = verdicts
    elif len(verdicts) == count:
        checked = verdicts
        for given in verdicts:  # a loop, not any(): this runs for every check
            if given.stage is not stage:
                checked = None
                break
    if checked is None:
        if error is None:
            error = ClassifierError(f"the guard's verdicts do not fit a {stage.value} check")
        checked = [None] * count
    failure: str | None = None  # the error as decisions state it, secrets masked
    if error is not None:
        trace.errors.append((stage.value, error))
        failure = trace.mask(f"{type(error).__name__}: {error}")
    trace.guard_s += elapsed
    decisions = []
    for k, verdict in enumerate(checked):
        reward = rewards[k] if rewards is not None else None
        candidate = candidates[k] if candidates is not None else None
        if reward is not None and verdict is not None:
            trace.rewards.append((candidate, reward, hybrid_score(verdict, reward.goodness)))
        decision = settings.decide(
            stage,
            verdict,
            prompt_verdict=prompt_verdict,
            error=failure,
            reward=reward.goodness if reward is not None else None,
        )
        if error is not None:
            trace.outcome_errors[len(trace.outcomes)] = error
        elif reward is not None:
            trace.outcome_rewards[len(trace.outcomes)] = reward.goodness
        trace.check_starts.append(started)
        trace.outcomes.append(
            StageOutcome(
                stage=stage,
                decision=decision,
                latency_s=elapsed,
                attempt=attempt,
                candidate=candidate,
            )
        )
        decisions.append(decision)
    return decisions


def check(
    settings: FlowSettings,
    trace: Trace,
    stage: Stage,
    conversations: Sequence[Conversation],
    *,
    prompt_verdict: Verdict | None = None,
    attempt: int = 0,
    candidates: Sequence[int | None] | None = None,
) -> Flow[list[Decision]]:
    """Judge conversations (and score responses) and let the policy decide each.

    A guard failure is decided by the failure mode. A reward failure is audited and
    leaves the answers unscored (reward conditions then do not match): the reward
    is a quality signal, the guard is the safety gate.
    """
    started = time.perf_counter()
    result: Sequence[Verdict] | GuardrailError
    try:
        verdicts: list[Verdict] = yield Run(Classify(stage, conversations))
        result = verdicts
    except Exception as exc:  # the failure mode decides; never swallowed silently
        result = as_guard_error(exc)
    rewards: Sequence[RewardScore | None] | None = None
    if stage is Stage.RESPONSE and settings.scores:
        scoring = time.perf_counter()
        failed: BaseException | None = None
        try:
            rewards = yield Run(Score(conversations))
        except Exception as exc:
            trace.errors.append(("reward", exc))
            failed = exc
        trace.steps.append(Step("reward", scoring, time.perf_counter(), attempt, failed, rewards))
    return decide(
        settings,
        trace,
        stage,
        result,
        len(conversations),
        started=started,
        prompt_verdict=prompt_verdict,
        attempt=attempt,
        candidates=candidates,
        rewards=rewards,
    )


def rewrite_prompt(params: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """Apply a prompt-stage rewrite: add an instruction, or replace the judged turn."""
    rewrite = decision.rewrite
    if rewrite is None:
        return params
    if rewrite.mode is RewriteMode.ADD_INSTRUCTION:
        return with_instruction(params, rewrite.text)
    return {**params, "messages": replace_judged_turn(params["messages"], rewrite.text)}


def prompt_phase(
    settings: FlowSettings, trace: Trace, params: dict[str, Any]
) -> Flow[tuple[Decision, dict[str, Any], Handle[Any] | None]]:
    """Check the prompt, racing the upstream call in concurrent mode.

    Returns the decision, the parameters to call the upstream with, and the raced
    call's handle. A blocked or rewritten prompt cancels the raced call, so an
    answer to a blocked prompt never reaches the caller.
    """
    handle = None
    if settings.concurrent:
        trace.raced_at = time.perf_counter()
        handle = yield Start(CallUpstream(params))
    (decision,) = yield from check(settings, trace, Stage.PROMPT, [(params["messages"], None)])
    action = decision.action
    trace.took(action, flags=decision.flags)
    if action is Action.BLOCK:
        trace.blocked_stage = Stage.PROMPT
    if handle is not None and action in (Action.BLOCK, Action.REWRITE):
        yield Cancel(handle)
        handle = None
        trace.raced_at = 0.0  # a rewritten prompt makes a new call
    if action is Action.REWRITE:
        params = rewrite_prompt(params, decision)
    return decision, params, handle


def raise_if_raising(settings: FlowSettings, trace: Trace, decision: Decision) -> None:
    """Raise :class:`~guardrail.errors.BlockedError` when the policy's block behaviour is raise."""
    if settings.raises_on_block:
        raise BlockedError(
            f"{decision.stage.value} blocked by rule {decision.rule_id!r}",
            decision=decision,
            report=trace.report(),
        )


def refuse(trace: Trace, error: GuardrailError) -> Flow[NoReturn]:
    """End a call whose arguments are not a conversation: recorded, audited, raised.

    Nothing was judged or sent upstream; the record says ``block`` with the error.
    """
    trace.errors.append(("input", error))
    trace.took(Action.BLOCK)
    trace.ended_by(error)
    try:
        raise error
    finally:
        yield Audit(trace)


def check_flow(
    settings: FlowSettings,
    stage: Stage,
    messages: Iterable[Any],
    response: Any,
    prompt_verdict: Verdict | None,
    *,
    trace: Trace | None = None,
) -> Flow[Decision]:
    """A direct check of a prompt or an answer: decided, audited, never raised.

    Arguments that are no conversation to judge (``messages`` not a list, no
    ``response`` to a response check) raise :class:`~guardrail.errors.InputError`,
    audited too. ``trace``: the check's trace, begun by the caller (default: begun here).
    """
    if trace is None:
        trace = Trace.begin("check", mask=settings.mask)
    try:
        items = message_list(messages)
        if stage is Stage.RESPONSE and response is None:
            raise InputError("a response check needs the answer to judge", where="response")
    except InputError as exc:
        yield from refuse(trace, exc)
    trace.messages = items
    try:
        (decision,) = yield from check(
            settings, trace, stage, [(items, response)], prompt_verdict=prompt_verdict
        )
        trace.took(decision.action, flags=decision.flags)
        if decision.blocked:
            trace.blocked_stage = stage
        if response is not None:
            trace.responses.append(content_text(response))
        return decision
    finally:
        yield Audit(trace)
