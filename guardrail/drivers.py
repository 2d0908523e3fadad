"""The drivers of a :class:`~guardrail.guard.Guard`'s calls, and what they run.

:class:`Drivers` owns the two thread pools of sync calls and the
:class:`~guardrail.flow.CheckPace` they share, runs the guard backend (through its
circuit breaker, with the policy's reasoning and system-message settings) and the
reward gate for the drivers, and hands out one :class:`~guardrail.flow.SyncDriver`
or :class:`~guardrail.flow.AsyncDriver` per call. It owns no flow logic
(:mod:`guardrail.flow`) and builds no parts (:mod:`guardrail.parts`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from guardrail.audit import AuditSink, NullSink
from guardrail.chat import content_text
from guardrail.classifiers.base import Classifier, Conversation, amoderate_many, moderate_many
from guardrail.errors import ConfigurationError
from guardrail.flow import AsyncDriver, CheckPace, SyncDriver, Trace
from guardrail.policy import Policy
from guardrail.reward.base import RewardScore
from guardrail.reward.gate import RewardGate
from guardrail.types import Stage, Verdict


class Drivers:
    """Builds the drivers of one guard's calls, and runs its backends for them.

    ``judge`` is the guard backend behind its breaker, ``rewards`` the reward gate
    (``None`` without a reward section), ``sink()`` the guard's audit sink (read per
    call: it may be replaced); ``max_workers`` bounds each of the two thread pools of
    sync calls. Each driver is handed the ``audit`` that writes its call's record.
    """

    def __init__(
        self,
        policy: Policy,
        judge: Classifier,
        rewards: RewardGate | None,
        sink: Callable[[], AuditSink],
        *,
        max_workers: int,
    ) -> None:
        self._policy = policy
        self._judge = judge
        self._rewards = rewards
        self._sink = sink
        # Two pools: upstream calls (which may be abandoned, still running) can never
        # starve guard checks of workers.
        self._check_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="guardrail-check"
        )
        self._io_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="guardrail-io"
        )
        self._pace = CheckPace()  # shared by this guard's sync calls

    def classify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Judge conversations with the policy's reasoning and system-message settings."""
        return moderate_many(
            self._judge,
            conversations,
            reasoning=self._policy.reasoning,
            include_system=self._policy.include_system,
        )

    async def aclassify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Async twin of :meth:`classify`."""
        return await amoderate_many(
            self._judge,
            conversations,
            reasoning=self._policy.reasoning,
            include_system=self._policy.include_system,
        )

    def score(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        """Score answers with the policy's reward models (``None`` where none applies)."""
        if self._rewards is None:
            return [None] * len(conversations)
        return self._rewards.score([(list(m), content_text(r)) for m, r in conversations])

    async def ascore(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        """Async twin of :meth:`score`."""
        if self._rewards is None:
            return [None] * len(conversations)
        return await self._rewards.ascore([(list(m), content_text(r)) for m, r in conversations])

    def sync_driver(
        self, upstream: Callable[[dict[str, Any]], Any] | None, audit: Callable[[Trace], None]
    ) -> SyncDriver:
        """A driver for one sync call whose upstream is ``upstream(params)``."""
        return SyncDriver(
            self.classify,
            upstream if upstream is not None else _no_upstream,
            audit,
            timeout_s=self._policy.execution.timeout_s,
            checks=self._check_pool,
            io=self._io_pool,
            score=self.score,
            pace=self._pace,
        )

    def async_driver(
        self,
        upstream: Callable[[dict[str, Any]], Awaitable[Any]] | None,
        audit: Callable[[Trace], None],
    ) -> AsyncDriver:
        """A driver for one async call whose upstream is ``await upstream(params)``."""
        return AsyncDriver(
            self.aclassify,
            upstream if upstream is not None else _ano_upstream,
            audit,
            timeout_s=self._policy.execution.timeout_s,
            score=self.ascore,
            audit_blocks=audit_blocks(self._sink()),
        )

    def close(self) -> None:
        """Stop the worker threads (queued checks are cancelled, running ones abandoned)."""
        self._check_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=False, cancel_futures=True)


def audit_blocks(sink: AuditSink) -> bool:
    """Whether writing to ``sink`` may block, so async calls write in a worker thread."""
    # Async calls write inline to a sink that never blocks (``blocking = False``:
    # no fsync, no stream or logger that may wait), else in a worker thread.
    return not isinstance(sink, NullSink) and getattr(sink, "blocking", True) is not False


def _no_upstream(params: dict[str, Any]) -> Any:
    raise ConfigurationError("a direct check has no upstream call")


async def _ano_upstream(params: dict[str, Any]) -> Any:
    raise ConfigurationError("a direct check has no upstream call")
