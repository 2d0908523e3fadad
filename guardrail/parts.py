"""The parts a policy describes, built: the guard backend and the reward gate.

This is the one place that turns a policy's ``guard`` and ``reward`` sections into
live objects (loading local models, opening HTTP pools, putting a circuit breaker
in front of each backend, whose transitions are logged and audited); the
classifiers and scorers themselves know nothing of policies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from guardrail.audit import AuditSink, NullSink, json_writer, write_event
from guardrail.breaker import (
    BreakerClassifier,
    BreakerScorer,
    BreakerSettings,
    BreakerTransition,
    CircuitBreaker,
    TransitionCallback,
    log_transition,
)
from guardrail.classifiers.base import Classifier
from guardrail.policy.schema import BreakerConfig, GuardConfig, RewardConfig, RewardModelConfig
from guardrail.reward.base import RewardScorer
from guardrail.reward.gate import RewardGate


def build_classifier(settings: GuardConfig) -> Classifier:
    """The guard backend a policy's ``guard`` section describes (loads a local model)."""
    if settings.backend == "remote":
        from guardrail.classifiers.remote import RemoteQwen3Guard

        # The schema guarantees a base_url for the remote backend.
        return RemoteQwen3Guard(
            str(settings.base_url),
            model=settings.model,
            api_key_env=settings.api_key_env,
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
    from guardrail.classifiers.local import LocalQwen3Guard

    return LocalQwen3Guard(
        settings.model, revision=settings.revision, device=settings.device, dtype=settings.dtype
    )


def breaker_settings(config: BreakerConfig) -> BreakerSettings:
    """The state-machine settings of a policy's ``breaker`` section."""
    return BreakerSettings(
        failures=config.failures,
        failure_rate=config.failure_rate,
        window_s=config.window_s,
        min_calls=config.min_calls,
        cooldown_s=config.cooldown_s,
        probes=config.probes,
        successes=config.successes,
    )


def transition_recorder(sink: Callable[[], AuditSink]) -> TransitionCallback:
    """A circuit breaker callback: each transition is logged, and audited in ``sink()``.

    The sink is read at each transition (a guard's sink may be replaced).
    """

    def record(transition: BreakerTransition) -> None:
        log_transition(transition)
        # Sinks that take only call records (no write_json) still get the log line.
        current = sink()
        if not isinstance(current, NullSink) and json_writer(current) is not None:
            write_event(current, transition.event, transition.details(), time=transition.time)

    return record


def with_breaker(
    classifier: Classifier,
    config: BreakerConfig,
    on_transition: TransitionCallback | None = None,
) -> Classifier:
    """``classifier`` behind the guard's circuit breaker (as it is when that is disabled)."""
    if not config.enabled:
        return classifier
    breaker = CircuitBreaker("guard", breaker_settings(config), on_transition=on_transition)
    return BreakerClassifier(classifier, breaker)


def build_scorer(config: RewardModelConfig) -> RewardScorer:
    """The scorer one ``reward.models`` entry of a policy describes (loads the model)."""
    from guardrail.reward import build_scorer as build

    options: dict[str, Any] = {"mean": config.mean, "std": config.std}
    if config.kind == "remote":
        options.update(
            base_url=config.base_url,
            api=config.api,
            api_key_env=config.api_key_env,
            timeout=config.timeout_s,
        )
    else:
        options.update(
            revision=config.revision,
            device=config.device,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
        )
    # family settings (the schema refuses them on other kinds)
    if config.kind == "pair":
        options["multiplier"] = config.multiplier
    if config.kind == "safe-rlhf":
        options["append_eos"] = config.append_eos
    if config.kind in ("seqcls", "safe-rlhf"):
        options["truncation_side"] = config.truncation_side
    return build(config.kind, config.model, **options)


def build_reward_gate(
    config: RewardConfig,
    scorers: Mapping[str, RewardScorer] | None = None,
    on_transition: TransitionCallback | None = None,
) -> RewardGate:
    """The reward gate of a policy's ``reward`` section.

    ``scorers`` maps model ids to ready scorers (to share loaded models, or fakes in
    tests); the models missing from it are built. Each model gets its own circuit
    breaker (``reward:<id>``) unless ``reward.breaker`` disables them.
    """
    built = dict(scorers or {})
    for model in config.models:
        if model.id not in built:
            built[model.id] = build_scorer(model)
    if config.breaker.enabled:
        settings = breaker_settings(config.breaker)
        for model in config.models:
            breaker = CircuitBreaker(f"reward:{model.id}", settings, on_transition=on_transition)
            built[model.id] = BreakerScorer(built[model.id], breaker)
    return RewardGate(config, built)
