"""Run a guard (and optionally a policy) over a labelled data set, in batches.

:func:`run_eval` judges every row with the classifier's batch API, one
``classify()`` call per ``batch_size`` rows, and decides each row with
:func:`~guardrail.policy.evaluate` when a policy is given. It never drops a row:
a failed check is kept with its error (and, with a policy, the decision of the
policy's failure mode). :func:`measure` runs it and summarises the result.

How rows are judged
-------------------
- A row without a response: the prompt, at the prompt stage.
- A row with a response: the prompt and the response together, at the response
  stage. When the policy's response rules read the prompt's verdict
  (``prompt_levels``), the prompt is judged as well, in the same batch, and
  passed to :func:`~guardrail.policy.evaluate` as ``prompt_verdict``.
- The policy's ``reasoning`` and ``include_system`` settings shape what the guard
  sees (``<think>`` blocks in responses); without a policy, the answer only.
- Reward models are not run: rules on reward scores do not match.

Failures
--------
A batch whose check fails charges the failure to each of its rows, except an
unreadable verdict (:class:`~guardrail.errors.VerdictParseError`), which belongs
to one input: that batch is judged again row by row, so that only the rows
whose verdict cannot be read count as failed. Guard backends are called
directly, without a circuit breaker, so that each row's own outcome is measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from guardrail.classifiers.base import Classifier, Conversation, plan, regroup
from guardrail.errors import ClassifierError, InputError, VerdictParseError
from guardrail.measure.dataset import Dataset, LabelledRow
from guardrail.measure.report import EvalReport, RowOutcome, summarise
from guardrail.policy import Policy, evaluate
from guardrail.qwen3guard import GuardInput
from guardrail.types import ReasoningMode, Stage, Verdict

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EvalRun",
    "Progress",
    "measure",
    "policy_summary",
    "run_eval",
]

DEFAULT_BATCH_SIZE = 8
"""Rows per ``classify()`` call unless told otherwise."""

Progress = Callable[[int, int, int], None]
"""Called after each batch with (rows done, rows in all, failed rows so far)."""


@dataclass(frozen=True)
class EvalRun:
    """The outcome of every row, in data-set order, and how the run went."""

    outcomes: tuple[RowOutcome, ...]
    calls: int
    """``classify()`` calls made (a batch judged again row by row makes more)."""
    wall_s: float


@dataclass(frozen=True)
class _Planned:
    """One row's guard inputs (or why it has none)."""

    row: LabelledRow
    inputs: tuple[GuardInput, ...] = ()
    sizes: tuple[int, ...] = ()
    """Inputs per conversation: the row's own stage first, then the prompt for context."""
    error: str | None = None


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _conversations(row: LabelledRow, with_prompt: bool) -> list[Conversation]:
    messages = [{"role": "user", "content": row.prompt}]
    conversations: list[Conversation] = [(messages, row.response)]
    if row.response is not None and with_prompt:
        conversations.append((messages, None))
    return conversations


def _plan_row(
    row: LabelledRow, *, with_prompt: bool, reasoning: ReasoningMode | str, include_system: bool
) -> _Planned:
    try:
        flat, sizes = plan(
            _conversations(row, with_prompt), reasoning=reasoning, include_system=include_system
        )
    except InputError as exc:  # a conversation the guard cannot take is this row's failure
        return _Planned(row, error=_describe_error(exc))
    return _Planned(row, tuple(flat), tuple(sizes))


def _reads_prompt_verdict(policy: Policy | None) -> bool:
    if policy is None:
        return False
    return any(rule.when.prompt_levels is not None for rule in policy.rules_for(Stage.RESPONSE))


def _decide(
    policy: Policy | None,
    row: LabelledRow,
    verdict: Verdict | None,
    prompt_verdict: Verdict | None,
    error: str | None,
    latency_s: float | None = None,
) -> RowOutcome:
    decision = None
    if policy is not None:
        decision = evaluate(policy, row.stage, verdict, prompt_verdict=prompt_verdict, error=error)
    return RowOutcome(row, verdict, prompt_verdict, decision, error, latency_s)


class _Runner:
    def __init__(
        self, classifier: Classifier, policy: Policy | None, clock: Callable[[], float]
    ) -> None:
        self.classifier = classifier
        self.policy = policy
        self.clock = clock
        self.calls = 0

    def judge(self, batch: Sequence[_Planned]) -> list[RowOutcome]:
        """Outcomes of a batch's rows: one ``classify()`` call for all rows that planned."""
        ready = [p for p in batch if p.error is None]
        results: dict[int, RowOutcome] = {}
        if ready:
            try:
                results = self._classify(ready)
            except VerdictParseError:
                if len(ready) == 1:
                    raise
                results = {}
                for planned in ready:
                    results.update(self._classify_or_fail([planned]))
        out = []
        for planned in batch:
            if planned.error is not None:
                out.append(_decide(self.policy, planned.row, None, None, planned.error))
            else:
                out.append(results[id(planned)])
        return out

    def _classify_or_fail(self, ready: Sequence[_Planned]) -> dict[int, RowOutcome]:
        try:
            return self._classify(ready)
        except ClassifierError as exc:
            error = _describe_error(exc)
            return {id(p): _decide(self.policy, p.row, None, None, error) for p in ready}

    def _classify(self, ready: Sequence[_Planned]) -> dict[int, RowOutcome]:
        flat = [inp for p in ready for inp in p.inputs]
        sizes = [size for p in ready for size in p.sizes]
        self.calls += 1
        started = self.clock()
        verdicts = regroup(self.classifier.classify(flat), sizes)
        share = (self.clock() - started) / len(ready)
        results: dict[int, RowOutcome] = {}
        k = 0
        for planned in ready:
            own = verdicts[k]
            context = verdicts[k + 1] if len(planned.sizes) > 1 else None
            k += len(planned.sizes)
            results[id(planned)] = _decide(self.policy, planned.row, own, context, None, share)
        return results

    def judge_batch(self, batch: Sequence[_Planned]) -> list[RowOutcome]:
        """:meth:`judge`, with a failure of the whole batch charged to each of its rows."""
        try:
            return self.judge(batch)
        except ClassifierError as exc:
            error = _describe_error(exc)
            return [_decide(self.policy, p.row, None, None, p.error or error) for p in batch]


def run_eval(
    classifier: Classifier,
    rows: Sequence[LabelledRow],
    *,
    policy: Policy | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> EvalRun:
    """Judge every row with ``classifier`` (and decide it with ``policy``), in batches.

    ``progress`` is called after each batch; ``clock`` times the batches (seconds).
    A guard failure never raises: it is kept in the row's outcome. Raises
    ``ValueError`` for a ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER
    include_system = False
    if policy is not None:
        reasoning, include_system = policy.reasoning, policy.include_system
    with_prompt = _reads_prompt_verdict(policy)
    runner = _Runner(classifier, policy, clock)
    outcomes: list[RowOutcome] = []
    failed = 0
    started = clock()
    for start in range(0, len(rows), batch_size):
        batch = [
            _plan_row(
                row, with_prompt=with_prompt, reasoning=reasoning, include_system=include_system
            )
            for row in rows[start : start + batch_size]
        ]
        judged = runner.judge_batch(batch)
        failed += sum(1 for o in judged if o.error is not None)
        outcomes.extend(judged)
        if progress is not None:
            progress(len(outcomes), len(rows), failed)
    return EvalRun(tuple(outcomes), runner.calls, clock() - started)


def policy_summary(policy: Policy, source: str) -> dict[str, str]:
    """What the report says of the policy: its name, file and content hash."""
    return {"name": policy.name, "file": source, "sha256": policy.content_hash}


def measure(
    classifier: Classifier,
    dataset: Dataset,
    *,
    policy: Policy | None = None,
    policy_source: str = "<policy>",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> EvalReport:
    """Run :func:`run_eval` over ``dataset`` and compute the report."""
    run = run_eval(
        classifier,
        dataset.rows,
        policy=policy,
        batch_size=batch_size,
        progress=progress,
        clock=clock,
    )
    summary = None if policy is None else policy_summary(policy, policy_source)
    return summarise(
        run.outcomes,
        source=dataset.source,
        file_format=dataset.format,
        model=classifier.model_id,
        policy=summary,
        calls=run.calls,
        wall_s=run.wall_s,
        ignored_fields=dataset.ignored_fields,
    )
