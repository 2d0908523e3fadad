"""Reward models behind a vLLM server started with the pooling runner.

``vllm serve <reward-model> --runner pooling`` (``--task reward`` / ``classify`` on
older releases) answers three routes at the server ROOT (not under ``/v1``):

- ``api="pooling"`` (default): ``POST /pooling`` with ``{"model", "messages",
  "task": "classify", "use_activation": false}``. The server renders the messages
  with the model's chat template (no generation prompt, no extra BOS: the same
  input as :class:`~guardrail.reward.seqcls.SequenceClassificationScorer`) and
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
:data:`~guardrail.classifiers.remote.RETRYABLE_STATUS` are retried with jittered
backoff honouring a short ``Retry-After``; 400 and other client errors are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Literal

import httpx
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from guardrail.classifiers.remote import (
    RetryWait,
    _error_snippet,
    _is_retryable,
    _public_url,
    _wait_with_retry_after,
)
from guardrail.errors import (
    ConfigurationError,
    GuardConnectionError,
    GuardHTTPError,
    GuardTimeoutError,
    RemoteGuardError,
)
from guardrail.reward.base import (
    Normalizer,
    RewardPair,
    RewardScore,
    ScoreKind,
    Turn,
    normalise_pair,
)

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


@contextlib.contextmanager
def _transport_errors(url: str, timeout: float) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise GuardTimeoutError(
            f"reward server {url} did not answer within {timeout:g} s ({type(exc).__name__})",
            url=url,
        ) from exc
    except httpx.TransportError as exc:
        raise GuardConnectionError(
            f"could not reach reward server {url}: {type(exc).__name__}: {exc}", url=url
        ) from exc


# ------------------------------------------------------------------- the scorer


class RemoteRewardScorer:
    """A :class:`~guardrail.reward.base.RewardScorer` calling a vLLM pooling server.

    ``base_url`` is the server root (``http://host:8000``; a trailing ``/v1`` is
    ignored since the pooling routes live at the root). ``api`` and
    ``pooling_task`` pick the route (see the module doc). ``kind="cost"`` marks a
    cost model (``unsafe`` is ``score > 0``). The API key comes from ``api_key`` or
    the ``api_key_env`` variable, is sent as a bearer token and never appears in
    ``repr`` or messages. Pairs are scored one request each, up to
    ``max_concurrency`` at once; if one fails its error is raised (no partial
    results). Injected HTTP clients are used as they are and never closed here.
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
        async_http_client: httpx.AsyncClient | None = None,
        retry_wait: RetryWait | None = None,
    ) -> None:
        try:
            root = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"invalid base_url: {exc}") from None
        if root.scheme not in ("http", "https") or not root.host:
            raise ConfigurationError(f"base_url must be an http(s) URL, got {_public_url(root)!r}")
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
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self._normalizer = Normalizer(mean, std)
        path = root.path.rstrip("/")
        path = path[: -len("/v1")] if path.endswith("/v1") else path
        self._url = root.copy_with(path=path + _PATHS[api])
        self._public_url = _public_url(self._url)
        self._api_key = api_key or os.environ.get(api_key_env) or None
        self._headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._injected_client = http_client
        self._injected_aclient = async_http_client
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._limits = httpx.Limits(
            max_connections=max_concurrency, max_keepalive_connections=max_concurrency
        )
        # the remote guard's policy: same retryable errors, backoff and Retry-After cap
        policy: dict[str, Any] = {
            "stop": stop_after_attempt(max_retries + 1),
            "wait": _wait_with_retry_after(
                retry_wait or wait_random_exponential(multiplier=0.1, max=2)
            ),
            "retry": retry_if_exception(_is_retryable),
            "reraise": True,
        }
        self._retrying = Retrying(**policy)
        self._aretrying = AsyncRetrying(**policy)

    @property
    def model_id(self) -> str:
        """The served model name sent in every request."""
        return self.model

    def __repr__(self) -> str:
        return f"RemoteRewardScorer(url={self._public_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ shared

    def _body(self, pair: RewardPair) -> dict[str, Any]:
        turns = normalise_pair(*pair)
        return build_request(turns, api=self.api, model=self.model, pooling_task=self.pooling_task)

    def _read(self, response: httpx.Response) -> float:
        url = self._public_url
        if not response.is_success:
            code = response.status_code
            # not raise_for_status(): its message shows the full URL, credentials included
            cause = httpx.HTTPStatusError(
                f"HTTP {code}", request=response.request, response=response
            )
            raise GuardHTTPError(
                f"reward server {url} answered HTTP {code}: "
                f"{_error_snippet(response, self._api_key)}",
                url=url,
                status_code=code,
            ) from cause
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

    def _sync_client(self) -> httpx.Client:
        if self._injected_client is not None:
            return self._injected_client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(limits=self._limits)
            return self._client

    def _post(self, body: Mapping[str, Any]) -> float:
        with _transport_errors(self._public_url, self.timeout):
            response = self._sync_client().post(
                self._url, json=body, headers=self._headers, timeout=self.timeout
            )
        return self._read(response)

    def _score_one(self, body: Mapping[str, Any]) -> RewardScore:
        started = time.perf_counter()
        return self._result(self._retrying.copy()(self._post, body), started)

    def score(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Score every pair, up to ``max_concurrency`` requests at once; scores in order."""
        bodies = [self._body(pair) for pair in pairs]  # malformed input fails before any I/O
        if len(bodies) <= 1:
            return [self._score_one(body) for body in bodies]
        with ThreadPoolExecutor(min(self.max_concurrency, len(bodies)), "guardrail-reward") as pool:
            futures = [pool.submit(self._score_one, body) for body in bodies]
            try:
                return [future.result() for future in futures]
            finally:
                for future in futures:
                    future.cancel()  # after a failure: skip the requests not yet started

    def close(self) -> None:
        """Close the sync HTTP client created here (an injected one is left open)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> RemoteRewardScorer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------- async

    def _async_client(self) -> httpx.AsyncClient:
        if self._injected_aclient is not None:
            return self._injected_aclient
        # pooled connections belong to the loop that opened them
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient_loop is not loop:
            self._aclient = httpx.AsyncClient(limits=self._limits)
            self._aclient_loop = loop
        return self._aclient

    async def _apost(self, body: Mapping[str, Any]) -> float:
        with _transport_errors(self._public_url, self.timeout):
            response = await self._async_client().post(
                self._url, json=body, headers=self._headers, timeout=self.timeout
            )
        return self._read(response)

    async def ascore(self, pairs: Sequence[RewardPair]) -> list[RewardScore]:
        """Async twin of :meth:`score`: concurrent requests bounded by ``max_concurrency``."""
        bodies = [self._body(pair) for pair in pairs]
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def one(body: Mapping[str, Any]) -> RewardScore:
            async with semaphore:
                started = time.perf_counter()
                value: float = await self._aretrying.copy()(self._apost, body)
                return self._result(value, started)

        tasks = [asyncio.ensure_future(one(body)) for body in bodies]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished tasks
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the HTTP clients created here, async and sync (injected ones stay open)."""
        client, self._aclient, self._aclient_loop = self._aclient, None, None
        if client is not None:
            await client.aclose()
        self.close()

    async def __aenter__(self) -> RemoteRewardScorer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
