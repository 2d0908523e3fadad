"""The stream objects a wrapped client returns for ``stream=True`` (sync and async).

:class:`GuardedStream` / :class:`AsyncGuardedStream` iterate what the guarded
flow releases (``ChatCompletionChunk`` objects for chat) like ``openai.Stream`` /
``openai.AsyncStream`` do, close the upstream connection when closed, and expose
the guard's report once the stream has ended. :class:`GuardedEvents` /
:class:`AsyncGuardedEvents` turn a guarded stream's items into Responses API
events (one item may end a stream in several events).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
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


class GuardedEvents(Iterator[Any]):
    """A guarded sync stream of Responses API events."""

    def __init__(self, items: GuardedStream, expand: Callable[[Any], list[Any]]) -> None:
        self._items = items
        self._expand = expand
        self._pending: deque[Any] = deque()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while not self._pending:
            self._pending.extend(self._expand(next(self._items)))
        return self._pending.popleft()

    def close(self) -> None:
        """Stop the stream and close the upstream connection."""
        self._items.close()

    @property
    def report(self) -> GuardReport:
        """What the guard did so far (complete once the stream has ended)."""
        return self._items.report

    def __enter__(self) -> GuardedEvents:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncGuardedEvents(AsyncIterator[Any]):
    """A guarded async stream of Responses API events."""

    def __init__(self, items: AsyncGuardedStream, expand: Callable[[Any], list[Any]]) -> None:
        self._items = items
        self._expand = expand
        self._pending: deque[Any] = deque()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while not self._pending:
            self._pending.extend(self._expand(await self._items.__anext__()))
        return self._pending.popleft()

    async def close(self) -> None:
        """Stop the stream and close the upstream connection."""
        await self._items.close()

    @property
    def report(self) -> GuardReport:
        """What the guard did so far (complete once the stream has ended)."""
        return self._items.report

    async def __aenter__(self) -> AsyncGuardedEvents:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
