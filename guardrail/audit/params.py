"""The parameters of an audit record, declared once.

:class:`RecordParams` is what one guarded call hands the audit log: the policy,
the checks in the order they ran, latencies, errors, the texts. It types the
keyword arguments of :func:`~guardrail.audit.build.record_dict` (the write side)
and :meth:`AuditRecord.build <guardrail.audit.record.AuditRecord.build>` (the same
dict, validated) as ``**params: Unpack[RecordParams]``, so that a type checker
checks callers' keyword names and types against this one declaration, and
:func:`check_params` checks them at run time.

Parts of a record may be given as the read-side models (``PolicyRef``,
``StageRecord``...) or as their JSON form. The protocols here name the fields the
write side reads from a model, so that neither this module nor
:mod:`~guardrail.audit.build` imports the models (they import both).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict

from guardrail.audit.keys import AuditKey
from guardrail.types import Action, Decision, Stage

ContentMode = Literal["full", "truncated", "hash", "none"]
"""How much of the prompt and response text a record keeps."""

CONTENT_MODES: tuple[ContentMode, ...] = ("full", "truncated", "hash", "none")
DEFAULT_TRUNCATE_CHARS = 200


class PolicyLike(Protocol):
    """What is read of a policy reference given as a model (``PolicyRef``)."""

    @property
    def name(self) -> str:
        """The policy's name."""
        ...

    @property
    def version(self) -> str:
        """The policy's version."""
        ...

    @property
    def hash(self) -> str:
        """The hash of the policy's canonical content."""
        ...


class StageLike(Protocol):
    """A check given as a model (``StageRecord``): recorded as its JSON dump."""

    @property
    def attempt(self) -> int:
        """1 for the first check; 2, 3... for regenerations and retries."""
        ...

    def model_dump(self, *, mode: Literal["json"]) -> dict[str, Any]:
        """The check's JSON form, as :func:`~guardrail.audit.build.stage_dict` lays it out."""
        ...


class RewardLike(Protocol):
    """What is read of a reward score given as a model (``RewardEntry``)."""

    @property
    def candidate(self) -> int:
        """The candidate answer's index."""
        ...

    @property
    def model(self) -> str:
        """The reward model's id."""
        ...

    @property
    def score(self) -> float | None:
        """The model's raw score."""
        ...

    @property
    def normalized(self) -> float | None:
        """The score after normalisation, if any."""
        ...

    @property
    def hybrid(self) -> float | None:
        """The combined score the gate ranked by, if any."""
        ...


class ErrorLike(Protocol):
    """What is read of a call's failure given as a model (``ErrorEntry``)."""

    @property
    def stage(self) -> Stage | None:
        """The stage the failure hit, if any."""
        ...

    @property
    def type(self) -> str:
        """The exception's class name."""
        ...

    @property
    def message(self) -> str:
        """The exception's message."""
        ...


class LatencyLike(Protocol):
    """What is read of latencies given as a model (``Latency``)."""

    @property
    def guard_s(self) -> float:
        """The guard's own time."""
        ...

    @property
    def upstream_s(self) -> float | None:
        """The upstream's time; ``None`` when it was not called."""
        ...

    @property
    def total_s(self) -> float:
        """The call's time."""
        ...


class _RequiredParams(TypedDict):
    policy: PolicyLike | Mapping[str, str]
    """Which policy decided: a PolicyRef, or its JSON form (``name``, ``version``, ``hash``)."""


class RecordParams(_RequiredParams, total=False):
    """The facts of one guarded call a record is built from, declared once.

    The keyword arguments of :func:`~guardrail.audit.build.record_dict` and
    :meth:`AuditRecord.build <guardrail.audit.record.AuditRecord.build>`. Only
    ``policy`` is required; each key says its default, or what is derived from
    the stages when it is not given.
    """

    stages: Iterable[StageLike | Decision | Mapping[str, Any]]
    """The checks in the order they ran: Decisions, StageRecords or ``stage_dict`` entries.
    Default: none."""
    mode: str
    """The engine mode (``concurrent``, ``sequential``, ``streaming``...).
    Default ``concurrent``."""
    model: str
    """The upstream model the app called. Default ``""``."""
    guard_model: str | None
    """Default: the model id of the first Decision's verdict (``""`` if none); pass it
    when the stages are ``stage_dict`` entries or StageRecords, which do not carry it."""
    final_action: Action | str | None
    """Default: the strongest stage action (block > rewrite > flag > allow), ``flag``
    when an allowed call raised flags."""
    flags: Iterable[str]
    """Flags beyond the stages' own; the record holds the sorted union. Default: none."""
    blocked_stage: Stage | str | None
    """Default: the stage of the first blocking check, when the call was blocked."""
    latency: LatencyLike | Mapping[str, float | None] | None
    """Default: ``guard_s`` the sum of the checks' latencies, ``upstream_s`` None, ``total_s`` 0."""
    rewards: Iterable[RewardLike | Mapping[str, Any]]
    """Reward-model scores; non-finite scores are recorded as None. Default: none."""
    errors: Iterable[ErrorLike | Mapping[str, Any]]
    """Failures no stage carries (upstream, reward); recorded after the stages' guard errors.
    Default: none."""
    prompt: str | None
    """The prompt text, kept per ``content_mode``. Default None."""
    response: str | None
    """The response text, kept per ``content_mode``. Default None."""
    content_mode: ContentMode | str
    """See ``content_view``; the guard's raw output is kept only in ``full``. Default ``hash``."""
    content_key: AuditKey | None
    """The ``hash`` mode's key: keyed (HMAC) hashes with it, plain sha256 without. Default None."""
    truncate_chars: int
    """The length kept by the ``truncated`` mode. Default 200."""
    request_id: str | None
    """Default: a new uuid4 hex."""
    time: datetime | None
    """When the call finished. Default: now. Naive datetimes are taken as UTC."""


RECORD_PARAMS = RecordParams.__required_keys__ | RecordParams.__optional_keys__
"""The names :class:`RecordParams` declares."""


def check_params(params: Mapping[str, Any]) -> None:
    """Raise TypeError unless ``params`` has ``policy`` and only :class:`RecordParams` keys.

    A type checker finds these mistakes in typed code; this finds them in the rest
    (a misspelt keyword would otherwise be ignored silently).
    """
    if not params.keys() <= RECORD_PARAMS:
        name = sorted(params.keys() - RECORD_PARAMS)[0]
        close = difflib.get_close_matches(name, RECORD_PARAMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"audit record: unexpected keyword argument {name!r}{hint}")
    if "policy" not in params:
        raise TypeError("audit record: missing required keyword argument 'policy'")
