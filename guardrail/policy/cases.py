r"""Policy test cases: pin what a policy decides for given verdicts, with no model.

A case file lists verdicts (structured, or the guard's raw text read by the real
protocol parser :func:`~guardrail.qwen3guard.parse_verdict`) or guard failures,
and the decision each must get from :func:`~guardrail.policy.evaluate`::

    version: 1
    cases:
      - name: a jailbreak is blocked even when only Controversial
        stage: prompt
        level: Controversial
        categories: [Jailbreak]
        expect: {action: block, rule: block-jailbreak, flags: [jailbreak]}
      - name: a safe request refused is flagged
        stage: response
        raw: "Safety: Safe\nCategories: None\nRefusal: Yes"
        prompt: {level: Safe}
        expect: {action: flag, rule: unnecessary-refusal}
      - name: a guard timeout fails closed
        stage: prompt
        error: timeout
        expect: {action: block, rule: failure}

Case files are read as strictly as policies (unknown keys, wrong types, values a
stage never has), and every problem raises :class:`~guardrail.errors.CaseFileError`
with the file, line, column and field path. :func:`run_cases` evaluates them; it
is pure (no model, no network, no clock).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, StrictBool, StrictStr, ValidationError, model_validator

from guardrail.errors import (
    CaseFileError,
    CircuitOpenError,
    ClassifierError,
    GuardConnectionError,
    GuardHTTPError,
    GuardTimeoutError,
    PolicyError,
    VerdictParseError,
)
from guardrail.policy.evaluate import evaluate
from guardrail.policy.fields import FieldValueError, Label, Probability, Score, StrictModel, Text
from guardrail.policy.humanize import validation_error
from guardrail.policy.loader import DocumentKind, parse_document
from guardrail.policy.rules import RESERVED_RULE_IDS, ProbabilityName
from guardrail.policy.schema import Policy
from guardrail.qwen3guard import parse_verdict
from guardrail.types import Action, Category, Decision, SafetyLevel, Stage, Verdict

__all__ = [
    "CASE_FILE_DOCUMENT",
    "MAX_CASE_FILE_BYTES",
    "Case",
    "CaseFile",
    "CaseResult",
    "Expectation",
    "GuardFailure",
    "PromptVerdict",
    "load_cases",
    "load_cases_text",
    "run_cases",
    "unmatched_rules",
]

MAX_CASE_FILE_BYTES = 1024 * 1024
"""The largest case file that is parsed, in bytes (a few thousand cases)."""

CASE_FILE_DOCUMENT = DocumentKind(
    noun="case file",
    plural="case files",
    empty_hint="it needs 'version: 1' and a list of 'cases'",
    max_bytes=MAX_CASE_FILE_BYTES,
    max_nodes=200_000,
    max_expanded=400_000,
)
"""How case files are read: as strictly as policies, with room for more cases."""

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


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: the decision it got and what differs from its expectation."""

    source: str
    """The case file."""
    case: Case
    decision: Decision
    problems: tuple[str, ...]
    """Each unmet expectation, e.g. ``rule: expected 'a', got 'b'``; empty when it passed."""

    @property
    def passed(self) -> bool:
        """Whether the decision met every expectation."""
        return not self.problems

    @property
    def location(self) -> str:
        """``file:line`` of the case."""
        return f"{self.source}:{self.case.line}"

    def got(self) -> str:
        """The decision in one line: ``action=flag rule=x flags=[y]``."""
        d = self.decision
        return f"action={d.action.value} rule={d.rule_id} flags=[{', '.join(d.flags)}]"


# ----------------------------------------------------------------------- loading


def load_cases(path: str | os.PathLike[str]) -> CaseFile:
    """Read and validate a case file.

    Every problem, from an unreadable file to a case that can never be evaluated,
    raises :class:`~guardrail.errors.CaseFileError` naming the file and, where it
    applies, the 1-based line and column and the field path.
    """
    source = os.fspath(path)
    try:
        with Path(source).open("rb") as file:
            raw = file.read(MAX_CASE_FILE_BYTES + 1)  # never more, whatever the file is
    except OSError as exc:
        raise CaseFileError(
            f"cannot read the case file: {exc.strerror or exc}", source=source
        ) from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise CaseFileError(f"cannot read the case file: {exc}", source=source) from None
    return load_cases_text(raw, source)


def load_cases_text(text: str | bytes, source: str = "<string>") -> CaseFile:
    """Validate a case file given as YAML text; ``source`` names it in errors.

    Raises :class:`~guardrail.errors.CaseFileError`, located, for anything wrong.
    """
    try:
        document = parse_document(text, source, CASE_FILE_DOCUMENT)
    except PolicyError as exc:
        raise _case_error(exc) from None
    try:
        case_file = CaseFile.model_validate(document.data)
    except ValidationError as exc:
        error = _case_error(validation_error(exc, document.marks, source, root=CaseFile))
    else:
        case_file._source = source
        for i, case in enumerate(case_file.cases):
            case._line = document.marks.locate(("cases", i))[0]
        return case_file
    # Raised outside the except block: the pydantic error is fully restated.
    raise error


def _case_error(exc: PolicyError) -> CaseFileError:
    return CaseFileError(
        exc.reason, source=exc.source, line=exc.line, column=exc.column, field=exc.field
    )


# ----------------------------------------------------------------------- running


def run_cases(policy: Policy, case_file: CaseFile) -> tuple[CaseResult, ...]:
    """Evaluate every case of ``case_file`` with ``policy``, in order."""
    rule_stages = {rule.id: rule.stage for rule in policy.rules}
    return tuple(_run_case(policy, case, case_file.source, rule_stages) for case in case_file.cases)


def unmatched_rules(policy: Policy, results: Iterable[CaseResult]) -> tuple[str, ...]:
    """The ids of ``policy``'s rules that decided none of ``results``, in policy order."""
    decided = {result.decision.rule_id for result in results}
    return tuple(rule.id for rule in policy.rules if rule.id not in decided)


def _run_case(
    policy: Policy, case: Case, source: str, rule_stages: Mapping[str, Stage]
) -> CaseResult:
    decision = case.decide(policy)
    expect = case.expect
    problems: list[str] = []
    if decision.action is not expect.action:
        problems.append(f"action: expected {expect.action.value}, got {decision.action.value}")
    if expect.rule is not None and decision.rule_id != expect.rule:
        problems.append(
            f"rule: expected {expect.rule!r}, got {decision.rule_id!r}"
            + _rule_note(expect.rule, case.stage, rule_stages)
        )
    if expect.not_rule is not None:
        if decision.rule_id == expect.not_rule:
            problems.append(f"not_rule: the decision came from {expect.not_rule!r}")
        elif expect.not_rule not in rule_stages and expect.not_rule not in RESERVED_RULE_IDS:
            # Passing trivially would hide a renamed or deleted rule.
            problems.append(f"not_rule: the policy has no rule {expect.not_rule!r}")
    got_flags = set(decision.flags)
    if expect.flags is not None and got_flags != set(expect.flags):
        problems.append(f"flags: expected {_flags(expect.flags)}, got {_flags(decision.flags)}")
    if expect.flags_include is not None:
        missing = [flag for flag in expect.flags_include if flag not in got_flags]
        if missing:
            problems.append(f"flags: missing {_flags(missing)}")
    return CaseResult(source=source, case=case, decision=decision, problems=tuple(problems))


def _rule_note(rule: str, stage: Stage, rule_stages: Mapping[str, Stage]) -> str:
    if rule in RESERVED_RULE_IDS:
        return ""
    rule_stage = rule_stages.get(rule)
    if rule_stage is None:
        return f" (the policy has no rule {rule!r})"
    if rule_stage is not stage:
        return f" ({rule!r} is a {rule_stage.value} rule; this is a {stage.value} case)"
    return ""


def _flags(flags: Sequence[str]) -> str:
    return f"[{', '.join(sorted(flags))}]"


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
