"""Pair-input encoder reward models (nicholasKluge/RewardModel style BERT cross-encoders).

Input, as the model card calls it: ``tokenizer(prompt, response, truncation=True,
max_length=512, return_token_type_ids=False)``, where the prompt is the last user
message. No segment ids reach the model, so every token is segment 0, as in
training, where ``prompt + [SEP] + response`` is encoded as one sequence (same token
ids as the pair). Passing the tokenizer's default segment ids (the answer as segment
1) would feed the model an input it never saw. Score: the single logit times
``multiplier``.

Only checkpoints that transformers loads as its own ``*ForSequenceClassification``
class are scored. The early remote-code revisions of nicholasKluge/RewardModel
(a custom ``RewardModel`` class whose output was scaled by ``alpha``) are refused
with the fix: pin ``revision`` to a current commit and set ``multiplier`` to the old
``alpha`` if its scale matters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from guardrail.errors import ConfigurationError, ModelLoadError
from guardrail.reward.base import Turn
from guardrail.reward.seqcls import Encoded, LocalScorer

__all__ = ["PairScorer"]

_FIX = (
    "pin revision= to a commit whose config.json lists a transformers "
    "*ForSequenceClassification class (current nicholasKluge/RewardModel revisions: "
    "BertForSequenceClassification) and set multiplier= to the old alpha if its scale matters"
)


class PairScorer(LocalScorer):
    """A BERT-style pair encoder scoring ``(last user message, answer)``.

    ``multiplier`` (default 1, not 0) scales the logit: the ``alpha`` of the model's
    remote-code revisions, whose training range was -1..1 at alpha 1. Padding is
    always on the right (absolute position embeddings). Truncation is the
    tokenizer's ``longest_first`` at ``max_length`` (default 512), as the model card
    scores (``truncation_side`` does not apply); ``truncated`` reports it. A
    checkpoint that needs its repository's code, or that lacks any weight, is
    refused with :class:`~guardrail.errors.ModelLoadError` saying what to do. Other
    options as for :class:`~guardrail.reward.seqcls.SequenceClassificationScorer`.
    """

    _what = "a pair-encoder reward model checkpoint"
    _missing_hint = f"Not a plain pair-encoder checkpoint: {_FIX}"

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
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, (int, float))
            or not math.isfinite(multiplier)
            or multiplier == 0
        ):
            raise ConfigurationError(
                f"multiplier must be a finite non-zero number, got {multiplier!r}"
            )
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
        self._check_layout(transformers)
        # the checkpoint's own head, as the card loads it; _check_loaded wants 1 label
        return self._load_complete(transformers.AutoModelForSequenceClassification, **options)

    def _check_layout(self, transformers: Any) -> None:
        """Refuse, before any weights load or code runs, a layout this scorer cannot score."""
        path = self._source.file("config.json")
        if path is None:
            return  # the load itself reports the missing config
        try:
            with open(path, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.model_id!r}: unreadable config.json ({exc})") from exc
        if not isinstance(config, dict):
            raise ModelLoadError(f"{self.model_id!r}: config.json is not a JSON object")
        names = config.get("architectures") or []
        foreign = [
            name
            for name in names
            if not (
                isinstance(name, str)
                and name.endswith("ForSequenceClassification")
                and hasattr(transformers, name)
            )
        ]
        reasons = []
        if foreign:
            reasons.append(f"architectures {names}")
        if "auto_map" in config:
            reasons.append("an auto_map to the repository's own code")
        if "alpha" in config:
            reasons.append(f"alpha={config['alpha']!r}")
        if reasons:
            raise ModelLoadError(
                f"{self.model_id!r} is a remote-code reward model layout "
                f"({'; '.join(reasons)}) that the pair scorer does not load: {_FIX}"
            )

    def _check_loaded(self) -> None:
        labels = getattr(self._net.config, "num_labels", 1)
        if labels != 1:
            raise ModelLoadError(f"{self.model_id!r} has {labels} labels; a reward model has 1")

    def _encode(self, turns: Sequence[Turn]) -> Encoded:
        prompt = next(t.content for t in reversed(turns[:-1]) if t.role == "user")
        answer = turns[-1].content
        options = {"return_token_type_ids": False, "return_attention_mask": False}
        ids = self._tokenizer(
            prompt, answer, truncation=True, max_length=self.max_length, **options
        )
        full = self._tokenizer(prompt, answer, truncation=False, **options)
        return Encoded(
            tuple(ids["input_ids"]), truncated=len(full["input_ids"]) > len(ids["input_ids"])
        )

    def _finish(self, raw: float) -> float:
        return raw * self.multiplier
