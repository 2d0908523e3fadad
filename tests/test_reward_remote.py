"""RemoteRewardScorer against a loopback server answering in vLLM's pooling-API shapes.

Bodies follow vLLM's ``PoolingResponse`` / ``ClassificationResponse`` /
``ScoreResponse`` (``{"id", "object": "list", "created", "model", "data": [...],
"usage"}``). Behaviour tests run through both ``score`` and ``ascore``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from loopback import Drop, JSONResponse, LoopbackServer, RawResponse, Request, closed_port_url
from tenacity import wait_none

from guardrail.errors import (
    ConfigurationError,
    GuardConnectionError,
    GuardHTTPError,
    GuardTimeoutError,
    RemoteGuardError,
)
from guardrail.reward import RemoteRewardScorer, RewardScore, RewardScorer, build_scorer
from guardrail.reward.base import RewardPair

MODEL = "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
USER = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]

Score = Callable[[RemoteRewardScorer, Sequence[RewardPair]], list[RewardScore]]


def envelope(kind: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"{kind}-123",
        "object": "list",
        "created": int(time.time()),
        "model": MODEL,
        "data": data,
        "usage": {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0},
    }


def pooling_body(value: Any) -> dict[str, Any]:
    return envelope("pool", [{"index": 0, "object": "pooling", "data": value}])


def answer_reward(request: Request) -> dict[str, Any]:
    """A fake reward: the answer's length (so each pair has its own, checkable score)."""
    answer = request.json["messages"][-1]["content"]
    return pooling_body([float(len(answer))])


@pytest.fixture
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Score:
    if request.param == "sync":
        return lambda scorer, pairs: scorer.score(pairs)
    return lambda scorer, pairs: asyncio.run(scorer.ascore(pairs))


def scorer(url: str, **options: Any) -> RemoteRewardScorer:
    options.setdefault("retry_wait", wait_none())
    return RemoteRewardScorer(url, model=MODEL, **options)


# ------------------------------------------------------------------------ shapes


def test_pooling_request_and_response(server: LoopbackServer, run: Score) -> None:
    server.route("POST", "/pooling", answer_reward)
    results = run(scorer(server.url + "/v1"), [(USER, "Hello!"), (USER, "Hey there")])
    assert [r.score for r in results] == [6.0, 9.0]
    assert all(r.kind == "reward" and r.unsafe is None and r.model == MODEL for r in results)
    bodies = sorted((r.json for r in server.requests_to("POST", "/pooling")), key=str)
    assert bodies[0] == {
        "model": MODEL,
        "use_activation": False,
        "messages": [*USER, {"role": "assistant", "content": "Hello!"}],
        "add_generation_prompt": False,
        "task": "classify",
    }


def test_token_classify_reads_the_last_token(server: LoopbackServer, run: Score) -> None:
    server.route("POST", "/pooling", JSONResponse(pooling_body([[0.1], [0.2], [-1.5]])))
    [result] = run(scorer(server.url, pooling_task="token_classify"), [(USER, "x")])
    assert result.score == -1.5
    assert server.requests[0].json["task"] == "token_classify"


def test_classify_api(server: LoopbackServer, run: Score) -> None:
    body = envelope(
        "classify", [{"index": 0, "label": "LABEL_0", "probs": [2.5], "num_classes": 1}]
    )
    server.route("POST", "/classify", JSONResponse(body))
    [result] = run(scorer(server.url, api="classify"), [(USER, "x")])
    assert result.score == 2.5
    sent = server.requests[0].json
    assert sent["use_activation"] is False
    assert "task" not in sent
    assert sent["messages"][-1]


def test_score_api_sends_the_pair(server: LoopbackServer, run: Score) -> None:
    body = envelope("score", [{"index": 0, "object": "score", "score": -11.25}])
    server.route("POST", "/score", JSONResponse(body))
    messages = [*USER, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Q"}]
    [result] = run(scorer(server.url, api="score"), [(messages, "A")])
    assert result.score == -11.25
    assert server.requests[0].json == {
        "model": MODEL,
        "use_activation": False,
        "text_1": "Q",
        "text_2": "A",
    }


def test_cost_kind_and_normalisation(server: LoopbackServer, run: Score) -> None:
    server.route("POST", "/pooling", JSONResponse(pooling_body([3.0])))
    [result] = run(scorer(server.url, kind="cost", mean=1.0, std=4.0), [(USER, "x")])
    assert (result.unsafe, result.normalized, result.goodness) == (True, 0.5, -0.5)


def test_api_key_is_sent_and_never_shown(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARDRAIL_REWARD_API_KEY", "sk-secret")
    server.route("POST", "/pooling", JSONResponse({"error": {"message": "bad sk-secret"}}, 401))
    remote = scorer(server.url)
    with pytest.raises(GuardHTTPError) as info:
        remote.score([(USER, "x")])
    assert server.requests[0].headers["authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in str(info.value)
    assert "sk-secret" not in repr(remote)


# ---------------------------------------------------------------------- failures


def test_503_is_retried(server: LoopbackServer, run: Score) -> None:
    server.route(
        "POST",
        "/pooling",
        [JSONResponse({"error": {"message": "busy"}}, 503), JSONResponse(pooling_body([1.0]))],
    )
    [result] = run(scorer(server.url, max_retries=2), [(USER, "x")])
    assert result.score == 1.0
    assert len(server.requests) == 2


def test_400_is_final(server: LoopbackServer, run: Score) -> None:
    server.route("POST", "/pooling", JSONResponse({"error": {"message": "too long"}}, 400))
    with pytest.raises(GuardHTTPError) as info:
        run(scorer(server.url, max_retries=3), [(USER, "x")])
    assert info.value.status_code == 400
    assert "reward server" in str(info.value)
    assert "too long" in str(info.value)
    assert len(server.requests) == 1


def test_timeout(server: LoopbackServer, run: Score) -> None:
    server.route("POST", "/pooling", JSONResponse(pooling_body([1.0]), delay=2.0))
    with pytest.raises(GuardTimeoutError, match="did not answer"):
        run(scorer(server.url, timeout=0.2, max_retries=1), [(USER, "x")])
    assert len(server.requests) == 2  # a timeout is retried like the guard's


def test_connection_refused(run: Score) -> None:
    with pytest.raises(GuardConnectionError, match="could not reach reward server"):
        run(scorer(closed_port_url(), max_retries=0), [(USER, "x")])


def test_dropped_connection_is_retried(server: LoopbackServer, run: Score) -> None:
    server.route("POST", "/pooling", [Drop(), JSONResponse(pooling_body([4.0]))])
    [result] = run(scorer(server.url, max_retries=1), [(USER, "x")])
    assert result.score == 4.0


@pytest.mark.parametrize(
    "response",
    [
        RawResponse("not json"),
        JSONResponse({"data": []}),
        JSONResponse(pooling_body([1.0, 2.0])),  # two labels: not a reward model
        JSONResponse(pooling_body(["NaN"])),
    ],
)
def test_malformed_answers_are_errors(
    server: LoopbackServer, run: Score, response: JSONResponse | RawResponse
) -> None:
    server.route("POST", "/pooling", response)
    with pytest.raises(RemoteGuardError, match="reward server"):
        run(scorer(server.url), [(USER, "x")])


def test_one_failure_fails_the_batch(server: LoopbackServer, run: Score) -> None:
    def handler(request: Request) -> Any:
        if request.json["messages"][-1]["content"] == "bad":
            return JSONResponse({"error": {"message": "nope"}}, 422)
        return answer_reward(request)

    server.route("POST", "/pooling", handler)
    with pytest.raises(GuardHTTPError, match="422"):
        run(scorer(server.url), [(USER, "ok"), (USER, "bad"), (USER, "fine")])


# ------------------------------------------------------------------ construction


def test_configuration_errors() -> None:
    for bad in ("ftp://x", "not a url"):
        with pytest.raises(ConfigurationError):
            RemoteRewardScorer(bad, model=MODEL)
    with pytest.raises(ConfigurationError, match="api"):
        RemoteRewardScorer("http://x", model=MODEL, api="rerank")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        RemoteRewardScorer("http://x", model=MODEL, timeout=0)


def test_build_scorer_remote(server: LoopbackServer) -> None:
    server.route("POST", "/pooling", JSONResponse(pooling_body([0.5])))
    remote = build_scorer("remote", MODEL, base_url=server.url, max_retries=0)
    assert isinstance(remote, RemoteRewardScorer)
    assert isinstance(remote, RewardScorer)
    assert remote.model_id == MODEL
    with remote:
        assert remote.score([(USER, "x")])[0].score == 0.5
