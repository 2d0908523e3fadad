"""evaluate(): the edges the table tests in test_policy leave open.

What a decision says (its reason, its error), how probabilities missing from a
verdict are read, and that settings hand every input to the policy.
"""

from __future__ import annotations

from typing import Any

import pytest

from guardrail.errors import ConfigurationError
from guardrail.flow import FlowSettings
from guardrail.policy import Policy, evaluate
from guardrail.types import Action, Category, SafetyLevel, Stage, Verdict

PROMPT, RESPONSE = Stage.PROMPT, Stage.RESPONSE


def policy(*rules: dict[str, Any], **top: Any) -> Policy:
    if any("reward_above" in r.get("when", {}) for r in rules):
        top.setdefault("reward", {"models": [{"id": "rm", "kind": "seqcls", "model": "/rm"}]})
    return Policy.model_validate({"version": 1, "name": "t", "rules": list(rules), **top})


def flag_when(stage: Stage, **when: Any) -> dict[str, Any]:
    return {"id": "r", "stage": stage.value, "action": "flag", "when": when}


def safe(stage: Stage = PROMPT, **fields: Any) -> Verdict:
    return Verdict(stage=stage, level=SafetyLevel.SAFE, **fields)


def test_a_missing_verdict_names_what_evaluate_needs() -> None:
    with pytest.raises(ConfigurationError) as raised:
        evaluate(policy(), PROMPT, None)
    assert str(raised.value) == "evaluate() needs a verdict, or the error that prevented one"


def test_the_default_decision_says_why_it_was_taken() -> None:
    decision = evaluate(policy(), "prompt", safe())
    assert decision.rule_id == "default"
    assert decision.reason == "no prompt rule matched; the default is allow"


@pytest.mark.parametrize(
    ("mode", "action", "outcome"),
    [
        ("closed", Action.BLOCK, "failing closed (blocked)"),
        ("open", Action.ALLOW, "failing open (allowed)"),
    ],
)
def test_a_failure_decision_says_which_way_it_failed(
    mode: str, action: Action, outcome: str
) -> None:
    pol = policy(failure={"response": mode})
    decision = evaluate(pol, RESPONSE, None, error=TimeoutError("late"))
    assert decision.action is action
    assert decision.error == "TimeoutError: late"
    assert decision.reason == f"the response check failed (TimeoutError: late); {outcome}"


@pytest.mark.parametrize("name", ["Unsafe", "Violent"])
def test_a_value_missing_from_present_probabilities_counts_as_zero(name: str) -> None:
    # Mappings are normalised over their field: an absent value has probability 0,
    # so it is at most any threshold (and not at least a positive one).
    verdict = safe(level_probs={"Safe": 1.0}, category_probs={"None": 1.0})
    at_most = policy(flag_when(PROMPT, max_probability={name: 0.5}))
    assert evaluate(at_most, PROMPT, verdict).rule_id == "r"
    at_least = policy(flag_when(PROMPT, min_probability={name: 0.0}))
    assert evaluate(at_least, PROMPT, verdict).rule_id == "r"


def test_a_missing_refusal_probability_counts_as_zero() -> None:
    verdict = safe(RESPONSE, refusal_probs={"No": 1.0})
    at_most = policy(flag_when(RESPONSE, max_probability={"Refusal": 0.5}))
    assert evaluate(at_most, RESPONSE, verdict).rule_id == "r"


def test_a_refusal_condition_on_a_verdict_without_refusal_probabilities_does_not_match() -> None:
    pol = policy(flag_when(RESPONSE, min_probability={"Refusal": 0.1}))
    assert evaluate(pol, RESPONSE, safe(RESPONSE)).rule_id == "default"


def test_flow_settings_pass_the_reward_to_the_policy() -> None:
    pol = policy(flag_when(RESPONSE, reward_above=0.5))
    settings = FlowSettings.of(pol)
    assert settings.decide(RESPONSE, safe(RESPONSE), reward=0.9).rule_id == "r"
    assert settings.decide(RESPONSE, safe(RESPONSE), reward=0.1).rule_id == "default"


def test_a_rule_message_wins_over_the_policy_block_message() -> None:
    pol = policy(
        {"id": "b", "stage": "prompt", "action": "block", "message": "Not this one."},
        block={"message": "Generic."},
    )
    settings = FlowSettings.of(pol)
    assert settings.block_message(settings.decide(PROMPT, safe())) == "Not this one."
    failed = settings.decide(PROMPT, None, error=RuntimeError("x"))
    assert settings.block_message(failed) == "Generic."


def test_a_verdict_with_only_its_primary_category_matches_a_category_rule() -> None:
    rules = policy(flag_when(PROMPT, categories=["Violent"]))
    only_primary = Verdict(stage=PROMPT, level=SafetyLevel.UNSAFE, category=Category.VIOLENT)
    assert evaluate(rules, PROMPT, only_primary).action is Action.FLAG
    other = Verdict(stage=PROMPT, level=SafetyLevel.UNSAFE, category=Category.PII)
    assert evaluate(rules, PROMPT, other).action is Action.ALLOW


def test_a_policy_is_compiled_once_and_reused() -> None:
    rules = policy(flag_when(PROMPT, levels=["Safe"]))
    assert evaluate(rules, PROMPT, safe()).action is Action.FLAG
    compiled = rules._compiled
    assert compiled is not None
    assert evaluate(rules, "prompt", safe()).action is Action.FLAG
    assert rules._compiled is compiled
