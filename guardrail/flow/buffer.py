"""The stream buffer, sans I/O: feed upstream chunks, learn what to check and what to release.

:class:`StreamState` holds upstream chunks back until everything they carry has
been checked (``check_before_release``: no unchecked text ever reaches the
caller), or releases them at once and only stops the stream when a check fails
(``check_after_release``: lower latency, some unsafe text may be seen).

Every channel a chunk can carry counts: ``content``, ``refusal``, reasoning
(``reasoning_content`` / ``reasoning``) and tool-call names and arguments. New
text is cut into check windows at sentence ends: once a quarter of
``chunk_chars`` has accumulated, a window ends just after the last sentence end
inside the delta that brought it (``"sun. The"`` ends after ``"sun. "``), and the
text after that sentence end waits for its own window, so a chunk holding the
start of the next sentence is released only once that sentence was checked. A
sentence longer than ``chunk_chars`` is cut there regardless. Each check judges
an assistant message holding its window plus up to ``context_chars`` of the
text before it (and the tool calls so far), so an answer is never judged only in
fragments; one final check judges each choice's whole message, started as soon
as the choice's ``finish_reason`` arrives (or when the upstream ends without one).
Chunks that end a choice (``finish_reason``) are held until that final check
passes, so a failing final check can still end the stream with
``finish_reason="content_filter"``.

The state object never blocks: :mod:`guardrail.flow.stream` drives it, checking
chunk N while chunk N+1 arrives.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from guardrail.chat import delta_parts

# A sentence ends inside a delta too ("dog. The"): upstreams split text anywhere.
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f\u2026]['\")\]]?(?:\s|$)|\n")


@dataclass(frozen=True)
class SegmentCheck:
    """What to check of one choice: an assistant message; ``end`` is its offset."""

    id: int
    index: int
    text: str
    """The content window judged (new text plus context)."""
    end: int
    final: bool = False
    message: dict[str, Any] = field(default_factory=dict)
    """The assistant message the guard judges (content, reasoning, tool calls)."""


@dataclass
class _Choice:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tools: dict[int, list[str]] = field(default_factory=dict)  # index -> [name, arguments]
    length: int = 0  # characters received on every channel
    queued: int = 0  # `length` when the last check started
    queued_content: int = 0
    queued_reasoning: int = 0
    passed: int = 0  # `length` up to which checks passed
    final_queued: bool = False  # a final check covering `queued` has started
    final_passed: bool = False
    finish_released: bool = False
    finish_reason: str | None = None

    def message(
        self, *, content_from: int, reasoning_from: int, content_to: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        content = "".join(self.content)[content_from:content_to]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)[reasoning_from:]
        if self.tools:
            message["tool_calls"] = [
                {"type": "function", "function": {"name": name, "arguments": args}}
                for name, args in (self.tools[k] for k in sorted(self.tools))
            ]
        return content, message


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


def _last_sentence_end(visible: str, starts: tuple[int, int]) -> tuple[int, int] | None:
    """(offset, content offset) just after the last sentence end in a delta's text, if any."""
    ends = [m.end() for m in _SENTENCE_END.finditer(visible)]
    if not ends:
        return None
    return starts[0] + ends[-1], starts[1] + ends[-1]


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
        self._choices: dict[int, _Choice] = {}
        self._held: deque[_Held] = deque()
        self._ids = itertools.count()
        self.finished = False
        self.latest: Any = None
        """The last chunk fed (the one that carries the stream's usage, when asked for)."""

    # -- what was received ---------------------------------------------------------------

    def text(self, index: int = 0) -> str:
        """The visible text (content and refusal) received so far for one choice."""
        choice = self._choices.get(index)
        return "".join(choice.content) if choice else ""

    @property
    def indices(self) -> list[int]:
        """The choice indices seen so far."""
        return sorted(self._choices)

    def finish_reasons(self) -> tuple[str, ...]:
        """The ``finish_reason`` of each choice that reported one, by choice index."""
        return tuple(
            str(c.finish_reason)
            for _, c in sorted(self._choices.items())
            if c.finish_reason is not None
        )

    @property
    def unfinished(self) -> list[int]:
        """Choices whose end has not been released to the caller."""
        return [i for i in self.indices if not self._choices[i].finish_released]

    def _segment(
        self, index: int, *, final: bool, cut: tuple[int, int] | None = None
    ) -> SegmentCheck:
        """The check of a choice's new text, up to ``cut`` = (offset, content offset) if given."""
        choice = self._choices[index]
        end, content_to = cut if cut is not None else (choice.length, None)
        if final:
            content_from = reasoning_from = 0
        else:
            content_from = max(0, choice.queued_content - self.context_chars)
            reasoning_from = max(0, choice.queued_reasoning - self.context_chars)
        text, message = choice.message(
            content_from=content_from, reasoning_from=reasoning_from, content_to=content_to
        )
        choice.queued = end
        choice.queued_content = (
            content_to if content_to is not None else sum(map(len, choice.content))
        )
        choice.queued_reasoning = sum(map(len, choice.reasoning))
        return SegmentCheck(next(self._ids), index, text, end, final, message)

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, chunk: Any) -> StreamStep:
        """Take one upstream chunk; returns the chunks releasable now and checks to start."""
        step = StreamStep()
        ends: dict[int, int] = {}
        finishes: list[int] = []
        self.latest = chunk
        for raw in getattr(chunk, "choices", None) or ():
            index = int(raw.index)
            choice = self._choices.setdefault(index, _Choice())
            visible, reasoning, tools = delta_parts(raw.delta)
            # Where this delta's visible text starts (offset, content offset): it is
            # counted before the delta's reasoning and tool-call text.
            starts = (choice.length, sum(map(len, choice.content)))
            if visible:
                choice.content.append(visible)
            if reasoning:
                choice.reasoning.append(reasoning)
            for k, name, arguments in tools:
                slot = choice.tools.setdefault(k, ["", ""])
                slot[0] += name
                slot[1] += arguments
            grown = len(visible) + len(reasoning) + sum(len(n) + len(a) for _, n, a in tools)
            if grown and choice.final_queued:  # text after the choice's end: judge again
                choice.final_queued = choice.final_passed = False
            choice.length += grown
            ends[index] = choice.length
            if raw.finish_reason is not None:
                finishes.append(index)
                choice.finish_reason = raw.finish_reason
                # The choice is complete: its final check need not wait for the stream's end.
                choice.final_queued = True
                step.checks.append(self._segment(index, final=True))
                continue
            cut = _last_sentence_end(visible, starts)
            if cut is not None and cut[0] - choice.queued >= self.min_chars:
                # The window ends with the last sentence ending in this delta; the start
                # of the next sentence is held until its own window passes.
                step.checks.append(self._segment(index, final=False, cut=cut))
            if choice.length - choice.queued >= self.chunk_chars:  # a sentence longer
                step.checks.append(self._segment(index, final=False))
        self._held.append(_Held(chunk, ends, tuple(finishes)))
        step.release = self._releasable()
        return step

    def finish(self) -> list[SegmentCheck]:
        """The upstream ended: final checks of the choices whose finish never arrived."""
        self.finished = True
        return [
            self._segment(index, final=True)
            for index in self.indices
            if not self._choices[index].final_queued
        ]

    def passed(self, check: SegmentCheck) -> list[Any]:
        """A check passed (report one choice's checks in order); returns releasable chunks."""
        choice = self._choices[check.index]
        choice.passed = max(choice.passed, check.end)
        if check.final and check.end == choice.length:  # nothing arrived after it
            choice.final_passed = True
        return self._releasable()

    def _ready(self, held: _Held) -> bool:
        if any(not self._choices[i].final_passed for i in held.finishes):
            return False
        if self.release_before_check:
            return True
        return all(end <= self._choices[i].passed for i, end in held.ends.items())

    def _releasable(self) -> list[Any]:
        # Once every choice's final check passed, every held chunk is ready (a final
        # pass covers all the text its choice received): no end-of-stream flush needed.
        out: list[Any] = []
        while self._held and self._ready(self._held[0]):
            held = self._held.popleft()
            for i in held.finishes:
                self._choices[i].finish_released = True
            out.append(held.chunk)
        return out

    def last_chunk(self) -> Any:
        """The most recent chunk held back (a template for a closing chunk), if any."""
        return self._held[-1].chunk if self._held else None
