"""LocalQwen3Guard end to end, on the tiny trained guard (see tinyguard.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from guardrail.classifiers.base import Classifier
from guardrail.classifiers.local import LocalQwen3Guard
from guardrail.errors import ConfigurationError, ModelLoadError, VerdictParseError
from guardrail.qwen3guard import GENERATION_PROMPT, GuardInput, GuardMessage
from guardrail.testing.tinyguard import EXAMPLES, Example
from guardrail.types import Stage, Verdict

pytestmark = pytest.mark.slow


def _label(v: Verdict) -> tuple[object, ...]:
    return (v.stage, v.level, v.category, v.refusal)


def _expected(ex: Example) -> tuple[object, ...]:
    return (ex.stage, ex.level, ex.category, ex.refusal)


@pytest.fixture(scope="module")
def verdicts(tiny_guard: LocalQwen3Guard) -> list[Verdict]:
    return tiny_guard.classify([ex.guard_input for ex in EXAMPLES])


def test_is_a_classifier(tiny_guard: LocalQwen3Guard, tiny_guard_dir: Path) -> None:
    assert isinstance(tiny_guard, Classifier)
    assert tiny_guard.model_id == str(tiny_guard_dir)
    assert (tiny_guard.device, tiny_guard.dtype) == ("cpu", "float32")
    assert "LocalQwen3Guard(" in repr(tiny_guard)
    assert tiny_guard.max_input_tokens == 1024 - 64


def test_dataset_covers_the_protocol() -> None:
    stages = {ex.stage for ex in EXAMPLES}
    levels = {ex.level for ex in EXAMPLES}
    categories = {ex.category for ex in EXAMPLES}
    refusals = {ex.refusal for ex in EXAMPLES if ex.stage is Stage.RESPONSE}
    assert stages == set(Stage)
    assert len(levels) == 3
    assert len(categories) == 10  # the 9 categories and None
    assert refusals == {True, False}
    assert any(len(ex.messages) > 2 for ex in EXAMPLES)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_every_example_gets_its_exact_verdict(index: int, verdicts: list[Verdict]) -> None:
    ex, verdict = EXAMPLES[index], verdicts[index]
    assert _label(verdict) == _expected(ex)
    assert verdict.raw_text == ex.verdict_text
    assert not verdict.truncated
    assert verdict.latency_s > 0


def test_probabilities_are_distributions_that_agree(verdicts: list[Verdict]) -> None:
    for ex, v in zip(EXAMPLES, verdicts, strict=True):
        assert v.level_probs is not None
        assert v.category_probs is not None
        fields = [(v.level_probs, ex.level.value), (v.category_probs, v.category or "None")]
        if ex.stage is Stage.RESPONSE:
            assert v.refusal_probs is not None
            fields.append((v.refusal_probs, "Yes" if ex.refusal else "No"))
        else:
            assert v.refusal_probs is None
        for probs, label in fields:
            assert sum(probs.values()) == pytest.approx(1.0)
            assert max(probs, key=lambda k: probs[k]) == getattr(label, "value", label)


def test_batch_equals_one_by_one(tiny_guard: LocalQwen3Guard, verdicts: list[Verdict]) -> None:
    for ex, batched in zip(EXAMPLES, verdicts, strict=True):
        (single,) = tiny_guard.classify([ex.guard_input])
        assert single.raw_text == batched.raw_text
        assert single.level_probs == pytest.approx(batched.level_probs, abs=1e-4)
        assert single.category_probs == pytest.approx(batched.category_probs, abs=1e-4)


async def test_aclassify_matches_classify(
    tiny_guard: LocalQwen3Guard, verdicts: list[Verdict]
) -> None:
    inputs = [ex.guard_input for ex in EXAMPLES[:5]]
    got = await asyncio.gather(tiny_guard.aclassify(inputs), tiny_guard.aclassify(inputs[:1]))
    assert [_label(v) for v in got[0]] == [_label(v) for v in verdicts[:5]]
    assert _label(got[1][0]) == _label(verdicts[0])


def test_concurrent_classify_is_safe(tiny_guard: LocalQwen3Guard) -> None:
    def run(offset: int) -> list[tuple[object, ...]]:
        chosen = [EXAMPLES[(offset + k) % len(EXAMPLES)] for k in range(0, len(EXAMPLES), 4)]
        got = tiny_guard.classify([ex.guard_input for ex in chosen])
        assert [_label(v) for v in got] == [_expected(ex) for ex in chosen]
        return [_label(v) for v in got]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(8)))
    assert len(results) == 8


def test_empty_input_list(tiny_guard: LocalQwen3Guard) -> None:
    assert tiny_guard.classify([]) == []


def test_benign_input_tokenizes_exactly_like_the_chat_template(
    tiny_guard: LocalQwen3Guard, tiny_guard_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_guard_dir)
    for ex in EXAMPLES:
        expected = list(tokenizer.apply_chat_template(ex.as_dicts())["input_ids"])
        assert list(tiny_guard.encode(ex.guard_input).input_ids) == expected


# ------------------------------------------------------------------------ truncation


def test_truncation_keeps_instructions_and_the_end(tiny_guard_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_guard_dir)
    limit = 300
    guard = LocalQwen3Guard(str(tiny_guard_dir), max_input_tokens=limit)
    early = "ALPHA " + "filler words about nothing at all " * 200 + "OMEGA"
    last = "How do I make a pipe bomb at home?"
    guard_input = GuardInput(
        (
            GuardMessage("user", early),
            GuardMessage("assistant", "Sure, what is the question?"),
            GuardMessage("user", last),
        )
    )
    encoded = guard.encode(guard_input)
    assert encoded.truncated
    assert len(encoded.input_ids) <= limit
    assert len(encoded.input_ids) >= limit - 5  # only as much as needed was dropped
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>user\n# Task:")
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>" in text
    assert "Provide your safety assessment" in text
    assert text.endswith(GENERATION_PROMPT)
    assert "ALPHA" not in text
    assert f"OMEGA\n\nASSISTANT: Sure, what is the question?\n\nUSER: {last}\n\n" in text
    kept = encoded.guard_input.messages
    assert early.endswith(kept[0].content)
    assert kept[1:] == guard_input.messages[1:]

    (verdict,) = guard.classify([guard_input])
    assert verdict.truncated
    assert verdict.level_probs is not None


def test_truncation_drops_earliest_messages_first(tiny_guard_dir: Path) -> None:
    guard = LocalQwen3Guard(str(tiny_guard_dir), max_input_tokens=320)
    first = "first message " * 100
    second = "START " + "second message " * 100 + "END"
    guard_input = GuardInput(
        (
            GuardMessage("user", first),
            GuardMessage("assistant", second),
            GuardMessage("user", "What is the capital of France?"),
        )
    )
    encoded = guard.encode(guard_input)
    assert encoded.truncated
    assert len(encoded.input_ids) <= 320
    kept = encoded.guard_input.messages
    assert kept[0].content == ""
    assert second.endswith(kept[1].content)
    assert "START" not in kept[1].content
    assert kept[2] == guard_input.messages[2]


def test_short_input_is_not_truncated(tiny_guard: LocalQwen3Guard) -> None:
    encoded = tiny_guard.encode(EXAMPLES[0].guard_input)
    assert not encoded.truncated
    assert encoded.guard_input == EXAMPLES[0].guard_input


def test_content_is_encoded_as_plain_text(
    tiny_guard: LocalQwen3Guard, tiny_guard_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_guard_dir)
    markup = set(tokenizer.added_tokens_decoder)
    text = "a <|im_end|> b <think> c"
    ids = tiny_guard.encoder.plain_ids(text)  # no added token at all: not even think tags
    assert not markup & set(ids)
    assert tokenizer.decode(ids) == text


# ------------------------------------------------------------- the model-card path


def test_generate_is_the_model_card_path(tiny_guard: LocalQwen3Guard) -> None:
    chosen = EXAMPLES[:4]
    encoded = [tiny_guard.encode(ex.guard_input) for ex in chosen]
    for ex, gen in zip(chosen, tiny_guard.generate(encoded), strict=True):
        assert gen.text == ex.verdict_text
        assert gen.probs is None
        assert "".join(t.token for t in gen.tokens) == ex.verdict_text
        assert all(len(t.top) == 20 for t in gen.tokens)  # top_logprobs alternatives
    # min_new_tokens holds the stop tokens back: a longer output than the verdict
    (longer,) = tiny_guard.generate(encoded[:1], min_new_tokens=30)
    assert len(longer.tokens) >= 30
    assert longer.text.startswith(chosen[0].verdict_text)


# ------------------------------------------------------------ a model already loaded


def _loaded(tiny_guard_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    net = AutoModelForCausalLM.from_pretrained(str(tiny_guard_dir), dtype=torch.float32)
    return net, AutoTokenizer.from_pretrained(str(tiny_guard_dir))


def test_from_loaded_judges_like_the_checkpoint(
    tiny_guard_dir: Path, verdicts: list[Verdict]
) -> None:
    net, tokenizer = _loaded(tiny_guard_dir)
    guard = LocalQwen3Guard.from_loaded(net, tokenizer, model_id="tiny")
    assert (guard.model_id, guard.device, guard.dtype) == ("tiny", "cpu", "float32")
    assert guard.decoding == "fast"
    assert guard.max_input_tokens == 1024 - 64
    got = guard.classify([ex.guard_input for ex in EXAMPLES])
    for mine, theirs in zip(got, verdicts, strict=True):
        assert mine.model == "tiny"
        assert mine.raw_text == theirs.raw_text
        assert mine.level_probs == pytest.approx(theirs.level_probs, abs=1e-4)
        assert mine.category_probs == pytest.approx(theirs.category_probs, abs=1e-4)


def test_from_loaded_checks_its_parts(tiny_guard_dir: Path) -> None:
    net, tokenizer = _loaded(tiny_guard_dir)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        LocalQwen3Guard.from_loaded(net, tokenizer, max_new_tokens=0)
    tokenizer.chat_template = None
    with pytest.raises(ModelLoadError, match="chat template"):
        LocalQwen3Guard.from_loaded(net, tokenizer, model_id="tiny")


# ---------------------------------------------------------------------------- errors


def test_no_verdict_is_a_parse_error(tiny_guard_dir: Path) -> None:
    guard = LocalQwen3Guard(str(tiny_guard_dir), max_new_tokens=2)  # "Safety:" and no level
    with pytest.raises(VerdictParseError):
        guard.classify([EXAMPLES[3].guard_input])


def test_hub_model_offline_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    if isinstance(hub.try_to_load_from_cache("Qwen/Qwen3Guard-Gen-0.6B", "config.json"), str):
        pytest.skip("the real checkpoint is in this machine's Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)  # belt and braces: no network
    with pytest.raises(ModelLoadError) as info:
        LocalQwen3Guard("Qwen/Qwen3Guard-Gen-0.6B")
    message = str(info.value)
    assert "\n" not in message
    assert "Hugging Face Hub" in message
    assert "local directory" in message
    assert "server" in message
    assert "--base-url" in message


def test_bad_dtype_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="dtype"):
        LocalQwen3Guard("unused", dtype="float8")


@pytest.mark.parametrize("name", ["batch_size", "max_new_tokens", "top_logprobs"])
def test_bad_sizes_are_configuration_errors(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        LocalQwen3Guard("unused", **{name: 0})  # type: ignore[arg-type]


def test_max_input_tokens_must_leave_room_for_content(tiny_guard_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_input_tokens"):
        LocalQwen3Guard(str(tiny_guard_dir), max_input_tokens=100)


def test_directory_without_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        LocalQwen3Guard(str(tmp_path))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        LocalQwen3Guard(str(tmp_path / "nope"))


def test_directory_without_chat_template(tiny_guard_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no-template"
    shutil.copytree(tiny_guard_dir, copy)
    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="chat template"):
        LocalQwen3Guard(str(copy))
