"""Replaying an audit log under another policy: what that policy would have decided.

Every guarded call's record keeps each check's verdict (level, categories,
refusal, probabilities), the reward score its policy read and the guard's
failure, whatever the content mode. :func:`replay_record` rebuilds each
check's :class:`~guardrail.types.Verdict` from them, lets another policy
decide it (:func:`~guardrail.policy.evaluate`; a failed check through the new
policy's failure mode), derives the call's final action as the flow does (the
strongest action applied; a blocked prompt ends the call; a response block or
rewrite cuts a stream) and compares it with the recorded one. No model runs.

What a record cannot tell is never guessed; such a call is counted as not
replayable, with the reason (:data:`NOT_REPLAYABLE`):

- a prompt the new policy blocks ends the call there: its response would not
  have run (``prompt_now_blocks``, replayed as a block);
- a prompt the old policy blocked had no response judged, so its response
  decision under the new policy is unknown (``response never judged``);
- a changed prompt rewrite would have sent the upstream another prompt;
- a retry or regeneration asks the upstream for answers nobody recorded;
- several candidates (``n > 1``, best-of-n): the choice among them depends on
  answers and scores the replay does not re-rank;
- a stream the old policy cut was never judged past the cut;
- a direct response check does not record the prompt verdict its caller gave;
- a check without a recorded reward score, under rules that read one.

:func:`replay_logs` streams records from files (plain or gzip) and adds the
results up in constant memory (:class:`ReplayReport`): counts per change (old
action and deciding rule to new ones), a few example request ids per change,
and the calls that are not replayable, by reason. Records that are not calls
(events, recoveries) are skipped and counted per kind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from guardrail.audit.build import strongest_action
from guardrail.audit.reader import read_entries
from guardrail.audit.record import AuditEntry, AuditRecord, StageRecord, VerdictSummary
from guardrail.policy import Policy, evaluate
from guardrail.types import Action, Decision, RewriteMode, Stage, Verdict

__all__ = [
    "NOT_REPLAYABLE",
    "CallReplay",
    "ChangeRow",
    "ReplayReport",
    "Replayer",
    "iter_replays",
    "replay_logs",
    "replay_record",
    "verdict_of",
]

NOTHING_JUDGED = "nothing judged"
RESPONSE_NEVER_JUDGED = "response never judged"
PROMPT_REWRITE_CHANGED = "prompt rewrite changed"
SECOND_CHANCE = "retry or regeneration"
SEVERAL_CANDIDATES = "several candidates"
STREAM_CUT = "stream cut before its end"
NO_PROMPT_VERDICT = "prompt verdict not recorded"
NO_REWARD = "reward not recorded"

NOT_REPLAYABLE: dict[str, str] = {
    NOTHING_JUDGED: "the call was refused before any check (its arguments were no conversation)",
    RESPONSE_NEVER_JUDGED: "the old policy blocked the prompt, so no response was judged",
    PROMPT_REWRITE_CHANGED: "the prompt rewrite changed: the upstream would have seen another "
    "prompt",
    SECOND_CHANCE: "the new policy asks the upstream for another answer (retry, regenerate)",
    SEVERAL_CANDIDATES: "several candidate answers (n > 1 or best-of-n) are not re-ranked",
    STREAM_CUT: "the old policy cut the stream: the rest of the answer was never judged",
    NO_PROMPT_VERDICT: "a direct response check: the prompt verdict its rules read is not recorded",
    NO_REWARD: "the new rules read a reward score this check does not record",
}
"""Why a call cannot be replayed exactly, by reason."""

_K = TypeVar("_K")

_CHECK_MODE = "check"
_STREAM_MODE = "streaming"
_CUTS = (Action.BLOCK, Action.REWRITE)


@dataclass(frozen=True)
class CallReplay:
    """One call replayed: the recorded decision and the new policy's.

    A rule is written ``stage:rule_id``, the check that decided the call's action
    (``-`` when nothing was judged). ``new_action`` and ``new_rule`` are ``None``
    when the call is not replayable (``not_replayable`` says why).
    """

    request_id: str
    old_action: Action
    old_rule: str
    new_action: Action | None = None
    new_rule: str | None = None
    prompt_now_blocks: bool = False
    """The new policy blocks a prompt the old one let through: the response never runs."""
    not_replayable: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the new policy takes another final action."""
        return self.new_action is not None and self.new_action is not self.old_action

    @property
    def rule_changed(self) -> bool:
        """Whether another check or rule decides (whatever the action)."""
        return self.new_rule is not None and self.new_rule != self.old_rule


@dataclass(frozen=True)
class _Check:
    stage: Stage
    action: Action
    rule_id: str
    second_chance: bool


def _deciding(checks: Sequence[_Check], final: Action) -> str:
    """The check that decided a call: the first that took its final action.

    An allowed call was decided by its last check (every check before it let it
    through). A call rewritten by a successful retry took the action of no single
    check: the check that asked for the retry decided it.
    """
    ordered = reversed(checks) if final is Action.ALLOW else iter(checks)
    chosen = next((c for c in ordered if c.action is final), None)
    if chosen is None:
        chosen = next((c for c in checks if c.second_chance), checks[-1] if checks else None)
    return "-" if chosen is None else f"{chosen.stage.value}:{chosen.rule_id}"


def _recorded(entry: StageRecord) -> _Check:
    d = entry.decision
    return _Check(entry.stage, d.action, d.rule_id, d.retry or d.rewrite is not None)


def _new(decision: Decision) -> _Check:
    second = decision.retry is not None or (
        decision.rewrite is not None and decision.rewrite.mode is RewriteMode.REGENERATE
    )
    return _Check(decision.stage, decision.action, decision.rule_id, second)


def verdict_of(stage: Stage, summary: VerdictSummary) -> Verdict:
    """The verdict a record's summary stands for, as the policy reads it."""
    return Verdict(
        stage=stage,
        level=summary.level,
        category=summary.category,
        categories=summary.categories,
        refusal=summary.refusal,
        level_probs=summary.level_probs,
        category_probs=summary.category_probs,
        refusal_probs=summary.refusal_probs,
        part=summary.part,
        truncated=summary.truncated,
        skipped_parts=summary.skipped_parts,
        components=tuple(verdict_of(stage, c) for c in summary.components),
    )


def _decide(policy: Policy, entry: StageRecord, prompt_verdict: Verdict | None = None) -> Decision:
    """The new policy's decision on one recorded check (a failure: its failure mode)."""
    if entry.error is not None or entry.verdict is None:
        error = entry.error
        text = f"{error.type}: {error.message}" if error is not None else "no verdict recorded"
        return evaluate(policy, entry.stage, None, error=text)
    return evaluate(
        policy,
        entry.stage,
        verdict_of(entry.stage, entry.verdict),
        prompt_verdict=prompt_verdict,
        reward=entry.reward,
    )


def _reads(policy: Policy, stage: Stage, *conditions: str) -> bool:
    return any(
        getattr(rule.when, name) is not None
        for rule in policy.rules_for(stage)
        for name in conditions
    )


def replay_record(record: AuditRecord, policy: Policy) -> CallReplay:
    """What ``policy`` would have decided for one recorded call (see the module's notes)."""
    old_rule = _deciding([_recorded(e) for e in record.stages], record.final_action)

    def result(
        checks: Sequence[_Check], taken: Iterable[Action], *, now_blocks: bool = False
    ) -> CallReplay:
        action = Action(strongest_action(taken))
        return CallReplay(
            record.request_id,
            record.final_action,
            old_rule,
            action,
            _deciding(checks, action),
            prompt_now_blocks=now_blocks,
        )

    def unknown(reason: str) -> CallReplay:
        return CallReplay(record.request_id, record.final_action, old_rule, not_replayable=reason)

    if not record.stages:
        return unknown(NOTHING_JUDGED)
    checks: list[_Check] = []
    taken: list[Action] = []
    prompt_verdict: Verdict | None = None
    prompts = record.stage_entries(Stage.PROMPT)
    responses = record.stage_entries(Stage.RESPONSE)
    if prompts:
        entry = prompts[0]
        decision = _decide(policy, entry)
        checks.append(_new(decision))
        taken.append(decision.action)
        prompt_verdict = decision.verdict
        old = entry.decision
        if decision.blocked:  # the call ends here, as the flow ends it
            return result(checks, taken, now_blocks=old.action is not Action.BLOCK)
        if old.action is Action.BLOCK and record.mode != _CHECK_MODE:
            return unknown(RESPONSE_NEVER_JUDGED)
        rewrites = Action.REWRITE in (old.action, decision.action)
        if rewrites and (old.action, old.rule_id) != (decision.action, decision.rule_id):
            return unknown(PROMPT_REWRITE_CHANGED)
    if not responses:  # a prompt check alone, or the upstream failed: the prompt decides
        return result(checks, taken)
    direct = record.mode == _CHECK_MODE
    if direct and not prompts and _reads(policy, Stage.RESPONSE, "prompt_levels"):
        return unknown(NO_PROMPT_VERDICT)
    reads_reward = _reads(policy, Stage.RESPONSE, "reward_above", "reward_below")
    if reads_reward and any(e.reward is None and e.verdict is not None for e in responses):
        return unknown(NO_REWARD)

    if record.mode == _STREAM_MODE:
        # Windows in the order they were judged; the first block or rewrite cuts the
        # stream for every choice, and nothing after it was judged.
        for entry in responses:
            decision = _decide(policy, entry, prompt_verdict)
            checks.append(_new(decision))
            if decision.action in _CUTS:
                taken.append(Action.BLOCK if decision.blocked else Action.REWRITE)
                return result(checks, taken)
            taken.append(decision.action)
        if responses[-1].decision.action in _CUTS:
            return unknown(STREAM_CUT)
        return result(checks, taken)

    first = [e for e in responses if e.attempt == 1]
    if len(first) != 1:
        return unknown(SEVERAL_CANDIDATES)
    decision = _decide(policy, first[0], prompt_verdict)
    checks.append(_new(decision))
    if record.mode == _CHECK_MODE:  # a direct check applies its decision as it is
        taken.append(decision.action)
        return result(checks, taken)
    # What the completion flow does with one answer's decision.
    rewrite = decision.rewrite
    if decision.action is Action.REWRITE and rewrite is not None:
        if rewrite.mode is RewriteMode.REGENERATE:
            return unknown(SECOND_CHANCE)
        taken.append(Action.REWRITE)
    elif decision.blocked:
        taken.append(Action.BLOCK)
    elif decision.retry is not None:
        return unknown(SECOND_CHANCE)
    else:
        taken.append(decision.action)
    return result(checks, taken)


class ChangeRow(BaseModel):
    """Calls whose decision changed in one way: old action and rule to new ones."""

    model_config = ConfigDict(frozen=True)

    old_action: Action
    new_action: Action
    old_rule: str
    new_rule: str
    calls: int
    examples: tuple[str, ...] = ()
    """The first request ids of such calls, in log order."""


class ReplayReport(BaseModel):
    """What a policy would have decided for a set of logs, added up.

    ``calls`` = ``replayed`` + the sum of ``not_replayable``; ``replayed`` =
    ``changed`` + ``unchanged`` (the same action; ``rule_changed`` of those were
    decided by another rule). ``changes`` lists every replayed call whose action
    or deciding rule differs, grouped, most frequent first.
    """

    model_config = ConfigDict(frozen=True)

    policy: str
    policy_hash: str
    logs: tuple[str, ...] = ()
    records: int = 0
    """Every record read, calls or not."""
    calls: int = 0
    replayed: int = 0
    changed: int = 0
    unchanged: int = 0
    rule_changed: int = 0
    prompt_now_blocks: int = 0
    """Replayed calls whose prompt the new policy blocks (their response never runs)."""
    not_replayable: dict[str, int] = {}
    not_replayable_examples: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, int] = {}
    """Records that are not calls, per kind (``event``, ``recovery``)."""
    changes: tuple[ChangeRow, ...] = ()


class Replayer:
    """Adds up replayed calls in constant memory: counts and at most ``examples`` ids each."""

    def __init__(self, policy: Policy, *, examples: int = 5) -> None:
        if examples < 0:
            raise ValueError("examples must be >= 0")
        self.policy = policy
        self.examples = examples
        self._logs: list[str] = []
        self._records = 0
        self._replayed = self._changed = self._rule_changed = self._now_blocks = 0
        self._skipped: Counter[str] = Counter()
        self._unknown: Counter[str] = Counter()
        self._unknown_ids: dict[str, list[str]] = {}
        self._rows: Counter[tuple[Action, Action, str, str]] = Counter()
        self._row_ids: dict[tuple[Action, Action, str, str], list[str]] = {}

    def add(self, entry: AuditEntry) -> CallReplay | None:
        """Replay one record (``None`` for a record that is not a call: counted, skipped)."""
        self._records += 1
        if not isinstance(entry, AuditRecord):
            self._skipped[entry.kind] += 1
            return None
        replay = replay_record(entry, self.policy)
        if replay.not_replayable is not None:
            self._unknown[replay.not_replayable] += 1
            self._keep(self._unknown_ids, replay.not_replayable, replay.request_id)
            return replay
        self._replayed += 1
        self._changed += replay.changed
        self._now_blocks += replay.prompt_now_blocks
        self._rule_changed += replay.rule_changed and not replay.changed
        new_action, new_rule = replay.new_action, replay.new_rule
        if (
            new_action is not None
            and new_rule is not None
            and (new_action is not replay.old_action or new_rule != replay.old_rule)
        ):
            key = (replay.old_action, new_action, replay.old_rule, new_rule)
            self._rows[key] += 1
            self._keep(self._row_ids, key, replay.request_id)
        return replay

    def _keep(self, ids: dict[_K, list[str]], key: _K, request_id: str) -> None:
        kept = ids.setdefault(key, [])
        if len(kept) < self.examples:
            kept.append(request_id)

    def add_log(self, path: str | os.PathLike[str]) -> None:
        """Replay every record of one log file (plain or gzip), streaming it."""
        self._logs.append(os.fspath(path))
        for entry in read_entries(path):
            self.add(entry)

    def report(self) -> ReplayReport:
        """The totals so far."""
        calls = self._replayed + sum(self._unknown.values())
        rows = sorted(
            self._rows.items(),
            key=lambda kv: (-kv[1], kv[0][0].value, kv[0][1].value, kv[0][2], kv[0][3]),
        )
        return ReplayReport(
            policy=self.policy.name,
            policy_hash=self.policy.content_hash,
            logs=tuple(self._logs),
            records=self._records,
            calls=calls,
            replayed=self._replayed,
            changed=self._changed,
            unchanged=self._replayed - self._changed,
            rule_changed=self._rule_changed,
            prompt_now_blocks=self._now_blocks,
            not_replayable=dict(self._unknown.most_common()),
            not_replayable_examples={k: tuple(v) for k, v in self._unknown_ids.items()},
            skipped=dict(self._skipped.most_common()),
            changes=tuple(
                ChangeRow(
                    old_action=old,
                    new_action=new,
                    old_rule=old_rule,
                    new_rule=new_rule,
                    calls=n,
                    examples=tuple(self._row_ids[(old, new, old_rule, new_rule)]),
                )
                for (old, new, old_rule, new_rule), n in rows
            ),
        )


def replay_logs(
    paths: Iterable[str | os.PathLike[str]], policy: Policy, *, examples: int = 5
) -> ReplayReport:
    """Replay every call of the logs (plain or gzip, in order) under ``policy``.

    Streams the files in constant memory. Raises
    :class:`~guardrail.audit.reader.AuditFileError` for a file that cannot be
    read or a line that is not a record.
    """
    replayer = Replayer(policy, examples=examples)
    for path in paths:
        replayer.add_log(path)
    return replayer.report()


def iter_replays(entries: Iterable[AuditEntry], policy: Policy) -> Iterator[CallReplay]:
    """Replay each call among ``entries`` lazily (records of other kinds are passed over)."""
    for entry in entries:
        if isinstance(entry, AuditRecord):
            yield replay_record(entry, policy)
