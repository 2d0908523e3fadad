"""Tiny randomly initialised reward models, saved in each family's ORIGINAL checkpoint layout.

- :func:`build_seqcls`: a ``LlamaForSequenceClassification(num_labels=1)`` with a
  ChatML-like chat template that ends every turn with the EOS ``<|im_end|>`` (so a
  scored text ends with EOS). By default the template writes the BOS and the
  tokenizer adds one too (Llama-3 style); ``template_bos`` / ``tokenizer_bos`` give
  the other layouts (ca-reward-3b-ja: the tokenizer's BOS only). ``pad_is_eos`` saves
  the tokenizer and config with pad == eos: the pitfall the scorer must handle.
- :func:`build_saferlhf`: a ``LlamaModelForScore`` checkpoint as safe-rlhf saves it:
  keys ``model.*`` and ``score_head.weight`` (+ ``score_head.bias``), a config with
  ``architectures: ["LlamaModelForScore"]``, ``score_type``, ``bias``,
  ``do_normalize``..., a LLaMA-like tokenizer (BOS added, ``</s>`` eos, ``<pad>``).
- :func:`build_pair`: a ``BertForSequenceClassification(num_labels=1)`` with a
  WordPiece tokenizer (nicholasKluge/RewardModel layout), initialised wide enough that
  feeding segment ids it was not trained with visibly moves scores.
  ``layout="remote-code"`` saves the early remote-code layout instead (a custom
  ``RewardModel`` class with ``auto_map`` and ``alpha``), ``layout="headless"`` a
  plain config whose checkpoint lacks the classifier head.

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

CHAT_TURNS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE = "{{ bos_token }}" + CHAT_TURNS
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def _byte_tokenizer(*, add_bos: bool = True, **special: str) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per byte, no merges); adds BOS like LLaMA by default."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if add_bos:
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


def build_seqcls(
    path: Path,
    *,
    pad_is_eos: bool = False,
    template_bos: bool = True,
    tokenizer_bos: bool = True,
    seed: int = 0,
) -> Any:
    """Save a tiny Llama sequence-classification reward model; returns the model."""
    eos = "<|im_end|>"
    tok = _byte_tokenizer(
        add_bos=tokenizer_bos, eos_token=eos, pad_token=eos if pad_is_eos else "<pad>"
    )
    tok.chat_template = CHAT_TEMPLATE if template_bos else CHAT_TURNS
    torch.manual_seed(seed)
    net = LlamaForSequenceClassification(_llama_config(tok, num_labels=1)).eval()
    with torch.no_grad():
        net.score.weight.mul_(20.0)  # spread the scores so input differences are visible
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


def build_pair(path: Path, *, layout: str = "plain", seed: int = 2) -> Any:
    """Save a tiny BERT pair encoder (one logit) with a WordPiece tokenizer; returns it.

    ``layout``: ``plain`` (``BertForSequenceClassification``, as current
    nicholasKluge/RewardModel revisions), ``remote-code`` (the early layout: a custom
    class behind ``auto_map``, an ``alpha`` and its own head name) or ``headless``
    (a plain config over a checkpoint without the classifier head).
    """
    from safetensors.torch import save_file

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
        # BERT's 0.02 leaves a tiny model blind to its input (every answer scores the
        # same); 0.5 spreads scores and, as in pretrained BERTs, tells segments apart
        initializer_range=0.5,
    )
    net = BertForSequenceClassification(config).eval()
    tok.save_pretrained(path)
    if layout == "plain":
        net.save_pretrained(path)
        return net
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    data = config.to_dict()
    if layout == "remote-code":
        state = {k.replace("classifier.", "fc."): v for k, v in state.items()}
        data.update(
            architectures=["RewardModel"],
            auto_map={
                "AutoConfig": "configuration_reward.RewardConfig",
                "AutoModel": "modeling_reward.RewardModel",
            },
            alpha=1.0,
        )
    elif layout == "headless":
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        data.update(architectures=["BertForSequenceClassification"])
    else:
        raise ValueError(f"unknown layout {layout!r}")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(data, indent=2))
    return net
