"""The sync driver: performs a flow's effects with threads, blocking its caller.

Upstream calls and stream reads run on one pool, checks on another (so abandoned
upstream calls can never starve the guard), each check's deadline counted from
when it starts running. A thread handoff costs about as much as a check by an
instant classifier (a rule, a cache hit, a scripted fake), so the driver avoids
the handoffs it can: checks of a guard whose recent checks were all near-instant
run on the caller's thread (:class:`CheckPace`), and an upstream call or stream
read is started on a worker only when the flow next waits on something else;
when the flow waits for that call or read first, it runs on the caller's thread.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from guardrail import deadline
from guardrail.classifiers.base import Conversation
from guardrail.errors import ConfigurationError, GuardTimeoutError
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
Future = concurrent.futures.Future

QUEUE_LIMIT_S = 60.0
"""How long a check may wait for a free guard worker before it counts as timed out."""

INLINE_BELOW_S = 0.0005
"""Checks faster than this (about a thread handoff) may run on the caller's thread."""

INLINE_AFTER = 16
"""Consecutive checks under :data:`INLINE_BELOW_S` before checks run inline."""


class CheckPace:
    """How fast one guard's recent checks were: decides whether sync checks run inline.

    After :data:`INLINE_AFTER` consecutive checks under :data:`INLINE_BELOW_S`, the
    sync driver runs checks on the caller's thread; the first slower check sends
    them back to the worker pool, where deadlines are enforced while they run. An
    inline check that overruns its deadline still fails as timed out (its verdict
    is discarded) once it returns.
    """

    __slots__ = ("_streak", "inline")

    def __init__(self) -> None:
        self._streak = 0  # races between threads can only lose a count: harmless
        self.inline = False
        """Whether checks may run on the caller's thread (read once per check)."""

    def record(self, seconds: float) -> None:
        """Note how long a check took."""
        self._streak = streak = self._streak + 1 if seconds < INLINE_BELOW_S else 0
        self.inline = streak >= INLINE_AFTER


class _Timed(Handle[T]):
    """A check or a scoring: on the check pool, or already run inline; has a deadline.

    The deadline is set (:mod:`guardrail.deadline`) for the code it runs, so a
    backend still working on an abandoned check stops retrying there. A job run
    inline keeps its outcome itself: no future or event is made for it (they cost
    as much as an instant check).
    """

    __slots__ = (
        "args",
        "error",
        "fn",
        "future",
        "pace",
        "ran_here",
        "started",
        "t0",
        "timeout",
        "value",
    )

    def __init__(
        self,
        job: Job[T],
        fn: Callable[..., T],
        args: tuple[Any, ...],
        timeout: float | None,
        pace: CheckPace | None = None,
    ) -> None:
        super().__init__(job)
        self.fn = fn
        self.args = args
        """What ``fn`` is called with (no closure per job)."""
        self.timeout = timeout
        self.pace = pace
        """Told how long the job ran (checks only: scorings do not pace the guard)."""
        self.t0 = 0.0
        self.started: threading.Event | None = None
        """Set once a pooled job starts running (its deadline counts from then)."""
        self.future: Future[T] | None = None
        self.ran_here = False
        self.value: Any = None
        self.error: BaseException | None = None

    def __call__(self) -> T:
        self.t0 = time.perf_counter()
        if self.started is not None:
            self.started.set()
        timeout = self.timeout
        token = deadline.enter(None if timeout is None else time.monotonic() + timeout)
        try:
            return self.fn(*self.args)
        finally:
            deadline.leave(token)
            if self.pace is not None:
                self.pace.record(time.perf_counter() - self.t0)

    def run_here(self, timeout: float | None) -> None:
        """Run on the caller's thread; an overrun of ``timeout`` becomes a timeout error."""
        self.ran_here = True
        try:
            self.value = self()
        except Exception as exc:
            self.error = exc
        else:
            if timeout is not None and time.perf_counter() - self.t0 > timeout:
                self.value, self.error = None, timeout_error(self.job, timeout)

    def done(self) -> bool:
        """Whether the job has finished."""
        return self.ran_here or (self.future is not None and self.future.done())

    def outcome(self) -> T:
        """The value of a job run inline (or its error, raised)."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[no-any-return]


class _Deferred(Handle[T]):
    """An upstream call or stream read, started only once the flow waits on something else."""

    __slots__ = ("args", "fn", "future", "settled")

    def __init__(self, job: Job[T], fn: Callable[..., T], *args: Any) -> None:
        super().__init__(job)
        self.fn = fn
        self.args = args
        self.future: Future[T] | None = None
        self.settled = False
        """Run inline or dropped: nothing is left to start or cancel."""


def _close_result(future: Future[Any]) -> None:
    # A raced upstream call that already returned a stream: close it, unread.
    if not future.cancelled() and future.exception() is None:
        close = getattr(future.result(), "close", None)
        if callable(close) and not inspect.iscoroutinefunction(close):
            close()


class SyncDriver:
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
        score: Callable[[Sequence[Conversation]], list[RewardScore | None]] | None = None,
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
        self._pending: list[_Deferred[Any]] = []

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
        stepper = Stepper(flow)
        try:
            yield from self._perform(stepper)
            return stepper.result  # type: ignore[return-value]
        finally:
            if stepper.abandon():
                for _ in self._perform(stepper):
                    pass  # an abandoned flow's chunks are dropped by its stepper

    def _perform(self, stepper: Stepper[Any]) -> Generator[Any, None, None]:
        """Perform the flow's effects until it ends, yielding each chunk it emits.

        Each effect is dispatched here, inline: a call per effect costs about as
        much as an instant effect.
        """
        while (effect := stepper.next_effect()) is not None:
            kind = type(effect)
            if kind is Emit:
                yield effect.chunk  # type: ignore[union-attr]
                continue
            try:
                stepper.value = _HANDLERS[kind](self, effect)
            except Exception as exc:
                stepper.reject(exc)

    # -- starting -----------------------------------------------------------------------

    def _start(self, effect: Start[Any]) -> Handle[Any]:
        return self._start_job(effect.job)

    def _run(self, effect: Run[Any]) -> Any:
        handle = self._start_job(effect.job)
        try:
            return self._wait(handle)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: the answer is not wanted
                self._drop(handle)
            raise

    def _start_job(self, job: Job[Any]) -> Handle[Any]:
        if isinstance(job, Classify):
            pace = self._pace
            return self._start_timed(
                _Timed(job, self._classify, (job.stage, job.conversations), self._timeout, pace),
                inline=pace.inline,
            )
        if isinstance(job, Score):
            if self._score is None:
                raise ConfigurationError("no reward models are configured")
            args = (job.conversations,)
            return self._start_timed(_Timed(job, self._score, args, self._timeout), inline=False)
        if isinstance(job, CallUpstream):
            return self._defer(_Deferred(job, self._upstream, job.params))
        if isinstance(job, ReadChunk):
            return self._defer(_Deferred(job, next, job.stream, END))
        raise TypeError(f"unexpected job {job!r}")

    def _start_timed(self, handle: _Timed[T], *, inline: bool) -> _Timed[T]:
        if inline:
            handle.run_here(self._timeout)
            return handle
        self._launch()  # the caller is about to wait: start deferred calls first
        handle.started = threading.Event()
        handle.future = self._checks.submit(handle)
        return handle

    def _defer(self, handle: _Deferred[T]) -> _Deferred[T]:
        self._pending.append(handle)
        return handle

    def _launch(self) -> None:
        """Start every deferred upstream call or read on a worker."""
        for deferred in self._pending:
            deferred.future = self._io.submit(deferred.fn, *deferred.args)
        self._pending.clear()

    # -- waiting ------------------------------------------------------------------------

    def _await(self, effect: Await[Any]) -> Any:
        return self._wait(effect.handle)

    def _wait(self, handle: Handle[Any]) -> Any:
        if isinstance(handle, _Timed):
            if handle.ran_here:
                return handle.outcome()
            assert handle.future is not None
            if not handle.future.done():
                self._launch()
            try:
                return handle.future.result(timeout=self._remaining(handle))
            except concurrent.futures.TimeoutError:
                raise timeout_error(handle.job, self._timeout or 0.0) from None
        assert isinstance(handle, _Deferred)
        if handle.future is not None:
            return handle.future.result()
        # Not started yet: run it here, after starting the others.
        self._pending.remove(handle)
        handle.settled = True
        self._launch()
        return handle.fn(*handle.args)

    def _remaining(self, handle: _Timed[Any]) -> float | None:
        """Seconds left before the job's deadline (waiting for it to start if queued)."""
        if self._timeout is None:
            return None
        assert handle.started is not None  # only pooled jobs are waited for
        if not handle.started.wait(QUEUE_LIMIT_S):
            assert handle.future is not None
            handle.future.cancel()
            raise GuardTimeoutError(f"no guard worker was free for {QUEUE_LIMIT_S:g}s")
        return max(0.0, self._timeout - (time.perf_counter() - handle.t0))

    def _wait_first(self, effect: WaitFirst) -> First:
        # Handles come from this driver's own _start (annotated, not cast: no call at run time).
        check: _Timed[Any] = effect.check  # type: ignore[assignment]
        read: _Deferred[Any] = effect.read  # type: ignore[assignment]
        if check.done():
            return "check"
        assert check.future is not None
        self._launch()
        assert read.future is not None
        done, _ = concurrent.futures.wait(
            [check.future, read.future],
            timeout=self._remaining(check),
            return_when=concurrent.futures.FIRST_COMPLETED,
        )
        return "read" if read.future in done and check.future not in done else "check"

    # -- ending -------------------------------------------------------------------------

    def _cancel(self, effect: Cancel) -> None:
        self._drop(effect.handle)

    def _drop(self, handle: Handle[Any]) -> None:
        future: Future[Any] | None
        if isinstance(handle, _Deferred):
            if handle.future is None:  # never started: nothing to abandon
                if not handle.settled:
                    self._pending.remove(handle)
                    handle.settled = True
                return
            future = handle.future
        else:
            assert isinstance(handle, _Timed)
            future = handle.future
        # A running thread cannot be interrupted: its answer is abandoned, never
        # returned, and a stream it opens is closed.
        if future is not None and not future.cancel():
            future.add_done_callback(_close_result)

    def _close_stream(self, effect: CloseStream) -> None:
        self._launch()
        effect.stream.close()

    def _write_audit(self, effect: Audit) -> None:
        self._launch()
        self._audit(effect.trace)


# Effect type -> handler, built once (a bound-method table per call costs a microsecond).
_HANDLERS: dict[type, Callable[..., Any]] = {
    Start: SyncDriver._start,
    Await: SyncDriver._await,
    Run: SyncDriver._run,
    Cancel: SyncDriver._cancel,
    WaitFirst: SyncDriver._wait_first,
    CloseStream: SyncDriver._close_stream,
    Audit: SyncDriver._write_audit,
}
