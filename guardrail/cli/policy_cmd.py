"""``guardrail policy``: validate policy files and export the policy JSON Schema.

``guardrail policy validate FILE...`` prints one line per file::

    OK  policies/default.yaml  (default v1, 7 rules, sha256:4089d9c6)
    policies/broken.yaml:14:7: rules[1].when.levls: unknown key 'levls'; did you mean 'levels'?

(the second on stderr) and exits 0 when every file is valid, 1 otherwise.
``guardrail policy schema [--output FILE]`` prints or writes the JSON Schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guardrail.errors import PolicyError
from guardrail.policy import load_policy, load_policy_text, policy_json_schema

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
            "invalid one. Exit status: 0 all valid, 1 some invalid. '-' reads stdin."
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


def run_validate(args: argparse.Namespace) -> int:
    """Validate every file in ``args.files``; 0 if all are valid, else 1."""
    status = 0
    for name in args.files:
        try:
            if name == "-":
                policy = load_policy_text(sys.stdin.buffer.read(), "<stdin>")
            else:
                policy = load_policy(name)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        rules = f"{len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}"
        summary = f"{policy.name} v{policy.version}, {rules}, sha256:{policy.content_hash[:8]}"
        print(f"OK  {name}  ({summary})")
    return status


def run_schema(args: argparse.Namespace) -> int:
    """Print the policy JSON Schema or write it to ``args.output``; 2 if it cannot be written."""
    text = json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(
            f"guardrail: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
