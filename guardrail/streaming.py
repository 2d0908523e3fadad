"""Streaming moderation, sans I/O: feed upstream chunks, learn what to check and what to release.

:class:`StreamState` holds upstream chunks back until the text they carry has
been checked (``check_before_release``: no unchecked text ever reaches the
caller), or releases them at once and only stops the stream when a check fails
(``check_after_release``: lower latency, some unsafe text may be seen). Text is
cut into checks at a sentence end once a quarter of ``chunk_chars`` has
accumulated, or at ``chunk_chars`` regardless. Each check judges its new text
plus up to ``context_chars`` of the text before it, so an answer is never judged
only in fragments; when the upstream ends, one final check judges each choice's
full text. Chunks that end a choice (``finish_reason``) are held until that final
check passes, so a failing final check can still end the stream with
``finish_reason="content_filter"``.

The state object never blocks: the sync and async streams in
:mod:`guardrail.engine` drive it, checking chunk N while chunk N+1 arrives.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f\u2026]['\")\]]?\s*$|\n\s*$")


@dataclass(frozen=True)
class SegmentCheck:
    """A piece of one choice's text to check; ``end`` is its offset in the full text."""

    id: int
    index: int
    text: str
    end: int
    final: bool = False


@dataclass
class _Held:
    chunk: Any
    ends: dict[int, int]
    finishes: tuple[int, ...]


@dataclass
class StreamStep:
    """What feeding one chunk produced: chunks to release now, and checks to start."""

    release: list[Any] = field(default_factory=list)
    checks: list[SegmentCheck] = field(default_factory=list)


class StreamState:
    """Buffers a chat-completion stream so that text is released only as it is checked."""

    def __init__(
        self,
        *,
        chunk_chars: int = 400,
        sentence_boundary: bool = True,
        context_chars: int | None = None,
        release_before_check: bool = False,
    ) -> None:
        if chunk_chars <= 0:
            raise ValueError("chunk_chars must be positive")
        self.chunk_chars = chunk_chars
        self.min_chars = max(1, chunk_chars // 4) if sentence_boundary else chunk_chars
        self.context_chars = chunk_chars if context_chars is None else context_chars
        self.release_before_check = release_before_check
        self._texts: dict[int, list[str]] = {}
        self._lengths: dict[int, int] = {}
        self._queued: dict[int, int] = {}  # offset up to which checks were started
        self._passed: dict[int, int] = {}  # offset up to which checks passed
        self._final_passed: set[int] = set()
        self._held: deque[_Held] = deque()
        self._ids = itertools.count()
        self.finished = False

    # -- text ---------------------------------------------------------------------------

    def text(self, index: int = 0) -> str:
        """The full text received so far for one choice."""
        return "".join(self._texts.get(index, ()))

    @property
    def indices(self) -> list[int]:
        """The choice indices seen so far."""
        return sorted(self._lengths)

    def _segment(self, index: int, *, final: bool) -> SegmentCheck:
        full = self.text(index)
        end = len(full)
        start = 0 if final else max(0, self._queued.get(index, 0) - self.context_chars)
        self._queued[index] = end
        return SegmentCheck(next(self._ids), index, full[start:end], end, final)

    # -- feeding ------------------------------------------------------------------------

    def feed(self, chunk: Any) -> StreamStep:
        """Take one upstream chunk; returns the chunks releasable now and checks to start."""
        step = StreamStep()
        ends: dict[int, int] = {}
        finishes: list[int] = []
        for choice in getattr(chunk, "choices", None) or ():
            index = int(choice.index)
            self._lengths.setdefault(index, 0)
            content = getattr(choice.delta, "content", None) if choice.delta else None
            if content:
                self._texts.setdefault(index, []).append(content)
                self._lengths[index] += len(content)
            ends[index] = self._lengths[index]
            if choice.finish_reason is not None:
                finishes.append(index)
            pending = self._lengths[index] - self._queued.get(index, 0)
            if pending >= self.chunk_chars or (
                pending >= self.min_chars and content and _SENTENCE_END.search(content) is not None
            ):
                step.checks.append(self._segment(index, final=False))
        self._held.append(_Held(chunk, ends, tuple(finishes)))
        step.release = self._releasable()
        return step

    def finish(self) -> list[SegmentCheck]:
        """The upstream ended: one final check per choice over its full text."""
        self.finished = True
        return [self._segment(index, final=True) for index in self.indices]

    def passed(self, check: SegmentCheck) -> list[Any]:
        """A check passed (callers report checks of one choice in order); returns releases."""
        self._passed[check.index] = max(self._passed.get(check.index, 0), check.end)
        if check.final:
            self._final_passed.add(check.index)
        return self._releasable()

    def _ready(self, held: _Held) -> bool:
        if any(i not in self._final_passed for i in held.finishes):
            return False
        if self.release_before_check:
            return True
        return all(end <= self._passed.get(i, 0) for i, end in held.ends.items())

    def _releasable(self) -> list[Any]:
        out: list[Any] = []
        while self._held and (
            self._ready(self._held[0]) or (self.finished and self._all_final_passed())
        ):
            out.append(self._held.popleft().chunk)
        return out

    def _all_final_passed(self) -> bool:
        return all(i in self._final_passed for i in self._lengths)

    def last_chunk(self) -> Any:
        """The most recent chunk held back (a template for a closing chunk), if any."""
        return self._held[-1].chunk if self._held else None
