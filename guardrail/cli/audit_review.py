"""``guardrail audit list | show | stats | report | export``: reading audit logs for review.

Every command streams its logs (plain or gzip, several in order; a log's worker
files and a directory's logs included, :func:`~guardrail.audit.workers.expand_logs`)
through the fast dict scan of :mod:`guardrail.audit.scan`: no record is validated
into a model, and memory does not grow with the logs. Tables are drawn with ``rich``
on a terminal and as plain aligned text when the output is piped; ``--json``
prints JSON. ``search`` and ``summary`` are the older names of ``list`` and
``stats``.
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
from guardrail.audit.stats import AuditStats, LatencyStats, compute_stats, parse_bucket
from guardrail.audit.verify import verify_log
from guardrail.audit.workers import expand_logs
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


def _on_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# ------------------------------------------------------------------------------- list

HEADER = ("time", "request", "action", "at", "rules", "prompt", "response", "flags", "total_s")
_ROW = "{:<24} {:<12} {:<7} {:<8} {:<24} {:<22} {:<22} {:<20} {:>7}"


def _verdict_cell(stages: list[dict[str, Any]], stage: str) -> str:
    entries = [e for e in stages if e["stage"] == stage]
    if not entries:
        return "-"
    last = entries[-1]  # the final attempt is what the app got
    verdict = last.get("verdict")
    if verdict is None:
        error = last.get("error")
        return f"error:{error.get('type')}" if isinstance(error, dict) else "-"
    level, category = verdict.get("level"), verdict.get("category")
    cell = f"{level}" if category is None else f"{level}/{category}"
    return cell + (" refusal" if verdict.get("refusal") else "")


def row_cells(data: dict[str, Any]) -> tuple[str, ...]:
    """The table cells of one record (a call, or an event with its type and details)."""
    if "kind" in data:
        details = json.dumps(data.get("details", {}), ensure_ascii=False, sort_keys=True)
        return (str(data["time"]), "-", str(data["kind"]), "-", str(data["type"]), details)
    stages = data["stages"]
    rules = dict.fromkeys(str(e["decision"].get("rule_id")) for e in stages)
    latency = data.get("latency")
    total = latency.get("total_s") if isinstance(latency, dict) else None
    return (
        str(data["time"]),
        str(data["request_id"])[:12],
        str(data["final_action"]),
        str(data.get("blocked_stage") or "-"),
        ",".join(rules) or "-",
        _verdict_cell(stages, "prompt"),
        _verdict_cell(stages, "response"),
        ",".join(str(f) for f in data["flags"]) or "-",
        f"{total:.3f}" if isinstance(total, (int, float)) else "-",
    )


def _plain_row(cells: Sequence[str]) -> str:
    padded = (*cells, *("",) * (len(HEADER) - len(cells)))
    return _ROW.format(*padded).rstrip()


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
    elif _on_terminal(out):
        found = _rich_list(matches)
    else:
        out.write(_plain_row(HEADER) + "\n")
        for record in matches:
            found += 1
            out.write(_plain_row(row_cells(record.data)) + "\n")
            out.flush()
    if not found:
        print("no matching records", file=sys.stderr)
    return 0


def _rich_list(matches: Iterator[ScannedRecord], batch: int = 100) -> int:
    """Matches as rich tables of ``batch`` rows each (streamed: a table per batch)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Cells are Text, never markup: a record's text must print as it is.
    console = Console(highlight=False)
    found = 0
    table: Table | None = None
    for record in matches:
        if table is None:
            table = Table(*HEADER, header_style="bold", show_lines=False)
        table.add_row(*(Text(c) for c in row_cells(record.data)))
        found += 1
        if found % batch == 0:
            console.print(table)
            table = None
    if table is not None:
        console.print(table)
    return found


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
    if _on_terminal(sys.stdout):
        _rich_sections(sections, title=_stats_title(logs, result))
    else:
        print(_stats_title(logs, result))
        for title, header, rows in sections:
            print()
            print(title)
            print(_aligned([header, *rows]))
    return 0


def _compute(logs: Sequence[str], args: argparse.Namespace) -> AuditStats:
    """The statistics of ``stats`` and ``report``; says on stderr why an index was not used."""
    result = compute_stats(logs, bucket=args.bucket, engine=args.engine, index=not args.no_index)
    if result.source_note and any(index_path(f).exists() for f in logs):
        print(f"note: reading the logs, not their indexes: {result.source_note}", file=sys.stderr)
    return result


Section = tuple[str, tuple[str, ...], list[tuple[str, ...]]]


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _stats_title(files: Sequence[str], s: AuditStats) -> str:
    span = f"  ({s.first_time} .. {s.last_time})" if s.first_time else ""
    others = s.records - s.calls
    extra = f", {others} other records" if others else ""
    logs = files[0] if len(files) == 1 else f"{len(files)} logs"
    source = ", index" if s.source == "index" else ""
    return f"{logs}: {s.calls} calls{extra}{span}  [engine {s.engine}{source}]"


def stats_sections(s: AuditStats) -> list[Section]:
    """The statistics as titled tables: (title, header, rows)."""
    sections: list[Section] = []

    def counts(title: str, name: str, data: dict[str, int]) -> None:
        sections.append((title, (name, "count"), [(k, str(v)) for k, v in data.items()]))

    counts("calls by final action", "action", s.by_action)
    counts("calls by rule (a rule counts once per call)", "rule", s.by_rule)
    counts("calls by flag", "flag", s.by_flag)
    rows: list[tuple[str, ...]] = []
    for stage, n in s.checks.items():
        levels = "  ".join(f"{k}={v}" for k, v in s.by_level.get(stage, {}).items())
        cats = "  ".join(f"{k}={v}" for k, v in s.by_category.get(stage, {}).items())
        rows.append((stage, str(n), levels or "-", cats or "-"))
    sections.append(("guard checks by stage", ("stage", "checks", "levels", "categories"), rows))
    o = s.over_refusal
    sections.append(
        (
            "over-refusal",
            ("measure", "count", "of", "rate"),
            [
                (
                    "answers flagged unnecessary_refusal",
                    str(o.unnecessary),
                    str(o.answered),
                    _pct(o.rate),
                ),
                (
                    "refusals that were unnecessary",
                    str(o.refused_unnecessary),
                    str(o.refused),
                    _pct(o.of_refusals),
                ),
                (
                    "response checks judged refusal",
                    str(o.refusal_checks),
                    str(o.response_checks),
                    _pct(o.refusal_rate),
                ),
                (
                    "guard errors (checks)",
                    str(s.guard_errors),
                    str(sum(s.checks.values())),
                    _pct(s.guard_error_rate),
                ),
            ],
        )
    )
    sections.append(
        (
            "latency (ms)",
            ("latency", "n", "p50", "p95", "p99"),
            [_latency_row(name, p) for name, p in s.latency.items()],
        )
    )
    if s.by_event:
        counts(
            "records that are not calls, by type (breaker.* = circuit breaker)", "type", s.by_event
        )
    actions = [a.value for a in Action]
    sections.append(
        (
            f"per {s.bucket} (UTC)",
            ("start", "calls", *actions, "unnecessary_refusal", "guard_errors", "events"),
            [
                (
                    b.start,
                    str(b.calls),
                    *(str(b.by_action.get(a, 0)) for a in actions),
                    str(b.unnecessary_refusals),
                    str(b.guard_errors),
                    str(b.events),
                )
                for b in s.buckets
            ],
        )
    )
    return sections


def _latency_row(name: str, p: LatencyStats) -> tuple[str, ...]:
    return (name, str(p.count), _ms(p.p50), _ms(p.p95), _ms(p.p99))


def _aligned(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if c[:1].isdigit() or c == "-" else c.ljust(w)
            for c, w in zip(r, widths, strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _rich_sections(sections: list[Section], *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    console.print(Text(title, style="bold"))
    for name, header, rows in sections:
        console.print()
        console.print(Text(name, style="bold"))
        table = Table(header_style="bold")
        for i, column in enumerate(header):
            numeric = bool(rows) and all(_numeric(r[i]) for r in rows)
            table.add_column(column, justify="right" if numeric else "left")
        for r in rows:
            table.add_row(*(Text(c) for c in r))
        console.print(table)


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.rstrip("%").replace(".", "", 1).isdigit()


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
