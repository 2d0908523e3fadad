"""The fast decoder (cached head + verified drafts) against greedy generate(), on the tiny guard."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from guardrail.classifiers.fastpath import FastDecoder, FastPathOptions
from guardrail.classifiers.local import LocalQwen3Guard
from guardrail.errors import ConfigurationError, VerdictParseError
from guardrail.qwen3guard import FIELD_VALUES
from guardrail.testing.tinyguard import EXAMPLES, Example, perturbed_inputs
from guardrail.types import Stage, Verdict

pytestmark = pytest.mark.slow


def _label(v: Verdict) -> tuple[object, ...]:
    return (v.stage, v.level, v.category, v.categories, v.refusal)


def _expected(ex: Example) -> tuple[object, ...]:
    return (ex.stage, ex.level, ex.category, (ex.category,) if ex.category else (), ex.refusal)


DTYPES = ("float32", "bfloat16")
"""Fidelity is checked in both dtypes the guard defaults to (fp32, bf16 where native)."""


def _fast_guard(path: Path, dtype: str) -> LocalQwen3Guard:
    guard = LocalQwen3Guard(str(path), max_batch_size=8, dtype=dtype)
    assert (guard.decoding, guard.dtype) == ("fast", dtype)
    return guard


def _reference_guard(path: Path, dtype: str) -> LocalQwen3Guard:
    guard = LocalQwen3Guard(str(path), decoding="generate", max_batch_size=8, dtype=dtype)
    assert (guard.decoding, guard.dtype) == ("generate", dtype)
    return guard


@pytest.fixture(scope="module")
def fast(tiny_guard_dir: Path) -> LocalQwen3Guard:
    return _fast_guard(tiny_guard_dir, "float32")


@pytest.fixture(scope="module")
def reference(tiny_guard_dir: Path) -> LocalQwen3Guard:
    return _reference_guard(tiny_guard_dir, "float32")


@pytest.fixture(scope="module")
def fast_verdicts(fast: LocalQwen3Guard) -> list[Verdict]:
    return fast.classify([ex.guard_input for ex in EXAMPLES])


@pytest.fixture(scope="module", params=DTYPES)
def pair(request: pytest.FixtureRequest, tiny_guard_dir: Path) -> tuple[LocalQwen3Guard, ...]:
    """A fast guard and a generate() guard in the same dtype."""
    dtype: str = request.param
    return _fast_guard(tiny_guard_dir, dtype), _reference_guard(tiny_guard_dir, dtype)


def _packing_available() -> bool:
    import torch

    from guardrail.classifiers.prepack import packed_linears

    probe = torch.nn.Linear(4, 4).to(torch.bfloat16)
    return packed_linears(probe, "cpu") is not None


def test_prepacking_is_bf16_only_and_can_be_switched_off(tiny_guard_dir: Path) -> None:
    fp32 = _fast_guard(tiny_guard_dir, "float32")
    assert not _decoder(fp32).prepacked
    plain = LocalQwen3Guard(
        str(tiny_guard_dir), dtype="bfloat16", fast_path=FastPathOptions(prepack_weights=False)
    )
    assert not _decoder(plain).prepacked
    packed = _fast_guard(tiny_guard_dir, "bfloat16")
    assert _decoder(packed).prepacked == _packing_available()
    inputs = [ex.guard_input for ex in EXAMPLES]
    assert [_label(v) for v in packed.classify(inputs)] == [
        _label(v) for v in plain.classify(inputs)
    ]


def _decoder(guard: LocalQwen3Guard) -> FastDecoder:
    decoder = guard.fast_decoder
    assert decoder is not None
    return decoder


def _fast_stats(guard: LocalQwen3Guard) -> tuple[int, int]:
    stats = _decoder(guard).stats
    return stats.inputs, stats.left


def _check_probabilities(v: Verdict) -> None:
    fields = [(v.level_probs, v.level.value), (v.category_probs, v.category or "None")]
    if v.stage is Stage.RESPONSE:
        fields.append((v.refusal_probs, "Yes" if v.refusal else "No"))
    else:
        assert v.refusal_probs is None
    for probs, label in fields:
        assert probs is not None
        assert sum(probs.values()) == pytest.approx(1.0)
        assert max(probs, key=lambda k: probs[k]) == getattr(label, "value", label)


def test_every_example_matches_generate(pair: tuple[LocalQwen3Guard, ...]) -> None:
    fast, reference = pair
    if fast.dtype == "bfloat16" and _packing_available():  # fidelity holds on packed weights
        assert _decoder(fast).prepacked
    before = _fast_stats(fast)
    inputs = [ex.guard_input for ex in EXAMPLES]
    fast_verdicts = fast.classify(inputs)
    assert _fast_stats(fast) == (before[0] + len(EXAMPLES), before[1])  # no fallback
    reference_verdicts = reference.classify(inputs)
    for ex, got, ref in zip(EXAMPLES, fast_verdicts, reference_verdicts, strict=True):
        assert _label(got) == _label(ref)
        assert got.raw_text == ref.raw_text
        if fast.dtype == "float32":  # the dtype the tiny guard was trained and checked in
            assert _label(got) == _expected(ex)
            assert got.raw_text == ex.verdict_text
        _check_probabilities(got)
        # bf16 logits carry ~3 significant digits: probabilities agree less closely.
        tolerance = 2e-3 if fast.dtype == "float32" else 2e-2
        for name in ("level_probs", "category_probs", "refusal_probs"):
            mine, theirs = getattr(got, name), getattr(ref, name)
            assert (mine is None) == (theirs is None)
            if mine is not None:  # top-20 alternatives hold nearly all the mass here
                assert mine == pytest.approx(theirs, abs=tolerance)
    assert _fast_stats(fast)[0] == before[0] + len(EXAMPLES)  # the reference did not touch it


def test_examples_never_fall_back(tiny_guard_dir: Path) -> None:
    # One first pass per stage: no length groups.
    options = FastPathOptions(pass_overhead_tokens=1e9)
    guard = LocalQwen3Guard(str(tiny_guard_dir), dtype="float32", fast_path=options)
    assert _decoder(guard).pass_overhead_tokens == 1e9
    guard.classify([ex.guard_input for ex in EXAMPLES])
    assert _fast_stats(guard) == (len(EXAMPLES), 0)
    # Per batch, a first pass per stage, then one merged pass per re-drafted field.
    assert _decoder(guard).stats.passes <= 2 * 4


def test_batched_equals_one_by_one(fast: LocalQwen3Guard, fast_verdicts: list[Verdict]) -> None:
    for ex, batched in zip(EXAMPLES, fast_verdicts, strict=True):
        (single,) = fast.classify([ex.guard_input])
        assert single.raw_text == batched.raw_text
        for name in ("level_probs", "category_probs", "refusal_probs"):
            mine, theirs = getattr(single, name), getattr(batched, name)
            assert (mine is None) == (theirs is None)
            if mine is not None:
                assert mine == pytest.approx(theirs, abs=1e-4)


def test_unseen_inputs_agree_with_generate(pair: tuple[LocalQwen3Guard, ...]) -> None:
    fast, reference = pair
    inputs = perturbed_inputs()
    compared = 0
    for guard_input in inputs:
        try:
            (ref,) = reference.classify([guard_input])
        except VerdictParseError:
            with pytest.raises(VerdictParseError):  # the fast path falls back and agrees
                fast.classify([guard_input])
            continue
        (got,) = fast.classify([guard_input])
        assert _label(got) == _label(ref)
        assert got.raw_text == ref.raw_text
        compared += 1
    assert compared >= len(inputs) // 2  # most perturbed inputs still get a verdict
    batched = fast.classify(inputs[:16])
    for guard_input, got in zip(inputs[:16], batched, strict=True):
        (single,) = fast.classify([guard_input])
        assert _label(got) == _label(single)


def test_cached_head_equals_full_computation(tiny_guard_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    guard = LocalQwen3Guard(str(tiny_guard_dir), dtype="float32")
    decoder = _decoder(guard)
    uncached_guard = LocalQwen3Guard(
        str(tiny_guard_dir), dtype="float32", fast_path=FastPathOptions(use_head_cache=False)
    )
    uncached_decoder = _decoder(uncached_guard)
    assert (decoder.use_head_cache, uncached_decoder.use_head_cache) == (True, False)
    # The reference: the checkpoint loaded on its own, run over the whole prompt + draft.
    net = AutoModelForCausalLM.from_pretrained(str(tiny_guard_dir), dtype=torch.float32).eval()
    for stage in Stage:
        chosen = [ex for ex in EXAMPLES if ex.stage is stage][:4]
        prompts = [list(guard.encode(ex.guard_input).input_ids) for ex in chosen]
        draft = decoder.grammar.draft(stage, ())
        with torch.inference_mode():
            cached = decoder.draft_logits(stage, prompts)
            uncached = uncached_decoder.draft_logits(stage, prompts)
            for ids, got, plain in zip(prompts, cached, uncached, strict=True):
                full = torch.tensor([ids + list(draft.ids[:-1])])
                want = net(input_ids=full).logits[0, len(ids) - 1 :].float()
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(plain, want, atol=1e-4, rtol=1e-4)
    assert len(decoder.heads[Stage.PROMPT]) > 50  # the template head really is cached


def test_grammar_comes_from_the_tokenizer(fast: LocalQwen3Guard, tiny_guard_dir: Path) -> None:
    from transformers import AutoTokenizer

    grammar = _decoder(fast).grammar
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_guard_dir))
    for name, values in FIELD_VALUES.items():
        assert sorted(grammar.first[name].values()) == sorted(values)
        for value in values:
            assert tokenizer.decode(list(grammar.values[name][value])) == " " + value
    draft = grammar.draft(Stage.RESPONSE, ("Unsafe", "PII"))
    assert tokenizer.decode(list(draft.ids)) == (
        "Safety: Unsafe\nCategories: PII\nRefusal: No<|im_end|>"
    )


def test_verdict_longer_than_max_new_tokens_is_generates_business(tiny_guard_dir: Path) -> None:
    guard = LocalQwen3Guard(str(tiny_guard_dir), max_new_tokens=2)  # "Safety:" and no level
    with pytest.raises(VerdictParseError):
        guard.classify([EXAMPLES[3].guard_input])


def test_model_leaving_the_grammar_falls_back(tiny_guard_dir: Path) -> None:
    # A grammar whose stop token the model never writes: every draft is rejected at the
    # end, so each input must be decoded by generate() and still get its right verdict.
    never_written = FastPathOptions(stop_ids=frozenset({-1}))
    guard = LocalQwen3Guard(str(tiny_guard_dir), dtype="float32", fast_path=never_written)
    got = guard.classify([ex.guard_input for ex in EXAMPLES[:6]])
    assert [_label(v) for v in got] == [_expected(ex) for ex in EXAMPLES[:6]]
    assert _fast_stats(guard) == (6, 6)


def test_decoding_option(tiny_guard_dir: Path, reference: LocalQwen3Guard) -> None:
    assert reference.decoding == "generate"
    assert reference.fast_decoder is None
    assert "decoding='generate'" in repr(reference)
    with pytest.raises(ConfigurationError, match="decoding"):
        LocalQwen3Guard(str(tiny_guard_dir), decoding="beam")  # type: ignore[arg-type]


def test_forced_passes_run_for_benchmarks(fast: LocalQwen3Guard) -> None:
    import torch

    decoder = _decoder(fast)
    ex = EXAMPLES[0]
    ids = fast.encode(ex.guard_input).input_ids
    decoder.forget()
    with torch.inference_mode():
        (result,) = decoder.decode_batch(
            [(Stage.PROMPT, ids)], force=[("Controversial", "Unethical Acts")]
        )
    assert result is not None
    assert result.text == "Safety: Controversial\nCategories: Unethical Acts"
    assert result.passes == 3


def test_a_recurring_category_is_drafted_after_its_level(fast: LocalQwen3Guard) -> None:
    import torch

    decoder = _decoder(fast)
    ids = fast.encode(EXAMPLES[0].guard_input).input_ids
    decoder.forget()

    def passes(verdict: tuple[str, ...]) -> tuple[str, int]:
        with torch.inference_mode():
            (result,) = decoder.decode_batch([(Stage.RESPONSE, ids)], force=[verdict])
        assert result is not None
        return result.text, result.passes

    unsafe = ("Unsafe", "Violent", "No")
    text = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    assert passes(unsafe) == (text, 3)  # level, then category re-drafted
    assert passes(unsafe) == (text, 2)  # the category seen with Unsafe is drafted at once
    other = ("Unsafe", "Sexual Content or Sexual Acts", "No")
    assert passes(other) == (
        "Safety: Unsafe\nCategories: Sexual Content or Sexual Acts\nRefusal: No",
        3,
    )  # a wrong guess costs what no guess did
    assert passes(("Safe", "None", "No"))[1] == 1
    decoder.forget()
    assert passes(unsafe)[1] == 3


def _groups_cost(lengths: list[int], groups: list[list[int]], overhead: float) -> float:
    return sum(overhead + len(g) * max(lengths[k] for k in g) for g in groups)


def test_length_groups_cover_every_row_once_in_length_order() -> None:
    import itertools

    from guardrail.classifiers.fastpath import length_groups

    rng = random.Random(3)
    for _ in range(300):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 9))]
        overhead = rng.choice([0, 1, 16, 24, 100, 1e9])
        groups = length_groups(lengths, overhead)
        flat = [k for g in groups for k in g]
        assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
        assert all(groups)
        assert [lengths[k] for k in flat] == sorted(lengths)  # runs of the length order
        for a, b in itertools.pairwise(groups):  # equal lengths are never split
            assert lengths[a[-1]] < lengths[b[0]]
        # optimal: no split of the sorted rows is cheaper
        order = sorted(range(len(lengths)), key=lambda k: lengths[k])
        best = min(
            _groups_cost(
                lengths,
                [order[i:j] for i, j in itertools.pairwise((0, *cuts, len(order)))],
                overhead,
            )
            for n in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), n)
        )
        assert _groups_cost(lengths, groups, overhead) == pytest.approx(best)


def test_length_groups_degenerate_cases() -> None:
    from guardrail.classifiers.fastpath import length_groups

    assert length_groups([], 16) == []
    assert length_groups([7], 0) == [[0]]
    assert length_groups([5, 5, 5], 0) == [[0, 1, 2]]  # nothing to gain: one pass
    assert length_groups([30, 10, 20], 0) == [[1], [2], [0]]  # free passes: no padding
    assert length_groups([30, 10, 20], 1e9) == [[1, 2, 0]]  # costly passes: one
    assert length_groups([300, 40, 50, 45], 24) == [[1, 3, 2], [0]]


def test_length_groups_give_the_same_results(fast: LocalQwen3Guard, tiny_guard_dir: Path) -> None:
    import torch

    inputs = [ex.guard_input for ex in EXAMPLES] + perturbed_inputs()
    rng = random.Random(5)
    rng.shuffle(inputs)
    batch = [(g.stage, fast.encode(g).input_ids) for g in inputs[:24]]
    # Forced verdicts re-draft rows of several groups and both stages in merged passes.
    forced = [
        ("Unsafe", "Violent", "Yes")[: 2 if stage is Stage.PROMPT else 3]
        if k % 3
        else ("Safe", "None", "No")[: 2 if stage is Stage.PROMPT else 3]
        for k, (stage, _) in enumerate(batch)
    ]
    runs = {}
    for overhead in (0, 24, 1e9):
        options = FastPathOptions(pass_overhead_tokens=overhead)
        # each run on a fresh guard: it drafts from the same (empty) history
        guard = LocalQwen3Guard(str(tiny_guard_dir), dtype="float32", fast_path=options)
        decoder = _decoder(guard)
        with torch.inference_mode():
            plain = decoder.decode_batch(batch)
            made = decoder.decode_batch(batch, force=forced)
        runs[overhead] = (plain, made, decoder.stats.passes)
    assert runs[0][2] > runs[1e9][2]  # the rows really were split
    for overhead in (0, 24):
        for got, want in zip(runs[overhead][:2], runs[1e9][:2], strict=True):
            for mine, theirs in zip(got, want, strict=True):
                assert (mine is None) == (theirs is None)
                if mine is not None and theirs is not None:
                    assert (mine.text, mine.length, mine.passes) == (
                        theirs.text,
                        theirs.length,
                        theirs.passes,
                    )
                    for name in ("level", "category", "refusal"):
                        a, b = getattr(mine.probs, name), getattr(theirs.probs, name)
                        assert (a is None) == (b is None)
                        if a is not None:
                            assert a == pytest.approx(b, abs=1e-4)
    (_, made, _) = runs[0]
    assert all(r is not None for r in made)
    assert [r.text.split("\n")[0] for r in made if r is not None] == [
        "Safety: " + f[0] for f in forced
    ]


def test_fast_path_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="pass_overhead_tokens"):
        FastPathOptions(pass_overhead_tokens=-1)
    with pytest.raises(ConfigurationError, match="pass_overhead_tokens"):
        FastPathOptions(pass_overhead_tokens=float("nan"))
    with pytest.raises(ConfigurationError, match="stop_ids"):
        FastPathOptions(stop_ids=frozenset())


def test_default_pass_overhead_depends_on_the_device(fast: LocalQwen3Guard) -> None:
    assert _decoder(fast).pass_overhead_tokens == 24  # the CPU default
