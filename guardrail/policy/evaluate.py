"""The policy decision: a pure function from a verdict (or a guard failure) to a Decision.

:func:`evaluate` is on every call's hot path, so a policy is compiled once, on
first use, into per-stage lists of plain predicate functions; each call then only
runs the predicates of its stage and builds one :class:`~guardrail.types.Decision`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from guardrail.errors import ConfigurationError
from guardrail.policy.schema import Conditions, Policy, Rule
from guardrail.types import (
    Action,
    ControversialMode,
    Decision,
    Retry,
    Rewrite,
    SafetyLevel,
    Stage,
    Verdict,
)

__all__ = ["GUARD_ERROR_FLAG", "evaluate"]

GUARD_ERROR_FLAG = "guard_error"
"""The flag of every decision made by a stage's failure mode."""

_Check = Callable[[Verdict, "Verdict | None", "float | None"], bool]
_Prob = Callable[[Verdict], "float | None"]

_LEVEL_NAMES = frozenset(level.value for level in SafetyLevel)


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    """A rule with its conditions turned into predicates and its Decision fields ready."""

    rule_id: str
    checks: tuple[_Check, ...]
    action: Action
    reason: str
    flags: tuple[str, ...]
    message: str | None
    rewrite: Rewrite | None
    retry: Retry | None


@dataclass(frozen=True, slots=True)
class _StagePlan:
    rules: tuple[_CompiledRule, ...]
    default_action: Action
    default_reason: str
    default_flags: tuple[str, ...]
    default_message: str | None
    fails_closed: bool
    block_message: str


def evaluate(
    policy: Policy,
    stage: Stage | str,
    verdict: Verdict | None,
    *,
    prompt_verdict: Verdict | None = None,
    reward: float | None = None,
    error: BaseException | str | None = None,
) -> Decision:
    """Decide what to do with one checked prompt or response.

    - ``error`` given (the guard failed or timed out): the stage's ``failure`` mode
      decides, with rule id ``failure`` and the flag ``guard_error``: ``closed``
      blocks with the policy's block message, ``open`` allows.
    - otherwise the first rule of ``stage`` whose conditions all hold decides;
      ``prompt_verdict`` feeds ``prompt_levels`` and ``reward`` the reward
      conditions (a condition on missing data does not match);
    - no rule matching, the stage's default decides (rule id ``default``).

    Raises :class:`~guardrail.errors.ConfigurationError` when neither a verdict
    nor an error is given, or the verdict belongs to the other stage.
    """
    stage = stage if isinstance(stage, Stage) else Stage(stage)
    # Read the private dict directly: pydantic's private-attribute lookup costs ~2 us,
    # as much as the rest of this function.
    private = policy.__pydantic_private__
    plans: dict[Stage, _StagePlan] | None = private.get("_compiled") if private else None
    if plans is None:
        plans = policy._compiled = _compile(policy)
    plan = plans[stage]
    if error is not None:
        return _failure(plan, stage, verdict, error)
    if verdict is None:
        raise ConfigurationError("evaluate() needs a verdict, or the error that prevented one")
    if verdict.stage is not stage:
        raise ConfigurationError(
            f"a {verdict.stage.value} verdict cannot be evaluated by the {stage.value} rules"
        )
    for rule in plan.rules:
        for check in rule.checks:
            if not check(verdict, prompt_verdict, reward):
                break
        else:
            return Decision(
                stage=stage,
                action=rule.action,
                rule_id=rule.rule_id,
                reason=rule.reason,
                verdict=verdict,
                flags=rule.flags,
                message=rule.message,
                rewrite=rule.rewrite,
                retry=rule.retry,
            )
    return Decision(
        stage=stage,
        action=plan.default_action,
        rule_id="default",
        reason=plan.default_reason,
        verdict=verdict,
        flags=plan.default_flags,
        message=plan.default_message,
    )


def _failure(
    plan: _StagePlan, stage: Stage, verdict: Verdict | None, error: BaseException | str
) -> Decision:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    if plan.fails_closed:
        action, outcome, message = Action.BLOCK, "failing closed (blocked)", plan.block_message
    else:
        action, outcome, message = Action.ALLOW, "failing open (allowed)", None
    return Decision(
        stage=stage,
        action=action,
        rule_id="failure",
        reason=f"the {stage.value} check failed ({text}); {outcome}",
        verdict=verdict,
        flags=(GUARD_ERROR_FLAG,),
        message=message,
        error=text,
    )


# ------------------------------------------------------------------------ compile


def _compile(policy: Policy) -> dict[Stage, _StagePlan]:
    # The `unsafe` shorthand, as Verdict.is_unsafe(policy.controversial) reads it.
    unsafe_levels = frozenset(
        (SafetyLevel.UNSAFE, SafetyLevel.CONTROVERSIAL)
        if policy.controversial is ControversialMode.STRICT
        else (SafetyLevel.UNSAFE,)
    )
    plans = {}
    for stage in Stage:
        default = policy.defaults.for_stage(stage)
        plans[stage] = _StagePlan(
            rules=tuple(
                _compile_rule(rule, policy, unsafe_levels) for rule in policy.rules_for(stage)
            ),
            default_action=default,
            default_reason=f"no {stage.value} rule matched; the default is {default.value}",
            default_flags=("default",) if default is Action.FLAG else (),
            default_message=policy.block.message if default is Action.BLOCK else None,
            fails_closed=policy.failure.for_stage(stage) == "closed",
            block_message=policy.block.message,
        )
    return plans


def _compile_rule(
    rule: Rule, policy: Policy, unsafe_levels: frozenset[SafetyLevel]
) -> _CompiledRule:
    label = rule.flag_label
    reason = f"rule {rule.id!r} matched"
    if rule.description:
        reason += f": {rule.description}"
    message = None
    if rule.action is Action.BLOCK:
        message = rule.message or policy.block.message
    return _CompiledRule(
        rule_id=rule.id,
        checks=_compile_conditions(rule.when, unsafe_levels),
        action=rule.action,
        reason=reason,
        flags=(label,) if label else (),
        message=message,
        rewrite=rule.rewrite,
        retry=rule.retry,
    )


def _compile_conditions(
    when: Conditions, unsafe_levels: frozenset[SafetyLevel]
) -> tuple[_Check, ...]:
    checks: list[_Check] = []
    if when.levels is not None:
        levels = frozenset(when.levels)
        checks.append(lambda v, p, r: v.level in levels)
    if when.unsafe is not None:
        want_unsafe = when.unsafe
        checks.append(lambda v, p, r: (v.level in unsafe_levels) is want_unsafe)
    if when.categories is not None:
        categories = frozenset(when.categories)
        checks.append(
            lambda v, p, r: (
                any(c in categories for c in v.categories)
                if v.categories
                else v.category in categories
            )
        )
    if when.no_category is not None:
        want_none = when.no_category
        checks.append(lambda v, p, r: (v.category is None) is want_none)
    if when.refusal is not None:
        want_refusal = when.refusal
        checks.append(lambda v, p, r: v.refusal is want_refusal)
    if when.prompt_levels is not None:
        prompt_levels = frozenset(when.prompt_levels)
        checks.append(lambda v, p, r: p is not None and p.level in prompt_levels)
    if when.min_probability:
        lows = tuple((_probability(name), t) for name, t in when.min_probability.items())
        checks.append(lambda v, p, r: _all_at_least(v, lows))
    if when.max_probability:
        highs = tuple((_probability(name), t) for name, t in when.max_probability.items())
        checks.append(lambda v, p, r: _all_at_most(v, highs))
    if when.reward_above is not None:
        above = when.reward_above
        checks.append(lambda v, p, r: r is not None and r > above)
    if when.reward_below is not None:
        below = when.reward_below
        checks.append(lambda v, p, r: r is not None and r < below)
    return tuple(checks)


def _probability(name: str) -> _Prob:
    """A getter of P(name) from a verdict; ``None`` when the verdict has no probabilities.

    Mappings are normalised over their field's values, so a value missing from a
    present mapping has probability 0.
    """
    if name in _LEVEL_NAMES:
        return lambda v: None if v.level_probs is None else v.level_probs.get(name, 0.0)
    if name == "Refusal":
        return lambda v: None if v.refusal_probs is None else v.refusal_probs.get("Yes", 0.0)
    return lambda v: None if v.category_probs is None else v.category_probs.get(name, 0.0)


def _all_at_least(verdict: Verdict, thresholds: tuple[tuple[_Prob, float], ...]) -> bool:
    for get, threshold in thresholds:
        p = get(verdict)
        if p is None or p < threshold:
            return False
    return True


def _all_at_most(verdict: Verdict, thresholds: tuple[tuple[_Prob, float], ...]) -> bool:
    for get, threshold in thresholds:
        p = get(verdict)
        if p is None or p > threshold:
            return False
    return True
