"""Run a Qwen3Guard-Gen checkpoint in-process with transformers.

torch and transformers are imported when a :class:`LocalQwen3Guard` is built,
never when this module is imported.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from guardrail.classifiers.loading import ModelSource as _Source
from guardrail.classifiers.loading import default_dtype as _default_dtype
from guardrail.classifiers.loading import import_backend as _import_backend
from guardrail.classifiers.loading import one_line as _one_line
from guardrail.errors import (
    ClassifierError,
    ConfigurationError,
    InputError,
    ModelLoadError,
)
from guardrail.qwen3guard import (
    DEFAULT_MODEL,
    ENDOFTEXT,
    IM_END,
    FieldProbabilities,
    GuardInput,
    GuardMessage,
    TokenLogprobs,
    field_probabilities,
    parse_verdict,
    render_segments,
)
from guardrail.types import Stage, Verdict

if TYPE_CHECKING:
    from guardrail.classifiers.batching import BatchStats
    from guardrail.classifiers.fastpath import FastDecoder

__all__ = ["EncodedInput", "LocalQwen3Guard"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_MAX_CONTEXT = 32768
"""The context Qwen3Guard is served with; larger configured windows are not used."""


@dataclass(frozen=True)
class EncodedInput:
    """A guard input as token ids, ready for the model."""

    input_ids: tuple[int, ...]
    guard_input: GuardInput
    """What was encoded: the input itself, or its truncated copy."""
    truncated: bool = False
    """Content was dropped from the start to fit ``max_input_tokens``."""


@dataclass(frozen=True)
class _Generated:
    text: str
    tokens: tuple[TokenLogprobs, ...]
    probs: FieldProbabilities | None = None
    """Set by the fast path, which reads each field's distribution directly."""


Decoding = Literal["fast", "generate"]
_HEAD_PROBES: dict[Stage, tuple[tuple[tuple[Any, str], ...], ...]] = {
    Stage.PROMPT: (
        (("user", "a"),),
        (("user", "b"),),
        (("user", ""),),
        (("assistant", "x"), ("user", "y")),
    ),
    Stage.RESPONSE: (
        (("user", "a"), ("assistant", "b")),
        (("user", "c"), ("assistant", "")),
        (("user", ""), ("assistant", "d")),
        (("assistant", "x"), ("user", "y"), ("assistant", "z")),
    ),
}
"""Conversations whose common token prefix is each stage's cacheable template head."""


class LocalQwen3Guard:
    """A Qwen3Guard-Gen checkpoint run locally with transformers.

    ``model`` is a Hugging Face Hub id or a local directory. The checkpoint's own
    chat template builds the guard prompt; message text is always tokenized as
    plain text, so ``<|im_end|>``, ``<think>`` and the like inside a message can
    never become markup (see :meth:`encode`). Verdicts are those of greedy
    decoding, with per-field probabilities.

    Decoding (``decoding``): ``"fast"`` (default) keeps the KV cache of the
    template head shared by all inputs of a stage, drafts the verdict lines and
    verifies them greedily in one forward pass (a second or third short pass when
    the level or category differs from the draft), reading each field's
    probabilities from the next-token distribution restricted to the field's values
    (see :mod:`guardrail.classifiers.fastpath`). Its verdicts are token for token
    those of greedy decoding; an input where greedy decoding would leave the verdict
    grammar is decoded with ``generate()`` instead, so the fast path never invents
    a verdict. ``"generate"`` is the model-card path: ``generate()`` with top
    log-probabilities at every step, probabilities read from those. A tokenizer
    whose verdict values do not begin with distinct tokens always uses ``"generate"``
    (see :attr:`decoding`).

    Micro-batching: concurrent :meth:`classify` calls (from threads) and
    :meth:`aclassify` calls are grouped into one model batch of up to
    ``max_batch_size`` inputs, waiting at most ``max_wait_ms`` for company (a
    lone caller does not wait); one worker thread runs the model. :meth:`close`
    stops the worker.

    Truncation: an input longer than ``max_input_tokens`` (default: the model's
    context, at most 32768, minus ``max_new_tokens``) keeps all of the template's
    instructions and markup and the END of the conversation. Content tokens are
    dropped from the start: the earliest messages go first, and the message where
    the cut falls keeps its last tokens. Such verdicts have ``truncated=True``.

    Thread-safe: one lock serialises tokenizer and model use. ``aclassify`` awaits
    the batch worker, so it never blocks the event loop.

    Other options: ``revision`` (hub revision), ``device`` (default ``cuda`` when
    available, else ``cpu``), ``dtype`` (``float32``, ``bfloat16``, ``float16`` or
    ``auto``; default bf16 on GPUs that support it, fp16 on other GPUs, fp32 on
    CPU), ``batch_size`` (an alias of ``max_batch_size``), ``local_files_only`` (never
    contact the hub; also implied by ``HF_HUB_OFFLINE=1``) and ``top_logprobs``
    (alternatives read per generated token for the probabilities).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_input_tokens: int | None = None,
        max_new_tokens: int = 64,
        batch_size: int | None = None,
        local_files_only: bool = False,
        top_logprobs: int = 20,
        decoding: Decoding = "fast",
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
    ) -> None:
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigurationError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        if decoding not in ("fast", "generate"):
            raise ConfigurationError(f"decoding must be 'fast' or 'generate', not {decoding!r}")
        if max_wait_ms < 0:
            raise ConfigurationError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        for name, value in (
            ("max_new_tokens", max_new_tokens),
            ("batch_size", 1 if batch_size is None else batch_size),
            ("max_batch_size", max_batch_size),
            ("top_logprobs", top_logprobs),
            ("max_input_tokens", 1 if max_input_tokens is None else max_input_tokens),
        ):
            if value < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {value}")
        self._model_name = model
        self._max_new_tokens = max_new_tokens
        self._batch_size = batch_size or max_batch_size
        self._top_logprobs = top_logprobs
        self._lock = threading.Lock()
        self._pieces: dict[int, str] = {}
        self._fast: FastDecoder | None = None
        self._generate_options: dict[str, Any] = {}
        """Extra ``generate()`` arguments (benchmarks force a verdict-sized output)."""

        torch, transformers = _import_backend()
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch_device = torch.device(self._device)
        except RuntimeError as exc:
            raise ConfigurationError(f"invalid device {device!r}: {_one_line(exc)}") from exc
        self._dtype = dtype or _default_dtype(torch, torch_device)

        source = _Source.resolve(
            model,
            revision,
            local_files_only,
            what="a Qwen3Guard-Gen checkpoint",
            hint="Point --model / model= at a local directory holding the checkpoint, "
            "or use a guard server (--base-url / RemoteQwen3Guard)",
        )
        self._tokenizer = source.load(transformers.AutoTokenizer)
        if not getattr(self._tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"{model!r} has no chat template; a Qwen3Guard-Gen checkpoint ships its "
                "moderation template in tokenizer_config.json"
            )
        if getattr(self._tokenizer, "backend_tokenizer", None) is None:
            raise ModelLoadError(f"{model!r} needs a fast tokenizer (tokenizer.json)")
        weights = "auto" if self._dtype == "auto" else getattr(torch, self._dtype)
        net = source.load(transformers.AutoModelForCausalLM, dtype=weights)
        self._net = net.to(torch_device).eval()
        self._prepare_tokens()

        window = getattr(self._net.config, "max_position_embeddings", None) or _MAX_CONTEXT
        self.max_input_tokens: int = max_input_tokens or min(window, _MAX_CONTEXT) - max_new_tokens
        """Longest guard input in tokens; longer inputs are truncated (see the class doc)."""
        try:
            overhead = len(self._encode_ids(_EMPTY_RESPONSE_CHECK))
        except Exception as exc:  # a template error of any kind: not a guard template
            raise ModelLoadError(
                f"{model!r}: its chat template is not a Qwen3Guard-Gen template: {_one_line(exc)}"
            ) from exc
        if self.max_input_tokens <= overhead:
            raise ConfigurationError(
                f"max_input_tokens={self.max_input_tokens} leaves no room for content: "
                f"the guard template alone takes {overhead} tokens"
            )
        if decoding == "fast":
            self._fast = self._build_fast_decoder(torch_device)

        from guardrail.classifiers.batching import MicroBatcher

        self._batcher: MicroBatcher[GuardInput, Verdict] = MicroBatcher(
            self._classify_chunks, max_batch_size=self._batch_size, max_wait_ms=max_wait_ms
        )

    # ------------------------------------------------------------------- tokens

    def _prepare_tokens(self) -> None:
        tok = self._tokenizer
        vocab: dict[str, int] = tok.get_vocab()
        # Markup is split at every added token (special or not: Qwen3's <think> is
        # not "special"); whitespace tokens are left to the BPE like any text.
        added = sorted((t for t in tok.added_tokens_encoder if t.strip()), key=len, reverse=True)
        self._control_ids: dict[str, int] = {t: vocab[t] for t in added}
        self._control_re = (
            re.compile("(" + "|".join(map(re.escape, added)) + ")") if added else None
        )
        config_eos = getattr(self._net.generation_config, "eos_token_id", None)
        stops: set[Any] = {vocab[t] for t in (IM_END, ENDOFTEXT) if t in vocab}
        stops.update(config_eos if isinstance(config_eos, list) else [config_eos])
        stops.add(tok.eos_token_id)
        self._stop_ids = frozenset(i for i in stops if isinstance(i, int))
        pad = tok.pad_token_id
        if pad is None:
            pad = vocab.get(ENDOFTEXT, tok.eos_token_id)
        if pad is None or not self._stop_ids:
            raise ModelLoadError(f"{self._model_name!r}: the tokenizer has no eos/pad token")
        self._pad_id: int = pad

    def _build_fast_decoder(self, torch_device: Any) -> FastDecoder | None:
        """The fast decoder, or ``None`` when this tokenizer's verdicts cannot be drafted."""
        from guardrail.classifiers.fastpath import FastDecoder, VerdictGrammar

        vocab = self._tokenizer.get_vocab()
        stop = vocab.get(IM_END, self._tokenizer.eos_token_id)
        if stop not in self._stop_ids:
            return None
        try:
            grammar = VerdictGrammar(self._plain_ids, stop)
        except ValueError:
            return None  # e.g. two levels share a first token: generate() is the only exact path
        heads: dict[Stage, list[int]] = {}
        for stage, probes in _HEAD_PROBES.items():
            encoded = [
                self._encode_ids(GuardInput(tuple(GuardMessage(r, t) for r, t in probe)))
                for probe in probes
            ]
            n = min(len(e) for e in encoded)
            head = next((i for i in range(n) if len({e[i] for e in encoded}) > 1), n)
            heads[stage] = encoded[0][:head]
        try:
            return FastDecoder(
                self._net, grammar, heads, self._stop_ids, self._decode_text, torch_device
            )
        except (AttributeError, NotImplementedError, ValueError):
            return None  # no separable decoder body / LM head: generate() only

    def _decode_text(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    # ----------------------------------------------------------------- encoding

    def encode(self, guard_input: GuardInput) -> EncodedInput:
        """Token ids of the guard prompt for ``guard_input``, truncated to fit.

        The prompt is the checkpoint's chat template rendered around the
        messages. Markup tokens come only from the template: message text is
        encoded as plain text, without matching any added token, so hostile
        content cannot close the conversation block or write a verdict. For
        ordinary text the ids equal ``tokenizer.apply_chat_template(messages)``.
        """
        with self._lock:
            return self._encode(guard_input)

    def _encode(self, guard_input: GuardInput) -> EncodedInput:
        ids = self._encode_ids(guard_input)
        limit = self.max_input_tokens
        current = guard_input
        # Re-encoding a cut text can merge a token or two differently: a few rounds converge.
        for _ in range(8):
            if len(ids) <= limit:
                return EncodedInput(tuple(ids), current, truncated=current is not guard_input)
            current = self._drop_leading_content(current, len(ids) - limit)
            ids = self._encode_ids(current)
        raise InputError(f"could not truncate the conversation to {limit} tokens")

    def _encode_ids(self, guard_input: GuardInput) -> list[int]:
        segments = render_segments(
            lambda msgs: str(self._tokenizer.apply_chat_template(msgs, tokenize=False)),
            guard_input,
        )
        # Encode maximal runs of text between markup tokens as plain text, so the
        # BPE sees the same text the checkpoint was trained on (e.g. "USER: hi").
        ids: list[int] = []
        run = ""
        for segment in segments:
            if segment.is_content or self._control_re is None:
                run += segment.text
                continue
            for k, piece in enumerate(self._control_re.split(segment.text)):
                if k % 2 == 0:
                    run += piece
                else:
                    ids += self._plain_ids(run)
                    ids.append(self._control_ids[piece])
                    run = ""
        return ids + self._plain_ids(run)

    def _plain_ids(self, text: str) -> list[int]:
        """Encode ``text`` with no added token matched, special or not.

        ``split_special_tokens=True`` alone would still match non-special added
        tokens such as Qwen3's ``<think>``, so run the backend's normaliser,
        pre-tokenizer and model directly.
        """
        if not text:
            return []
        backend = self._tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = [text]
        if backend.pre_tokenizer is not None:
            pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        return [t.id for piece in pieces for t in backend.model.tokenize(piece)]

    def _drop_leading_content(self, guard_input: GuardInput, excess: int) -> GuardInput:
        messages: list[GuardMessage] = []
        for message in guard_input.messages:
            ids = self._plain_ids(message.content) if excess else []
            if len(ids) <= excess:
                excess -= len(ids)
                messages.append(message if not ids else GuardMessage(message.role, ""))
                continue
            # A cut inside a multi-byte character decodes to U+FFFD: drop it.
            kept = self._tokenizer.decode(ids[excess:]).lstrip("\ufffd")
            messages.append(GuardMessage(message.role, kept))
            excess = 0
        if excess:
            raise InputError(
                f"the conversation does not fit in max_input_tokens={self.max_input_tokens} "
                "even without its content (too many turns)"
            )
        return GuardInput(tuple(messages), guard_input.part, guard_input.skipped_parts)

    # ----------------------------------------------------------------- decoding

    def _generate(self, batch: Sequence[EncodedInput]) -> list[_Generated]:
        """Greedy generation with top log-probabilities at every step (the model-card path)."""
        import torch

        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, encoded in enumerate(batch):  # left padding: every prompt ends at the same column
            n = len(encoded.input_ids)
            ids[row, width - n :] = torch.tensor(encoded.input_ids)
            mask[row, width - n :] = 1
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
                **self._generate_options,
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
            results.append(_Generated(text, entries))
        return results

    def _piece(self, token_id: int) -> str:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._tokenizer.decode([token_id])
        return piece

    # ----------------------------------------------------------------- classify

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

    @property
    def decoding(self) -> Decoding:
        """The decoding strategy in use: ``fast`` or ``generate`` (see the class doc)."""
        return "fast" if self._fast is not None else "generate"

    @property
    def batch_stats(self) -> BatchStats:
        """Counters of the micro-batcher: batches run, requests served, largest batch."""
        return self._batcher.stats

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Judge every input; one verdict per input, in order.

        Concurrent calls share model batches (see the class doc). Raises
        :class:`~guardrail.errors.VerdictParseError` when the model does not write a
        verdict (never read as safe) and :class:`~guardrail.errors.ClassifierError`
        when the model fails.
        """
        return self._batcher.call(list(inputs))

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Async twin of :meth:`classify`; awaits the batch worker without blocking the loop."""
        return await self._batcher.acall(list(inputs))

    def close(self) -> None:
        """Stop the batch worker; later calls raise ``RuntimeError``. Idempotent."""
        self._batcher.close()

    def _classify_chunks(self, inputs: list[GuardInput]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for start in range(0, len(inputs), self._batch_size):
            verdicts += self._classify_batch(inputs[start : start + self._batch_size])
        return verdicts

    def _decode_batch(self, encoded: list[EncodedInput]) -> list[_Generated]:
        """The fast path where it applies, ``generate()`` for every other input."""
        results: list[_Generated | None] = [None] * len(encoded)
        if self._fast is not None:
            import torch

            with torch.inference_mode():
                fast = self._fast.decode_batch(
                    [(e.guard_input.stage, e.input_ids) for e in encoded]
                )
            for k, found in enumerate(fast):
                # generate() would stop at max_new_tokens: a longer verdict is its business.
                if found is not None and found.length <= self._max_new_tokens:
                    results[k] = _Generated(found.text, (), found.probs)
        rest = [k for k, r in enumerate(results) if r is None]
        if rest:
            for k, gen in zip(rest, self._generate([encoded[k] for k in rest]), strict=True):
                results[k] = gen
        return [r for r in results if r is not None]

    def _classify_batch(self, batch: Sequence[GuardInput]) -> list[Verdict]:
        with self._lock:
            started = time.perf_counter()
            encoded = [self._encode(guard_input) for guard_input in batch]
            try:
                generated = self._decode_batch(encoded)
            except RuntimeError as exc:  # torch reports device and memory failures this way
                raise ClassifierError(f"local guard {self.model_id!r} failed: {exc}") from exc
            latency = time.perf_counter() - started
        verdicts = []
        for guard_input, enc, gen in zip(batch, encoded, generated, strict=True):
            probs = gen.probs or field_probabilities(gen.tokens)
            verdicts.append(
                parse_verdict(
                    gen.text,
                    stage=guard_input.stage,
                    model=self.model_id,
                    latency_s=latency,
                    truncated=enc.truncated,
                    skipped_parts=guard_input.skipped_parts,
                    part=guard_input.part,
                    level_probs=probs.level,
                    category_probs=probs.category,
                    refusal_probs=probs.refusal,
                )
            )
        return verdicts

    def __repr__(self) -> str:
        return (
            f"LocalQwen3Guard({self._model_name!r}, device={self._device!r}, "
            f"dtype={self._dtype!r}, decoding={self.decoding!r})"
        )


_EMPTY_RESPONSE_CHECK = GuardInput((GuardMessage("user", ""), GuardMessage("assistant", "")))
"""The longest template (response moderation) with no content: the fixed overhead."""
