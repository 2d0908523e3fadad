"""Building audit records: the one derivation of a record from a call's facts.

:func:`record_dict` takes what happened in one guarded call
(:class:`~guardrail.audit.params.RecordParams`: the policy's
:class:`~guardrail.types.Decision` objects, latencies, errors, the texts) and
returns the record as its plain JSON dict, in one pass and without building any
model: this is the engine's hot path, and the dict goes straight to a sink's
``write_json``.

The dicts are laid out exactly as the read-side models of
:mod:`guardrail.audit.record` dump them (``model_dump(mode="json")``): the same
keys in the same order, enums as their values, tuples as lists, ints given for
floats as floats. Those models validate these dicts (``AuditRecord.build`` is
:func:`record_dict`, validated) and import the write side, never the reverse.

The write side's parts, each its own module and re-exported here:
:mod:`~guardrail.audit.content` (what is kept of the prompt and response text,
:func:`content_view`), :mod:`~guardrail.audit.summaries` (the JSON form of one
check, :func:`stage_dict`, and of its verdict and decision) and
:mod:`~guardrail.audit.kinds` (the layout version, the record kinds, times, and
:func:`event_dict` for records that are not guarded calls).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

from guardrail.audit.content import check_content_mode, content_view, view_text
from guardrail.audit.kinds import (
    CALL_KIND,
    EVENT_KIND,
    RECORD_KINDS,
    RECOVERY_KIND,
    SCHEMA_VERSION,
    as_utc,
    check_event_names,
    event_dict,
    iso_ms,
    utc_now,
)
from guardrail.audit.params import (
    DEFAULT_TRUNCATE_CHARS,
    ErrorLike,
    LatencyLike,
    PolicyLike,
    RewardLike,
    StageLike,
    check_params,
)
from guardrail.audit.summaries import (
    decision_dict,
    error_info_dict,
    json_float,
    stage_dict,
    verdict_dict,
)
from guardrail.types import Action, Decision, Stage

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from guardrail.audit.params import RecordParams

__all__ = [
    "CALL_KIND",
    "EVENT_KIND",
    "RECORD_KINDS",
    "RECOVERY_KIND",
    "SCHEMA_VERSION",
    "as_utc",
    "check_content_mode",
    "check_event_names",
    "content_view",
    "decision_dict",
    "error_info_dict",
    "event_dict",
    "iso_ms",
    "record_dict",
    "stage_dict",
    "strongest_action",
    "utc_now",
    "verdict_dict",
]

# Precedence when deriving a call's final action from its checks (by action value).
_ACTION_RANK = {"allow": 0, "flag": 1, "rewrite": 2, "block": 3}

_REQUIRED: Any = object()  # a default for keys the model requires

_POLICY_DEFAULTS: dict[str, Any] = {"name": _REQUIRED, "version": "", "hash": ""}
_REWARD_DEFAULTS: dict[str, Any] = {
    "candidate": 0,
    "model": _REQUIRED,
    "score": None,
    "normalized": None,
    "hybrid": None,
}
_ERROR_DEFAULTS: dict[str, Any] = {"stage": None, "type": _REQUIRED, "message": _REQUIRED}
_LATENCY_DEFAULTS: dict[str, Any] = {"guard_s": 0.0, "upstream_s": None, "total_s": 0.0}


def _finite(value: Any) -> Any:
    # A non-finite reward score is recorded as None (JSON has no NaN).
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return json_float(value)


def _enum_value(value: Any) -> Any:
    return value._value_ if isinstance(value, Enum) else value


def _from_mapping(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` laid out as its model dumps it: the model's keys in order, defaults filled.

    A missing required key stays missing and unknown keys are kept (at the end),
    so that :meth:`AuditRecord.build`'s validation reports them.
    """
    out = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        if value is not _REQUIRED:
            out[key] = value
    if not given.keys() <= defaults.keys():
        out.update((k, v) for k, v in given.items() if k not in out)
    return out


def _policy_dict(policy: PolicyLike | Mapping[str, str]) -> dict[str, Any]:
    if type(policy) is dict or isinstance(policy, Mapping):
        return _from_mapping(_POLICY_DEFAULTS, policy)
    return {"name": policy.name, "version": policy.version, "hash": policy.hash}


def _reward_dict(reward: RewardLike | Mapping[str, Any]) -> dict[str, Any]:
    if type(reward) is dict or isinstance(reward, Mapping):
        out = _from_mapping(_REWARD_DEFAULTS, reward)
    else:
        out = {
            "candidate": reward.candidate,
            "model": reward.model,
            "score": reward.score,
            "normalized": reward.normalized,
            "hybrid": reward.hybrid,
        }
    for key in ("score", "normalized", "hybrid"):
        if key in out:
            out[key] = _finite(out[key])
    return out


def _error_dict(error: ErrorLike | Mapping[str, Any]) -> dict[str, Any]:
    if type(error) is dict or isinstance(error, Mapping):
        out = _from_mapping(_ERROR_DEFAULTS, error)
        out["stage"] = _enum_value(out["stage"])
        return out
    stage = error.stage
    return {
        "stage": stage._value_ if stage is not None else None,
        "type": error.type,
        "message": error.message,
    }


def _latency_dict(latency: LatencyLike | Mapping[str, float | None]) -> dict[str, Any]:
    if not (type(latency) is dict or isinstance(latency, Mapping)):
        return {
            "guard_s": latency.guard_s,
            "upstream_s": latency.upstream_s,
            "total_s": latency.total_s,
        }
    if latency.keys() <= _LATENCY_DEFAULTS.keys():
        return {
            "guard_s": json_float(latency.get("guard_s", 0.0)),
            "upstream_s": json_float(latency.get("upstream_s")),
            "total_s": json_float(latency.get("total_s", 0.0)),
        }
    return _from_mapping(_LATENCY_DEFAULTS, latency)  # unknown keys: left to validation


def _stage_entry(item: StageLike | Decision | Mapping[str, Any], keep_raw: bool) -> dict[str, Any]:
    if isinstance(item, Decision):
        return stage_dict(item, raw_text=keep_raw)
    if type(item) is dict:
        entry: dict[str, Any] = item
    elif isinstance(item, Mapping):
        entry = dict(item)
    else:
        entry = item.model_dump(mode="json")
    if not keep_raw and entry.get("raw_text") is not None:
        entry = {**entry, "raw_text": None}
    return entry


def strongest_action(actions: Iterable[Action | str]) -> str:
    """The strongest of ``actions`` by value (block > rewrite > flag > allow); allow for none.

    What a call's final action is when it took these actions: a flow records the
    strongest action it applied, flags or not.
    """
    return max(
        (a._value_ if isinstance(a, Action) else a for a in actions),
        key=_ACTION_RANK.__getitem__,
        default="allow",
    )


def new_request_id() -> str:
    """A fresh request id: a random (version 4) UUID as 32 hex digits.

    Built from 16 random bytes directly: :func:`uuid.uuid4` costs a few
    microseconds more, on every guarded call.
    """
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    return f"{n:032x}"


def record_dict(**params: Unpack[RecordParams]) -> dict[str, Any]:
    """The record of one guarded call as its plain JSON dict, built directly.

    The keyword arguments are the call's facts,
    :class:`~guardrail.audit.params.RecordParams`; each says its default or how it
    is derived from the stages when not given (the final action, the blocked
    stage, the flags, the errors, the guard's latency...). The prompt and
    response are kept per ``content_mode`` (:func:`content_view`, keyed by
    ``content_key`` when given), the guard's
    raw output only in ``full`` mode. The result has ``prev_hash`` and ``hash``
    empty, ready for a sink's ``write_json``.

    Nothing is validated here beyond the argument names, the content mode and
    the action and stage names: values must already have the types the record
    declares (as the engine's do). ``AuditRecord.build`` is this dict, validated.
    """
    check_params(params)
    cmode = check_content_mode(params.get("content_mode", "hash"))
    truncate_chars = params.get("truncate_chars", DEFAULT_TRUNCATE_CHARS)
    key = params.get("content_key")
    keep_raw = cmode == "full"
    content = {
        "mode": cmode,
        "prompt": view_text(params.get("prompt"), cmode, truncate_chars, key),
        "response": view_text(params.get("response"), cmode, truncate_chars, key),
    }
    entries: list[dict[str, Any]] = []
    first_model = ""
    for item in params.get("stages", ()):
        if not first_model and isinstance(item, Decision) and item.verdict is not None:
            first_model = item.verdict.model
        entries.append(_stage_entry(item, keep_raw))

    all_flags = set(params.get("flags", ()))
    for entry in entries:
        all_flags.update(entry["decision"]["flags"])

    final_action = params.get("final_action")
    if final_action is None:
        final = strongest_action(e["decision"]["action"] for e in entries)
        if final == "allow" and all_flags:
            final = "flag"
    elif isinstance(final_action, Action):
        final = final_action._value_
    else:
        final = Action(final_action)._value_
    blocked_stage = params.get("blocked_stage")
    if isinstance(blocked_stage, Stage):
        blocked: str | None = blocked_stage._value_
    elif blocked_stage is not None:
        blocked = Stage(blocked_stage)._value_
    elif final == "block":
        blocked = next((e["stage"] for e in entries if e["decision"]["action"] == "block"), None)
    else:
        blocked = None

    error_entries = [
        {"stage": e["stage"], "type": e["error"]["type"], "message": e["error"]["message"]}
        for e in entries
        if e["error"] is not None
    ]
    error_entries += [_error_dict(e) for e in params.get("errors", ())]

    latency = params.get("latency")
    if latency is None:
        lat = {
            "guard_s": float(sum(e["latency_s"] for e in entries)),
            "upstream_s": None,
            "total_s": 0.0,
        }
    else:
        lat = _latency_dict(latency)

    time = params.get("time")
    request_id = params.get("request_id")
    guard_model = params.get("guard_model")
    return {
        "schema_version": SCHEMA_VERSION,
        "time": iso_ms(utc_now() if time is None else as_utc(time)),
        "request_id": request_id if request_id is not None else new_request_id(),
        "policy": _policy_dict(params["policy"]),
        "mode": params.get("mode", "concurrent"),
        "model": params.get("model", ""),
        "guard_model": guard_model if guard_model is not None else first_model,
        "stages": entries,
        "rewards": [_reward_dict(r) for r in params.get("rewards", ())],
        "final_action": final,
        "flags": sorted(all_flags),
        "blocked_stage": blocked,
        "latency": lat,
        "errors": error_entries,
        "content": content,
        "prev_hash": "",
        "hash": "",
    }
