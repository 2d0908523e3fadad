"""The audit record as reviewers read it: one per guarded call, validated models.

:class:`AuditRecord` and its parts are what a log line parses into
(:func:`~guardrail.audit.reader.read_records`), what custom sinks receive and
what review tools search. They are the read side: records are derived once, on
the write side (:mod:`guardrail.audit.build`), as plain JSON dicts laid out as
these models dump them; the constructors here (:meth:`AuditRecord.build`,
:meth:`StageRecord.from_decision`, the ``of`` methods) validate those dicts and
derive nothing themselves.

Records summarise verdicts and decisions instead of dumping them: reviewers need
the level, category, rule and scores, not whole model objects, and the line must
stay small and fast to write.

A log may also hold records that are not guarded calls (:class:`EventRecord`:
a crash recovery, a circuit breaker's transition...), told apart by their
``kind`` field, which call records never carry; :func:`parse_entry` reads
either, and :data:`AuditEntry` is their union.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from guardrail.audit.build import (
    CALL_KIND,
    as_utc,
    check_event_names,
    decision_dict,
    error_info_dict,
    iso_ms,
    record_dict,
    stage_dict,
    verdict_dict,
)
from guardrail.audit.params import ContentMode
from guardrail.types import Action, Category, Decision, ResponsePart, SafetyLevel, Stage, Verdict

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from guardrail.audit.params import RecordParams


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
        return cls.model_validate(error_info_dict(error))


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
        return cls.model_validate(verdict_dict(verdict))


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
        return cls.model_validate(decision_dict(decision))


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
    # Written only when the check was scored (exclude_if), so that records without
    # reward models, and every record written before the field existed, keep their
    # exact bytes (their hashes are over those bytes).
    reward: float | None = Field(default=None, exclude_if=lambda value: value is None)
    """The reward score the policy's reward conditions read for this check (higher is
    better); ``None`` when the answer was not scored."""

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
        reward: float | None = None,
    ) -> StageRecord:
        """Summarise one check from the policy's decision.

        :func:`~guardrail.audit.build.stage_dict`, validated: the arguments, and
        their defaults, are described there.
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
                reward=reward,
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
    """The prompt and response text as kept under ``mode``.

    See :func:`~guardrail.audit.build.content_view`.
    """

    mode: ContentMode
    prompt: str | None = None
    response: str | None = None


class AuditRecord(_Model):
    """One guarded call, as written to the audit log (one JSON line).

    Build it with :meth:`build`; sinks fill in ``prev_hash`` and ``hash`` (and
    ``chain``, ``index``) when they write it, so a record in hand before writing has
    them empty.
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
    chain: Literal[2] | None = None
    """The line layout it was read from (:mod:`~guardrail.audit.linefmt`): ``2``, or
    ``None`` for version 1 (and for a record not yet written)."""
    index: str | None = None
    """The digest of the log's index through this record's row, when it has one."""
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
    def build(cls, **params: Unpack[RecordParams]) -> AuditRecord:
        """Build the record of one guarded call: ``record_dict(**params)``, validated.

        Takes the keyword arguments of :func:`~guardrail.audit.build.record_dict`
        (:class:`~guardrail.audit.params.RecordParams`: the policy, the checks in the
        order they ran, the texts...), which derives what is not given; so
        ``AuditRecord.build(**kw).to_json_dict() == record_dict(**kw)`` given the same
        ``request_id`` and ``time``. Unlike ``record_dict``, every value is validated:
        a typo in a part's key or an out-of-range value raises ``ValidationError``.
        The record in hand equals the one read back from its line (``time`` too,
        which is kept to the millisecond, as written).
        """
        stages = params.get("stages")
        if stages is not None:
            # Stages in JSON form are checked before anything is derived from them, so
            # that a malformed one fails naming its field (not as a KeyError mid-derivation).
            params["stages"] = [
                StageRecord.model_validate(s) if isinstance(s, Mapping) else s for s in stages
            ]
        return cls.model_validate(record_dict(**params))

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (one ``model_dump``; what sinks serialise)."""
        return _without_unset_chain(self.model_dump(mode="json"))

    def stage_entries(self, stage: Stage | str) -> tuple[StageRecord, ...]:
        """The checks of one stage, in the order they ran."""
        s = Stage(stage)
        return tuple(e for e in self.stages if e.stage is s)

    @property
    def kind(self) -> str:
        """``call``: what every :class:`AuditRecord` is (the line has no ``kind`` field)."""
        return CALL_KIND


class EventRecord(_Model):
    """A record that is not a guarded call, chained like every record.

    ``kind`` says what sort of record it is: ``recovery`` (a JSONL sink moved a
    torn last line aside; ``details`` name the quarantine file and the moved
    bytes' ``sha256`` and length) or ``event`` (written by
    :func:`~guardrail.audit.sinkbase.write_event`, e.g. a circuit breaker's
    transition); readers accept other kinds of this layout too. ``type`` names
    what happened and ``details`` holds its JSON facts.
    """

    schema_version: Literal[1] = 1
    kind: str
    time: datetime
    """When it happened; UTC, written as ISO-8601 with milliseconds."""
    type: str
    details: dict[str, Any] = {}
    chain: Literal[2] | None = None
    """As :attr:`AuditRecord.chain`."""
    index: str | None = None
    """As :attr:`AuditRecord.index`."""
    prev_hash: str = ""
    hash: str = ""

    @model_validator(mode="after")
    def _names(self) -> EventRecord:
        check_event_names(self.kind, self.type)  # a ValueError: reported as a validation error
        return self

    @field_validator("time", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)

    @field_serializer("time")
    def _time_json(self, value: datetime) -> str:
        return iso_ms(value)

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (what sinks serialise)."""
        return _without_unset_chain(self.model_dump(mode="json"))


def _without_unset_chain(data: dict[str, Any]) -> dict[str, Any]:
    # A version-1 line, or a record not yet written, has no chain or index field.
    for name in ("chain", "index"):
        if data.get(name) is None:
            data.pop(name, None)
    return data


AuditEntry: TypeAlias = AuditRecord | EventRecord
"""Any record of a log: a guarded call's, or another kind's."""


def parse_entry(data: Mapping[str, Any]) -> AuditEntry:
    """Validate one parsed log line as the record it is.

    An :class:`EventRecord` when it has a ``kind`` field, else an :class:`AuditRecord`;
    pydantic's ``ValidationError`` when it is neither.
    """
    if "kind" in data:
        return EventRecord.model_validate(data)
    return AuditRecord.model_validate(data)
