"""``guardrail audit list | show | stats | report | export``: reading audit logs for review.

Every command streams its logs (plain or gzip, several in order; a log's worker
files and a directory's logs included, :func:`~guardrail.audit.workers.expand_logs`)
through the fast dict scan of :mod:`guardrail.audit.scan`: no record is validated
into a model, and memory does not grow with the logs. Tables are drawn with ``rich``
on a terminal and as plain aligned text when the output is piped; ``--json``
prints JSON (the tables: :mod:`guardrail.cli.audit_tables`). ``search`` and
``summary`` are the older names of ``list`` and ``stats``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from guardrail.audit.export import CSV_COLUMNS, csv_row
from guardrail.audit.index import index_path
from guardrail.audit.kinds import CALL_KIND, RECORD_KINDS
from guardrail.audit.reader import RecordFilter
from guardrail.audit.report_html import ChainStatus, render_report
from guardrail.audit.scan import ScannedRecord, record_kind, scan
from guardrail.audit.stats import AuditStats, compute_stats, parse_bucket
from guardrail.audit.verify import verify_log
from guardrail.audit.workers import expand_logs
from guardrail.cli.audit_tables import (
    HEADER,
    aligned,
    on_terminal,
    plain_row,
    rich_list,
    rich_sections,
    row_cells,
    stats_sections,
    stats_title,
)
from guardrail.errors import AuditError, ConfigurationError
from guardrail.types import Action, Category, SafetyLevel, Stage

__all__ = ["add_review_parsers"]

Choice = Callable[[str], str]


class RecordNotFoundError(AuditError):
    """``audit show``: no record, or more than one, has the request id asked for."""


# ---------------------------------------------------------------------------- parsers


def add_filters(p: argparse.ArgumentParser, choice: Callable[[Any], Choice], iso: Any) -> None:
    """The record filters shared by ``list`` and ``export``."""
    p.add_argument("--since", type=iso, metavar="ISO", help="time >= ISO (UTC without offset)")
    p.add_argument("--until", type=iso, metavar="ISO", help="time < ISO")
    p.add_argument("--action", type=choice(Action), help="final action of the call")
    p.add_argument("--rule", dest="rule_id", metavar="ID", help="rule id of a check")
    p.add_argument("--stage", type=choice(Stage), help="prompt or response (of one check)")
    p.add_argument("--level", type=choice(SafetyLevel), help="Safe, Controversial, Unsafe")
    p.add_argument("--category", type=choice(Category), help="a guard category, e.g. PII")
    p.add_argument("--flag", metavar="F", help="a flag of the call, e.g. unnecessary_refusal")
    p.add_argument("--request-id", metavar="ID", help="exact request id")
    p.add_argument(
        "--text",
        metavar="S",
        help=(
            "substring of the prompt or response, case-insensitive; only records whose "
            "content mode kept the text (full, truncated) can match: hashed content "
            "cannot be searched"
        ),
    )
    p.add_argument(
        "--kind",
        type=_kind_arg,
        help=f"only records of this kind: {', '.join(RECORD_KINDS)} (default: all)",
    )
    p.add_argument("--event", metavar="TYPE", help="type of an event, e.g. breaker.open")


def add_review_parsers(cmds: Any, choice: Callable[[Any], Choice], iso: Any) -> None:
    """Register ``list`` (``search``), ``show``, ``stats`` (``summary``), ``report``, ``export``."""
    lst = cmds.add_parser(
        "list",
        aliases=["search"],
        help="the records that match every given filter (search: the same)",
        description=(
            "List the records of one or more logs (plain or gzip) that match every filter. "
            "--stage, --rule, --level and --category must all hold for one check of a call "
            "(--stage response --level unsafe: the response was judged Unsafe). Names are "
            "case-insensitive; times are ISO-8601 (UTC when no offset is given). A table "
            "(rich on a terminal, plain text when piped) or, with --json, the stored lines "
            "verbatim. Exit 0, or 2 when a log cannot be read or a line is not a record "
            "(what was found before it has been printed)."
        ),
    )
    lst.add_argument("files", metavar="LOG", nargs="+")
    add_filters(lst, choice, iso)
    lst.add_argument("--limit", metavar="N", type=_positive, help="stop after N records")
    lst.add_argument("--json", action="store_true", help="print the stored JSON lines")
    lst.set_defaults(func=run_list)

    show = cmds.add_parser(
        "show",
        help="one record in full, by request id (a unique prefix is enough)",
        description=(
            "Print the record of one call in full, found by its request id or a prefix of "
            "it that only one record has. Exit 0, or 2 when no record (or several) match "
            "or a log cannot be read."
        ),
    )
    show.add_argument("request_id", metavar="ID")
    show.add_argument("files", metavar="LOG", nargs="+")
    show.add_argument("--json", action="store_true", help="print the stored line verbatim")
    show.set_defaults(func=run_show)

    stats = cmds.add_parser(
        "stats",
        aliases=["summary"],
        help="counts, time buckets, over-refusal, latency percentiles (summary: the same)",
        description=(
            "Add up one or more logs: calls by action, rule, flag, level and category; per "
            "time bucket; the over-refusal rate; guard latency per check stage, upstream "
            "and total latency (p50/p95/p99); guard errors and circuit breaker events. "
            "Uses DuckDB when guardrail[analytics] is installed (--engine python for the "
            "pure-Python scan; both give the same figures), and reads each log's index "
            "(LOG.index, written by the JSONL sink) when every log has one that matches it. "
            "Exit 0, or 2 when a log cannot be read or a line is not a record."
        ),
    )
    stats.add_argument("files", metavar="LOG", nargs="+")
    stats.add_argument(
        "--bucket",
        type=_bucket_arg,
        metavar="SIZE",
        help="time bucket: 15m, 1h, 1d... (default: 15m, 1h or 1d from the logs' span)",
    )
    stats.add_argument(
        "--engine",
        choices=("auto", "duckdb", "python"),
        default="auto",
        help="auto (default): duckdb when installed, else python",
    )
    stats.add_argument(
        "--no-index", action="store_true", help="read the logs themselves, not their indexes"
    )
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=run_stats)

    report = cmds.add_parser(
        "report",
        help="the statistics and chain status as one self-contained HTML file with charts",
        description=(
            "Write one HTML file that opens offline (inline CSS and SVG, no script, nothing "
            "fetched): final actions per time bucket, categories, levels, over-refusal, "
            "latency histograms, top rules and each log's hash chain (as audit verify "
            "finds it). The figures are those of audit stats. Exit 0, or 2 when a log cannot "
            "be read, a line is not a record or OUT cannot be written."
        ),
    )
    report.add_argument("files", metavar="LOG", nargs="+")
    report.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="the HTML file to write"
    )
    report.add_argument(
        "--bucket",
        type=_bucket_arg,
        metavar="SIZE",
        help="time bucket: 15m, 1h, 1d... (default: 15m, 1h or 1d from the logs' span)",
    )
    report.add_argument("--title", default="Audit report", help="the page's title")
    report.add_argument(
        "--engine",
        choices=("auto", "duckdb", "python"),
        default="auto",
        help="the stats engine, as for stats",
    )
    report.add_argument(
        "--no-index", action="store_true", help="read the logs themselves, as for stats"
    )
    report.set_defaults(func=run_report)

    export = cmds.add_parser(
        "export",
        help="matching records as CSV (one row per call) or JSON lines",
        description=(
            "Write the records that match every filter (the filters of list) to OUT: "
            "--format jsonl, the stored lines verbatim (every kind); --format csv, one row "
            "per call with the columns listed in the README (records that are not calls "
            "are left out). Exit 0, or 2 when a log cannot be read or OUT cannot be written."
        ),
    )
    export.add_argument("files", metavar="LOG", nargs="+")
    add_filters(export, choice, iso)
    export.add_argument("--format", choices=("csv", "jsonl"), required=True)
    export.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="the file to write ('-': stdout)"
    )
    export.add_argument("--limit", metavar="N", type=_positive, help="stop after N records")
    export.set_defaults(func=run_export)


def _kind_arg(text: str) -> str:
    value = text.casefold()
    if value not in RECORD_KINDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of: {', '.join(RECORD_KINDS)}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (an integer >= 1)")
    return value


def _bucket_arg(text: str) -> str:
    try:
        parse_bucket(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def criteria_of(args: argparse.Namespace) -> RecordFilter:
    """The filters given on the command line."""
    return RecordFilter(
        since=args.since,
        until=args.until,
        action=args.action,
        stage=args.stage,
        rule_id=args.rule_id,
        flag=args.flag,
        level=args.level,
        category=args.category,
        request_id=args.request_id,
        kind=args.kind,
        event=args.event,
        text=args.text,
    )


def _limited(records: Iterator[ScannedRecord], limit: int | None) -> Iterator[ScannedRecord]:
    for n, record in enumerate(records, start=1):
        yield record
        if limit is not None and n >= limit:
            return


# ------------------------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    """``audit list`` (``search``): matching records as a table or JSON lines; exit 0."""
    logs = expand_logs(args.files)
    matches = _limited(scan(logs, criteria_of(args)), args.limit)
    found = 0
    out = sys.stdout
    if args.json:
        for record in matches:
            found += 1
            out.write(record.raw.decode("utf-8", "replace") + "\n")
            out.flush()  # a bad line later must not lose what was found
    elif on_terminal(out):
        found = rich_list(matches)
    else:
        out.write(plain_row(HEADER) + "\n")
        for record in matches:
            found += 1
            out.write(plain_row(row_cells(record.data)) + "\n")
            out.flush()
    if not found:
        print("no matching records", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------- show


def run_show(args: argparse.Namespace) -> int:
    """``audit show``: one call's record in full, by request id or a unique prefix."""
    logs = expand_logs(args.files)
    wanted: str = args.request_id
    exact: ScannedRecord | None = None
    prefixed: list[ScannedRecord] = []
    for record in scan(logs, RecordFilter(kind=CALL_KIND)):
        rid = record.data["request_id"]
        if rid == wanted:
            exact = record
            break
        if rid.startswith(wanted) and len(prefixed) < 6:
            prefixed.append(record)
    found = exact
    if found is None:
        names = ", ".join(logs)
        if not prefixed:
            raise RecordNotFoundError(f"no record has request id {wanted!r} (in {names})")
        if len(prefixed) > 1:
            ids = ", ".join(r.data["request_id"] for r in prefixed[:5])
            more = " and more" if len(prefixed) > 5 else ""
            raise RecordNotFoundError(
                f"request id prefix {wanted!r} is ambiguous: {ids}{more} (give more of it)"
            )
        found = prefixed[0]
    if args.json:
        print(found.raw.decode("utf-8", "replace"))
    else:
        print(f"# {found.path}:{found.line}")
        print(json.dumps(found.data, indent=2, ensure_ascii=False))
    return 0


# ------------------------------------------------------------------------------ stats


def run_stats(args: argparse.Namespace) -> int:
    """``audit stats`` (``summary``): the statistics as tables or JSON; exit 0."""
    logs = expand_logs(args.files)
    result = _compute(logs, args)
    if args.json:
        print(result.model_dump_json())
        return 0
    sections = stats_sections(result)
    if on_terminal(sys.stdout):
        rich_sections(sections, title=stats_title(logs, result))
    else:
        print(stats_title(logs, result))
        for title, header, rows in sections:
            print()
            print(title)
            print(aligned([header, *rows]))
    return 0


def _compute(logs: Sequence[str], args: argparse.Namespace) -> AuditStats:
    """The statistics of ``stats`` and ``report``; says on stderr why an index was not used."""
    result = compute_stats(logs, bucket=args.bucket, engine=args.engine, index=not args.no_index)
    if result.source_note and any(index_path(f).exists() for f in logs):
        print(f"note: reading the logs, not their indexes: {result.source_note}", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------- export


def run_report(args: argparse.Namespace) -> int:
    """``audit report``: the statistics and each log's chain as one HTML file; exit 0."""
    logs = expand_logs(args.files)
    result = _compute(logs, args)
    chains = [ChainStatus.of(path, verify_log(path)) for path in logs]
    page = render_report(result, chains, title=args.title, logs=logs)
    with open(args.output, "w", encoding="utf-8") as fh:
        fh.write(page)
    print(f"wrote the report of {result.records} records to {args.output}", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``audit export``: matching records to OUT as CSV rows or verbatim JSON lines."""
    logs = expand_logs(args.files)
    criteria = criteria_of(args)
    if args.format == "csv" and criteria.kind is None:
        # One row per call: --limit counts rows, so other records are not even matched.
        criteria = dataclasses.replace(criteria, kind=CALL_KIND)
    matches = _limited(scan(logs, criteria), args.limit)
    to_stdout = args.output == "-"
    fh: IO[str] = (
        sys.stdout if to_stdout else open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    )
    written = 0
    try:
        if args.format == "jsonl":
            for record in matches:
                fh.write(record.raw.decode("utf-8", "replace") + "\n")
                written += 1
        else:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for record in matches:
                if record_kind(record.data) != CALL_KIND:
                    continue
                writer.writerow(csv_row(record.data))
                written += 1
    finally:
        if not to_stdout:
            fh.close()
    if not to_stdout:
        unit = "rows" if args.format == "csv" else "records"
        print(f"wrote {written} {unit} to {args.output}", file=sys.stderr)
    return 0
