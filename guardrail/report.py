"""What the guard did on one call, as returned to the application and written to the audit log."""

from __future__ import annotations

import contextlib

from pydantic import BaseModel, ConfigDict

from guardrail.types import Action, Decision, Stage


class StageOutcome(BaseModel):
    """One check of one call: its decision (which carries the verdict) and its cost."""

    model_config = ConfigDict(frozen=True)

    stage: Stage
    decision: Decision
    latency_s: float = 0.0
    attempt: int = 0
    """0 for the first upstream answer; 1.. for regenerations and retries."""
    candidate: int | None = None
    """The choice index for response checks."""


class GuardReport(BaseModel):
    """The guard's account of one call: every check, the final action and the flags."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    action: Action
    """The strongest action taken: block > rewrite > flag > allow."""
    outcomes: tuple[StageOutcome, ...] = ()
    flags: tuple[str, ...] = ()
    blocked_stage: Stage | None = None

    @property
    def blocked(self) -> bool:
        """Whether the call was blocked: its prompt, or every choice of its answer.

        A call where only some of several choices were blocked is not blocked (its
        ``action`` is still ``block``, the strongest action taken on any choice).
        """
        return self.blocked_stage is not None

    @property
    def flagged(self) -> bool:
        """Whether any check attached a flag (e.g. ``unnecessary_refusal``)."""
        return bool(self.flags)

    def decisions(self, stage: Stage | str | None = None) -> list[Decision]:
        """The decisions taken, optionally for one stage only."""
        wanted = Stage(stage) if stage is not None else None
        return [o.decision for o in self.outcomes if wanted is None or o.stage is wanted]


_REPORT_ATTR = "_guardrail_report"


def attach_report(obj: object, report: GuardReport) -> None:
    """Attach ``report`` to a returned object without changing how it serialises."""
    object.__setattr__(obj, _REPORT_ATTR, report)


_REQUEST_ID_ATTR = "guardrail_request_id"


def name_record(error: BaseException, request_id: str) -> None:
    """Mark an exception that ended a guarded call with the id of the call's audit record.

    Sets ``error.guardrail_request_id``, so a failure the application logs leads a
    reviewer to its record. No note is added: its message stays as it was (test
    suites match on it). The first call to name it wins; an exception that takes
    no attributes is left as it is.
    """
    if getattr(error, _REQUEST_ID_ATTR, None) is not None:
        return
    with contextlib.suppress(AttributeError, TypeError):  # __slots__, read-only attributes
        setattr(error, _REQUEST_ID_ATTR, request_id)


def request_id_of(error: BaseException) -> str | None:
    """The request id of the audit record of the guarded call that ``error`` ended.

    Any exception a guarded call raises has one (a blocked call's, a refused call's,
    an upstream failure's...); ``None`` for an exception from elsewhere.
    """
    found = getattr(error, "report", None)
    if isinstance(found, GuardReport):
        return found.request_id
    named = getattr(error, _REQUEST_ID_ATTR, None)
    return named if isinstance(named, str) else None


def report(obj: object) -> GuardReport | None:
    """The guard's report for a completion or stream returned by a wrapped client.

    Streams carry theirs as ``stream.report`` too (complete once the stream ended).
    """
    found = getattr(obj, _REPORT_ATTR, None)
    if isinstance(found, GuardReport):
        return found
    live = getattr(obj, "report", None)
    return live if isinstance(live, GuardReport) else None
