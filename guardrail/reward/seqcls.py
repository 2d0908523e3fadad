"""Sequence-classification reward models run locally (Skywork-Reward-V2, ca-reward-3b-ja...).

The conversation plus the answer is rendered with the tokenizer's chat template (no
generation prompt) and tokenized as the model cards do, with the tokenizer's own
special tokens, but one BOS at most (see :class:`SequenceClassificationScorer`); the
single logit of ``AutoModelForSequenceClassification(num_labels=1)`` is the score.

:class:`LocalScorer` holds what every local family shares: lazy loading (weights the
checkpoint lacks are refused, never initialised at random), one lock, batching,
padding, truncation, the fp32 readout and normalisation. Families override how a
pair is encoded and how the model is loaded.

torch and transformers are imported when a scorer is built, never at import.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardrail.classifiers.loading import (
    ModelSource,
    default_dtype,
    import_backend,
    one_line,
    require_pinned_revision,
    resolve_device,
)
from guardrail.errors import ClassifierError, ConfigurationError, ModelLoadError
from guardrail.reward.base import (
    Normalizer,
    RewardPair,
    RewardScore,
    ScoreKind,
    Turn,
    normalise_pair,
)

__all__ = ["LocalScorer", "SequenceClassificationScorer"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_HINT = (
    "Point model= at a local directory holding the checkpoint, or serve the reward "
    "model with vLLM and use RemoteRewardScorer"
)
PaddingSide = Literal["left", "right"]
TruncationSide = Literal["left", "right"]
"""Which end of a too-long input is dropped (as transformers' ``truncation_side``)."""


@dataclass(frozen=True)
class Encoded:
    """One pair as token ids, ready for the model.

    No segment ids: no supported family was trained with them (the pair family's
    encoders see one segment), so the model's own default (all zeros) applies.
    """

    input_ids: tuple[int, ...]
    truncated: bool = False


class LocalScorer:
    """Shared machinery of the local reward scorers (see the module doc).

    Thread-safe: one lock serialises tokenizer and model use; :meth:`ascore` runs
    :meth:`score` in a worker thread so it never blocks the event loop.
    """

    kind: ScoreKind = "reward"
    _what = "a reward model checkpoint"
    _missing_hint = "Is it a one-label sequence-classification reward model?"
    """What to do when the checkpoint lacks weights (ends the refusal's message)."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_length: int = 4096,
        batch_size: int = 8,
        mean: float | None = None,
        std: float | None = None,
        padding_side: PaddingSide = "right",
        truncation_side: TruncationSide = "left",
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigurationError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        if max_length < 2 or batch_size < 1:
            raise ConfigurationError(
                f"max_length must be >= 2 and batch_size >= 1, got {max_length} and {batch_size}"
            )
        if padding_side not in ("left", "right"):
            raise ConfigurationError(
                f"padding_side must be 'left' or 'right', not {padding_side!r}"
            )
        if truncation_side not in ("left", "right"):
            raise ConfigurationError(
                f"truncation_side must be 'left' or 'right', not {truncation_side!r}"
            )
        require_pinned_revision(trust_remote_code, revision)
        self._model_name = model
        self._normalizer = Normalizer(mean, std)
        self.max_length = max_length
        self.batch_size = batch_size
        self.padding_side: PaddingSide = padding_side
        self.truncation_side: TruncationSide = truncation_side
        self._trust_remote_code = trust_remote_code
        self._lock = threading.Lock()

        torch, transformers = import_backend()
        self._torch = torch
        self._device, torch_device = resolve_device(torch, device)
        self._dtype = dtype or default_dtype(torch, torch_device)
        self._source = ModelSource.resolve(
            model, revision, local_files_only, what=self._what, hint=_HINT
        )
        remote = {"trust_remote_code": True} if trust_remote_code else {}
        self._tokenizer = self._source.load(transformers.AutoTokenizer, **remote)
        weights = "auto" if self._dtype == "auto" else getattr(torch, self._dtype)
        net = self._load_model(transformers, dtype=weights, **remote)
        self._net = net.to(torch_device).eval()
        self._check_loaded()

    # ------------------------------------------------------------- family hooks

    def _load_model(self, transformers: Any, **options: Any) -> Any:
        return self._load_complete(
            transformers.AutoModelForSequenceClassification, num_labels=1, **options
        )

    def _check_loaded(self) -> None:
        """Validate the loaded tokenizer and model (family-specific)."""

    def _encode(self, turns: Sequence[Turn]) -> Encoded:
        raise NotImplementedError

    def _finish(self, raw: float) -> float:
        """The model's score from the raw fp32 logit (bias, config normalisation)."""
        return raw

    # ----------------------------------------------------------------- helpers

    def _load_complete(self, auto_class: Any, **options: Any) -> Any:
        """Load the model, refusing it when the checkpoint lacks any of its weights.

        transformers initialises missing weights (typically the head of a checkpoint
        saved in another layout) at random and only warns: the scores would be noise.
        """
        net, info = self._source.load(auto_class, output_loading_info=True, **options)
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            shown = ", ".join(missing[:4]) + (
                f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
            )
            raise ModelLoadError(
                f"{self.model_id!r}: the checkpoint has no {shown}; refusing randomly "
                f"initialised weights. {self._missing_hint}"
            )
        return net

    def _truncate(self, ids: Sequence[int]) -> Encoded:
        """Cut ``ids`` to ``max_length`` on ``truncation_side``.

        ``left`` keeps the end of the answer, where the score is read; ``right`` keeps
        the start, as a tokenizer called with ``truncation=True`` does.
        """
        if len(ids) <= self.max_length:
            return Encoded(tuple(ids))
        if self.truncation_side == "left":
            return Encoded(tuple(ids[-self.max_length :]), truncated=True)
        return Encoded(tuple(ids[: self.max_length]), truncated=True)

    def _pad_id(self, batch: Sequence[Encoded]) -> int:
        # transformers pools the rightmost token that is not the pad id: a pad id equal
        # to a sequence's last real token (pad == eos, text ending in eos) would pool the
        # wrong token. Pick one that ends no sequence; pads are masked, so any id works.
        last = {enc.input_ids[-1] for enc in batch}
        tok = self._tokenizer
        for candidate in (tok.pad_token_id, tok.unk_token_id, *range(len(last) + 1)):
            if isinstance(candidate, int) and candidate not in last:
                return candidate
        raise AssertionError("unreachable: len(last) + 1 ids cannot all be last tokens")

    def _forward(self, batch: Sequence[Encoded]) -> list[float]:
        torch = self._torch
        pad = self._pad_id(batch)
        width = max(len(enc.input_ids) for enc in batch)
        ids, mask = [], []
        for enc in batch:
            n = width - len(enc.input_ids)
            if self.padding_side == "left":
                ids.append([pad] * n + list(enc.input_ids))
                mask.append([0] * n + [1] * len(enc.input_ids))
            else:
                ids.append([*enc.input_ids, *[pad] * n])
                mask.append([1] * len(enc.input_ids) + [0] * n)
        device = self._net.device
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor(ids, device=device),
            "attention_mask": torch.tensor(mask, device=device),
        }
        if self.padding_side == "left":
            # positions count real tokens only, so absolute-position models see the
            # same positions as with right padding
            inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        self._net.config.get_text_config().pad_token_id = pad
        with torch.inference_mode():
            logits = self._net(**inputs).logits
        return [float(v) for v in logits[:, 0].float().cpu().tolist()]

    # ------------------------------------------------------------------ scoring

    @property
    def model_id(self) -> str:
        """The model as given: a hub id or a local directory."""
        return self._model_name

    @property
    def device(self) -> str:
        """The torch device the model runs on."""
        return self._device

    @property
    def dtype(self) -> str:
        """The weights' dtype name (``auto``: the checkpoint's own)."""
        return self._dtype

    def encode(self, messages: Sequence[Any], answer: str) -> Encoded:
        """The exact token ids scored for one pair (for inspection and tests)."""
        turns = normalise_pair(messages, answer)
        with self._lock:
            return self._encode(turns)

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Score every pair, ``batch_size`` at a time; one score per pair, in order.

        Raises :class:`~guardrail.errors.InputError` for a malformed conversation and
        :class:`~guardrail.errors.ClassifierError` when the model fails.
        """
        turns = [normalise_pair(messages, answer) for messages, answer in pairs]
        scores: list[RewardScore] = []
        for start in range(0, len(turns), self.batch_size):
            scores += self._score_batch(turns[start : start + self.batch_size])
        return scores

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Async twin of :meth:`score`, run in a worker thread."""
        return await asyncio.to_thread(self.score, list(pairs))

    def _score_batch(self, batch: Sequence[tuple[Turn, ...]]) -> list[RewardScore]:
        with self._lock:
            started = time.perf_counter()
            encoded = [self._encode(turns) for turns in batch]
            try:
                raw = self._forward(encoded)
            except RuntimeError as exc:  # torch reports device and memory failures this way
                raise ClassifierError(
                    f"reward model {self.model_id!r} failed: {one_line(exc)}"
                ) from exc
            latency = time.perf_counter() - started
        out = []
        for enc, value in zip(encoded, raw, strict=True):
            score = self._finish(value)
            out.append(
                RewardScore(
                    score=score,
                    normalized=self._normalizer(score),
                    model=self.model_id,
                    kind=self.kind,
                    latency_s=latency,
                    truncated=enc.truncated,
                    unsafe=score > 0 if self.kind == "cost" else None,
                )
            )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model_name!r}, device={self._device!r})"


class SequenceClassificationScorer(LocalScorer):
    """A sequence-classification reward model (``num_labels=1``) run with transformers.

    Input: the conversation and the answer rendered with the tokenizer's chat template
    (no generation prompt), tokenized with the tokenizer's own special tokens, as the
    model cards call it (``tokenizer(text)``). A tokenizer that adds a BOS the template
    already wrote would double it; the BOS is then kept once, which is what
    ``apply_chat_template(..., tokenize=True)`` gives. Score: ``logits[:, 0]`` in fp32,
    unbounded.

    Inputs longer than ``max_length`` tokens (default 4096) are cut on
    ``truncation_side`` and reported as ``truncated``: ``left`` (default) drops the
    start so the end of the answer, where the score is read, survives; ``right`` drops
    the end, as ``tokenizer(text, truncation=True, max_length=...)`` does (the
    ca-reward-3b-ja card). Padding never changes a score: batched equals one by one,
    left equals right padding, and a pad token equal to EOS cannot shift the pooled
    position (see ``_pad_id``).

    Options: ``revision`` (hub revision; a 40-hex sha is required with
    ``trust_remote_code``), ``device`` (default ``cuda`` when available), ``dtype``
    (``float32``/``bfloat16``/``float16``/``auto``; default bf16 on GPU, fp32 on CPU),
    ``batch_size``, ``mean``/``std`` (fill :attr:`RewardScore.normalized`),
    ``padding_side``, ``truncation_side`` and ``local_files_only`` (also implied by
    ``HF_HUB_OFFLINE=1``). A checkpoint lacking any weight (a head saved under
    another name) is refused with :class:`~guardrail.errors.ModelLoadError`.
    """

    _missing_hint = (
        "A sequence-classification reward model saves its one-label head with the "
        "model (score.* or classifier.*); safe-rlhf checkpoints (score_head.*) take "
        "kind 'safe-rlhf'"
    )

    def _check_loaded(self) -> None:
        if not getattr(self._tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"{self.model_id!r} has no chat template; a sequence-classification reward "
                "model scores the conversation rendered with its own template"
            )
        labels = getattr(self._net.config, "num_labels", 1)
        if labels != 1:
            raise ModelLoadError(f"{self.model_id!r} has {labels} labels; a reward model has 1")

    def _encode(self, turns: Sequence[Turn]) -> Encoded:
        tok = self._tokenizer
        text = tok.apply_chat_template(
            [{"role": t.role, "content": t.content} for t in turns],
            tokenize=False,
            add_generation_prompt=False,
        )
        ids = list(tok(text)["input_ids"])  # the tokenizer's own BOS (and any other specials)
        bos, bos_text = tok.bos_token_id, tok.bos_token
        if bos is not None and bos_text and text.startswith(bos_text) and ids[:2] == [bos, bos]:
            del ids[0]  # the template wrote the BOS the tokenizer added again
        return self._truncate(ids)
