"""Local reward scorers against tiny models saved in each family's original layout.

Reference scores are computed here as each family's own code computes them: the
model card's call (tokenizer and model exactly as the card writes them) and, where it
differs, the training script's encoding, from literally written input texts,
independently of the scorers' rendering, padding and pooling.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import tinyreward
import torch
from transformers import AutoTokenizer

from guardrail.errors import ConfigurationError, InputError, ModelLoadError
from guardrail.reward import (
    SCORER_KINDS,
    PairScorer,
    RewardScore,
    RewardScorer,
    SafeRLHFScorer,
    SequenceClassificationScorer,
    build_scorer,
)
from guardrail.reward.base import normalise_pair
from guardrail.reward.saferlhf import format_conversation

pytestmark = pytest.mark.slow  # builds and runs tiny models

USER = [{"role": "user", "content": "How do I bake bread?"}]
ANSWERS = [
    "Mix flour, water, salt and yeast; knead; let it rise; bake at 230 C.",
    "No.",
    "Bread is baked in an oven after the dough has risen for a couple of hours.",
]
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny-reward")
    return {
        "root": root,
        "seq": tinyreward.build_seqcls(root / "seq"),
        # ca-reward-3b-ja's layout: the template writes no BOS, the tokenizer adds one
        "seq_tokbos": tinyreward.build_seqcls(root / "seq-tokbos", template_bos=False),
        "seq_eos": tinyreward.build_seqcls(root / "seq-eos", pad_is_eos=True),
        "reward": tinyreward.build_saferlhf(root / "beaver-tiny-reward"),
        # bias -17.7 puts the zero between the three answers' raw costs (~17.0 to ~18.4)
        "cost": tinyreward.build_saferlhf(
            root / "beaver-tiny-cost", score_type="cost", bias_value=-17.7, seed=3
        ),
        "pair": tinyreward.build_pair(root / "pair"),
    }


@pytest.fixture(scope="module")
def seq(models: dict[str, Any]) -> SequenceClassificationScorer:
    return SequenceClassificationScorer(str(models["root"] / "seq"))


def direct_last_token(net: Any, ids: list[int]) -> float:
    """The head applied at the last token of an unpadded input: no pooling heuristics."""
    with torch.inference_mode():
        hidden = net.model(torch.tensor([ids])).last_hidden_state
        return float(net.score(hidden)[0, -1, 0])


def chatml(tok: Any, turns: list[tuple[str, str]]) -> list[int]:
    text = "<s>" + "".join(f"<|im_start|>{r}\n{c}<|im_end|>" for r, c in turns)
    ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
    return ids


# -------------------------------------------------------------- sequence classification


def test_seqcls_matches_a_direct_forward_pass(
    models: dict[str, Any], seq: SequenceClassificationScorer
) -> None:
    tok = AutoTokenizer.from_pretrained(models["root"] / "seq")
    ids = chatml(tok, [("user", USER[0]["content"]), ("assistant", ANSWERS[0])])
    encoded = seq.encode(USER, ANSWERS[0])
    assert list(encoded.input_ids) == ids
    assert ids.count(tok.bos_token_id) == 1  # the template's BOS, not doubled
    assert ids[-1] == tok.eos_token_id
    [result] = seq.score([(USER, ANSWERS[0])])
    assert result.score == pytest.approx(direct_last_token(models["seq"], ids), abs=1e-5)
    assert isinstance(result.score, float)
    assert (result.kind, result.unsafe, result.normalized, result.truncated) == (
        "reward",
        None,
        None,
        False,
    )
    assert result.model == str(models["root"] / "seq")
    assert isinstance(seq, RewardScorer)


def test_seqcls_multi_turn_with_system(
    models: dict[str, Any], seq: SequenceClassificationScorer
) -> None:
    tok = AutoTokenizer.from_pretrained(models["root"] / "seq")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>greet</think>Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Bread?"}]},
    ]
    ids = chatml(
        tok,
        [
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Bread?"),
            ("assistant", "Flour."),
        ],
    )
    assert list(seq.encode(messages, "<think>hmm</think>Flour.").input_ids) == ids
    [result] = seq.score([(messages, "Flour.")])
    assert result.score == pytest.approx(direct_last_token(models["seq"], ids), abs=1e-5)


def test_batched_equals_one_by_one_and_left_equals_right(models: dict[str, Any]) -> None:
    path = str(models["root"] / "seq")
    right = SequenceClassificationScorer(path, batch_size=8)
    left = SequenceClassificationScorer(path, batch_size=8, padding_side="left")
    single = SequenceClassificationScorer(path, batch_size=1)
    pairs = [(USER, answer) for answer in ANSWERS]
    expected = [s.score for s in single.score(pairs)]
    assert len(set(expected)) == 3
    assert [s.score for s in right.score(pairs)] == pytest.approx(expected, abs=1e-5)
    assert [s.score for s in left.score(pairs)] == pytest.approx(expected, abs=1e-5)


def test_pad_equal_to_eos_still_pools_the_eos(models: dict[str, Any]) -> None:
    path = models["root"] / "seq-eos"
    net = models["seq_eos"]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id == tok.eos_token_id == net.config.pad_token_id
    ids = chatml(tok, [("user", USER[0]["content"]), ("assistant", ANSWERS[1])])
    expected = direct_last_token(net, ids)
    with torch.inference_mode():  # the pitfall: transformers' own pooling skips the EOS
        naive = float(net(torch.tensor([ids])).logits[0, 0])
    assert naive != pytest.approx(expected, abs=1e-4)
    scorer = SequenceClassificationScorer(str(path), padding_side="left")
    scores = scorer.score([(USER, a) for a in ANSWERS])
    assert scores[1].score == pytest.approx(expected, abs=1e-5)


def test_truncation_keeps_the_end_of_the_answer(models: dict[str, Any]) -> None:
    path = str(models["root"] / "seq")
    scorer = SequenceClassificationScorer(path, max_length=60)
    tok = AutoTokenizer.from_pretrained(path)
    full = chatml(tok, [("user", USER[0]["content"]), ("assistant", ANSWERS[2])])
    assert len(full) > 60
    encoded = scorer.encode(USER, ANSWERS[2])
    assert encoded.truncated
    assert list(encoded.input_ids) == full[-60:]
    assert str(tok.decode(list(encoded.input_ids))).endswith("couple of hours.<|im_end|>")
    short, long = scorer.score([(USER, ANSWERS[1]), (USER, ANSWERS[2])])
    assert long.truncated
    assert not short.truncated
    assert long.score == pytest.approx(direct_last_token(models["seq"], full[-60:]), abs=1e-5)


# (template writes BOS, tokenizer adds BOS, the model card whose call is the reference)
BOS_LAYOUTS = [
    (False, True, "ca-reward-3b-ja: tokenizer(text)"),
    (True, True, "Skywork-Reward-V2-Llama: apply_chat_template(tokenize=True)"),
    (True, False, "tokenizer(text)"),
    (False, False, "tokenizer(text)"),
]


@pytest.mark.parametrize(
    ("template_bos", "tokenizer_bos", "card"), BOS_LAYOUTS, ids=[c for *_, c in BOS_LAYOUTS]
)
def test_seqcls_scores_as_the_card_with_one_bos_at_most(
    template_bos: bool, tokenizer_bos: bool, card: str, tmp_path: Path
) -> None:
    net = tinyreward.build_seqcls(
        tmp_path / "m", template_bos=template_bos, tokenizer_bos=tokenizer_bos
    )
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    chats = [[*USER, {"role": "assistant", "content": a}] for a in ANSWERS]

    def card_inputs(batch: list[list[dict[str, str]]]) -> Any:
        if card.startswith("Skywork"):
            return tok.apply_chat_template(
                batch, tokenize=True, padding=True, return_tensors="pt", return_dict=True
            )
        texts = [tok.apply_chat_template(chat, tokenize=False) for chat in batch]
        return tok(texts, padding=True, return_tensors="pt")

    singles = [card_inputs([chat]) for chat in chats]
    with torch.inference_mode():
        expected = [float(net(**inputs).logits[0, 0]) for inputs in singles]
        batched = [float(v) for v in net(**card_inputs(chats)).logits[:, 0]]
    assert batched == pytest.approx(expected, abs=1e-4)  # the reference pads as well
    for inputs in singles:
        ids = inputs["input_ids"][0].tolist()
        assert ids.count(tok.bos_token_id) == int(template_bos or tokenizer_bos)
    for padding_side in ("right", "left"):
        scorer = SequenceClassificationScorer(str(tmp_path / "m"), padding_side=padding_side)
        assert (
            list(scorer.encode(USER, ANSWERS[0]).input_ids) == singles[0]["input_ids"][0].tolist()
        )
        assert [r.score for r in scorer.score([(USER, a) for a in ANSWERS])] == pytest.approx(
            expected, abs=1e-4
        )
    one_by_one = SequenceClassificationScorer(str(tmp_path / "m"), batch_size=1)
    assert [r.score for r in one_by_one.score([(USER, a) for a in ANSWERS])] == pytest.approx(
        expected, abs=1e-4
    )


def test_seqcls_right_truncation_is_the_cards(models: dict[str, Any]) -> None:
    path = models["root"] / "seq-tokbos"
    tok = AutoTokenizer.from_pretrained(path)
    chat = [*USER, {"role": "assistant", "content": ANSWERS[2]}]
    text = tok.apply_chat_template(chat, tokenize=False)
    inputs = tok(text, truncation=True, max_length=60, return_tensors="pt")  # the card's cut
    assert len(tok(text)["input_ids"]) > 60
    with torch.inference_mode():
        expected = float(models["seq_tokbos"](**inputs).logits[0, 0])
    scorer = SequenceClassificationScorer(str(path), max_length=60, truncation_side="right")
    encoded = scorer.encode(USER, ANSWERS[2])
    assert encoded.truncated
    assert list(encoded.input_ids) == inputs["input_ids"][0].tolist()
    short, long = scorer.score([(USER, ANSWERS[1]), (USER, ANSWERS[2])])
    assert (short.truncated, long.truncated) == (False, True)
    assert long.score == pytest.approx(expected, abs=1e-4)
    keep_end = SequenceClassificationScorer(str(path), max_length=60)  # default: left
    assert keep_end.truncation_side == "left"
    assert keep_end.score([(USER, ANSWERS[2])])[0].score != pytest.approx(expected, abs=1e-3)


def test_seqcls_refuses_a_checkpoint_without_its_head(models: dict[str, Any]) -> None:
    # a safe-rlhf checkpoint (head saved as score_head) configured as seqcls by mistake
    with pytest.raises(ModelLoadError, match=r"score\.weight.*random.*safe-rlhf"):
        SequenceClassificationScorer(str(models["root"] / "beaver-tiny-reward"))


def test_normalisation_and_goodness(models: dict[str, Any]) -> None:
    scorer = SequenceClassificationScorer(str(models["root"] / "seq"), mean=0.5, std=2.0)
    [result] = scorer.score([(USER, ANSWERS[0])])
    assert result.normalized == pytest.approx((result.score - 0.5) / 2.0)
    assert result.goodness == result.normalized


async def test_ascore_equals_score(seq: SequenceClassificationScorer) -> None:
    pairs = [(USER, answer) for answer in ANSWERS]
    got = await seq.ascore(pairs)
    assert [s.score for s in got] == pytest.approx([s.score for s in seq.score(pairs)], abs=1e-6)


def test_bad_conversations_are_input_errors(seq: SequenceClassificationScorer) -> None:
    with pytest.raises(InputError, match="end with the user"):
        seq.score([([*USER, {"role": "assistant", "content": "x"}], "y")])
    with pytest.raises(InputError, match="user message"):
        seq.score([([{"role": "system", "content": "x"}], "y")])
    with pytest.raises(InputError, match="role"):
        seq.score([([{"role": "robot", "content": "x"}], "y")])


def test_directory_without_chat_template(models: dict[str, Any], tmp_path: Path) -> None:
    config = json.loads((models["root"] / "seq" / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    import shutil

    shutil.copytree(models["root"] / "seq", tmp_path / "m")
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="chat template"):
        SequenceClassificationScorer(str(tmp_path / "m"))


def test_missing_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        SequenceClassificationScorer(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError) as info:
        SequenceClassificationScorer(str(tmp_path))
    assert "\n" not in str(info.value)
    assert "directory" in str(info.value)


# ------------------------------------------------------------------------ safe-RLHF


def beaver_ids(models: dict[str, Any], name: str, text: str) -> list[int]:
    tok = AutoTokenizer.from_pretrained(models["root"] / name)
    ids: list[int] = tok(text, add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id
    return ids


def training_ids(path: Path, prompt: str, answer: str, max_length: int = 512) -> list[int]:
    """safe-rlhf's preference data: ``tokenize(prompt + answer + eos_token)``, cut on the right."""
    tok = AutoTokenizer.from_pretrained(path)
    text = f"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{answer}{tok.eos_token}"
    ids: list[int] = tok(text, add_special_tokens=True, truncation=True, max_length=max_length)[
        "input_ids"
    ]
    return ids


def test_saferlhf_default_is_the_training_encoding_with_the_head_bias(
    models: dict[str, Any],
) -> None:
    name = "beaver-tiny-reward"
    scorer = SafeRLHFScorer(str(models["root"] / name))
    assert (scorer.kind, scorer.append_eos, scorer.truncation_side) == ("reward", True, "left")
    ids = training_ids(models["root"] / name, USER[0]["content"], ANSWERS[0])
    assert list(scorer.encode(USER, ANSWERS[0]).input_ids) == ids
    parts = models["reward"]
    expected = parts.end_score(ids)
    [result] = scorer.score([(USER, ANSWERS[0])])
    assert result.score == pytest.approx(expected, abs=1e-4)
    # the plain class drops the head bias: the scorer adds it back
    with torch.inference_mode():
        hidden = parts.base(torch.tensor([ids])).last_hidden_state[:, -1]
        no_bias = float(hidden @ parts.head.weight.T)
    assert result.score - no_bias == pytest.approx(0.75, abs=1e-4)
    assert (result.kind, result.unsafe) == ("reward", None)


def test_saferlhf_without_eos_is_the_model_card_call(models: dict[str, Any]) -> None:
    path = models["root"] / "beaver-tiny-reward"
    tok = AutoTokenizer.from_pretrained(path)
    parts = models["reward"]
    expected = []
    for answer in ANSWERS:  # the card: tokenizer(input, return_tensors='pt'), no EOS
        text = f"BEGINNING OF CONVERSATION: USER: {USER[0]['content']} ASSISTANT:{answer}"
        expected.append(parts.end_score(tok(text, return_tensors="pt")["input_ids"][0].tolist()))
    pairs = [(USER, a) for a in ANSWERS]
    for padding_side in ("right", "left"):
        scorer = SafeRLHFScorer(str(path), append_eos=False, padding_side=padding_side)
        assert [r.score for r in scorer.score(pairs)] == pytest.approx(expected, abs=1e-4)
    single = SafeRLHFScorer(str(path), append_eos=False, batch_size=1)
    assert [r.score for r in single.score(pairs)] == pytest.approx(expected, abs=1e-4)
    with_eos = SafeRLHFScorer(str(path)).score(pairs)
    assert all(abs(a.score - b) > 1e-2 for a, b in zip(with_eos, expected, strict=True))


def test_saferlhf_right_truncation_is_the_trainings(models: dict[str, Any]) -> None:
    path = models["root"] / "beaver-tiny-reward"
    full = training_ids(path, USER[0]["content"], ANSWERS[2])
    assert len(full) > 40
    ids = training_ids(path, USER[0]["content"], ANSWERS[2], max_length=40)
    scorer = SafeRLHFScorer(str(path), max_length=40, truncation_side="right")
    encoded = scorer.encode(USER, ANSWERS[2])
    assert (list(encoded.input_ids), encoded.truncated) == (ids, True)
    [result] = scorer.score([(USER, ANSWERS[2])])
    assert result.truncated
    assert result.score == pytest.approx(models["reward"].end_score(ids), abs=1e-4)
    keep_end = SafeRLHFScorer(str(path), max_length=40)
    assert list(keep_end.encode(USER, ANSWERS[2]).input_ids) == full[-40:]
    assert keep_end.score([(USER, ANSWERS[2])])[0].score == pytest.approx(
        models["reward"].end_score(full[-40:]), abs=1e-4
    )


def test_saferlhf_multi_turn_format(models: dict[str, Any]) -> None:
    scorer = SafeRLHFScorer(str(models["root"] / "beaver-tiny-reward"), append_eos=False)
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    text = "BEGINNING OF CONVERSATION: USER: q1 ASSISTANT:a1</s>USER: q2 ASSISTANT:a2"
    assert format_conversation(normalise_pair(messages, "a2"), "</s>", append_eos=False) == text
    ids = beaver_ids(models, "beaver-tiny-reward", text)
    [result] = scorer.score([(messages, "a2")])
    assert result.score == pytest.approx(models["reward"].end_score(ids), abs=1e-4)


def test_saferlhf_cost_sign_and_batching(models: dict[str, Any]) -> None:
    scorer = SafeRLHFScorer(str(models["root"] / "beaver-tiny-cost"), batch_size=3)
    assert scorer.kind == "cost"
    scores = scorer.score([(USER, a) for a in ANSWERS])
    for answer, result in zip(ANSWERS, scores, strict=True):
        text = f"BEGINNING OF CONVERSATION: USER: {USER[0]['content']} ASSISTANT:{answer}</s>"
        ids = beaver_ids(models, "beaver-tiny-cost", text)
        assert result.score == pytest.approx(models["cost"].end_score(ids), abs=1e-4)
        assert result.unsafe is (result.score > 0)
        assert result.goodness == -result.score
    assert {r.unsafe for r in scores} == {True, False}  # the seed gives both signs
    left = SafeRLHFScorer(str(models["root"] / "beaver-tiny-cost"), padding_side="left")
    assert [r.score for r in left.score([(USER, a) for a in ANSWERS])] == pytest.approx(
        [r.score for r in scores], abs=1e-4
    )


def test_saferlhf_config_normalisation(tmp_path: Path) -> None:
    parts = tinyreward.build_saferlhf(
        tmp_path / "affine-reward",
        config_extra={"do_normalize": True, "mean": 0.5, "var": 4.0},
    )
    scorer = SafeRLHFScorer(str(tmp_path / "affine-reward"))
    text = f"BEGINNING OF CONVERSATION: USER: {USER[0]['content']} ASSISTANT:{ANSWERS[1]}</s>"
    tok = AutoTokenizer.from_pretrained(tmp_path / "affine-reward")
    raw = parts.end_score(tok(text)["input_ids"])
    [result] = scorer.score([(USER, ANSWERS[1])])
    assert result.score == pytest.approx((raw - 0.5) / 2.0, abs=1e-4)

    # a cost model: scale by the normaliser buffers stored in the checkpoint
    parts = tinyreward.build_saferlhf(
        tmp_path / "scaled-cost",
        score_type="cost",
        bias=False,
        config_extra={"do_normalize": True},
        normalizer=(3.0, 0.25),
    )
    scorer = SafeRLHFScorer(str(tmp_path / "scaled-cost"))
    raw = parts.end_score(tok(text)["input_ids"])
    [result] = scorer.score([(USER, ANSWERS[1])])
    assert result.score == pytest.approx(raw / 0.5, abs=1e-4)


def test_saferlhf_missing_head_is_refused(tmp_path: Path) -> None:
    tinyreward.build_saferlhf(tmp_path / "broken-reward", with_head=False)
    with pytest.raises(ModelLoadError, match=r"score\.weight.*random.*score_head\.weight"):
        SafeRLHFScorer(str(tmp_path / "broken-reward"))


def test_saferlhf_kind_detection(tmp_path: Path) -> None:
    tinyreward.build_saferlhf(tmp_path / "scorer", config_extra={"score_type": None})
    with pytest.raises(ConfigurationError, match="kind="):
        SafeRLHFScorer(str(tmp_path / "scorer"))
    assert SafeRLHFScorer(str(tmp_path / "scorer"), kind="cost").kind == "cost"
    with pytest.raises(ConfigurationError, match="kind"):
        SafeRLHFScorer(str(tmp_path / "scorer"), kind="helpful")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pair


def test_pair_scores_as_the_card_and_the_training_encoding(models: dict[str, Any]) -> None:
    path = models["root"] / "pair"
    net = models["pair"]
    tok = AutoTokenizer.from_pretrained(path)
    prompt = USER[0]["content"]
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": prompt},
    ]
    card, training, segments = [], [], []
    with torch.inference_mode():
        for answer in ANSWERS:
            tokens = tok(  # the model card's call
                prompt,
                answer,
                truncation=True,
                max_length=512,
                return_token_type_ids=False,
                return_tensors="pt",
                return_attention_mask=True,
            )
            card.append(net(**tokens)[0].item())
            # the training script: encode_plus (tok() since transformers 5) of one sequence,
            # padded to max_length; the trainer passes input ids and attention mask only
            encoded = tok(
                prompt + tok.sep_token + answer,
                padding="max_length",
                truncation=True,
                max_length=160,
                return_tensors="pt",
            )
            assert encoded["input_ids"][0][encoded["attention_mask"][0] == 1].tolist() == (
                tokens["input_ids"][0].tolist()
            )
            training.append(
                float(net(encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits)
            )
            segments.append(float(net(**tok(prompt, answer, return_tensors="pt")).logits))
        batch = tok(
            [prompt] * 3,
            ANSWERS,
            padding=True,
            truncation=True,
            max_length=512,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        padded = [float(v) for v in net(**batch).logits[:, 0]]
    assert training == pytest.approx(card, abs=1e-4)
    assert padded == pytest.approx(card, abs=1e-4)
    # the tiny model tells segment ids apart: a scorer passing them would fail below
    assert all(abs(a - b) > 0.1 for a, b in zip(segments, card, strict=True))

    scorer = PairScorer(str(path), multiplier=2.0)
    results = scorer.score([(messages, a) for a in ANSWERS])
    assert [r.score for r in results] == pytest.approx([2.0 * c for c in card], abs=1e-4)
    assert not any(r.truncated for r in results)
    assert (
        list(scorer.encode(messages, ANSWERS[0]).input_ids) == tok(prompt, ANSWERS[0])["input_ids"]
    )
    one_by_one = PairScorer(str(path), batch_size=1)
    assert [r.score for r in one_by_one.score([(messages, a) for a in ANSWERS])] == pytest.approx(
        card, abs=1e-4
    )


def test_pair_truncation_is_the_cards(models: dict[str, Any]) -> None:
    path = models["root"] / "pair"
    tok = AutoTokenizer.from_pretrained(path)
    tokens = tok(
        USER[0]["content"],
        ANSWERS[2],
        truncation=True,
        max_length=16,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    with torch.inference_mode():
        expected = models["pair"](**tokens)[0].item()
    scorer = PairScorer(str(path), max_length=16)
    [result] = scorer.score([(USER, ANSWERS[2])])
    assert result.truncated
    assert result.score == pytest.approx(expected, abs=1e-4)
    assert list(scorer.encode(USER, ANSWERS[2]).input_ids) == tokens["input_ids"][0].tolist()


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_pair_remote_code_layout_is_refused_with_the_fix(
    trust_remote_code: bool, tmp_path: Path
) -> None:
    tinyreward.build_pair(tmp_path / "alpha-era", layout="remote-code")
    with pytest.raises(ModelLoadError) as info:
        PairScorer(str(tmp_path / "alpha-era"), trust_remote_code=trust_remote_code, revision=SHA)
    message = str(info.value)
    assert "remote-code" in message
    assert "['RewardModel']" in message
    assert "alpha=1.0" in message
    assert "revision=" in message
    assert "BertForSequenceClassification" in message
    assert "multiplier=" in message


def test_pair_checkpoint_without_its_head_is_refused(tmp_path: Path) -> None:
    tinyreward.build_pair(tmp_path / "headless", layout="headless")
    with pytest.raises(ModelLoadError, match=r"classifier\.(bias|weight).*random.*revision="):
        PairScorer(str(tmp_path / "headless"))


@pytest.mark.parametrize("multiplier", [0, 0.0, math.nan, math.inf, True, "2"])
def test_pair_multiplier_must_be_a_finite_non_zero_number(multiplier: Any) -> None:
    with pytest.raises(ConfigurationError, match="multiplier"):
        PairScorer("never-loaded", multiplier=multiplier)


# -------------------------------------------------------------- factory and options


def test_build_scorer_explicit_kinds(models: dict[str, Any]) -> None:
    assert set(SCORER_KINDS) == {"seqcls", "safe-rlhf", "pair", "remote"}
    scorer = build_scorer("pair", str(models["root"] / "pair"), multiplier=3.0)
    assert isinstance(scorer, PairScorer)
    with pytest.raises(ConfigurationError) as info:
        build_scorer("armorm", "x")
    assert all(kind in str(info.value) for kind in SCORER_KINDS)
    with pytest.raises(ConfigurationError, match="no_such_option"):
        build_scorer("seqcls", "x", no_such_option=1)
    with pytest.raises(ConfigurationError, match="base_url"):
        build_scorer("remote", "served-model")


@pytest.mark.parametrize("cls", [SequenceClassificationScorer, SafeRLHFScorer, PairScorer])
def test_remote_code_needs_a_pinned_sha(cls: Any, tmp_path: Path) -> None:
    for revision in (None, "main", "v1.0", SHA[:12]):
        with pytest.raises(ConfigurationError, match="commit sha"):
            cls(str(tmp_path / "never-loaded"), trust_remote_code=True, revision=revision)
    # a pinned sha passes the check (and then fails on the missing directory)
    with pytest.raises(ModelLoadError):
        cls(str(tmp_path / "never-loaded"), trust_remote_code=True, revision=SHA)


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="together"):
        SequenceClassificationScorer("unused", mean=1.0)
    with pytest.raises(ConfigurationError, match="std"):
        SequenceClassificationScorer("unused", mean=1.0, std=0.0)
    with pytest.raises(ConfigurationError, match="dtype"):
        SequenceClassificationScorer("unused", dtype="float8")
    with pytest.raises(ConfigurationError, match="batch_size"):
        SequenceClassificationScorer("unused", batch_size=0)
    with pytest.raises(ConfigurationError, match="truncation_side"):
        SequenceClassificationScorer("unused", truncation_side="middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="append_eos"):
        SafeRLHFScorer("unused", append_eos="no")  # type: ignore[arg-type]


def test_score_types_are_plain_and_frozen() -> None:
    score = RewardScore(score=1.0, model="m", kind="cost", unsafe=True)
    assert score.goodness == -1.0
    with pytest.raises(ValueError, match="frozen"):
        score.score = 2.0
    assert math.isfinite(score.latency_s)


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, guardrail.reward, guardrail.reward.base, guardrail.classifiers.loading\n"
        "print(','.join(m for m in ('torch', 'transformers', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("", "httpx")  # httpx may come with guardrail itself
    assert "torch" not in out.stdout


def test_scores_in_a_running_loop_do_not_block(seq: SequenceClassificationScorer) -> None:
    async def main() -> list[RewardScore]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        try:
            return await seq.ascore([(USER, a) for a in ANSWERS * 4])
        finally:
            task.cancel()
            assert ticks > 0

    assert len(asyncio.run(main())) == 12
