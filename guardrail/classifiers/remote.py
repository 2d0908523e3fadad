"""Qwen3Guard-Gen behind an OpenAI-compatible server (vLLM, SGLang): the scale-out backend.

The server applies the checkpoint's own chat template, so requests carry plain
messages; their content is escaped first because the server tokenizes the rendered
prompt with special tokens parsed (see :func:`~guardrail.qwen3guard.escape_markup`).

Building the request and reading the response are pure functions shared by the
sync and async paths; only the HTTP call and the retry driver differ (httpx's own
pattern): the sync path posts through httpx, the async one through aiohttp. This
module owns those and the logprobs fallback; the HTTP plumbing (pooled clients,
error mapping, retry policy) is :mod:`guardrail.http`'s, the bounded batches
:mod:`.batching`'s. Failures surface as :class:`~guardrail.errors.RemoteGuardError`
subclasses, and an answer that is not a verdict raises
:class:`~guardrail.errors.VerdictParseError`: nothing here ever defaults to Safe.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardrail import deadline as deadlines
from guardrail.classifiers.batching import arun_batch, run_batch
from guardrail.errors import ConfigurationError, GuardHTTPError, RemoteGuardError
from guardrail.http import MAX_RETRY_AFTER_S as MAX_RETRY_AFTER_S
from guardrail.http import (
    RETRYABLE_STATUS,
    HTTPBackend,
    HTTPResponse,
    PooledHTTP,
    RetryPolicy,
    RetryWait,
    StatusError,
    error_snippet,
    parse_base_url,
    public_url,
    raise_for_status,
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
from guardrail.secrets import Masker
from guardrail.types import Verdict

if TYPE_CHECKING:
    import aiohttp
    import httpx

__all__ = ["RETRYABLE_STATUS", "RemoteQwen3Guard"]

_MAX_TOP_LOGPROBS = 20  # the OpenAI limit, and vLLM's default --max-logprobs
_STOP_SUFFIX = re.compile(f"(?:{re.escape(IM_END)}|{re.escape(ENDOFTEXT)})\\s*$")


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


def read_choice(
    response: HTTPResponse, *, url: str, secret: str | None = None
) -> Mapping[str, Any]:
    """Check the status and return ``choices[0]`` of a chat-completion response.

    Raises :class:`~guardrail.errors.GuardHTTPError` for an error status (its
    ``__cause__`` is a :class:`~guardrail.http.StatusError` carrying the response) and
    :class:`~guardrail.errors.RemoteGuardError` for a body that is not a completion.
    """
    raise_for_status(response, server="guard server", url=url, secret=secret)
    try:
        data = response.json()
    except ValueError as exc:
        raise RemoteGuardError(
            f"guard server {url} returned invalid JSON: {error_snippet(response, secret)}",
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
    choice: Mapping[str, Any],
    guard_input: GuardInput,
    *,
    model: str,
    latency_s: float,
    mask: Callable[[str], str] | None = None,
) -> Verdict:
    """Parse ``choices[0]`` into a verdict, with probabilities when logprobs match the text.

    An empty ``content`` falls back to ``reasoning_content`` / ``reasoning``: a
    reasoning parser on the server can move the whole verdict there. ``mask``
    (the backend's :class:`~guardrail.secrets.Masker`) is applied to the text
    first, so a server that echoes its API key never puts it into the verdict's
    raw text or a :class:`~guardrail.errors.VerdictParseError`.
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
    if mask is not None:
        text = mask(text)
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


# ------------------------------------------------------------------ logprobs


def _rejects_logprobs(exc: GuardHTTPError) -> bool:
    """Tell a 400 whose body mentions logprobs: the server does not support them."""
    cause = exc.__cause__
    body = cause.response.text if isinstance(cause, StatusError) else str(exc)
    return exc.status_code == 400 and "logprob" in body.lower()


# -------------------------------------------------------------------- the backend


class RemoteQwen3Guard(HTTPBackend):
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
    ``retry_wait``), honouring a short ``Retry-After``; within a guarded check no
    attempt starts, and no request runs, past the check's deadline
    (:mod:`guardrail.deadline`). Batches run up to
    ``max_concurrency`` requests at once.

    Sync calls go through an httpx client, async ones through an aiohttp session
    (one per event loop, created inside it) holding up to ``max_concurrency``
    connections. Injected clients are used as they are and never closed here:
    ``http_client`` (``httpx.Client``) and ``async_http_client`` (an
    ``aiohttp.ClientSession``, or an ``httpx.AsyncClient``). The clients created
    here are closed by :meth:`aclose` (or ``async with``); :meth:`close` (or
    ``with``) closes the sync client and the sessions of event loops that are no
    longer running.
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
        async_http_client: httpx.AsyncClient | aiohttp.ClientSession | None = None,
        retry_wait: RetryWait | None = None,
    ) -> None:
        root = parse_base_url(base_url)
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0 or max_tokens < 1 or max_concurrency < 1:
            raise ConfigurationError(
                "max_retries must be >= 0, max_tokens and max_concurrency >= 1"
            )
        if not 0 <= top_logprobs <= _MAX_TOP_LOGPROBS:
            raise ConfigurationError(f"top_logprobs must be in 0..{_MAX_TOP_LOGPROBS}")
        self.model = model
        self.max_tokens = max_tokens
        self.top_logprobs = top_logprobs
        self.max_concurrency = max_concurrency
        self._public_base_url = public_url(root)
        self._http = PooledHTTP(
            # keep any query (e.g. an api-version) on the endpoint, append to the path only
            root.copy_with(path=root.path.rstrip("/") + "/chat/completions"),
            server="guard server",
            timeout=timeout,
            max_connections=max_concurrency,
            api_key=api_key,
            api_key_env=api_key_env,
            http_client=http_client,
            async_http_client=async_http_client,
        )
        self._retry = RetryPolicy(max_retries, retry_wait)
        self._mask = Masker(self.secrets)

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

    def _read(self, response: HTTPResponse) -> Mapping[str, Any]:
        return read_choice(response, url=self._http.public_url, secret=self._http.api_key)

    def _verdict(self, choice: Mapping[str, Any], guard_input: GuardInput, start: float) -> Verdict:
        latency = time.perf_counter() - start  # includes retries: what the caller waited
        return verdict_from_choice(
            choice, guard_input, model=self.model, latency_s=latency, mask=self._mask
        )

    # -------------------------------------------------------------------- sync

    def _post(self, body: Mapping[str, Any], deadline: float | None) -> Mapping[str, Any]:
        return self._read(self._http.post(body, deadline=deadline))

    def _classify_one(self, guard_input: GuardInput, deadline: float | None = None) -> Verdict:
        start = time.perf_counter()
        body = self._body(guard_input)
        try:
            choice = self._retry.call(
                functools.partial(self._post, body, deadline), deadline=deadline
            )
        except GuardHTTPError as exc:
            if not self._give_up_logprobs(exc, body):
                raise
            body = self._body(guard_input)
            choice = self._retry.call(
                functools.partial(self._post, body, deadline), deadline=deadline
            )
        return self._verdict(choice, guard_input, start)

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Judge every input, up to ``max_concurrency`` at once; verdicts in input order.

        If any input fails, the remaining ones are cancelled or allowed to finish and
        the first failed input's error is raised (no partial results).
        """
        one = functools.partial(self._classify_one, deadline=deadlines.current())
        return run_batch(one, list(inputs), self.max_concurrency, "guardrail-remote")

    # ------------------------------------------------------------------- async

    async def _apost(self, body: Mapping[str, Any], deadline: float | None) -> Mapping[str, Any]:
        return self._read(await self._http.apost(body, deadline=deadline))

    async def _aclassify_one(
        self, guard_input: GuardInput, deadline: float | None = None
    ) -> Verdict:
        start = time.perf_counter()
        started = time.monotonic()
        body = self._body(guard_input)
        choice: Mapping[str, Any]
        # The first attempt inline: a call that succeeds builds no retry machinery.
        try:
            choice = await self._apost(body, deadline)
        except Exception as exc:
            error = exc
        else:
            return self._verdict(choice, guard_input, start)
        try:
            choice = await self._retry.aretry(
                functools.partial(self._apost, body, deadline),
                error,
                started=started,
                deadline=deadline,
            )
        except GuardHTTPError as exc:
            if not self._give_up_logprobs(exc, body):
                raise
            body = self._body(guard_input)
            choice = await self._retry.acall(
                functools.partial(self._apost, body, deadline), deadline=deadline
            )
        return self._verdict(choice, guard_input, start)

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Async twin of :meth:`classify`: concurrent requests bounded by ``max_concurrency``."""
        if len(inputs) == 1:  # a guarded call's one input: no batch to run (as arun_batch does)
            return [await self._aclassify_one(inputs[0], deadlines.current())]
        one = functools.partial(self._aclassify_one, deadline=deadlines.current())
        return await arun_batch(one, list(inputs), self.max_concurrency)
