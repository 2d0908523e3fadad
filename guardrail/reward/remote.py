"""Reward models behind a vLLM server started with the pooling runner.

``vllm serve <reward-model> --runner pooling`` (``--task reward`` / ``classify`` on
older releases) answers three routes at the server ROOT (not under ``/v1``):

- ``api="pooling"`` (default): ``POST /pooling`` with ``{"model", "messages",
  "task": "classify", "use_activation": false}``. The server renders the messages
  with the model's chat template (no generation prompt, no special tokens added:
  the same input as :class:`~guardrail.reward.seqcls.SequenceClassificationScorer`
  when the template writes the BOS or the tokenizer adds none) and
  answers ``{"data": [{"index": 0, "object": "pooling", "data": [logit]}]}``. This
  is the one route every reward model answers: sequence-classification reward
  models (Skywork-Reward-V2, Llama/Qwen3 ``*ForSequenceClassification``) with
  ``pooling_task="classify"``, token reward models (InternLM2 / Qwen2.5-Math RM)
  with ``pooling_task="token_classify"``, whose per-token ``data`` is read at the
  last token.
- ``api="classify"``: ``POST /classify`` with the same chat body; the score is
  ``data[0].probs[0]`` (sequence-classification models only).
- ``api="score"``: ``POST /score`` with ``{"text_1": prompt, "text_2": answer}`` for
  pair encoders (cross-encoders such as nicholasKluge/RewardModel); the score is
  ``data[0].score``. ``text_1``/``text_2`` is accepted by old and current vLLM alike.

``use_activation: false`` is always sent: for a one-label model vLLM's default
activation is a sigmoid, which would squash the reward into (0, 1). vLLM releases
older than ``use_activation`` (which took ``activation``/``softmax``) ignore it and
return squashed values: use a current server.

Transport failures, timeouts and HTTP errors map onto the remote guard's error
family (:class:`~guardrail.errors.RemoteGuardError` subclasses, messages saying
"reward server") and share its retry policy: timeouts, connection failures and
:data:`~guardrail.http.RETRYABLE_STATUS` are retried with jittered backoff
honouring a short ``Retry-After``; 400 and other client errors are final. This
module owns the request bodies and score reading; the HTTP plumbing (pooled
clients: httpx for sync calls, aiohttp for async ones; retry policy) is
:mod:`guardrail.http`'s and the bounded batches
:mod:`guardrail.classifiers.batching`'s, shared with the guard.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from guardrail import deadline as deadlines
from guardrail.classifiers.batching import arun_batch, run_batch
from guardrail.errors import ConfigurationError, RemoteGuardError
from guardrail.http import (
    HTTPBackend,
    HTTPResponse,
    PooledHTTP,
    RetryPolicy,
    RetryWait,
    parse_base_url,
)
from guardrail.reward.base import (
    Normalizer,
    RewardPair,
    RewardScore,
    ScoreKind,
    Turn,
    normalise_pair,
)

if TYPE_CHECKING:
    import aiohttp
    import httpx

__all__ = ["RemoteRewardScorer", "build_request", "read_score"]

Api = Literal["pooling", "classify", "score"]
PoolingTask = Literal["classify", "token_classify"]
_PATHS: dict[str, str] = {"pooling": "/pooling", "classify": "/classify", "score": "/score"}


# ------------------------------------------------------------------------- pure


def build_request(
    turns: Sequence[Turn], *, api: Api, model: str, pooling_task: PoolingTask = "classify"
) -> dict[str, Any]:
    """The JSON body scoring one normalised conversation (ending with the answer)."""
    body: dict[str, Any] = {"model": model, "use_activation": False}
    if api == "score":
        body["text_1"] = next(t.content for t in reversed(turns[:-1]) if t.role == "user")
        body["text_2"] = turns[-1].content
        return body
    body["messages"] = [{"role": t.role, "content": t.content} for t in turns]
    body["add_generation_prompt"] = False
    if api == "pooling":
        body["task"] = pooling_task
    return body


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _single(value: Any) -> float | None:
    """A number, or a one-element list holding one."""
    if isinstance(value, list):
        return _number(value[0]) if len(value) == 1 else None
    return _number(value)


def read_score(data: Any, *, api: Api, pooling_task: PoolingTask = "classify") -> float | None:
    """The score in a vLLM response body, or ``None`` when it holds no single score."""
    items = data.get("data") if isinstance(data, Mapping) else None
    first = items[0] if isinstance(items, list) and items else None
    if not isinstance(first, Mapping):
        return None
    if api == "score":
        return _number(first.get("score"))
    if api == "classify":
        return _single(first.get("probs"))
    value = first.get("data")
    if pooling_task == "token_classify" and isinstance(value, list) and value:
        value = value[-1]  # one output per token: the reward is read at the last one
    return _single(value)


# ------------------------------------------------------------------- the scorer


class RemoteRewardScorer(HTTPBackend):
    """A :class:`~guardrail.reward.base.RewardScorer` calling a vLLM pooling server.

    ``base_url`` is the server root (``http://host:8000``; a trailing ``/v1`` is
    ignored since the pooling routes live at the root). ``api`` and
    ``pooling_task`` pick the route (see the module doc). ``kind="cost"`` marks a
    cost model (``unsafe`` is ``score > 0``). The API key comes from ``api_key`` or
    the ``api_key_env`` variable, is sent as a bearer token and never appears in
    ``repr`` or messages. Pairs are scored one request each, up to
    ``max_concurrency`` at once; if one fails its error is raised (no partial
    results). Within a guarded call no attempt starts, and no request runs, past
    the scoring's deadline (:mod:`guardrail.deadline`). Sync calls go through
    httpx, async ones through aiohttp (one session per event loop); injected
    clients (``http_client``: ``httpx.Client``; ``async_http_client``:
    ``aiohttp.ClientSession`` or ``httpx.AsyncClient``) are used as they are and
    never closed here.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api: Api = "pooling",
        pooling_task: PoolingTask = "classify",
        kind: ScoreKind = "reward",
        api_key: str | None = None,
        api_key_env: str = "GUARDRAIL_REWARD_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 2,
        max_concurrency: int = 16,
        mean: float | None = None,
        std: float | None = None,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | aiohttp.ClientSession | None = None,
        retry_wait: RetryWait | None = None,
    ) -> None:
        root = parse_base_url(base_url)
        if api not in _PATHS:
            raise ConfigurationError(f"api must be one of {', '.join(_PATHS)}, not {api!r}")
        if pooling_task not in ("classify", "token_classify"):
            raise ConfigurationError("pooling_task must be classify or token_classify")
        if kind not in ("reward", "cost"):
            raise ConfigurationError(f"kind must be 'reward' or 'cost', not {kind!r}")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0 or max_concurrency < 1:
            raise ConfigurationError("max_retries must be >= 0 and max_concurrency >= 1")
        self.model = model
        self.api: Api = api
        self.pooling_task: PoolingTask = pooling_task
        self.kind: ScoreKind = kind
        self.max_concurrency = max_concurrency
        self._normalizer = Normalizer(mean, std)
        path = root.path.rstrip("/")
        path = path[: -len("/v1")] if path.endswith("/v1") else path
        self._http = PooledHTTP(
            root.copy_with(path=path + _PATHS[api]),
            server="reward server",
            timeout=timeout,
            max_connections=max_concurrency,
            api_key=api_key,
            api_key_env=api_key_env,
            http_client=http_client,
            async_http_client=async_http_client,
        )
        # the remote guard's policy: same retryable errors, backoff and Retry-After cap
        self._retry = RetryPolicy(max_retries, retry_wait)

    def __repr__(self) -> str:
        return f"RemoteRewardScorer(url={self._http.public_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ shared

    def _body(self, pair: RewardPair) -> dict[str, Any]:
        turns = normalise_pair(*pair)
        return build_request(turns, api=self.api, model=self.model, pooling_task=self.pooling_task)

    def _read(self, response: HTTPResponse) -> float:
        url = self._http.public_url
        self._http.raise_for_status(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise RemoteGuardError(f"reward server {url} returned invalid JSON", url=url) from exc
        value = read_score(data, api=self.api, pooling_task=self.pooling_task)
        if value is None:
            raise RemoteGuardError(
                f"reward server {url} returned no single finite score in data[0] "
                f"(api={self.api!r}; is the model a one-label reward model?)",
                url=url,
            )
        return value

    def _result(self, score: float, started: float) -> RewardScore:
        return RewardScore(
            score=score,
            normalized=self._normalizer(score),
            model=self.model,
            kind=self.kind,
            latency_s=time.perf_counter() - started,  # includes retries: what the caller waited
            unsafe=score > 0 if self.kind == "cost" else None,
        )

    # -------------------------------------------------------------------- sync

    def _post(self, body: Mapping[str, Any], deadline: float | None) -> float:
        return self._read(self._http.post(body, deadline=deadline))

    def _score_one(self, body: Mapping[str, Any], deadline: float | None = None) -> RewardScore:
        started = time.perf_counter()
        value: float = self._retry.call(
            functools.partial(self._post, body, deadline), deadline=deadline
        )
        return self._result(value, started)

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Score every pair, up to ``max_concurrency`` requests at once; scores in order."""
        bodies = [self._body(pair) for pair in pairs]  # malformed input fails before any I/O
        one = functools.partial(self._score_one, deadline=deadlines.current())
        return run_batch(one, bodies, self.max_concurrency, "guardrail-reward")

    # ------------------------------------------------------------------- async

    async def _apost(self, body: Mapping[str, Any], deadline: float | None) -> float:
        return self._read(await self._http.apost(body, deadline=deadline))

    async def _ascore_one(
        self, body: Mapping[str, Any], deadline: float | None = None
    ) -> RewardScore:
        started = time.perf_counter()
        value: float = await self._retry.acall(
            functools.partial(self._apost, body, deadline), deadline=deadline
        )
        return self._result(value, started)

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Async twin of :meth:`score`: concurrent requests bounded by ``max_concurrency``."""
        bodies = [self._body(pair) for pair in pairs]
        one = functools.partial(self._ascore_one, deadline=deadlines.current())
        return await arun_batch(one, bodies, self.max_concurrency)
