"""Measure a guard, and a policy, on labelled data (``guardrail eval``).

- :mod:`~guardrail.measure.dataset`: JSONL or CSV data sets, validated, every
  problem located by file, line (CSV row) and field;
- :mod:`~guardrail.measure.metrics`: the pure metrics (precision, recall, F1,
  confusion tables, percentiles);
- :mod:`~guardrail.measure.report`: judged rows -> :class:`EvalReport` (pure);
- :mod:`~guardrail.measure.runner`: the guard's batch API and the policy over
  every row, guard failures kept.

Typical use::

    dataset = load_dataset("examples/eval-sample.jsonl")
    report = measure(classifier, dataset, policy=load_policy("policies/default.yaml"))
    print(report.as_dict()["detection"]["all"]["strict"]["f1"])

(The package is named for the act, measuring: :func:`guardrail.policy.evaluate`
already names a policy's decision.)
"""

from __future__ import annotations

from guardrail.measure.dataset import FIELDS, Dataset, LabelledRow, load_dataset, load_dataset_text
from guardrail.measure.metrics import BinaryScores, ClassScores, binary_scores, percentile
from guardrail.measure.report import EvalReport, RowOutcome, summarise
from guardrail.measure.runner import DEFAULT_BATCH_SIZE, EvalRun, measure, run_eval

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FIELDS",
    "BinaryScores",
    "ClassScores",
    "Dataset",
    "EvalReport",
    "EvalRun",
    "LabelledRow",
    "RowOutcome",
    "binary_scores",
    "load_dataset",
    "load_dataset_text",
    "measure",
    "percentile",
    "run_eval",
    "summarise",
]
