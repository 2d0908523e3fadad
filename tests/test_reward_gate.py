"""Reward gating inside guarded calls: routing, rules on the score, best-of-n, hybrid score,
and every reward-model family end to end with the shipped reward policy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from fakellm import FakeLLM, fake_llm, last_user
from loopback import LoopbackServer, Request

import guardrail
from guardrail import Action, BlockedError, Guard, SafetyLevel, Stage, Verdict
from guardrail.audit import JsonlSink, read_records
from guardrail.policy import load_policy
from guardrail.policy.schema import RewardConfig
from guardrail.reward import RewardPair, RewardScore, build_scorer
from guardrail.reward.gate import RewardGate
from guardrail.reward.hybrid import hybrid_score
from guardrail.reward.language import detect_language
from guardrail.testing import ScriptedClassifier

POLICY = Path(__file__).resolve().parent.parent / "policies" / "reward.yaml"
UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
SCRIPT = {"BOOM": UNSAFE, "bomb": "Safety: Unsafe\nCategories: Violent"}


# ---------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("level", "refusal", "reward", "expected"),
    [
        ("Safe", False, 2.5, 2.5),
        ("Safe", False, -12.0, -12.0),
        ("Safe", True, 2.5, -5.0),
        ("Safe", True, -7.0, -7.0),
        ("Unsafe", False, 2.5, -10.0),
        ("Controversial", False, 3.0, -10.0),
        ("Unsafe", True, -11.0, -11.0),
    ],
)
def test_hybrid_score(level: str, refusal: bool, reward: float, expected: float) -> None:
    verdict = Verdict(stage=Stage.RESPONSE, level=SafetyLevel(level), refusal=refusal)
    assert hybrid_score(verdict, reward) == expected


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("こんにちは、元気ですか", "ja"),
        ("東京は日本の首都です", "ja"),
        ("你好世界", "zh"),
        ("안녕하세요", "ko"),
        ("Привет, мир", "ru"),
        ("Hello there", "en"),
        ("1234 !!", "en"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


class FakeScorer:
    """Scores answers from a table (unlisted answers score 0.0); records what it saw."""

    def __init__(self, model_id: str, table: dict[str, float] | None = None) -> None:
        self._model_id = model_id
        self.table = table or {}
        self.seen: list[RewardPair] = []

    @property
    def model_id(self) -> str:
        return self._model_id

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        self.seen.extend(pairs)
        return [
            RewardScore(score=self.table.get(answer, 0.0), model=self._model_id)
            for _, answer in pairs
        ]

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        return self.score(pairs)


def test_routing_by_language() -> None:
    config = RewardConfig.model_validate(
        {
            "models": [
                {"id": "ja", "kind": "seqcls", "model": "/x", "languages": ["ja"]},
                {"id": "any", "kind": "seqcls", "model": "/y"},
            ]
        }
    )
    ja, other = FakeScorer("ja"), FakeScorer("any")
    gate = RewardGate(config, {"ja": ja, "any": other})
    pairs: list[RewardPair] = [
        ([{"role": "user", "content": "日本の首都はどこですか"}], "東京です"),
        ([{"role": "user", "content": "Capital of Japan?"}], "Tokyo."),
    ]
    gate.score(pairs)
    assert [a for _, a in ja.seen] == ["東京です"]
    assert [a for _, a in other.seen] == ["Tokyo."]


# ----------------------------------------------------------------- guarded calls


def answers(messages: list[dict[str, Any]], index: int) -> str:
    q = last_user(messages)
    if "best" in q:
        return [
            "A short answer.",
            "BOOM: the unsafe but long answer.",
            "A thorough answer.",
            "A good answer.",
        ][index]
    if "all unsafe" in q:
        return f"BOOM number {index}"
    return "Just an answer."


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm(answers) as server:
        yield server


def guarded(llm: FakeLLM, tmp_path: Path, **scorers: Any) -> Any:
    policy = load_policy(POLICY)
    models = [{"id": name, "kind": "seqcls", "model": "/unused"} for name in scorers]
    policy = policy.model_copy(
        update={"reward": RewardConfig.model_validate({"models": models, "best_of_n": 4})}
    )
    guard = Guard(
        policy,
        classifier=ScriptedClassifier(SCRIPT),
        sink=JsonlSink(tmp_path / "audit.jsonl"),
        scorers=scorers,
    )
    return guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)


def ask(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def test_best_of_n_returns_the_best_safe_candidate(llm: FakeLLM, tmp_path: Path) -> None:
    table = {
        "A short answer.": 0.1,
        "BOOM: the unsafe but long answer.": 9.0,  # highest reward, but unsafe
        "A thorough answer.": 3.0,
        "A good answer.": 1.0,
    }
    client = guarded(llm, tmp_path, quality=FakeScorer("quality", table))
    got = client.chat.completions.create(model="m", messages=ask("give me the best"))
    assert [c.message.content for c in got.choices] == ["A thorough answer."]
    assert got.choices[0].index == 0
    assert llm.requests[-1]["n"] == 4
    (record,) = read_records(tmp_path / "audit.jsonl")
    assert sorted(r.candidate for r in record.rewards) == [0, 1, 2, 3]
    hybrid = {r.candidate: r.hybrid for r in record.rewards}
    assert hybrid[1] == -10.0  # the unsafe candidate sinks
    assert hybrid[2] == 3.0
    assert [s.candidate for s in record.stages if s.stage is Stage.RESPONSE] == [0, 1, 2, 3]
    assert record.final_action is Action.ALLOW


def test_best_of_n_blocks_when_no_candidate_passes(llm: FakeLLM, tmp_path: Path) -> None:
    client = guarded(llm, tmp_path, quality=FakeScorer("quality"))
    with pytest.raises(BlockedError) as info:
        client.chat.completions.create(model="m", messages=ask("all unsafe please"))
    assert info.value.decision.rule_id == "block-unsafe-response"


def test_a_low_reward_is_flagged(llm: FakeLLM, tmp_path: Path) -> None:
    client = guarded(llm, tmp_path, quality=FakeScorer("quality", {"Just an answer.": -3.0}))
    got = client.chat.completions.create(model="m", messages=ask("anything"), n=2)
    report = guardrail.report(got)
    assert report is not None
    assert "low_quality" in report.flags
    assert len(got.choices) == 2  # the caller asked for two: no best-of-n


def test_a_failing_reward_model_is_audited_and_the_call_goes_on(
    llm: FakeLLM, tmp_path: Path
) -> None:
    class Broken(FakeScorer):
        def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
            raise RuntimeError("reward model down")

    client = guarded(llm, tmp_path, quality=Broken("quality"))
    got = client.chat.completions.create(model="m", messages=ask("anything"))
    assert got.choices[0].message.content == "Just an answer."
    (record,) = read_records(tmp_path / "audit.jsonl")
    assert any("reward model down" in e.message for e in record.errors)
    assert record.rewards == ()


def test_shipped_reward_policy_validates() -> None:
    policy = load_policy(POLICY)
    assert policy.reward is not None
    assert policy.reward.best_of_n == 4
    assert [m.languages for m in policy.reward.models] == [("ja",), None]


# -------------------------------------------------- every family, really loaded


def _family_policy(tmp_path: Path, entry: dict[str, Any]) -> Any:
    policy = load_policy(POLICY)
    reward = RewardConfig.model_validate({"models": [entry], "best_of_n": 3})
    return policy.model_copy(update={"reward": reward})


def _answers3(messages: list[dict[str, Any]], index: int) -> str:
    return ["Bread needs flour.", "Knead the dough well, then bake it hot.", "Yes."][index]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tinyreward import build_pair, build_saferlhf, build_seqcls

    root = tmp_path_factory.mktemp("reward-families")
    build_seqcls(root / "seqcls")
    build_saferlhf(root / "beaver-cost", score_type="cost")
    build_pair(root / "pair")
    return {"seqcls": root / "seqcls", "safe-rlhf": root / "beaver-cost", "pair": root / "pair"}


@pytest.mark.parametrize("kind", ["seqcls", "safe-rlhf", "pair", "remote"])
def test_each_family_end_to_end(kind: str, family_dirs: dict[str, Path], tmp_path: Path) -> None:
    question = [{"role": "user", "content": "How do I bake bread?"}]
    candidates = [_answers3(question, i) for i in range(3)]
    with fake_llm(_answers3) as llm, LoopbackServer() as reward_server:
        if kind == "remote":
            reward_server.route("POST", "/pooling", _length_reward)
            entry = {"id": "rm", "kind": "remote", "model": "rm", "base_url": reward_server.url}
            direct = build_scorer("remote", "rm", base_url=reward_server.url)
        else:
            entry = {"id": "rm", "kind": kind, "model": str(family_dirs[kind])}
            direct = build_scorer(kind, str(family_dirs[kind]))
        guard = Guard(
            _family_policy(tmp_path, entry),
            classifier=ScriptedClassifier(SCRIPT),
            sink=JsonlSink(tmp_path / "audit.jsonl"),
        )
        client = guardrail.wrap(openai.OpenAI(base_url=llm.base_url, api_key="k"), guard=guard)
        got = client.chat.completions.create(model="m", messages=question)
        expected = direct.score([(question, c) for c in candidates])
    goodness = [s.goodness for s in expected]
    best = max(range(3), key=lambda i: (goodness[i], -i))
    assert got.choices[0].message.content == candidates[best]
    (record,) = read_records(tmp_path / "audit.jsonl")
    by_candidate = {r.candidate: r for r in record.rewards}
    for i, score in enumerate(expected):
        assert by_candidate[i].score == pytest.approx(score.score, abs=1e-5)
        assert by_candidate[i].hybrid == pytest.approx(score.goodness, abs=1e-5)  # all Safe


def _length_reward(request: Request) -> dict[str, Any]:
    answer = request.json["messages"][-1]["content"]
    return {
        "id": "pool-1",
        "object": "list",
        "created": 0,
        "model": "rm",
        "data": [{"index": 0, "object": "pooling", "data": [float(len(answer))]}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1, "completion_tokens": 0},
    }
