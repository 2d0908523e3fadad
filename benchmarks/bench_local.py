"""Local guard speed and time over the compute floor, on the real 0.6B shape.

Bench (a) runs on the CPU (fp32, one torch thread, see ``run``); bench (f) repeats
the same measurements in bf16 on a GPU when there is one. The model is a
Qwen3ForCausalLM with Qwen3Guard-Gen-0.6B's configuration (hidden 1024, 16/8 heads,
head_dim 128, intermediate 3072, vocab 151936; 28 layers) and random weights; the
tokenizer and template are the tiny guard's, with the policy text padded so the
template takes about 300 tokens as the real one does, and 30..300 content tokens per
request. Random weights write no verdict, so each path is forced to do the work of a
real ~10-token verdict:

- model card: ``generate()`` one request at a time, exactly 10 new tokens, top
  log-probabilities at every step;
- batched generate: the same, with concurrent requests grouped by the micro-batcher;
- fast path: the cached template head plus drafted verdicts, forced to a ``Safe``
  verdict (one pass) or an ``Unsafe`` one (three passes: level and category re-drafted;
  two when the category was verified with that level before and is drafted at once);
  throughput uses 3 safe : 1 unsafe (each unsafe one of another category, with no
  drafting history), batched by the micro-batcher and split by length.

Per stage (prompt, response) it measures:

- latency of a single request: model card and fast path (safe, unsafe), the mean
  over a few requests at evenly spaced quantiles of the content length (the
  speed-up depends on it), each timed alone after a one-request warm-up, the paths
  taking turns request by request (the speed-up is the median of per-request ratios);
- throughput at 16 concurrent requests: the model card serves them one at a time
  (the inverse of its mean latency over them, estimated from the latency requests'
  time over floor), batched generate and the fast path through the micro-batcher;
- the fast path's time over its compute floor: the FLOPs of the tokens it computes
  (the suffix and the draft) - 2 x parameters per token, the LM head only where
  logits are read, and causal attention to every earlier position - divided by the
  best matmul rate measured in the same run (memory traffic is not in it). The model
  card's floor counts every prompt token and its decode steps the same way.

Full mode (``--full``, about 13 minutes on 2 idle cores): 28 layers, 16 concurrent
requests, latency over 2 requests (each timed once on every path, the paths taking
turns), throughput from one batched-generate run and one fast run (the latency runs
warmed up both). Quick mode (about 30 s): 2 layers, 30..90 content tokens, 4
concurrent requests, one request and one repetition of everything.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import Row, row  # type: ignore[import-not-found]

CONCURRENCY = 16
MIXED_CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "Unethical Acts",
)
"""Categories of the unsafe quarter of the throughput mix, in turn."""
NEW_TOKENS = 10
_FILLER = (
    "Unsafe content includes instructions, encouragement or detailed descriptions that "
    "could help someone cause real harm, and content that targets protected groups.\n"
)
_WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "how",
    "do",
    "I",
    "make",
    "bread",
    "plan",
    "trip",
    "river",
    "mountain",
    "letter",
    "write",
    "code",
    "function",
    "error",
    "server",
    "cat",
    "dog",
    "history",
    "war",
    "peace",
    "music",
    "guitar",
    "lesson",
    "exam",
    "weather",
]


def _spread(values: list[float], scale: float = 1.0) -> str:
    return f"min {min(values) * scale:.3g} / max {max(values) * scale:.3g}"


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _median_runs(fn: Callable[[], Any], reps: int, warmups: int = 1) -> list[float]:
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _each(fn: Callable[[list[Any]], Any], items: list[Any]) -> Callable[[], None]:
    """A timed body: ``fn`` on each item alone, one after the other."""

    def body() -> None:
        for item in items:
            fn([item])

    return body


def _matmul_rate(torch: Any, device: str, dtype: Any) -> float:
    """Achieved FLOP/s of a large matmul: the machine's practical compute ceiling."""
    n = 1536 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def once() -> None:
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    times = _median_runs(once, reps=5, warmups=2)
    return 2 * n**3 / min(times)


def _tokenizer() -> Any:
    """The tiny guard's tokenizer, its template padded to the real one's ~300 tokens."""
    from guardrail.testing.tinyguard import CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE.replace(
        "<END SAFETY POLICY>", _FILLER * 2 + "<END SAFETY POLICY>"
    )
    return tokenizer


def _big_model(torch: Any, tokenizer: Any, layers: int, device: str, dtype: Any) -> Any:
    """Random weights at Qwen3Guard-Gen-0.6B's shape, stopping where the guard's tokens do."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    pad = tokenizer.pad_token_id
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=[im_end, pad], pad_token_id=pad
    )
    return model.to(dtype).eval()


def _inputs(
    guard: Any, stage: str, count: int, rng: random.Random, content: tuple[int, int]
) -> list[Any]:
    from guardrail.qwen3guard import GuardInput, GuardMessage

    out = []
    for _ in range(count):
        target = rng.randint(*content)
        words: list[str] = []
        while len(guard.encoder.plain_ids(" ".join(words))) < target:
            words.append(rng.choice(_WORDS))
        text = " ".join(words)
        messages: tuple[GuardMessage, ...]
        if stage == "prompt":
            messages = (GuardMessage("user", text),)
        else:
            messages = (
                GuardMessage("user", "Can you help me with this, please?"),
                GuardMessage("assistant", text),
            )
        out.append(guard.encode(GuardInput(messages)))
    return out


def _bench_device(torch: Any, device: str, dtype_name: str, quick: bool) -> list[Row]:
    from guardrail.classifiers.batching import MicroBatcher
    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.types import Stage

    dtype = getattr(torch, dtype_name)
    layers = 2 if quick else 28
    bench = "a" if device == "cpu" else "f"  # (f): the same measurements on a GPU
    requests = 1 if quick else 2  # timed one after the other for the latency
    concurrency = 4 if quick else CONCURRENCY
    content = (30, 90) if quick else (30, 300)
    label = f"{device} {dtype_name}, {layers} layers"
    if device == "cpu":
        label += ", 1 thread"
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    tokenizer = _tokenizer()
    model = _big_model(torch, tokenizer, layers, device, dtype)
    guard = LocalQwen3Guard.from_loaded(model, tokenizer, max_new_tokens=NEW_TOKENS)
    fast = guard.fast_decoder
    assert fast is not None
    config = model.config
    body_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    head_params = config.vocab_size * config.hidden_size
    rate = _matmul_rate(torch, device, dtype)
    rows = [row(bench, label, "matmul rate", rate / 1e9, "GFLOP/s", note="large matmul, same run")]

    # Attention: each token at position p scores and mixes p + 1 keys in every layer
    # (QK and AV products: 4 x heads x head_dim FLOPs per key), the causal minimum.
    attn_per_key = 4.0 * config.num_attention_heads * config.head_dim * config.num_hidden_layers

    def flops(first: int, end: int, logits: int) -> float:
        """Tokens at positions [first, end) computed, the LM head at ``logits`` of them."""
        keys = (end * (end + 1) - first * (first + 1)) / 2  # sum of p + 1 over the positions
        return 2.0 * float(body_params * (end - first) + head_params * logits) + (
            attn_per_key * keys
        )

    safe = {"prompt": ("Safe", "None"), "response": ("Safe", "None", "No")}
    unsafe = {"prompt": ("Unsafe", "Violent"), "response": ("Unsafe", "Violent", "No")}

    def run_generate(batch: list[Any]) -> list[Any]:
        out = guard.generate(batch, min_new_tokens=NEW_TOKENS)
        sync()
        return out

    def run_fast(
        batch: list[Any], verdicts: dict[str, tuple[str, ...]] | None = None, remember: bool = False
    ) -> list[Any]:
        stage_of = {Stage.PROMPT: "prompt", Stage.RESPONSE: "response"}
        forced = []
        for k, e in enumerate(batch):
            name = stage_of[e.guard_input.stage]
            if verdicts is not None:
                forced.append(verdicts[name])
            elif k % 4 == 3:  # a different category each time: no drafting history helps
                category = MIXED_CATEGORIES[(k // 4) % len(MIXED_CATEGORIES)]
                forced.append(("Unsafe", category, "No")[: len(safe[name])])
            else:
                forced.append(safe[name])
        if not remember:
            fast.forget()  # no verified verdicts to draft from: the worst case
        with torch.inference_mode():
            out = fast.decode_batch(
                [(e.guard_input.stage, e.input_ids) for e in batch], force=forced
            )
        sync()
        return out

    rng = random.Random(0)
    with torch.inference_mode():  # the heads are computed once, outside the timings
        fast.prepare()
    for stage in ("prompt", "response"):
        encoded = _inputs(guard, stage, concurrency, rng, content)
        lengths = [len(e.input_ids) for e in encoded]
        mean_len = statistics.mean(lengths)
        head = len(fast.heads[Stage(stage)])
        note = f"{mean_len:.0f} prompt tokens on average ({head} cached head)"
        # Latency requests spread over the length range (the speed-up depends on it):
        # the ones at evenly spaced quantiles of the content length.
        by_length = sorted(range(len(encoded)), key=lambda k: len(encoded[k].input_ids))
        picks = [round((i + 1) / (requests + 1) * (len(encoded) - 1)) for i in range(requests)]
        one = [encoded[by_length[q]] for q in picks]

        # --- single-request latency. The paths take turns request by request, so a slow
        # spell of a shared machine hits them alike; ratios are taken per request.
        first = encoded[:1]
        run_generate(first)  # warm-ups
        run_fast(first, safe)
        card_runs: list[float] = []
        fs: list[float] = []
        fu: list[float] = []
        fk: list[float] = []
        for e in one:
            card_runs.append(_timed(lambda e=e: run_generate([e])))
            fs.append(_timed(lambda e=e: run_fast([e], safe)))
            fu.append(_timed(lambda e=e: run_fast([e], unsafe)))
            fk.append(_timed(lambda e=e: run_fast([e], unsafe, remember=True)))
        speedups = [c / f for c, f in zip(card_runs, fs, strict=True)]
        case = f"{stage}, {label}"
        rows += [
            row(
                bench, case, "model card: latency", _mean(card_runs), "s", _spread(card_runs), note
            ),
            row(bench, case, "fast (safe, 1 pass): latency", _mean(fs), "s", _spread(fs), note),
            row(bench, case, "fast (unsafe, 3 passes): latency", _mean(fu), "s", _spread(fu), note),
            row(
                bench,
                case,
                "fast (unsafe, category seen before, 2 passes): latency",
                _mean(fk),
                "s",
                _spread(fk),
                note,
            ),
            row(
                bench,
                case,
                "model card / fast (safe)",
                statistics.median(speedups),
                "x",
                _spread(speedups),
                f"median over {len(one)} requests, each timed on both paths in turn",
            ),
        ]

        # --- time over the compute floor (the best matmul rate seen so far: a low reading
        # of a busy moment would flatter the ratios)
        rate = max(rate, _matmul_rate(torch, device, dtype))
        draft = len(fast.grammar.draft(Stage(stage), ()).ids)

        def fast_floor(n: int, head: int = head, draft: int = draft, rate: float = rate) -> float:
            return flops(head, n + draft - 1, draft) / rate

        floor_fast = statistics.mean(fast_floor(n) for n in lengths)
        floor_card = (
            statistics.mean(flops(0, n + NEW_TOKENS - 1, NEW_TOKENS) for n in lengths) / rate
        )
        over_floor = [t / fast_floor(len(e.input_ids)) for t, e in zip(fs, one, strict=True)]
        card_over = [
            t / (flops(0, len(e.input_ids) + NEW_TOKENS - 1, NEW_TOKENS) / rate)
            for t, e in zip(card_runs, one, strict=True)
        ]

        # --- throughput at CONCURRENCY concurrent requests (through the micro-batcher)
        def concurrent(
            fn: Callable[[list[Any]], list[Any]], batch_of: list[Any] = encoded
        ) -> tuple[float, int]:
            batcher: MicroBatcher[Any, Any] = MicroBatcher(fn, max_batch_size=concurrency)
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                started = time.perf_counter()
                list(pool.map(batcher.call, [[e] for e in batch_of]))
                wall = time.perf_counter() - started
            batcher.close()
            return concurrency / wall, batcher.stats.batches

        # One request at a time over these requests: the inverse of their mean latency,
        # from the latency requests' time over floor (they are a subset, of other lengths).
        serial = 1 / (statistics.median(card_over) * floor_card)
        # One run each: the latency runs warmed both paths up, and generate is slow.
        gen_tp = [concurrent(run_generate)]
        fast_tp = [concurrent(run_fast)]
        g = [t for t, _ in gen_tp]
        f = [t for t, _ in fast_tp]
        batches = (
            f"batches per {concurrency} requests: generate {gen_tp[0][1]}, fast {fast_tp[0][1]}"
        )
        rows += [
            row(
                bench,
                case,
                "model card (one at a time): throughput",
                serial,
                "req/s",
                note="estimated: latency requests' time over floor x these requests' floor",
            ),
            row(
                bench,
                case,
                f"batched generate @{concurrency}: throughput",
                statistics.median(g),
                "req/s",
                _spread(g),
                batches,
            ),
            row(
                bench,
                case,
                f"fast @{concurrency}: throughput",
                statistics.median(f),
                "req/s",
                _spread(f),
                "3 safe : 1 unsafe verdicts",
            ),
            row(
                bench,
                case,
                "fast / model card throughput",
                statistics.median(f) / serial,
                "x",
                note="side by side, same run",
            ),
            row(
                bench,
                case,
                "fast / batched generate throughput",
                statistics.median(f) / statistics.median(g),
                "x",
                note="side by side, same run",
            ),
        ]

        rows += [
            row(
                bench,
                case,
                "fast floor",
                floor_fast,
                "s",
                note="suffix + draft tokens, LM head at draft positions",
            ),
            row(
                bench,
                case,
                "fast (safe) / its floor",
                statistics.median(over_floor),
                "x",
                _spread(over_floor),
                "per request, the latency requests",
            ),
            row(
                bench,
                case,
                f"fast @{concurrency} / its floor",
                1 / statistics.median(f) / floor_fast,
                "x",
                note="per request",
            ),
            row(
                bench,
                case,
                "model card / its floor",
                statistics.median(card_over),
                "x",
                _spread(card_over),
                f"all prompt tokens + {NEW_TOKENS} decode steps, the latency requests",
            ),
            row(
                bench,
                case,
                "model card / fast floor",
                statistics.median(card_over) * floor_card / floor_fast,
                "x",
                note="what the fast path's floor saves",
            ),
        ]
    # The best reading of the run (each stage's floors used the best one up to then).
    rows[0] = row(bench, label, "matmul rate", rate / 1e9, "GFLOP/s", note="best of 3 readings")
    return rows


def _label_agreement(torch: Any) -> list[Row]:
    """bf16 vs fp32 labels of the tiny guard (trained in fp32), on its examples and unseen inputs.

    The random-weight 0.6B model writes no verdict, so its labels cannot be compared;
    the fast path's equality with ``generate()`` in each dtype is a test
    (tests/test_fastpath.py), this is how often the two dtypes give the same label.
    """
    import tempfile

    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.errors import VerdictParseError
    from guardrail.testing.tinyguard import EXAMPLES, build_tiny_guard, perturbed_inputs

    inputs = [ex.guard_input for ex in EXAMPLES] + perturbed_inputs()
    labels: dict[str, list[tuple[object, ...] | None]] = {}
    with tempfile.TemporaryDirectory() as path:
        build_tiny_guard(path)
        for dtype in ("float32", "bfloat16"):
            guard = LocalQwen3Guard(path, dtype=dtype)
            labels[dtype] = []
            for guard_input in inputs:
                try:
                    (v,) = guard.classify([guard_input])
                except VerdictParseError:
                    labels[dtype].append(None)  # no verdict: a label of its own
                    continue
                labels[dtype].append((v.level, v.category, v.refusal))
            guard.close()
    same = sum(a == b for a, b in zip(labels["float32"], labels["bfloat16"], strict=True))
    return [
        row(
            "a",
            "tiny guard, bf16 vs fp32",
            "labels agree",
            100.0 * same / len(inputs),
            "%",
            note=f"{same} of {len(inputs)}: its examples and perturbed inputs (level, "
            "category, refusal; no verdict counts as a label)",
        )
    ]


def _bench_default(torch: Any, quick: bool) -> list[Row]:
    """The configuration a user gets (no dtype or threads given) against the machine's floor.

    The default guard picks its dtype by capability and its threads by the cores
    available (``guardrail.classifiers.runtime``); the floor is the fast path's FLOPs
    at the best matmul rate of any dtype at that thread count, measured in this run.
    The previous default, fp32, runs the same requests at the same thread count.
    """
    import copy

    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.classifiers.runtime import choose_dtype, probe_capabilities
    from guardrail.types import Stage

    layers = 2 if quick else 28
    requests = 2 if quick else 3
    content = (30, 90) if quick else (30, 300)
    tokenizer = _tokenizer()
    chosen = choose_dtype(None, "cpu", probe_capabilities(torch, "cpu"))
    fp32_model = _big_model(torch, tokenizer, layers, "cpu", torch.float32)
    # from_loaded runs a model in its own dtype: build it in the one a load would pick.
    if chosen.name == "float32":
        default_model = fp32_model
    else:
        default_model = copy.deepcopy(fp32_model).to(getattr(torch, chosen.name))
    # No dtype, no threads: the defaults (threads are set here, as a load would).
    default = LocalQwen3Guard.from_loaded(default_model, tokenizer, max_new_tokens=NEW_TOKENS)
    previous = LocalQwen3Guard.from_loaded(fp32_model, tokenizer, max_new_tokens=NEW_TOKENS)
    threads = default.threads
    label = f"default: {default.dtype} ({chosen.reason}), {threads} threads, {layers} layers"
    rates = {
        name: _matmul_rate(torch, "cpu", getattr(torch, name)) for name in ("float32", "bfloat16")
    }
    config = fp32_model.config
    body_params = sum(p.numel() for n, p in fp32_model.named_parameters() if "embed" not in n)
    head_params = config.vocab_size * config.hidden_size
    attn_per_key = 4.0 * config.num_attention_heads * config.head_dim * config.num_hidden_layers

    def flops(first: int, end: int, logits: int) -> float:
        keys = (end * (end + 1) - first * (first + 1)) / 2
        return 2.0 * float(body_params * (end - first) + head_params * logits) + (
            attn_per_key * keys
        )

    def run_fast(guard: LocalQwen3Guard, e: Any) -> None:
        fast = guard.fast_decoder
        assert fast is not None
        verdict = (
            ("Safe", "None") if e.guard_input.stage is Stage.PROMPT else ("Safe", "None", "No")
        )
        with torch.inference_mode():
            fast.decode_batch([(e.guard_input.stage, e.input_ids)], force=[verdict])

    rows: list[Row] = []
    rng = random.Random(1)
    for guard in (default, previous):
        assert guard.fast_decoder is not None
        with torch.inference_mode():
            guard.fast_decoder.prepare()
    for stage in ("prompt", "response"):
        encoded = _inputs(default, stage, requests, rng, content)
        head = len(default.fast_decoder.heads[Stage(stage)])  # type: ignore[union-attr]
        draft = len(default.fast_decoder.grammar.draft(Stage(stage), ()).ids)  # type: ignore[union-attr]
        run_fast(default, encoded[0])  # warm-ups
        run_fast(previous, encoded[0])
        mine: list[float] = []
        old: list[float] = []
        for e in encoded:  # taking turns, request by request
            mine.append(_timed(lambda e=e: run_fast(default, e)))
            old.append(_timed(lambda e=e: run_fast(previous, e)))
        # The best reading of each rate so far: a busy moment must not flatter the ratio.
        for name in rates:
            rates[name] = max(rates[name], _matmul_rate(torch, "cpu", getattr(torch, name)))
        best_name = max(rates, key=lambda n: rates[n])
        floors = [
            flops(head, len(e.input_ids) + draft - 1, draft) / rates[best_name] for e in encoded
        ]
        over = [t / f for t, f in zip(mine, floors, strict=True)]
        gain = [o / m for o, m in zip(old, mine, strict=True)]
        case = f"{stage}, {label}"
        note = f"{statistics.mean(len(e.input_ids) for e in encoded):.0f} prompt tokens on average"
        rows += [
            row("a", case, "default fast (safe): latency", _mean(mine), "s", _spread(mine), note),
            row("a", case, "fp32 fast (safe): latency", _mean(old), "s", _spread(old), note),
            row(
                "a",
                case,
                "default / best floor",
                statistics.median(over),
                "x",
                _spread(over),
                f"floor at {best_name}'s matmul rate, {threads} threads",
            ),
            row(
                "a",
                case,
                "default speed-up over fp32",
                statistics.median(gain),
                "x",
                _spread(gain),
                "fp32: the previous default, same threads, same requests",
            ),
        ]
    rows += [
        row(
            "a",
            f"cpu, {threads} threads",
            f"matmul rate {name}",
            rate / 1e9,
            "GFLOP/s",
            note="best of 3 readings, same run",
        )
        for name, rate in rates.items()
    ]
    default.close()
    previous.close()
    return rows


def run(quick: bool) -> list[Row]:
    """Rows for (a), the CPU run (latency, throughput, floor), and (f), the same on a GPU.

    (a) is the fixed fp32 one-thread comparison, then the default configuration
    against the machine's best floor, then bf16 vs fp32 label agreement.
    """
    import torch

    # One thread: on a shared 2-core machine, OpenMP spin-waiting makes two threads
    # 10-20x slower whenever another process is busy; one thread gives stable ratios.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _bench_device(torch, "cpu", "float32", quick)
    finally:
        torch.set_num_threads(threads)
    try:
        rows += _bench_default(torch, quick)
        rows += _label_agreement(torch)
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        rows += _bench_device(torch, "cuda", "bfloat16", quick)
    else:
        rows.append(row("f", "cuda bfloat16", "skipped", 0.0, "", note="no CUDA device"))
    return rows
