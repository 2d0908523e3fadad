"""Run a Qwen3Guard-Gen checkpoint in-process with transformers.

This module owns the model and the decoding orchestration: loading, the lock, the
micro-batcher, the fast path with its ``generate()`` fallback, and turning their
output into verdicts. Tokenising and truncation are :mod:`.encoding`'s, the two
decoders :mod:`.fastpath`'s and :mod:`.generate`'s, checkpoint resolution
:mod:`.loading`'s, checking the options :mod:`.settings`'.

torch and transformers are imported when a :class:`LocalQwen3Guard` is built,
never when this module is imported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardrail.classifiers.encoding import EncodedInput, GuardEncoder
from guardrail.classifiers.generate import GenerateDecoder, Generation, stop_and_pad_ids
from guardrail.classifiers.loading import ModelSource, import_backend, one_line, resolve_device
from guardrail.classifiers.runtime import (
    DtypeChoice,
    ThreadChoice,
    apply_threads,
    choose_dtype,
    probe_capabilities,
)
from guardrail.classifiers.settings import Decoding, LocalSettings, check_dtype
from guardrail.errors import ClassifierError, ModelLoadError
from guardrail.qwen3guard import DEFAULT_MODEL, GuardInput, field_probabilities, parse_verdict
from guardrail.types import Verdict

if TYPE_CHECKING:
    from guardrail.classifiers.batching import BatchStats, MicroBatcher
    from guardrail.classifiers.fastpath import FastDecoder, FastPathOptions

__all__ = ["EncodedInput", "Generation", "LocalQwen3Guard"]


class LocalQwen3Guard:
    """A Qwen3Guard-Gen checkpoint run locally with transformers.

    ``model`` is a Hugging Face Hub id or a local directory (:meth:`from_loaded`
    wraps a model already in memory). The checkpoint's own chat template builds the
    guard prompt; message text is always tokenized as plain text, so
    ``<|im_end|>``, ``<think>`` and the like inside a message can never become
    markup (see :meth:`encode`). Verdicts are those of greedy decoding, with
    per-field probabilities.

    Decoding (``decoding``): ``"fast"`` (default) keeps the KV cache of the
    template head shared by all inputs of a stage, drafts the verdict lines and
    verifies them greedily in one forward pass (a second or third short pass when
    the level or category differs from the draft), reading each field's
    probabilities from the next-token distribution restricted to the field's values
    (see :mod:`guardrail.classifiers.fastpath`; ``fast_path`` takes its
    :class:`~guardrail.classifiers.fastpath.FastPathOptions`). Its verdicts are token
    for token those of greedy decoding; an input where greedy decoding would leave
    the verdict grammar is decoded with ``generate()`` instead, so the fast path
    never invents a verdict. ``"generate"`` is the model-card path: ``generate()``
    with top log-probabilities at every step, probabilities read from those. A
    tokenizer whose verdict values do not begin with distinct tokens always uses
    ``"generate"`` (see :attr:`decoding`).

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

    Speed defaults (see :mod:`guardrail.classifiers.runtime`): ``dtype``
    (``float32``, ``bfloat16``, ``float16`` or ``auto``, the checkpoint's own) defaults
    to bf16 where the hardware computes it natively (a CPU with AVX512_BF16 or AMX, a
    CUDA GPU with bf16), fp32 elsewhere. ``threads`` sets torch's intra-op thread count
    (process-wide) for a CPU model; by default it is left to ``OMP_NUM_THREADS`` when
    that is set, else set to the cores available to the process. :attr:`dtype_choice`
    and :attr:`thread_choice` say what was chosen and why.

    Other options: ``revision`` (hub revision), ``device`` (default ``cuda`` when
    available, else ``cpu``), ``batch_size`` (an alias of ``max_batch_size``),
    ``local_files_only`` (never contact the hub; also implied by ``HF_HUB_OFFLINE=1``;
    a hub that does not answer a one-second probe is treated the same way) and
    ``top_logprobs`` (alternatives read per generated token for the probabilities).
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
        fast_path: FastPathOptions | None = None,
        threads: int | None = None,
    ) -> None:
        check_dtype(dtype)
        settings = LocalSettings(
            max_input_tokens,
            max_new_tokens,
            batch_size,
            top_logprobs,
            decoding,
            max_batch_size,
            max_wait_ms,
            fast_path,
        )
        torch, transformers = import_backend()
        device_name, torch_device = resolve_device(torch, device)
        kind = torch_device.type
        dtype_choice = choose_dtype(dtype, kind, probe_capabilities(torch, kind))
        thread_choice = apply_threads(torch, threads, kind)
        dtype_name = dtype_choice.name
        source = ModelSource.resolve(
            model,
            revision,
            local_files_only,
            what="a Qwen3Guard-Gen checkpoint",
            hint="Point --model / model= at a local directory holding the checkpoint, "
            "or use a guard server (--base-url / RemoteQwen3Guard)",
        )
        tokenizer = source.load(transformers.AutoTokenizer)
        encoder = GuardEncoder(tokenizer, model)  # checks the tokenizer before the big load
        weights = "auto" if dtype_name == "auto" else getattr(torch, dtype_name)
        net = source.load(transformers.AutoModelForCausalLM, dtype=weights)
        net = net.to(torch_device).eval()
        runtime = (dtype_choice, thread_choice)
        self._setup(model, encoder, net, (device_name, torch_device), runtime, settings)

    @classmethod
    def from_loaded(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str | None = None,
        max_input_tokens: int | None = None,
        max_new_tokens: int = 64,
        batch_size: int | None = None,
        top_logprobs: int = 20,
        decoding: Decoding = "fast",
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        fast_path: FastPathOptions | None = None,
        threads: int | None = None,
    ) -> LocalQwen3Guard:
        """A guard around a causal LM and tokenizer already in memory.

        For models built in code rather than loaded from a checkpoint (benchmarks
        at a real model's shape, tests). ``model`` is used where it is, on its
        device and in its dtype (it is put in eval mode); ``tokenizer`` must be a
        fast tokenizer carrying a Qwen3Guard-Gen chat template. ``model_id`` names
        the model in verdicts (default: the config's ``name_or_path``, else the
        class name). ``threads`` follows the constructor's rule for a model on the
        CPU. The other options are the constructor's.
        """
        settings = LocalSettings(
            max_input_tokens,
            max_new_tokens,
            batch_size,
            top_logprobs,
            decoding,
            max_batch_size,
            max_wait_ms,
            fast_path,
        )
        torch, _ = import_backend()
        name = model_id or getattr(model.config, "name_or_path", "") or type(model).__name__
        encoder = GuardEncoder(tokenizer, name)
        weight = next(model.parameters())
        dtype_choice = DtypeChoice(str(weight.dtype).removeprefix("torch."), "the model's own")
        thread_choice = apply_threads(torch, threads, weight.device.type)
        guard = cls.__new__(cls)
        device = (str(weight.device), weight.device)
        runtime = (dtype_choice, thread_choice)
        guard._setup(name, encoder, model.eval(), device, runtime, settings)
        return guard

    def _setup(
        self,
        name: str,
        encoder: GuardEncoder,
        net: Any,
        device: tuple[str, Any],
        runtime: tuple[DtypeChoice, ThreadChoice],
        settings: LocalSettings,
    ) -> None:
        """Everything past loading, shared by both constructors; ``device``: (name, torch's)."""
        self._device, torch_device = device
        self._model_name = name
        self._encoder = encoder
        tokenizer = encoder.tokenizer
        self._dtype_choice, self._thread_choice = runtime
        self._settings = settings
        self._lock = threading.Lock()
        self._stop_ids, pad_id = stop_and_pad_ids(tokenizer, net, name)
        self._generator = GenerateDecoder(
            net,
            tokenizer,
            device=self._device,
            stop_ids=self._stop_ids,
            pad_id=pad_id,
            max_new_tokens=settings.max_new_tokens,
            top_logprobs=settings.top_logprobs,
        )

        try:
            overhead = self._encoder.template_overhead()
        except Exception as exc:  # a template error of any kind: not a guard template
            raise ModelLoadError(
                f"{name!r}: its chat template is not a Qwen3Guard-Gen template: {one_line(exc)}"
            ) from exc
        window = getattr(net.config, "max_position_embeddings", None)
        self.max_input_tokens: int = settings.input_limit(window, overhead)
        """Longest guard input in tokens; longer inputs are truncated (see the class doc)."""
        self._fast: FastDecoder | None = None
        if settings.decoding == "fast":
            from guardrail.classifiers.fastpath import build_fast_decoder

            self._fast = build_fast_decoder(
                net, encoder, self._stop_ids, torch_device, settings.fast_path
            )

        from guardrail.classifiers.batching import MicroBatcher

        self._batcher: MicroBatcher[GuardInput, Verdict] = MicroBatcher(
            self._classify_chunks,
            max_batch_size=settings.chunk_size,
            max_wait_ms=settings.max_wait_ms,
        )

    # ------------------------------------------------------------ properties

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
        return self._dtype_choice.name

    @property
    def dtype_choice(self) -> DtypeChoice:
        """The dtype and why it was chosen (given, or the hardware's native bf16, or fp32)."""
        return self._dtype_choice

    @property
    def threads(self) -> int:
        """The torch intra-op thread count for this guard (see :attr:`thread_choice`)."""
        return self._thread_choice.count

    @property
    def thread_choice(self) -> ThreadChoice:
        """The thread count and where it came from (``threads=``, the environment, the cores)."""
        return self._thread_choice

    def describe(self) -> str:
        """One line: model, device, dtype and threads, each with why it was chosen."""
        d, t = self._dtype_choice, self._thread_choice
        return (
            f"{self._model_name} on {self._device}, {d.name} ({d.reason}), "
            f"{t.count} thread{'s' if t.count != 1 else ''} ({t.source}), "
            f"{self.decoding} decoding"
        )

    @property
    def decoding(self) -> Decoding:
        """The decoding strategy in use: ``fast`` or ``generate`` (see the class doc)."""
        return "fast" if self._fast is not None else "generate"

    @property
    def fast_decoder(self) -> FastDecoder | None:
        """The fast decoder in use, ``None`` with ``generate`` decoding.

        Read its ``stats`` (inputs decoded, fallbacks, passes) and ``grammar``;
        benchmarks call its ``decode_batch`` directly to force verdicts on random
        weights. Calling it bypasses the guard's lock: not while the guard is serving.
        """
        return self._fast

    @property
    def encoder(self) -> GuardEncoder:
        """The encoder turning guard inputs into this checkpoint's ids.

        Its ``plain_ids`` counts content tokens as the guard encodes them. Not
        locked: prefer :meth:`encode` while the guard is serving.
        """
        return self._encoder

    @property
    def batch_stats(self) -> BatchStats:
        """Counters of the micro-batcher: batches run, requests served, largest batch."""
        return self._batcher.stats

    # --------------------------------------------------------------- encoding

    def encode(self, guard_input: GuardInput) -> EncodedInput:
        """Token ids of the guard prompt for ``guard_input``, truncated to fit.

        The prompt is the checkpoint's chat template rendered around the
        messages. Markup tokens come only from the template: message text is
        encoded as plain text, without matching any added token, so hostile
        content cannot close the conversation block or write a verdict. For
        ordinary text the ids equal ``tokenizer.apply_chat_template(messages)``.
        """
        with self._lock:
            return self._encoder.encode(guard_input, self.max_input_tokens)

    # --------------------------------------------------------------- decoding

    def generate(
        self, batch: Sequence[EncodedInput], *, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Decode ``batch`` with ``generate()``, the model-card path, whatever :attr:`decoding` is.

        Greedy, up to ``max_new_tokens``, with top log-probabilities at every step:
        the reference the fast path reproduces. ``min_new_tokens`` holds back stop
        tokens until that many tokens are written; benchmarks on random weights use
        it to do a real verdict's work.
        """
        with self._lock:
            return self._generator.decode(batch, min_new_tokens=min_new_tokens)

    def _decode_batch(self, encoded: list[EncodedInput]) -> list[Generation]:
        """The fast path where it applies, ``generate()`` for every other input."""
        results: list[Generation | None] = [None] * len(encoded)
        if self._fast is not None:
            import torch

            with torch.inference_mode():
                fast = self._fast.decode_batch(
                    [(e.guard_input.stage, e.input_ids) for e in encoded]
                )
            for k, found in enumerate(fast):
                # generate() would stop at max_new_tokens: a longer verdict is its business.
                if found is not None and found.length <= self._settings.max_new_tokens:
                    results[k] = Generation(found.text, (), found.probs)
        rest = [k for k, r in enumerate(results) if r is None]
        if rest:
            generated = self._generator.decode([encoded[k] for k in rest])
            for k, gen in zip(rest, generated, strict=True):
                results[k] = gen
        return [r for r in results if r is not None]

    # --------------------------------------------------------------- classify

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
        size = self._settings.chunk_size
        for start in range(0, len(inputs), size):
            verdicts += self._classify_batch(inputs[start : start + size])
        return verdicts

    def _classify_batch(self, batch: Sequence[GuardInput]) -> list[Verdict]:
        with self._lock:
            started = time.perf_counter()
            encoded = [self._encoder.encode(g, self.max_input_tokens) for g in batch]
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
            f"dtype={self.dtype!r}, threads={self.threads}, decoding={self.decoding!r})"
        )
