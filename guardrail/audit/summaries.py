"""The JSON forms of a record's parts: a verdict, a decision, an error, one check.

Each is laid out exactly as its read-side model of :mod:`guardrail.audit.record`
dumps it (``model_dump(mode="json")``): the same keys in the same order, enums
as their values, tuples as lists, ints given for floats as floats. Enum values
are read with ``_value_`` (``.value`` is a slow descriptor): this is the
engine's hot path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from guardrail.types import Decision, Verdict

__all__ = ["decision_dict", "error_info_dict", "json_float", "stage_dict", "verdict_dict"]


def json_float(value: Any) -> Any:
    """A float field's value: an int (or bool) given for it held as a float, as pydantic does."""
    return float(value) if isinstance(value, int) else value


def error_info_dict(error: BaseException | str) -> dict[str, Any]:
    """The JSON form of an ``ErrorInfo``: an exception's class name and message.

    A bare message is typed ``error``.
    """
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error)}
    return {"type": "error", "message": error}


def _probs(probs: Mapping[str, float]) -> dict[str, float]:
    return {k: json_float(p) for k, p in probs.items()}


def verdict_dict(v: Verdict) -> dict[str, Any]:
    """The JSON form of a ``VerdictSummary``: a verdict without its raw text, model or latency."""
    # The None and empty checks skip calls and comprehensions in the common case.
    category = v.category
    categories = v.categories
    level_probs = v.level_probs
    category_probs = v.category_probs
    refusal_probs = v.refusal_probs
    components = v.components
    return {
        "level": v.level._value_,
        "category": category._value_ if category is not None else None,
        "categories": [c._value_ for c in categories] if categories else [],
        "refusal": v.refusal,
        "level_probs": _probs(level_probs) if level_probs is not None else None,
        "category_probs": _probs(category_probs) if category_probs is not None else None,
        "refusal_probs": _probs(refusal_probs) if refusal_probs is not None else None,
        "part": v.part,
        "truncated": v.truncated,
        "skipped_parts": list(v.skipped_parts),
        "components": [verdict_dict(c) for c in components] if components else [],
    }


def decision_dict(decision: Decision) -> dict[str, Any]:
    """The JSON form of a ``DecisionSummary`` (the decision's verdict is left out)."""
    rewrite = decision.rewrite
    return {
        "action": decision.action._value_,
        "rule_id": decision.rule_id,
        "reason": decision.reason,
        "flags": list(decision.flags),
        "rewrite": rewrite.mode._value_ if rewrite is not None else None,
        "retry": decision.retry is not None,
    }


def stage_dict(
    decision: Decision,
    *,
    verdict: Verdict | None = None,
    latency_s: float | None = None,
    error: BaseException | str | None = None,
    attempt: int = 1,
    candidate: int | None = None,
    raw_text: bool = False,
    reward: float | None = None,
) -> dict[str, Any]:
    """The JSON form of one check, from the policy's decision.

    ``verdict`` defaults to ``decision.verdict`` and ``latency_s`` to the
    verdict's latency. ``error`` is the guard's exception when it failed
    (``decision.error`` is used when not given). ``attempt`` is 1 for the first
    check, 2, 3... for regenerations and retries; ``candidate`` the choice index
    when the upstream returned several. ``raw_text`` keeps the verdict's raw
    output; :func:`record_dict` drops it again unless the content mode is ``full``.
    ``reward`` is the score the policy's reward conditions read for this check
    (the reward's goodness); the key is written only for a scored check, so that
    records without reward models keep the layout they always had.

    What ``StageRecord.from_decision(...)`` validates; :func:`record_dict`
    accepts it as a stage, at a fraction of the cost of a ``StageRecord``.
    """
    v = verdict if verdict is not None else decision.verdict
    if error is None:
        error = decision.error
    if latency_s is None:
        latency_s = v.latency_s if v is not None else 0.0
    entry = {
        "stage": decision.stage._value_,
        "verdict": verdict_dict(v) if v is not None else None,
        "decision": decision_dict(decision),
        "latency_s": json_float(latency_s),
        "error": error_info_dict(error) if error is not None else None,
        "attempt": attempt,
        "candidate": candidate,
        "raw_text": v.raw_text if raw_text and v is not None else None,
    }
    if reward is not None and math.isfinite(reward):
        # A non-finite score is left out, as unscored: JSON has no NaN or infinity.
        entry["reward"] = float(reward)
    return entry
