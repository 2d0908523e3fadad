"""The policy schema: what a policy file may say, as frozen pydantic models.

A policy is versioned (``version: 1``) and strict on purpose, because a typo in a
safety policy must never turn into a silently ignored setting:

- unknown keys are errors (``extra="forbid"`` on every model);
- scalars are not coerced: ``"400"`` is not a number and ``yes`` is not a string;
- settings that could never take effect are errors too: ``refusal`` on a prompt
  rule, a ``template`` rewrite of a prompt, ``base_url`` on a local guard...

This module holds the top-level :class:`Policy` and re-exports its parts, each
defined by its concern: :mod:`~guardrail.policy.fields` (the strict base and
scalars), :mod:`~guardrail.policy.backends` (guard, reward models, breakers),
:mod:`~guardrail.policy.handling` (execution, failure, block, streaming, audit,
client APIs, defaults) and :mod:`~guardrail.policy.rules` (conditions and rules).

The models validate Python data; :mod:`guardrail.policy.loader` reads YAML and,
with :mod:`guardrail.policy.humanize`, turns validation errors into
:class:`~guardrail.errors.PolicyError` with the file, line, column and field path.
This module imports neither: :meth:`Policy.default` validates the packaged
default through :mod:`guardrail.policy.packaged`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, PrivateAttr, StrictBool, StrictStr, model_validator

from guardrail.policy.backends import BreakerConfig, GuardConfig, RewardConfig, RewardModelConfig
from guardrail.policy.fields import FieldValueError, StrictModel, Text
from guardrail.policy.handling import (
    DEFAULT_BLOCK_MESSAGE,
    AuditConfig,
    BlockConfig,
    ClientConfig,
    DefaultsConfig,
    ExecutionConfig,
    FailureConfig,
    StreamingConfig,
    TelemetryConfig,
)
from guardrail.policy.packaged import (
    DEFAULT_POLICY_SOURCE,
    default_policy_bytes,
    default_policy_data,
)
from guardrail.policy.rules import (
    PROBABILITY_NAMES,
    RESERVED_RULE_IDS,
    Conditions,
    ProbabilityName,
    Rule,
    RuleRetry,
    RuleRewrite,
)
from guardrail.types import ControversialMode, ReasoningMode, Stage

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DEFAULT_BLOCK_MESSAGE",
    "PROBABILITY_NAMES",
    "RESERVED_RULE_IDS",
    "AuditConfig",
    "BlockConfig",
    "BreakerConfig",
    "ClientConfig",
    "Conditions",
    "DefaultsConfig",
    "ExecutionConfig",
    "FailureConfig",
    "FieldValueError",
    "GuardConfig",
    "Policy",
    "RewardConfig",
    "RewardModelConfig",
    "ProbabilityName",
    "Rule",
    "RuleRetry",
    "RuleRewrite",
    "StreamingConfig",
    "TelemetryConfig",
    "policy_json_schema",
]


class Policy(StrictModel):
    """A guardrail policy: the guard to use, the rules, and what to do on failure.

    Load one with :func:`~guardrail.policy.load_policy` (YAML, with located errors),
    or use :meth:`Policy.default`. Equality compares the policy's meaning; the
    provenance (:attr:`source`, :attr:`content_hash`) is not part of it.
    """

    model_config = ConfigDict(title="guardrail policy")

    version: Literal[1]
    """Schema version of the file; this guardrail reads version 1."""
    name: Text
    """The policy's name, recorded in every audit record."""
    description: StrictStr = ""
    """What the policy is for."""
    guard: GuardConfig = GuardConfig()
    """The guard model and how to reach it."""
    controversial: ControversialMode = ControversialMode.STRICT
    """How the ``unsafe`` condition reads a Controversial verdict: ``strict`` counts it
    as unsafe, ``loose`` as safe. Conditions on ``levels`` are unaffected."""
    reasoning: ReasoningMode = ReasoningMode.SEPARATE
    """What the guard sees of a reasoning model's answer: ``separate`` (the default:
    thinking and answer judged apart; unsafe if either is), ``joint`` (together) or
    ``answer`` (the final answer only: a separate ``reasoning_content`` is not judged)."""
    include_system: StrictBool = False
    """Show the guard the conversation's system messages as context."""
    execution: ExecutionConfig = ExecutionConfig()
    """Scheduling of the checks and their deadline."""
    failure: FailureConfig = FailureConfig()
    """Fail closed (block) or open (allow, flag ``guard_error``) per stage."""
    block: BlockConfig = BlockConfig()
    """What the application sees when a call is blocked."""
    streaming: StreamingConfig = StreamingConfig()
    """How streamed responses are checked."""
    audit: AuditConfig = AuditConfig()
    """Where decisions are recorded."""
    telemetry: TelemetryConfig = TelemetryConfig()
    """Whether guarded calls are traced with OpenTelemetry."""
    client: ClientConfig = ClientConfig()
    """Which APIs of a wrapped ``openai`` client pass through unguarded."""
    reward: RewardConfig | None = None
    """Optional reward models scoring answers for rules (``reward_above`` /
    ``reward_below``), best-of-n and the audit's hybrid score."""
    rules: tuple[Rule, ...] = ()
    """The rules, tried in order; the first matching rule of a stage decides."""
    defaults: DefaultsConfig = DefaultsConfig()
    """The action per stage when no rule matches."""

    _source: str | None = PrivateAttr(default=None)
    _content_hash: str | None = PrivateAttr(default=None)
    _by_stage: dict[Stage, tuple[Rule, ...]] = PrivateAttr(default_factory=dict)
    # Owned by guardrail.policy.evaluate: the rules compiled for the hot path.
    _compiled: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_unique_ids(self) -> Policy:
        first: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.id in first:
                raise FieldValueError(
                    f"duplicate rule id {rule.id!r} (already used by rules[{first[rule.id]}])",
                    "rules",
                    i,
                    "id",
                )
            first[rule.id] = i
            if self.reward is None and (
                rule.when.reward_above is not None or rule.when.reward_below is not None
            ):
                which = "reward_above" if rule.when.reward_above is not None else "reward_below"
                raise FieldValueError(
                    "reward conditions need a reward section naming the reward models",
                    "rules",
                    i,
                    "when",
                    which,
                )
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Index the rules by stage once, for :meth:`rules_for`."""
        self._by_stage = {
            stage: tuple(rule for rule in self.rules if rule.stage is stage) for stage in Stage
        }

    def rules_for(self, stage: Stage | str) -> tuple[Rule, ...]:
        """The rules of ``stage``, in evaluation order."""
        return self._by_stage[Stage(stage)]

    @property
    def source(self) -> str | None:
        """Where the policy was loaded from (a path, ``<string>``...); ``None`` if built in code."""
        return self._source

    @property
    def content_hash(self) -> str:
        """Hex sha256 identifying the policy in audit records.

        For a loaded policy, the hash of the file's bytes (``sha256sum`` agrees); for
        one built in Python, the hash of its canonical JSON.
        """
        if self._content_hash is None:
            canonical = self.model_dump_json().encode("utf-8")
            self._content_hash = hashlib.sha256(canonical).hexdigest()
        return self._content_hash

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy the policy; with ``update``, the result is validated like a new policy.

        pydantic's plain ``model_copy(update=...)`` skips validation and would keep
        this policy's compiled rules and content hash, which no longer fit.
        """
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**self.model_dump(exclude_unset=True), **update})

    @classmethod
    def default(cls) -> Policy:
        """The balanced default policy (the same text as ``policies/default.yaml``).

        Parsed once from the packaged ``guardrail/policy/default.yaml`` and shared
        (policies are immutable).
        """
        return _default_policy()

    def __eq__(self, other: object) -> bool:
        # pydantic would also compare private attributes (provenance, caches).
        if not isinstance(other, Policy):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((self.name, self.version))


@functools.cache
def _default_policy() -> Policy:
    policy = Policy.model_validate(default_policy_data())
    # The same provenance as loading the file with guardrail.policy.load_policy_text.
    policy._source = DEFAULT_POLICY_SOURCE
    policy._content_hash = hashlib.sha256(default_policy_bytes()).hexdigest()
    return policy


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors and CI (draft 2020-12)."""
    schema = Policy.model_json_schema()
    body = {k: v for k, v in schema.items() if k not in ("title", "description")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "guardrail policy",
        "description": (
            "A guardrail policy (version 1): the guard model, ordered rules per stage "
            "(prompt, response; the first matching rule decides), defaults, failure "
            "modes, blocking, streaming and audit settings. Probability conditions do "
            "not match verdicts without probabilities."
        ),
        **body,
    }
