"""The effects a guarded-call flow yields, and the types of a flow.

A flow (see :mod:`guardrail.engine`) is a generator that never performs I/O: it
yields one of these effects and is sent its result (or thrown its exception).
The drivers in :mod:`guardrail.runners` perform them, blocking or awaiting.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from guardrail.classifiers.base import Conversation
from guardrail.types import Stage

if TYPE_CHECKING:
    from guardrail.engine import Trace

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """Judge conversations at one stage; the result is a list of verdicts (or an exception)."""

    stage: Stage
    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class Score:
    """Score answers with the policy's reward models; the result is one score (or None) each."""

    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class StartCheck:
    """Start a check in the background (streaming); the result is a handle."""

    stage: Stage
    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class AwaitCheck:
    """Wait for a started check (its deadline counts from its start); the result is verdicts."""

    handle: Any


@dataclass(frozen=True)
class CheckDone:
    """Whether a started check has finished; the result is a bool (never blocks)."""

    handle: Any


@dataclass(frozen=True)
class StartUpstream:
    """Start an upstream call in the background; the result is a handle."""

    params: dict[str, Any]


@dataclass(frozen=True)
class AwaitUpstream:
    """Wait for a started upstream call; the result is its return value."""

    handle: Any


@dataclass(frozen=True)
class CancelUpstream:
    """Cancel or abandon a started call or read; a stream it produced is closed, unread."""

    handle: Any


@dataclass(frozen=True)
class CallUpstream:
    """Call the upstream and wait for it (regenerations and retries)."""

    params: dict[str, Any]


@dataclass(frozen=True)
class StartRead:
    """Start reading the next chunk of an upstream stream; the result is a handle."""

    stream: Any


@dataclass(frozen=True)
class AwaitRead:
    """Wait for a started read; the result is the chunk, or :data:`END`."""

    handle: Any


@dataclass(frozen=True)
class WaitFirst:
    """Wait until a read or a check finishes; the result is ``"read"`` or ``"check"``.

    Lets a stream release checked text as soon as its check ends, without
    waiting for the next chunk. Returns ``"check"`` once the check's deadline has
    passed, so the caller's ``AwaitCheck`` reports the timeout.
    """

    read: Any
    check: Any


@dataclass(frozen=True)
class CloseStream:
    """Close an upstream stream (releases its connection)."""

    stream: Any


@dataclass(frozen=True)
class Audit:
    """Write the call's audit record (off the event loop for async callers)."""

    trace: Trace


@dataclass(frozen=True)
class Emit:
    """Hand a chunk to the caller of a stream."""

    chunk: Any


END = object()
"""The result of :class:`AwaitRead` once the upstream stream is exhausted."""

Effect = (
    Check
    | Score
    | StartCheck
    | AwaitCheck
    | CheckDone
    | StartUpstream
    | AwaitUpstream
    | CancelUpstream
    | CallUpstream
    | StartRead
    | AwaitRead
    | WaitFirst
    | CloseStream
    | Audit
    | Emit
)
Flow = Generator[Effect, Any, T]
First = Literal["read", "check"]


class Abandoned(Exception):  # noqa: N818 - a signal, not an error
    """Thrown into a flow whose caller went away, so its cleanup effects still run."""
