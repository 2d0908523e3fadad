"""The audit record: one per guarded call, summarising what was checked and decided.

A record is derived once, by :func:`record_dict`, from the policy's
:class:`~guardrail.types.Decision` objects: the result is the record's plain JSON
dict, which a sink seals into the hash chain (:mod:`guardrail.audit.chain`). The
engine hands that dict straight to the built-in sinks; :meth:`AuditRecord.build`
validates the same dict into the :class:`AuditRecord` model, the public, typed
view of a record (and what custom sinks receive).

Records summarise verdicts and decisions instead of dumping them: reviewers need
the level, category, rule and scores, not whole model objects, and the line must
stay small and fast to write. What is kept of the prompt and response text is
set by the content mode (:func:`content_view`).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from guardrail.errors import ConfigurationError
from guardrail.types import Action, Category, Decision, ResponsePart, SafetyLevel, Stage, Verdict

SCHEMA_VERSION = 1
"""The record layout version written by this release (``schema_version``)."""

ContentMode = Literal["full", "truncated", "hash", "none"]
"""How much of the prompt and response text a record keeps."""

CONTENT_MODES: tuple[ContentMode, ...] = ("full", "truncated", "hash", "none")
DEFAULT_TRUNCATE_CHARS = 200


def content_view(
    text: str | None,
    mode: ContentMode | str,
    truncate_chars: int = DEFAULT_TRUNCATE_CHARS,
) -> str | None:
    """What an audit record keeps of ``text`` under a content mode.

    - ``full``: the text as it is;
    - ``truncated``: the first ``truncate_chars`` characters plus ``…[+K chars]``
      when ``K`` more were cut (short texts are kept whole);
    - ``hash``: ``sha256:<hex>`` of the UTF-8 text, enough to tell whether a
      known text was sent without storing it (an unsalted hash: short, guessable
      texts can be recovered by trying candidates);
    - ``none``: ``None``.

    ``None`` text stays ``None`` in every mode (e.g. no response for a blocked prompt).
    """
    return _view(text, check_content_mode(mode), truncate_chars)


def _view(text: str | None, mode: ContentMode, truncate_chars: int) -> str | None:
    if mode == "full" or text is None:
        return text
    if mode == "truncated":
        if truncate_chars < 0:
            raise ConfigurationError(f"truncate_chars must be >= 0, got {truncate_chars}")
        extra = len(text) - truncate_chars
        return text if extra <= 0 else f"{text[:truncate_chars]}…[+{extra} chars]"
    if mode == "hash":
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return None


def check_content_mode(mode: str) -> ContentMode:
    """Return ``mode`` as a :data:`ContentMode`, or raise ConfigurationError naming the choices."""
    for known in CONTENT_MODES:
        if mode == known:
            return known
    raise ConfigurationError(
        f"unknown audit content mode {mode!r}; expected one of {', '.join(CONTENT_MODES)}"
    )


class _Model(BaseModel):
    # Frozen: a record is evidence. Forbid extras: a typo in a builder argument, or a
    # record of an unknown layout, fails instead of being silently dropped.
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyRef(_Model):
    """Which policy decided: its name, version and content hash."""

    name: str
    version: str = ""
    hash: str = ""
    """Hash of the policy's canonical content, so a reviewer can tell which rules applied."""


class ErrorInfo(_Model):
    """An exception, reduced to its class name and message."""

    type: str
    message: str

    @classmethod
    def of(cls, error: BaseException | str) -> ErrorInfo:
        """Summarise an exception (or a bare message, typed ``error``)."""
        return cls.model_validate(_error_info_dict(error))


class VerdictSummary(_Model):
    """The parts of a :class:`~guardrail.types.Verdict` a reviewer searches and scores."""

    level: SafetyLevel
    category: Category | None = None
    categories: tuple[Category, ...] = ()
    refusal: bool | None = None
    level_probs: dict[str, float] | None = None
    category_probs: dict[str, float] | None = None
    refusal_probs: dict[str, float] | None = None
    part: ResponsePart = "answer"
    truncated: bool = False
    skipped_parts: tuple[str, ...] = ()
    components: tuple[VerdictSummary, ...] = ()
    """For a ``combined`` verdict: the summaries of the verdicts it merged (thinking, answer)."""

    @classmethod
    def of(cls, verdict: Verdict) -> VerdictSummary:
        """Summarise a verdict (without its raw text, model id or latency)."""
        return cls.model_validate(_verdict_dict(verdict))


class DecisionSummary(_Model):
    """What the policy decided for one check, and why."""

    action: Action
    rule_id: str
    reason: str = ""
    flags: tuple[str, ...] = ()
    rewrite: str | None = None
    """The rewrite mode when the action is ``rewrite`` (``template``, ``regenerate``...)."""
    retry: bool = False
    """Whether the decision asked the upstream to try again (e.g. an unnecessary refusal)."""

    @classmethod
    def of(cls, decision: Decision) -> DecisionSummary:
        """Summarise a decision (its verdict is summarised separately)."""
        return cls.model_validate(_decision_dict(decision))


class StageRecord(_Model):
    """One guard check of one call: the prompt, or one response attempt or candidate."""

    stage: Stage
    verdict: VerdictSummary | None = None
    """``None`` when the guard failed (see ``error``)."""
    decision: DecisionSummary
    latency_s: float = Field(default=0.0, ge=0.0)
    """How long the guard took for this check."""
    error: ErrorInfo | None = None
    """The guard failure the policy's failure mode decided on, if any."""
    attempt: int = Field(default=1, ge=1)
    """1 for the first check; 2, 3... for regenerations and retries of the response."""
    candidate: int | None = Field(default=None, ge=0)
    """The choice index when the upstream returned several candidates (``n > 1``)."""
    raw_text: str | None = None
    """The guard's raw output; kept only when the content mode is ``full``."""

    @classmethod
    def from_decision(
        cls,
        decision: Decision,
        *,
        verdict: Verdict | None = None,
        latency_s: float | None = None,
        error: BaseException | str | None = None,
        attempt: int = 1,
        candidate: int | None = None,
        raw_text: bool = False,
    ) -> StageRecord:
        """Summarise one check from the policy's decision.

        ``verdict`` defaults to ``decision.verdict`` and ``latency_s`` to the
        verdict's latency. ``error`` is the guard's exception when it failed
        (``decision.error`` is used when not given). ``raw_text`` keeps the
        verdict's raw output; :meth:`AuditRecord.build` drops it again unless
        the content mode is ``full``. The validated form of :func:`stage_dict`.
        """
        return cls.model_validate(
            stage_dict(
                decision,
                verdict=verdict,
                latency_s=latency_s,
                error=error,
                attempt=attempt,
                candidate=candidate,
                raw_text=raw_text,
            )
        )


class RewardEntry(_Model):
    """One reward-model score of one candidate answer.

    Generic over reward families: ``score`` is the model's raw output,
    ``normalized`` the score after the configured normalisation and ``hybrid``
    any combined score the gate ranked by; the last two are optional. A
    non-finite score is recorded as ``None`` (JSON has no NaN).
    """

    candidate: int = Field(default=0, ge=0)
    model: str
    score: float | None = None
    normalized: float | None = None
    hybrid: float | None = None

    @field_validator("score", "normalized", "hybrid", mode="after")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None


class Latency(_Model):
    """Where the call's time went, in seconds.

    ``guard_s`` is the guard's own time (checks may overlap the upstream call in
    concurrent mode, so the parts need not add up to ``total_s``); ``upstream_s``
    is ``None`` when the upstream was never called.
    """

    guard_s: float = Field(default=0.0, ge=0.0)
    upstream_s: float | None = Field(default=None, ge=0.0)
    total_s: float = Field(default=0.0, ge=0.0)


class ErrorEntry(_Model):
    """A failure during the call (guard, upstream, reward), with the stage it hit."""

    stage: Stage | None = None
    type: str
    message: str


class ContentRecord(_Model):
    """The prompt and response text as kept under ``mode`` (see :func:`content_view`)."""

    mode: ContentMode
    prompt: str | None = None
    response: str | None = None


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


class AuditRecord(_Model):
    """One guarded call, as written to the audit log (one JSON line).

    Build it with :meth:`build`; sinks fill in ``prev_hash`` and ``hash`` when
    they write it, so a record in hand before writing has both empty.
    """

    schema_version: Literal[1] = 1
    time: datetime
    """When the call finished; UTC, written as ISO-8601 with milliseconds."""
    request_id: str
    policy: PolicyRef
    mode: str
    """The engine mode: ``concurrent``, ``sequential``, ``streaming``..."""
    model: str
    """The upstream model the app called."""
    guard_model: str
    stages: tuple[StageRecord, ...] = ()
    rewards: tuple[RewardEntry, ...] = ()
    final_action: Action
    flags: tuple[str, ...] = ()
    """Every flag raised by any check of the call, sorted."""
    blocked_stage: Stage | None = None
    latency: Latency = Latency()
    errors: tuple[ErrorEntry, ...] = ()
    content: ContentRecord
    prev_hash: str = ""
    hash: str = ""

    @field_validator("time", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)

    @field_serializer("time")
    def _time_json(self, value: datetime) -> str:
        return iso_ms(value)

    @classmethod
    def build(
        cls,
        *,
        policy: PolicyRef | Mapping[str, str],
        stages: Iterable[StageRecord | Decision | Mapping[str, Any]] = (),
        mode: str = "concurrent",
        model: str = "",
        guard_model: str | None = None,
        final_action: Action | str | None = None,
        flags: Iterable[str] = (),
        blocked_stage: Stage | str | None = None,
        latency: Latency | Mapping[str, float | None] | None = None,
        rewards: Iterable[RewardEntry | Mapping[str, Any]] = (),
        errors: Iterable[ErrorEntry | Mapping[str, Any]] = (),
        prompt: str | None = None,
        response: str | None = None,
        content_mode: ContentMode | str = "hash",
        truncate_chars: int = DEFAULT_TRUNCATE_CHARS,
        request_id: str | None = None,
        time: datetime | None = None,
    ) -> AuditRecord:
        """Build the record of one guarded call.

        ``stages`` are the checks in the order they ran, as prepared
        :class:`StageRecord` entries or their JSON form (:func:`stage_dict`), for
        attempts, candidates, errors; or plain :class:`~guardrail.types.Decision`
        objects. What is not given is derived:

        - ``final_action``: the strongest stage action (block > rewrite > flag > allow);
        - ``blocked_stage``: the stage of the first blocking check, when blocked;
        - ``flags``: the union of the stages' flags and ``flags``, sorted;
        - ``errors``: the stages' guard errors, then ``errors``;
        - ``guard_model``: the model id of the first Decision's verdict (pass it when
          the stages are prepared StageRecords, which do not carry it);
        - ``latency.guard_s``: the sum of the checks' latencies;
        - ``request_id``: a new uuid4 hex; ``time``: now (UTC).

        The prompt and response are kept per ``content_mode`` (:func:`content_view`);
        the guard's raw output is kept only in ``full`` mode.

        This is :func:`record_dict`, validated: ``AuditRecord.build(**kw).to_json_dict()
        == record_dict(**kw)`` (given the same ``request_id`` and ``time``).
        """
        when = time if time is not None else utc_now()
        data = record_dict(
            policy=policy,
            # Stages in JSON form are checked before anything is derived from them.
            stages=[StageRecord.model_validate(s) if isinstance(s, Mapping) else s for s in stages],
            mode=mode,
            model=model,
            guard_model=guard_model,
            final_action=final_action,
            flags=flags,
            blocked_stage=blocked_stage,
            latency=latency,
            rewards=rewards,
            errors=errors,
            prompt=prompt,
            response=response,
            content_mode=content_mode,
            truncate_chars=truncate_chars,
            request_id=request_id,
            time=when,
        )
        data["time"] = when  # the model keeps the full precision; JSON has milliseconds
        return cls.model_validate(data)

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (one ``model_dump``; what sinks serialise)."""
        return self.model_dump(mode="json")

    def stage_entries(self, stage: Stage | str) -> tuple[StageRecord, ...]:
        """The checks of one stage, in the order they ran."""
        s = Stage(stage)
        return tuple(e for e in self.stages if e.stage is s)


# ------------------------------------------------------------------ the JSON form
#
# The one derivation of a record: plain dicts, lists and JSON scalars, laid out
# exactly as ``model_dump(mode="json")`` lays out the models above (same keys in
# the same order, enums as their values, tuples as lists, ints given for floats
# as floats). The models validate these dicts; the engine writes them directly.
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


def _error_info_dict(error: BaseException | str) -> dict[str, Any]:
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error)}
    return {"type": "error", "message": error}


def _probs(probs: Mapping[str, float]) -> dict[str, float]:
    return {k: _float(p) for k, p in probs.items()}


def _verdict_dict(v: Verdict) -> dict[str, Any]:
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
        "components": [_verdict_dict(c) for c in components] if components else [],
    }


def _decision_dict(decision: Decision) -> dict[str, Any]:
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
    """The JSON form of one check: ``StageRecord.from_decision(...)`` as a plain dict.

    Takes the same arguments as :meth:`StageRecord.from_decision` and returns what
    its ``model_dump(mode="json")`` would, without building (or validating) the
    models; :meth:`AuditRecord.build` and :func:`record_dict` accept it as a stage.
    """
    v = verdict if verdict is not None else decision.verdict
    if error is None:
        error = decision.error
    if latency_s is None:
        latency_s = v.latency_s if v is not None else 0.0
    return {
        "stage": decision.stage._value_,
        "verdict": _verdict_dict(v) if v is not None else None,
        "decision": _decision_dict(decision),
        "latency_s": _float(latency_s),
        "error": _error_info_dict(error) if error is not None else None,
        "attempt": attempt,
        "candidate": candidate,
        "raw_text": v.raw_text if raw_text and v is not None else None,
    }


def _policy_dict(policy: PolicyRef | Mapping[str, str]) -> dict[str, Any]:
    if isinstance(policy, PolicyRef):
        return {"name": policy.name, "version": policy.version, "hash": policy.hash}
    return _from_mapping(_POLICY_DEFAULTS, policy)


def _reward_dict(reward: RewardEntry | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(reward, RewardEntry):
        out = {
            "candidate": reward.candidate,
            "model": reward.model,
            "score": reward.score,
            "normalized": reward.normalized,
            "hybrid": reward.hybrid,
        }
    else:
        out = _from_mapping(_REWARD_DEFAULTS, reward)
    for key in ("score", "normalized", "hybrid"):
        if key in out:
            out[key] = _finite(out[key])
    return out


def _error_dict(error: ErrorEntry | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(error, ErrorEntry):
        stage = error.stage
        return {
            "stage": stage._value_ if stage is not None else None,
            "type": error.type,
            "message": error.message,
        }
    out = _from_mapping(_ERROR_DEFAULTS, error)
    out["stage"] = _enum_value(out["stage"])
    return out


def _latency_dict(latency: Latency | Mapping[str, float | None]) -> dict[str, Any]:
    if isinstance(latency, Latency):
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


def _stage_entry(
    item: StageRecord | Decision | Mapping[str, Any], keep_raw: bool
) -> dict[str, Any]:
    if isinstance(item, Decision):
        return stage_dict(item, raw_text=keep_raw)
    if isinstance(item, StageRecord):
        entry = item.model_dump(mode="json")
    elif type(item) is dict:
        entry = item
    else:
        entry = dict(item)
    if not keep_raw and entry.get("raw_text") is not None:
        entry = {**entry, "raw_text": None}
    return entry


def record_dict(
    *,
    policy: PolicyRef | Mapping[str, str],
    stages: Iterable[StageRecord | Decision | Mapping[str, Any]] = (),
    mode: str = "concurrent",
    model: str = "",
    guard_model: str | None = None,
    final_action: Action | str | None = None,
    flags: Iterable[str] = (),
    blocked_stage: Stage | str | None = None,
    latency: Latency | Mapping[str, float | None] | None = None,
    rewards: Iterable[RewardEntry | Mapping[str, Any]] = (),
    errors: Iterable[ErrorEntry | Mapping[str, Any]] = (),
    prompt: str | None = None,
    response: str | None = None,
    content_mode: ContentMode | str = "hash",
    truncate_chars: int = DEFAULT_TRUNCATE_CHARS,
    request_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """The record of one guarded call as its plain JSON dict, built directly.

    Takes :meth:`AuditRecord.build`'s arguments and derives the same fields (see
    there); the result is what ``AuditRecord.build(...).to_json_dict()`` returns,
    with ``prev_hash`` and ``hash`` empty, ready for a sink's ``write_json``.
    Stages may also be given as :func:`stage_dict` entries, which cost a fraction
    of :class:`StageRecord` objects.

    Unlike ``build``, nothing is validated here beyond the content mode and the
    action and stage names: values must already have the types the record
    declares (as the engine's do). ``build`` is this dict, validated.
    """
    cmode = check_content_mode(content_mode)
    keep_raw = cmode == "full"
    content = {
        "mode": cmode,
        "prompt": _view(prompt, cmode, truncate_chars),
        "response": _view(response, cmode, truncate_chars),
    }
    entries: list[dict[str, Any]] = []
    first_model = ""
    for item in stages:
        if not first_model and isinstance(item, Decision) and item.verdict is not None:
            first_model = item.verdict.model
        entries.append(_stage_entry(item, keep_raw))

    all_flags = set(flags)
    for entry in entries:
        all_flags.update(entry["decision"]["flags"])

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
    error_entries += [_error_dict(e) for e in errors]

    if latency is None:
        lat = {
            "guard_s": float(sum(e["latency_s"] for e in entries)),
            "upstream_s": None,
            "total_s": 0.0,
        }
    else:
        lat = _latency_dict(latency)

    return {
        "schema_version": SCHEMA_VERSION,
        "time": iso_ms(utc_now() if time is None else as_utc(time)),
        "request_id": request_id if request_id is not None else uuid.uuid4().hex,
        "policy": _policy_dict(policy),
        "mode": mode,
        "model": model,
        "guard_model": guard_model if guard_model is not None else first_model,
        "stages": entries,
        "rewards": [_reward_dict(r) for r in rewards],
        "final_action": final,
        "flags": sorted(all_flags),
        "blocked_stage": blocked,
        "latency": lat,
        "errors": error_entries,
        "content": content,
        "prev_hash": "",
        "hash": "",
    }
