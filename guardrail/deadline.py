"""The deadline of the check running in this context, shared without passing it around.

A check's deadline is known to the driver that runs it (the policy's
``execution.timeout_s``, counted from when the check starts running), while the
code that must respect it sits below the :class:`~guardrail.classifiers.base.Classifier`
protocol, whose ``classify(inputs)`` takes no deadline (user classifiers keep
working unchanged). The drivers therefore set it here, in a context variable,
around each check, and the backends read it: the remote backends stop retrying
and shorten their last request at the deadline, the circuit breaker counts a call
still running past it as failed. Pure stdlib; times are ``time.monotonic()`` seconds.

A context variable follows asyncio tasks (each task copies the context it was
created in) but not threads of a pool: code fanning work out to threads reads
:func:`current` first and passes the value on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token

__all__ = ["current", "enter", "expired", "leave", "remaining", "scope"]

_DEADLINE: ContextVar[float | None] = ContextVar("guardrail_check_deadline", default=None)


# The three accessors are the context variable's own methods, not wrappers: each
# check calls them (a Python frame apiece would cost more than the work).
current: Callable[[], float | None] = _DEADLINE.get
"""The running check's deadline (``time.monotonic()`` seconds), or ``None`` without one."""


def remaining(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (0 once passed); ``None`` without a deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def expired(deadline: float | None) -> bool:
    """Whether ``deadline`` has passed (never, without one)."""
    return deadline is not None and time.monotonic() >= deadline


enter: Callable[[float | None], Token[float | None]] = _DEADLINE.set
"""Make a deadline the current one until :func:`leave` (the cheap form of :func:`scope`)."""

leave: Callable[[Token[float | None]], None] = _DEADLINE.reset
"""Restore the deadline that was current before the :func:`enter` that gave the token."""


@contextlib.contextmanager
def scope(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` the current one for the code run inside the ``with`` block."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)
