"""A policy's rules: the conditions on a verdict, and the action a matching rule takes.

Rules are checked as a whole when validated: a condition a rule's stage can never
see (``refusal`` on a prompt rule, ``Jailbreak`` on a response rule), a rewrite
mode that does not apply to the stage, or thresholds that can never all hold are
errors, located at the sub-field they are about.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator

from guardrail.policy.fields import FieldValueError, Label, Probability, Score, StrictModel, Text
from guardrail.types import (
    Action,
    Category,
    Retry,
    Rewrite,
    RewriteMode,
    SafetyLevel,
    Stage,
)

__all__ = [
    "PROBABILITY_NAMES",
    "RESERVED_RULE_IDS",
    "Conditions",
    "ProbabilityName",
    "Rule",
    "RuleRetry",
    "RuleRewrite",
]

RESERVED_RULE_IDS = frozenset({"default", "failure"})
"""Rule ids that :func:`~guardrail.policy.evaluate.evaluate` uses for its own decisions."""

ProbabilityName = Literal[
    "Safe",
    "Unsafe",
    "Controversial",
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
    "Refusal",
]
"""What a probability threshold can name: a safety level, a category, or ``Refusal``
(P(Refusal: Yes), response rules only). Kept in step with the enums by a test."""

PROBABILITY_NAMES: frozenset[str] = frozenset(get_args(ProbabilityName))


class Conditions(StrictModel):
    """When a rule applies. Every condition given must hold; a list means "any of".

    No conditions (or no ``when``) matches every verdict of the rule's stage.
    Conditions on data a verdict may lack (probabilities, refusal, reward, the
    prompt's verdict) do NOT match when that data is missing.
    """

    levels: tuple[SafetyLevel, ...] | None = Field(default=None, min_length=1)
    """The verdict's safety level is one of these."""
    unsafe: StrictBool | None = None
    """Shorthand: ``true`` matches verdicts that count as unsafe under the policy's
    ``controversial`` reading (strict: Unsafe or Controversial; loose: Unsafe only);
    ``false`` matches the others."""
    categories: tuple[Category, ...] | None = Field(default=None, min_length=1)
    """One of the verdict's categories is one of these. ``None`` is not a category:
    use ``no_category``."""
    no_category: StrictBool | None = None
    """``true``: the verdict has no category (``Categories: None``); ``false``: it has one."""
    refusal: StrictBool | None = None
    """Response rules only: the guard judged the answer a refusal (``true``) or not
    (``false``). Does not match when the verdict has no refusal judgement."""
    prompt_levels: tuple[SafetyLevel, ...] | None = Field(default=None, min_length=1)
    """Response rules only: the PROMPT's safety level is one of these. Does not match
    when the prompt was not checked."""
    min_probability: dict[ProbabilityName, Probability] | None = Field(default=None, min_length=1)
    """P(name) >= threshold for every entry, e.g. ``{Unsafe: 0.8}``. Names are safety
    levels (P of that level), categories (P of that category) or ``Refusal``
    (P(Refusal: Yes), response rules only). Does NOT match when the verdict carries no
    probabilities (a remote guard without logprobs)."""
    max_probability: dict[ProbabilityName, Probability] | None = Field(default=None, min_length=1)
    """P(name) <= threshold for every entry; same names as ``min_probability``. Does
    NOT match when the verdict carries no probabilities."""
    reward_above: Score | None = None
    """Response rules only: the reward score is > this value. Does not match when no
    reward was computed."""
    reward_below: Score | None = None
    """Response rules only: the reward score is < this value. Does not match when no
    reward was computed."""

    @model_validator(mode="after")
    def _check_consistent(self) -> Conditions:
        if self.no_category is True and self.categories is not None:
            raise FieldValueError(
                "a verdict cannot both have no category and one of 'categories'; "
                "keep only one of the two",
                "no_category",
            )
        if self.min_probability and self.max_probability:
            for name, high in self.max_probability.items():
                low = self.min_probability.get(name)
                if low is not None and low > high:
                    raise FieldValueError(
                        f"is below min_probability {low} for {name!r}: the rule can never match",
                        "max_probability",
                        name,
                    )
        if (
            self.reward_above is not None
            and self.reward_below is not None
            and self.reward_above >= self.reward_below
        ):
            raise FieldValueError(
                f"must be greater than reward_above ({self.reward_above}): "
                "the rule can never match",
                "reward_below",
            )
        return self

    def response_only(self) -> tuple[tuple[str, ...], ...]:
        """Paths of the response-only conditions used here (empty if all suit prompts)."""
        used: list[tuple[str, ...]] = [
            (name,)
            for name in ("refusal", "prompt_levels", "reward_above", "reward_below")
            if getattr(self, name) is not None
        ]
        for name in ("min_probability", "max_probability"):
            thresholds = getattr(self, name)
            if thresholds and "Refusal" in thresholds:
                used.append((name, "Refusal"))
        return tuple(used)


def _check_max_attempts(data: Any) -> Any:
    # The types.py models coerce ("2" -> 2, true -> 1); a policy file must not.
    if isinstance(data, dict):
        value = data.get("max_attempts")
        if value is not None and type(value) is not int:
            got = f"the text {value!r}" if isinstance(value, str) else repr(value)
            raise FieldValueError(f"expected an integer, got {got}", "max_attempts")
    return data


class RuleRewrite(Rewrite):
    """A rule's rewrite: how the prompt or the response is changed.

    Prompt rules: ``add_instruction`` (prepend a safety system message with ``text``)
    or ``replace`` (replace the last user message with ``text``). Response rules:
    ``template`` (replace the answer with ``text``) or ``regenerate`` (ask the
    upstream again with the instruction ``text``, every attempt re-checked, up to
    ``max_attempts``, then block).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, title="Rewrite"
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_attempts(cls, data: Any) -> Any:
        return _check_max_attempts(data)

    @field_validator("text")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class RuleRetry(Retry):
    """Ask the upstream once more with ``instruction`` and re-check the new answer.

    Response rules only; the typical use is recovering an unnecessary refusal.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, title="Retry"
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_attempts(cls, data: Any) -> Any:
        return _check_max_attempts(data)

    @field_validator("instruction")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


_REWRITE_MODES = {
    Stage.PROMPT: (RewriteMode.ADD_INSTRUCTION, RewriteMode.REPLACE),
    Stage.RESPONSE: (RewriteMode.TEMPLATE, RewriteMode.REGENERATE),
}


class Rule(StrictModel):
    """One rule: on ``stage``, when ``when`` holds, take ``action``.

    Rules are tried in file order and the first match of the stage decides.
    """

    id: Label
    """Unique id, recorded in every decision the rule makes (letters, digits, ``_.-``)."""
    description: StrictStr = ""
    """Why the rule exists; recorded as the decision's reason."""
    stage: Stage
    """``prompt`` (the user's request) or ``response`` (the model's answer)."""
    when: Conditions = Conditions()
    """The conditions; omitted, the rule matches every verdict of its stage."""
    action: Action
    """``allow``, ``block``, ``rewrite`` (needs ``rewrite``) or ``flag`` (let through
    with a label)."""
    message: Text | None = None
    """Block rules only: the text of the blocked call, instead of ``block.message``."""
    rewrite: RuleRewrite | None = None
    """Required when ``action`` is ``rewrite``, and only then."""
    retry: RuleRetry | None = None
    """Response rules with action ``flag`` or ``allow`` only: ask the upstream again with
    an instruction (re-checked), e.g. after an unnecessary refusal."""
    flag: Label | None = None
    """A label added to the decision's flags; flag rules default to their ``id``."""

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_RULE_IDS:
            raise ValueError(
                f"{value!r} is reserved for the decisions guardrail makes itself "
                "(default, failure); pick another id"
            )
        return value

    @model_validator(mode="after")
    def _check_rule(self) -> Rule:
        stage, action = self.stage, self.action
        if action is Action.REWRITE and self.rewrite is None:
            raise FieldValueError("required when action is 'rewrite'", "rewrite")
        if self.rewrite is not None:
            if action is not Action.REWRITE:
                raise FieldValueError(
                    f"only used when action is 'rewrite' (this rule's action is {action.value!r})",
                    "rewrite",
                )
            allowed = _REWRITE_MODES[stage]
            mode = self.rewrite.mode
            if mode not in allowed:
                raise FieldValueError(
                    f"{mode.value!r} does not apply to {stage.value} rules; use "
                    f"{' or '.join(m.value for m in allowed)}",
                    "rewrite",
                    "mode",
                )
            if (
                mode is not RewriteMode.REGENERATE
                and "max_attempts" in self.rewrite.model_fields_set
            ):
                raise FieldValueError("only used with mode 'regenerate'", "rewrite", "max_attempts")
        if self.message is not None and action is not Action.BLOCK:
            raise FieldValueError(
                f"only used by block rules (this rule's action is {action.value!r})", "message"
            )
        if self.retry is not None:
            if stage is not Stage.RESPONSE:
                raise FieldValueError("only applies to response rules", "retry")
            if action not in (Action.FLAG, Action.ALLOW):
                raise FieldValueError(
                    f"only used with action 'flag' or 'allow' (this rule's action is "
                    f"{action.value!r}); to retry before blocking use "
                    "rewrite: {mode: regenerate}",
                    "retry",
                )
        if stage is Stage.PROMPT:
            for path in self.when.response_only():
                detail = (
                    "P(Refusal) is judged only on responses; only response rules can use it"
                    if path[-1] == "Refusal"
                    else "only applies to response rules"
                )
                raise FieldValueError(detail, "when", *path)
        else:
            for i, category in enumerate(self.when.categories or ()):
                if category is Category.JAILBREAK:
                    raise FieldValueError(
                        "Jailbreak is judged only on prompts: a response rule with it never "
                        "matches",
                        "when",
                        "categories",
                        i,
                    )
        return self

    @property
    def flag_label(self) -> str | None:
        """The label this rule adds to a decision (its ``id`` for flag rules)."""
        if self.flag is not None:
            return self.flag
        return self.id if self.action is Action.FLAG else None
