"""Tiny randomly initialised reward models, saved in each family's ORIGINAL checkpoint layout.

- :func:`build_seqcls`: a ``LlamaForSequenceClassification(num_labels=1)`` with a
  ChatML-like chat template that writes the BOS itself and ends every turn with the
  EOS ``<|im_end|>`` (so a scored text ends with EOS). ``pad_is_eos`` saves the
  tokenizer and config with pad == eos: the pitfall the scorer must handle.
- :func:`build_saferlhf`: a ``LlamaModelForScore`` checkpoint as safe-rlhf saves it:
  keys ``model.*`` and ``score_head.weight`` (+ ``score_head.bias``), a config with
  ``architectures: ["LlamaModelForScore"]``, ``score_type``, ``bias``,
  ``do_normalize``..., a LLaMA-like tokenizer (BOS added, ``</s>`` eos, ``<pad>``).
- :func:`build_pair`: a ``BertForSequenceClassification(num_labels=1)`` with a
  WordPiece tokenizer (nicholasKluge/RewardModel layout).

Each builder returns the model it saved so tests can compute reference scores with
plain torch, independently of the scorers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaModel,
    PreTrainedTokenizerFast,
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def _byte_tokenizer(**special: str) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per byte, no merges) that adds BOS like LLaMA."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", **special
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _llama_config(tok: PreTrainedTokenizerFast, **extra: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def build_seqcls(path: Path, *, pad_is_eos: bool = False, seed: int = 0) -> Any:
    """Save a tiny Llama sequence-classification reward model; returns the model."""
    eos = "<|im_end|>"
    tok = _byte_tokenizer(eos_token=eos, pad_token=eos if pad_is_eos else "<pad>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    net = LlamaForSequenceClassification(_llama_config(tok, num_labels=1)).eval()
    net.save_pretrained(path)
    tok.save_pretrained(path)
    return net


class SafeRLHFParts:
    """What :func:`build_saferlhf` saved: the decoder and the head (with bias or not)."""

    def __init__(self, base: Any, head: torch.nn.Linear) -> None:
        self.base = base
        self.head = head

    @torch.inference_mode()
    def end_score(self, input_ids: list[int]) -> float:
        """safe-rlhf's end score: the head applied at the last token (bias included)."""
        hidden = self.base(torch.tensor([input_ids])).last_hidden_state
        return float(self.head(hidden[:, -1]).float()[0, 0])


def build_saferlhf(
    path: Path,
    *,
    score_type: str = "reward",
    bias: bool = True,
    bias_value: float = 0.75,
    with_head: bool = True,
    config_extra: dict[str, Any] | None = None,
    normalizer: tuple[float, float] | None = None,
    seed: int = 1,
) -> SafeRLHFParts:
    """Save a ``LlamaModelForScore``-layout checkpoint (safetensors, as safe-rlhf keys it)."""
    from safetensors.torch import save_file

    tok = _byte_tokenizer(eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = _llama_config(tok)
    base = LlamaModel(config).eval()
    head = torch.nn.Linear(config.hidden_size, 1, bias=bias)
    with torch.no_grad():
        head.weight.mul_(20.0)  # spread the scores so signs and offsets are visible
        if bias:
            head.bias.fill_(bias_value)
    state = {f"model.{k}": v for k, v in base.state_dict().items()}
    if with_head:
        state.update({f"score_head.{k}": v for k, v in head.state_dict().items()})
    if normalizer is not None:  # safe-rlhf's Normalizer buffers
        state["normalizer.mean"] = torch.tensor([normalizer[0]])
        state["normalizer.var"] = torch.tensor([normalizer[1]])
        state["normalizer.count"] = torch.tensor(100)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in state.items()},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    data = config.to_dict()
    data.update(
        architectures=["LlamaModelForScore"],
        score_dim=1,
        score_type=score_type,
        bias=bias,
        do_normalize=False,
        normalize_function="scale" if score_type == "cost" else "affine",
    )
    data.update(config_extra or {})
    (path / "config.json").write_text(json.dumps(data, indent=2))
    tok.save_pretrained(path)
    return SafeRLHFParts(base, head)


def build_pair(path: Path, *, seed: int = 2) -> Any:
    """Save a tiny BERT pair encoder (one logit) with a WordPiece tokenizer; returns it."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,?!'", *letters]
    words += [f"##{c}" for c in letters]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        num_labels=1,
    )
    net = BertForSequenceClassification(config).eval()
    net.save_pretrained(path)
    tok.save_pretrained(path)
    return net
