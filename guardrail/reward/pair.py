"""Pair-input encoder reward models (nicholasKluge/RewardModel style BERT cross-encoders).

Input: the sentence pair ``tokenizer(prompt, response, truncation=True,
max_length=512)``, where the prompt is the last user message; score: the single
logit times ``multiplier`` (the old remote-code revision's ``alpha``). Pin
``revision`` to choose the behaviour of a model whose repository changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrail.errors import ConfigurationError, ModelLoadError
from guardrail.reward.base import Turn
from guardrail.reward.seqcls import Encoded, LocalScorer

__all__ = ["PairScorer"]


class PairScorer(LocalScorer):
    """A BERT-style pair encoder scoring ``(last user message, answer)``.

    Padding is always on the right (absolute position embeddings). Truncation is the
    tokenizer's ``longest_first`` at ``max_length`` (default 512), as the model card
    scores; ``truncated`` reports it. Other options as for
    :class:`~guardrail.reward.seqcls.SequenceClassificationScorer`.
    """

    _what = "a pair-encoder reward model checkpoint"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        multiplier: float = 1.0,
        device: str | None = None,
        dtype: str | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        mean: float | None = None,
        std: float | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        if not multiplier or multiplier != multiplier:
            raise ConfigurationError(f"multiplier must be a non-zero number, got {multiplier!r}")
        self.multiplier = float(multiplier)
        super().__init__(
            model,
            revision=revision,
            device=device,
            dtype=dtype,
            max_length=max_length,
            batch_size=batch_size,
            mean=mean,
            std=std,
            padding_side="right",
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
        )

    def _load_model(self, transformers: Any, **options: Any) -> Any:
        # the checkpoint's own head, as the card loads it; _check_loaded wants 1 label
        return self._source.load(transformers.AutoModelForSequenceClassification, **options)

    def _check_loaded(self) -> None:
        labels = getattr(self._net.config, "num_labels", 1)
        if labels != 1:
            raise ModelLoadError(f"{self.model_id!r} has {labels} labels; a reward model has 1")

    def _encode(self, turns: Sequence[Turn]) -> Encoded:
        prompt = next(t.content for t in reversed(turns[:-1]) if t.role == "user")
        answer = turns[-1].content
        encoded = self._tokenizer(prompt, answer, truncation=True, max_length=self.max_length)
        full = self._tokenizer(prompt, answer, truncation=False)["input_ids"]
        types = encoded.get("token_type_ids")
        return Encoded(
            tuple(encoded["input_ids"]),
            None if types is None else tuple(types),
            truncated=len(full) > len(encoded["input_ids"]),
        )

    def _finish(self, raw: float) -> float:
        return raw * self.multiplier
