"""``guardrail audit``: verify, list, show, summarise, export and replay audit logs.

- ``verify LOG... [--expect-head H] [--min-count N] [--checkpoint F] [--key-env VAR]``:
  check each log's hash chain and the anchors given; print the record count, the
  head hash, recoveries and each anchor's outcome. Exit 0 when every chain is intact
  and every anchor holds (recoveries are reported, not failures), 1 with
  ``WHERE: problem`` lines for each finding (tampering, a missing anchor, a bad
  checkpoint);
- ``list LOG... [filters] [--limit N] [--json]`` (alias ``search``), ``show ID LOG...``,
  ``stats LOG... [--bucket 1h] [--engine E] [--json]`` (alias ``summary``) and
  ``export LOG... [filters] --format csv|jsonl -o OUT``: reading logs for review, in
  :mod:`guardrail.cli.audit_review` (its tables: :mod:`guardrail.cli.audit_tables`);
- ``replay LOG [LOG...] --policy NEW.yaml [--examples N] [--json]``: what another
  policy would have decided for the logged calls, from their recorded verdicts
  (no model runs): changes by old and new action and rule, with example request
  ids, and the calls that cannot be replayed exactly, by reason. Exit 0 when it
  ran: changes are its output, not findings.

Every command reads a log as it was configured: ``audit.jsonl`` is the file and
the worker files a multi-worker gateway wrote next to it (``audit.w0.jsonl``...,
each its own chain, verified on its own), and a directory is the JSONL logs in it
(:func:`~guardrail.audit.workers.expand_logs`).

A file that cannot be read, a bad flag, or a line that is not a record (list,
stats, export, show), is reported in one line naming the file and line (exit 2); what was
found before the bad line has already been printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guardrail.audit.checkpoints import default_checkpoint_path
from guardrail.audit.keys import AuditKey
from guardrail.audit.replay import NOT_REPLAYABLE, Replayer, ReplayReport
from guardrail.audit.verify import LogVerification, verify_log
from guardrail.audit.workers import expand_logs, worker_log_path, worker_slot
from guardrail.cli.audit_review import add_review_parsers
from guardrail.errors import ConfigurationError
from guardrail.policy import load_policy
from guardrail.types import Action, Category, SafetyLevel, Stage

DEFAULT_KEY_ENV = "GUARDRAIL_AUDIT_KEY"


def add_parser(sub: Any) -> None:
    """Register ``audit`` and its subcommands on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="verify, list, show, summarise, export and replay audit logs",
        description=(
            "Review the JSON-lines audit logs the guarded client writes. A LOG is a file "
            "together with the worker files a multi-worker gateway writes next to it "
            "(audit.jsonl: audit.w0.jsonl, audit.w1.jsonl...), or a directory of logs."
        ),
    )
    cmds = p.add_subparsers(dest="audit_command", metavar="ACTION")
    cmds.required = True

    verify = cmds.add_parser(
        "verify",
        help="check a log's hash chain and anchors (edits, deletions, a cut tail)",
        description=(
            "Check the hash chain (edits, deletions, insertions, reordering) and print the "
            "record count and head hash. A log cut at the end still has an intact chain: "
            "give an anchor kept elsewhere to catch that (--expect-head, --min-count, "
            "--checkpoint). A LOG is a file with the worker files of a multi-worker "
            "gateway next to it (audit.w0.jsonl...), or a directory of logs: each file's "
            "chain is verified on its own, and its index (FILE.index), if any, against the "
            "digests its records commit. Exit 0 when every chain is intact, every anchor "
            "holds and no index is edited (crash recoveries, and an index a crash left "
            "behind, are listed, not failures), 1 with WHERE: problem for each finding, 2 "
            "when a file cannot be read or a flag is wrong."
        ),
    )
    verify.add_argument("files", metavar="LOG", nargs="+")
    verify.add_argument(
        "--expect-head",
        metavar="HASH",
        type=_hash_arg,
        help="a head hash noted earlier: the log (one file) must still contain that record",
    )
    verify.add_argument(
        "--min-count",
        metavar="N",
        type=_count_arg,
        help="the log (one file) must hold at least N records (of every kind)",
    )
    verify.add_argument(
        "--checkpoint",
        metavar="FILE",
        help=(
            "a checkpoint file (audit.checkpoint_every): the log must reach each checkpoint; "
            "a worker file is checked against its worker's (audit.jsonl.checkpoint: "
            "audit.w0.jsonl.checkpoint...; cp.json: cp.w0.json...)"
        ),
    )
    verify.add_argument(
        "--key-env",
        metavar="VAR",
        help=(
            "environment variable holding the key that signed the checkpoints; then every "
            f"checkpoint must be signed (default: {DEFAULT_KEY_ENV}, if set)"
        ),
    )
    verify.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (same exit status)",
    )
    verify.set_defaults(func=run_verify)

    add_review_parsers(cmds, _choice, _iso_time)

    replay = cmds.add_parser(
        "replay",
        help="what another policy would have decided for the logged calls",
        description=(
            "Re-decide every logged call from its recorded verdicts (levels, categories, "
            "refusal, probabilities, reward scores, guard failures) under another policy, "
            "without running any model, and show which decisions change: by old and new "
            "action and deciding rule (stage:rule), with counts and example request ids. "
            "Calls a record cannot replay exactly (a response never judged, a retry, "
            "several candidates...) are counted by reason. Logs may be gzip-compressed. "
            "Exit 0 when it ran (changes are the output, not findings), 2 when a log or "
            "the policy cannot be read."
        ),
    )
    replay.add_argument("files", metavar="LOG", nargs="+")
    replay.add_argument("--policy", required=True, metavar="NEW.yaml", help="the policy to replay")
    replay.add_argument(
        "--examples",
        metavar="N",
        type=_count_arg,
        default=3,
        help="example request ids shown per change and per reason (default: 3)",
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(func=run_replay)


def _choice(
    enum: type[Action] | type[Stage] | type[SafetyLevel] | type[Category],
) -> Callable[[str], str]:
    """An argparse type accepting an enum value case-insensitively (returns the canonical value)."""
    values = {str(m.value).casefold(): str(m.value) for m in enum}

    def parse(text: str) -> str:
        try:
            return values[text.casefold()]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not one of: {', '.join(values.values())}"
            ) from None

    parse.__name__ = enum.__name__  # argparse names the type in its error message
    return parse


def _hash_arg(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a record hash (64 hex digits)")
    return value


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (an integer >= 0)")
    return value


def _iso_time(text: str) -> datetime:
    """Parse ISO-8601 (``Z`` accepted, naive means UTC)."""
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 time") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def run_verify(args: argparse.Namespace) -> int:
    """``audit verify``: 0 when every chain is intact and every anchor holds, 1 otherwise."""
    key = None
    if args.key_env is not None and args.checkpoint is None:
        raise ConfigurationError("--key-env is only used with --checkpoint")
    logs = expand_logs(args.files)
    if len(logs) > 1:
        for flag, value in (("--expect-head", args.expect_head), ("--min-count", args.min_count)):
            if value is not None:
                raise ConfigurationError(
                    f"{flag} anchors one chain, and {len(logs)} logs are given "
                    f"({', '.join(logs)}): give the one file it was noted for"
                )
    if args.checkpoint is not None:
        name = args.key_env or DEFAULT_KEY_ENV
        # An explicit --key-env must be set; the default variable is used when it is.
        if args.key_env is not None or os.environ.get(name):
            key = AuditKey.from_env(name)
    results = []
    for log in logs:
        results.append(
            verify_log(
                log,
                expect_head=args.expect_head,
                min_count=args.min_count,
                checkpoints=_checkpoint_for(log, args.files, args.checkpoint),
                key=key,
            )
        )
    ok = all(r.ok for r in results)
    if getattr(args, "json", False):
        found = [verify_json(r) for r in results]
        out = found[0] if len(found) == 1 else {"ok": ok, "logs": found}
        print(json.dumps(out, ensure_ascii=False))
    else:
        given = args.checkpoint is not None
        print("\n".join(_verify_text(r.path, r, checkpoint_given=given) for r in results))
    return 0 if ok else 1


def _checkpoint_for(log: str, given: list[str], checkpoint: str | None) -> str | None:
    """The checkpoint file of ``log``: ``checkpoint``, or its worker's for a worker file.

    ``None`` for an empty worker file without one (a worker that served nothing).
    """
    if checkpoint is None or log in given:
        return checkpoint
    for base in given:
        slot = worker_slot(log, base)
        if slot is None:
            continue
        if Path(checkpoint) == default_checkpoint_path(base):  # the default follows its log
            found = default_checkpoint_path(log)
        else:
            found = worker_log_path(checkpoint, slot)
        # A worker that wrote no record wrote no checkpoint: nothing to anchor.
        if not found.exists() and os.path.getsize(log) == 0:
            return None
        return str(found)
    raise ConfigurationError(
        f"--checkpoint: which checkpoint file belongs to {log}? With several logs, give "
        "each log's file (or its configured path, for its worker files) on its own"
    )


def verify_json(result: LogVerification) -> dict[str, Any]:
    """``audit verify --json``: the verification as plain JSON data."""
    problem = result.chain.problem
    return {
        "path": result.path,
        "ok": result.ok,
        "chain_ok": result.chain.ok,
        "count": result.count,
        "kinds": dict(result.kinds),
        "head": result.head,
        "problem": None if problem is None else dataclasses.asdict(problem),
        "anchors": [dataclasses.asdict(a) for a in result.anchors],
        "recoveries": [dataclasses.asdict(r) for r in result.recoveries],
        "index": None if result.index is None else dataclasses.asdict(result.index),
    }


def _verify_text(path: str, result: LogVerification, *, checkpoint_given: bool) -> str:
    lines = []
    problem = result.chain.problem
    if problem is not None:
        lines.append(f"{path}:{problem.line}: {problem.message}")
    for anchor in result.anchors:
        if not anchor.ok:
            where = anchor.anchor if anchor.line is None else f"{path}:{anchor.line}"
            what = "" if anchor.line is None else f"{anchor.anchor}: "
            lines.append(f"{where}: {what}{anchor.message}")
    index = result.index
    if index is not None and not index.ok:
        lines.append(f"{index.path}:{index.line}: {index.message}")
    count = f"{result.count} records"
    others = {k: n for k, n in result.kinds.items() if k != "call"}
    if others:
        parts = [_plural(result.kinds.get("call", 0), "call")]
        parts += [_plural(n, k) for k, n in sorted(others.items())]
        count += f" ({', '.join(parts)})"
    if result.ok:
        lines.append(f"OK  {path}  {count}, chain intact")
    elif problem is None:
        lines.append(f"    {path}  {count}, chain intact, findings above")
    else:
        lines.append(f"    {path}  {count} verified before line {problem.line}")
    lines.append(f"  head        {result.head}")
    for r in result.recoveries:
        sha = f"sha256 {r.sha256[:12]}…" if r.sha256 else "no sha256"
        lines.append(
            f"  recovery    record {r.record} ({r.time}): {r.bytes} torn bytes ({sha}) "
            f"moved to {r.quarantine}: file {r.file}"
        )
    if result.recoveries:
        lines.append(
            "              (a recovery is not a failure: the moved bytes were a write "
            "interrupted by a crash, never an acknowledged record)"
        )
    for anchor in result.anchors:  # failures are listed first, as findings
        if anchor.ok:
            lines.append(f"  anchor      {anchor.anchor}: ok, {anchor.message}")
    if index is not None and index.ok:
        lines.append(f"  index       {index.path}: {index.state}, {index.message}")
    sibling = default_checkpoint_path(path)
    if not checkpoint_given and sibling.exists():
        lines.append(f"  note        {sibling} exists: check the log against it with --checkpoint")
    return "\n".join(lines)


def _plural(n: int, kind: str) -> str:
    if n == 1:
        return f"1 {kind}"
    return f"{n} {kind[:-1]}ies" if kind.endswith("y") else f"{n} {kind}s"


def _counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def run_replay(args: argparse.Namespace) -> int:
    """``audit replay``: the changes another policy would make, as a table or JSON; exit 0."""
    policy = load_policy(args.policy)  # a PolicyError names the file and line
    replayer = Replayer(policy, examples=args.examples)
    for path in expand_logs(args.files):
        replayer.add_log(path)
    report = replayer.report()
    if args.json:
        print(report.model_dump_json())
    else:
        print(_replay_text(report))
    return 0


def _replay_text(r: ReplayReport) -> str:
    others = _plural(sum(r.skipped.values()), "record")
    skipped = f", {others} of other kinds skipped ({_counts(r.skipped)})"
    lines = [
        f"replay under policy {r.policy!r} (sha256 {r.policy_hash[:12]}): "
        f"{_plural(r.records, 'record')} in {_plural(len(r.logs), 'log')}, "
        f"{_plural(r.calls, 'call')}" + (skipped if r.skipped else ""),
        f"  {'replayed':<20}{r.replayed}",
        f"  {'changed':<20}{r.changed}  (prompt now blocks: {r.prompt_now_blocks})",
        f"  {'unchanged':<20}{r.unchanged}  (decided by another rule: {r.rule_changed})",
        f"  {'not replayable':<20}{sum(r.not_replayable.values())}",
    ]
    for reason, n in r.not_replayable.items():
        examples = ", ".join(r.not_replayable_examples.get(reason, ()))
        lines.append(f"    {reason:<28}{n:>6}  {examples}")
        lines.append(f"    {'':<28}{'':>6}  ({NOT_REPLAYABLE[reason]})")
    if not r.changes:
        lines.append("no decision changes")
        return "\n".join(lines)
    table = [("old -> new", "old rule -> new rule", "calls", "examples")]
    for row in r.changes:
        table.append(
            (
                f"{row.old_action.value} -> {row.new_action.value}",
                f"{row.old_rule} -> {row.new_rule}",
                str(row.calls),
                ", ".join(row.examples),
            )
        )
    w0 = max(len(t[0]) for t in table)
    w1 = max(len(t[1]) for t in table)
    w2 = max(len(t[2]) for t in table)
    lines.append("")
    lines.extend(f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}  {d}".rstrip() for a, b, c, d in table)
    return "\n".join(lines)
