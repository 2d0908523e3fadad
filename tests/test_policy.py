"""Policy schema, YAML loader (located errors) and the pure evaluate() function."""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import ValidationError

import guardrail.policy
import guardrail.policy.loader
from guardrail.errors import ConfigurationError, GuardTimeoutError, PolicyError
from guardrail.policy import (
    DEFAULT_BLOCK_MESSAGE,
    DEFAULT_POLICY_TEXT,
    PROBABILITY_NAMES,
    Policy,
    ProbabilityName,
    default_policy,
    evaluate,
    format_field_path,
    load_policy,
    load_policy_text,
    policy_json_schema,
)
from guardrail.types import (
    Action,
    Category,
    ControversialMode,
    Decision,
    RewriteMode,
    SafetyLevel,
    Stage,
    Verdict,
)

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SHIPPED = ("default", "strict", "monitor")

SAFE, UNSAFE, CONTROVERSIAL = SafetyLevel.SAFE, SafetyLevel.UNSAFE, SafetyLevel.CONTROVERSIAL
PROMPT, RESPONSE = Stage.PROMPT, Stage.RESPONSE


def verdict(
    stage: Stage = PROMPT,
    level: SafetyLevel = SAFE,
    *categories: Category,
    refusal: bool | None = None,
    **probs: Any,
) -> Verdict:
    return Verdict(
        stage=stage,
        level=level,
        category=categories[0] if categories else None,
        categories=categories,
        refusal=refusal,
        **probs,
    )


REWARD_SECTION = {"models": [{"id": "rm", "kind": "seqcls", "model": "/unused/reward-model"}]}


def policy(*rules: dict[str, Any], **top: Any) -> Policy:
    uses_reward = any(
        key in r.get("when", {}) for r in rules for key in ("reward_above", "reward_below")
    )
    if uses_reward:
        top.setdefault("reward", REWARD_SECTION)
    return Policy.model_validate({"version": 1, "name": "test", "rules": list(rules), **top})


def rule(stage: Stage, when: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "r", "stage": stage.value, "action": "flag", **fields}
    if when is not None:
        out["when"] = when
    return out


# ------------------------------------------------------------------ evaluate: conditions

P_SAFE = verdict(PROMPT, SAFE)
P_UNSAFE = verdict(PROMPT, UNSAFE)
PROBS: dict[str, Any] = {"level_probs": {"Safe": 0.1, "Unsafe": 0.7, "Controversial": 0.2}}
CAT_PROBS: dict[str, Any] = {"category_probs": {"Violent": 0.6, "None": 0.4}}
REF_PROBS: dict[str, Any] = {"refusal_probs": {"Yes": 0.9, "No": 0.1}}

# (id, stage, when, verdict, prompt_verdict, reward, matches)
CONDITION_CASES: list[tuple[str, Stage, dict[str, Any], Verdict, Verdict | None, Any, bool]] = [
    ("no conditions", PROMPT, {}, P_SAFE, None, None, True),
    ("levels hit", PROMPT, {"levels": ["Unsafe"]}, P_UNSAFE, None, None, True),
    ("levels any-of", PROMPT, {"levels": ["Safe", "Unsafe"]}, P_UNSAFE, None, None, True),
    ("levels miss", PROMPT, {"levels": ["Unsafe"]}, P_SAFE, None, None, False),
    ("unsafe true on Unsafe", PROMPT, {"unsafe": True}, P_UNSAFE, None, None, True),
    ("unsafe true on Safe", PROMPT, {"unsafe": True}, P_SAFE, None, None, False),
    ("unsafe false on Safe", PROMPT, {"unsafe": False}, P_SAFE, None, None, True),
    (
        "category primary",
        PROMPT,
        {"categories": ["Violent"]},
        verdict(PROMPT, UNSAFE, Category.VIOLENT),
        None,
        None,
        True,
    ),
    (
        "category secondary",
        RESPONSE,
        {"categories": ["PII"]},
        verdict(RESPONSE, UNSAFE, Category.VIOLENT, Category.PII),
        None,
        None,
        True,
    ),
    (
        "category miss",
        PROMPT,
        {"categories": ["PII", "Jailbreak"]},
        verdict(PROMPT, UNSAFE, Category.VIOLENT),
        None,
        None,
        False,
    ),
    ("category on none", PROMPT, {"categories": ["Violent"]}, P_SAFE, None, None, False),
    ("no_category true", PROMPT, {"no_category": True}, P_SAFE, None, None, True),
    (
        "no_category true miss",
        PROMPT,
        {"no_category": True},
        verdict(PROMPT, UNSAFE, Category.PII),
        None,
        None,
        False,
    ),
    (
        "no_category false",
        PROMPT,
        {"no_category": False},
        verdict(PROMPT, UNSAFE, Category.PII),
        None,
        None,
        True,
    ),
    (
        "refusal true",
        RESPONSE,
        {"refusal": True},
        verdict(RESPONSE, refusal=True),
        None,
        None,
        True,
    ),
    (
        "refusal false",
        RESPONSE,
        {"refusal": False},
        verdict(RESPONSE, refusal=False),
        None,
        None,
        True,
    ),
    ("refusal unknown", RESPONSE, {"refusal": False}, verdict(RESPONSE), None, None, False),
    (
        "prompt_levels hit",
        RESPONSE,
        {"prompt_levels": ["Safe"]},
        verdict(RESPONSE),
        P_SAFE,
        None,
        True,
    ),
    (
        "prompt_levels miss",
        RESPONSE,
        {"prompt_levels": ["Safe"]},
        verdict(RESPONSE),
        P_UNSAFE,
        None,
        False,
    ),
    (
        "prompt_levels without prompt verdict",
        RESPONSE,
        {"prompt_levels": ["Safe"]},
        verdict(RESPONSE),
        None,
        None,
        False,
    ),
    (
        "min level prob hit",
        PROMPT,
        {"min_probability": {"Unsafe": 0.7}},
        verdict(PROMPT, UNSAFE, **PROBS),
        None,
        None,
        True,
    ),
    (
        "min level prob miss",
        PROMPT,
        {"min_probability": {"Unsafe": 0.71}},
        verdict(PROMPT, UNSAFE, **PROBS),
        None,
        None,
        False,
    ),
    (
        "min prob without probabilities",
        PROMPT,
        {"min_probability": {"Unsafe": 0.0}},
        P_UNSAFE,
        None,
        None,
        False,
    ),
    (
        "min prob of a value absent from the mapping is 0",
        PROMPT,
        {"min_probability": {"Controversial": 0.1}},
        verdict(PROMPT, level_probs={"Safe": 1.0}),
        None,
        None,
        False,
    ),
    (
        "min prob all entries must hold",
        PROMPT,
        {"min_probability": {"Unsafe": 0.5, "Violent": 0.9}},
        verdict(PROMPT, UNSAFE, **PROBS, **CAT_PROBS),
        None,
        None,
        False,
    ),
    (
        "min category prob",
        PROMPT,
        {"min_probability": {"Violent": 0.5}},
        verdict(PROMPT, UNSAFE, Category.VIOLENT, **CAT_PROBS),
        None,
        None,
        True,
    ),
    (
        "min category prob without category probs",
        PROMPT,
        {"min_probability": {"Violent": 0.5}},
        verdict(PROMPT, UNSAFE, Category.VIOLENT, **PROBS),
        None,
        None,
        False,
    ),
    (
        "min refusal prob",
        RESPONSE,
        {"min_probability": {"Refusal": 0.9}},
        verdict(RESPONSE, refusal=True, **REF_PROBS),
        None,
        None,
        True,
    ),
    (
        "max level prob hit",
        PROMPT,
        {"max_probability": {"Unsafe": 0.7}},
        verdict(PROMPT, UNSAFE, **PROBS),
        None,
        None,
        True,
    ),
    (
        "max level prob miss",
        PROMPT,
        {"max_probability": {"Unsafe": 0.69}},
        verdict(PROMPT, UNSAFE, **PROBS),
        None,
        None,
        False,
    ),
    (
        "max prob without probabilities",
        PROMPT,
        {"max_probability": {"Unsafe": 1.0}},
        P_UNSAFE,
        None,
        None,
        False,
    ),
    ("reward_below hit", RESPONSE, {"reward_below": 0.0}, verdict(RESPONSE), None, -1.5, True),
    ("reward_below is strict", RESPONSE, {"reward_below": 0}, verdict(RESPONSE), None, 0.0, False),
    ("reward_above hit", RESPONSE, {"reward_above": 1}, verdict(RESPONSE), None, 2.0, True),
    ("reward_above is strict", RESPONSE, {"reward_above": 1}, verdict(RESPONSE), None, 1.0, False),
    ("reward missing", RESPONSE, {"reward_below": 10}, verdict(RESPONSE), None, None, False),
    (
        "reward window",
        RESPONSE,
        {"reward_above": -1, "reward_below": 1},
        verdict(RESPONSE),
        None,
        0.5,
        True,
    ),
    (
        "all conditions must hold",
        RESPONSE,
        {"levels": ["Safe"], "refusal": True, "prompt_levels": ["Safe"]},
        verdict(RESPONSE, refusal=False),
        P_SAFE,
        None,
        False,
    ),
]


@pytest.mark.parametrize(
    ("stage", "when", "checked", "prompt_verdict", "reward", "matches"),
    [case[1:] for case in CONDITION_CASES],
    ids=[case[0] for case in CONDITION_CASES],
)
def test_condition(
    stage: Stage,
    when: dict[str, Any],
    checked: Verdict,
    prompt_verdict: Verdict | None,
    reward: float | None,
    matches: bool,
) -> None:
    pol = policy(rule(stage, when))
    decision = evaluate(pol, stage, checked, prompt_verdict=prompt_verdict, reward=reward)
    assert decision.rule_id == ("r" if matches else "default")
    assert decision.action is (Action.FLAG if matches else Action.ALLOW)


@pytest.mark.parametrize("mode", list(ControversialMode))
@pytest.mark.parametrize("level", list(SafetyLevel))
@pytest.mark.parametrize("want", [True, False])
def test_unsafe_shorthand_follows_verdict_is_unsafe(
    mode: ControversialMode, level: SafetyLevel, want: bool
) -> None:
    pol = policy(rule(PROMPT, {"unsafe": want}), controversial=mode.value)
    checked = verdict(PROMPT, level)
    matched = evaluate(pol, PROMPT, checked).rule_id == "r"
    assert matched is (checked.is_unsafe(mode) is want)


def test_controversial_mode_changes_unsafe_only() -> None:
    c = verdict(PROMPT, CONTROVERSIAL)
    strict = policy(rule(PROMPT, {"unsafe": True}), controversial="strict")
    loose = policy(rule(PROMPT, {"unsafe": True}), controversial="loose")
    assert evaluate(strict, PROMPT, c).rule_id == "r"
    assert evaluate(loose, PROMPT, c).rule_id == "default"
    by_level = policy(rule(PROMPT, {"levels": ["Controversial"]}), controversial="loose")
    assert evaluate(by_level, PROMPT, c).rule_id == "r"


# -------------------------------------------------------------- evaluate: order, defaults


def test_first_matching_rule_of_the_stage_wins() -> None:
    pol = policy(
        {"id": "resp", "stage": "response", "action": "block"},
        {"id": "narrow", "stage": "prompt", "when": {"levels": ["Unsafe"]}, "action": "block"},
        {"id": "broad", "stage": "prompt", "action": "flag"},
        {"id": "never", "stage": "prompt", "when": {"levels": ["Unsafe"]}, "action": "allow"},
    )
    assert evaluate(pol, PROMPT, P_UNSAFE).rule_id == "narrow"
    assert evaluate(pol, PROMPT, P_SAFE).rule_id == "broad"
    assert evaluate(pol, RESPONSE, verdict(RESPONSE)).rule_id == "resp"
    assert [r.id for r in pol.rules_for(PROMPT)] == ["narrow", "broad", "never"]
    assert [r.id for r in pol.rules_for("response")] == ["resp"]


@pytest.mark.parametrize(
    ("default", "action", "flags", "message"),
    [
        ("allow", Action.ALLOW, (), None),
        ("flag", Action.FLAG, ("default",), None),
        ("block", Action.BLOCK, (), "Nope."),
    ],
)
@pytest.mark.parametrize("stage", list(Stage))
def test_defaults(
    stage: Stage, default: str, action: Action, flags: tuple[str, ...], message: str | None
) -> None:
    other = "response" if stage is PROMPT else "prompt"
    pol = policy(defaults={stage.value: default, other: "allow"}, block={"message": "Nope."})
    decision = evaluate(pol, stage, verdict(stage))
    assert (decision.rule_id, decision.action, decision.flags, decision.message) == (
        "default",
        action,
        flags,
        message,
    )
    assert evaluate(pol, Stage(other), verdict(Stage(other))).action is Action.ALLOW


def test_decision_carries_rule_outputs() -> None:
    pol = policy(
        {"id": "b1", "stage": "prompt", "when": {"levels": ["Unsafe"]}, "action": "block"},
        {
            "id": "b2",
            "description": "jailbreak",
            "stage": "prompt",
            "when": {"categories": ["Jailbreak"]},
            "action": "block",
            "message": "Not here.",
            "flag": "jailbreak",
        },
        {
            "id": "rw",
            "stage": "response",
            "when": {"levels": ["Controversial"]},
            "action": "rewrite",
            "rewrite": {"mode": "template", "text": "Let's talk about something else."},
        },
        {"id": "fl", "stage": "response", "when": {"levels": ["Unsafe"]}, "action": "flag"},
        block={"message": "Blocked by policy."},
    )
    unsafe = evaluate(pol, PROMPT, P_UNSAFE)
    assert (unsafe.action, unsafe.message, unsafe.flags) == (Action.BLOCK, "Blocked by policy.", ())
    assert unsafe.verdict is P_UNSAFE
    assert unsafe.blocked
    jb = evaluate(pol, PROMPT, verdict(PROMPT, CONTROVERSIAL, Category.JAILBREAK))
    assert (jb.rule_id, jb.message, jb.flags) == ("b2", "Not here.", ("jailbreak",))
    assert jb.reason == "rule 'b2' matched: jailbreak"
    rw = evaluate(pol, RESPONSE, verdict(RESPONSE, CONTROVERSIAL))
    assert rw.action is Action.REWRITE
    assert rw.rewrite is not None
    assert (rw.rewrite.mode, rw.rewrite.text) == (
        RewriteMode.TEMPLATE,
        "Let's talk about something else.",
    )
    assert rw.message is None
    assert rw.flags == ()
    fl = evaluate(pol, RESPONSE, verdict(RESPONSE, UNSAFE))
    assert (fl.action, fl.flags, fl.reason) == (Action.FLAG, ("fl",), "rule 'fl' matched")


# ---------------------------------------------------------------- evaluate: failures


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_failure_mode_per_stage(stage: Stage, mode: str) -> None:
    other = "response" if stage is PROMPT else "prompt"
    other_mode = "open" if mode == "closed" else "closed"
    pol = policy(
        {"id": "all", "stage": stage.value, "action": "allow"},
        failure={stage.value: mode, other: other_mode},
        block={"message": "Try later."},
    )
    decision = evaluate(pol, stage, None, error=GuardTimeoutError("no answer in 30s"))
    assert decision.rule_id == "failure"
    assert decision.flags == ("guard_error",)
    assert decision.error == "GuardTimeoutError: no answer in 30s"
    assert "GuardTimeoutError: no answer in 30s" in decision.reason
    if mode == "closed":
        assert (decision.action, decision.message) == (Action.BLOCK, "Try later.")
    else:
        assert (decision.action, decision.message) == (Action.ALLOW, None)
    # The other stage has the other mode.
    flipped = evaluate(pol, Stage(other), None, error="boom")
    assert flipped.action is (Action.ALLOW if mode == "closed" else Action.BLOCK)
    assert flipped.error == "boom"


def test_error_wins_over_a_verdict_and_keeps_it() -> None:
    pol = policy({"id": "all", "stage": "prompt", "action": "allow"})
    decision = evaluate(pol, PROMPT, P_SAFE, error="parse failed")
    assert (decision.rule_id, decision.action, decision.verdict) == (
        "failure",
        Action.BLOCK,
        P_SAFE,
    )
    assert decision.message == DEFAULT_BLOCK_MESSAGE


def test_evaluate_rejects_misuse() -> None:
    pol = policy()
    with pytest.raises(ConfigurationError, match="needs a verdict"):
        evaluate(pol, PROMPT, None)
    with pytest.raises(ConfigurationError, match="response verdict"):
        evaluate(pol, PROMPT, verdict(RESPONSE))
    assert evaluate(pol, "prompt", P_SAFE).stage is PROMPT


def test_compiled_plan_does_not_change_equality() -> None:
    a = policy(rule(PROMPT, {"levels": ["Unsafe"]}))
    b = policy(rule(PROMPT, {"levels": ["Unsafe"]}))
    evaluate(a, PROMPT, P_UNSAFE)
    assert a == b
    assert hash(a) == hash(b)
    assert a != policy(rule(PROMPT, {"levels": ["Safe"]}))


def test_model_copy_with_update_revalidates_and_recompiles() -> None:
    base = policy(rule(PROMPT, {"levels": ["Unsafe"]}), audit={"sink": "stdout"})
    assert evaluate(base, PROMPT, P_SAFE).action is Action.ALLOW  # compiles base
    stricter = base.model_copy(update={"defaults": {"prompt": "block", "response": "allow"}})
    assert evaluate(stricter, PROMPT, P_SAFE).action is Action.BLOCK
    assert stricter.content_hash != base.content_hash
    assert stricter.audit.sink == "stdout"
    with pytest.raises(ValidationError, match="duplicate rule id"):
        base.model_copy(update={"rules": [rule(PROMPT), rule(RESPONSE)]})
    assert base.model_copy() == base


# ------------------------------------------------------- the shipped policies' behaviour


def test_unnecessary_refusal_is_flagged_and_retried() -> None:
    pol = Policy.default()
    refusal = verdict(RESPONSE, SAFE, refusal=True)
    decision = evaluate(pol, RESPONSE, refusal, prompt_verdict=P_SAFE)
    assert (decision.rule_id, decision.action) == ("unnecessary-refusal", Action.FLAG)
    assert decision.flags == ("unnecessary_refusal",)
    assert decision.retry is not None
    assert decision.retry.max_attempts == 1
    assert "Answer it directly" in decision.retry.instruction
    # A refusal of an unsafe or unchecked prompt is not unnecessary.
    controversial_prompt = verdict(PROMPT, CONTROVERSIAL)
    assert (
        evaluate(pol, RESPONSE, refusal, prompt_verdict=controversial_prompt).rule_id == "default"
    )
    assert evaluate(pol, RESPONSE, refusal).rule_id == "default"
    answered = verdict(RESPONSE, SAFE, refusal=False)
    assert evaluate(pol, RESPONSE, answered, prompt_verdict=P_SAFE).rule_id == "default"


DEFAULT_CASES = [
    (PROMPT, verdict(PROMPT, SAFE), "default", Action.ALLOW),
    (PROMPT, verdict(PROMPT, UNSAFE, Category.VIOLENT), "block-unsafe-prompt", Action.BLOCK),
    (PROMPT, verdict(PROMPT, CONTROVERSIAL, Category.JAILBREAK), "block-jailbreak", Action.BLOCK),
    (PROMPT, verdict(PROMPT, UNSAFE, Category.JAILBREAK), "block-jailbreak", Action.BLOCK),
    (
        PROMPT,
        verdict(PROMPT, CONTROVERSIAL, Category.PII),
        "flag-controversial-prompt",
        Action.FLAG,
    ),
    (RESPONSE, verdict(RESPONSE, SAFE, refusal=False), "default", Action.ALLOW),
    (RESPONSE, verdict(RESPONSE, UNSAFE, Category.VIOLENT), "block-unsafe-response", Action.BLOCK),
    (
        RESPONSE,
        verdict(RESPONSE, CONTROVERSIAL, Category.SUICIDE_SELF_HARM),
        "support-self-harm",
        Action.REWRITE,
    ),
    (
        RESPONSE,
        verdict(RESPONSE, CONTROVERSIAL, Category.POLITICALLY_SENSITIVE),
        "flag-controversial-response",
        Action.FLAG,
    ),
]


@pytest.mark.parametrize(("stage", "checked", "rule_id", "action"), DEFAULT_CASES)
def test_default_policy_decisions(
    stage: Stage, checked: Verdict, rule_id: str, action: Action
) -> None:
    decision = evaluate(Policy.default(), stage, checked, prompt_verdict=P_SAFE)
    assert (decision.rule_id, decision.action) == (rule_id, action)


def test_default_policy_settings() -> None:
    pol = Policy.default()
    assert (pol.failure.prompt, pol.failure.response) == ("closed", "closed")
    assert (pol.audit.sink, pol.audit.content, pol.audit.path) == (
        "jsonl",
        "hash",
        "guardrail-audit.jsonl",
    )
    assert pol.block.message == DEFAULT_BLOCK_MESSAGE
    rewrite = evaluate(pol, RESPONSE, verdict(RESPONSE, CONTROVERSIAL, Category.SUICIDE_SELF_HARM))
    assert rewrite.rewrite is not None
    assert rewrite.rewrite.mode is RewriteMode.TEMPLATE
    assert evaluate(pol, PROMPT, None, error="down").action is Action.BLOCK


def test_strict_policy_decisions() -> None:
    pol = load_policy(POLICIES / "strict.yaml")
    assert pol.execution.mode == "sequential"
    assert pol.controversial is ControversialMode.STRICT
    assert evaluate(pol, PROMPT, verdict(PROMPT, CONTROVERSIAL)).action is Action.BLOCK
    doubtful = verdict(
        PROMPT, SAFE, level_probs={"Safe": 0.6, "Unsafe": 0.35, "Controversial": 0.05}
    )
    assert evaluate(pol, PROMPT, doubtful).rule_id == "block-doubtful-prompt"
    # Without probabilities the probability rule never matches.
    assert evaluate(pol, PROMPT, verdict(PROMPT, SAFE)).rule_id == "default"
    for level in (UNSAFE, CONTROVERSIAL):
        decision = evaluate(pol, RESPONSE, verdict(RESPONSE, level))
        assert decision.action is Action.REWRITE
        assert decision.rewrite is not None
        assert (decision.rewrite.mode, decision.rewrite.max_attempts) == (RewriteMode.REGENERATE, 2)
    for stage in Stage:
        assert evaluate(pol, stage, None, error="down").action is Action.BLOCK


def test_monitor_policy_never_blocks() -> None:
    pol = load_policy(POLICIES / "monitor.yaml")
    assert pol.audit.content == "full"
    for stage in Stage:
        for level in SafetyLevel:
            for category in (None, Category.JAILBREAK, Category.VIOLENT):
                cats = (category,) if category else ()
                for refusal in (None, True, False) if stage is RESPONSE else (None,):
                    decision = evaluate(
                        pol,
                        stage,
                        verdict(stage, level, *cats, refusal=refusal),
                        prompt_verdict=P_SAFE,
                    )
                    assert decision.action in (Action.ALLOW, Action.FLAG)
        failed = evaluate(pol, stage, None, error="down")
        assert (failed.action, failed.flags) == (Action.ALLOW, ("guard_error",))
    flagged = evaluate(pol, PROMPT, verdict(PROMPT, CONTROVERSIAL))
    assert flagged.flags == ("unsafe_prompt",)


# ---------------------------------------------------------------- shipped files, schema


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policies_validate(name: str) -> None:
    path = POLICIES / f"{name}.yaml"
    pol = load_policy(path)
    assert pol.name == name
    assert pol.version == 1
    assert pol.source == str(path)
    assert pol.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    text = path.read_text()
    # Defaults are spelled out in every shipped file, not left implicit.
    assert yaml.safe_load(text)["defaults"] == {"prompt": "allow", "response": "allow"}
    assert any(r.flag == "unnecessary_refusal" for r in pol.rules_for(RESPONSE))


PACKAGED_DEFAULT = Path(guardrail.policy.__file__).resolve().parent / "default.yaml"


def test_packaged_default_is_the_default_policy() -> None:
    raw = resources.files("guardrail.policy").joinpath("default.yaml").read_bytes()
    builtin = Policy.default()
    # The strict loader (duplicate keys, located errors) accepts the packaged file
    # and reads the same policy as Policy.default().
    strict = load_policy_text(raw, "<default policy>")
    assert builtin == strict
    assert builtin.name == "default"
    assert builtin.content_hash == strict.content_hash == hashlib.sha256(raw).hexdigest()
    assert builtin.source == "<default policy>"
    assert Policy.default() is builtin
    assert default_policy() is builtin
    assert raw.decode("utf-8") == DEFAULT_POLICY_TEXT == guardrail.policy.DEFAULT_POLICY_TEXT


def test_policies_default_yaml_is_the_packaged_file() -> None:
    shipped = POLICIES / "default.yaml"
    # One copy: policies/default.yaml links to the file shipped in the package.
    assert shipped.resolve() == PACKAGED_DEFAULT
    assert shipped.read_bytes() == PACKAGED_DEFAULT.read_bytes()
    from_file = load_policy(shipped)
    assert from_file == Policy.default()
    assert from_file.content_hash == Policy.default().content_hash


IMPORT_READS_NO_FILE = """
import json, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith("default.yaml"):
        opened.append(args[0])
sys.addaudithook(hook)
import guardrail, guardrail.policy, guardrail.policy.loader, guardrail.policy.schema
at_import = list(opened)
text = guardrail.policy.DEFAULT_POLICY_TEXT
print(json.dumps([at_import, len(opened), text.startswith("# guardrail policy")]))
"""


def test_importing_the_policy_package_reads_no_file() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_READS_NO_FILE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    at_import, opened_after, is_policy = json.loads(result.stdout)
    assert at_import == []
    # The hook does see the read once the text is asked for.
    assert opened_after == 1
    assert is_policy


def test_unknown_policy_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'DEFAULT_POLICY'"):
        _ = guardrail.policy.DEFAULT_POLICY
    with pytest.raises(AttributeError, match="has no attribute 'NOPE'"):
        _ = guardrail.policy.loader.NOPE


def test_default_policy_text_is_still_reachable_from_the_loader() -> None:
    assert guardrail.policy.loader.DEFAULT_POLICY_TEXT == DEFAULT_POLICY_TEXT


def test_provenance_and_content_hash() -> None:
    text = "version: 1\nname: p\n"
    loaded = load_policy_text(text)
    assert loaded.source == "<string>"
    assert loaded.content_hash == hashlib.sha256(text.encode()).hexdigest()
    assert load_policy_text(text.encode(), "x.yaml").source == "x.yaml"
    built = Policy(version=1, name="p")
    assert built.source is None
    assert len(built.content_hash) == 64
    assert built.content_hash == Policy(version=1, name="p").content_hash
    assert built.content_hash != Policy(version=1, name="q").content_hash
    # Comments change the file hash, not the meaning.
    commented = load_policy_text("# hello\n" + text)
    assert commented == loaded
    assert commented.content_hash != loaded.content_hash


def test_probability_names_follow_the_enums() -> None:
    expected = {lv.value for lv in SafetyLevel} | {c.value for c in Category} | {"Refusal"}
    assert set(get_args(ProbabilityName)) == expected == PROBABILITY_NAMES


def test_json_schema_export() -> None:
    schema = policy_json_schema()
    again = json.loads(json.dumps(schema))
    assert again == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "guardrail policy"
    assert "do not match verdicts without probabilities" in schema["description"]
    assert set(schema["properties"]) == set(Policy.model_fields)
    assert schema["required"] == ["version", "name"]
    assert schema["additionalProperties"] is False
    telemetry = schema["$defs"]["TelemetryConfig"]
    assert telemetry["additionalProperties"] is False
    assert telemetry["properties"]["otel"] == {
        "default": False,
        "description": telemetry["properties"]["otel"]["description"],
        "title": "Otel",
        "type": "boolean",
    }
    assert "guardrail[otel]" in telemetry["properties"]["otel"]["description"]
    conditions = schema["$defs"]["Conditions"]
    assert conditions["additionalProperties"] is False
    described = " ".join(conditions["properties"]["min_probability"]["description"].split())
    assert "Does NOT match when the verdict carries no probabilities" in described


def test_python_construction_is_validated_too() -> None:
    dup = {"id": "a", "stage": "prompt", "action": "block"}
    with pytest.raises(ValidationError, match="duplicate rule id 'a'"):
        policy(dup, dup)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        policy(rule(PROMPT, {"levls": ["Unsafe"]}))


def test_format_field_path() -> None:
    assert format_field_path(("rules", 2, "when", "levels", 0)) == "rules[2].when.levels[0]"
    assert format_field_path(("x", "Suicide & Self-Harm")) == "x['Suicide & Self-Harm']"
    assert format_field_path(()) == ""


def test_decision_is_a_types_decision() -> None:
    assert isinstance(evaluate(Policy.default(), PROMPT, P_SAFE), Decision)


# ------------------------------------------------------------------ loader: errors

RULE = """\
version: 1
name: test
rules:
  - id: first
    stage: prompt
    action: block
"""

# (id, yaml, line, column, field, message)
LOADER_ERRORS: list[tuple[str, str, int | None, int | None, str | None, str]] = [
    (
        "unknown key nested in a rule",
        RULE + "  - id: second\n    stage: prompt\n    when:\n      levls: [Unsafe]\n"
        "    action: block\n",
        10,
        7,
        "rules[1].when.levls",
        "unknown key 'levls'; did you mean 'levels'?",
    ),
    (
        "condition outside when",
        RULE + "    levels: [Unsafe]\n",
        7,
        5,
        "rules[0].levels",
        "unknown key 'levels'; conditions go under 'when:' (when: {levels: ...})",
    ),
    (
        "unknown top-level key without a close match",
        "version: 1\nname: test\nzzz: 1\n",
        3,
        1,
        "zzz",
        "unknown key 'zzz'; expected one of: version, name, description, guard, controversial, "
        "reasoning, include_system, execution, failure, block, streaming, audit, telemetry, "
        "client, reward, rules, "
        "defaults",
    ),
    (
        "wrong type",
        "version: 1\nname: test\nstreaming:\n  chunk_chars: '400'\n",
        4,
        16,
        "streaming.chunk_chars",
        "expected an integer, got the text '400' (remove the quotes)",
    ),
    (
        "boolean where text belongs",
        "version: 1\nname: yes\n",
        2,
        7,
        "name",
        "expected text, got the boolean true (quote it: YAML reads yes/no/on/off/true/false "
        "and numbers as non-text)",
    ),
    (
        "text where a list belongs",
        RULE + "    when: {levels: Unsafe}\n",
        7,
        20,
        "rules[0].when.levels",
        "expected a list, got the text 'Unsafe' (write [Unsafe] for a list of one)",
    ),
    (
        "bad enum value",
        RULE + "    when:\n      levels: [Unsafe, unsafe]\n",
        8,
        24,
        "rules[0].when.levels[1]",
        "invalid value 'unsafe'; did you mean 'Unsafe'? (expected one of: Safe, Unsafe, "
        "Controversial)",
    ),
    (
        "bad action",
        "version: 1\nname: test\nrules:\n  - {id: a, stage: prompt, action: deny}\n",
        4,
        36,
        "rules[0].action",
        "invalid value 'deny'; expected one of: allow, block, rewrite, flag",
    ),
    (
        "None is not a category",
        RULE + "    when: {categories: [None]}\n",
        7,
        25,
        "rules[0].when.categories[0]",
        "'None' is not a category; to match verdicts without one use 'no_category: true'",
    ),
    (
        "bad probability name",
        RULE + "    when:\n      min_probability: {Unsfe: 0.5}\n",
        8,
        25,
        "rules[0].when.min_probability.Unsfe",
        "invalid name 'Unsfe'; did you mean 'Unsafe'? (expected one of: Safe, Unsafe, "
        "Controversial, Violent, Non-violent Illegal Acts, Sexual Content or Sexual Acts, PII, "
        "Suicide & Self-Harm, Unethical Acts, Politically Sensitive Topics, Copyright "
        "Violation, Jailbreak, Refusal)",
    ),
    (
        "probability out of range",
        RULE + "    when:\n      max_probability: {'Suicide & Self-Harm': 1.5}\n",
        8,
        48,
        "rules[0].when.max_probability['Suicide & Self-Harm']",
        "must be <= 1.0, got 1.5",
    ),
    (
        "duplicate rule id",
        RULE + "  - id: first\n    stage: response\n    action: flag\n",
        7,
        9,
        "rules[1].id",
        "duplicate rule id 'first' (already used by rules[0])",
    ),
    (
        "reserved rule id",
        "version: 1\nname: test\nrules:\n  - {id: default, stage: prompt, action: block}\n",
        4,
        10,
        "rules[0].id",
        "'default' is reserved for the decisions guardrail makes itself (default, failure); "
        "pick another id",
    ),
    (
        "bad rule id",
        "version: 1\nname: test\nrules:\n  - {id: 'no spaces', stage: prompt, action: block}\n",
        4,
        10,
        "rules[0].id",
        "'no spaces' may contain only letters, digits, '_', '.' and '-'",
    ),
    (
        "rewrite mode does not fit the stage",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: prompt\n    action: rewrite\n"
        "    rewrite:\n      mode: template\n      text: Sorry.\n",
        8,
        13,
        "rules[0].rewrite.mode",
        "'template' does not apply to prompt rules; use add_instruction or replace",
    ),
    (
        "rewrite mode does not fit the response stage",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: response\n    action: rewrite\n"
        "    rewrite: {mode: add_instruction, text: Be safe.}\n",
        7,
        21,
        "rules[0].rewrite.mode",
        "'add_instruction' does not apply to response rules; use template or regenerate",
    ),
    (
        "rewrite action without rewrite",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: prompt\n    action: rewrite\n",
        4,
        5,
        "rules[0].rewrite",
        "required when action is 'rewrite'",
    ),
    (
        "rewrite on a block rule",
        RULE + "    rewrite: {mode: replace, text: x}\n",
        7,
        14,
        "rules[0].rewrite",
        "only used when action is 'rewrite' (this rule's action is 'block')",
    ),
    (
        "max_attempts outside regenerate",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: response\n    action: rewrite\n"
        "    rewrite: {mode: template, text: x, max_attempts: 2}\n",
        7,
        54,
        "rules[0].rewrite.max_attempts",
        "only used with mode 'regenerate'",
    ),
    (
        "max_attempts as text",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: response\n    action: rewrite\n"
        "    rewrite: {mode: regenerate, text: x, max_attempts: '2'}\n",
        7,
        56,
        "rules[0].rewrite.max_attempts",
        "expected an integer, got the text '2'",
    ),
    (
        "misspelt rewrite key",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: response\n    action: rewrite\n"
        "    rewrite: {mode: template, txt: x}\n",
        7,
        31,
        "rules[0].rewrite.txt",
        "unknown key 'txt'; did you mean 'text'?",
    ),
    (
        "refusal on a prompt rule",
        RULE + "    when:\n      levels: [Safe]\n      refusal: true\n",
        9,
        16,
        "rules[0].when.refusal",
        "only applies to response rules",
    ),
    (
        "prompt_levels on a prompt rule",
        RULE + "    when: {prompt_levels: [Safe]}\n",
        7,
        27,
        "rules[0].when.prompt_levels",
        "only applies to response rules",
    ),
    (
        "Refusal probability on a prompt rule",
        RULE + "    when: {min_probability: {Refusal: 0.5}}\n",
        7,
        39,
        "rules[0].when.min_probability.Refusal",
        "P(Refusal) is judged only on responses; only response rules can use it",
    ),
    (
        "Jailbreak on a response rule",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: response\n    action: block\n"
        "    when: {categories: [PII, Jailbreak]}\n",
        7,
        30,
        "rules[0].when.categories[1]",
        "Jailbreak is judged only on prompts: a response rule with it never matches",
    ),
    (
        "retry on a prompt rule",
        RULE.replace("block", "flag") + "    retry: {instruction: again}\n",
        7,
        12,
        "rules[0].retry",
        "only applies to response rules",
    ),
    (
        "retry on a block rule",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: response\n    action: block\n"
        "    retry: {instruction: again}\n",
        7,
        12,
        "rules[0].retry",
        "only used with action 'flag' or 'allow' (this rule's action is 'block'); to retry "
        "before blocking use rewrite: {mode: regenerate}",
    ),
    (
        "message on a flag rule",
        RULE.replace("block", "flag") + "    message: hi\n",
        7,
        14,
        "rules[0].message",
        "only used by block rules (this rule's action is 'flag')",
    ),
    (
        "categories and no_category",
        RULE + "    when: {categories: [PII], no_category: true}\n",
        7,
        44,
        "rules[0].when.no_category",
        "a verdict cannot both have no category and one of 'categories'; keep only one of the two",
    ),
    (
        "min above max",
        RULE + "    when: {min_probability: {Unsafe: 0.9}, max_probability: {Unsafe: 0.5}}\n",
        7,
        70,
        "rules[0].when.max_probability.Unsafe",
        "is below min_probability 0.9 for 'Unsafe': the rule can never match",
    ),
    (
        "empty levels",
        RULE + "    when: {levels: []}\n",
        7,
        20,
        "rules[0].when.levels",
        "must not be empty (remove the key to leave it unset)",
    ),
    (
        "missing required key",
        "version: 1\nname: test\nrules:\n  - id: a\n    action: block\n",
        4,
        5,
        "rules[0].stage",
        "required key is missing",
    ),
    (
        "empty when",
        RULE + "    when:\n",
        7,
        5,
        "rules[0].when",
        "expected a mapping (key: value), got nothing (an empty value) (fill in the value or "
        "remove the key)",
    ),
    (
        "YAML syntax error",
        "version: 1\nname: test\nrules:\n  - id: a\n    stage: [prompt\n",
        6,
        1,
        None,
        "invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow "
        "sequence at line 5)",
    ),
    (
        "tab indentation",
        "version: 1\nname: test\nguard:\n\tmodel: x\n",
        4,
        1,
        None,
        "invalid YAML: found character '\\t' that cannot start any token (while scanning for "
        "the next token); indent with spaces, YAML does not allow tabs",
    ),
    (
        "duplicate YAML key",
        "version: 1\nname: test\nguard:\n  model: a\n  backend: local\n  model: b\n",
        6,
        3,
        "guard.model",
        "duplicate key 'model' (first given at line 4); YAML would silently keep only the last one",
    ),
    (
        "duplicate YAML key in a rule",
        RULE + "    action: flag\n",
        7,
        5,
        "rules[0].action",
        "duplicate key 'action' (first given at line 6); "
        "YAML would silently keep only the last one",
    ),
    (
        "non-text key",
        "version: 1\nname: test\nguard:\n  on: 1\n",
        4,
        3,
        "guard",
        "keys must be text, but YAML reads 'on' as a boolean (quote it)",
    ),
    (
        "wrong version",
        "version: 2\nname: test\n",
        1,
        10,
        "version",
        "unsupported policy version 2; this guardrail reads version 1",
    ),
    (
        "version as text",
        "name: test\nversion: '1'\n",
        2,
        10,
        "version",
        "expected the integer 1, got the text '1'",
    ),
    (
        "missing version",
        "name: test\nrules: []\n",
        1,
        1,
        "version",
        "missing; a policy starts with 'version: 1'",
    ),
    (
        "empty file",
        "# just a comment\n",
        1,
        1,
        None,
        "the policy is empty; it needs at least 'version: 1', a 'name' and rules",
    ),
    (
        "top level is a list",
        "- version: 1\n",
        1,
        1,
        None,
        "the top level must be a mapping of keys (version, name, rules...), not a list",
    ),
    (
        "remote backend without base_url",
        "version: 1\nname: test\nguard:\n  backend: remote\n  model: my-guard\n",
        4,
        3,
        "guard.base_url",
        "required when backend is 'remote' (e.g. http://localhost:8000/v1)",
    ),
    (
        "remote base_url that is not a URL",
        "version: 1\nname: test\nguard: {backend: remote, base_url: localhost:8000}\n",
        3,
        36,
        "guard.base_url",
        "'localhost:8000' is not an http:// or https:// URL (e.g. http://localhost:8000/v1)",
    ),
    (
        "device on a remote guard",
        "version: 1\nname: test\nguard: {backend: remote, base_url: 'http://g/v1', device: cuda}\n",
        3,
        59,
        "guard.device",
        "only used with backend 'local' (a remote server loads its own model)",
    ),
    (
        "base_url on a local guard",
        "version: 1\nname: test\nguard:\n  base_url: http://localhost:8000/v1\n",
        4,
        13,
        "guard.base_url",
        "only used with backend 'remote' (set backend: remote to use a server)",
    ),
    (
        "an API key in api_key_env",
        "version: 1\nname: test\nguard:\n  backend: remote\n  base_url: http://g/v1\n"
        "  api_key_env: sk-abc123\n",
        6,
        16,
        "guard.api_key_env",
        "'sk-abc123' is not an environment variable name; give the NAME of the variable that "
        "holds the key, never the key itself",
    ),
    (
        "audit path with the stdout sink",
        "version: 1\nname: test\naudit:\n  sink: stdout\n  path: audit.jsonl\n",
        5,
        9,
        "audit.path",
        "only used with sink 'jsonl' (this sink is 'stdout')",
    ),
    (
        "negative timeout",
        "version: 1\nname: test\nexecution: {timeout_s: -1}\n",
        3,
        24,
        "execution.timeout_s",
        "must be > 0.0, got -1",
    ),
    (
        "several errors: the first in the file is reported",
        "version: 1\nname: test\nfoo: 1\nbar: 2\nblock: {behavior: explode}\n",
        3,
        1,
        "foo",
        "unknown key 'foo'; expected one of: version, name, description, guard, controversial, "
        "reasoning, include_system, execution, failure, block, streaming, audit, telemetry, "
        "client, reward, rules, "
        "defaults (+2 more errors)",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "field", "message"),
    [case[1:] for case in LOADER_ERRORS],
    ids=[case[0] for case in LOADER_ERRORS],
)
def test_loader_error(
    text: str, line: int | None, column: int | None, field: str | None, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    err = info.value
    assert (err.source, err.line, err.column, err.field, err.reason) == (
        "p.yaml",
        line,
        column,
        field,
        message,
    )
    where = f"p.yaml:{line}:{column}: " + (f"{field}: " if field else "")
    assert str(err) == where + message


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(PolicyError, match="too large or too deeply nested"):
        load_policy_text("version: 1\nname: &a [*a]\n")


def test_anchors_and_merge_keys_work() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        name: anchors
        rules:
          - &base
            id: one
            stage: prompt
            when: {levels: [Unsafe]}
            action: block
          - <<: *base
            id: two
            stage: response
          - <<: *base
            id: three
            levls: [Safe]
        """
    )
    with pytest.raises(PolicyError) as info:
        load_policy_text(text)
    assert (info.value.line, info.value.field) == (14, "rules[2].levls")
    pol = load_policy_text(text.replace("    levls: [Safe]\n", ""))
    assert [(r.id, r.stage) for r in pol.rules] == [
        ("one", PROMPT),
        ("two", RESPONSE),
        ("three", PROMPT),
    ]


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert info.value.source == str(missing)
    assert str(info.value) == f"{missing}: cannot read the policy file: No such file or directory"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_policy(latin)
    assert (info.value.line, info.value.column, info.value.reason) == (
        2,
        10,
        "the file is not UTF-8 text",
    )


def test_load_policy_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(RULE, encoding="utf-8")
    pol = load_policy(str(path))
    assert (pol.name, pol.source, [r.id for r in pol.rules]) == ("test", str(path), ["first"])


# ------------------------------------------------------------------ module structure

POLICY_PACKAGE = Path(guardrail.policy.__file__).resolve().parent


def package_imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of the same package it imports.

    Every import statement counts: at module level, inside functions and under
    ``TYPE_CHECKING``. ``from package import name`` imports the package's
    ``__init__`` (and the module ``name`` when there is one); importing
    ``package.mod`` counts as importing ``mod`` only, as its package is initialised
    before any of its modules.
    """
    stems = sorted(p.stem for p in package_dir.glob("*.py"))
    names = {stem: package if stem == "__init__" else f"{package}.{stem}" for stem in stems}
    modules = set(names.values())
    graph: dict[str, set[str]] = {}
    for stem, me in names.items():
        tree = ast.parse((package_dir / f"{stem}.py").read_text(encoding="utf-8"))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = me if stem == "__init__" else me.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[me] = {t for t in targets if t in modules and t != me}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None if it has none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, [*path, node])
            if found is not None:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found is not None:
            return found
    return None


def test_find_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": set(), "a": {"a"}}) == ["a", "a"]


def test_package_imports_counts_every_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("from pkg.low import thing\n")
    (tmp_path / "low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.high import X\n"
        "def f():\n    from . import mid\n"
    )
    (tmp_path / "mid.py").write_text("import pkg.low\nfrom pkg import thing\n")
    (tmp_path / "high.py").write_text("from .low import thing\nimport os\n")
    graph = package_imports(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.low"},
        "pkg.low": {"pkg", "pkg.high", "pkg.mid"},
        "pkg.mid": {"pkg", "pkg.low"},
        "pkg.high": {"pkg.low"},
    }
    assert find_cycle(graph) == ["pkg", "pkg.low", "pkg"]


def test_policy_modules_import_without_a_circle() -> None:
    graph = package_imports(POLICY_PACKAGE, "guardrail.policy")
    assert {"guardrail.policy.schema", "guardrail.policy.loader"} <= set(graph)
    for module in graph:
        importlib.import_module(module)
    assert find_cycle(graph) is None
    # The models sit below the loader and its error wording.
    for models in ("schema", "fields", "backends", "handling", "rules"):
        assert "guardrail.policy.loader" not in graph[f"guardrail.policy.{models}"]
        assert "guardrail.policy.humanize" not in graph[f"guardrail.policy.{models}"]
