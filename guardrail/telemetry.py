"""OpenTelemetry spans for guarded calls (the ``guardrail[otel]`` extra).

A guarded call's span starts when the call begins, as a child of the
application's current span, and ends when the call's audit record is written
(:meth:`guardrail.Guard.audit`). Its children (one per check, upstream call and
reward scoring) are made then, all at once, with the start and end times the
flow recorded on its :class:`~guardrail.flow.Trace`: the flow stays free of
tracing, and a call costs nothing here unless tracing is on and its span is
sampled.

Span names: ``guardrail.chat`` (a wrapped client's call) or ``guardrail.check``
(``Guard.check_*``); children ``guardrail.check.prompt`` /
``guardrail.check.response``, ``chat {model}`` (the upstream call, a GenAI client
span) and ``guardrail.reward``. Attributes follow the OpenTelemetry GenAI
semantic conventions where they fit (``gen_ai.*``), guardrail's own otherwise
(``guardrail.*``). Error texts pass through the call's mask; prompt and response
texts appear only when the policy's ``audit.content`` is ``full`` or ``truncated``.

``opentelemetry`` is imported only when a guard with tracing on is built.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardrail.audit import content_view
from guardrail.chat import last_user_text
from guardrail.errors import ConfigurationError
from guardrail.flow import Recording, Trace
from guardrail.flow.trace import Step, StreamEnd
from guardrail.report import StageOutcome

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Status, Tracer, TracerProvider

__all__ = ["CallSpan", "CallTracer"]

PROVIDER_NAME = "openai"
"""``gen_ai.provider.name`` of upstream calls: a wrapped client speaks OpenAI's API."""

_CONTENT_MODES = ("full", "truncated")


class CallTracer:
    """Starts the span of each guarded call of one guard; :class:`CallSpan` ends it."""

    def __init__(self, tracer: Tracer, recording: Recording, *, guard_model: str) -> None:
        from opentelemetry import trace as trace_api
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self.recording = recording
        self.guard_model = guard_model
        self.api = trace_api
        self.client_kind = SpanKind.CLIENT
        self._status = Status
        self._error_code = StatusCode.ERROR
        policy = recording.policy
        self.policy_attributes = {
            "guardrail.policy.name": policy.name,
            "guardrail.policy.version": policy.version,
            "guardrail.policy.hash": policy.hash,
        }

    def error_status(self, message: str) -> Status:
        """An ERROR status with ``message`` (already masked)."""
        return self._status(self._error_code, message)

    @classmethod
    def of(
        cls, provider: TracerProvider | None, recording: Recording, *, guard_model: str
    ) -> CallTracer:
        """A tracer on ``provider``, or on the global tracer provider when ``None``.

        Raises :class:`~guardrail.errors.ConfigurationError` naming the extra when
        OpenTelemetry is not installed.
        """
        try:
            from opentelemetry import trace as trace_api
        except ImportError as exc:
            raise ConfigurationError(
                "OpenTelemetry tracing needs the otel extra: pip install 'guardrail[otel]'"
            ) from exc
        source = provider if provider is not None else trace_api.get_tracer_provider()
        return cls(source.get_tracer("guardrail"), recording, guard_model=guard_model)

    def begin(self, trace: Trace) -> None:
        """Start the span of a call beginning now (kept on ``trace`` when it is recorded)."""
        perf, wall = time.perf_counter(), time.time_ns()
        started = wall - round((perf - trace.started) * 1e9)
        name = "guardrail.check" if trace.mode == "check" else "guardrail.chat"
        span = self._tracer.start_span(name, start_time=started)
        if span.is_recording():  # not sampled, or no provider configured: nothing more
            trace.span = CallSpan(self, span, perf, wall)


class CallSpan:
    """The span of one guarded call in progress; :meth:`end` adds its children and ends it."""

    __slots__ = ("perf", "span", "tracer", "wall")

    def __init__(self, tracer: CallTracer, span: Span, perf: float, wall: int) -> None:
        self.tracer = tracer
        self.span = span
        self.perf = perf
        self.wall = wall

    def ns(self, perf: float) -> int:
        """A ``perf_counter`` reading of this call as nanoseconds since the epoch."""
        return self.wall + round((perf - self.perf) * 1e9)

    def end(self, trace: Trace) -> None:
        """End the call's span once its audit record is written, with one child per step."""
        tracer = self.tracer
        span = self.span
        parent = tracer.api.set_span_in_context(span)
        for i, outcome in enumerate(trace.outcomes):
            self._check(trace, i, outcome, parent)
        for step in trace.steps:
            if step.what == "upstream":
                self._upstream(trace, step, parent)
            else:
                self._reward(trace, step, parent)
        attributes: dict[str, Any] = {
            "guardrail.request_id": trace.request_id,
            "guardrail.mode": trace.mode,
            "guardrail.action": trace.action.value,
            **tracer.policy_attributes,
        }
        if trace.mode != "check":
            attributes["gen_ai.operation.name"] = "chat"
            if trace.model:
                attributes["gen_ai.request.model"] = trace.model
        if trace.flags:
            attributes["guardrail.flags"] = list(trace.flags)
        if trace.blocked_stage is not None:
            attributes["guardrail.blocked_stage"] = trace.blocked_stage.value
        recording = tracer.recording
        if recording.content in _CONTENT_MODES:
            prompt = last_user_text(trace.messages)
            if prompt is not None:
                attributes["guardrail.prompt"] = self._content(trace, prompt)
            if trace.responses:
                attributes["guardrail.response"] = self._content(
                    trace, "\n\n".join(trace.responses)
                )
        failure = _call_failure(trace)
        if failure is not None:
            attributes["error.type"] = type(failure).__name__
            span.set_status(tracer.error_status(trace.mask(f"{failure}")))
        span.set_attributes(attributes)
        span.end(end_time=self.ns(time.perf_counter()))

    def _content(self, trace: Trace, text: str) -> str:
        # Masked before it is cut, so no part of a secret survives the cut.
        recording = self.tracer.recording
        view = content_view(trace.mask(text), recording.content, recording.truncate_chars)
        return view or ""

    def _child(
        self, name: str, started: float, ended: float, parent: Context, attributes: dict[str, Any]
    ) -> Span:
        return self.tracer._tracer.start_span(
            name, context=parent, start_time=self.ns(started), attributes=attributes
        )

    def _check(self, trace: Trace, i: int, outcome: StageOutcome, parent: Context) -> None:
        decision = outcome.decision
        stage = outcome.stage.value
        attributes: dict[str, Any] = {
            "guardrail.stage": stage,
            "guardrail.action": decision.action.value,
            "guardrail.rule": decision.rule_id,
            "guardrail.attempt": outcome.attempt,
            "guardrail.guard_model": self.tracer.guard_model,
        }
        if outcome.candidate is not None:
            attributes["guardrail.candidate"] = outcome.candidate
        if decision.flags:
            attributes["guardrail.flags"] = list(decision.flags)
        verdict = decision.verdict
        if verdict is not None:
            attributes["guardrail.level"] = verdict.level.value
            if verdict.category is not None:
                attributes["guardrail.category"] = verdict.category.value
            if verdict.categories:
                attributes["guardrail.categories"] = [c.value for c in verdict.categories]
            if verdict.refusal is not None:
                attributes["guardrail.refusal"] = verdict.refusal
        reward = trace.outcome_rewards.get(i)
        if reward is not None:
            attributes["guardrail.reward"] = reward
        started = trace.check_starts[i]
        span = self._child(
            f"guardrail.check.{stage}", started, started + outcome.latency_s, parent, attributes
        )
        error = trace.outcome_errors.get(i)
        if error is not None:
            span.set_attribute("guardrail.error.type", type(error).__name__)
            span.set_status(self.tracer.error_status(trace.mask(str(error))))
        span.end(end_time=self.ns(started + outcome.latency_s))

    def _upstream(self, trace: Trace, step: Step, parent: Context) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER_NAME,
            "guardrail.attempt": step.attempt,
        }
        if trace.model:
            attributes["gen_ai.request.model"] = trace.model
        attributes.update(_response_attributes(step.result))
        span = self.tracer._tracer.start_span(
            f"chat {trace.model}".rstrip(),
            context=parent,
            kind=self.tracer.client_kind,
            start_time=self.ns(step.started),
            attributes=attributes,
        )
        self._fail(trace, span, step.error, "error.type")
        span.end(end_time=self.ns(step.ended))

    def _reward(self, trace: Trace, step: Step, parent: Context) -> None:
        attributes: dict[str, Any] = {"guardrail.attempt": step.attempt}
        scores = [s for s in step.result or () if s is not None]
        if scores:
            attributes["gen_ai.evaluation.name"] = scores[0].model
            attributes["guardrail.reward.scores"] = [s.score for s in scores]
            if len(scores) == 1:
                attributes["gen_ai.evaluation.score.value"] = scores[0].score
        span = self._child("guardrail.reward", step.started, step.ended, parent, attributes)
        self._fail(trace, span, step.error, "guardrail.error.type")
        span.end(end_time=self.ns(step.ended))

    def _fail(self, trace: Trace, span: Span, error: BaseException | None, key: str) -> None:
        # Never record_exception(): its message and traceback would skip the mask.
        if error is not None:
            span.set_attribute(key, type(error).__name__)
            span.set_status(self.tracer.error_status(trace.mask(str(error))))


def _call_failure(trace: Trace) -> BaseException | None:
    """What made the call itself fail: its arguments, or its (first) upstream call."""
    for where, error in trace.errors:
        if where == "input":
            return error
    for step in trace.steps:
        if step.what == "upstream" and step.attempt == 0:
            return step.error
    return None


def _response_attributes(result: Any) -> dict[str, Any]:
    """The GenAI response attributes an upstream completion (or last chunk) reports."""
    reasons: Sequence[str] = ()
    if isinstance(result, StreamEnd):
        result, reasons = result.chunk, result.finish_reasons
    elif result is not None:
        choices: Sequence[Any] = getattr(result, "choices", None) or ()
        reasons = [str(c.finish_reason) for c in choices if getattr(c, "finish_reason", None)]
    if result is None:
        return {}
    attributes: dict[str, Any] = {}
    for key, name in (("gen_ai.response.id", "id"), ("gen_ai.response.model", "model")):
        value = getattr(result, name, None)
        if isinstance(value, str) and value:
            attributes[key] = value
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = list(reasons)
    usage = getattr(result, "usage", None)
    if usage is not None:
        for key, name in (
            ("gen_ai.usage.input_tokens", "prompt_tokens"),
            ("gen_ai.usage.output_tokens", "completion_tokens"),
        ):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                attributes[key] = value
    return attributes
