"""What the gateway answers when it does not return a completion: OpenAI-shaped errors.

Every refusal has the body OpenAI's API sends, ``{"error": {"message", "type",
"param", "code"}}``, so any OpenAI SDK raises its usual typed exception
(``BadRequestError``, ``AuthenticationError``, ``RateLimitError``...). A call the
policy blocks (``block.behavior: raise``) is a 400 of type ``guardrail_blocked``
and code ``content_filter``. :func:`error_for` maps whatever a guarded call
raised to its status and body; nothing of a traceback, and no secret, ever
reaches the body (upstream errors were masked where they were raised).
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any

from guardrail.errors import (
    AuditError,
    BlockedError,
    ConfigurationError,
    GuardrailError,
    InputError,
)

__all__ = ["ApiError", "dump", "error_body", "error_for"]

_log = logging.getLogger("guardrail.gateway")


@dataclass
class ApiError(Exception):
    """A request the gateway refuses: HTTP status and the OpenAI error fields."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        """The JSON body: ``{"error": {...}}``."""
        return error_body(self.message, self.type, code=self.code, param=self.param)


def error_body(
    message: str, kind: str, *, code: str | None = None, param: str | None = None
) -> bytes:
    """An OpenAI error body, as JSON bytes."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def _upstream_status_error(exc: Exception) -> ApiError | None:
    """An ``openai.APIStatusError`` (duck-typed: status_code and body) as the caller's error."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return None
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    message = str(getattr(exc, "message", "") or exc)
    kind, code, param = "upstream_error", None, None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        kind = str(error.get("type") or kind)
        code = error.get("code") if isinstance(error.get("code"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
    headers: tuple[tuple[str, str], ...] = ()
    response = getattr(exc, "response", None)
    retry_after = getattr(getattr(response, "headers", None), "get", lambda _: None)("retry-after")
    if isinstance(retry_after, str):
        headers = (("retry-after", retry_after),)
    # The caller's own mistakes (4xx) keep their status; the upstream's failures are 502.
    return ApiError(
        status if 400 <= status < 500 else 502,
        f"upstream: {message}",
        kind,
        code=code,
        param=param,
        headers=headers,
    )


def error_for(exc: BaseException) -> ApiError:
    """The status and OpenAI error for what a guarded call raised."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BlockedError):
        return ApiError(400, str(exc), "guardrail_blocked", code="content_filter")
    if isinstance(exc, (InputError, ConfigurationError)):
        where = getattr(exc, "where", None)
        return ApiError(400, str(exc), "invalid_request_error", param=where)
    if isinstance(exc, AuditError):
        return ApiError(500, "the call's audit record could not be written", "audit_error")
    if isinstance(exc, GuardrailError):
        return ApiError(500, str(exc), "guardrail_error")
    if isinstance(exc, Exception):
        found = _upstream_status_error(exc)
        if found is not None:
            return found
        name = type(exc).__name__
        if name in ("APITimeoutError", "UpstreamTimeoutError"):
            return ApiError(
                504, "upstream: the request timed out", "upstream_error", code="timeout"
            )
        if name in ("APIConnectionError", "UpstreamConnectionError"):
            return ApiError(502, "upstream: connection failed", "upstream_error", code="connection")
        if name == "APIError":  # an error event in the upstream's stream (its key masked)
            return ApiError(502, f"upstream: {getattr(exc, 'message', exc)}", "upstream_error")
    # A bug, or a failure nothing maps: the caller gets a plain 500, the operator its
    # type and where it was raised (not its message, which may quote a secret).
    _log.error(
        "internal gateway error: %s\n%s",
        type(exc).__name__,
        "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
    )
    return ApiError(500, "internal gateway error", "server_error")


def dump(payload: Any) -> bytes:
    """A completion, chunk or plain value as compact JSON bytes."""
    to_json = getattr(payload, "model_dump_json", None)
    if callable(to_json):
        return str(to_json(exclude_unset=True)).encode()
    return json.dumps(payload, separators=(",", ":")).encode()
