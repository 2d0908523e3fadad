"""A circuit breaker's vocabulary: its states, its settings, and the transitions it reports.

What the state machine (:mod:`~guardrail.breaker.machine`) moves between and
what it tells ``on_transition`` of; :func:`log_transition` logs a transition on
the ``guardrail`` structlog logger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from guardrail.errors import ConfigurationError

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "BreakerTransition",
    "TransitionCallback",
    "log_transition",
]


class BreakerState(str, Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    """Calls go through; failures are counted."""
    OPEN = "open"
    """Calls fail fast until the cool-down has passed."""
    HALF_OPEN = "half_open"
    """A few trial calls go through; the others fail fast until they succeed."""


@dataclass(frozen=True)
class BreakerSettings:
    """When a breaker opens, how long it stays open, and how it closes again.

    ``failures``: consecutive failed calls that open it (``None``: no such
    trigger). ``failure_rate``: the failed share of the calls made in the last
    ``window_s`` seconds that opens it, counted once at least ``min_calls`` calls
    were made in the window (``None``: no such trigger). ``cooldown_s``: how long
    it stays open. ``probes``: trial calls admitted at once while half-open;
    ``successes``: consecutive successful trial calls that close it (one failed
    trial call opens it again).
    """

    failures: int | None = 5
    failure_rate: float | None = 0.5
    window_s: float = 30.0
    min_calls: int = 20
    cooldown_s: float = 10.0
    probes: int = 1
    successes: int = 2

    def __post_init__(self) -> None:
        if self.failures is None and self.failure_rate is None:
            raise ConfigurationError("a breaker needs failures or failure_rate to open on")
        if self.failures is not None and self.failures < 1:
            raise ConfigurationError(f"failures must be at least 1, got {self.failures!r}")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ConfigurationError(f"failure_rate must be in (0, 1], got {self.failure_rate!r}")
        for name in ("window_s", "cooldown_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        for name in ("min_calls", "probes", "successes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class BreakerTransition:
    """One change of a breaker's state, and why."""

    backend: str
    """The breaker's backend: ``guard``, or ``reward:<model id>``."""
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    """Why, in words: ``5 consecutive failures (last: GuardConnectionError)``..."""
    consecutive_failures: int
    """Failed calls in a row when it happened."""
    window_calls: int
    """Calls counted in the failure-rate window when it happened (cleared on closing)."""
    window_failures: int
    """Failed calls among them."""
    at: float
    """When, as a ``time.time()`` timestamp."""

    @property
    def event(self) -> str:
        """The audit event's name: ``breaker.open``, ``breaker.half_open``, ``breaker.closed``."""
        return f"breaker.{self.to_state.value}"

    @property
    def time(self) -> datetime:
        """When, as an aware UTC datetime."""
        return datetime.fromtimestamp(self.at, timezone.utc)

    def details(self) -> dict[str, Any]:
        """The transition's facts as JSON values (an audit event's details)."""
        return {
            "backend": self.backend,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "reason": self.reason,
            "consecutive_failures": self.consecutive_failures,
            "window_calls": self.window_calls,
            "window_failures": self.window_failures,
        }


TransitionCallback = Callable[[BreakerTransition], None]
"""Told of every transition, outside the breaker's lock, on the thread (or event
loop) of the call that caused it. What it raises reaches that call."""


def log_transition(transition: BreakerTransition) -> None:
    """Log a transition on the ``guardrail`` structlog logger (a warning when it opens)."""
    import structlog  # bound on use: the application configures structlog first

    log = structlog.get_logger("guardrail")
    report = log.warning if transition.to_state is BreakerState.OPEN else log.info
    report(
        "circuit_breaker",
        backend=transition.backend,
        from_state=transition.from_state.value,
        to_state=transition.to_state.value,
        reason=transition.reason,
        consecutive_failures=transition.consecutive_failures,
        window_calls=transition.window_calls,
        window_failures=transition.window_failures,
        at=transition.at,
    )
