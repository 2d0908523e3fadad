"""Qwen3Guard-Gen behind an OpenAI-compatible server (vLLM, SGLang): the scale-out backend.

The server applies the checkpoint's own chat template, so requests carry plain
messages; their content is escaped first because the server tokenizes the rendered
prompt with special tokens parsed (see :func:`~guardrail.qwen3guard.escape_markup`).

Building the request and reading the response are pure functions shared by the
sync and async paths; only the HTTP call and the retry driver differ (httpx's own
pattern). Failures surface as :class:`~guardrail.errors.RemoteGuardError` subclasses,
and an answer that is not a verdict raises
:class:`~guardrail.errors.VerdictParseError`: nothing here ever defaults to Safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from guardrail.errors import (
    ConfigurationError,
    GuardConnectionError,
    GuardHTTPError,
    GuardTimeoutError,
    RemoteGuardError,
)
from guardrail.qwen3guard import (
    DEFAULT_MODEL,
    ENDOFTEXT,
    IM_END,
    FieldProbabilities,
    GuardInput,
    TokenLogprobs,
    field_probabilities,
    parse_verdict,
)
from guardrail.types import Verdict

__all__ = ["RETRYABLE_STATUS", "RemoteQwen3Guard"]

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt; anything else (400, 401, 404, 422...) is final."""

MAX_RETRY_AFTER_S = 5.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

_MAX_TOP_LOGPROBS = 20  # the OpenAI limit, and vLLM's default --max-logprobs
_SNIPPET_CHARS = 200
_STOP_SUFFIX = re.compile(f"(?:{re.escape(IM_END)}|{re.escape(ENDOFTEXT)})\\s*$")

RetryWait = Callable[[RetryCallState], float]


# ------------------------------------------------------------------ pure: request


def build_request(
    guard_input: GuardInput, *, model: str, max_tokens: int, top_logprobs: int
) -> dict[str, Any]:
    """Build the chat-completion body for one guard input (greedy; logprobs if asked)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": guard_input.as_dicts(escape=True),
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs
    return body


# ----------------------------------------------------------------- pure: response


def _error_snippet(response: httpx.Response, secret: str | None) -> str:
    """Shorten the server's error message to one line (the body only, never headers)."""
    text = response.text
    message: Any = None
    with contextlib.suppress(ValueError):
        data = response.json()
        if isinstance(data, Mapping):
            error = data.get("error", data)
            message = error.get("message") if isinstance(error, Mapping) else error
            message = message or data.get("detail") or data.get("message")
    snippet = " ".join(str(message or text).split())
    if secret:  # a proxy could echo the request back
        snippet = snippet.replace(secret, "***")
    return snippet if len(snippet) <= _SNIPPET_CHARS else snippet[:_SNIPPET_CHARS] + "..."


def read_choice(
    response: httpx.Response, *, url: str, secret: str | None = None
) -> Mapping[str, Any]:
    """Check the status and return ``choices[0]`` of a chat-completion response.

    Raises :class:`~guardrail.errors.GuardHTTPError` for an error status (its
    ``__cause__`` is an ``httpx.HTTPStatusError`` carrying the response) and
    :class:`~guardrail.errors.RemoteGuardError` for a body that is not a completion.
    """
    if not response.is_success:
        code = response.status_code
        # built here rather than by raise_for_status(), whose message shows the full
        # URL, credentials included, in tracebacks
        cause = httpx.HTTPStatusError(f"HTTP {code}", request=response.request, response=response)
        raise GuardHTTPError(
            f"guard server {url} answered HTTP {code}: {_error_snippet(response, secret)}",
            url=url,
            status_code=code,
        ) from cause
    try:
        data = response.json()
    except ValueError as exc:
        raise RemoteGuardError(
            f"guard server {url} returned invalid JSON: {_error_snippet(response, secret)}",
            url=url,
        ) from exc
    choices = data.get("choices") if isinstance(data, Mapping) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, Mapping):
        raise RemoteGuardError(
            f"guard server {url} returned no choices[0] in its chat completion", url=url
        )
    return first


def _token_logprobs(logprobs: Any) -> list[TokenLogprobs]:
    """``choice.logprobs.content`` as TokenLogprobs; malformed data gives an empty list."""
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return []
    tokens: list[TokenLogprobs] = []
    try:
        for entry in content:
            top = tuple((str(t["token"]), float(t["logprob"])) for t in entry["top_logprobs"] or ())
            logprob = entry.get("logprob")
            tokens.append(
                TokenLogprobs(str(entry["token"]), None if logprob is None else float(logprob), top)
            )
    except (AttributeError, KeyError, TypeError, ValueError):
        return []
    return tokens


def verdict_from_choice(
    choice: Mapping[str, Any], guard_input: GuardInput, *, model: str, latency_s: float
) -> Verdict:
    """Parse ``choices[0]`` into a verdict, with probabilities when logprobs match the text.

    An empty ``content`` falls back to ``reasoning_content`` / ``reasoning``: a
    reasoning parser on the server can move the whole verdict there.
    """
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise RemoteGuardError("guard server returned a choice without a message")
    text = ""
    for key in ("content", "reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            text = value
            break
    tokens = _token_logprobs(choice.get("logprobs"))
    # Logprobs describe `content`; when the verdict came from elsewhere they would
    # point at the wrong positions, so use them only if they spell the verdict text
    # (give or take a stop token some servers print).
    spelled = _STOP_SUFFIX.sub("", "".join(t.token for t in tokens))
    aligned = bool(tokens) and spelled.strip() == text.strip()
    probs = field_probabilities(tokens) if aligned else FieldProbabilities()
    return parse_verdict(
        text,
        stage=guard_input.stage,
        model=model,
        latency_s=latency_s,
        level_probs=probs.level,
        category_probs=probs.category,
        refusal_probs=probs.refusal,
        skipped_parts=guard_input.skipped_parts,
        part=guard_input.part,
    )


# ------------------------------------------------------------------- retry policy


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, GuardHTTPError):
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, (GuardTimeoutError, GuardConnectionError))


def _retry_after_s(exc: BaseException | None) -> float:
    """Read the numeric ``Retry-After`` of a failed attempt, capped; 0 without one."""
    cause = exc.__cause__ if exc is not None else None
    if not isinstance(cause, httpx.HTTPStatusError):
        return 0.0
    try:
        seconds = float(cause.response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: rely on the backoff
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else 0.0


def _wait_with_retry_after(backoff: RetryWait) -> RetryWait:
    def wait_for(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return max(backoff(state), _retry_after_s(exc))

    return wait_for


def _rejects_logprobs(exc: GuardHTTPError) -> bool:
    """Tell a 400 whose body mentions logprobs: the server does not support them."""
    cause = exc.__cause__
    body = cause.response.text if isinstance(cause, httpx.HTTPStatusError) else str(exc)
    return exc.status_code == 400 and "logprob" in body.lower()


@contextlib.contextmanager
def _transport_errors(url: str, timeout: float) -> Iterator[None]:
    """Map httpx transport failures onto the guard's error types."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise GuardTimeoutError(
            f"guard server {url} did not answer within {timeout:g} s ({type(exc).__name__})",
            url=url,
        ) from exc
    except httpx.TransportError as exc:
        raise GuardConnectionError(
            f"could not reach guard server {url}: {type(exc).__name__}: {exc}", url=url
        ) from exc


def _public_url(url: httpx.URL) -> str:
    """Drop credentials and query from a URL shown in messages."""
    return str(url.copy_with(username=None, password=None, query=None))


# -------------------------------------------------------------------- the backend


class RemoteQwen3Guard:
    """A :class:`~guardrail.classifiers.base.Classifier` calling an OpenAI-compatible server.

    ``base_url`` is the API root (``http://host:8000/v1``); each input is one
    ``POST {base_url}/chat/completions``. The API key comes from ``api_key`` or the
    ``api_key_env`` environment variable and is sent as a bearer token; it never
    appears in ``repr`` or error messages.

    Requests are greedy and ask for ``top_logprobs`` alternatives so verdicts carry
    probabilities (``top_logprobs=0`` turns that off). A server that rejects logprobs
    with a 400 is asked again without them, and never asked for them again.

    Timeouts, connection failures and the statuses in :data:`RETRYABLE_STATUS` are
    retried up to ``max_retries`` times with jittered exponential backoff (or
    ``retry_wait``), honouring a short ``Retry-After``. Batches run up to
    ``max_concurrency`` requests at once. Injected ``http_client`` /
    ``async_http_client`` are used as they are and never closed here; otherwise one
    pooled client per flavour is created on first use and closed by :meth:`close` /
    :meth:`aclose` or the context managers.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        api_key_env: str = "GUARDRAIL_GUARD_API_KEY",
        timeout: float = 10.0,
        max_retries: int = 2,
        max_tokens: int = 32,
        top_logprobs: int = 5,
        max_concurrency: int = 16,
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
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0 or max_tokens < 1 or max_concurrency < 1:
            raise ConfigurationError(
                "max_retries must be >= 0, max_tokens and max_concurrency >= 1"
            )
        if not 0 <= top_logprobs <= _MAX_TOP_LOGPROBS:
            raise ConfigurationError(f"top_logprobs must be in 0..{_MAX_TOP_LOGPROBS}")
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.top_logprobs = top_logprobs
        self.max_concurrency = max_concurrency
        # keep any query (e.g. an api-version) on the endpoint, append to the path only
        self._url = root.copy_with(path=root.path.rstrip("/") + "/chat/completions")
        self._public_url = _public_url(self._url)
        self._public_base_url = _public_url(root)
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
        backoff = retry_wait or wait_random_exponential(multiplier=0.1, max=2)
        policy: dict[str, Any] = {
            "stop": stop_after_attempt(max_retries + 1),
            "wait": _wait_with_retry_after(backoff),
            "retry": retry_if_exception(_is_retryable),
            "reraise": True,
        }
        # One policy, two drivers. Each call runs on a .copy(): tenacity keeps its
        # iteration state per thread, which concurrent asyncio tasks would share.
        self._retrying = Retrying(**policy)
        self._aretrying = AsyncRetrying(**policy)

    @property
    def model_id(self) -> str:
        """The served model name sent in every request."""
        return self.model

    def __repr__(self) -> str:
        return f"RemoteQwen3Guard(base_url={self._public_base_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ shared

    def _body(self, guard_input: GuardInput) -> dict[str, Any]:
        return build_request(
            guard_input,
            model=self.model,
            max_tokens=self.max_tokens,
            top_logprobs=self.top_logprobs,
        )

    def _give_up_logprobs(self, exc: GuardHTTPError, body: Mapping[str, Any]) -> bool:
        """Whether to resend without logprobs (remembered for this instance)."""
        if "logprobs" not in body or not _rejects_logprobs(exc):
            return False
        self.top_logprobs = 0
        return True

    def _verdict(self, choice: Mapping[str, Any], guard_input: GuardInput, start: float) -> Verdict:
        latency = time.perf_counter() - start  # includes retries: what the caller waited
        return verdict_from_choice(choice, guard_input, model=self.model, latency_s=latency)

    # -------------------------------------------------------------------- sync

    def _sync_client(self) -> httpx.Client:
        if self._injected_client is not None:
            return self._injected_client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(limits=self._limits)
            return self._client

    def _post(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        with _transport_errors(self._public_url, self.timeout):
            response = self._sync_client().post(
                self._url, json=body, headers=self._headers, timeout=self.timeout
            )
        return read_choice(response, url=self._public_url, secret=self._api_key)

    def _classify_one(self, guard_input: GuardInput) -> Verdict:
        start = time.perf_counter()
        body = self._body(guard_input)
        try:
            choice = self._retrying.copy()(self._post, body)
        except GuardHTTPError as exc:
            if not self._give_up_logprobs(exc, body):
                raise
            choice = self._retrying.copy()(self._post, self._body(guard_input))
        return self._verdict(choice, guard_input, start)

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Judge every input, up to ``max_concurrency`` at once; verdicts in input order.

        If any input fails, the remaining ones are cancelled or allowed to finish and
        the first failed input's error is raised (no partial results).
        """
        items = list(inputs)
        if len(items) <= 1:
            return [self._classify_one(item) for item in items]
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(items)), "guardrail-remote")
        try:
            futures = [pool.submit(self._classify_one, item) for item in items]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            error = None if future.cancelled() else future.exception()
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def close(self) -> None:
        """Close the sync HTTP client created here (an injected one is left open)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> RemoteQwen3Guard:
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
        # Pooled connections belong to the loop that opened them: a new loop (e.g.
        # one asyncio.run() per call) gets a new client.
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient_loop is not loop:
            self._aclient = httpx.AsyncClient(limits=self._limits)
            self._aclient_loop = loop
        return self._aclient

    async def _apost(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        with _transport_errors(self._public_url, self.timeout):
            response = await self._async_client().post(
                self._url, json=body, headers=self._headers, timeout=self.timeout
            )
        return read_choice(response, url=self._public_url, secret=self._api_key)

    async def _aclassify_one(self, guard_input: GuardInput) -> Verdict:
        start = time.perf_counter()
        body = self._body(guard_input)
        choice: Mapping[str, Any]
        try:
            choice = await self._aretrying.copy()(self._apost, body)
        except GuardHTTPError as exc:
            if not self._give_up_logprobs(exc, body):
                raise
            choice = await self._aretrying.copy()(self._apost, self._body(guard_input))
        return self._verdict(choice, guard_input, start)

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Async twin of :meth:`classify`: concurrent requests bounded by ``max_concurrency``."""
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def bounded(item: GuardInput) -> Verdict:
            async with semaphore:
                return await self._aclassify_one(item)

        tasks = [asyncio.ensure_future(bounded(item)) for item in inputs]
        if not tasks:
            return []
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished tasks
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        return [task.result() for task in tasks]

    async def aclose(self) -> None:
        """Close the HTTP clients created here, async and sync (injected ones stay open)."""
        client, self._aclient, self._aclient_loop = self._aclient, None, None
        if client is not None:
            await client.aclose()
        self.close()

    async def __aenter__(self) -> RemoteQwen3Guard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
