"""``guardrail eval DATASET``: measure a guard, and a policy, on labelled data.

Reads a JSONL or CSV data set (:mod:`guardrail.measure.dataset`), judges every
row in batches, and prints unsafe-detection precision/recall/F1 (strict and
loose), the category confusion, refusal detection, over-refusal on safe
requests, latency percentiles and guard failures; with ``--policy``, also the
policy's decisions against each row's ``expected_action``. ``--json`` prints the
same as JSON (:meth:`guardrail.measure.EvalReport.as_dict`).

Exit status: 0 when it ran (metrics are not findings); 2 for a usage or I/O
error: bad flags, a data set or policy that cannot be read or is invalid (located
``FILE:LINE: FIELD: problem``), no model, or a guard that judged no row at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from guardrail.classifiers.base import Classifier
from guardrail.classifiers.loading import quiet_backend
from guardrail.cli import EXIT_OK, error
from guardrail.cli.guard_args import add_guard_arguments, build_guard
from guardrail.errors import ConfigurationError
from guardrail.measure import (
    DEFAULT_BATCH_SIZE,
    Dataset,
    EvalReport,
    RowOutcome,
    load_dataset,
    measure,
)
from guardrail.measure.metrics import BinaryScores
from guardrail.policy import Policy, load_policy

__all__ = ["add_parser", "run"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(sub: Any) -> None:
    """Register ``eval`` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "eval",
        help="measure a guard (and a policy) on a labelled data set",
        description=(
            "Judge every row of DATASET (JSONL or CSV: prompt, optional response, level or "
            "label, optional category, refusal, expected_action, id) and report unsafe "
            "detection precision/recall/F1 (strict and loose), the category confusion, "
            "refusal detection, over-refusal on safe requests, latency percentiles and guard "
            "failures; with --policy, the policy's decisions against expected_action. Rows "
            "with a response are judged at the response stage, rows without at the prompt "
            "stage. Exit status: 0 it ran; 2 bad input (FILE:LINE: FIELD: problem), no "
            "model, or no row judged."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="labelled data set (.jsonl or .csv)")
    p.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        dest="file_format",
        help="the data set's format (default: from its suffix)",
    )
    p.add_argument(
        "--policy",
        metavar="POLICY.yaml",
        help="decide every row with this policy; its guard section is the guard unless "
        "--model or --base-url is given",
    )
    add_guard_arguments(p, default="the policy's guard with --policy, else Qwen3Guard-Gen-0.6B")
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"rows per guard call (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--predictions",
        metavar="FILE",
        help="also write one JSON line per row (labels, verdict, decision, error) to FILE",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say how the guard runs on stderr, and let transformers' warnings, logs and "
        "progress bars through",
    )
    p.set_defaults(func=run)


# ------------------------------------------------------------------------ progress


class _ProgressLine:
    """A one-line progress display, rewritten in place; only on a terminal."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.shown = False

    def __call__(self, done: int, total: int, failed: int) -> None:
        elapsed = self.clock() - self.started
        rate = f", {done / elapsed:.1f} rows/s" if elapsed > 0 else ""
        failures = f", {failed} failed" if failed else ""
        percent = 100 * done // total if total else 100
        self.stream.write(f"\reval: {done}/{total} rows ({percent}%){failures}{rate}\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


@contextlib.contextmanager
def _progress() -> Iterator[_ProgressLine | None]:
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    line = _ProgressLine(stream) if callable(isatty) and isatty() else None
    try:
        yield line
    finally:
        if line is not None:
            line.close()


# -------------------------------------------------------------------------- guard


_GUARD_SETTINGS = ("served_model", "revision", "device", "dtype", "threads")


def _guard(args: argparse.Namespace, policy: Policy | None) -> Classifier:
    if policy is not None and not args.model and not args.base_url:
        from guardrail.parts import build_classifier

        given = [name for name in _GUARD_SETTINGS if getattr(args, name) is not None]
        if given:
            # Silently ignoring them would measure another guard than the one asked for.
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigurationError(
                f"{flags} {verb} to --model or --base-url only; the policy's guard section "
                "sets its own"
            )

        # No circuit breaker: every row's own outcome is measured, not a fast failure.
        return build_classifier(policy.guard)
    return build_guard(args)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; 0 when it ran, 2 on bad input or when no row could be judged."""
    dataset = load_dataset(args.dataset, file_format=args.file_format)
    policy = None if args.policy is None else load_policy(args.policy)
    with contextlib.ExitStack() as stack:
        # Opened first: a file that cannot be written fails the run before the guard does.
        predictions = (
            None
            if args.predictions is None
            else stack.enter_context(open(args.predictions, "w", encoding="utf-8"))
        )
        report = _measure(args, dataset, policy)
        if predictions is not None:
            _write_predictions(predictions, report)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    sys.stdout.flush()
    if report.scored == 0:
        first = report.errors[0].error if report.errors else "no rows"
        return error(f"the guard judged no row ({len(report.errors)} failed; first: {first})")
    return EXIT_OK


def _measure(args: argparse.Namespace, dataset: Dataset, policy: Policy | None) -> EvalReport:
    with contextlib.nullcontext() if args.verbose else quiet_backend():
        classifier = _guard(args, policy)
        try:
            with _progress() as progress:
                report = measure(
                    classifier,
                    dataset,
                    policy=policy,
                    policy_source=args.policy or "<policy>",
                    batch_size=args.batch_size,
                    progress=progress,
                )
        finally:
            close = getattr(classifier, "close", None)
            if callable(close):
                close()
    return report


def _write_predictions(out: IO[str], report: EvalReport) -> None:
    for outcome in report.outcomes:
        out.write(json.dumps(prediction(outcome), ensure_ascii=False) + "\n")


def prediction(outcome: RowOutcome) -> dict[str, Any]:
    """One ``--predictions`` line: where the row is, its labels, verdict and decision."""
    row, verdict, decision = outcome.row, outcome.verdict, outcome.decision
    return {
        "id": row.id,
        "line": row.line,
        "row": row.row,
        "stage": row.stage.value,
        "gold": {
            "level": None if row.level is None else row.level.value,
            "label": None if row.label is None else ("unsafe" if row.label else "safe"),
            "category": (
                None
                if not row.has_category
                else (row.category.value if row.category is not None else "None")
            ),
            "refusal": row.refusal,
            "expected_action": None if row.expected_action is None else row.expected_action.value,
        },
        "verdict": None
        if verdict is None
        else {
            "level": verdict.level.value,
            "category": None if verdict.category is None else verdict.category.value,
            "refusal": verdict.refusal,
        },
        "decision": None
        if decision is None
        else {
            "action": decision.action.value,
            "rule": decision.rule_id,
            "flags": list(decision.flags),
        },
        "latency_ms": None if outcome.latency_s is None else outcome.latency_s * 1000.0,
        "error": outcome.error,
    }


# -------------------------------------------------------------------------- table


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(count: int | None, total: int) -> str:
    if count is None:
        return "n/a"
    if total == 0:
        return f"{count}/0 (n/a)"
    return f"{count}/{total} ({100 * count / total:.1f}%)"


def _scores_line(label: str, mode: str, s: BinaryScores) -> str:
    return (
        f"  {label:<9} {mode:<7} {s.total:>5}  {_num(s.precision):>9}  {_num(s.recall):>6}  "
        f"{_num(s.f1):>6}  {_num(s.accuracy):>8}  {s.tp:>4} {s.fp:>4} {s.fn:>4} {s.tn:>4}"
    )


def _confusion_lines(table: Mapping[str, Mapping[str, int]]) -> list[str]:
    lines = []
    for gold, row in table.items():
        got = ", ".join(f"{pred} {n}" for pred, n in sorted(row.items(), key=lambda kv: -kv[1]))
        lines.append(f"    {gold} ({sum(row.values())}) -> {got}")
    return lines


def format_report(report: EvalReport) -> str:
    """The report as the table ``guardrail eval`` prints."""
    data = report.as_dict()
    counts = data["counts"]
    lines = [
        f"dataset: {report.source} ({counts['rows']} rows: {counts['prompt_rows']} prompt, "
        f"{counts['response_rows']} response; {counts['scored']} judged, "
        f"{counts['errors']} failed)",
        f"guard: {report.model}",
    ]
    if report.policy is not None:
        lines.append(
            f"policy: {report.policy.name} ({report.policy.source}, "
            f"sha256:{report.policy.sha256[:8]})"
        )
    if report.ignored_fields:
        lines.append(f"ignored fields: {', '.join(report.ignored_fields)}")
    lines += [
        "",
        "unsafe detection (strict: Controversial counts as unsafe; loose: as safe)",
        f"  {'stage':<9} {'reading':<7} {'rows':>5}  {'precision':>9}  {'recall':>6}  "
        f"{'f1':>6}  {'accuracy':>8}  {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4}",
    ]
    for stage, by_mode in report.detection.items():
        for mode, scores in by_mode.items():
            lines.append(_scores_line(stage, mode, scores))

    categories = data["categories"]
    lines += ["", f"categories ({categories['rows']} rows with a gold category)"]
    if categories["rows"]:
        lines.append("  gold (rows) -> predicted count, ...")
        lines += _confusion_lines(report.category_confusion)
        lines.append(f"  {'category':<31} {'precision':>9}  {'recall':>6}  {'f1':>6}  {'rows':>4}")
        for name, s in report.category_scores.items():
            lines.append(
                f"  {name:<31} {_num(s.precision):>9}  {_num(s.recall):>6}  {_num(s.f1):>6}  "
                f"{s.support:>4}"
            )

    refusal = data["refusal"]
    missing = (
        f", {refusal['missing']} verdicts without a refusal line" if refusal["missing"] else ""
    )
    lines += [
        "",
        f"refusal detection ({refusal['rows']} response rows with a refusal label{missing})",
        f"  precision {_num(refusal['precision'])}  recall {_num(refusal['recall'])}  "
        f"f1 {_num(refusal['f1'])}  (tp {refusal['tp']} fp {refusal['fp']} "
        f"fn {refusal['fn']} tn {refusal['tn']})",
    ]

    over = report.over_refusal
    lines += [
        "",
        f"over-refusal ({over.rows} response rows labelled safe)",
        f"  the guard judges a refusal: {_share(over.guard_refusals, over.scored)}",
    ]
    if report.policy is not None:
        lines += [
            f"  the policy flags an unnecessary refusal: {_share(over.policy_flagged, over.rows)}",
            f"  the policy blocks: {_share(over.policy_blocked, over.rows)}",
        ]

    if report.policy is not None:
        p = report.policy
        lines += [
            "",
            f"policy decisions ({p.expected} rows with an expected_action): accuracy "
            f"{_num(data['policy']['accuracy'])} ({p.correct}/{p.expected} as expected)",
        ]
        if p.confusion:
            lines.append("  expected (rows) -> got count, ...")
            lines += _confusion_lines(p.confusion)
        actions = ", ".join(f"{a} {n}" for a, n in p.actions.items())
        lines += [
            f"  all rows: {actions}",
            f"  rows labelled safe that are blocked: {_share(p.safe_blocked, p.safe_rows)}",
        ]

    latency = data["latency"]
    lines += [
        "",
        "latency per row (each guard call's time / its rows): "
        f"p50 {_num(latency['p50_ms'], 1)} ms  p95 {_num(latency['p95_ms'], 1)} ms  "
        f"p99 {_num(latency['p99_ms'], 1)} ms  mean {_num(latency['mean_ms'], 1)} ms",
        f"  {latency['calls']} guard calls in {latency['wall_s']:.2f} s, "
        f"{_num(latency['rows_per_s'], 1)} rows/s",
    ]

    errors = data["errors"]
    kinds = ", ".join(f"{k} {n}" for k, n in errors["by_kind"].items())
    lines += ["", f"guard failures: {errors['count']}" + (f" ({kinds})" if kinds else "")]
    shown = 5
    for outcome in report.errors[:shown]:
        row = outcome.row
        where = f"line {row.line}" + (f" (row {row.row})" if row.row is not None else "")
        name = f" id {row.id}" if row.id is not None else ""
        lines.append(f"  {where}{name}: {outcome.error}")
    if len(report.errors) > shown:
        lines.append(f"  ... and {len(report.errors) - shown} more (--json lists them all)")
    return "\n".join(lines)
