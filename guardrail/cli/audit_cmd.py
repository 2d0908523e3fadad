"""``guardrail audit``: verify, search and summarise audit logs.

- ``verify FILE``: check the hash chain; exit 0 when intact, 1 with ``FILE:LINE: problem``;
- ``search FILE [filters] [--json]``: matching records as a table or JSON lines;
- ``summary FILE [--json]``: counts by action, rule, flag, level, category, and latencies.

A file that cannot be read, or a line that is not a record (search, summary),
is reported in one line naming the file and line (exit 2); what was found
before the bad line has already been printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from guardrail.audit.build import iso_ms
from guardrail.audit.chain import record_line
from guardrail.audit.reader import (
    RecordFilter,
    Summary,
    filter_records,
    read_records,
    summarize,
    verify_file,
)
from guardrail.audit.record import AuditRecord
from guardrail.types import Action, Category, SafetyLevel, Stage


def add_parser(sub: Any) -> None:
    """Register ``audit`` and its subcommands on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="verify, search and summarise audit logs",
        description="Review the JSON-lines audit logs the guarded client writes.",
    )
    cmds = p.add_subparsers(dest="audit_command", metavar="ACTION")
    cmds.required = True

    verify = cmds.add_parser(
        "verify",
        help="check a log's hash chain (edits, deletions, insertions, reordering)",
        description="Exit 0 when the chain is intact, 1 with FILE:LINE of the first problem.",
    )
    verify.add_argument("file", metavar="FILE")
    verify.set_defaults(func=run_verify)

    search = cmds.add_parser(
        "search",
        help="list the records that match every given filter",
        description=(
            "--stage, --rule, --level and --category must all hold for one check of a call "
            "(--stage response --level unsafe: the response was judged Unsafe). "
            "Names are case-insensitive; times are ISO-8601 (UTC when no offset is given)."
        ),
    )
    search.add_argument("file", metavar="FILE")
    search.add_argument("--action", type=_choice(Action), help="final action of the call")
    search.add_argument("--rule", dest="rule_id", metavar="ID", help="rule id of a check")
    search.add_argument("--flag", metavar="F", help="a flag of the call, e.g. unnecessary_refusal")
    search.add_argument("--stage", type=_choice(Stage), help="prompt or response")
    search.add_argument("--level", type=_choice(SafetyLevel), help="Safe, Controversial, Unsafe")
    search.add_argument("--category", type=_choice(Category), help="a guard category, e.g. PII")
    search.add_argument("--since", type=_iso_time, metavar="ISO", help="time >= ISO")
    search.add_argument("--until", type=_iso_time, metavar="ISO", help="time < ISO")
    search.add_argument("--request-id", metavar="ID")
    search.add_argument("--json", action="store_true", help="print JSON lines (chain fields kept)")
    search.set_defaults(func=run_search)

    summary = cmds.add_parser("summary", help="counts and latency percentiles of a log")
    summary.add_argument("file", metavar="FILE")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.set_defaults(func=run_summary)


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


def _iso_time(text: str) -> datetime:
    """Parse ISO-8601 (``Z`` accepted, naive means UTC)."""
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 time") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def run_verify(args: argparse.Namespace) -> int:
    """``audit verify``: 0 when the chain is intact, 1 at the first problem."""
    result = verify_file(args.file)
    if result.ok:
        print(f"OK  {args.file}  {result.count} records, chain intact")
        return 0
    problem = result.problem
    assert problem is not None  # not ok implies a problem
    print(f"{args.file}:{problem.line}: {problem.message}")
    return 1


def run_search(args: argparse.Namespace) -> int:
    """``audit search``: print matching records as a table or JSON lines."""
    criteria = RecordFilter(
        since=args.since,
        until=args.until,
        action=args.action,
        stage=args.stage,
        rule_id=args.rule_id,
        flag=args.flag,
        level=args.level,
        category=args.category,
        request_id=args.request_id,
    )
    matches = filter_records(read_records(args.file), criteria)
    found = 0
    try:
        if not args.json:
            print(_ROW.format(*_HEADER))
        for record in matches:
            found += 1
            if args.json:
                print(record_line(record.to_json_dict()))
            else:
                print(_ROW.format(*_row(record)))
            # Flush per record: a bad line later in the file must not lose what was found.
            sys.stdout.flush()
    except BrokenPipeError:
        # `| head` closed the pipe: stop quietly, and keep Python from failing at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if not found:
        print("no matching records", file=sys.stderr)
    return 0


_HEADER = ("time", "request", "action", "at", "rules", "prompt", "response", "flags", "total_s")
_ROW = "{:<24} {:<12} {:<7} {:<8} {:<24} {:<22} {:<22} {:<20} {:>7}"


def _verdict_cell(record: AuditRecord, stage: Stage) -> str:
    entries = record.stage_entries(stage)
    if not entries:
        return "-"
    last = entries[-1]  # the final attempt is what the app got
    if last.verdict is None:
        return f"error:{last.error.type}" if last.error else "-"
    v = last.verdict
    cell = v.level.value if v.category is None else f"{v.level.value}/{v.category.value}"
    return cell + (" refusal" if v.refusal else "")


def _row(record: AuditRecord) -> tuple[str, ...]:
    rules = dict.fromkeys(e.decision.rule_id for e in record.stages)
    return (
        iso_ms(record.time),
        record.request_id[:12],
        record.final_action.value,
        record.blocked_stage.value if record.blocked_stage else "-",
        ",".join(rules) or "-",
        _verdict_cell(record, Stage.PROMPT),
        _verdict_cell(record, Stage.RESPONSE),
        ",".join(record.flags) or "-",
        f"{record.latency.total_s:.3f}",
    )


def run_summary(args: argparse.Namespace) -> int:
    """``audit summary``: counts and latency percentiles, as text or JSON."""
    summary = summarize(read_records(args.file))
    if args.json:
        print(summary.model_dump_json())
    else:
        print(_summary_text(args.file, summary))
    return 0


def _counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def _summary_text(path: str, s: Summary) -> str:
    span = ""
    if s.first_time is not None and s.last_time is not None:
        span = f"  ({iso_ms(s.first_time)} .. {iso_ms(s.last_time)})"
    lines = [
        f"{path}: {s.records} records{span}",
        f"  {'actions':<22}{_counts(s.by_action)}",
        f"  {'rules':<22}{_counts(s.by_rule)}",
        f"  {'flags':<22}{_counts(s.by_flag)}",
        f"  {'unnecessary refusals':<22}{s.unnecessary_refusals}",
    ]
    for stage in Stage:
        lines.append(f"  {stage.value + ' checks':<22}{s.checks.get(stage.value, 0)}")
        lines.append(f"  {stage.value + ' levels':<22}{_counts(s.by_level.get(stage.value, {}))}")
        lines.append(
            f"  {stage.value + ' categories':<22}{_counts(s.by_category.get(stage.value, {}))}"
        )
    lines.append(f"  {'refusals':<22}{s.refusals}")
    lines.append(f"  {'guard errors':<22}{s.guard_errors}  (all errors: {s.errors})")
    for name, p in s.latency.items():
        value = "-" if p.p50 is None else f"p50={p.p50:.3f}  p95={p.p95:.3f}  (n={p.count})"
        lines.append(f"  {name + ' latency s':<22}{value}")
    return "\n".join(lines)
