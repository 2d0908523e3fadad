"""``guardrail audit report``: one self-contained HTML file whose charts draw what the log holds.

The log is written by real guarded calls (tests/test_audit_review.py's
``write_log``) plus a day of calls at known times; every chart's mark count is
computed here from the raw lines, independently of the package. The page is
checked as written and as headless Chromium renders it (``--dump-dom``).
"""

from __future__ import annotations

import bisect
import json
import math
import shutil
import subprocess
from collections import defaultdict
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_audit_review import raw_lines, write_day, write_log

from guardrail.audit.report_html import TOP_RULES
from guardrail.audit.stats import LATENCY_BINS_S
from guardrail.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BUCKET_S = 3600
LATENCY_KEYS = {"guard": "guard_s", "upstream": "upstream_s", "total": "total_s"}


class Figure:
    def __init__(self, chart_id: str, marks_attr: int) -> None:
        self.id = chart_id
        self.marks_attr = marks_attr
        self.svgs: list[int] = []  # marks drawn per svg
        self.no_data = False


class Charts(HTMLParser):
    """Every ``figure.chart``: its id, its data-marks, the marks each of its SVGs holds."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: list[Figure] = []
        self.scripts = 0
        self.external: list[str] = []
        self._in_svg = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(str(a[key]))
        if tag == "figure" and "chart" in (a.get("class") or "").split():
            self.figures.append(Figure(str(a["id"]), int(str(a["data-marks"]))))
        elif tag == "svg" and self.figures:
            self.figures[-1].svgs.append(0)
            self._in_svg = True
        elif tag in ("rect", "path", "circle") and self._in_svg:
            if "mark" in (a.get("class") or "").split():
                self.figures[-1].svgs[-1] += 1
        elif tag == "p" and a.get("class") == "no-data" and self.figures:
            self.figures[-1].no_data = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg = False

    def by_id(self) -> dict[str, Figure]:
        return {f.id: f for f in self.figures}


def micros(x: float) -> int:
    return math.floor(x * 1e6 + 0.5)


def expected_marks(lines: list[str], logs: int) -> dict[str, int]:
    """Each chart's mark count, from the raw lines (1 h buckets)."""
    records = [json.loads(line) for line in lines]
    calls = [r for r in records if "kind" not in r]
    actions: dict[int, set[str]] = defaultdict(set)
    per_bucket: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # calls, unnecessary
    categories, levels, rules = set(), set(), set()
    latencies: dict[str, set[int]] = defaultdict(set)
    edges = [micros(e) for e in LATENCY_BINS_S]
    for r in calls:
        t = datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
        bucket = int(t) // BUCKET_S
        actions[bucket].add(r["final_action"])
        per_bucket[bucket][0] += 1
        per_bucket[bucket][1] += "unnecessary_refusal" in r["flags"]
        for s in r["stages"]:
            rules.add(s["decision"]["rule_id"])
            v = s.get("verdict") or {}
            if v.get("category") is not None:
                categories.add((s["stage"], v["category"]))
            if v.get("level") is not None:
                levels.add((s["stage"], v["level"]))
            if s.get("latency_s") is not None:
                latencies["guard." + s["stage"]].add(
                    bisect.bisect_right(edges, micros(s["latency_s"]))
                )
        for name, key in LATENCY_KEYS.items():
            value = (r.get("latency") or {}).get(key)
            if value is not None:
                latencies[name].add(bisect.bisect_right(edges, micros(value)))
    out = {
        "chart-actions": sum(len(a) for a in actions.values()),
        "chart-categories": len(categories),
        "chart-levels": len(levels),
        "chart-over-refusal": sum((u > 0) + (n - u > 0) for n, u in per_bucket.values()),
        "chart-rules": min(TOP_RULES, len(rules)),
        "chart-chain": logs,
    }
    for name in ("guard.prompt", "guard.response", *LATENCY_KEYS):
        out["chart-latency-" + name.replace(".", "-")] = len(latencies[name])
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    base = tmp_path_factory.mktemp("report")
    guarded, day = base / "guarded.jsonl", base / "day.jsonl"
    write_log(guarded, "full")
    write_day(day)
    out = base / "report.html"
    code = main(
        [
            "audit",
            "report",
            str(guarded),
            str(day),
            "-o",
            str(out),
            "--bucket",
            "1h",
            "--title",
            "Weekly <review>",
        ]
    )
    assert code == 0
    return out, expected_marks(raw_lines(guarded, day), logs=2)


def check_charts(charts: Charts, want: dict[str, int]) -> None:
    figures = charts.by_id()
    assert set(figures) == set(want)
    assert all(n > 0 for n in want.values()), want  # the log gives every chart data
    for chart_id, n in want.items():
        f = figures[chart_id]
        assert not f.no_data, chart_id
        assert len(f.svgs) == 1, chart_id
        assert f.svgs[0] == n == f.marks_attr, (chart_id, f.svgs, n, f.marks_attr)


def test_every_chart_draws_the_marks_the_log_gives(
    report: tuple[Path, dict[str, int]],
) -> None:
    path, want = report
    text = path.read_text(encoding="utf-8")
    charts = Charts(text)
    check_charts(charts, want)
    # Self-contained: no script, nothing fetched.
    assert charts.scripts == 0
    assert charts.external == []
    assert "<title>Weekly &lt;review&gt;</title>" in text


@pytest.mark.slow
def test_chromium_renders_every_chart(report: tuple[Path, dict[str, int]]) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (./dev.sh test installs it with apt-get)")
    path, want = report
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<svg" in done.stdout
    check_charts(Charts(done.stdout), want)


def test_an_empty_log_gives_no_data_notes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "report.html"
    assert main(["audit", "report", str(empty), "-o", str(out)]) == 0
    figures = Charts(out.read_text(encoding="utf-8")).by_id()
    for chart_id, f in figures.items():
        if chart_id == "chart-chain":  # an empty log's chain is still verified: ok, 0 records
            assert f.svgs == [1]
            assert not f.no_data
            continue
        assert f.no_data, chart_id
        assert (f.svgs, f.marks_attr) == ([], 0), chart_id
    assert len(figures) == 11  # 6 charts and 5 latency histograms


def test_record_text_is_escaped(tmp_path: Path) -> None:
    log = tmp_path / "evil.jsonl"
    write_day(log)
    evil = "<script>alert(1)</script>"
    # A record whose rule id, action and category carry markup (verify then reports a
    # broken chain: the edited record's hash no longer matches, which the report shows).
    lines = log.read_text().splitlines()
    data: dict[str, Any] = json.loads(lines[0])
    data["final_action"] = evil
    data["stages"][0]["decision"]["rule_id"] = evil + '"><img src=x>'
    data["stages"][0]["verdict"]["category"] = evil
    lines[0] = json.dumps(data)
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.html"
    assert main(["audit", "report", str(log), "-o", str(out), "--title", evil]) == 0
    text = out.read_text(encoding="utf-8")
    charts = Charts(text)
    assert charts.scripts == 0
    assert charts.external == []
    assert "<script" not in text
    assert "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    chain = charts.by_id()["chart-chain"]
    assert chain.svgs == [1]
    assert "broken" in text


def test_an_unwritable_output_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "day.jsonl"
    write_day(log)
    code = main(["audit", "report", str(log), "-o", str(tmp_path / "missing" / "r.html")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.strip()
