"""The non-streaming guarded call: prompt check, upstream, answer checks, policy, report.

:func:`completion_flow` checks the prompt (racing the upstream call in
concurrent mode), then every choice of the answer; it applies the policy to
each choice (block, template rewrite, regeneration, the unnecessary-refusal
retry) and, with best-of-n, returns the best candidate that passed. Every
answer the guard judged is kept for the audit record, which is written however
the call ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from guardrail.chat import (
    CONTENT_FILTER,
    ChatShapes,
    answer_text,
    blocked_completion,
    replace_choices,
    with_instruction,
)
from guardrail.flow.checks import check, prompt_phase, raise_if_raising
from guardrail.flow.effects import Audit, Await, CallUpstream, Flow, Run, run_job
from guardrail.flow.settings import FlowSettings
from guardrail.flow.trace import Trace
from guardrail.report import attach_report
from guardrail.types import Action, Decision, RewriteMode, Stage, Verdict


@dataclass
class ResponseResult:
    """What the response checks decided, per choice position."""

    replacements: dict[int, Any] = field(default_factory=dict)
    """Position -> ``(text, finish_reason)`` or a regenerated choice."""
    actions: list[tuple[Action, tuple[str, ...]]] = field(default_factory=list)
    """Position -> the action taken on that choice and its flags."""
    blocked: list[Decision] = field(default_factory=list)
    """The decisions of the choices that ended blocked, in order."""

    def block(self, pos: int, decision: Decision, message: str) -> None:
        """End the choice at ``pos`` blocked: its answer becomes ``message``."""
        self.blocked.append(decision)
        self.replacements[pos] = (message, CONTENT_FILTER)
        self.actions.append((Action.BLOCK, decision.flags))


def second_chance(
    settings: FlowSettings,
    trace: Trace,
    params: dict[str, Any],
    *,
    instruction: str,
    attempts: int,
    prompt_verdict: Verdict | None,
    candidate: int,
    accept_refusal: bool,
) -> Flow[tuple[Any, Decision] | None]:
    """Ask the upstream again with an instruction, re-checking every attempt.

    Returns the accepted choice and its decision, or ``None`` when every attempt
    failed its check or the upstream failed (audited). A refusal is accepted only
    with ``accept_refusal`` (a retry of an unnecessary refusal wants an answer).
    """
    retry_params = {**with_instruction(params, instruction), "n": 1}
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        completion: Any = None
        failed: Exception | None = None
        try:
            completion = yield from run_job(CallUpstream(retry_params))
            choice = completion.choices[0]
        except Exception as exc:  # an upstream failure ends the attempts; audited
            trace.errors.append(("upstream", exc))
            failed = exc
            return None
        finally:
            trace.upstream_took(started, attempt=attempt, error=failed, result=completion)
        trace.responses.append(answer_text(choice.message))
        (decision,) = yield from check(
            settings,
            trace,
            Stage.RESPONSE,
            [(params["messages"], choice.message)],
            prompt_verdict=prompt_verdict,
            attempt=attempt,
            candidates=[candidate],
        )
        refused = decision.verdict is not None and decision.verdict.refusal is True
        if decision.action in (Action.ALLOW, Action.FLAG) and (accept_refusal or not refused):
            return choice, decision
    return None


def response_phase(
    settings: FlowSettings,
    trace: Trace,
    params: dict[str, Any],
    completion: Any,
    prompt_verdict: Verdict | None,
) -> Flow[ResponseResult]:
    """Check (and score) every choice and apply the policy to each.

    Every answer the guard judged is kept for the audit record; the caller applies
    the per-choice actions to the call's report.
    """
    choices = completion.choices
    for choice in choices:  # a loop, not a generator: this runs for every call
        trace.responses.append(answer_text(choice.message))
    decisions = yield from check(
        settings,
        trace,
        Stage.RESPONSE,
        [(params["messages"], c.message) for c in choices],
        prompt_verdict=prompt_verdict,
        candidates=[c.index for c in choices],
    )
    out = ResponseResult()
    for pos, (choice, decision) in enumerate(zip(choices, decisions, strict=True)):
        rewrite = decision.rewrite
        accept_refusal = True
        if decision.action is Action.REWRITE and rewrite is not None:
            if rewrite.mode is not RewriteMode.REGENERATE:
                out.replacements[pos] = (rewrite.text, "stop")
                out.actions.append((Action.REWRITE, decision.flags))
                continue
            instruction, attempts = rewrite.text, rewrite.max_attempts
        elif decision.blocked:
            out.block(pos, decision, settings.block_message(decision))
            continue
        elif decision.retry is None:
            out.actions.append((decision.action, decision.flags))
            continue
        else:
            instruction, attempts = decision.retry.instruction, decision.retry.max_attempts
            accept_refusal = False
        redo = yield from second_chance(
            settings,
            trace,
            params,
            instruction=instruction,
            attempts=attempts,
            prompt_verdict=prompt_verdict,
            candidate=choice.index,
            accept_refusal=accept_refusal,
        )
        if redo is not None:
            out.replacements[pos] = redo[0]
            out.actions.append((Action.REWRITE, (*decision.flags, *redo[1].flags)))
        elif decision.action is Action.REWRITE:  # regeneration failed: fall back to block
            out.block(pos, decision, settings.block_message(decision))
        else:  # a failed retry keeps the original (flagged) answer
            out.actions.append((decision.action, decision.flags))
    return out


def best_candidate(trace: Trace, completion: Any, result: ResponseResult) -> int:
    """The position of the best candidate: passed untouched first, then by reward.

    Candidates the policy allowed or flagged come before rewritten ones, blocked
    ones come last; among equals the highest reward (then the lowest index) wins.
    """
    first_scores: dict[int | None, float] = {}
    for candidate, score, _ in trace.rewards:
        first_scores.setdefault(candidate, score.goodness)
    tier = {Action.ALLOW: 0, Action.FLAG: 0, Action.REWRITE: 1, Action.BLOCK: 2}

    def rank(pos: int) -> tuple[int, float, int]:
        reward = first_scores.get(completion.choices[pos].index, float("-inf"))
        return (-tier[result.actions[pos][0]], reward, -pos)

    return max(range(len(completion.choices)), key=rank)


def completion_flow(
    settings: FlowSettings, trace: Trace, params: dict[str, Any], shapes: ChatShapes
) -> Flow[Any]:
    """The whole non-streaming guarded call (with best-of-n when the policy asks for it).

    Returns the completion to hand the caller, its report attached; raises
    :class:`~guardrail.errors.BlockedError` when the policy blocks and says raise.
    """
    best_of = settings.best_of_n if int(params.get("n") or 1) == 1 else 1
    upstream_params = {**params, "n": best_of} if best_of > 1 else params
    try:
        prompt, upstream_params, handle = yield from prompt_phase(settings, trace, upstream_params)
        if prompt.blocked:
            raise_if_raising(settings, trace, prompt)
            result = blocked_completion(
                shapes,
                model=str(params.get("model", "")),
                message=settings.block_message(prompt),
                n=int(params.get("n") or 1),
                request_id=trace.request_id,
            )
            attach_report(result, trace.report())
            return result
        started = time.perf_counter()
        completion: Any = None
        failed: Exception | None = None
        try:
            if handle is not None:
                completion = yield Await(handle)
            else:
                completion = yield Run(CallUpstream(upstream_params))
        except Exception as exc:
            trace.errors.append(("upstream", exc))
            failed = exc
            raise
        finally:
            trace.upstream_took(started, error=failed, result=completion)
        checked = yield from response_phase(
            settings, trace, {**upstream_params, "n": 1}, completion, prompt.verdict
        )
        keep = list(range(len(completion.choices)))
        if best_of > 1 and completion.choices:
            keep = [best_candidate(trace, completion, checked)]
        for pos in keep:
            action, flags = checked.actions[pos]
            trace.took(action, flags=flags)
        # Every choice ended blocked (with best-of-n: the kept candidate is blocked only
        # when every candidate is, as blocked ones rank last).
        if len(checked.blocked) == len(completion.choices) > 0:
            trace.blocked_stage = Stage.RESPONSE
            raise_if_raising(settings, trace, checked.blocked[0])
        result = replace_choices(completion, checked.replacements)
        if best_of > 1:
            chosen = result.choices[keep[0]].model_copy(update={"index": 0})
            result = result.model_copy(update={"choices": [chosen]})
        attach_report(result, trace.report())
        return result
    except Exception as exc:
        trace.ended_by(exc)
        raise
    finally:
        yield Audit(trace)
