"""The model-card decoding path: greedy ``generate()`` with top log-probabilities.

:class:`GenerateDecoder` is what the Qwen3Guard model card does, batched: every
prompt left-padded to the same column, greedy decoding up to ``max_new_tokens``,
the top log-probabilities read at every step. It is the reference the fast path
(:mod:`.fastpath`) reproduces token for token, and its fallback for inputs the
verdict grammar cannot express.

torch is imported when a batch is decoded, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.classifiers.encoding import EncodedInput
from guardrail.errors import ModelLoadError
from guardrail.qwen3guard import ENDOFTEXT, IM_END, FieldProbabilities, TokenLogprobs

__all__ = ["GenerateDecoder", "Generation", "stop_and_pad_ids"]


@dataclass(frozen=True)
class Generation:
    """What decoding wrote for one input: the verdict text and its probabilities' source."""

    text: str
    tokens: tuple[TokenLogprobs, ...] = ()
    """Each generated token with its top alternatives (``generate()``; empty on the fast path)."""
    probs: FieldProbabilities | None = None
    """Set by the fast path, which reads each field's distribution directly."""


def stop_and_pad_ids(tokenizer: Any, net: Any, name: str) -> tuple[frozenset[int], int]:
    """Every token that ends generation, and the padding token, of a checkpoint.

    The stops are ``<|im_end|>`` and ``<|endoftext|>`` when the vocabulary has
    them, the generation config's eos ids and the tokenizer's eos. Raises
    :class:`~guardrail.errors.ModelLoadError` (naming ``name``) when there is none.
    """
    vocab: dict[str, int] = tokenizer.get_vocab()
    config_eos = getattr(net.generation_config, "eos_token_id", None)
    stops: set[Any] = {vocab[t] for t in (IM_END, ENDOFTEXT) if t in vocab}
    stops.update(config_eos if isinstance(config_eos, list) else [config_eos])
    stops.add(tokenizer.eos_token_id)
    stop_ids = frozenset(i for i in stops if isinstance(i, int))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = vocab.get(ENDOFTEXT, tokenizer.eos_token_id)
    if pad is None or not stop_ids:
        raise ModelLoadError(f"{name!r}: the tokenizer has no eos/pad token")
    return stop_ids, pad


class GenerateDecoder:
    """Greedy ``generate()`` over batches of encoded inputs, with top log-probabilities.

    ``net`` is a transformers causal LM on ``device``; ``stop_ids`` end generation,
    ``pad_id`` pads; ``top_logprobs`` alternatives are kept per generated token.
    Not thread-safe: the guard calls it under its lock.
    """

    def __init__(
        self,
        net: Any,
        tokenizer: Any,
        *,
        device: str,
        stop_ids: frozenset[int],
        pad_id: int,
        max_new_tokens: int,
        top_logprobs: int,
    ) -> None:
        self._net = net
        self._tokenizer = tokenizer
        self._device = device
        self._stop_ids = stop_ids
        self._pad_id = pad_id
        self._max_new_tokens = max_new_tokens
        self._top_logprobs = top_logprobs
        self._pieces: dict[int, str] = {}

    def decode(self, batch: Sequence[EncodedInput], *, min_new_tokens: int = 0) -> list[Generation]:
        """One generation per input, in order; stop tokens held back for ``min_new_tokens``."""
        import torch

        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, encoded in enumerate(batch):  # left padding: every prompt ends at the same column
            n = len(encoded.input_ids)
            ids[row, width - n :] = torch.tensor(encoded.input_ids)
            mask[row, width - n :] = 1
        options = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
        with torch.inference_mode():
            out = self._net.generate(
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                do_sample=False,
                max_new_tokens=self._max_new_tokens,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self._pad_id,
                eos_token_id=sorted(self._stop_ids),
                **options,
            )
            new_tokens = out.sequences[:, width:]
            chosen, top = [], []
            for step, logits in enumerate(out.logits):  # one (batch, vocab) tensor per step
                logprobs = logits.float().log_softmax(dim=-1)
                chosen.append(logprobs.gather(1, new_tokens[:, step : step + 1])[:, 0].tolist())
                values, indices = logprobs.topk(min(self._top_logprobs, logprobs.shape[-1]))
                top.append((values.tolist(), indices.tolist()))
        results = []
        for row, tokens in enumerate(new_tokens.tolist()):
            steps = next((s for s, t in enumerate(tokens) if t in self._stop_ids), len(tokens))
            entries = tuple(
                TokenLogprobs(
                    token=self._piece(tokens[s]),
                    logprob=chosen[s][row],
                    top=tuple(zip(map(self._piece, top[s][1][row]), top[s][0][row], strict=True)),
                )
                for s in range(steps)
            )
            text = self._tokenizer.decode(tokens[:steps], skip_special_tokens=True)
            results.append(Generation(text, entries))
        return results

    def _piece(self, token_id: int) -> str:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._tokenizer.decode([token_id])
        return piece
