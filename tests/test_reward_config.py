"""A policy's reward model entries: family settings validated per kind, and handed to scorers.

The pure half checks the schema (defaults, a located error for a setting on a kind
that does not read it); the slow half loads each tiny family through
:func:`guardrail.parts.build_scorer` and checks that every setting reaches the scorer
and changes the score as the family's own code would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardrail.errors import PolicyError
from guardrail.policy import load_policy_text
from guardrail.policy.schema import RewardModelConfig

HEAD = """\
version: 1
name: reward-settings
reward:
  models:
"""

# (id, entry lines under "- ", line, column, field, message)
BAD_ENTRIES: list[tuple[str, str, int, int, str, str]] = [
    (
        "multiplier on seqcls",
        "id: rm\n      kind: seqcls\n      model: /m\n      multiplier: 2.0\n",
        8,
        19,
        "reward.models[0].multiplier",
        "only used with kind 'pair' (this model's kind is 'seqcls')",
    ),
    (
        "append_eos on pair",
        "id: rm\n      kind: pair\n      model: /m\n      append_eos: false\n",
        8,
        19,
        "reward.models[0].append_eos",
        "only used with kind 'safe-rlhf' (this model's kind is 'pair')",
    ),
    (
        "truncation_side on pair",
        "id: rm\n      kind: pair\n      model: /m\n      truncation_side: right\n",
        8,
        24,
        "reward.models[0].truncation_side",
        "only used with kind 'seqcls' or 'safe-rlhf' (this model's kind is 'pair')",
    ),
    (
        "truncation_side on remote",
        "id: rm\n      kind: remote\n      model: m\n      base_url: http://h:8000\n"
        "      truncation_side: left\n",
        9,
        24,
        "reward.models[0].truncation_side",
        "only used with kind 'seqcls' or 'safe-rlhf' (this model's kind is 'remote')",
    ),
    (
        "multiplier zero",
        "id: rm\n      kind: pair\n      model: /m\n      multiplier: 0\n",
        8,
        19,
        "reward.models[0].multiplier",
        "must not be 0 (every answer would score 0)",
    ),
]


def policy_text(entry: str) -> str:
    return HEAD + "    - " + entry


@pytest.mark.parametrize(
    ("entry", "line", "column", "field", "message"),
    [case[1:] for case in BAD_ENTRIES],
    ids=[case[0] for case in BAD_ENTRIES],
)
def test_a_family_setting_on_another_kind_is_a_located_error(
    entry: str, line: int, column: int, field: str, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(policy_text(entry), "p.yaml")
    err = info.value
    assert (err.line, err.column, err.field, err.reason) == (line, column, field, message)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("{id: rm, kind: pair, model: /m, multiplier: .inf}", "multiplier"),
        ("{id: rm, kind: pair, model: /m, multiplier: '2'}", "multiplier"),
        ("{id: rm, kind: safe-rlhf, model: /m, append_eos: 'no'}", "append_eos"),
        ("{id: rm, kind: seqcls, model: /m, truncation_side: middle}", "truncation_side"),
    ],
)
def test_bad_values_are_refused(entry: str, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(HEAD + f"    - {entry}\n", "p.yaml")
    assert info.value.field == f"reward.models[0].{field}"


def test_defaults_and_valid_settings() -> None:
    plain = RewardModelConfig.model_validate({"id": "rm", "kind": "seqcls", "model": "/m"})
    assert (plain.multiplier, plain.append_eos, plain.truncation_side) == (1.0, True, "left")
    entries = [
        "{id: a, kind: pair, model: /a, multiplier: -2}",
        "{id: b, kind: safe-rlhf, model: /b, append_eos: false, truncation_side: right}",
        "{id: c, kind: seqcls, model: /c, truncation_side: right}",
    ]
    policy = load_policy_text(HEAD + "".join(f"    - {e}\n" for e in entries))
    assert policy.reward is not None
    a, b, c = policy.reward.models
    assert a.multiplier == -2.0
    assert (b.append_eos, b.truncation_side) == (False, "right")
    assert c.truncation_side == "right"
    # a policy copied with an update keeps only what was given: no setting leaks to a kind
    assert policy.model_copy(update={"name": "copy"}).reward == policy.reward


# ------------------------------------------------------------ settings reach the scorer


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    import tinyreward

    root = tmp_path_factory.mktemp("reward-settings")
    tinyreward.build_seqcls(root / "seqcls", template_bos=False)
    tinyreward.build_saferlhf(root / "beaver-reward")
    tinyreward.build_pair(root / "pair")
    return {"seqcls": root / "seqcls", "safe-rlhf": root / "beaver-reward", "pair": root / "pair"}


def build(kind: str, path: Path, **settings: Any) -> Any:
    from guardrail.parts import build_scorer

    entry = {"id": "rm", "kind": kind, "model": str(path), **settings}
    return build_scorer(RewardModelConfig.model_validate(entry))


PAIRS = [
    ([{"role": "user", "content": "How do I bake bread?"}], "Knead the dough, let it rise."),
    ([{"role": "user", "content": "How do I bake bread?"}], "No."),
]


@pytest.mark.slow
def test_pair_multiplier_reaches_the_scorer(family_dirs: dict[str, Path]) -> None:
    from guardrail.reward import PairScorer

    scorer = build("pair", family_dirs["pair"], multiplier=-2.5)
    assert isinstance(scorer, PairScorer)
    assert scorer.multiplier == -2.5
    plain = PairScorer(str(family_dirs["pair"]))
    expected = [-2.5 * s.score for s in plain.score(PAIRS)]
    assert [s.score for s in scorer.score(PAIRS)] == pytest.approx(expected, abs=1e-4)
    assert build("pair", family_dirs["pair"]).multiplier == 1.0


@pytest.mark.slow
def test_saferlhf_append_eos_reaches_the_scorer(family_dirs: dict[str, Path]) -> None:
    from guardrail.reward import SafeRLHFScorer

    path = family_dirs["safe-rlhf"]
    scorer = build("safe-rlhf", path, append_eos=False)
    assert isinstance(scorer, SafeRLHFScorer)
    assert scorer.append_eos is False
    direct = SafeRLHFScorer(str(path), append_eos=False)
    assert [s.score for s in scorer.score(PAIRS)] == pytest.approx(
        [s.score for s in direct.score(PAIRS)], abs=1e-4
    )
    assert build("safe-rlhf", path).append_eos is True


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["seqcls", "safe-rlhf"])
def test_truncation_side_reaches_the_scorer(kind: str, family_dirs: dict[str, Path]) -> None:
    scorer = build(kind, family_dirs[kind], truncation_side="right")
    assert scorer.truncation_side == "right"
    assert build(kind, family_dirs[kind]).truncation_side == "left"
