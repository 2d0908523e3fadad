"""HTTP plumbing shared by the remote backends (guard server and reward server).

:class:`~guardrail.classifiers.remote.RemoteQwen3Guard` and
:class:`~guardrail.reward.remote.RemoteRewardScorer` each hold a :class:`PooledHTTP`
and own only their request bodies and response parsing. This package owns the rest:

- :mod:`.pool`: :class:`PooledHTTP`, the pooled clients (httpx for the sync path,
  aiohttp for the async one, injected ones used as they are and never closed), the
  credentials (never shown) and the credential-free URL for messages;
  :class:`HTTPBackend`, the lifecycle a backend exposes (``close``/``aclose``, the
  context managers, ``timeout``, ``model_id``);
- :mod:`.aio`: the async transport, one aiohttp session per event loop;
- :mod:`.errors`: what an outcome means whichever transport carried it: an error
  status (:func:`raise_for_status`, :func:`error_snippet`), a transport failure
  (:func:`transport_errors`), the :class:`HTTPResponse` both transports return;
- :mod:`.retry`: the retry policy (:class:`RetryPolicy`, one decision, a sync and
  an async driver): :data:`RETRYABLE_STATUS`, timeouts and connection failures,
  jittered backoff honouring a short ``Retry-After``, and no attempt started (nor
  backoff slept into) past the check's deadline.

Fanning a batch out over concurrent requests is
:mod:`guardrail.classifiers.batching`'s (:func:`~guardrail.classifiers.batching.run_batch`).

Failures are :class:`~guardrail.errors.RemoteGuardError` subclasses. Only the
remote backends import this package, so ``import guardrail`` imports neither httpx
nor aiohttp, and aiohttp loads only when an async request is first made.
"""

from __future__ import annotations

from guardrail.http.errors import (
    HTTPResponse,
    Reply,
    StatusError,
    TransportErrors,
    error_snippet,
    parse_base_url,
    public_url,
    raise_for_status,
    transport_errors,
)
from guardrail.http.pool import HTTPBackend, PooledHTTP
from guardrail.http.retry import (
    MAX_RETRY_AFTER_S,
    RETRYABLE_STATUS,
    RetryPolicy,
    RetryWait,
    StopAtDeadline,
    is_retryable,
    retry_after_s,
    wait_with_retry_after,
)

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_STATUS",
    "HTTPBackend",
    "HTTPResponse",
    "PooledHTTP",
    "Reply",
    "RetryPolicy",
    "RetryWait",
    "StatusError",
    "StopAtDeadline",
    "TransportErrors",
    "error_snippet",
    "is_retryable",
    "parse_base_url",
    "public_url",
    "raise_for_status",
    "retry_after_s",
    "transport_errors",
    "wait_with_retry_after",
]
