"""What an attempt's outcome means, whichever transport carried it.

A response (an ``httpx.Response`` on the sync path, a :class:`Reply` read from
aiohttp on the async one; both are :class:`HTTPResponse`) with an error status
becomes :class:`~guardrail.errors.GuardHTTPError` (:func:`raise_for_status`),
whose ``__cause__`` is a :class:`StatusError` carrying the response; a transport
failure becomes :class:`~guardrail.errors.RemoteGuardTimeoutError` or
:class:`~guardrail.errors.GuardConnectionError` (:func:`transport_errors`, given
the exception classes of the transport in use). Messages name the server, never
show credentials, and mask any the server echoes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from guardrail.errors import (
    ConfigurationError,
    GuardConnectionError,
    GuardHTTPError,
    RemoteGuardTimeoutError,
)
from guardrail.secrets import Masker

__all__ = [
    "HTTPResponse",
    "Reply",
    "StatusError",
    "TransportErrors",
    "error_snippet",
    "mapped_transport_error",
    "parse_base_url",
    "public_url",
    "raise_for_status",
    "transport_errors",
]

_SNIPPET_CHARS = 200


class HTTPResponse(Protocol):
    """What the backends read from a response; ``httpx.Response`` and :class:`Reply` are ones."""

    @property
    def status_code(self) -> int:
        """The HTTP status."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive keys)."""

    @property
    def text(self) -> str:
        """The body as text."""

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` when it is not JSON."""


@dataclass(frozen=True)
class Reply:
    """A response read whole: status, headers and body (the async transport's result)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    charset: str | None = None

    @property
    def text(self) -> str:
        """The body decoded with its charset (UTF-8 by default), undecodable bytes replaced."""
        return self.content.decode(self.charset or "utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` when it is not JSON.

        Parsed by orjson, which reads an integer beyond 64 bits as a float (the
        backends read every number through ``float()``); json reads the rest.
        """
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            # what orjson refuses and json reads (UTF-16/32, NaN, huge integers, lone
            # surrogate escapes) reads as before; anything else raises json's ValueError
            return json.loads(self.content)


class StatusError(Exception):
    """The cause of a :class:`~guardrail.errors.GuardHTTPError`: the response that failed.

    The retry policy reads its ``Retry-After`` here.
    """

    def __init__(self, message: str, response: HTTPResponse) -> None:
        super().__init__(message)
        self.response = response


# --------------------------------------------------------------------------- urls


def public_url(url: httpx.URL) -> str:
    """Drop credentials and query from a URL shown in messages."""
    return str(url.copy_with(username=None, password=None, query=None))


def parse_base_url(base_url: str) -> httpx.URL:
    """Parse a backend's ``base_url``; :class:`ConfigurationError` unless it is http(s)."""
    try:
        root = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"invalid base_url: {exc}") from None
    if root.scheme not in ("http", "https") or not root.host:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {public_url(root)!r}")
    return root


# ------------------------------------------------------------------------ statuses


def error_snippet(response: HTTPResponse, secret: str | None) -> str:
    """Shorten the server's error message to one line (the body only, never headers).

    ``secret`` (the key the request carried) and any credential the body echoes
    are masked (:class:`~guardrail.secrets.Masker`) before the line is cut short.
    """
    text = response.text
    message: Any = None
    with contextlib.suppress(ValueError):
        data = response.json()
        if isinstance(data, Mapping):
            error = data.get("error", data)
            message = error.get("message") if isinstance(error, Mapping) else error
            message = message or data.get("detail") or data.get("message")
    # A proxy could echo the request back: mask before cutting, so no prefix of a key survives.
    snippet = Masker([secret])(" ".join(str(message or text).split()))
    return snippet if len(snippet) <= _SNIPPET_CHARS else snippet[:_SNIPPET_CHARS] + "..."


def raise_for_status(response: HTTPResponse, *, server: str, url: str, secret: str | None) -> None:
    """Raise :class:`GuardHTTPError` for an error status, saying which ``server`` answered.

    Its ``__cause__`` is a :class:`StatusError` carrying the response (the retry
    policy reads ``Retry-After`` there).
    """
    code = response.status_code
    if 200 <= code < 300:
        return
    # the message names the public URL only: httpx's own raise_for_status() would
    # show the full URL, credentials included, in tracebacks
    raise GuardHTTPError(
        f"{server} {url} answered HTTP {code}: {error_snippet(response, secret)}",
        url=url,
        status_code=code,
    ) from StatusError(f"HTTP {code}", response)


# ---------------------------------------------------------------------- transports


@dataclass(frozen=True)
class TransportErrors:
    """A transport's exception classes: those that mean a timeout, those that mean a failure.

    Timeouts are tested first (aiohttp's ``ServerTimeoutError`` is both).
    """

    timeouts: tuple[type[BaseException], ...]
    failures: tuple[type[BaseException], ...]


HTTPX_ERRORS = TransportErrors(timeouts=(httpx.TimeoutException,), failures=(httpx.TransportError,))
"""httpx's: its timeouts, and every other transport error."""


def mapped_transport_error(
    exc: BaseException, server: str, url: str, timeout: float, errors: TransportErrors
) -> Exception | None:
    """The guard's error for a transport's timeout or failure ``exc``; ``None`` for others."""
    if isinstance(exc, errors.timeouts):
        return RemoteGuardTimeoutError(
            f"{server} {url} did not answer within {timeout:g} s ({type(exc).__name__})",
            url=url,
        )
    if isinstance(exc, errors.failures):
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return GuardConnectionError(f"could not reach {server} {url}: {detail}", url=url)
    return None


@contextlib.contextmanager
def transport_errors(
    server: str, url: str, timeout: float, errors: TransportErrors = HTTPX_ERRORS
) -> Iterator[None]:
    """Map a transport's timeouts and failures (``errors``) onto the guard's error types."""
    try:
        yield
    except Exception as exc:
        mapped = mapped_transport_error(exc, server, url, timeout, errors)
        if mapped is None:
            raise
        raise mapped from exc
