"""The streaming guarded call: text is checked while the next chunks arrive.

:func:`stream_flow` checks the prompt (racing the upstream call in concurrent
mode), then feeds each upstream chunk to a :class:`~guardrail.flow.buffer.StreamState`
and emits what it releases. Checks are pipelined: a segment is checked while the
next chunks arrive (at most two checks stay in flight while the next chunk is
read; a chunk's new checks start before the oldest is awaited), and checked text is
released as soon as its check passes (without waiting for the next chunk). A
block or template rewrite cuts the stream with a closing chunk
(``finish_reason="content_filter"``) for every choice still open. However the
stream ends (finished, cut, failed or abandoned by its caller), checks in
flight and the pending read are cancelled, the upstream stream is closed and
the audit record is written.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from guardrail.chat import ChatShapes, closing_chunk
from guardrail.errors import GuardrailError
from guardrail.flow.buffer import SegmentCheck, StreamState
from guardrail.flow.checks import as_guard_error, decide, prompt_phase, raise_if_raising
from guardrail.flow.effects import (
    END,
    Audit,
    Await,
    CallUpstream,
    Cancel,
    Classify,
    CloseStream,
    Emit,
    Flow,
    Handle,
    ReadChunk,
    Run,
    Start,
    WaitFirst,
)
from guardrail.flow.settings import FlowSettings
from guardrail.flow.trace import StreamEnd, Trace
from guardrail.types import Action, RewriteMode, Stage, Verdict

MAX_IN_FLIGHT = 2
"""Checks a stream keeps running while it reads the next chunk; past it, it waits for the oldest."""


def _mask_refusal(verdicts: Sequence[Verdict]) -> list[Verdict]:
    # A partial answer cannot be judged a refusal: refusal-based rules apply only
    # to the final check of a stream.
    return [v.model_copy(update={"refusal": None, "refusal_probs": None}) for v in verdicts]


class _StreamCall:
    """One streaming call in progress: its buffer, checks in flight and upstream stream."""

    def __init__(
        self,
        settings: FlowSettings,
        trace: Trace,
        shapes: ChatShapes,
        params: dict[str, Any],
    ) -> None:
        streaming = settings.streaming
        self.settings = settings
        self.trace = trace
        self.shapes = shapes
        self.model = str(params.get("model", ""))
        self.state = StreamState(
            chunk_chars=streaming.chunk_chars,
            sentence_boundary=streaming.sentence_boundary,
            release_before_check=streaming.release == "check_after_release",
        )
        self.in_flight: deque[tuple[Handle[list[Verdict]], SegmentCheck, float]] = deque()
        self.upstream: Any = None
        self.read: Handle[Any] | None = None
        self.prompt_verdict: Verdict | None = None
        self.messages: Any = params["messages"]
        self.upstream_started = 0.0

    def closing(self, text: str | None, indices: Sequence[int]) -> Emit:
        """The chunk that ends the stream for ``indices``."""
        return Emit(
            closing_chunk(
                self.shapes,
                self.state.last_chunk(),
                model=self.model,
                request_id=self.trace.request_id,
                indices=indices,
                text=text,
            )
        )

    def start_check(self, segment: SegmentCheck) -> Flow[None]:
        """Start checking one segment of the answer."""
        message = segment.message
        handle: Handle[list[Verdict]] = yield Start(
            Classify(Stage.RESPONSE, [(self.messages, message)])
        )
        self.in_flight.append((handle, segment, time.perf_counter()))

    def settle(self) -> Flow[bool]:
        """Apply the oldest check in flight; False when it cut the stream."""
        handle, segment, started = self.in_flight.popleft()
        result: Sequence[Verdict] | GuardrailError
        try:
            verdicts: list[Verdict] = yield Await(handle)
            result = verdicts if segment.final else _mask_refusal(verdicts)
        except Exception as exc:
            result = as_guard_error(exc)
        trace = self.trace
        (decision,) = decide(
            self.settings,
            trace,
            Stage.RESPONSE,
            result,
            1,
            started=started,
            prompt_verdict=self.prompt_verdict,
            candidates=[segment.index],
        )
        if decision.action in (Action.BLOCK, Action.REWRITE):
            trace.took(Action.BLOCK if decision.blocked else Action.REWRITE, flags=decision.flags)
            trace.blocked_stage = Stage.RESPONSE if decision.blocked else None
            rewrite = decision.rewrite
            text = self.settings.streaming.replacement
            if rewrite is not None and rewrite.mode is RewriteMode.TEMPLATE:
                text = rewrite.text
            # Every choice still open ends here.
            yield self.closing(text, self.state.unfinished)
            return False
        trace.took(decision.action, flags=decision.flags)
        for chunk in self.state.passed(segment):
            yield Emit(chunk)
        return True

    def relay(self) -> Flow[bool]:
        """Read, check and release the upstream's chunks; False when a check cut the stream."""
        self.read = yield Start(ReadChunk(self.upstream))
        while True:
            if self.in_flight and (yield WaitFirst(self.read, self.in_flight[0][0])) == "check":
                if not (yield from self.settle()):
                    return False
                continue
            try:
                chunk = yield Await(self.read)
            except Exception as exc:
                self.trace.errors.append(("upstream", exc))
                raise
            finally:
                self.read = None
            if chunk is END:
                return True
            # The next chunk arrives while this one is checked.
            self.read = yield Start(ReadChunk(self.upstream))
            step = self.state.feed(chunk)
            for released in step.release:
                yield Emit(released)
            for segment in step.checks:
                yield from self.start_check(segment)
            while len(self.in_flight) > MAX_IN_FLIGHT:
                if not (yield from self.settle()):
                    return False

    def finish(self) -> Flow[None]:
        """The upstream ended: final checks of the choices whose finish never arrived."""
        self.stop_upstream_clock()
        for segment in self.state.finish():
            yield from self.start_check(segment)
        while self.in_flight:
            if not (yield from self.settle()):
                return

    def stop_upstream_clock(self) -> None:
        """Count the time spent reading the upstream (once)."""
        if self.upstream_started:
            error = next((e for w, e in self.trace.errors if w == "upstream"), None)
            state = self.state
            self.trace.upstream_took(
                self.upstream_started,
                error=error,
                result=StreamEnd(state.latest, state.finish_reasons()),
            )
            self.upstream_started = 0.0

    def cleanup(self) -> Flow[None]:
        """However the stream ended: drop unfinished work, close the upstream, audit."""
        self.stop_upstream_clock()
        trace = self.trace
        trace.responses = [self.state.text(i) for i in self.state.indices] or trace.responses
        while self.in_flight:  # abandoned checks: their results are never used
            yield Cancel(self.in_flight.popleft()[0])
        if self.read is not None:
            yield Cancel(self.read)
            self.read = None
        if self.upstream is not None:
            try:
                yield CloseStream(self.upstream)
            except Exception as exc:  # the answer is over either way: audited, not raised
                trace.errors.append(("upstream", exc))
        yield Audit(trace)


def stream_flow(
    settings: FlowSettings, trace: Trace, params: dict[str, Any], shapes: ChatShapes
) -> Flow[None]:
    """The whole streaming guarded call: yields :class:`~guardrail.flow.effects.Emit` per chunk.

    A blocked prompt ends the stream with the block message (or raises
    :class:`~guardrail.errors.BlockedError` when the policy says raise).
    """
    call = _StreamCall(settings, trace, shapes, params)
    try:
        prompt, params, handle = yield from prompt_phase(settings, trace, params)
        call.prompt_verdict = prompt.verdict
        call.messages = params["messages"]
        if prompt.blocked:
            raise_if_raising(settings, trace, prompt)
            indices = range(int(params.get("n") or 1))
            yield call.closing(settings.block_message(prompt), indices)
            return
        call.upstream_started = time.perf_counter()
        try:
            if handle is not None:
                call.upstream = yield Await(handle)
            else:
                call.upstream = yield Run(CallUpstream(params))
        except Exception as exc:
            trace.errors.append(("upstream", exc))
            raise
        if (yield from call.relay()):
            yield from call.finish()
    except Exception as exc:
        trace.ended_by(exc)
        raise
    finally:
        yield from call.cleanup()
