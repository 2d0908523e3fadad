"""Building audit records: the one derivation of a record from a call's facts.

:func:`record_dict` takes what happened in one guarded call
(:class:`~guardrail.audit.params.RecordParams`: the policy's
:class:`~guardrail.types.Decision` objects, latencies, errors, the texts) and
returns the record as its plain JSON dict, in one pass and without building any
model: this is the engine's hot path, and the dict goes straight to a sink's
``write_json``. :func:`stage_dict` does the same for one check.

The dicts are laid out exactly as the read-side models of
:mod:`guardrail.audit.record` dump them (``model_dump(mode="json")``): the same
keys in the same order, enums as their values, tuples as lists, ints given for
floats as floats. Those models validate these dicts (``AuditRecord.build`` is
:func:`record_dict`, validated) and import this module, never the reverse.

What is kept of the prompt and response text is set by the content mode
(:func:`content_view`); times are written by :func:`iso_ms`.

Records that are not guarded calls (a crash recovery, an event such as a
circuit breaker's transition) are built by :func:`event_dict`: they carry a
``kind`` field, which call records never have (see :data:`RECORD_KINDS`).
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

from guardrail.audit.keys import AuditKey
from guardrail.audit.params import (
    CONTENT_MODES,
    DEFAULT_TRUNCATE_CHARS,
    ContentMode,
    ErrorLike,
    LatencyLike,
    PolicyLike,
    RewardLike,
    StageLike,
    check_params,
)
from guardrail.errors import ConfigurationError
from guardrail.types import Action, Decision, Stage, Verdict

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from guardrail.audit.params import RecordParams

SCHEMA_VERSION = 1
"""The record layout version written by this release (``schema_version``).

Still 1: a call record's layout is unchanged (old logs verify byte for byte),
and records of other kinds are told apart by their ``kind`` field."""

CALL_KIND = "call"
"""The kind of a guarded call's record; implied by the absence of a ``kind`` field."""
EVENT_KIND = "event"
"""The kind of an event record (:func:`~guardrail.audit.sinks.write_event`)."""
RECOVERY_KIND = "recovery"
"""The kind of the record a JSONL sink writes after moving a torn last line aside."""
RECORD_KINDS = (CALL_KIND, EVENT_KIND, RECOVERY_KIND)
"""The kinds this release writes. Readers accept any other kind as an event-like record."""


# ------------------------------------------------------------------ content and time


def content_view(
    text: str | None,
    mode: ContentMode | str,
    truncate_chars: int = DEFAULT_TRUNCATE_CHARS,
    *,
    key: AuditKey | None = None,
) -> str | None:
    """What an audit record keeps of ``text`` under a content mode.

    - ``full``: the text as it is;
    - ``truncated``: the first ``truncate_chars`` characters plus ``…[+K chars]``
      when ``K`` more were cut (short texts are kept whole);
    - ``hash``: without ``key``, ``sha256:<hex>`` of the UTF-8 text, enough to tell
      whether a known text was sent without storing it (an unkeyed hash: anyone can
      recover a short or guessable text by hashing candidates); with ``key``,
      ``hmac-sha256:<hex>`` (:meth:`AuditKey.content_hash
      <guardrail.audit.keys.AuditKey.content_hash>`), which only a holder of the
      key can compute, so only they can match or guess texts; a lone surrogate,
      which UTF-8 cannot encode, is hashed as its three-byte form (``surrogatepass``);
    - ``none``: ``None``.

    ``None`` text stays ``None`` in every mode (e.g. no response for a blocked prompt).
    """
    return _view(text, check_content_mode(mode), truncate_chars, key)


def _view(
    text: str | None, mode: ContentMode, truncate_chars: int, key: AuditKey | None = None
) -> str | None:
    if mode == "full" or text is None:
        return text
    if mode == "truncated":
        if truncate_chars < 0:
            raise ConfigurationError(f"truncate_chars must be >= 0, got {truncate_chars}")
        extra = len(text) - truncate_chars
        return text if extra <= 0 else f"{text[:truncate_chars]}…[+{extra} chars]"
    if mode == "hash":
        data = text.encode("utf-8", "surrogatepass")
        if key is not None:
            return key.content_hash(data)
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return None


def check_content_mode(mode: str) -> ContentMode:
    """Return ``mode`` as a :data:`ContentMode`, or raise ConfigurationError naming the choices."""
    for known in CONTENT_MODES:
        if mode == known:
            return known
    raise ConfigurationError(
        f"unknown audit content mode {mode!r}; expected one of {', '.join(CONTENT_MODES)}"
    )


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """A datetime in UTC: naive values are taken as UTC, aware ones are converted.

    Every record (and every time filter) compares on this one clock.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso_ms(value: datetime) -> str:
    """A UTC datetime as written in records: ``2026-11-03T12:34:56.789Z``."""
    # isoformat is several times faster than strftime; the value is UTC, so the
    # "+00:00" suffix is replaced by "Z".
    text = value.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


# ------------------------------------------------------------------ the JSON form
#
# Enum values are read with ``_value_`` (``.value`` is a slow descriptor).

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


def _float(value: Any) -> Any:
    # A float field given an int (or bool) holds a float, as pydantic coerces it.
    return float(value) if isinstance(value, int) else value


def _finite(value: Any) -> Any:
    # A non-finite reward score is recorded as None (JSON has no NaN).
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _float(value)


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


def error_info_dict(error: BaseException | str) -> dict[str, Any]:
    """The JSON form of an ``ErrorInfo``: an exception's class name and message.

    A bare message is typed ``error``.
    """
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error)}
    return {"type": "error", "message": error}


def _probs(probs: Mapping[str, float]) -> dict[str, float]:
    return {k: _float(p) for k, p in probs.items()}


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
) -> dict[str, Any]:
    """The JSON form of one check, from the policy's decision.

    ``verdict`` defaults to ``decision.verdict`` and ``latency_s`` to the
    verdict's latency. ``error`` is the guard's exception when it failed
    (``decision.error`` is used when not given). ``attempt`` is 1 for the first
    check, 2, 3... for regenerations and retries; ``candidate`` the choice index
    when the upstream returned several. ``raw_text`` keeps the verdict's raw
    output; :func:`record_dict` drops it again unless the content mode is ``full``.

    What ``StageRecord.from_decision(...)`` validates; :func:`record_dict`
    accepts it as a stage, at a fraction of the cost of a ``StageRecord``.
    """
    v = verdict if verdict is not None else decision.verdict
    if error is None:
        error = decision.error
    if latency_s is None:
        latency_s = v.latency_s if v is not None else 0.0
    return {
        "stage": decision.stage._value_,
        "verdict": verdict_dict(v) if v is not None else None,
        "decision": decision_dict(decision),
        "latency_s": _float(latency_s),
        "error": error_info_dict(error) if error is not None else None,
        "attempt": attempt,
        "candidate": candidate,
        "raw_text": v.raw_text if raw_text and v is not None else None,
    }


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
            "guard_s": _float(latency.get("guard_s", 0.0)),
            "upstream_s": _float(latency.get("upstream_s")),
            "total_s": _float(latency.get("total_s", 0.0)),
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
        "prompt": _view(params.get("prompt"), cmode, truncate_chars, key),
        "response": _view(params.get("response"), cmode, truncate_chars, key),
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
        final = max(
            (e["decision"]["action"] for e in entries),
            key=_ACTION_RANK.__getitem__,
            default="allow",
        )
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
        "request_id": request_id if request_id is not None else uuid.uuid4().hex,
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


# ------------------------------------------------------------------ records of other kinds

_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


def check_event_names(kind: str, event: str) -> None:
    """Raise ConfigurationError unless ``kind`` and ``event`` are valid record names.

    ``kind``: lower-case letters, digits and ``_``, not ``call`` (a call record has
    no ``kind`` field); ``event``: 1-100 letters, digits and ``_.:-``.
    """
    if not isinstance(kind, str) or not _KIND.match(kind) or kind == CALL_KIND:
        raise ConfigurationError(
            f"audit record kind {kind!r} is not valid: lower-case letters, digits and _, "
            f"and not {CALL_KIND!r} (call records have no kind field)"
        )
    if not isinstance(event, str) or not _EVENT_TYPE.match(event):
        raise ConfigurationError(
            f"audit event type {event!r} is not valid: 1-100 letters, digits and _.:- "
            "(e.g. 'breaker.open')"
        )


def event_dict(
    event: str,
    details: Mapping[str, Any] | None = None,
    *,
    kind: str = EVENT_KIND,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A record that is not a guarded call, as its plain JSON dict (ready for ``write_json``).

    ``{"schema_version": 1, "kind": kind, "time": ..., "type": event, "details":
    {...}, "prev_hash": "", "hash": ""}``: chained like every record. ``event``
    names what happened (``breaker.open``); ``details`` holds JSON values under
    string keys (a value JSON cannot hold exactly makes the write raise
    ``AuditError``). ``time`` defaults to now (naive datetimes are UTC).
    """
    check_event_names(kind, event)
    if details is None:
        details = {}
    if not isinstance(details, Mapping) or not all(isinstance(k, str) for k in details):
        raise ConfigurationError("audit event details must be a mapping with string keys")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "time": iso_ms(utc_now() if time is None else as_utc(time)),
        "type": event,
        "details": dict(details),
        "prev_hash": "",
        "hash": "",
    }
