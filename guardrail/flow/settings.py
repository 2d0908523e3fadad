"""What a flow reads: the policy and the few facts about the guard that it needs.

Flows get a :class:`FlowSettings`, never the :class:`~guardrail.guard.Guard`
that runs them, so data flows one way: the guard builds settings and drivers,
the flow reads settings and yields effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guardrail.policy import Policy, evaluate
from guardrail.policy.schema import StreamingConfig
from guardrail.secrets import NO_SECRETS, Masker
from guardrail.types import Decision, Stage, Verdict


@dataclass(frozen=True)
class FlowSettings:
    """The policy a flow applies, and whether reward models score its answers."""

    policy: Policy
    best_of_n: int = 1
    """Candidates requested per single-answer call (the policy's ``reward.best_of_n``)."""
    scores: bool = False
    """Whether answers are scored by reward models (the policy has a ``reward`` section)."""
    mask: Masker = field(default=NO_SECRETS, compare=False)
    """Hides the guard's and reward servers' API keys in decisions and records; a call
    through a wrapped client adds the client's key (:attr:`Trace.mask`)."""

    @classmethod
    def of(cls, policy: Policy, *, mask: Masker = NO_SECRETS) -> FlowSettings:
        """The settings a policy implies; ``mask`` knows the secrets of the guard's backends."""
        reward = policy.reward
        return cls(
            policy=policy,
            best_of_n=reward.best_of_n if reward is not None else 1,
            scores=reward is not None,
            mask=mask,
        )

    @property
    def concurrent(self) -> bool:
        """Whether the upstream call starts together with the prompt check."""
        return self.policy.execution.mode == "concurrent"

    @property
    def raises_on_block(self) -> bool:
        """Whether a block raises :class:`~guardrail.errors.BlockedError`."""
        return self.policy.block.behavior == "raise"

    @property
    def streaming(self) -> StreamingConfig:
        """The policy's streaming settings."""
        return self.policy.streaming

    def block_message(self, decision: Decision) -> str:
        """The text returned in place of a blocked prompt's or answer's content."""
        return decision.message or self.policy.block.message

    def decide(
        self,
        stage: Stage,
        verdict: Verdict | None,
        *,
        prompt_verdict: Verdict | None = None,
        error: BaseException | str | None = None,
        reward: float | None = None,
    ) -> Decision:
        """The policy's decision for one verdict (and its reward), or for a guard failure.

        ``error`` is the failure, or its text as the decision should state it.
        """
        return evaluate(
            self.policy, stage, verdict, prompt_verdict=prompt_verdict, error=error, reward=reward
        )
