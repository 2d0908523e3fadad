"""The circuit breaker's state machine: admit a call, or fail it fast; count outcomes.

Pure: time comes from an injectable ``clock`` (monotonic seconds), no thread or
I/O is started, and its lock is held only for a few counter updates, so sync and
async callers share one :class:`CircuitBreaker` without blocking an event loop.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from guardrail.breaker.transitions import (
    BreakerSettings,
    BreakerState,
    BreakerTransition,
    TransitionCallback,
)
from guardrail.errors import CircuitOpenError, ConfigurationError, InputError

__all__ = ["CircuitBreaker", "Permit"]

_BUCKETS = 10
"""The failure-rate window is kept as this many buckets (a tenth of it each)."""

_OVERDUE = "no answer within its deadline"

_CLOSED = BreakerState.CLOSED


class Permit:
    """One admitted call, handed back to its breaker once it has ended."""

    __slots__ = ("deadline", "epoch", "probe", "settled")

    def __init__(self, deadline: float | None, epoch: int, probe: bool) -> None:
        self.deadline = deadline
        self.epoch = epoch
        self.probe = probe
        self.settled = False


class _Window:
    """Calls and failures over about the last ``window_s`` seconds, in tenths."""

    __slots__ = ("_bucket_s", "_buckets", "_current", "_until")

    def __init__(self, window_s: float) -> None:
        self._bucket_s = window_s / _BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]
        self._current: list[int] = []  # the newest bucket (empty before the first call)
        self._until = -math.inf  # when the newest bucket's tenth ends

    def _prune(self, index: int) -> None:
        while self._buckets and self._buckets[0][0] <= index - _BUCKETS:
            self._buckets.popleft()

    def add(self, now: float, failed: bool) -> None:
        bucket = self._current if now < self._until else self._bucket(now)
        bucket[1] += 1
        bucket[2] += failed

    def success(self, now: float) -> None:
        """:meth:`add` of a success (the hot path: a call and no failure count)."""
        (self._current if now < self._until else self._bucket(now))[1] += 1

    def _bucket(self, now: float) -> list[int]:
        """The bucket of ``now``'s tenth (called once the newest one's has ended)."""
        index = math.floor(now / self._bucket_s)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != index:
            self._prune(index)  # older tenths may have left the window
            buckets.append([index, 0, 0])
        self._current = buckets[-1]
        self._until = _tenth_end(index, self._bucket_s)
        return self._current

    def totals(self, now: float) -> tuple[int, int]:
        self._prune(math.floor(now / self._bucket_s))
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()
        self._current = []
        self._until = -math.inf


def _tenth_end(index: int, width: float) -> float:
    """The first time whose tenth (``floor(t / width)``) comes after tenth ``index``.

    ``(index + 1) * width`` rounded can miss it by an ulp either way (a tenth of
    0.1 s: 17 * 0.1 is above 1.7, whose tenth is 17), so it is nudged until
    ``t < end`` holds exactly for the times of tenth ``index`` and before.
    """
    end = (index + 1) * width
    while math.floor(end / width) <= index:
        end = math.nextafter(end, math.inf)
    while math.floor(math.nextafter(end, -math.inf) / width) > index:
        end = math.nextafter(end, -math.inf)
    return end


class CircuitBreaker:
    """The breaker of one backend (see :mod:`guardrail.breaker`); thread-safe and asyncio-safe.

    ``backend`` names it in errors and transitions. ``clock`` gives monotonic
    seconds (deadlines handed to :meth:`acquire` are on the same clock).
    """

    def __init__(
        self,
        backend: str,
        settings: BreakerSettings | None = None,
        *,
        on_transition: TransitionCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.settings = settings if settings is not None else BreakerSettings()
        self._on_transition = on_transition
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped by every transition: outcomes of older calls are ignored
        self._reason = ""
        self._opened_at = 0.0
        self._consecutive = 0
        self._window = _Window(self.settings.window_s)
        self._probes = 0  # trial calls under way
        self._probe_successes = 0
        self._deadlines: list[tuple[float, int, Permit]] = []  # heap of admitted calls
        self._tracked = 0  # unsettled permits in the heap
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.backend!r}, state={self._state.value!r})"

    @property
    def state(self) -> BreakerState:
        """The state as of the last call.

        An open breaker turns half-open on the first call after its cool-down.
        """
        return self._state

    # -- the caller's side --------------------------------------------------------------

    def acquire(self, deadline: float | None = None) -> Permit:
        """Admit one call, or raise :class:`~guardrail.errors.CircuitOpenError` at once.

        ``deadline`` (``clock`` seconds): past it, the call counts as failed even
        while it is still running.
        """
        with self._lock:
            now = self._clock()
            deadlines = self._deadlines
            if self._state is _CLOSED and not (deadlines and deadlines[0][0] <= now):
                # The common case, kept short: closed, and no admitted call overdue.
                permit = Permit(deadline, self._epoch, False)
                if deadline is not None:
                    heapq.heappush(deadlines, (deadline, next(self._seq), permit))
                    self._tracked += 1
                return permit
        return self._acquire(deadline)

    def _acquire(self, deadline: float | None) -> Permit:
        """:meth:`acquire` when the breaker is not closed or a call is overdue."""
        notes: list[BreakerTransition] = []
        permit: Permit | None = None
        with self._lock:
            now = self._clock()
            self._expire(now, notes)
            settings = self.settings
            if self._state is BreakerState.OPEN and now - self._opened_at >= settings.cooldown_s:
                reason = f"cool-down of {settings.cooldown_s:g} s passed"
                self._move(BreakerState.HALF_OPEN, reason, now, notes)
            if self._state is BreakerState.OPEN:
                left = settings.cooldown_s - (now - self._opened_at)
                rejection = CircuitOpenError(
                    f"circuit breaker {self.backend!r} is open ({self._reason}); "
                    f"calls fail fast for {left:.1f} s more",
                    backend=self.backend,
                    state=self._state.value,
                    retry_after_s=left,
                )
            elif self._state is BreakerState.HALF_OPEN and self._probes >= settings.probes:
                rejection = CircuitOpenError(
                    f"circuit breaker {self.backend!r} is half-open: {self._probes} trial "
                    "call(s) under way, other calls fail fast until they succeed",
                    backend=self.backend,
                    state=self._state.value,
                )
            else:
                probe = self._state is BreakerState.HALF_OPEN
                permit = Permit(deadline, self._epoch, probe)
                self._probes += probe
                if deadline is not None:
                    heapq.heappush(self._deadlines, (deadline, next(self._seq), permit))
                    self._tracked += 1
        if permit is None:
            self._notify(notes)
            raise rejection
        try:
            if notes:  # almost never: skip the call
                self._notify(notes)
        except BaseException:
            self.release(permit)
            raise
        return permit

    def succeeded(self, permit: Permit) -> None:
        """The admitted call returned a result."""
        if not permit.probe:
            with self._lock:
                deadlines = self._deadlines
                now = self._clock()
                if not (deadlines and deadlines[0][0] <= now):
                    # The common case, kept short: a success counts and moves nothing.
                    if self._take(permit):
                        self._window.success(now)
                        self._consecutive = 0
                    return
        self._settle(permit, failed=False, cause="")

    def failed(self, permit: Permit, error: BaseException | None = None) -> None:
        """The admitted call failed (``error`` names the cause in transitions)."""
        self._settle(permit, failed=True, cause=type(error).__name__ if error else "an error")

    def release(self, permit: Permit) -> None:
        """The admitted call ended with no verdict on the backend (cancelled, bad input)."""
        with self._lock:
            if self._take(permit) and permit.probe:
                self._probes -= 1

    def ended(self, permit: Permit, error: BaseException) -> None:
        """The admitted call raised ``error``: a failure if it tells of the backend.

        Otherwise the permit is released (:meth:`release`): input and configuration
        errors are the caller's, not the backend's, and a cancellation (or another
        ``BaseException``) counts only once the call's deadline has passed, when
        the deadline is what cut it short.
        """
        if isinstance(error, (InputError, ConfigurationError, CircuitOpenError)):
            self.release(permit)
        elif isinstance(error, Exception):
            self.failed(permit, error)
        elif permit.deadline is not None and self._clock() >= permit.deadline:
            self._settle(permit, failed=True, cause=_OVERDUE)
        else:
            self.release(permit)

    # -- the state machine ---------------------------------------------------------------

    def _take(self, permit: Permit) -> bool:
        """Settle ``permit``; whether it was unsettled and of the current state."""
        if permit.settled:
            return False
        permit.settled = True
        if permit.deadline is not None:
            self._tracked -= 1
            if len(self._deadlines) > 2 * self._tracked + 64:
                self._compact()
        return permit.epoch == self._epoch

    def _compact(self) -> None:
        """Drop the settled entries from the deadline heap."""
        self._deadlines = [e for e in self._deadlines if not e[2].settled]
        heapq.heapify(self._deadlines)

    def _settle(self, permit: Permit, *, failed: bool, cause: str) -> None:
        notes: list[BreakerTransition] = []
        with self._lock:
            now = self._clock()
            if self._take(permit):
                self._count(permit, failed, cause, now, notes)
            self._expire(now, notes)
        if notes:
            self._notify(notes)

    def _expire(self, now: float, notes: list[BreakerTransition]) -> None:
        """Count admitted calls still running past their deadline as failed."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, permit = heapq.heappop(self._deadlines)
            if self._take(permit):
                self._count(permit, True, _OVERDUE, now, notes)

    def _count(
        self, permit: Permit, failed: bool, cause: str, now: float, notes: list[BreakerTransition]
    ) -> None:
        settings = self.settings
        if permit.probe:
            self._probes -= 1
            if failed:
                self._open(now, f"a trial call failed ({cause})", notes)
            else:
                self._probe_successes += 1
                if self._probe_successes >= settings.successes:
                    reason = f"{self._probe_successes} trial call(s) succeeded"
                    self._move(BreakerState.CLOSED, reason, now, notes)
            return
        self._window.add(now, failed)
        if not failed:
            self._consecutive = 0
            return
        self._consecutive += 1
        calls, failures = self._window.totals(now)
        if settings.failures is not None and self._consecutive >= settings.failures:
            self._open(now, f"{self._consecutive} consecutive failures (last: {cause})", notes)
        elif (
            settings.failure_rate is not None
            and calls >= settings.min_calls
            and failures / calls >= settings.failure_rate
        ):
            self._open(
                now,
                f"{failures} of {calls} calls failed in the last {settings.window_s:g} s "
                f"(last: {cause})",
                notes,
            )

    def _open(self, now: float, reason: str, notes: list[BreakerTransition]) -> None:
        self._opened_at = now
        self._reason = reason
        self._move(BreakerState.OPEN, reason, now, notes)

    def _move(
        self, to: BreakerState, reason: str, now: float, notes: list[BreakerTransition]
    ) -> None:
        calls, failures = self._window.totals(now)
        notes.append(
            BreakerTransition(
                backend=self.backend,
                from_state=self._state,
                to_state=to,
                reason=reason,
                consecutive_failures=self._consecutive,
                window_calls=calls,
                window_failures=failures,
                at=time.time(),
            )
        )
        self._state = to
        self._epoch += 1
        self._probes = self._probe_successes = 0
        if to is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.clear()

    def _notify(self, notes: list[BreakerTransition]) -> None:
        if self._on_transition is not None:
            for transition in notes:
                self._on_transition(transition)
