"""safe-RLHF score models (PKU-Alignment/beaver-7b-v1.0-reward and -cost) in plain transformers.

The checkpoints are ``LlamaModelForScore``: a decoder (``model.*``) and a linear
``score_head`` read at the last attended token. They load as
``LlamaForSequenceClassification(num_labels=1)`` once ``score_head`` is mapped to
``score``; without the mapping transformers silently builds a RANDOM head, so the
loaded head is compared with the checkpoint's own tensors and anything else is
refused. A head bias (dropped by the plain class) and the config's
``do_normalize`` / ``normalize_function`` / ``mean`` / ``var`` are applied here.

Input, exactly as safe-rlhf's ``format_prompt`` and preference datasets build it::

    BEGINNING OF CONVERSATION: USER: {q1} ASSISTANT:{a1}</s>USER: {q2} ASSISTANT:{answer}</s>

(no space after ``ASSISTANT:``; earlier answers end with the EOS token). The scored
answer ends with EOS by default, as safe-rlhf's preference data appends it in training
(``prompt + answer + eos_token``); ``append_eos=False`` scores the text as the model
card's example does, without it. The choice moves scores (thresholds fitted with one
do not carry over to the other). The tokenizer adds its BOS, as in both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

from guardrail.classifiers.loading import one_line
from guardrail.errors import ConfigurationError, ModelLoadError
from guardrail.reward.base import ScoreKind, Turn
from guardrail.reward.seqcls import Encoded, LocalScorer, PaddingSide, TruncationSide

__all__ = ["SafeRLHFScorer", "format_conversation"]

PROMPT_BEGIN = "BEGINNING OF CONVERSATION: "
PROMPT_USER = "USER: {input} "
PROMPT_ASSISTANT = "ASSISTANT:"  # no trailing space: the answer follows directly

_HEAD = "score_head"
_NORMALIZE_EPSILON = 1e-8  # safe-rlhf's Normalizer.normalize default


def format_conversation(turns: Sequence[Turn], eos_token: str, *, append_eos: bool) -> str:
    """Render turns (ending with the scored answer) in the safe-RLHF prompt format.

    System turns are dropped (the format has none); consecutive user turns are
    joined with a newline.
    """
    parts = [PROMPT_BEGIN]
    pending: list[str] = []
    for turn in turns[:-1]:
        if turn.role == "user":
            pending.append(turn.content)
        elif turn.role == "assistant":
            if pending:
                parts += [PROMPT_USER.format(input="\n".join(pending)), PROMPT_ASSISTANT]
                pending = []
            parts += [turn.content, eos_token]
    parts += [PROMPT_USER.format(input="\n".join(pending)), PROMPT_ASSISTANT, turns[-1].content]
    if append_eos:
        parts.append(eos_token)
    return "".join(parts)


def _detect_kind(model: str, config: Any) -> ScoreKind:
    declared = getattr(config, "score_type", None)
    if declared in ("reward", "cost"):
        return declared  # type: ignore[no-any-return]
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    if "cost" in name:
        return "cost"
    if "reward" in name:
        return "reward"
    raise ConfigurationError(
        f"cannot tell whether {model!r} is a reward or a cost model (no score_type in its "
        "config, neither word in its name): pass kind='reward' or kind='cost'"
    )


class SafeRLHFScorer(LocalScorer):
    """A safe-RLHF reward or cost model (``LlamaModelForScore`` checkpoints).

    ``kind`` is ``reward`` (higher is better) or ``cost`` (higher is more harmful,
    ``> 0`` unsafe: :attr:`RewardScore.unsafe`; :attr:`RewardScore.goodness` negates
    it); by default it is read from the config's ``score_type`` or the model name.
    Loading fails with :class:`~guardrail.errors.ModelLoadError` unless the score head
    really comes from the checkpoint. Other options as for
    :class:`~guardrail.reward.seqcls.SequenceClassificationScorer`, plus
    ``append_eos`` (default ``True``: end the answer with EOS, as in training;
    ``False``: as the model card's example). ``truncation_side="right"`` drops the end
    of a too-long input, as safe-rlhf's training tokenizer does; the default ``left``
    keeps the end, where the score is read.
    """

    _what = "a safe-RLHF score model checkpoint"
    _missing_hint = f"Expected safe-rlhf's LlamaModelForScore layout: model.* and {_HEAD}.weight"

    def __init__(
        self,
        model: str,
        *,
        kind: Literal["reward", "cost"] | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_length: int = 4096,
        batch_size: int = 8,
        mean: float | None = None,
        std: float | None = None,
        padding_side: PaddingSide = "right",
        truncation_side: TruncationSide = "left",
        append_eos: bool = True,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        if kind not in (None, "reward", "cost"):
            raise ConfigurationError(f"kind must be 'reward', 'cost' or None, not {kind!r}")
        if not isinstance(append_eos, bool):
            raise ConfigurationError(f"append_eos must be True or False, not {append_eos!r}")
        self._kind_arg = kind
        self.append_eos = append_eos
        self._bias = 0.0
        self._normalize: tuple[str, float, float] | None = None
        super().__init__(
            model,
            revision=revision,
            device=device,
            dtype=dtype,
            max_length=max_length,
            batch_size=batch_size,
            mean=mean,
            std=std,
            padding_side=padding_side,
            truncation_side=truncation_side,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
        )

    # ------------------------------------------------------------------ loading

    def _load_model(self, transformers: Any, **options: Any) -> Any:
        return self._load_complete(
            transformers.AutoModelForSequenceClassification,
            num_labels=1,
            key_mapping={rf"^{_HEAD}\.": "score."},
            **options,
        )

    def _check_loaded(self) -> None:
        config = self._net.config
        self.kind = self._kind_arg or _detect_kind(self.model_id, config)
        if self._tokenizer.eos_token is None:
            raise ModelLoadError(f"{self.model_id!r}: the tokenizer has no EOS token")
        tensors = self._read_checkpoint(
            {f"{_HEAD}.weight", f"{_HEAD}.bias", "normalizer.mean", "normalizer.var"}
        )
        head = tensors.get(f"{_HEAD}.weight")
        loaded = self._net.score.weight.detach().cpu()
        if head is None or tuple(head.shape) != tuple(loaded.shape):
            raise ModelLoadError(
                f"{self.model_id!r}: no {_HEAD}.weight of shape {tuple(loaded.shape)} in the "
                "checkpoint; refusing a randomly initialised head"
            )
        if not self._torch.equal(head.to(loaded.dtype), loaded):
            raise ModelLoadError(
                f"{self.model_id!r}: the loaded score head differs from the checkpoint's "
                f"{_HEAD}.weight; refusing it"
            )
        bias = tensors.get(f"{_HEAD}.bias")
        if getattr(config, "bias", False) and bias is None:
            raise ModelLoadError(f"{self.model_id!r}: config says bias=true but has no head bias")
        if bias is not None:
            self._bias = float(bias.float().reshape(-1)[0])
        if getattr(config, "do_normalize", False):
            self._normalize = self._normalization(config, tensors)

    def _normalization(self, config: Any, tensors: dict[str, Any]) -> tuple[str, float, float]:
        default = "scale" if self.kind == "cost" else "affine"  # safe-rlhf's per-type default
        function = getattr(config, "normalize_function", None) or default
        if function not in ("affine", "scale", "translate", "identity"):
            raise ModelLoadError(f"{self.model_id!r}: unknown normalize_function {function!r}")
        values = []
        for name, fallback in (("mean", 0.0), ("var", 1.0)):
            value = getattr(config, name, None)
            if value is None and f"normalizer.{name}" in tensors:
                value = tensors[f"normalizer.{name}"].float().reshape(-1)[0]
            value = (
                fallback
                if value is None
                else float(value[0] if isinstance(value, (list, tuple)) else value)
            )
            values.append(value)
        mean, var = values
        if not (math.isfinite(mean) and math.isfinite(var) and var >= 0):
            raise ModelLoadError(f"{self.model_id!r}: invalid normaliser mean={mean} var={var}")
        return function, mean, var

    def _read_checkpoint(self, names: set[str]) -> dict[str, Any]:
        """Read the named tensors straight from the checkpoint files (other keys untouched)."""
        index_name = next(
            (
                n
                for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                if self._source.file(n)
            ),
            None,
        )
        files: set[str] = set()
        if index_name is not None:
            path = self._source.file(index_name)
            assert path is not None
            with open(path, encoding="utf-8") as fh:
                weight_map = json.load(fh).get("weight_map", {})
            files = {weight_map[n] for n in names if n in weight_map}
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if self._source.file(single):
                    files = {single}
                    break
        found: dict[str, Any] = {}
        for filename in sorted(files):
            path = self._source.file(filename)
            if path is None:
                continue
            try:
                if filename.endswith(".safetensors"):
                    from safetensors import safe_open

                    with safe_open(path, framework="pt") as fh:
                        for name in names & set(fh.keys()):
                            found[name] = fh.get_tensor(name)
                else:
                    state = self._torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                    found.update({n: state[n] for n in names if n in state})
            except Exception as exc:  # a corrupt shard: the head cannot be verified
                raise ModelLoadError(
                    f"{self.model_id!r}: could not read {filename}: {one_line(exc)}"
                ) from exc
        return found

    # ------------------------------------------------------------------ scoring

    def _encode(self, turns: Sequence[Turn]) -> Encoded:
        text = format_conversation(turns, self._tokenizer.eos_token, append_eos=self.append_eos)
        ids = self._tokenizer(text, add_special_tokens=True)["input_ids"]  # BOS, as in training
        return self._truncate(ids)

    def _finish(self, raw: float) -> float:
        score = raw + self._bias
        if self._normalize is None:
            return score
        function, mean, var = self._normalize
        std = math.sqrt(var) + _NORMALIZE_EPSILON
        if function == "affine":
            return (score - mean) / std
        if function == "scale":
            return score / std
        if function == "translate":
            return score - mean
        return score
