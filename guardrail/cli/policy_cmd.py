"""``guardrail policy``: validate and test policy files, export the policy JSON Schema.

``guardrail policy validate FILE...`` prints one line per file::

    OK  policies/default.yaml  (default v1, 7 rules, sha256:4089d9c6)
    policies/broken.yaml:14:7: rules[1].when.levls: unknown key 'levls'; did you mean 'levels'?

(the second on stderr) and exits 0 when every file is valid, 1 when some are
invalid, 2 when some could not be read (the CLI's one exit-status rule).
``guardrail policy schema [--output FILE]`` prints or writes the JSON Schema.

``guardrail policy test POLICY CASES.yaml...`` evaluates test cases (verdicts and
the decisions they must get, see :mod:`guardrail.policy.cases`) and prints one
line per failing case, then a summary::

    cases.yaml:14: jailbreak: action: expected block, got flag | got action=flag rule=f flags=[f]
    FAIL  policies/default.yaml  11 passed, 1 failed (1 case file)

It exits 0 when every case passes, 1 when some fail, 2 when the policy or a case
file cannot be read or is invalid (nothing is run then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from guardrail.cli import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, error
from guardrail.errors import PolicyError
from guardrail.policy import Policy, load_policy, load_policy_text, policy_json_schema
from guardrail.policy.cases import CaseFile, CaseResult, load_cases, run_cases, unmatched_rules
from guardrail.policy.loader import MAX_POLICY_BYTES

__all__ = ["add_parser", "run_schema", "run_test", "run_validate"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``policy validate``, ``policy test`` and ``policy schema``."""
    parser = subparsers.add_parser(
        "policy",
        help="validate and test policy files, export the policy JSON Schema",
        description="Work with guardrail policy files.",
    )
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    actions.required = True

    validate = actions.add_parser(
        "validate",
        help="check policy files; exit 1 if any is invalid",
        description=(
            "Validate policy files. Prints 'OK  FILE  (name vN, K rules, sha256:...)' for "
            "each valid file and 'FILE:LINE:COL: FIELD: problem' on stderr for each "
            "invalid one. Exit status: 0 all valid, 1 some invalid, 2 some could not be "
            "read. '-' reads stdin."
        ),
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="policy YAML files")
    validate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file on stdout (same exit status)",
    )
    validate.set_defaults(func=run_validate)

    test = actions.add_parser(
        "test",
        help="run test cases against a policy; exit 1 if any fails",
        description=(
            "Evaluate test cases (a verdict, or a guard failure, and the decision it must "
            "get) against POLICY, without a model. Prints 'FILE:LINE: NAME: what differs "
            "| got ...' for each failing case, then 'OK|FAIL  POLICY  N passed, "
            "M failed'. Exit status: 0 all cases pass, 1 some fail, 2 the policy or a case "
            "file cannot be read or is invalid."
        ),
    )
    test.add_argument("policy", metavar="POLICY", help="the policy YAML file")
    test.add_argument("cases", nargs="+", metavar="CASES", help="case files (YAML)")
    test.add_argument("--json", action="store_true", help="print the results as JSON")
    test.set_defaults(func=run_test)

    schema = actions.add_parser(
        "schema",
        help="print the policy JSON Schema (for editors and CI)",
        description="Print the JSON Schema of policy files, or write it to a file.",
    )
    schema.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    schema.set_defaults(func=run_schema)


def _read(name: str) -> bytes:
    """A policy file's bytes (stdin for ``-``), never more than one past the size cap."""
    if name == "-":
        return sys.stdin.buffer.read(MAX_POLICY_BYTES + 1)
    with open(name, "rb") as file:
        return file.read(MAX_POLICY_BYTES + 1)


def run_validate(args: argparse.Namespace) -> int:
    """Validate every file in ``args.files``: 0 all valid, 1 some invalid, 2 some unreadable.

    With ``--json``, one object per file on stdout: ``{"file", "ok", "error"}`` plus
    ``name``, ``version``, ``rules`` and ``sha256`` for a valid file.
    """
    as_json = getattr(args, "json", False)
    invalid = unreadable = False
    for name in args.files:
        try:
            raw = _read(name)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            unreadable = True
            reason = getattr(exc, "strerror", None) or exc
            message = f"{name}: cannot read the policy file: {reason}"
            _report_invalid(name, message, as_json)
            continue
        try:
            policy = load_policy_text(raw, "<stdin>" if name == "-" else name)
        except PolicyError as exc:
            _report_invalid(name, str(exc), as_json)
            invalid = True
            continue
        if as_json:
            print(
                json.dumps(
                    {
                        "file": name,
                        "ok": True,
                        "error": None,
                        "name": policy.name,
                        "version": policy.version,
                        "rules": len(policy.rules),
                        "sha256": policy.content_hash,
                    }
                )
            )
            continue
        rules = f"{len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}"
        summary = f"{policy.name} v{policy.version}, {rules}, sha256:{policy.content_hash[:8]}"
        print(f"OK  {name}  ({summary})")
    return EXIT_ERROR if unreadable else EXIT_FINDINGS if invalid else EXIT_OK


def _report_invalid(name: str, message: str, as_json: bool) -> None:
    # The located message always goes to stderr; --json adds its line on stdout.
    print(message, file=sys.stderr)
    if as_json:
        print(json.dumps({"file": name, "ok": False, "error": message}, ensure_ascii=False))


def run_test(args: argparse.Namespace) -> int:
    """Run the case files against the policy: 0 all pass, 1 some fail, 2 unreadable/invalid.

    Every file is read before any case runs; each one that cannot be read or is
    invalid is reported on stderr, located, and nothing is run.
    """
    broken = False
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        broken = True
    case_files: list[CaseFile] = []
    for name in args.cases:
        try:
            case_files.append(load_cases(name))
        except PolicyError as exc:  # CaseFileError
            print(exc, file=sys.stderr)
            broken = True
    if broken:
        return EXIT_ERROR
    results = [result for case_file in case_files for result in run_cases(policy, case_file)]
    unmatched = unmatched_rules(policy, results)
    if args.json:
        print(json.dumps(_test_json(args.policy, policy, args.cases, results, unmatched), indent=2))
    else:
        print(_test_text(args.policy, len(case_files), results, unmatched))
    return EXIT_OK if all(result.passed for result in results) else EXIT_FINDINGS


def _test_text(
    policy_name: str, files: int, results: list[CaseResult], unmatched: tuple[str, ...]
) -> str:
    lines = [
        f"{r.location}: {r.case.name}: {'; '.join(r.problems)} | got {r.got()}"
        for r in results
        if not r.passed
    ]
    if unmatched:
        lines.append(f"note: no case is decided by rule(s): {', '.join(unmatched)}")
    failed = sum(not r.passed for r in results)
    status = "FAIL" if failed else "OK"
    lines.append(
        f"{status}  {policy_name}  {len(results) - failed} passed, {failed} failed "
        f"({files} case file{'' if files == 1 else 's'})"
    )
    return "\n".join(lines)


def _test_json(
    policy_name: str,
    policy: Policy,
    case_files: list[str],
    results: list[CaseResult],
    unmatched: tuple[str, ...],
) -> dict[str, Any]:
    failed = sum(not r.passed for r in results)
    return {
        "ok": failed == 0,
        "policy": {"file": policy_name, "name": policy.name, "sha256": policy.content_hash},
        "case_files": case_files,
        "passed": len(results) - failed,
        "failed": failed,
        "unmatched_rules": list(unmatched),
        "cases": [
            {
                "file": r.source,
                "line": r.case.line,
                "name": r.case.name,
                "stage": r.case.stage.value,
                "passed": r.passed,
                "expected": r.case.expect.model_dump(mode="json", exclude_none=True),
                "got": {
                    "action": r.decision.action.value,
                    "rule": r.decision.rule_id,
                    "flags": list(r.decision.flags),
                },
                "problems": list(r.problems),
            }
            for r in results
        ],
    }


def run_schema(args: argparse.Namespace) -> int:
    """Print the policy JSON Schema or write it to ``args.output``; 2 if it cannot be written."""
    text = json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        return error(f"cannot write {args.output}: {exc.strerror or exc}")
    print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK
