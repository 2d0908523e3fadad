"""``Guard``: a policy, a guard model, reward models and an audit sink, put together.

``Guard`` is what :func:`guardrail.wrap` puts in front of a client, and what
users of other LLM SDKs call directly (``check_prompt``, ``check_response`` and
their async twins). It builds the parts (:mod:`guardrail.parts`), the
:class:`~guardrail.flow.FlowSettings` its flows read and the drivers that run them
(:mod:`guardrail.drivers`); it owns no flow logic (:mod:`guardrail.flow`), no
decisions (:mod:`guardrail.policy`) and no record layout (:mod:`guardrail.audit`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from guardrail.audit import AuditSink, NullSink, sink_from_config, write_record
from guardrail.audit.keys import AuditKey
from guardrail.audit.record import PolicyRef
from guardrail.breaker import BreakerClassifier, CircuitBreaker
from guardrail.classifiers.base import Classifier, Conversation
from guardrail.drivers import Drivers
from guardrail.flow import (
    AsyncDriver,
    FlowSettings,
    Recording,
    SyncDriver,
    Trace,
    audit_record,
    check_flow,
)
from guardrail.parts import build_classifier, build_reward_gate, transition_recorder, with_breaker
from guardrail.policy import Policy, load_policy
from guardrail.reward.base import RewardScore, RewardScorer
from guardrail.secrets import Masker
from guardrail.telemetry import CallTracer
from guardrail.types import Decision, Stage, Verdict

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


class Guard:
    """Checks prompts and responses against a policy, and audits every decision.

    ``policy``: a :class:`~guardrail.policy.Policy`, a path to a policy YAML file,
    or ``None`` for the balanced default. ``classifier`` overrides the guard the
    policy describes (e.g. a shared ``LocalQwen3Guard``, or a scripted fake in
    tests); ``sink`` overrides its audit sink; ``logger`` is the structlog logger
    used by a ``logger`` audit sink; ``scorers`` maps reward model ids of the
    policy's ``reward`` section to ready scorers (the others are built);
    ``max_workers`` bounds each of the two thread pools of sync calls. Backends are
    called through their circuit breakers (``guard.breaker``, ``reward.breaker``).
    ``tracer_provider`` turns on OpenTelemetry spans (:mod:`guardrail.telemetry`)
    with that provider; a policy with ``telemetry: {otel: true}`` turns them on with
    the global one.
    """

    def __init__(
        self,
        policy: Policy | str | Path | None = None,
        *,
        classifier: Classifier | None = None,
        sink: AuditSink | None = None,
        logger: Any = None,
        scorers: Mapping[str, RewardScorer] | None = None,
        max_workers: int = 32,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if policy is None:
            policy = Policy.default()
        elif not isinstance(policy, Policy):
            policy = load_policy(policy)
        self.policy = policy
        self.classifier = classifier if classifier is not None else build_classifier(policy.guard)
        self._owns_classifier = classifier is None
        # Breaker transitions are logged and audited in the sink of the moment.
        on_breaker = transition_recorder(lambda: self.sink)
        self._judge = with_breaker(self.classifier, policy.guard.breaker, on_breaker)
        self.rewards = (
            build_reward_gate(policy.reward, scorers, on_breaker) if policy.reward else None
        )
        """The policy's reward models, or ``None`` when the policy has no reward section."""
        self.settings = FlowSettings.of(policy, mask=Masker.of(self.classifier, self.rewards))
        """What this guard's flows read (its mask hides the backends' API keys)."""
        audit = policy.audit
        key = AuditKey.from_env(audit.hmac_key_env) if audit.hmac_key_env else None
        self.sink = sink if sink is not None else sink_from_config(audit, logger, key=key)
        self._recording = Recording(
            policy=PolicyRef(
                name=policy.name, version=str(policy.version), hash=policy.content_hash
            ),
            content=audit.content,
            truncate_chars=audit.truncate_chars,
            content_key=key,
        )
        self._tracer = (
            CallTracer.of(tracer_provider, self._recording, guard_model=self.classifier.model_id)
            if tracer_provider is not None or policy.telemetry.otel
            else None
        )
        self._drivers = Drivers(
            policy, self._judge, self.rewards, lambda: self.sink, max_workers=max_workers
        )

    # -- what the drivers run ---------------------------------------------------------

    def classify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Judge conversations with the policy's reasoning and system-message settings."""
        return self._drivers.classify(stage, conversations)

    async def aclassify(self, stage: Stage, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Async twin of :meth:`classify`."""
        return await self._drivers.aclassify(stage, conversations)

    def score(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        """Score answers with the policy's reward models (``None`` where none applies)."""
        return self._drivers.score(conversations)

    async def ascore(self, conversations: Sequence[Conversation]) -> list[RewardScore | None]:
        """Async twin of :meth:`score`."""
        return await self._drivers.ascore(conversations)

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The guard backend's circuit breaker (``None`` when the policy disables it)."""
        return self._judge.breaker if isinstance(self._judge, BreakerClassifier) else None

    def begin(self, mode: str, *, model: str = "", mask: Masker | None = None) -> Trace:
        """The trace of a call beginning now; its span starts here when tracing is on.

        ``mask`` defaults to the guard's own (a wrapped client adds its API key).
        """
        trace = Trace.begin(mode, model=model, mask=self.settings.mask if mask is None else mask)
        if self._tracer is not None:
            self._tracer.begin(trace)
        return trace

    def audit(self, trace: Trace) -> None:
        """Write the audit record of one guarded call or check (and end its span)."""
        try:
            if not isinstance(self.sink, NullSink):  # nothing is kept: skip building the record
                data = audit_record(trace, self._recording, guard_model=self.classifier.model_id)
                write_record(self.sink, data)
        finally:
            if trace.span is not None:
                trace.span.end(trace)

    def sync_driver(self, upstream: Callable[[dict[str, Any]], Any] | None = None) -> SyncDriver:
        """A driver for one sync call whose upstream is ``upstream(params)``."""
        return self._drivers.sync_driver(upstream, self.audit)

    def async_driver(
        self, upstream: Callable[[dict[str, Any]], Awaitable[Any]] | None = None
    ) -> AsyncDriver:
        """A driver for one async call whose upstream is ``await upstream(params)``."""
        return self._drivers.async_driver(upstream, self.audit)

    # -- direct checks ----------------------------------------------------------------

    def check_prompt(self, messages: Iterable[Any]) -> Decision:
        """Check a conversation's last user turn; the decision is audited, never raised."""
        flow = check_flow(
            self.settings, Stage.PROMPT, messages, None, None, trace=self.begin("check")
        )
        return self.sync_driver().run(flow)

    def check_response(
        self,
        messages: Iterable[Any],
        response: Any,
        *,
        prompt_verdict: Verdict | None = None,
    ) -> Decision:
        """Check an answer (a string or an assistant message) to ``messages``.

        Pass the prompt check's verdict as ``prompt_verdict`` so rules on the
        prompt's level (such as the unnecessary-refusal rule) can match.
        """
        flow = check_flow(
            self.settings,
            Stage.RESPONSE,
            messages,
            response,
            prompt_verdict,
            trace=self.begin("check"),
        )
        return self.sync_driver().run(flow)

    async def acheck_prompt(self, messages: Iterable[Any]) -> Decision:
        """Async twin of :meth:`check_prompt`."""
        flow = check_flow(
            self.settings, Stage.PROMPT, messages, None, None, trace=self.begin("check")
        )
        return await self.async_driver().run(flow)

    async def acheck_response(
        self,
        messages: Iterable[Any],
        response: Any,
        *,
        prompt_verdict: Verdict | None = None,
    ) -> Decision:
        """Async twin of :meth:`check_response`."""
        flow = check_flow(
            self.settings,
            Stage.RESPONSE,
            messages,
            response,
            prompt_verdict,
            trace=self.begin("check"),
        )
        return await self.async_driver().run(flow)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the audit sink, stop the worker threads, and close the guard built here.

        A classifier built from the policy (not one passed in) has its ``close()``
        called, if it has one: a remote guard's HTTP clients are released.
        """
        self._drivers.close()
        self.sink.close()
        close = getattr(self.classifier, "close", None)
        if self._owns_classifier and callable(close):
            close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
