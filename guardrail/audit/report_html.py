"""``guardrail audit report``: the statistics as one self-contained HTML page.

:func:`render_report` turns :class:`~guardrail.audit.stats.AuditStats` and each
log's chain status into one HTML string: inline CSS, charts drawn here as inline
SVG, no script and nothing fetched, so the file opens offline and can be mailed
or archived as it is. Pure: figures in, text out.

Every chart is a ``<figure class="chart" id="chart-...">`` whose ``data-marks``
says how many marks (``<rect class="mark">``) it drew; a chart without data
holds a ``<p class="no-data">`` note instead of an SVG. Every text taken from a
log (actions, rules, categories, paths, hashes...) is HTML-escaped: record text
is untrusted.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from guardrail.audit.stats import LATENCY_BINS_S, AuditStats
from guardrail.audit.verify import LogVerification

__all__ = ["TOP_RULES", "ChainStatus", "render_report"]

TOP_RULES = 15
"""How many rules the top-rules chart shows."""

_WIDTH = 760
_ACTION_COLOURS = {"allow": "#4e9a56", "flag": "#e0a526", "rewrite": "#4a7fc1", "block": "#c8453b"}
_PALETTE = ("#4a7fc1", "#e0a526", "#8a5bb8", "#3aa0a0", "#c8453b", "#7a7a7a", "#4e9a56")
_STAGE_COLOURS = {"prompt": "#4a7fc1", "response": "#8a5bb8"}


@dataclass(frozen=True)
class ChainStatus:
    """One log's hash chain as ``audit verify`` finds it (or why it could not be read)."""

    path: str
    ok: bool
    count: int = 0
    head: str = ""
    recoveries: int = 0
    problem: str | None = None
    """The first problem (``LINE: message``), or why the log could not be read."""

    @classmethod
    def of(cls, path: str, v: LogVerification) -> ChainStatus:
        """The status of a verified log."""
        p = v.chain.problem
        return cls(
            path=path,
            ok=v.ok,
            count=v.count,
            head=v.head,
            recoveries=len(v.recoveries),
            problem=None if p is None else f"line {p.line}: {p.message}",
        )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.3g}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _colour(name: str, known: dict[str, str], order: Sequence[str]) -> str:
    if name in known:
        return known[name]
    return _PALETTE[list(order).index(name) % len(_PALETTE)] if name in order else _PALETTE[0]


# ---------------------------------------------------------------------------- figures


def _figure(chart_id: str, title: str, marks: int, body: str, note: str = "") -> str:
    if marks == 0:
        body = '<p class="no-data">no data</p>'
    extra = f'<p class="note">{note}</p>' if note else ""
    return (
        f'<figure class="chart" id="{_e(chart_id)}" data-marks="{marks}">'
        f"<figcaption>{_e(title)}</figcaption>{extra}{body}</figure>"
    )


def _svg(height: int, inner: str, marks: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" height="{height}" role="img" aria-label="{_e(label)}" '
        f'data-marks="{marks}">{inner}</svg>'
    )


def _rect(x: float, y: float, w: float, h: float, colour: str, tip: str) -> str:
    return (
        f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
        f'height="{h:.1f}" fill="{colour}"><title>{_e(tip)}</title></rect>'
    )


def _legend(names: Sequence[str], colours: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{colours[n]}"></i>{_e(n)}</span>' for n in names
    )
    return f'<div class="legend">{items}</div>'


def _hbars(rows: Sequence[tuple[str, int, str]], label: str) -> tuple[str, int]:
    """Horizontal bars: (label, value, colour) per row; the SVG and its mark count."""
    rows = [r for r in rows if r[1] > 0]
    if not rows:
        return "", 0
    left, right, row_h = 250, 70, 22
    top = max(v for _, v, _ in rows)
    plot = _WIDTH - left - right
    parts = []
    for i, (name, value, colour) in enumerate(rows):
        y = i * row_h + 4
        w = plot * value / top
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_e(name[:40])}</text>'
            + _rect(left, y, w, row_h - 6, colour, f"{name}: {value}")
            + f'<text x="{left + w + 4:.1f}" y="{y + 13}">{value:,}</text>'
        )
    return _svg(len(rows) * row_h + 8, "".join(parts), len(rows), label), len(rows)


def _vbars(
    columns: Sequence[Sequence[tuple[str, float, str]]],
    ticks: Sequence[str],
    label: str,
    *,
    fmt: str = "count",
) -> tuple[str, int]:
    """Vertical (stacked) bars: per column, (series, value, colour) segments."""
    top = max((sum(v for _, v, _ in col) for col in columns), default=0)
    if top <= 0:
        return "", 0
    left, bottom, height = 56, 46, 220
    plot_h = height - bottom - 10
    plot_w = _WIDTH - left - 10
    step = plot_w / len(columns)
    bar = max(step * 0.8, 0.5)
    parts = [
        f'<line x1="{left}" y1="{10 + plot_h}" x2="{_WIDTH - 10}" y2="{10 + plot_h}" '
        'class="axis"/>',
        f'<text x="{left - 6}" y="16" text-anchor="end">{_e(_axis(top, fmt))}</text>',
        f'<text x="{left - 6}" y="{10 + plot_h}" text-anchor="end">0</text>',
    ]
    marks = 0
    every = max(1, len(columns) // 8)
    for i, (col, tick) in enumerate(zip(columns, ticks, strict=True)):
        x = left + i * step + (step - bar) / 2
        y = 10.0 + plot_h
        for series, value, colour in col:
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(_rect(x, y, bar, h, colour, f"{tick} {series}: {_axis(value, fmt)}"))
            marks += 1
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 26}" '
                f'text-anchor="middle" class="tick">{_e(tick)}</text>'
            )
    return _svg(height, "".join(parts), marks, label), marks


def _axis(value: float, fmt: str) -> str:
    return _pct(value) if fmt == "rate" else _num(value)


def _tick(start: str) -> str:
    """A bucket's start, short: ``11-03 09:00``."""
    return start[5:16].replace("T", " ")


def _seconds(s: float) -> str:
    return f"{s * 1000:g} ms" if s < 1 else f"{s:g} s"


# ---------------------------------------------------------------------------- charts


def _actions_chart(s: AuditStats) -> str:
    names = list(s.by_action)
    colours = {n: _colour(n, _ACTION_COLOURS, names) for n in names}
    columns = [[(n, float(b.by_action.get(n, 0)), colours[n]) for n in names] for b in s.buckets]
    svg, marks = _vbars(columns, [_tick(b.start) for b in s.buckets], "final actions per bucket")
    return _figure(
        "chart-actions",
        f"Final actions per {s.bucket} (calls)",
        marks,
        _legend(names, colours) + svg,
    )


def _nested_chart(chart_id: str, title: str, data: dict[str, dict[str, int]]) -> str:
    rows = [
        (f"{stage}: {name}", n, _STAGE_COLOURS.get(stage, _PALETTE[0]))
        for stage, counts in data.items()
        for name, n in counts.items()
    ]
    svg, marks = _hbars(rows, title)
    return _figure(chart_id, title, marks, svg)


def _over_refusal_chart(s: AuditStats) -> str:
    o = s.over_refusal
    headline = (
        f"<b>{_pct(o.rate)}</b> of {o.answered:,} answered calls flagged unnecessary_refusal "
        f"({o.unnecessary:,}); {_pct(o.of_refusals)} of {o.refused:,} refused calls; "
        f"refusals among judged responses: {_pct(o.refusal_rate)} "
        f"({o.refusal_checks:,} of {o.response_checks:,})"
    )
    with_calls = [b for b in s.buckets if b.calls]
    columns = [
        [
            ("flagged unnecessary_refusal", b.unnecessary_refusals / b.calls, "#c8453b"),
            ("not flagged", (b.calls - b.unnecessary_refusals) / b.calls, "#d9d9d9"),
        ]
        for b in with_calls
    ]
    svg, marks = _vbars(
        columns, [_tick(b.start) for b in with_calls], "over-refusal per bucket", fmt="rate"
    )
    colours = {"flagged unnecessary_refusal": "#c8453b", "not flagged": "#d9d9d9"}
    return _figure(
        "chart-over-refusal",
        f"Over-refusal: share of calls per {s.bucket} flagged unnecessary_refusal",
        marks,
        _legend(list(colours), colours) + svg,
        note=headline if (o.answered or o.response_checks) else "",
    )


def _latency_charts(s: AuditStats) -> str:
    edges = LATENCY_BINS_S
    ticks = [f"<{_seconds(edges[0])}"]
    ticks += [f"{_seconds(lo)}-{_seconds(hi)}" for lo, hi in itertools.pairwise(edges)]
    ticks.append(f"≥{_seconds(edges[-1])}")
    out = []
    for name, lat in s.latency.items():
        hist = lat.histogram
        # Only the bins from the first to the last one holding values: the axis stays readable.
        used = [i for i, n in enumerate(hist) if n]
        lo, hi = (used[0], used[-1] + 1) if used else (0, 0)
        columns = [[(name, float(n), "#4a7fc1")] for n in hist[lo:hi]]
        svg, marks = _vbars(columns, ticks[lo:hi], f"{name} latency histogram")
        note = (
            f"{lat.count:,} values; p50 {_seconds(lat.p50)}, p95 {_seconds(lat.p95)}, "
            f"p99 {_seconds(lat.p99)}"
            if lat.p50 is not None and lat.p95 is not None and lat.p99 is not None
            else ""
        )
        out.append(
            _figure(
                "chart-latency-" + name.replace(".", "-"),
                f"Latency: {name}",
                marks,
                svg,
                note=_e(note),
            )
        )
    return "".join(out)


def _rules_chart(s: AuditStats) -> str:
    rows = [(rule, n, "#4a7fc1") for rule, n in list(s.by_rule.items())[:TOP_RULES]]
    svg, marks = _hbars(rows, "top rules")
    return _figure("chart-rules", f"Top {TOP_RULES} deciding rules (calls)", marks, svg)


def _chain_chart(chains: Sequence[ChainStatus]) -> str:
    rows = []
    parts = []
    for i, c in enumerate(chains):
        colour = "#4e9a56" if c.ok else "#c8453b"
        state = "ok" if c.ok else "broken"
        tip = f"{c.path}: {state}, {c.count} records"
        parts.append(
            _rect(4 + i * 28, 4, 22, 22, colour, tip)
            if len(chains) <= 26
            else _rect(4 + i * (_WIDTH - 8) / len(chains), 4, 1, 22, colour, tip)
        )
        rows.append(
            f'<tr class="{state}"><td>{_e(c.path)}</td><td>{state}</td>'
            f"<td>{c.count:,}</td><td><code>{_e(c.head)}</code></td>"
            f"<td>{c.recoveries}</td><td>{_e(c.problem or '')}</td></tr>"
        )
    svg = _svg(30, "".join(parts), len(chains), "chain status per log")
    table = (
        "<table><tr><th>log</th><th>chain</th><th>records</th><th>head hash</th>"
        f"<th>recoveries</th><th>problem</th></tr>{''.join(rows)}</table>"
    )
    return _figure("chart-chain", "Hash chain (audit verify)", len(chains), svg + table)


# ---------------------------------------------------------------------------- the page

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:800px;color:#222}
h1{font-size:22px;margin:0 0 4px}
.summary{color:#555;margin:0 0 16px}
figure.chart{margin:0 0 24px;padding:12px;border:1px solid #ddd;border-radius:6px}
figcaption{font-weight:600;margin-bottom:6px}
svg text{font-size:11px;fill:#333}
svg .axis{stroke:#999}
.no-data{color:#888;font-style:italic}
.note{margin:0 0 6px;color:#444}
.legend{margin-bottom:4px}.key{margin-right:12px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px}
table{border-collapse:collapse;margin-top:8px;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
tr.broken td{background:#fbe9e7}
code{font-size:11px;word-break:break-all}
"""


def render_report(
    stats: AuditStats,
    chains: Sequence[ChainStatus],
    *,
    title: str = "Audit report",
    logs: Sequence[str] = (),
) -> str:
    """The whole page: a summary line and every chart, as one self-contained HTML string."""
    s = stats
    span = f"{s.first_time} .. {s.last_time}" if s.first_time else "no records"
    summary = (
        f"{len(logs) or len(chains)} log(s): {', '.join(logs)} — {s.records:,} records, "
        f"{s.calls:,} calls; {span}; guard errors {s.guard_errors:,} "
        f"({_pct(s.guard_error_rate)} of checks); buckets of {s.bucket}; engine {s.engine}"
    )
    charts = [
        _actions_chart(s),
        _nested_chart("chart-categories", "Categories per stage (judged checks)", s.by_category),
        _nested_chart("chart-levels", "Safety levels per stage (judged checks)", s.by_level),
        _over_refusal_chart(s),
        _latency_charts(s),
        _rules_chart(s),
        _chain_chart(chains),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="summary">{_e(summary)}</p>'
        + "".join(charts)
        + "</body></html>\n"
    )
