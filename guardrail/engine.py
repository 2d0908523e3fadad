"""The guarded call, written once: a generator of effects, run by a sync or an async driver.

The flow (prompt check -> policy -> upstream -> response checks -> policy ->
rewrites/retries -> report) never performs I/O itself. It *yields* effects
(:class:`Check`, :class:`StartUpstream`, ...) and is sent their results; the
two drivers at the bottom of this module are the only places that block or
await. This is how sync and async callers share one implementation of the
logic (the pattern of httpx's auth flows).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from guardrail.classifiers.base import Conversation
from guardrail.errors import BlockedError, GuardrailError, GuardTimeoutError
from guardrail.report import GuardReport, StageOutcome
from guardrail.types import Action, Decision, RewriteMode, Stage, Verdict

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

    from guardrail.guard import Guard

T = TypeVar("T")

# ---------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Check:
    """Judge conversations at one stage; the result is a list of verdicts (or an exception)."""

    stage: Stage
    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class StartUpstream:
    """Start an upstream call in the background; the result is a handle."""

    params: dict[str, Any]


@dataclass(frozen=True)
class AwaitUpstream:
    """Wait for a started upstream call; the result is its return value."""

    handle: Any


@dataclass(frozen=True)
class CancelUpstream:
    """Cancel (or abandon) a started upstream call; its result is never used."""

    handle: Any


@dataclass(frozen=True)
class CallUpstream:
    """Call the upstream and wait for it (regenerations and retries)."""

    params: dict[str, Any]


@dataclass(frozen=True)
class StartCheck:
    """Start a check in the background (streaming); the result is a handle."""

    stage: Stage
    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class CheckDone:
    """Whether a started check has finished; the result is a bool (never blocks)."""

    handle: Any


@dataclass(frozen=True)
class AwaitCheck:
    """Wait for a started check; the result is its verdicts (or the guard's exception)."""

    handle: Any


@dataclass(frozen=True)
class NextChunk:
    """The next chunk of an upstream stream, or :data:`END` when it is exhausted."""

    stream: Any


@dataclass(frozen=True)
class CloseStream:
    """Close an upstream stream (releases its connection)."""

    stream: Any


@dataclass(frozen=True)
class Emit:
    """Hand a chunk to the caller of a stream."""

    chunk: Any


END = object()
"""Sent for :class:`NextChunk` when the upstream stream is exhausted."""

Effect = (
    Check
    | StartUpstream
    | AwaitUpstream
    | CancelUpstream
    | CallUpstream
    | StartCheck
    | CheckDone
    | AwaitCheck
    | NextChunk
    | CloseStream
    | Emit
)
Flow = Generator[Effect, Any, T]

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
) -> list[Decision]:
    """Let the policy decide each verdict, or the failure mode decide a guard failure."""
    error: GuardrailError | None = None
    if isinstance(verdicts, GuardrailError):
        error = verdicts
        trace.errors.append((stage.value, error))
        verdicts = [None] * count  # type: ignore[list-item]
    trace.guard_s += elapsed
    decisions = [
        guard.decide(stage, verdict, prompt_verdict=prompt_verdict, error=error)
        for verdict in verdicts
    ]
    for k, decision in enumerate(decisions):
        if error is not None:
            trace.outcome_errors[len(trace.outcomes)] = error
        trace.outcomes.append(
            StageOutcome(
                stage=stage,
                decision=decision,
                latency_s=elapsed,
                attempt=attempt,
                candidate=candidates[k] if candidates is not None else None,
            )
        )
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
    """Judge conversations and let the policy decide each; a guard failure is decided too."""
    started = time.perf_counter()
    result: Sequence[Verdict] | GuardrailError
    try:
        result = yield Check(stage, conversations)
    except GuardrailError as exc:  # the failure mode decides; never swallowed silently
        result = exc
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
    )


def with_instruction(params: dict[str, Any], instruction: str) -> dict[str, Any]:
    """Upstream parameters with a system instruction put in front of the conversation."""
    messages = [{"role": "system", "content": instruction}, *params["messages"]]
    return {**params, "messages": messages}


def rewrite_prompt(params: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """Apply a prompt-stage rewrite: add an instruction, or replace the last user message."""
    rewrite = decision.rewrite
    if rewrite is None:
        return params
    if rewrite.mode is RewriteMode.ADD_INSTRUCTION:
        return with_instruction(params, rewrite.text)
    messages = list(params["messages"])
    for i in range(len(messages) - 1, -1, -1):
        if _role(messages[i]) == "user":
            messages[i] = {"role": "user", "content": rewrite.text}
            break
    return {**params, "messages": messages}


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


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


def _answer_text(message: Any) -> str:
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


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
    """Ask the upstream again with an instruction, re-checking every attempt."""
    retry_params = {**with_instruction(params, instruction), "n": 1}
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            completion = yield CallUpstream(retry_params)
        except Exception as exc:  # an upstream failure ends the attempts; audited
            trace.errors.append(("upstream", exc))
            return None
        finally:
            trace.upstream_s += time.perf_counter() - started
        message = completion.choices[0].message
        (decision,) = yield from check(
            guard,
            trace,
            Stage.RESPONSE,
            [(params["messages"], message)],
            prompt_verdict=prompt_verdict,
            attempt=attempt,
            candidates=[candidate],
        )
        refused = decision.verdict is not None and decision.verdict.refusal is True
        if decision.action in (Action.ALLOW, Action.FLAG) and (accept_refusal or not refused):
            return message, decision
    return None


def response_phase(
    guard: Guard,
    trace: Trace,
    params: dict[str, Any],
    completion: ChatCompletion,
    prompt_verdict: Verdict | None,
) -> Flow[tuple[dict[int, tuple[Any, str]], Decision | None]]:
    """Check every choice and apply the policy; returns replacements and a block decision.

    The block decision is returned only when every choice ended blocked.
    """
    from guardrail.completions import CONTENT_FILTER

    choices = completion.choices
    decisions = yield from check(
        guard,
        trace,
        Stage.RESPONSE,
        [(params["messages"], c.message) for c in choices],
        prompt_verdict=prompt_verdict,
        candidates=[c.index for c in choices],
    )
    replacements: dict[int, tuple[Any, str]] = {}
    blocked: list[Decision] = []
    for pos, (choice, decision) in enumerate(zip(choices, decisions, strict=True)):
        finish = choice.finish_reason or "stop"
        rewrite = decision.rewrite
        if decision.action is Action.REWRITE and rewrite is not None:
            if rewrite.mode is RewriteMode.REGENERATE:
                redo = yield from _second_chance(
                    guard,
                    trace,
                    params,
                    instruction=rewrite.text,
                    attempts=rewrite.max_attempts,
                    prompt_verdict=prompt_verdict,
                    candidate=choice.index,
                    accept_refusal=True,
                )
                if redo is None:
                    blocked.append(decision)
                    replacements[pos] = (guard.block_message(decision), CONTENT_FILTER)
                    trace.took(Action.BLOCK, flags=decision.flags)
                    continue
                replacements[pos] = (redo[0], finish)
                trace.took(Action.REWRITE, flags=(*decision.flags, *redo[1].flags))
            else:
                replacements[pos] = (rewrite.text, finish)
                trace.took(Action.REWRITE, flags=decision.flags)
        elif decision.blocked:
            blocked.append(decision)
            replacements[pos] = (guard.block_message(decision), CONTENT_FILTER)
            trace.took(Action.BLOCK, flags=decision.flags)
        else:
            trace.took(decision.action, flags=decision.flags)
            if decision.retry is not None:
                redo = yield from _second_chance(
                    guard,
                    trace,
                    params,
                    instruction=decision.retry.instruction,
                    attempts=decision.retry.max_attempts,
                    prompt_verdict=prompt_verdict,
                    candidate=choice.index,
                    accept_refusal=False,
                )
                if redo is not None:
                    replacements[pos] = (redo[0], finish)
                    trace.took(Action.REWRITE, flags=redo[1].flags)
    for pos, choice in enumerate(choices):
        new = replacements.get(pos, (choice.message, ""))[0]
        trace.responses.append(new if isinstance(new, str) else _answer_text(new))
    if blocked and len(blocked) == len(choices):
        trace.blocked_stage = Stage.RESPONSE
        return replacements, blocked[0]
    return replacements, None


def completion_flow(guard: Guard, trace: Trace, params: dict[str, Any]) -> Flow[ChatCompletion]:
    """The whole non-streaming guarded call."""
    from guardrail.completions import attach_report, blocked_completion, replace_choices

    concurrent = guard.concurrent
    try:
        prompt, params, handle = yield from prompt_phase(
            guard, trace, params, concurrent=concurrent
        )
        if prompt.blocked:
            if guard.raises_on_block:
                raise BlockedError(f"prompt blocked by rule {prompt.rule_id!r}", decision=prompt)
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
                AwaitUpstream(handle) if handle is not None else CallUpstream(params)
            )
        except Exception as exc:
            trace.errors.append(("upstream", exc))
            raise
        finally:
            trace.upstream_s += time.perf_counter() - started
        replacements, blocked = yield from response_phase(
            guard, trace, params, completion, prompt.verdict
        )
        if blocked is not None and guard.raises_on_block:
            raise BlockedError(f"response blocked by rule {blocked.rule_id!r}", decision=blocked)
        result = replace_choices(completion, replacements)
        attach_report(result, trace.report())
        return result
    finally:
        guard.audit(trace)


def stream_flow(guard: Guard, trace: Trace, params: dict[str, Any]) -> Flow[None]:
    """The whole streaming guarded call: yields :class:`Emit` effects for the caller's chunks.

    Checks are pipelined: the check of one segment runs while the next chunks
    arrive, with at most two checks in flight before reading waits.
    """
    from collections import deque

    from guardrail.completions import closing_chunk
    from guardrail.streaming import SegmentCheck, StreamState

    settings = guard.streaming
    model = str(params.get("model", ""))
    try:
        prompt, params, handle = yield from prompt_phase(
            guard, trace, params, concurrent=guard.concurrent
        )
        if prompt.blocked:
            if guard.raises_on_block:
                raise BlockedError(f"prompt blocked by rule {prompt.rule_id!r}", decision=prompt)
            yield Emit(
                closing_chunk(
                    None,
                    model=model,
                    request_id=trace.request_id,
                    indices=range(int(params.get("n") or 1)),
                    text=guard.block_message(prompt),
                )
            )
            return
        started = time.perf_counter()
        try:
            upstream = yield (AwaitUpstream(handle) if handle is not None else CallUpstream(params))
        except Exception as exc:
            trace.errors.append(("upstream", exc))
            raise
        state = StreamState(
            chunk_chars=settings.chunk_chars,
            sentence_boundary=settings.sentence_boundary,
            release_before_check=settings.release == "check_after_release",
        )
        in_flight: deque[tuple[Any, SegmentCheck, float]] = deque()
        messages = params["messages"]

        def settle() -> Flow[SegmentCheck | None]:
            """Wait for the oldest check and apply it; returns the failing check, if any."""
            check_handle, segment, t0 = in_flight.popleft()
            result: Sequence[Verdict] | GuardrailError
            try:
                result = yield AwaitCheck(check_handle)
            except GuardrailError as exc:
                result = exc
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
                return segment
            if segment.final:  # refusal-based flags mean something only on the whole answer
                trace.took(decision.action, flags=decision.flags)
            elif decision.error is not None:
                trace.took(Action.FLAG, flags=decision.flags)
            for chunk in state.passed(segment):
                yield Emit(chunk)
            return None

        def cut(segment: SegmentCheck) -> Flow[None]:
            decision = trace.outcomes[-1].decision
            rewrite = decision.rewrite
            text = (
                rewrite.text
                if rewrite is not None and rewrite.mode is RewriteMode.TEMPLATE
                else None
            )
            yield Emit(
                closing_chunk(
                    state.last_chunk(),
                    model=model,
                    request_id=trace.request_id,
                    indices=[segment.index],
                    text=text if text is not None else settings.replacement,
                )
            )

        try:
            while True:
                chunk = yield NextChunk(upstream)
                if chunk is END:
                    break
                step = state.feed(chunk)
                for released in step.release:
                    yield Emit(released)
                for segment in step.checks:
                    conversation = (messages, segment.text)
                    check_handle = yield StartCheck(Stage.RESPONSE, [conversation])
                    in_flight.append((check_handle, segment, time.perf_counter()))
                while in_flight and (len(in_flight) > 2 or (yield CheckDone(in_flight[0][0]))):
                    failed = yield from settle()
                    if failed is not None:
                        yield from cut(failed)
                        return
            trace.upstream_s += time.perf_counter() - started
            for segment in state.finish():
                check_handle = yield StartCheck(Stage.RESPONSE, [(messages, segment.text)])
                in_flight.append((check_handle, segment, time.perf_counter()))
            while in_flight:
                failed = yield from settle()
                if failed is not None:
                    yield from cut(failed)
                    return
            trace.responses.extend(state.text(i) for i in state.indices)
        finally:
            while in_flight:  # abandoned checks: their results are never used
                yield CancelUpstream(in_flight.popleft()[0])
            yield CloseStream(upstream)
    finally:
        guard.audit(trace)


# --------------------------------------------------------------------------- drivers


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Abandoned tasks' failures are expected; retrieving them keeps asyncio quiet.
    if not task.cancelled():
        task.exception()


class SyncRunner:
    """Runs flows for sync callers: upstream calls and guard checks on worker threads.

    Threads give the sync API the same concurrency as the async one (the prompt
    check races the upstream call; a stream's next chunk is read while its last
    segment is checked) and let guard checks time out.
    """

    def __init__(
        self,
        classify: Callable[[Stage, Sequence[Conversation]], list[Verdict]],
        upstream: Callable[[dict[str, Any]], Any],
        *,
        timeout_s: float | None,
        executor: concurrent.futures.Executor,
    ) -> None:
        self._classify = classify
        self._upstream = upstream
        self._timeout = timeout_s
        self._executor = executor

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow that emits nothing to completion and return its result."""
        steps = self._steps(flow)
        try:
            while True:
                next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def stream(self, flow: Flow[None]) -> Generator[Any, None, None]:
        """Drive a streaming flow, yielding each chunk it emits."""
        return self._steps(flow)

    def _steps(self, flow: Flow[T]) -> Generator[Any, None, T]:
        started: list[concurrent.futures.Future[Any]] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.chunk
                    continue
                try:
                    value = self._perform(effect, started)
                except Exception as exc:
                    error = exc
        finally:
            for future in started:
                future.cancel()
            flow.close()

    def _wait(self, future: concurrent.futures.Future[Any], what: str) -> Any:
        try:
            return future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise GuardTimeoutError(f"{what} check exceeded {self._timeout}s") from None

    def _perform(self, effect: Effect, started: list[concurrent.futures.Future[Any]]) -> Any:
        if isinstance(effect, Check):
            future = self._executor.submit(self._classify, effect.stage, effect.conversations)
            return self._wait(future, effect.stage.value)
        if isinstance(effect, StartCheck):
            future = self._executor.submit(self._classify, effect.stage, effect.conversations)
            started.append(future)
            return future
        if isinstance(effect, CheckDone):
            return effect.handle.done()
        if isinstance(effect, AwaitCheck):
            return self._wait(effect.handle, "streamed")
        if isinstance(effect, StartUpstream):
            future = self._executor.submit(self._upstream, effect.params)
            started.append(future)
            return future
        if isinstance(effect, AwaitUpstream):
            return effect.handle.result()
        if isinstance(effect, CancelUpstream):
            # A thread cannot be interrupted: its answer is abandoned, never returned.
            effect.handle.cancel()
            return None
        if isinstance(effect, NextChunk):
            return next(effect.stream, END)
        if isinstance(effect, CloseStream):
            effect.stream.close()
            return None
        assert isinstance(effect, CallUpstream)
        return self._upstream(effect.params)


class AsyncRunner:
    """Runs flows for async callers: upstream calls and streamed checks as tasks."""

    def __init__(
        self,
        classify: Callable[[Stage, Sequence[Conversation]], Awaitable[list[Verdict]]],
        upstream: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        timeout_s: float | None,
    ) -> None:
        self._classify = classify
        self._upstream = upstream
        self._timeout = timeout_s

    async def run(self, flow: Flow[T]) -> T:
        """Drive a flow that emits nothing to completion and return its result."""
        box: list[T] = []
        async for _ in self._steps(flow, box):
            pass
        return box[0]

    def stream(self, flow: Flow[None]) -> AsyncGenerator[Any, None]:
        """Drive a streaming flow, yielding each chunk it emits."""
        return self._steps(flow, [])

    async def _steps(self, flow: Flow[T], box: list[T]) -> AsyncGenerator[Any, None]:
        started: list[asyncio.Future[Any]] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    box.append(stop.value)
                    return
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.chunk
                    continue
                try:
                    value = await self._perform(effect, started)
                except Exception as exc:
                    error = exc
        finally:
            for task in started:
                if not task.done():
                    task.cancel()
            flow.close()

    async def _wait(self, awaitable: Awaitable[Any], what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self._timeout)
        except asyncio.TimeoutError:
            raise GuardTimeoutError(f"{what} check exceeded {self._timeout}s") from None

    def _task(self, awaitable: Awaitable[Any], started: list[asyncio.Future[Any]]) -> Any:
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(_retrieve)
        started.append(task)
        return task

    async def _perform(self, effect: Effect, started: list[asyncio.Future[Any]]) -> Any:
        if isinstance(effect, Check):
            return await self._wait(
                self._classify(effect.stage, effect.conversations), effect.stage.value
            )
        if isinstance(effect, StartCheck):
            return self._task(self._classify(effect.stage, effect.conversations), started)
        if isinstance(effect, CheckDone):
            return effect.handle.done()
        if isinstance(effect, AwaitCheck):
            return await self._wait(asyncio.shield(effect.handle), "streamed")
        if isinstance(effect, StartUpstream):
            return self._task(self._upstream(effect.params), started)
        if isinstance(effect, AwaitUpstream):
            return await effect.handle
        if isinstance(effect, CancelUpstream):
            effect.handle.cancel()
            return None
        if isinstance(effect, NextChunk):
            try:
                return await effect.stream.__anext__()
            except StopAsyncIteration:
                return END
        if isinstance(effect, CloseStream):
            await effect.stream.close()
            return None
        assert isinstance(effect, CallUpstream)
        return await self._upstream(effect.params)
