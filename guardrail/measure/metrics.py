"""Pure metrics: binary precision/recall/F1, confusion tables, percentiles.

No I/O, no guard, no clock: every function maps plain values to plain values, so
each figure ``guardrail eval`` reports can be checked by hand. A ratio whose
denominator is empty is ``None`` (shown as ``n/a``), never a division by zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BinaryScores",
    "ClassScores",
    "binary_scores",
    "class_scores",
    "confusion",
    "percentile",
    "ratio",
]


def ratio(numerator: int | float, denominator: int | float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    return None if denominator == 0 else numerator / denominator


def _f1(tp: int, fp: int, fn: int) -> float | None:
    # 2TP / (2TP + FP + FN): equal to 2PR / (P + R) wherever both are defined, and
    # defined (0.0) when one of them is not but something was predicted or expected.
    return ratio(2 * tp, 2 * tp + fp + fn)


@dataclass(frozen=True)
class BinaryScores:
    """Counts of a binary detector against gold labels, and the scores they give."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def total(self) -> int:
        """Every counted item."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float | None:
        """TP / (TP + FP); ``None`` when nothing was predicted positive."""
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        """TP / (TP + FN); ``None`` when nothing is positive in the gold labels."""
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        """2TP / (2TP + FP + FN); ``None`` when nothing is positive in either."""
        return _f1(self.tp, self.fp, self.fn)

    @property
    def accuracy(self) -> float | None:
        """(TP + TN) / total; ``None`` when nothing was counted."""
        return ratio(self.tp + self.tn, self.total)

    def as_dict(self) -> dict[str, Any]:
        """The counts and scores as JSON-ready values."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "accuracy": self.accuracy,
        }


def binary_scores(pairs: Iterable[tuple[bool, bool]]) -> BinaryScores:
    """Count ``(gold, predicted)`` pairs, ``True`` being the positive class."""
    tp = fp = fn = tn = 0
    for gold, predicted in pairs:
        if gold and predicted:
            tp += 1
        elif predicted:
            fp += 1
        elif gold:
            fn += 1
        else:
            tn += 1
    return BinaryScores(tp, fp, fn, tn)


def confusion(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``{gold: {predicted: count}}`` of ``(gold, predicted)`` pairs, keys sorted."""
    table: dict[str, dict[str, int]] = {}
    for gold, predicted in pairs:
        row = table.setdefault(gold, {})
        row[predicted] = row.get(predicted, 0) + 1
    return {g: dict(sorted(table[g].items())) for g in sorted(table)}


@dataclass(frozen=True)
class ClassScores:
    """One class of a multi-class confusion read one-vs-rest."""

    support: int
    """Items whose gold label is the class."""
    predicted: int
    """Items predicted as the class."""
    correct: int

    @property
    def precision(self) -> float | None:
        """Correct / predicted; ``None`` when the class was never predicted."""
        return ratio(self.correct, self.predicted)

    @property
    def recall(self) -> float | None:
        """Correct / support; ``None`` when no gold label is the class."""
        return ratio(self.correct, self.support)

    @property
    def f1(self) -> float | None:
        """2 correct / (support + predicted); ``None`` when both are zero."""
        return _f1(self.correct, self.predicted - self.correct, self.support - self.correct)

    def as_dict(self) -> dict[str, Any]:
        """The counts and scores as JSON-ready values."""
        return {
            "support": self.support,
            "predicted": self.predicted,
            "correct": self.correct,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def class_scores(table: Mapping[str, Mapping[str, int]]) -> dict[str, ClassScores]:
    """Per-class scores of a :func:`confusion` table, for every class in either role."""
    classes = sorted({*table, *(p for row in table.values() for p in row)})
    return {
        c: ClassScores(
            support=sum(table.get(c, {}).values()),
            predicted=sum(row.get(c, 0) for row in table.values()),
            correct=table.get(c, {}).get(c, 0),
        )
        for c in classes
    }


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); ``None`` for no values.

    The smallest value with at least ``p`` % of the values at or below it: for
    ten values, p50 is the 5th smallest and p95 and p99 are the largest.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    if not values:
        return None
    ordered = sorted(values)
    # Rounded first: 0.95 * 20 must give rank 19, whatever the float error.
    rank = max(1, math.ceil(round(p * len(ordered) / 100, 9)))
    return ordered[rank - 1]
