"""The case file's schema: what a policy test case says, and the verdict it stands for.

:class:`CaseFile`, :class:`Case`, :class:`Expectation` and :class:`PromptVerdict`
validate a case file's data as strictly as a policy's (unknown keys, wrong types,
values a stage never has), and build each case's :class:`~guardrail.types.Verdict`,
raw guard text read by the real parser, or the guard failure it simulates.
Reading case files and running them is :mod:`guardrail.policy.cases`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr, StrictBool, StrictStr, model_validator

from guardrail.errors import (
    CircuitOpenError,
    ClassifierError,
    GuardConnectionError,
    GuardHTTPError,
    GuardTimeoutError,
    VerdictParseError,
)
from guardrail.policy.evaluate import evaluate
from guardrail.policy.fields import FieldValueError, Label, Probability, Score, StrictModel, Text
from guardrail.policy.rules import ProbabilityName
from guardrail.policy.schema import Policy
from guardrail.qwen3guard import parse_verdict
from guardrail.types import Action, Category, Decision, SafetyLevel, Stage, Verdict

__all__ = ["Case", "CaseFile", "Expectation", "GuardFailure", "PromptVerdict"]


GuardFailure = Literal["timeout", "unparsable", "connection", "http", "circuit_open", "error"]
"""The guard failures a case can simulate; the policy's ``failure`` mode decides them all."""

_LEVEL_NAMES = frozenset(level.value for level in SafetyLevel)
# Each kind as the flow would see it: the error the backend raises.
_FAILURES: Mapping[str, ClassifierError] = {
    "timeout": GuardTimeoutError("no verdict within the check's deadline"),
    "unparsable": VerdictParseError(
        "guard output does not start with a 'Safety:' line", text="I cannot judge that."
    ),
    "connection": GuardConnectionError("the guard server could not be reached"),
    "http": GuardHTTPError("the guard server answered 503", status_code=503),
    "circuit_open": CircuitOpenError(
        "the guard's circuit breaker is open", backend="guard", state="open"
    ),
    "error": ClassifierError("the guard failed"),
}


class PromptVerdict(StrictModel):
    """The prompt's verdict, which response rules read (``prompt_levels``).

    Give ``level`` (and optionally ``categories``), or ``raw`` guard text.
    """

    level: SafetyLevel | None = None
    """The prompt's safety level."""
    categories: tuple[Category, ...] = ()
    """The prompt's categories (none by default)."""
    raw: Text | None = None
    """The guard's text for the prompt, e.g. ``"Safety: Safe\\nCategories: None"``."""

    _verdict: Verdict | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_form(self) -> PromptVerdict:
        if self.raw is not None:
            for name in ("level", "categories"):
                if name in self.model_fields_set:
                    raise FieldValueError("not used with 'raw' (the text gives it)", name)
            self._verdict = _parse_raw(self.raw, Stage.PROMPT, "raw")
        elif self.level is not None:
            self._verdict = _verdict(Stage.PROMPT, self.level, self.categories)
        else:
            raise FieldValueError("give the prompt's 'level' or its 'raw' guard text")
        return self

    @property
    def verdict(self) -> Verdict:
        """The prompt verdict this stands for."""
        assert self._verdict is not None  # set by the validator
        return self._verdict


class Expectation(StrictModel):
    """What the policy must decide for a case."""

    action: Action
    """``allow``, ``block``, ``rewrite`` or ``flag``."""
    rule: Label | None = None
    """The id of the rule that must decide (``default``: no rule matched;
    ``failure``: the stage's failure mode)."""
    not_rule: Label | None = None
    """A rule that must NOT decide: pins a near miss (a verdict just outside it)."""
    flags: tuple[Label, ...] | None = None
    """The decision's flags, exactly (in any order); ``[]``: no flag."""
    flags_include: tuple[Label, ...] | None = Field(default=None, min_length=1)
    """Flags the decision must carry, among possibly others."""

    @model_validator(mode="after")
    def _consistent(self) -> Expectation:
        if self.flags is not None and self.flags_include is not None:
            raise FieldValueError(
                "give either 'flags' (the exact set) or 'flags_include', not both",
                "flags_include",
            )
        if self.rule is not None and self.rule == self.not_rule:
            raise FieldValueError("is the same rule as 'rule': the case can never pass", "not_rule")
        return self


class Case(StrictModel):
    """One case: a verdict of ``stage`` (or a guard failure) and the expected decision.

    The verdict is given in exactly one way: structured (``level``, with optional
    ``categories``, ``refusal`` and ``probabilities``), as the guard's ``raw`` text
    (read by the real parser; ``probabilities`` may be added), or as an ``error``
    (the check failed, the policy's failure mode decides).
    """

    name: Text
    """What the case pins, shown when it fails; unique within the file."""
    stage: Stage
    """``prompt`` or ``response``: which rules decide."""
    level: SafetyLevel | None = None
    """The verdict's safety level (structured form)."""
    categories: tuple[Category, ...] = ()
    """The verdict's categories, first the primary one (none by default)."""
    refusal: StrictBool | None = None
    """Responses only: the guard judged the answer a refusal. Left out, the verdict has
    no refusal judgement, and ``refusal`` conditions do not match."""
    probabilities: dict[ProbabilityName, Probability] | None = Field(default=None, min_length=1)
    """The guard's probabilities, by the names rules use: levels, categories and
    ``Refusal`` (responses). Left out, the verdict has none (a remote guard without
    logprobs) and probability conditions do not match; a level (or category) not
    named has probability 0 once another one is."""
    raw: Text | None = None
    """The guard's output, e.g. ``"Safety: Unsafe\\nCategories: Violent"``, read by the
    protocol parser for ``stage``; text it cannot read is an error in the case file
    (to pin what unreadable guard output does, use ``error: unparsable``)."""
    error: GuardFailure | None = None
    """Instead of a verdict: the guard failed (``timeout``, ``unparsable``,
    ``connection``, ``http``, ``circuit_open``, ``error``)."""
    prompt: PromptVerdict | None = None
    """Responses only: the prompt's verdict, for ``prompt_levels`` conditions."""
    reward: Score | None = None
    """Responses only: the reward score, for ``reward_above`` / ``reward_below``."""
    expect: Expectation
    """The decision the policy must make."""

    _verdict: Verdict | None = PrivateAttr(default=None)
    _prompt_verdict: Verdict | None = PrivateAttr(default=None)
    _line: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _check_case(self) -> Case:
        given = self.model_fields_set
        forms = [name for name in ("level", "raw", "error") if name in given]
        if not forms:
            raise FieldValueError(
                "give the verdict: 'level' (structured), 'raw' (the guard's text) or "
                "'error' (the check failed)"
            )
        if len(forms) > 1:
            raise FieldValueError(
                f"give only one of 'level', 'raw' and 'error' (got {' and '.join(forms)})",
                forms[1],
            )
        form = forms[0]
        unused = {
            "raw": ("categories", "refusal"),
            "error": ("categories", "refusal", "probabilities", "prompt", "reward"),
        }.get(form, ())
        for name in unused:
            if name in given:
                raise FieldValueError(f"not used with '{form}'", name)
        if self.stage is Stage.PROMPT:
            self._check_prompt_case()
        elif Category.JAILBREAK in self.categories:
            raise FieldValueError(
                "Jailbreak is judged only on prompts",
                "categories",
                self.categories.index(Category.JAILBREAK),
            )
        self._verdict = self._build_verdict()
        if self.prompt is not None:
            self._prompt_verdict = self.prompt.verdict
        return self

    def _check_prompt_case(self) -> None:
        for name in ("refusal", "prompt", "reward"):
            if name in self.model_fields_set:
                raise FieldValueError("only applies to response cases", name)
        if self.probabilities and "Refusal" in self.probabilities:
            raise FieldValueError(
                "P(Refusal) is judged only on responses", "probabilities", "Refusal"
            )

    def _build_verdict(self) -> Verdict | None:
        if self.error is not None:
            return None
        level_probs, category_probs, refusal_probs = _split_probabilities(self.probabilities)
        if self.raw is not None:
            return _parse_raw(
                self.raw,
                self.stage,
                "raw",
                level_probs=level_probs,
                category_probs=category_probs,
                refusal_probs=refusal_probs,
            )
        assert self.level is not None  # one form is given, checked above
        return _verdict(
            self.stage,
            self.level,
            self.categories,
            refusal=self.refusal,
            level_probs=level_probs,
            category_probs=category_probs,
            refusal_probs=refusal_probs,
        )

    @property
    def verdict(self) -> Verdict | None:
        """The verdict the case gives (``None`` for an ``error`` case)."""
        return self._verdict

    @property
    def prompt_verdict(self) -> Verdict | None:
        """The prompt's verdict, for a response case that gives one."""
        return self._prompt_verdict

    @property
    def line(self) -> int:
        """The 1-based line where the case starts in its file (0 if not read from a file)."""
        return self._line

    def decide(self, policy: Policy) -> Decision:
        """The policy's decision for this case, by :func:`~guardrail.policy.evaluate`."""
        if self.error is not None:
            return evaluate(policy, self.stage, None, error=_FAILURES[self.error])
        return evaluate(
            policy,
            self.stage,
            self._verdict,
            prompt_verdict=self._prompt_verdict,
            reward=self.reward,
        )


class CaseFile(StrictModel):
    """A case file: ``version: 1`` and its cases."""

    version: Literal[1]
    """Schema version of the file; this guardrail reads version 1."""
    description: StrictStr = ""
    """What the cases are about."""
    cases: tuple[Case, ...]
    """The cases, run in order (at least one)."""

    _source: str = PrivateAttr(default="<string>")

    @model_validator(mode="after")
    def _check_cases(self) -> CaseFile:
        if not self.cases:
            raise FieldValueError("a case file needs at least one case", "cases")
        first: dict[str, int] = {}
        for i, case in enumerate(self.cases):
            if case.name in first:
                raise FieldValueError(
                    f"duplicate case name {case.name!r} "
                    f"(already used by cases[{first[case.name]}])",
                    "cases",
                    i,
                    "name",
                )
            first[case.name] = i
        return self

    @property
    def source(self) -> str:
        """Where the cases were read from (a path, or ``<string>``)."""
        return self._source


# ------------------------------------------------------------------------ verdicts


def _verdict(
    stage: Stage,
    level: SafetyLevel,
    categories: tuple[Category, ...],
    **extra: Any,
) -> Verdict:
    return Verdict(
        stage=stage,
        level=level,
        category=categories[0] if categories else None,
        categories=categories,
        **extra,
    )


def _parse_raw(text: str, stage: Stage, field: str, **probabilities: Any) -> Verdict:
    try:
        return parse_verdict(text, stage=stage, **probabilities)
    except VerdictParseError as exc:
        raise FieldValueError(
            f"the guard parser cannot read this text: {exc}; to pin what unreadable guard "
            "output does, use 'error: unparsable'",
            field,
        ) from None


def _split_probabilities(
    given: Mapping[ProbabilityName, float] | None,
) -> tuple[dict[str, float] | None, dict[str, float] | None, dict[str, float] | None]:
    """Level, category and refusal probabilities, each normalised as a guard gives them."""
    if not given:
        return None, None, None
    levels: dict[str, float] = {k: p for k, p in given.items() if k in _LEVEL_NAMES}
    categories: dict[str, float] = {
        k: p for k, p in given.items() if k not in _LEVEL_NAMES and k != "Refusal"
    }
    for what, group in (("level", levels), ("category", categories)):
        total = sum(group.values())
        if total > 1.0 + 1e-9:
            raise FieldValueError(
                f"the {what} probabilities add up to {total:g}; a guard's add up to 1 at most",
                "probabilities",
            )
    refusal = given.get("Refusal")
    return (
        levels or None,
        categories or None,
        None if refusal is None else {"Yes": refusal, "No": 1.0 - refusal},
    )
