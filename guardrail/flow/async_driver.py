"""The async driver: performs a flow's effects with tasks and never blocks the event loop.

Every started job is a task (on Python 3.12+ an eager one: it runs at once
until it first suspends, so a job that answers without I/O costs no loop
iteration). A check's deadline counts from when it was started, and is set
(:mod:`guardrail.deadline`) for the code the check runs. Audit writes that may
block (an fsync'd file, a stream, a logger) run in a worker thread; a sink
that never blocks is written inline.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar, cast

from guardrail import deadline
from guardrail.classifiers.base import Conversation
from guardrail.errors import ConfigurationError
from guardrail.flow.drive import Stepper, timeout_error
from guardrail.flow.effects import (
    END,
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
    Job,
    ReadChunk,
    Score,
    Start,
    WaitFirst,
)
from guardrail.flow.trace import Trace
from guardrail.reward.base import RewardScore
from guardrail.types import Stage, Verdict

T = TypeVar("T")


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Abandoned tasks' failures are expected; retrieving them keeps asyncio quiet.
    if not task.cancelled():
        task.exception()


def _aclose_result(task: asyncio.Future[Any]) -> None:
    # A raced upstream call that already returned a stream: close it, unread.
    if task.cancelled() or task.exception() is not None:
        return
    close = getattr(task.result(), "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            asyncio.ensure_future(result).add_done_callback(_retrieve)


async def _within(timeout: float | None, start: Callable[[], Awaitable[T]]) -> T:
    # Runs in the job's own task, whose context is its own copy; the job's coroutine
    # is created here, so a task cancelled before it runs leaves none unawaited.
    token = deadline.enter(None if timeout is None else time.monotonic() + timeout)
    try:
        return await start()
    finally:
        deadline.leave(token)


async def _call(fn: Callable[[T], Awaitable[Any]], arg: T) -> Any:
    return await fn(arg)


async def _next_or_end(stream: Any) -> Any:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return END


if sys.version_info >= (3, 12):

    def _task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        # Eager: the job runs now until it first suspends, in its own context and
        # as its own current task; one that never suspends is done on return.
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return asyncio.Task(coroutine, loop=loop, context=context, eager_start=True)

else:

    def _task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return asyncio.ensure_future(coroutine)


class _Task(Handle[T]):
    """A started job's task and when it started."""

    __slots__ = ("t0", "task")

    def __init__(self, job: Job[T], coroutine: Coroutine[Any, Any, T]) -> None:
        super().__init__(job)
        self.t0 = time.perf_counter()
        self.task: asyncio.Future[T] = _task(coroutine)
        if self.task.done():
            _retrieve(self.task)
        else:
            self.task.add_done_callback(_retrieve)


class AsyncDriver:
    """Drives flows for async callers with tasks."""

    def __init__(
        self,
        classify: Callable[[Stage, Sequence[Conversation]], Awaitable[list[Verdict]]],
        upstream: Callable[[dict[str, Any]], Awaitable[Any]],
        audit: Callable[[Trace], None],
        *,
        timeout_s: float | None,
        score: Callable[[Sequence[Conversation]], Awaitable[list[RewardScore | None]]]
        | None = None,
        audit_blocks: bool = True,
    ) -> None:
        """``audit_blocks=False`` promises that ``audit`` never blocks: it runs inline."""
        self._classify = classify
        self._audit_blocks = audit_blocks
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
        stepper = Stepper(flow)
        try:
            while (effect := stepper.next_effect()) is not None:
                if type(effect) is Emit:
                    yield effect.chunk
                else:
                    await self._perform(stepper, effect)
            box.append(stepper.result)  # type: ignore[arg-type]
        finally:
            if stepper.abandon():
                while (effect := stepper.next_effect()) is not None:
                    await self._perform(stepper, effect)

    async def _perform(self, stepper: Stepper[Any], effect: Effect) -> None:
        try:
            stepper.resolve(await _HANDLERS[type(effect)](self, effect))
        except Exception as exc:
            stepper.reject(exc)

    async def _start(self, effect: Start[Any]) -> Handle[Any]:
        job = effect.job
        if isinstance(job, Classify):
            classify, stage, conversations = self._classify, job.stage, job.conversations
            return _Task(job, _within(self._timeout, lambda: classify(stage, conversations)))
        if isinstance(job, Score):
            score = self._score
            if score is None:
                raise ConfigurationError("no reward models are configured")
            pairs = job.conversations
            return _Task(job, _within(self._timeout, lambda: score(pairs)))
        if isinstance(job, CallUpstream):
            return _Task(job, _call(self._upstream, job.params))
        if isinstance(job, ReadChunk):
            return _Task(job, _next_or_end(job.stream))
        raise TypeError(f"unexpected job {job!r}")

    def _remaining(self, handle: _Task[Any]) -> float | None:
        if self._timeout is None or not handle.job.timed:
            return None
        return max(0.0, self._timeout - (time.perf_counter() - handle.t0))

    async def _await(self, effect: Await[Any]) -> Any:
        handle = cast("_Task[Any]", effect.handle)
        task = handle.task
        remaining = self._remaining(handle)
        if remaining is None or task.done():
            return await task
        # Wait for the task or the deadline, whichever comes first, without
        # cancelling the task when this wait is cancelled (the flow decides that).
        # Cheaper than wait_for(shield(...)): one future, one timer, no task.
        waiter = asyncio.get_running_loop().create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        task.add_done_callback(wake)
        timer = asyncio.get_running_loop().call_later(remaining, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            task.remove_done_callback(wake)
        if task.done():
            return task.result()
        task.cancel()
        raise timeout_error(handle.job, self._timeout or 0.0)

    async def _wait_first(self, effect: WaitFirst) -> First:
        # Handles come from this driver's own _start.
        check, read = cast("_Task[Any]", effect.check), cast("_Task[Any]", effect.read)
        done, _ = await asyncio.wait(
            {read.task, check.task},
            timeout=self._remaining(check),
            return_when=asyncio.FIRST_COMPLETED,
        )
        return "read" if read.task in done and check.task not in done else "check"

    async def _cancel(self, effect: Cancel) -> None:
        handle = cast("_Task[Any]", effect.handle)
        if handle.task.done():
            _aclose_result(handle.task)
        else:
            handle.task.cancel()
            handle.task.add_done_callback(_aclose_result)

    async def _close_stream(self, effect: CloseStream) -> None:
        await effect.stream.close()

    async def _write_audit(self, effect: Audit) -> None:
        if self._audit_blocks:
            await asyncio.to_thread(self._audit, effect.trace)
        else:
            self._audit(effect.trace)


# Effect type -> handler, built once (a bound-method table per call costs a microsecond).
_HANDLERS: dict[type, Callable[..., Any]] = {
    Start: AsyncDriver._start,
    Await: AsyncDriver._await,
    Cancel: AsyncDriver._cancel,
    WaitFirst: AsyncDriver._wait_first,
    CloseStream: AsyncDriver._close_stream,
    Audit: AsyncDriver._write_audit,
}
