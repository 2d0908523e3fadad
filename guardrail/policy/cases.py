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

This module owns reading case files and running them; the models a case file is
validated by, and the verdicts they build, are :mod:`guardrail.policy.case_schema`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from guardrail.errors import CaseFileError, PolicyError
from guardrail.policy.case_schema import Case, CaseFile, Expectation, GuardFailure, PromptVerdict
from guardrail.policy.document import DocumentKind, parse_document
from guardrail.policy.humanize import validation_error
from guardrail.policy.rules import RESERVED_RULE_IDS
from guardrail.policy.schema import Policy
from guardrail.types import Decision, Stage

# The case models live in case_schema; they are re-exported here, where they have
# always been imported from.
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
