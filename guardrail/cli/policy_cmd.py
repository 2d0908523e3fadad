"""``guardrail policy``: validate policy files and export the policy JSON Schema.

``guardrail policy validate FILE...`` prints one line per file::

    OK  policies/default.yaml  (default v1, 7 rules, sha256:4089d9c6)
    policies/broken.yaml:14:7: rules[1].when.levls: unknown key 'levls'; did you mean 'levels'?

(the second on stderr) and exits 0 when every file is valid, 1 when some are
invalid, 2 when some could not be read (the CLI's one exit-status rule).
``guardrail policy schema [--output FILE]`` prints or writes the JSON Schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guardrail.cli import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, error
from guardrail.errors import PolicyError
from guardrail.policy import load_policy_text, policy_json_schema
from guardrail.policy.loader import MAX_POLICY_BYTES

__all__ = ["add_parser", "run_schema", "run_validate"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``policy validate`` and ``policy schema``."""
    parser = subparsers.add_parser(
        "policy",
        help="validate policy files, export the policy JSON Schema",
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
    validate.set_defaults(func=run_validate)

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
    """Validate every file in ``args.files``: 0 all valid, 1 some invalid, 2 some unreadable."""
    invalid = unreadable = False
    for name in args.files:
        try:
            raw = _read(name)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            unreadable = True
            reason = getattr(exc, "strerror", None) or exc
            print(f"{name}: cannot read the policy file: {reason}", file=sys.stderr)
            continue
        try:
            policy = load_policy_text(raw, "<stdin>" if name == "-" else name)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            invalid = True
            continue
        rules = f"{len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}"
        summary = f"{policy.name} v{policy.version}, {rules}, sha256:{policy.content_hash[:8]}"
        print(f"OK  {name}  ({summary})")
    return EXIT_ERROR if unreadable else EXIT_FINDINGS if invalid else EXIT_OK


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
