"""The policy's reward models, put together: build, route by language, score in batches.

Each (conversation, answer) goes to the first configured model whose
``languages`` include the conversation's language (see
:func:`~guardrail.reward.language.detect_language`), or that has no language
restriction; a conversation no model covers gets no score, and reward conditions
in rules then do not match. Answers routed to one model are scored in one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from guardrail.chat import user_texts
from guardrail.errors import ConfigurationError
from guardrail.reward.base import RewardPair, RewardScore, RewardScorer
from guardrail.reward.language import detect_language
from guardrail.secrets import secrets_of


class RouteConfig(Protocol):
    """What the gate reads of one reward model entry (a policy's ``reward.models[i]``)."""

    @property
    def id(self) -> str:
        """The model's id, as in audit records."""
        ...

    @property
    def languages(self) -> tuple[str, ...] | None:
        """The languages it scores; ``None`` for any."""
        ...


class GateConfig(Protocol):
    """What the gate reads of a policy's ``reward`` section."""

    @property
    def models(self) -> Sequence[RouteConfig]:
        """The reward models, tried in order."""
        ...

    @property
    def best_of_n(self) -> int:
        """Candidates to request per call."""
        ...


def _text(messages: Sequence[Any], answer: str) -> str:
    """What the language is detected on: the answer and the user's messages."""
    return "\n".join([answer, *user_texts(messages)])


class RewardGate:
    """Routes answers to the policy's reward models and scores them.

    ``config`` is the policy's ``reward`` section; ``scorers`` maps each of its model
    ids to a ready scorer (:func:`guardrail.parts.build_reward_gate` builds the ones
    a caller does not give).
    """

    def __init__(self, config: GateConfig, scorers: Mapping[str, RewardScorer]) -> None:
        missing = [m.id for m in config.models if m.id not in scorers]
        if missing:
            raise ConfigurationError(f"no scorer for reward model(s) {', '.join(missing)}")
        self.config = config
        self.scorers: dict[str, RewardScorer] = {m.id: scorers[m.id] for m in config.models}

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API keys its scorers send (:class:`~guardrail.secrets.HasSecrets`)."""
        return secrets_of(*self.scorers.values())

    @property
    def best_of_n(self) -> int:
        """Candidates to request per call (1: best-of-n is off)."""
        return self.config.best_of_n

    def route(self, pair: RewardPair) -> str | None:
        """The id of the model that scores this conversation, or ``None``."""
        language = detect_language(_text(*pair))
        for model in self.config.models:
            if model.languages is None or language in model.languages:
                return model.id
        return None

    def _plan(self, pairs: Sequence[RewardPair]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, pair in enumerate(pairs):
            model_id = self.route(pair)
            if model_id is not None:
                groups.setdefault(model_id, []).append(i)
        return groups

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore | None]:
        """One score per pair (``None`` where no model covers the conversation)."""
        out: list[RewardScore | None] = [None] * len(pairs)
        for model_id, positions in self._plan(pairs).items():
            scores = self.scorers[model_id].score([pairs[i] for i in positions])
            for i, score in zip(positions, scores, strict=True):
                out[i] = score
        return out

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore | None]:
        """Async twin of :meth:`score`; the models' batches run concurrently."""
        out: list[RewardScore | None] = [None] * len(pairs)
        plan = self._plan(pairs)
        results = await asyncio.gather(
            *(self.scorers[m].ascore([pairs[i] for i in pos]) for m, pos in plan.items())
        )
        for positions, scores in zip(plan.values(), results, strict=True):
            for i, score in zip(positions, scores, strict=True):
                out[i] = score
        return out
