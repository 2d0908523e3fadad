"""The stream objects a wrapped client returns for ``stream=True`` (sync and async).

They iterate ``ChatCompletionChunk`` objects like ``openai.Stream`` /
``openai.AsyncStream`` do, close the upstream connection when closed, and expose
the guard's report once the stream has ended.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Any

from guardrail.flow.trace import Trace
from guardrail.report import GuardReport

_EMPTY = object()


class GuardedStream(Iterator[Any]):
    """A guarded sync stream of chat-completion chunks."""

    def __init__(self, steps: Generator[Any, None, None], trace: Trace) -> None:
        self._steps = steps
        self._trace = trace
        self._first: Any = _EMPTY

    def start(self) -> GuardedStream:
        """Run up to the first released chunk, as ``create()`` does for openai's streams.

        A blocked prompt or a failing upstream raises here, at ``create()``.
        """
        self._first = next(self._steps, _EMPTY)
        return self

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._first is not _EMPTY:
            first, self._first = self._first, _EMPTY
            return first
        return next(self._steps)

    def close(self) -> None:
        """Stop the stream and close the upstream connection."""
        self._steps.close()

    @property
    def report(self) -> GuardReport:
        """What the guard did so far (complete once the stream has ended)."""
        return self._trace.report()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncGuardedStream(AsyncIterator[Any]):
    """A guarded async stream of chat-completion chunks."""

    def __init__(self, steps: AsyncGenerator[Any, None], trace: Trace) -> None:
        self._steps = steps
        self._trace = trace
        self._first: Any = _EMPTY

    async def start(self) -> AsyncGuardedStream:
        """Run up to the first released chunk, as ``create()`` does for openai's streams."""
        try:
            self._first = await self._steps.__anext__()
        except StopAsyncIteration:
            self._first = _EMPTY
        return self

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._first is not _EMPTY:
            first, self._first = self._first, _EMPTY
            return first
        return await self._steps.__anext__()

    async def close(self) -> None:
        """Stop the stream and close the upstream connection."""
        await self._steps.aclose()

    @property
    def report(self) -> GuardReport:
        """What the guard did so far (complete once the stream has ended)."""
        return self._trace.report()

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
