"""The audit record: one per guarded call, summarising what was checked and decided.

A record is built once at the end of a call (:meth:`AuditRecord.build`) from the
policy's :class:`~guardrail.types.Decision` objects, turned into a plain JSON
dict once (:meth:`AuditRecord.to_json_dict`) and handed to a sink, which seals it
into the hash chain (:mod:`guardrail.audit.chain`).

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
    mode = check_content_mode(mode)
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
        if isinstance(error, BaseException):
            return cls(type=type(error).__name__, message=str(error))
        return cls(type="error", message=error)


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
        # Read the fields straight off the verdict (components too) in one validation.
        return cls.model_validate(verdict, from_attributes=True)


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
        return cls(
            action=decision.action,
            rule_id=decision.rule_id,
            reason=decision.reason,
            flags=decision.flags,
            rewrite=decision.rewrite.mode.value if decision.rewrite is not None else None,
            retry=decision.retry is not None,
        )


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
        the content mode is ``full``.
        """
        v = verdict if verdict is not None else decision.verdict
        if error is None and decision.error is not None:
            error = decision.error
        return cls(
            stage=decision.stage,
            verdict=VerdictSummary.of(v) if v is not None else None,
            decision=DecisionSummary.of(decision),
            latency_s=latency_s if latency_s is not None else (v.latency_s if v else 0.0),
            error=ErrorInfo.of(error) if error is not None else None,
            attempt=attempt,
            candidate=candidate,
            raw_text=v.raw_text if raw_text and v is not None else None,
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


# Precedence when deriving a call's final action from its checks.
_ACTION_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.REWRITE: 2, Action.BLOCK: 3}


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


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
        # Naive datetimes are taken as UTC; aware ones are converted, so every
        # record (and every time filter) compares on one clock.
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @field_serializer("time")
    def _time_json(self, value: datetime) -> str:
        return iso_ms(value)

    @classmethod
    def build(
        cls,
        *,
        policy: PolicyRef | Mapping[str, str],
        stages: Iterable[StageRecord | Decision] = (),
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
        :class:`StageRecord` entries (for attempts, candidates, errors) or plain
        :class:`~guardrail.types.Decision` objects. What is not given is derived:

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
        """
        cmode = check_content_mode(content_mode)
        keep_raw = cmode == "full"
        content = ContentRecord(
            mode=cmode,
            prompt=content_view(prompt, cmode, truncate_chars),
            response=content_view(response, cmode, truncate_chars),
        )
        entries: list[StageRecord] = []
        first_model = ""
        for item in stages:
            if isinstance(item, Decision):
                if not first_model and item.verdict is not None:
                    first_model = item.verdict.model
                entry = StageRecord.from_decision(item, raw_text=keep_raw)
            else:
                entry = item
                if entry.raw_text is not None and not keep_raw:
                    entry = entry.model_copy(update={"raw_text": None})
            entries.append(entry)

        all_flags = set(flags)
        for entry in entries:
            all_flags.update(entry.decision.flags)

        if final_action is None:
            final = max(
                (e.decision.action for e in entries),
                key=_ACTION_RANK.__getitem__,
                default=Action.ALLOW,
            )
            if final is Action.ALLOW and all_flags:
                final = Action.FLAG
        else:
            final = Action(final_action)
        if blocked_stage is None and final is Action.BLOCK:
            blocked_stage = next(
                (e.stage for e in entries if e.decision.action is Action.BLOCK), None
            )

        error_entries = [
            ErrorEntry(stage=e.stage, type=e.error.type, message=e.error.message)
            for e in entries
            if e.error is not None
        ]
        error_entries.extend(
            e if isinstance(e, ErrorEntry) else ErrorEntry.model_validate(e) for e in errors
        )

        if latency is None:
            lat = Latency(guard_s=sum(e.latency_s for e in entries))
        elif isinstance(latency, Latency):
            lat = latency
        else:
            lat = Latency.model_validate(latency)

        return cls(
            time=time if time is not None else utc_now(),
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            policy=policy if isinstance(policy, PolicyRef) else PolicyRef.model_validate(policy),
            mode=mode,
            model=model,
            guard_model=guard_model if guard_model is not None else first_model,
            stages=tuple(entries),
            rewards=tuple(
                r if isinstance(r, RewardEntry) else RewardEntry.model_validate(r) for r in rewards
            ),
            final_action=final,
            flags=tuple(sorted(all_flags)),
            blocked_stage=Stage(blocked_stage) if blocked_stage is not None else None,
            latency=lat,
            errors=tuple(error_entries),
            content=content,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (one ``model_dump``; what sinks serialise)."""
        return self.model_dump(mode="json")

    def stage_entries(self, stage: Stage | str) -> tuple[StageRecord, ...]:
        """The checks of one stage, in the order they ran."""
        s = Stage(stage)
        return tuple(e for e in self.stages if e.stage is s)
