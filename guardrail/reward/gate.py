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
from typing import TYPE_CHECKING, Any

from guardrail.reward.base import RewardPair, RewardScore, RewardScorer
from guardrail.reward.language import detect_language

if TYPE_CHECKING:
    from guardrail.policy.schema import RewardConfig, RewardModelConfig


def build_from_config(config: RewardModelConfig) -> RewardScorer:
    """The scorer one ``reward.models`` entry of a policy describes (loads the model)."""
    from guardrail.reward import build_scorer

    options: dict[str, Any] = {"mean": config.mean, "std": config.std}
    if config.kind == "remote":
        options.update(
            base_url=config.base_url,
            api=config.api,
            api_key_env=config.api_key_env,
            timeout=config.timeout_s,
        )
    else:
        options.update(
            revision=config.revision,
            device=config.device,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
        )
    return build_scorer(config.kind, config.model, **options)


def _text(messages: Sequence[Any], answer: str) -> str:
    parts = [answer]
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", "")
        content = (
            message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
        )
        if role == "user" and isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


class RewardGate:
    """Routes answers to the policy's reward models and scores them.

    ``scorers`` maps model ids to ready scorers (to share loaded models, or to use
    fakes in tests); models missing from it are built from the policy.
    """

    def __init__(
        self, config: RewardConfig, scorers: Mapping[str, RewardScorer] | None = None
    ) -> None:
        self.config = config
        given = dict(scorers or {})
        self.scorers: dict[str, RewardScorer] = {
            m.id: given[m.id] if m.id in given else build_from_config(m) for m in config.models
        }

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
