"""One CSV row per guarded call: the columns ``guardrail audit export --format csv`` writes.

:data:`CSV_COLUMNS` names them; :func:`csv_row` fills them from a record's
dict. Per stage (``prompt_*``, ``response_*``), the cells describe the stage's
last check, the one whose decision the app got (a regenerated answer is
checked again), and ``*_checks`` says how many checks the stage had. Lists are
joined with ``;``, booleans are ``true``/``false``, a missing value is empty.
The prompt and response are as the record's content mode kept them (text for
``full`` and ``truncated``, a hash for ``hash``, empty for ``none``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CSV_COLUMNS", "STAGE_COLUMNS", "csv_row"]

STAGE_COLUMNS = ("level", "category", "refusal", "rule", "action", "latency_s", "error", "checks")
"""The cells of each stage, prefixed ``prompt_`` and ``response_``."""

CSV_COLUMNS: tuple[str, ...] = (
    "time",
    "request_id",
    "final_action",
    "flags",
    "blocked_stage",
    *(f"prompt_{c}" for c in STAGE_COLUMNS),
    *(f"response_{c}" for c in STAGE_COLUMNS),
    "guard_s",
    "upstream_s",
    "total_s",
    "errors",
    "mode",
    "model",
    "guard_model",
    "policy_name",
    "policy_version",
    "policy_hash",
    "content_mode",
    "prompt",
    "response",
)
"""The columns of an exported CSV file, in order."""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, Mapping) else None


def _stage_cells(stages: list[Any], stage: str) -> list[str]:
    entries = [e for e in stages if isinstance(e, Mapping) and e.get("stage") == stage]
    if not entries:
        return ["" for _ in STAGE_COLUMNS[:-1]] + ["0"]
    last = entries[-1]
    verdict = _get(last, "verdict")
    decision = _get(last, "decision")
    return [
        _cell(_get(verdict, "level")),
        _cell(_get(verdict, "category")),
        _cell(_get(verdict, "refusal")),
        _cell(_get(decision, "rule_id")),
        _cell(_get(decision, "action")),
        _cell(last.get("latency_s")),
        _cell(_get(_get(last, "error"), "type")),
        str(len(entries)),
    ]


def csv_row(data: Mapping[str, Any]) -> list[str]:
    """A call record's dict as the cells of :data:`CSV_COLUMNS`, in order."""
    stages = data.get("stages")
    stages = stages if isinstance(stages, list) else []
    latency = data.get("latency")
    policy = data.get("policy")
    content = data.get("content")
    flags = data.get("flags")
    errors = data.get("errors")
    return [
        _cell(data.get("time")),
        _cell(data.get("request_id")),
        _cell(data.get("final_action")),
        ";".join(str(f) for f in flags) if isinstance(flags, list) else "",
        _cell(data.get("blocked_stage")),
        *_stage_cells(stages, "prompt"),
        *_stage_cells(stages, "response"),
        _cell(_get(latency, "guard_s")),
        _cell(_get(latency, "upstream_s")),
        _cell(_get(latency, "total_s")),
        str(len(errors)) if isinstance(errors, list) else "0",
        _cell(data.get("mode")),
        _cell(data.get("model")),
        _cell(data.get("guard_model")),
        _cell(_get(policy, "name")),
        _cell(_get(policy, "version")),
        _cell(_get(policy, "hash")),
        _cell(_get(content, "mode")),
        _cell(_get(content, "prompt")),
        _cell(_get(content, "response")),
    ]
