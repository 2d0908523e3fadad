"""The two drivers of a guarded-call flow: the only code that blocks or awaits.

:class:`SyncRunner` performs effects with threads: upstream calls and stream
reads on one pool, guard checks on another (so abandoned upstream calls can never
starve the guard), each check's deadline counted from when it starts running.
A thread handoff costs about as much as a check by an instant classifier (a
rule, a cache hit, a scripted fake), so the sync runner avoids the handoffs it
can: checks of a guard whose recent checks were all near-instant run on the
caller's thread (:class:`CheckPace`), and an upstream call or stream read is
started on a worker only when the flow next waits on something else; when the
flow waits for that call or read first, it runs on the caller's thread.
:class:`AsyncRunner` performs them with tasks and never blocks the event loop
(audit writes run in a worker thread).

When a caller goes away (closes a stream early, is cancelled, or an exception
escapes), the runner throws :class:`~guardrail.effects.Abandoned` into the flow and
still performs the cleanup effects the flow yields (cancel, close, audit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Sequence
from typing import Any, TypeVar

from guardrail.classifiers.base import Conversation
from guardrail.effects import (
    END,
    Abandoned,
    Audit,
    AwaitCheck,
    AwaitRead,
    AwaitUpstream,
    CallUpstream,
    CancelUpstream,
    Check,
    CheckDone,
    CloseStream,
    Effect,
    Emit,
    First,
    Flow,
    Score,
    StartCheck,
    StartRead,
    StartUpstream,
    WaitFirst,
)
from guardrail.engine import Trace
from guardrail.errors import ConfigurationError, GuardTimeoutError
from guardrail.reward.base import RewardScore
from guardrail.types import Stage, Verdict

Scores = list[RewardScore | None]

T = TypeVar("T")

QUEUE_LIMIT_S = 60.0
"""How long a check may wait for a free guard worker before it counts as timed out."""

INLINE_BELOW_S = 0.0005
"""Checks faster than this (about a thread handoff) may run on the caller's thread."""

INLINE_AFTER = 16
"""Consecutive checks under :data:`INLINE_BELOW_S` before checks run inline."""


def _timeout_error(what: str, timeout: float) -> GuardTimeoutError:
    return GuardTimeoutError(f"{what} check exceeded its {timeout:g}s deadline")


# ------------------------------------------------------------------------------ sync


class CheckPace:
    """How fast one guard's recent checks were: decides whether sync checks run inline.

    After :data:`INLINE_AFTER` consecutive checks under :data:`INLINE_BELOW_S`, the
    sync runner runs checks on the caller's thread; the first slower check sends
    them back to the worker pool, where deadlines are enforced while they run. An
    inline check that overruns its deadline still fails as timed out (its verdict
    is discarded) once it returns.
    """

    def __init__(self) -> None:
        self._streak = 0  # races between threads can only lose a count: harmless

    @property
    def inline(self) -> bool:
        """Whether checks may run on the caller's thread."""
        return self._streak >= INLINE_AFTER

    def record(self, seconds: float) -> None:
        """Note how long a check took."""
        self._streak = self._streak + 1 if seconds < INLINE_BELOW_S else 0


class _Job:
    """A check submitted to a pool (or run inline); remembers when it started running."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.started = threading.Event()
        self.t0 = 0.0
        self._fn = fn
        self.future: concurrent.futures.Future[Any] | None = None

    def __call__(self) -> Any:
        self.t0 = time.perf_counter()
        self.started.set()
        return self._fn()

    def run_here(self, timeout: float | None, what: str) -> _Job:
        """Run on the caller's thread; an overrun of ``timeout`` becomes a timeout error."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            result = self()
        except Exception as exc:
            future.set_exception(exc)
        else:
            if timeout is not None and time.perf_counter() - self.t0 > timeout:
                future.set_exception(_timeout_error(what, timeout))
            else:
                future.set_result(result)
        self.future = future
        return self


class _Deferred:
    """An upstream call or stream read, started only once the flow waits on something else."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args
        self.future: concurrent.futures.Future[Any] | None = None
        self.settled = False
        """Run inline or dropped: nothing is left to start or cancel."""


def _close_result(future: concurrent.futures.Future[Any]) -> None:
    # A raced upstream call that already returned a stream: close it, unread.
    if not future.cancelled() and future.exception() is None:
        close = getattr(future.result(), "close", None)
        if callable(close) and not inspect.iscoroutinefunction(close):
            close()


class SyncRunner:
    """Drives flows for sync callers with two thread pools."""

    def __init__(
        self,
        classify: Callable[[Stage, Sequence[Conversation]], list[Verdict]],
        upstream: Callable[[dict[str, Any]], Any],
        audit: Callable[[Trace], None],
        *,
        timeout_s: float | None,
        checks: concurrent.futures.Executor,
        io: concurrent.futures.Executor,
        score: Callable[[Sequence[Conversation]], Scores] | None = None,
        pace: CheckPace | None = None,
    ) -> None:
        self._classify = classify
        self._score = score
        self._upstream = upstream
        self._audit = audit
        self._timeout = timeout_s
        self._checks = checks
        self._io = io
        self._pace = pace if pace is not None else CheckPace()
        self._pending: list[_Deferred] = []

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
        value: Any = None
        error: BaseException | None = None
        finished = False
        try:
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    finished = True
                    return stop.value  # type: ignore[no-any-return]
                except BaseException:
                    finished = True
                    raise
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.chunk
                    continue
                try:
                    value = self._perform(effect)
                except Exception as exc:
                    error = exc
        finally:
            if not finished:
                self._abandon(flow)

    def _abandon(self, flow: Flow[Any]) -> None:
        value: Any = None
        error: BaseException | None = Abandoned()
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except (Abandoned, StopIteration):
                return
            value, error = None, None
            if not isinstance(effect, Emit):  # nobody is listening any more
                try:
                    value = self._perform(effect)
                except Exception as exc:
                    error = exc

    def _timed(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        started = time.perf_counter()
        try:
            return self._classify(stage, conversations)
        finally:
            self._pace.record(time.perf_counter() - started)

    def _check_here(self, effect: Check) -> list[Verdict]:
        """Run a check on the caller's thread; an overrun of the deadline is a timeout."""
        started = time.perf_counter()
        verdicts = self._timed(effect.stage, effect.conversations)
        if self._timeout is not None and time.perf_counter() - started > self._timeout:
            raise _timeout_error(effect.stage.value, self._timeout)
        return verdicts

    def _start_check(self, effect: Check | StartCheck, what: str) -> _Job:
        stage, conversations = effect.stage, effect.conversations
        job = _Job(lambda: self._timed(stage, conversations))
        if self._pace.inline:
            return job.run_here(self._timeout, what)
        return self._submit_job(job)

    def _submit_job(self, job: _Job) -> _Job:
        self._launch()  # the caller is about to wait: start deferred calls first
        job.future = self._checks.submit(job)
        return job

    def _launch(self) -> None:
        """Start every deferred upstream call or read on a worker."""
        for deferred in self._pending:
            deferred.future = self._io.submit(deferred.fn, *deferred.args)
        self._pending.clear()

    def _defer(self, fn: Callable[..., Any], *args: Any) -> _Deferred:
        deferred = _Deferred(fn, *args)
        self._pending.append(deferred)
        return deferred

    def _settle(self, handle: Any) -> Any:
        """The result of an upstream call or read; one not started yet runs inline."""
        if not isinstance(handle, _Deferred):
            return handle.result()
        if handle.future is not None:
            return handle.future.result()
        self._pending.remove(handle)
        handle.settled = True
        self._launch()
        return handle.fn(*handle.args)

    def _cancel(self, handle: Any) -> None:
        if isinstance(handle, _Deferred):
            if handle.future is None:  # never started: nothing to abandon
                if not handle.settled:
                    self._pending.remove(handle)
                    handle.settled = True
                return
            handle = handle.future
        elif isinstance(handle, _Job):
            handle = handle.future
        # A running thread cannot be interrupted: its answer is abandoned, never
        # returned, and a stream it opens is closed.
        if handle is not None and not handle.cancel():
            handle.add_done_callback(_close_result)

    def _remaining(self, job: _Job) -> float | None:
        """Seconds left before the job's deadline (waiting for it to start if queued)."""
        if self._timeout is None:
            return None
        if not job.started.wait(QUEUE_LIMIT_S):
            assert job.future is not None
            job.future.cancel()
            raise GuardTimeoutError(f"no guard worker was free for {QUEUE_LIMIT_S:g}s")
        return max(0.0, self._timeout - (time.perf_counter() - job.t0))

    def _await_check(self, job: _Job, what: str) -> Any:
        assert job.future is not None
        try:
            return job.future.result(timeout=self._remaining(job))
        except concurrent.futures.TimeoutError:
            raise _timeout_error(what, self._timeout or 0.0) from None

    def _wait_first(self, read: _Deferred, job: _Job) -> First:
        assert job.future is not None
        if job.future.done():
            return "check"
        self._launch()
        assert read.future is not None
        remaining = self._remaining(job)
        done, _ = concurrent.futures.wait(
            [job.future, read.future],
            timeout=remaining,
            return_when=concurrent.futures.FIRST_COMPLETED,
        )
        return "read" if read.future in done and job.future not in done else "check"

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Check):
            if self._pace.inline:
                return self._check_here(effect)
            what = effect.stage.value
            return self._await_check(self._start_check(effect, what), what)
        if isinstance(effect, Score):
            score = self._score
            if score is None:
                raise ConfigurationError("no reward models are configured")
            conversations = effect.conversations
            return self._await_check(self._submit_job(_Job(lambda: score(conversations))), "reward")
        if isinstance(effect, StartCheck):
            return self._start_check(effect, "streamed")
        if isinstance(effect, AwaitCheck):
            if not effect.handle.future.done():
                self._launch()
            return self._await_check(effect.handle, "streamed")
        if isinstance(effect, CheckDone):
            return effect.handle.future.done()
        if isinstance(effect, StartUpstream):
            return self._defer(self._upstream, effect.params)
        if isinstance(effect, AwaitUpstream | AwaitRead):
            return self._settle(effect.handle)
        if isinstance(effect, CancelUpstream):
            self._cancel(effect.handle)
            return None
        if isinstance(effect, StartRead):
            return self._defer(next, effect.stream, END)
        if isinstance(effect, WaitFirst):
            return self._wait_first(effect.read, effect.check)
        self._launch()  # everything below blocks
        if isinstance(effect, CallUpstream):
            return self._upstream(effect.params)
        if isinstance(effect, CloseStream):
            effect.stream.close()
            return None
        if isinstance(effect, Audit):
            self._audit(effect.trace)
            return None
        raise TypeError(f"unexpected effect {effect!r}")


# ----------------------------------------------------------------------------- async


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Abandoned tasks' failures are expected; retrieving them keeps asyncio quiet.
    if not task.cancelled():
        task.exception()


def _aclose_result(task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    close = getattr(task.result(), "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            asyncio.ensure_future(result).add_done_callback(_retrieve)


async def _next_or_end(stream: Any) -> Any:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return END


class _Task:
    """A check task and the time it started."""

    def __init__(self, task: asyncio.Future[Any]) -> None:
        self.task = task
        self.t0 = time.perf_counter()


class AsyncRunner:
    """Drives flows for async callers with tasks; never blocks the event loop."""

    def __init__(
        self,
        classify: Callable[[Stage, Sequence[Conversation]], Awaitable[list[Verdict]]],
        upstream: Callable[[dict[str, Any]], Awaitable[Any]],
        audit: Callable[[Trace], None],
        *,
        timeout_s: float | None,
        score: Callable[[Sequence[Conversation]], Awaitable[Scores]] | None = None,
    ) -> None:
        self._classify = classify
        self._score = score
        self._upstream = upstream
        self._audit = audit
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
        value: Any = None
        error: BaseException | None = None
        finished = False
        try:
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    finished = True
                    box.append(stop.value)
                    return
                except BaseException:
                    finished = True
                    raise
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.chunk
                    continue
                try:
                    value = await self._perform(effect)
                except Exception as exc:
                    error = exc
        finally:
            if not finished:
                await self._abandon(flow)

    async def _abandon(self, flow: Flow[Any]) -> None:
        value: Any = None
        error: BaseException | None = Abandoned()
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except (Abandoned, StopIteration):
                return
            value, error = None, None
            if not isinstance(effect, Emit):
                try:
                    value = await self._perform(effect)
                except Exception as exc:
                    error = exc

    def _remaining(self, job: _Task) -> float | None:
        if self._timeout is None:
            return None
        return max(0.0, self._timeout - (time.perf_counter() - job.t0))

    async def _await_check(self, job: _Task, what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(job.task), self._remaining(job))
        except asyncio.TimeoutError:
            job.task.cancel()
            raise _timeout_error(what, self._timeout or 0.0) from None

    def _task(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(_retrieve)
        return task

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Check):
            job = _Task(self._task(self._classify(effect.stage, effect.conversations)))
            return await self._await_check(job, effect.stage.value)
        if isinstance(effect, Score):
            if self._score is None:
                raise ConfigurationError("no reward models are configured")
            job = _Task(self._task(self._score(effect.conversations)))
            return await self._await_check(job, "reward")
        if isinstance(effect, StartCheck):
            return _Task(self._task(self._classify(effect.stage, effect.conversations)))
        if isinstance(effect, AwaitCheck):
            return await self._await_check(effect.handle, "streamed")
        if isinstance(effect, CheckDone):
            return effect.handle.task.done()
        if isinstance(effect, StartUpstream):
            return self._task(self._upstream(effect.params))
        if isinstance(effect, AwaitUpstream):
            return await effect.handle
        if isinstance(effect, CancelUpstream):
            handle = effect.handle.task if isinstance(effect.handle, _Task) else effect.handle
            if handle.done():
                _aclose_result(handle)
            else:
                handle.cancel()
                handle.add_done_callback(_aclose_result)
            return None
        if isinstance(effect, CallUpstream):
            return await self._upstream(effect.params)
        if isinstance(effect, StartRead):
            return self._task(_next_or_end(effect.stream))
        if isinstance(effect, AwaitRead):
            return await effect.handle
        if isinstance(effect, WaitFirst):
            check: _Task = effect.check
            done, _ = await asyncio.wait(
                {effect.read, check.task},
                timeout=self._remaining(check),
                return_when=asyncio.FIRST_COMPLETED,
            )
            return "read" if effect.read in done and check.task not in done else "check"
        if isinstance(effect, CloseStream):
            await effect.stream.close()
            return None
        if isinstance(effect, Audit):
            await asyncio.to_thread(self._audit, effect.trace)
            return None
        raise TypeError(f"unexpected effect {effect!r}")
