"""Reward scoring: the result type, the scorer contract and conversation normalisation.

A reward scorer turns ``(conversation up to the user's turn, candidate answer)``
pairs into one :class:`RewardScore` each, in order. Everything here is pure (no
torch, no I/O), shared by the local and remote scorers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from guardrail.chat import as_mapping
from guardrail.errors import ConfigurationError, InputError
from guardrail.qwen3guard import split_reasoning

__all__ = [
    "Normalizer",
    "RewardPair",
    "RewardScore",
    "RewardScorer",
    "ScoreKind",
    "Turn",
    "normalise_pair",
]

ScoreKind = Literal["reward", "cost"]
"""``reward``: higher is better. ``cost`` (safe-RLHF): higher is more harmful, > 0 unsafe."""

RewardPair = tuple[Sequence[Any], str]
"""(messages up to the user's turn, candidate answer text)."""


class RewardScore(BaseModel):
    """One scored candidate answer.

    ``score`` is the model's own output (fp32, after any bias / normalisation the
    checkpoint's config asks for). ``normalized`` is ``(score - mean) / std`` when the
    scorer was given ``mean`` and ``std``, else ``None``. ``unsafe`` is set for cost
    models only (``score > 0``, the safe-RLHF threshold).
    """

    model_config = ConfigDict(frozen=True)

    score: float
    normalized: float | None = None
    model: str = ""
    kind: ScoreKind = "reward"
    latency_s: float = Field(default=0.0, ge=0.0)
    truncated: bool = False
    """The input exceeded ``max_length`` and was cut: by default its start (the answer's
    end survives), or its end with ``truncation_side="right"``."""
    unsafe: bool | None = None
    """Cost models: ``score > 0``; ``None`` for reward models."""

    @property
    def goodness(self) -> float:
        """Higher is better whatever the kind: the score, negated for cost models."""
        value = self.normalized if self.normalized is not None else self.score
        return -value if self.kind == "cost" else value


@runtime_checkable
class RewardScorer(Protocol):
    """Scores candidate answers: one :class:`RewardScore` per pair, in order."""

    @property
    def model_id(self) -> str:
        """The reward model's id (hub id, directory or served model name)."""
        ...

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Score every pair; raises :class:`~guardrail.errors.ClassifierError` on failure."""
        ...

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Async twin of :meth:`score` that never blocks the event loop."""
        ...


@dataclass(frozen=True)
class Normalizer:
    """Optional ``(score - mean) / std`` normalisation configured per model."""

    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ConfigurationError("mean and std must be given together")
        if self.std is not None and not (math.isfinite(self.std) and self.std > 0):
            raise ConfigurationError(f"std must be a positive number, got {self.std!r}")
        if self.mean is not None and not math.isfinite(self.mean):
            raise ConfigurationError(f"mean must be finite, got {self.mean!r}")

    def __call__(self, score: float) -> float | None:
        """The normalised score, or ``None`` when no mean/std was configured."""
        if self.mean is None or self.std is None:
            return None
        return (score - self.mean) / self.std


# ------------------------------------------------------------------ normalisation


@dataclass(frozen=True)
class Turn:
    """One message as reward models see it."""

    role: Literal["system", "user", "assistant"]
    content: str


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, Iterable) and not isinstance(content, (bytes, Mapping)):
        texts = []
        for j, raw in enumerate(content):
            part = as_mapping(raw, f"{where}[{j}]")
            value = part.get("text", part.get("refusal"))
            if isinstance(value, str):
                texts.append(value)  # images and other media: reward models read text only
        return "\n".join(texts)
    raise InputError(
        f"content must be a string, a list of parts or None, not {type(content).__name__}",
        where=where,
    )


def normalise_pair(messages: Sequence[Any] | Iterable[Any], answer: str) -> tuple[Turn, ...]:
    """The conversation plus the candidate answer as plain turns, ending with the answer.

    Messages are dicts or pydantic objects (OpenAI shape). ``developer`` counts as
    ``system``; tool results become user turns (chat templates rarely accept the
    tool role); a reasoning model's thinking is dropped from assistant turns and
    from ``answer``, which reward models judge as the final answer.
    """
    if not isinstance(answer, str):
        raise InputError(f"the answer must be a string, not {type(answer).__name__}")
    turns: list[Turn] = []
    for i, raw in enumerate(messages):
        where = f"messages[{i}]"
        message = as_mapping(raw, where)
        role = message.get("role")
        text = _text(message.get("content"), f"{where}.content")
        if role == "user":
            turns.append(Turn("user", text))
        elif role == "assistant":
            turns.append(Turn("assistant", split_reasoning(text)[1]))
        elif role in ("system", "developer"):
            turns.append(Turn("system", text))
        elif role in ("tool", "function"):
            name = message.get("name") or message.get("tool_call_id") or "tool"
            turns.append(Turn("user", f"Tool result ({name}):\n{text}"))
        else:
            raise InputError(f"unknown role {role!r}", where=f"{where}.role")
    if not any(t.role == "user" for t in turns):
        raise InputError("a reward score needs the user message the answer replies to")
    if turns[-1].role == "assistant":
        raise InputError("the conversation must end with the user's turn; pass the answer apart")
    turns.append(Turn("assistant", split_reasoning(answer)[1]))
    return tuple(turns)
