"""The async driver: performs a flow's effects in its caller's task where it can.

A started job runs only once the flow waits on it or on something else. A job
the flow waits on first runs in the caller's own task, in a context of its own
(:class:`_Inline`): one that answers without I/O costs no task and no loop
iteration, and an upstream call or stream read costs no second task. As soon
as that job suspends, every other started job becomes a task (on Python 3.12+
an eager one), so they overlap its wait. A check's deadline counts from when
it starts running and is set (:mod:`guardrail.deadline`) for the code the check
runs; an inline check past it is cancelled like a task would be. Audit writes
that may block (an fsync'd file, a stream, a logger) run in a worker thread; a
sink that never blocks is written inline.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar

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
    Emit,
    First,
    Flow,
    Handle,
    Job,
    ReadChunk,
    Run,
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


async def _within(timeout: float | None, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    # Runs in the job's own task, whose context is its own copy; the job's coroutine
    # is created here, so a task cancelled before it runs leaves none unawaited.
    token = deadline.enter(None if timeout is None else time.monotonic() + timeout)
    try:
        return await fn(*args)
    finally:
        deadline.leave(token)


async def _call(fn: Callable[[T], Awaitable[Any]], arg: T) -> Any:
    # The upstream may hand back any awaitable; a job runs a coroutine.
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


class _Job(Handle[T]):
    """A started job: not yet running, run inline (its outcome kept), or a task."""

    __slots__ = ("args", "make", "t0", "task")

    def __init__(
        self, job: Job[T], make: Callable[..., Coroutine[Any, Any, T]], *args: Any
    ) -> None:
        super().__init__(job)
        self.make = make
        """Creates the job's coroutine from :attr:`args` (only when it runs: a dropped
        job leaves none; no closure per job)."""
        self.args = args
        self.t0 = 0.0
        self.task: asyncio.Future[T] | None = None

    def launch(self) -> None:
        """Run the job as a task from now on."""
        self.t0 = time.perf_counter()
        self.task = task = _task(self.make(*self.args))
        if task.done():
            _retrieve(task)
        else:
            task.add_done_callback(_retrieve)


class _Inline:
    """Runs a coroutine in the awaiting task, in a context of its own, as a task would.

    The first step runs at once; :meth:`step` says whether the coroutine is still
    suspended. Awaiting the object resumes it until it returns. :meth:`expire`
    (the job's deadline) cancels it once, as ``Task.cancel`` does: what it waits on
    is cancelled, or, when that cannot be, its next resumption throws
    ``CancelledError``. Like a task's, a coroutine that swallows the cancellation
    runs on (its answer is then discarded as too late).
    """

    __slots__ = ("context", "coro", "expired", "must_cancel", "result", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.context = contextvars.copy_context()
        self.waiting: Any = None
        self.expired = False
        self.must_cancel = False
        self.result: Any = None

    def step(self) -> bool:
        """Run the first step; True while the coroutine is suspended."""
        try:
            self.waiting = self.context.run(self.coro.send, None)
        except StopIteration as stop:
            self.result = stop.value
            return False
        return True

    def expire(self) -> None:
        """The deadline passed: cancel the coroutine at its current wait."""
        self.expired = True
        cancel = getattr(self.waiting, "cancel", None)
        if not (callable(cancel) and cancel()):
            self.must_cancel = True  # a bare yield, or a wait already over

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run = self.coro, self.context.run
        while True:
            error: BaseException | None
            try:
                sent = yield self.waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # the task was cancelled, or its wait failed
                error = exc
            else:
                error = None
                if self.must_cancel:
                    self.must_cancel = False
                    error = asyncio.CancelledError()
            try:
                if error is None:
                    self.waiting = run(coro.send, sent)
                else:
                    self.waiting = run(coro.throw, error)
            except StopIteration as stop:
                return stop.value


def _cancelling() -> bool:
    # Whether the running task itself was asked to cancel (Python 3.11+ counts it).
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False


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
        self._pending: list[_Job[Any]] = []

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
            effects = self._perform(stepper)
            try:
                async for chunk in effects:
                    yield chunk
            finally:
                await effects.aclose()  # left at a chunk: close it now, not when collected
            box.append(stepper.result)  # type: ignore[arg-type]
        finally:
            if stepper.abandon():
                async for _ in self._perform(stepper):
                    pass  # an abandoned flow's chunks are dropped by its stepper

    async def _perform(self, stepper: Stepper[Any]) -> AsyncGenerator[Any, None]:
        """Perform the flow's effects until it ends, yielding each chunk it emits.

        Each effect is dispatched here, inline: a coroutine per effect would cost
        more than most effects do.
        """
        while (effect := stepper.next_effect()) is not None:
            kind = type(effect)
            if kind is Emit:
                self._launch()  # the caller may take its time with the chunk
                yield effect.chunk  # type: ignore[union-attr]
                continue
            try:
                if kind is Start:
                    stepper.value = self._start(effect)  # type: ignore[arg-type]
                elif kind is Cancel:
                    self._cancel(effect)  # type: ignore[arg-type]
                else:
                    stepper.value = await _HANDLERS[kind](self, effect)
            except Exception as exc:
                stepper.reject(exc)

    # -- starting -----------------------------------------------------------------------

    def _start(self, effect: Start[Any]) -> Handle[Any]:
        return self._start_job(effect.job)

    async def _run(self, effect: Run[Any]) -> Any:
        # Waited for at once, the job runs in the caller's task (see _run_here): a
        # caller that goes away cancels it with itself, nothing is left to drop.
        return await self._wait(self._start_job(effect.job))

    def _start_job(self, job: Job[Any]) -> _Job[Any]:
        handle: _Job[Any]
        if isinstance(job, Classify):
            handle = _Job(job, _within, self._timeout, self._classify, job.stage, job.conversations)
        elif isinstance(job, Score):
            if self._score is None:
                raise ConfigurationError("no reward models are configured")
            handle = _Job(job, _within, self._timeout, self._score, job.conversations)
        elif isinstance(job, CallUpstream):
            handle = _Job(job, _call, self._upstream, job.params)
        elif isinstance(job, ReadChunk):
            handle = _Job(job, _next_or_end, job.stream)
        else:
            raise TypeError(f"unexpected job {job!r}")
        self._pending.append(handle)
        return handle

    def _launch(self) -> None:
        """Start every job not yet running as a task (the flow is about to wait)."""
        if self._pending:
            for handle in self._pending:
                handle.launch()
            self._pending.clear()

    # -- waiting ------------------------------------------------------------------------

    def _remaining(self, handle: _Job[Any]) -> float | None:
        if self._timeout is None or not handle.job.timed:
            return None
        return max(0.0, self._timeout - (time.perf_counter() - handle.t0))

    async def _await(self, effect: Await[Any]) -> Any:
        return await self._wait(effect.handle)  # type: ignore[arg-type]  # made by _start

    async def _wait(self, handle: _Job[Any]) -> Any:
        task = handle.task
        if task is None:
            self._pending.remove(handle)
            return await self._run_here(handle)
        remaining = self._remaining(handle)
        if task.done():
            return task.result()
        self._launch()
        if remaining is None:
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

    async def _run_here(self, handle: _Job[Any]) -> Any:
        """Run a job the flow waits on first in this task; others start once it suspends."""
        handle.t0 = started = time.perf_counter()
        timeout = self._timeout if handle.job.timed else None
        inline = _Inline(handle.make(*handle.args))
        if not inline.step():  # answered without I/O
            if timeout is not None and time.perf_counter() - started > timeout:
                raise timeout_error(handle.job, timeout)
            return inline.result
        self._launch()
        if timeout is None:
            return await inline
        timer = asyncio.get_running_loop().call_later(
            max(0.0, timeout - (time.perf_counter() - started)), inline.expire
        )
        try:
            value = await inline
        except asyncio.CancelledError:
            if inline.expired and not _cancelling():
                raise timeout_error(handle.job, timeout) from None
            raise
        finally:
            timer.cancel()
        if inline.expired:  # it swallowed the cancellation: its answer is too late
            raise timeout_error(handle.job, timeout)
        return value

    async def _wait_first(self, effect: WaitFirst) -> First:
        # Handles come from this driver's own _start.
        check: _Job[Any] = effect.check  # type: ignore[assignment]
        read: _Job[Any] = effect.read  # type: ignore[assignment]
        self._launch()
        if check.task is None:  # it ran inline: already answered
            return "check"
        assert read.task is not None
        done, _ = await asyncio.wait(
            {read.task, check.task},
            timeout=self._remaining(check),
            return_when=asyncio.FIRST_COMPLETED,
        )
        return "read" if read.task in done and check.task not in done else "check"

    # -- ending -------------------------------------------------------------------------

    def _cancel(self, effect: Cancel) -> None:
        self._drop(effect.handle)  # type: ignore[arg-type]  # made by _start

    def _drop(self, handle: _Job[Any]) -> None:
        task = handle.task
        if task is None:  # never ran (dropped), or ran inline (finished): nothing to stop
            if handle in self._pending:
                self._pending.remove(handle)
            return
        if task.done():
            _aclose_result(task)
        else:
            task.cancel()
            task.add_done_callback(_aclose_result)

    async def _close_stream(self, effect: CloseStream) -> None:
        self._launch()
        await effect.stream.close()

    async def _write_audit(self, effect: Audit) -> None:
        if self._audit_blocks:
            self._launch()
            await asyncio.to_thread(self._audit, effect.trace)
        else:
            self._audit(effect.trace)


# Effect type -> handler, built once (a bound-method table per call costs a microsecond).
_HANDLERS: dict[type, Callable[..., Any]] = {
    Await: AsyncDriver._await,
    Run: AsyncDriver._run,
    WaitFirst: AsyncDriver._wait_first,
    CloseStream: AsyncDriver._close_stream,
    Audit: AsyncDriver._write_audit,
}
