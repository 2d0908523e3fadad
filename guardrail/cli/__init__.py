"""The ``guardrail`` command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``,
which registers the subcommand and sets ``func(args) -> int`` on its parser.
Errors from the SDK are printed as one line (no traceback) with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from guardrail.errors import GuardrailError

_SUBCOMMANDS = ("check", "policy", "audit")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="guardrail",
        description="Qwen3Guard-Gen safety checks, policies and audit logs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"guardrail.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a check failed, 2 usage or runtime error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except GuardrailError as exc:
        print(f"guardrail: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("guardrail: interrupted", file=sys.stderr)
        return 130
    return code


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())
