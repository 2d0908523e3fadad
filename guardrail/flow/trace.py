"""What happened during one guarded call: the report the caller gets, the audit record kept.

A :class:`Trace` is filled in by the flow as checks run; :meth:`Trace.report`
makes the immutable :class:`~guardrail.report.GuardReport` returned to the
application, and :func:`audit_record` the audit record's JSON dict (the one
derivation lives in :mod:`guardrail.audit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from guardrail.audit import (
    AuditKey,
    ContentMode,
    PolicyRef,
    new_request_id,
    record_dict,
    stage_dict,
)
from guardrail.chat import last_user_text
from guardrail.report import GuardReport, StageOutcome, name_record
from guardrail.reward.base import RewardScore
from guardrail.secrets import NO_SECRETS
from guardrail.types import Action, Stage

_ACTION_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.REWRITE: 2, Action.BLOCK: 3}


@dataclass(slots=True)  # not frozen: a frozen dataclass costs twice as much to build
class Step:
    """One upstream call or reward scoring of a call, and when it ran.

    Times are :func:`time.perf_counter` readings, like :attr:`Trace.started`.
    """

    what: Literal["upstream", "reward"]
    started: float
    ended: float
    attempt: int = 0
    """0 for the first answer; 1.. for regenerations and retries."""
    error: BaseException | None = None
    result: Any = None
    """The upstream's completion (a stream's :class:`StreamEnd`), or the scores given."""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """What an upstream stream reported by its end: its last chunk, each choice's finish."""

    chunk: Any
    finish_reasons: tuple[str, ...]


@dataclass(slots=True)
class Trace:
    """What happened during one guarded call; becomes the report and the audit record."""

    request_id: str
    mode: str
    model: str
    messages: Any
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[StageOutcome] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    """``(where, error)``: where is a stage's value, ``"upstream"``, ``"reward"``, or
    ``"input"`` (the call's arguments are not a conversation)."""
    guard_s: float = 0.0
    upstream_s: float = 0.0
    action: Action = Action.ALLOW
    flags: list[str] = field(default_factory=list)
    blocked_stage: Stage | None = None
    responses: list[str] = field(default_factory=list)
    rewards: list[tuple[int | None, RewardScore, float]] = field(default_factory=list)
    """(candidate, score, hybrid score) for every scored answer."""
    outcome_errors: dict[int, BaseException] = field(default_factory=dict)
    """The guard exception behind each outcome decided by the failure mode, by position."""
    outcome_rewards: dict[int, float] = field(default_factory=dict)
    """The reward score (goodness) the policy read for each scored outcome, by position."""
    mask: Callable[[str], str] = NO_SECRETS
    """Masks the call's secrets (:class:`~guardrail.secrets.Masker`) in every error text
    that becomes part of a decision or the audit record."""
    check_starts: list[float] = field(default_factory=list)
    """When the check behind each outcome started (``perf_counter``), by position."""
    steps: list[Step] = field(default_factory=list)
    """The upstream calls and reward scorings, in the order they ended."""
    raced_at: float = 0.0
    """When the upstream call raced against the prompt check started (concurrent mode)."""
    span: Any = None
    """The call's tracing span, kept by the guard's telemetry; flows never read it."""

    @classmethod
    def begin(
        cls,
        mode: str,
        *,
        model: str = "",
        messages: Any = (),
        mask: Callable[[str], str] = NO_SECRETS,
    ) -> Trace:
        """The trace of a call starting now, with a fresh request id.

        ``mask`` hides the secrets the call's backends and upstream send.
        """
        return cls(
            request_id=new_request_id(), mode=mode, model=model, messages=messages, mask=mask
        )

    def ended_by(self, error: BaseException) -> None:
        """Name this call's audit record on an exception that ends the call (see report)."""
        name_record(error, self.request_id)

    def took(self, action: Action, *, flags: Sequence[str] = ()) -> None:
        """Record an action applied to the call (the strongest one is reported)."""
        if _ACTION_RANK[action] > _ACTION_RANK[self.action]:
            self.action = action
        for flag in flags:
            if flag not in self.flags:
                self.flags.append(flag)

    def upstream_took(
        self,
        started: float,
        *,
        attempt: int = 0,
        error: BaseException | None = None,
        result: Any = None,
    ) -> None:
        """Record an upstream call that ran from ``started`` (a raced one: from its start) to now.

        ``upstream_s`` counts the time the flow waited for it.
        """
        ended = time.perf_counter()
        self.upstream_s += ended - started
        since = self.raced_at if self.raced_at and not attempt else started
        self.steps.append(Step("upstream", since, ended, attempt, error, result))

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.perf_counter() - self.started

    def report(self) -> GuardReport:
        """The immutable report returned to the application."""
        return GuardReport(
            request_id=self.request_id,
            action=self.action,
            outcomes=tuple(self.outcomes),
            flags=tuple(self.flags),
            blocked_stage=self.blocked_stage,
        )


@dataclass(frozen=True)
class Recording:
    """What an audit record needs besides the trace: the policy and what content to keep."""

    policy: PolicyRef
    content: ContentMode = "hash"
    truncate_chars: int = 200
    content_key: AuditKey | None = None
    """The key of keyed content hashes (``content: hash`` with ``audit.hmac_key_env``)."""


_ERROR_STAGES = {"reward": Stage.RESPONSE.value, "input": Stage.PROMPT.value}
_ERROR_PREFIXES = {"reward": "reward model: "}


def audit_record(trace: Trace, recording: Recording, *, guard_model: str) -> dict[str, Any]:
    """The audit record of a finished call, as the JSON dict sinks write.

    Every error message, the reasons of decisions taken on a failure and the
    guard's raw output pass through the trace's mask: what a server echoed
    (an API key...) never reaches the record.
    """
    content = recording.content
    mask = trace.mask
    stages = []
    for i, o in enumerate(trace.outcomes):
        error = trace.outcome_errors.get(i)
        entry = stage_dict(
            o.decision,
            latency_s=o.latency_s,
            error=error,
            attempt=o.attempt + 1,
            candidate=o.candidate,
            raw_text=content == "full",
            reward=trace.outcome_rewards.get(i),
        )
        if entry["error"] is not None:
            entry["error"]["message"] = mask(entry["error"]["message"])
            entry["decision"]["reason"] = mask(entry["decision"]["reason"])
        if entry["raw_text"]:
            entry["raw_text"] = mask(entry["raw_text"])
        stages.append(entry)
    # Guard failures are recorded with their stage; upstream, reward-model and input
    # failures (which no stage decision carries) are added here.
    errors = [
        {
            "stage": _ERROR_STAGES.get(where),
            "type": type(exc).__name__,
            "message": mask(_ERROR_PREFIXES.get(where, "") + str(exc)),
        }
        for where, exc in trace.errors
        if where in ("upstream", "reward", "input")
    ]
    return record_dict(
        policy=recording.policy,
        stages=stages,
        mode=trace.mode,
        model=trace.model,
        guard_model=guard_model,
        final_action=trace.action,
        flags=trace.flags,
        blocked_stage=trace.blocked_stage,
        latency={
            "guard_s": trace.guard_s,
            "upstream_s": trace.upstream_s if trace.mode != "check" else None,
            "total_s": trace.elapsed(),
        },
        errors=errors,
        rewards=[
            {
                "candidate": candidate or 0,
                "model": score.model,
                "score": score.score,
                "normalized": score.normalized,
                "hybrid": hybrid,
            }
            for candidate, score, hybrid in trace.rewards
        ],
        prompt=last_user_text(trace.messages),
        response="\n\n".join(trace.responses) if trace.responses else None,
        content_mode=content,
        content_key=recording.content_key,
        truncate_chars=recording.truncate_chars,
        request_id=trace.request_id,
    )
