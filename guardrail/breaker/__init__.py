"""Circuit breakers: a backend that keeps failing is left alone until it may have recovered.

Without one, every check against a dead guard server pays its full cost (all
retries, or a whole timeout when the server hangs), call after call. A
:class:`CircuitBreaker` watches one backend's outcomes and moves between three
states::

    closed --(N consecutive failures, or a failure rate over a window)--> open
    open --(cool-down passed; the next call is admitted as a trial)--> half_open
    half_open --(enough trial calls succeeded)--> closed
    half_open --(a trial call failed)--> open

While open (and, while half-open, beyond the trial calls admitted) calls fail
fast, unsent, with :class:`~guardrail.errors.CircuitOpenError`; the policy's
failure mode decides the check as for any guard failure. Every transition is
reported as a :class:`BreakerTransition` to ``on_transition``.

A call admitted with a deadline that is still running when the deadline passes
counts as failed from then on (its late outcome is ignored): a hanging backend
trips the breaker even where the hung call cannot be interrupted (a sync
check on a worker thread, a local model).

The state machine (:mod:`~guardrail.breaker.machine`) is pure: time comes from
an injectable ``clock`` (monotonic seconds), no thread or I/O is started, and
its lock is held only for a few counter updates, so sync and async callers share
it without blocking an event loop. Its states, settings and transitions are
:mod:`~guardrail.breaker.transitions`'. :class:`BreakerClassifier` and
:class:`BreakerScorer` (:mod:`~guardrail.breaker.wrappers`) put one in front of
any :class:`~guardrail.classifiers.base.Classifier` or
:class:`~guardrail.reward.base.RewardScorer` (:mod:`guardrail.parts` does so for
the policy's backends).
"""

from __future__ import annotations

from guardrail.breaker.machine import CircuitBreaker, Permit
from guardrail.breaker.transitions import (
    BreakerSettings,
    BreakerState,
    BreakerTransition,
    TransitionCallback,
    log_transition,
)
from guardrail.breaker.wrappers import BreakerClassifier, BreakerScorer

__all__ = [
    "BreakerClassifier",
    "BreakerScorer",
    "BreakerSettings",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "Permit",
    "TransitionCallback",
    "log_transition",
]
