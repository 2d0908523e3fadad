"""The retry policy of the remote backends, one for the sync and the async driver.

What is retried (:func:`is_retryable`): :data:`RETRYABLE_STATUS`, timeouts and
connection failures. How long to wait: jittered exponential backoff, or the
server's ``Retry-After`` up to :data:`MAX_RETRY_AFTER_S` when it asks for longer
(:func:`wait_with_retry_after`). When to stop: after ``max_retries`` retries, and
before any attempt (or backoff) that would end past the running check's deadline
(:class:`StopAtDeadline`). :class:`RetryPolicy` makes these decisions once for
the sync and the async driver; they read only the guard's own errors, so they are
the same whichever transport made the attempt. The deadline is the running
check's (:mod:`guardrail.deadline`): work nobody waits for any more is not
retried, even on a worker thread still running an abandoned check.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from guardrail.errors import GuardConnectionError, GuardHTTPError, RemoteGuardTimeoutError
from guardrail.http.errors import StatusError

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_STATUS",
    "RetryPolicy",
    "RetryWait",
    "StopAtDeadline",
    "is_retryable",
    "retry_after_s",
    "wait_with_retry_after",
]

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt; anything else (400, 401, 404, 422...) is final."""

MAX_RETRY_AFTER_S = 5.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

RetryWait = Callable[[RetryCallState], float]
"""A tenacity wait: seconds to sleep before the next attempt."""

_T = TypeVar("_T")


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection failures and :data:`RETRYABLE_STATUS` are worth retrying."""
    if isinstance(exc, GuardHTTPError):
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, (RemoteGuardTimeoutError, GuardConnectionError))


def retry_after_s(exc: BaseException | None) -> float:
    """The numeric ``Retry-After`` of a failed attempt, capped; 0 without one."""
    cause = exc.__cause__ if exc is not None else None
    if not isinstance(cause, StatusError):
        return 0.0
    try:
        seconds = float(cause.response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: rely on the backoff
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else 0.0


def wait_with_retry_after(backoff: RetryWait) -> RetryWait:
    """Wait as ``backoff`` says, or longer if the server asked (up to the cap)."""

    def wait_for(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return max(backoff(state), retry_after_s(exc))

    return wait_for


class StopAtDeadline(stop_base):
    """A tenacity stop: as ``stop`` says, and at ``deadline`` (``time.monotonic()``).

    Checked after a failed attempt, once the backoff is known: a retry whose
    backoff would end past the deadline is not waited for either.
    """

    def __init__(self, deadline: float, stop: Callable[[RetryCallState], bool]) -> None:
        self.deadline = deadline
        self.stop = stop

    def __call__(self, retry_state: RetryCallState) -> bool:
        """Whether to give up: ``stop`` says so, or the deadline passes before the retry."""
        sleep = float(retry_state.upcoming_sleep or 0.0)
        return self.stop(retry_state) or time.monotonic() + sleep >= self.deadline


class RetryPolicy:
    """A backend's retries: the decision written once, a sync and an async driver.

    After a failed attempt, :meth:`after_failure` decides whether to try again and
    how long to wait first; :meth:`call` and :meth:`acall` only run the attempts
    and sleep (:meth:`aretry` takes over after a first attempt the caller made).
    Stops and waits are tenacity's: ``stop_after_attempt(max_retries + 1)``,
    ``wait`` (default: jittered exponential backoff, 0.1 s up to 2 s) raised to a
    short ``Retry-After``, and :class:`StopAtDeadline` within a check, so a custom
    ``wait`` receives the usual ``RetryCallState``. The last error is
    re-raised as it is. Stateless between calls: concurrent calls share a policy.
    """

    def __init__(self, max_retries: int, wait: RetryWait | None = None) -> None:
        self.max_retries = max_retries
        self.stop = stop_after_attempt(max_retries + 1)
        self.wait = wait_with_retry_after(wait or wait_random_exponential(multiplier=0.1, max=2))
        # the object a RetryCallState names as its owner (waits and stops may read it)
        self._owner = Retrying(
            stop=self.stop, wait=self.wait, retry=retry_if_exception(is_retryable), reraise=True
        )

    def after_failure(
        self,
        state: RetryCallState | None,
        exc: BaseException,
        *,
        started: float,
        deadline: float | None,
    ) -> RetryCallState | None:
        """The state to retry with (wait ``upcoming_sleep`` first), or ``None`` to give up.

        ``state`` is the one returned after the previous failure of this call (``None``
        after the first); ``started`` is when the call began (``time.monotonic()``);
        no retry is made whose wait would end past ``deadline``.
        """
        if not is_retryable(exc):
            return None
        if state is None:
            state = RetryCallState(self._owner, fn=None, args=(), kwargs={})
            state.start_time = started
        state.set_exception((type(exc), exc, exc.__traceback__))
        state.upcoming_sleep = sleep = self.wait(state)
        stop = self.stop if deadline is None else StopAtDeadline(deadline, self.stop)
        if stop(state):
            return None
        state.idle_for += sleep
        return state

    def call(self, attempt: Callable[[], _T], *, deadline: float | None = None) -> _T:
        """Run ``attempt`` until it succeeds or :meth:`after_failure` gives up (sync)."""
        started = time.monotonic()
        state = None
        while True:
            try:
                return attempt()
            except Exception as exc:
                state = self.after_failure(state, exc, started=started, deadline=deadline)
                if state is None:
                    raise
            time.sleep(state.upcoming_sleep)
            state.prepare_for_next_attempt()

    async def acall(
        self, attempt: Callable[[], Awaitable[_T]], *, deadline: float | None = None
    ) -> _T:
        """Async twin of :meth:`call`: awaits each attempt and sleeps without blocking."""
        started = time.monotonic()
        try:
            return await attempt()
        except Exception as exc:
            error = exc
        try:
            return await self.aretry(attempt, error, started=started, deadline=deadline)
        finally:
            del error

    async def aretry(
        self,
        attempt: Callable[[], Awaitable[_T]],
        error: Exception,
        *,
        started: float,
        deadline: float | None = None,
    ) -> _T:
        """:meth:`acall` after its first attempt failed with ``error``.

        For callers that make the first attempt themselves (the common, successful
        case then costs no retry machinery); ``started`` is when that attempt began
        (``time.monotonic()``). Raises the last error when :meth:`after_failure` gives up.
        """
        state = None
        try:
            while True:
                state = self.after_failure(state, error, started=started, deadline=deadline)
                if state is None:
                    raise error
                await asyncio.sleep(state.upcoming_sleep)
                state.prepare_for_next_attempt()
                try:
                    return await attempt()
                except Exception as exc:
                    error = exc
        finally:
            del error  # no cycle through this frame and the error's traceback
