"""Backends behind a breaker: any guard classifier or reward scorer, wrapped.

Each call of a wrapped backend is one call of its :class:`CircuitBreaker`, with
the running check's deadline (:mod:`guardrail.deadline`); sync and async calls
go through the same breaker. :mod:`guardrail.parts` wraps the policy's backends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from guardrail import deadline
from guardrail.breaker.machine import CircuitBreaker
from guardrail.classifiers.base import Classifier
from guardrail.qwen3guard import GuardInput
from guardrail.reward.base import RewardPair, RewardScore, RewardScorer
from guardrail.types import Verdict

__all__ = ["BreakerClassifier", "BreakerScorer"]

R = TypeVar("R")
A = TypeVar("A")


def _guarded(breaker: CircuitBreaker, fn: Callable[[A], R], arg: A) -> R:
    # fn and its argument, not a closure: this runs for every check.
    permit = breaker.acquire(deadline.current())
    try:
        result = fn(arg)
    except BaseException as exc:
        breaker.ended(permit, exc)
        raise
    breaker.succeeded(permit)
    return result


async def _aguarded(breaker: CircuitBreaker, fn: Callable[[A], Awaitable[R]], arg: A) -> R:
    permit = breaker.acquire(deadline.current())
    try:
        result = await fn(arg)
    except BaseException as exc:
        breaker.ended(permit, exc)
        raise
    breaker.succeeded(permit)
    return result


class BreakerClassifier:
    """A :class:`~guardrail.classifiers.base.Classifier` behind a :class:`CircuitBreaker`.

    Each ``classify`` call is one call of the breaker, with the running check's
    deadline (:mod:`guardrail.deadline`); ``inner`` is the wrapped classifier.
    """

    def __init__(self, inner: Classifier, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    def __repr__(self) -> str:
        return f"BreakerClassifier({self.inner!r}, {self.breaker!r})"

    @property
    def model_id(self) -> str:
        """The wrapped classifier's model id."""
        return self.inner.model_id

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """The wrapped ``classify``, or :class:`~guardrail.errors.CircuitOpenError` at once."""
        return _guarded(self.breaker, self.inner.classify, inputs)

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Async twin of :meth:`classify`."""
        return await _aguarded(self.breaker, self.inner.aclassify, inputs)


class BreakerScorer:
    """A :class:`~guardrail.reward.base.RewardScorer` behind a :class:`CircuitBreaker`."""

    def __init__(self, inner: RewardScorer, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    def __repr__(self) -> str:
        return f"BreakerScorer({self.inner!r}, {self.breaker!r})"

    @property
    def model_id(self) -> str:
        """The wrapped scorer's model id."""
        return self.inner.model_id

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """The wrapped ``score``, or :class:`~guardrail.errors.CircuitOpenError` at once."""
        return _guarded(self.breaker, self.inner.score, pairs)

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Async twin of :meth:`score`."""
        return await _aguarded(self.breaker, self.inner.ascore, pairs)
