"""Helpers for tests of a guard that fails: remote-guard policies, a record list, transitions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from structlog.testing import capture_logs

from guardrail.audit import AuditRecord
from guardrail.policy import Policy, load_policy_text

CHAT = "/v1/chat/completions"
SAFE = "Safety: Safe\nCategories: None"
UNSAFE = "Safety: Unsafe\nCategories: Violent"


class ListSink:
    """An audit sink keeping the records it is given, in order."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def remote_policy(
    base_url: str,
    *,
    fail: str = "closed",
    timeout_s: float = 5.0,
    max_retries: int = 2,
    deadline_s: float = 5.0,
    breaker: str = "{failures: 3, failure_rate: null, cooldown_s: 60}",
    extra: str = "",
) -> Policy:
    """A policy judging with a remote guard at ``base_url`` (``.../v1``)."""
    text = f"""\
version: 1
name: faults
guard:
  backend: remote
  base_url: "{base_url}"
  timeout_s: {timeout_s}
  max_retries: {max_retries}
  breaker: {breaker}
execution: {{timeout_s: {deadline_s}}}
failure: {{prompt: {fail}, response: {fail}}}
block: {{behavior: raise}}
rules:
  - {{id: block-unsafe-prompt, stage: prompt, when: {{levels: [Unsafe]}}, action: block}}
{extra}"""
    return load_policy_text(text, source="faults.yaml")


def wait_until(condition: Callable[[], bool], limit_s: float = 10.0) -> bool:
    """Poll for something that happens shortly (no timing assertion); whether it did."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Transitions:
    """The circuit breaker transitions logged inside a :func:`transitions` block."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events

    def moves(self, backend: str = "guard") -> list[tuple[str, str]]:
        return [
            (e["from_state"], e["to_state"])
            for e in list(self._events)
            if e.get("event") == "circuit_breaker" and e["backend"] == backend
        ]

    def wait_for(self, move: tuple[str, str], backend: str = "guard") -> None:
        assert wait_until(lambda: move in self.moves(backend)), self.moves(backend)

    async def await_move(self, move: tuple[str, str], backend: str = "guard") -> None:
        """:meth:`wait_for` for async tests: the event loop keeps running meanwhile."""
        for _ in range(1000):
            if move in self.moves(backend):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(self.moves(backend))


@contextmanager
def transitions() -> Iterator[Transitions]:
    with capture_logs() as events:
        yield Transitions(events)
