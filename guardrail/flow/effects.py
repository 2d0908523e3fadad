"""What a flow asks its driver to do: eight effects, and the jobs they start.

A flow is a generator that performs no I/O: it yields an effect and is sent the
result (or thrown the exception). Background work is a :class:`Job` started with
:class:`Start`, which answers a typed :class:`Handle`; the flow later waits for
it (:class:`Await`), races two of them (:class:`WaitFirst`) or drops it
(:class:`Cancel`). A job the flow waits for at once is one :class:`Run` (a
check with nothing to overlap: one step instead of two, on every call). The
helpers at the bottom (:func:`start_job`, :func:`await_job`, :func:`run_job`)
give those steps their types; the steps every call or chunk takes yield the
effect directly into an annotated variable instead (``verdicts: list[Verdict] =
yield Run(job)``), as a helper generator per step costs more than the step.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from guardrail.classifiers.base import Conversation
from guardrail.reward.base import RewardScore
from guardrail.types import Stage, Verdict

if TYPE_CHECKING:
    from guardrail.flow.trace import Trace

T = TypeVar("T")

# -------------------------------------------------------------------------- jobs


class Job(Generic[T]):
    """Work a driver runs in the background; ``T`` is what awaiting it gives."""

    timed: ClassVar[bool] = False
    """Whether the policy's check deadline applies (counted from when it starts running)."""


@dataclass(frozen=True)
class Classify(Job[list[Verdict]]):
    """Judge conversations at one stage: one verdict each."""

    timed: ClassVar[bool] = True
    stage: Stage
    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class Score(Job[list[RewardScore | None]]):
    """Score answers with the policy's reward models: one score (or ``None``) each."""

    timed: ClassVar[bool] = True
    conversations: Sequence[Conversation]


@dataclass(frozen=True)
class CallUpstream(Job[Any]):
    """Call the upstream model: a completion, or a stream of chunks."""

    params: dict[str, Any]


@dataclass(frozen=True)
class ReadChunk(Job[Any]):
    """Read the next chunk of an upstream stream: the chunk, or :data:`END`."""

    stream: Any


END = object()
"""What :class:`ReadChunk` gives once the upstream stream is exhausted."""


class Handle(Generic[T]):
    """A started job. Drivers subclass it to keep their own state; flows only hand it back."""

    __slots__ = ("job",)

    def __init__(self, job: Job[T]) -> None:
        self.job = job


# ----------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Start(Generic[T]):
    """Start a job in the background; the result is its :class:`Handle`."""

    job: Job[T]


@dataclass(frozen=True)
class Await(Generic[T]):
    """Wait for a started job; the result is its value (a timed job may time out)."""

    handle: Handle[T]


@dataclass(frozen=True)
class Run(Generic[T]):
    """Start a job and wait for it (:class:`Start` then :class:`Await`); the result is its value.

    A driver whose caller goes away during the wait cancels the job, as the flow's
    :class:`Cancel` would.
    """

    job: Job[T]


@dataclass(frozen=True)
class Cancel:
    """Cancel or abandon a started job; its answer is never used, a stream it opened is closed."""

    handle: Handle[Any]


@dataclass(frozen=True)
class WaitFirst:
    """Wait until a read or a check finishes; the result is ``"read"`` or ``"check"``.

    Lets a stream release checked text as soon as its check ends, without waiting
    for the next chunk. Answers ``"check"`` once the check's deadline has passed,
    so the flow's :class:`Await` of it reports the timeout.
    """

    read: Handle[Any]
    check: Handle[list[Verdict]]


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


Effect = Start[Any] | Await[Any] | Run[Any] | Cancel | WaitFirst | CloseStream | Audit | Emit
Flow = Generator[Effect, Any, T]
First = Literal["read", "check"]


class Abandoned(Exception):  # noqa: N818 - a signal, not an error
    """Thrown into a flow whose caller went away, so its cleanup effects still run."""


# ------------------------------------------------------------------ typed steps


def start_job(job: Job[T]) -> Flow[Handle[T]]:
    """Start ``job``; its handle."""
    handle: Handle[T] = yield Start(job)
    return handle


def await_job(handle: Handle[T]) -> Flow[T]:
    """Wait for a started job; its value."""
    value: T = yield Await(handle)
    return value


def run_job(job: Job[T]) -> Flow[T]:
    """Start ``job`` and wait for it; a caller that goes away meanwhile cancels it."""
    value: T = yield Run(job)
    return value
