"""The tables of ``guardrail audit list`` and ``audit stats``, on a terminal or piped.

:mod:`guardrail.cli.audit_review` finds the records and computes the statistics;
this module owns how they are drawn: the cells of a ``list`` row, the titled
sections of ``stats``, and both as ``rich`` tables on a terminal or as plain
aligned text when the output is piped. Cells are always plain text, never
markup, so a record's text prints as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import IO, Any

from guardrail.audit.scan import ScannedRecord
from guardrail.audit.stats import AuditStats, LatencyStats
from guardrail.types import Action

__all__ = [
    "HEADER",
    "Section",
    "aligned",
    "on_terminal",
    "plain_row",
    "rich_list",
    "rich_sections",
    "row_cells",
    "stats_sections",
    "stats_title",
]


def on_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (rich tables) rather than a pipe (plain text)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


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


def plain_row(cells: Sequence[str]) -> str:
    """One row of the plain ``list`` table, aligned under :data:`HEADER`."""
    padded = (*cells, *("",) * (len(HEADER) - len(cells)))
    return _ROW.format(*padded).rstrip()


def rich_list(matches: Iterator[ScannedRecord], batch: int = 100) -> int:
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


Section = tuple[str, tuple[str, ...], list[tuple[str, ...]]]


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def stats_title(files: Sequence[str], s: AuditStats) -> str:
    """The first line of ``stats``: the logs, counts, time span and engine."""
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


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows as plain text columns: numbers right-aligned, the rest left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if c[:1].isdigit() or c == "-" else c.ljust(w)
            for c, w in zip(r, widths, strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def rich_sections(sections: list[Section], *, title: str) -> None:
    """The ``stats`` sections as rich tables under a bold title (numeric columns right)."""
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
