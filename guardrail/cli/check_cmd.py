"""``guardrail check``: judge a prompt (and optionally a response) from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from guardrail.classifiers.base import moderate
from guardrail.classifiers.loading import quiet_backend
from guardrail.cli.guard_args import add_guard_arguments, build_guard
from guardrail.types import Verdict


def add_parser(sub: Any) -> None:
    """Register ``check`` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="judge a prompt, or a prompt and its response, with Qwen3Guard-Gen",
        description=(
            "Judge TEXT as a user prompt; with --response, also judge the response to it. "
            "The guard runs locally (--model, a hub id or a local directory) or on an "
            "OpenAI-compatible server (--base-url)."
        ),
    )
    p.add_argument("text", metavar="TEXT", help="the user prompt")
    p.add_argument("--response", metavar="TEXT", help="an assistant response to judge")
    add_guard_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say how the guard runs (device, dtype, threads, and why) on stderr, and let "
        "transformers' warnings, logs and progress bars through",
    )
    p.add_argument(
        "--exit-code",
        action="store_true",
        help="exit 1 when any verdict is not Safe (Controversial counts as unsafe); "
        "without it, 0 whatever the verdicts",
    )
    p.set_defaults(func=run)


def _summary(verdict: Verdict) -> dict[str, Any]:
    return verdict.model_dump(mode="json", exclude={"components"})


def _table(rows: dict[str, Verdict]) -> str:
    lines = [f"{'stage':<9} {'safety':<14} {'category':<30} {'refusal':<8} {'p(level)':<9}"]
    for stage, v in rows.items():
        refusal = "-" if v.refusal is None else ("Yes" if v.refusal else "No")
        prob = "-" if v.level_probs is None else f"{v.level_probs.get(v.level.value, 0.0):.3f}"
        category = v.category.value if v.category else "None"
        lines.append(f"{stage:<9} {v.level.value:<14} {category:<30} {refusal:<8} {prob:<9}")
    first = next(iter(rows.values()))
    lines.append(f"model: {first.model}")
    if any(v.truncated for v in rows.values()):
        lines.append("note: input was longer than the guard's context and was truncated")
    return "\n".join(lines)


def _verdicts(args: argparse.Namespace) -> dict[str, Verdict]:
    classifier = build_guard(args)
    messages = [{"role": "user", "content": args.text}]
    rows = {"prompt": moderate(classifier, messages)}
    if args.response is not None:
        rows["response"] = moderate(classifier, messages, args.response)
    return rows


def run(args: argparse.Namespace) -> int:
    """Run the check; 0 on success (1 with ``--exit-code`` when something is not Safe).

    A guard that cannot be loaded or reached raises, and the CLI exits with 2.
    Without ``--verbose`` third-party warnings, logs and progress bars are kept out
    of the output.
    """
    with contextlib.nullcontext() if args.verbose else quiet_backend():
        rows = _verdicts(args)
    if args.json:
        print(json.dumps({k: _summary(v) for k, v in rows.items()}, indent=2))
    else:
        print(_table(rows))
    sys.stdout.flush()
    if args.exit_code and any(v.is_unsafe("strict") for v in rows.values()):
        return 1
    return 0
