"""The guarded call, written once: a generator of effects, run by a sync or an async driver.

The flow (prompt check -> policy -> upstream -> response checks -> policy ->
rewrites/retries -> report) never performs I/O itself. It *yields* effects
(:class:`Check`, :class:`StartUpstream`, ...) and is sent their results; the
two drivers at the bottom of this module are the only places that block or
await. This is how sync and async callers share one implementation of the
logic (the pattern of httpx's auth flows).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guardrail.classifiers.base import Conversation
from guardrail.effects import (
    END,
    Audit,
    AwaitCheck,
    AwaitRead,
    AwaitUpstream,
    CallUpstream,
    CancelUpstream,
    Check,
    CloseStream,
    Emit,
    Flow,
    Score,
    StartCheck,
    StartRead,
    StartUpstream,
    WaitFirst,
)
from guardrail.errors import BlockedError, ClassifierError, GuardrailError
from guardrail.report import GuardReport, StageOutcome
from guardrail.reward.base import RewardScore
from guardrail.reward.hybrid import hybrid_score
from guardrail.types import Action, Decision, RewriteMode, Stage, Verdict

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

    from guardrail.guard import Guard

# ----------------------------------------------------------------------------- trace

_ACTION_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.REWRITE: 2, Action.BLOCK: 3}


@dataclass
class Trace:
    """What happened during one guarded call; becomes the report and the audit record."""

    request_id: str
    mode: str
    model: str
    messages: Any
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[StageOutcome] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    guard_s: float = 0.0
    upstream_s: float = 0.0
    action: Action = Action.ALLOW
    flags: list[str] = field(default_factory=list)
    blocked_stage: Stage | None = None
    responses: list[str] = field(default_factory=list)
    rewards: list[tuple[int | None, RewardScore, float]] = field(default_factory=list)
    """(candidate, score, hybrid score) for every scored answer."""
    outcome_errors: dict[int, BaseException] = field(default_factory=dict)
    """The guard exception behind each outcome decided by the failure mode, by position."""

    def took(self, action: Action, *, flags: Sequence[str] = ()) -> None:
        """Record an action applied to the call (the strongest one is reported)."""
        if _ACTION_RANK[action] > _ACTION_RANK[self.action]:
            self.action = action
        for flag in flags:
            if flag not in self.flags:
                self.flags.append(flag)

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.perf_counter() - self.started

    def report(self) -> GuardReport:
        """The immutable report returned to the application."""
        return GuardReport(
            request_id=self.request_id,
            action=self.action,
            outcomes=tuple(self.outcomes),
            flags=tuple(self.flags),
            blocked_stage=self.blocked_stage,
        )


# ------------------------------------------------------------------------ sub-flows


def as_guard_error(exc: Exception) -> GuardrailError:
    """Any failure of a check, as a guard error the failure mode can decide on."""
    if isinstance(exc, GuardrailError):
        return exc
    error = ClassifierError(f"the guard failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def decide(
    guard: Guard,
    trace: Trace,
    stage: Stage,
    verdicts: Sequence[Verdict] | GuardrailError,
    count: int,
    *,
    elapsed: float,
    prompt_verdict: Verdict | None = None,
    attempt: int = 0,
    candidates: Sequence[int | None] | None = None,
    rewards: Sequence[RewardScore | None] | None = None,
) -> list[Decision]:
    """Let the policy decide each verdict, or the failure mode decide a guard failure."""
    error: GuardrailError | None = None
    checked: Sequence[Verdict | None] = [None] * count
    if isinstance(verdicts, GuardrailError):
        error = verdicts
    elif len(verdicts) != count or any(v.stage is not stage for v in verdicts):
        error = ClassifierError(f"the guard's verdicts do not fit a {stage.value} check")
    else:
        checked = verdicts
    if error is not None:
        trace.errors.append((stage.value, error))
    trace.guard_s += elapsed
    decisions = []
    for k, verdict in enumerate(checked):
        reward = rewards[k] if rewards is not None else None
        candidate = candidates[k] if candidates is not None else None
        if reward is not None and verdict is not None:
            trace.rewards.append((candidate, reward, hybrid_score(verdict, reward.goodness)))
        decision = guard.decide(
            stage,
            verdict,
            prompt_verdict=prompt_verdict,
            error=error,
            reward=reward.goodness if reward is not None else None,
        )
        if error is not None:
            trace.outcome_errors[len(trace.outcomes)] = error
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
    guard: Guard,
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
        result = yield Check(stage, conversations)
    except Exception as exc:  # the failure mode decides; never swallowed silently
        result = as_guard_error(exc)
    rewards: Sequence[RewardScore | None] | None = None
    if stage is Stage.RESPONSE and guard.rewards is not None:
        try:
            rewards = yield Score(conversations)
        except Exception as exc:
            trace.errors.append(("reward", exc))
    return decide(
        guard,
        trace,
        stage,
        result,
        len(conversations),
        elapsed=time.perf_counter() - started,
        prompt_verdict=prompt_verdict,
        attempt=attempt,
        candidates=candidates,
        rewards=rewards,
    )


def with_instruction(params: dict[str, Any], instruction: str) -> dict[str, Any]:
    """Upstream parameters with a system instruction put in front of the conversation."""
    messages = [{"role": "system", "content": instruction}, *params["messages"]]
    return {**params, "messages": messages}


def rewrite_prompt(params: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """Apply a prompt-stage rewrite: add an instruction, or replace the judged turn.

    The judged turn is the last user or tool message (what the prompt check saw);
    a tool result keeps its role and ids, only its content is replaced.
    """
    rewrite = decision.rewrite
    if rewrite is None:
        return params
    if rewrite.mode is RewriteMode.ADD_INSTRUCTION:
        return with_instruction(params, rewrite.text)
    messages = list(params["messages"])
    for i in range(len(messages) - 1, -1, -1):
        role = _role(messages[i])
        if role == "user":
            messages[i] = {"role": "user", "content": rewrite.text}
            break
        if role in ("tool", "function"):
            original = _as_dict(messages[i])
            messages[i] = {**original, "content": rewrite.text}
            break
    return {**params, "messages": messages}


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return dict(message)
    dump = getattr(message, "model_dump", None)
    return dict(dump(exclude_none=True)) if callable(dump) else {"role": _role(message)}


def prompt_phase(
    guard: Guard, trace: Trace, params: dict[str, Any], *, concurrent: bool
) -> Flow[tuple[Decision, dict[str, Any], Any]]:
    """Check the prompt, optionally racing the upstream call; returns (decision, params, handle).

    A blocked or rewritten prompt cancels the upstream call already started, so
    an answer to a blocked prompt never reaches the caller.
    """
    handle = (yield StartUpstream(params)) if concurrent else None
    (decision,) = yield from check(guard, trace, Stage.PROMPT, [(params["messages"], None)])
    trace.took(decision.action, flags=decision.flags)
    if decision.blocked:
        trace.blocked_stage = Stage.PROMPT
    if handle is not None and (decision.blocked or decision.action is Action.REWRITE):
        yield CancelUpstream(handle)
        handle = None
    if decision.action is Action.REWRITE:
        params = rewrite_prompt(params, decision)
    return decision, params, handle


def raise_if_raising(guard: Guard, trace: Trace, decision: Decision) -> None:
    """Raise :class:`~guardrail.errors.BlockedError` when the policy's block behaviour is raise."""
    if guard.raises_on_block:
        raise BlockedError(
            f"{decision.stage.value} blocked by rule {decision.rule_id!r}",
            decision=decision,
            report=trace.report(),
        )


def _answer_text(message: Any) -> str:
    content = getattr(message, "content", None)
    refusal = getattr(message, "refusal", None)
    parts = [p for p in (content, refusal) if isinstance(p, str) and p]
    return "\n".join(parts)


def _second_chance(
    guard: Guard,
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
    failed its check or the upstream failed (audited).
    """
    retry_params = {**with_instruction(params, instruction), "n": 1}
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            completion = yield CallUpstream(retry_params)
            choice = completion.choices[0]
        except Exception as exc:  # an upstream failure ends the attempts; audited
            trace.errors.append(("upstream", exc))
            return None
        finally:
            trace.upstream_s += time.perf_counter() - started
        trace.responses.append(_answer_text(choice.message))
        (decision,) = yield from check(
            guard,
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


@dataclass
class ResponseResult:
    """What the response checks decided, per choice position."""

    replacements: dict[int, Any] = field(default_factory=dict)
    """Position -> ``(text, finish_reason)`` or a regenerated choice."""
    actions: list[tuple[Action, tuple[str, ...]]] = field(default_factory=list)
    """Position -> the action taken on that choice and its flags."""
    block: Decision | None = None
    """The blocking decision, when every choice ended blocked."""


def response_phase(
    guard: Guard,
    trace: Trace,
    params: dict[str, Any],
    completion: ChatCompletion,
    prompt_verdict: Verdict | None,
) -> Flow[ResponseResult]:
    """Check (and score) every choice and apply the policy to each.

    Every answer the guard judged is kept for the audit record; the caller applies
    the per-choice actions to the call's report.
    """
    from guardrail.completions import CONTENT_FILTER

    choices = completion.choices
    trace.responses.extend(_answer_text(c.message) for c in choices)
    decisions = yield from check(
        guard,
        trace,
        Stage.RESPONSE,
        [(params["messages"], c.message) for c in choices],
        prompt_verdict=prompt_verdict,
        candidates=[c.index for c in choices],
    )
    out = ResponseResult()
    blocked: list[Decision] = []
    for pos, (choice, decision) in enumerate(zip(choices, decisions, strict=True)):
        rewrite = decision.rewrite
        instruction, attempts, accept_refusal = None, 0, True
        if decision.action is Action.REWRITE and rewrite is not None:
            if rewrite.mode is not RewriteMode.REGENERATE:
                out.replacements[pos] = (rewrite.text, "stop")
                out.actions.append((Action.REWRITE, decision.flags))
                continue
            instruction, attempts = rewrite.text, rewrite.max_attempts
        elif decision.blocked:
            blocked.append(decision)
            out.replacements[pos] = (guard.block_message(decision), CONTENT_FILTER)
            out.actions.append((Action.BLOCK, decision.flags))
            continue
        elif decision.retry is None:
            out.actions.append((decision.action, decision.flags))
            continue
        else:
            instruction, attempts = decision.retry.instruction, decision.retry.max_attempts
            accept_refusal = False
        redo = yield from _second_chance(
            guard,
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
            blocked.append(decision)
            out.replacements[pos] = (guard.block_message(decision), CONTENT_FILTER)
            out.actions.append((Action.BLOCK, decision.flags))
        else:  # a failed retry keeps the original (flagged) answer
            out.actions.append((decision.action, decision.flags))
    if blocked and len(blocked) == len(choices):
        out.block = blocked[0]
    return out


def _best_candidate(trace: Trace, completion: ChatCompletion, result: ResponseResult) -> int:
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


def completion_flow(guard: Guard, trace: Trace, params: dict[str, Any]) -> Flow[ChatCompletion]:
    """The whole non-streaming guarded call (with best-of-n when the policy asks for it)."""
    from guardrail.completions import attach_report, blocked_completion, replace_choices

    best_of = guard.best_of_n if int(params.get("n") or 1) == 1 else 1
    upstream_params = {**params, "n": best_of} if best_of > 1 else params
    try:
        prompt, upstream_params, handle = yield from prompt_phase(
            guard, trace, upstream_params, concurrent=guard.concurrent
        )
        if prompt.blocked:
            raise_if_raising(guard, trace, prompt)
            result = blocked_completion(
                model=str(params.get("model", "")),
                message=guard.block_message(prompt),
                n=int(params.get("n") or 1),
                request_id=trace.request_id,
            )
            attach_report(result, trace.report())
            return result
        started = time.perf_counter()
        try:
            completion = yield (
                AwaitUpstream(handle) if handle is not None else CallUpstream(upstream_params)
            )
        except Exception as exc:
            trace.errors.append(("upstream", exc))
            raise
        finally:
            trace.upstream_s += time.perf_counter() - started
        checked = yield from response_phase(
            guard, trace, {**upstream_params, "n": 1}, completion, prompt.verdict
        )
        keep = list(range(len(completion.choices)))
        if best_of > 1 and completion.choices:
            keep = [_best_candidate(trace, completion, checked)]
        for pos in keep:
            action, flags = checked.actions[pos]
            trace.took(action, flags=flags)
        block = checked.block
        if block is None and all(checked.actions[pos][0] is Action.BLOCK for pos in keep):
            block = next(  # best-of-n: no candidate passed
                (o.decision for o in trace.outcomes if o.decision.blocked), None
            )
        if block is not None:
            trace.blocked_stage = Stage.RESPONSE
            raise_if_raising(guard, trace, block)
        result = replace_choices(completion, checked.replacements)
        if best_of > 1:
            chosen = result.choices[keep[0]].model_copy(update={"index": 0})
            result = result.model_copy(update={"choices": [chosen]})
        attach_report(result, trace.report())
        return result
    finally:
        yield Audit(trace)


def _mask_refusal(verdicts: Sequence[Verdict]) -> list[Verdict]:
    # A partial answer cannot be judged a refusal: refusal-based rules apply only
    # to the final check of a stream.
    return [v.model_copy(update={"refusal": None, "refusal_probs": None}) for v in verdicts]


def stream_flow(guard: Guard, trace: Trace, params: dict[str, Any]) -> Flow[None]:
    """The whole streaming guarded call: yields :class:`~guardrail.effects.Emit` per chunk.

    Checks are pipelined: a segment is checked while the next chunks arrive, at
    most two checks are in flight, and checked text is released as soon as its
    check passes (without waiting for the next chunk).
    """
    from collections import deque

    from guardrail.completions import closing_chunk
    from guardrail.streaming import SegmentCheck, StreamState

    settings = guard.streaming
    model = str(params.get("model", ""))
    state = StreamState(
        chunk_chars=settings.chunk_chars,
        sentence_boundary=settings.sentence_boundary,
        release_before_check=settings.release == "check_after_release",
    )
    in_flight: deque[tuple[Any, SegmentCheck, float]] = deque()
    upstream: Any = None
    read: Any = None
    started = 0.0
    try:
        prompt, params, handle = yield from prompt_phase(
            guard, trace, params, concurrent=guard.concurrent
        )
        if prompt.blocked:
            raise_if_raising(guard, trace, prompt)
            indices = range(int(params.get("n") or 1))
            text = guard.block_message(prompt)
            yield Emit(
                closing_chunk(
                    None, model=model, request_id=trace.request_id, indices=indices, text=text
                )
            )
            return
        messages = params["messages"]
        started = time.perf_counter()
        try:
            upstream = yield (AwaitUpstream(handle) if handle is not None else CallUpstream(params))
        except Exception as exc:
            trace.errors.append(("upstream", exc))
            raise

        def settle() -> Flow[bool]:
            """Apply the oldest check; False when it cut the stream."""
            check_handle, segment, t0 = in_flight.popleft()
            result: Sequence[Verdict] | GuardrailError
            try:
                verdicts = yield AwaitCheck(check_handle)
                result = verdicts if segment.final else _mask_refusal(verdicts)
            except Exception as exc:
                result = as_guard_error(exc)
            (decision,) = decide(
                guard,
                trace,
                Stage.RESPONSE,
                result,
                1,
                elapsed=time.perf_counter() - t0,
                prompt_verdict=prompt.verdict,
                candidates=[segment.index],
            )
            if decision.action in (Action.BLOCK, Action.REWRITE):
                trace.took(
                    Action.BLOCK if decision.blocked else Action.REWRITE, flags=decision.flags
                )
                trace.blocked_stage = Stage.RESPONSE if decision.blocked else None
                rewrite = decision.rewrite
                text = settings.replacement
                if rewrite is not None and rewrite.mode is RewriteMode.TEMPLATE:
                    text = rewrite.text
                yield Emit(
                    closing_chunk(
                        state.last_chunk(),
                        model=model,
                        request_id=trace.request_id,
                        indices=state.unfinished,  # every choice still open ends here
                        text=text,
                    )
                )
                return False
            trace.took(decision.action, flags=decision.flags)
            for chunk in state.passed(segment):
                yield Emit(chunk)
            return True

        def start(segment: SegmentCheck) -> Flow[None]:
            check_handle = yield StartCheck(Stage.RESPONSE, [(messages, segment.message)])
            in_flight.append((check_handle, segment, time.perf_counter()))

        read = yield StartRead(upstream)
        while True:
            if in_flight and (yield WaitFirst(read, in_flight[0][0])) == "check":
                if not (yield from settle()):
                    return
                continue
            try:
                chunk = yield AwaitRead(read)
            except Exception as exc:
                read = None
                trace.errors.append(("upstream", exc))
                raise
            read = None
            if chunk is END:
                break
            read = yield StartRead(upstream)  # the next chunk arrives while this one is checked
            step = state.feed(chunk)
            for released in step.release:
                yield Emit(released)
            for segment in step.checks:
                yield from start(segment)
            while len(in_flight) > 2:
                if not (yield from settle()):
                    return
        trace.upstream_s += time.perf_counter() - started
        started = 0.0
        for segment in state.finish():
            yield from start(segment)
        while in_flight:
            if not (yield from settle()):
                return
    finally:
        if started:
            trace.upstream_s += time.perf_counter() - started
        trace.responses = [state.text(i) for i in state.indices] or trace.responses
        while in_flight:  # abandoned checks: their results are never used
            yield CancelUpstream(in_flight.popleft()[0])
        if read is not None:
            yield CancelUpstream(read)
        if upstream is not None:
            yield CloseStream(upstream)
        yield Audit(trace)
