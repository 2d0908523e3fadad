"""The requests one gateway process is serving: the in-flight bound (429) and the drain.

:class:`InFlight` counts the requests admitted past the bound and keeps the task
of every request to a guarded endpoint, so a shutdown can wait for them
(:meth:`InFlight.drain`): once draining, new requests are refused with 503;
those in flight get ``drain_timeout_s`` to finish, and those still running are
then cancelled (each guarded call audits its abandonment) and awaited a little
longer, so their records are written before the audit logs are closed. The
event loop is the only writer: no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from guardrail.gateway.metrics import Metrics

__all__ = ["CANCEL_GRACE_S", "InFlight"]

CANCEL_GRACE_S = 10.0
"""How long a drain waits for the requests it cancelled to end (their records written)."""


class InFlight:
    """The requests of one process: how many are admitted, and every request's task."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        """``limit``: requests admitted at once (``limits.max_in_flight``)."""
        self.limit = limit
        self._metrics = metrics
        self._tasks: set[asyncio.Task[object]] = set()
        self.draining = False
        """True once :meth:`drain` has begun: new requests are refused."""

    @property
    def full(self) -> bool:
        """Whether ``limit`` requests are admitted now."""
        return self._metrics.in_flight >= self.limit

    @contextmanager
    def tracked(self) -> Iterator[None]:
        """Keep the current request's task while it is served (for :meth:`drain`)."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count one admitted request (the caller checked :attr:`full` first)."""
        self._metrics.in_flight += 1
        try:
            yield
        finally:
            self._metrics.in_flight -= 1

    async def drain(self, timeout_s: float, *, grace_s: float = CANCEL_GRACE_S) -> int:
        """Refuse new requests, wait up to ``timeout_s`` for those in flight, cancel the rest.

        Returns how many requests were cancelled; waits at most ``grace_s`` more
        for them to end.
        """
        self.draining = True
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        return len(pending)
