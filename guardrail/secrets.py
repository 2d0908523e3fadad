"""Keeping credentials out of error messages, decisions and audit records.

Servers echo what they were sent: a proxy answering 401 may quote the
``Authorization`` header, a misconfigured guard server may repeat its request.
Every text built from something a server said passes through one function,
:meth:`Masker.__call__` (:func:`mask_secrets` for a one-off), before it becomes an
error message, a decision's reason or part of an audit record. It replaces:

- each known secret (an API key the SDK sends) wherever it appears;
- any ``Bearer <token>`` credential, known or not;
- the user-info of any URL (``https://user:password@host`` -> ``https://***@host``).

Secrets shorter than :data:`MIN_SECRET_CHARS` are not masked as bare text (a
placeholder key such as ``"EMPTY"`` is no secret, and masking every ``x`` would
destroy the message); their ``Bearer`` form still is.

Who knows which secrets: a :class:`~guardrail.guard.Guard` builds its masker from
the keys of its guard and reward backends (anything with a :class:`HasSecrets`
``secrets`` attribute), and a wrapped client adds the client's own ``api_key``
for its calls. No registry is shared between guards.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MASK",
    "MIN_SECRET_CHARS",
    "HasSecrets",
    "Masker",
    "mask_exception",
    "mask_secrets",
    "secrets_of",
]

MASK = "***"
"""What a masked secret reads as."""

MIN_SECRET_CHARS = 8
"""Known secrets shorter than this are not masked as bare text (see the module notes)."""

# Credentials recognised without being known: an Authorization scheme and its token,
# and the user-info part of a URL.
_COMMON = (
    r"(?P<scheme>\b(?i:bearer)\s+)[A-Za-z0-9\-._~+/]+=*"
    r"|(?P<url>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]+@"
)


@runtime_checkable
class HasSecrets(Protocol):
    """A backend that sends credentials: ``secrets`` are the ones to mask in what it reports."""

    @property
    def secrets(self) -> tuple[str, ...]:
        """The credentials this object sends (API keys), never shown anywhere."""
        ...


def secrets_of(*objects: object) -> tuple[str, ...]:
    """The secrets of every object that declares some (:class:`HasSecrets`); others are skipped."""
    found: list[str] = []
    for obj in objects:
        if isinstance(obj, HasSecrets):
            found.extend(s for s in obj.secrets if isinstance(s, str))
    return tuple(found)


def _replace(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    if scheme is not None:
        return scheme + MASK
    url = match.group("url")
    if url is not None:
        return f"{url}{MASK}@"
    return MASK


class Masker:
    """Masks known secrets and common credential forms in text; immutable and thread-safe.

    ``Masker(["sk-..."])("... Bearer sk-... ...")`` -> ``"... Bearer *** ..."``.
    ``repr()`` shows how many secrets it knows, never which.
    """

    __slots__ = ("_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        known = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret containing another is masked whole.
        self._secrets = tuple(sorted(known, key=lambda s: (-len(s), s)))
        alternatives = [_COMMON, *(re.escape(s) for s in self._secrets)]
        self._pattern = re.compile("|".join(alternatives))

    @property
    def secrets(self) -> tuple[str, ...]:
        """The known secrets (those long enough to be masked as bare text)."""
        return self._secrets

    def __call__(self, text: str) -> str:
        """``text`` with every secret and credential form replaced by :data:`MASK`."""
        return self._pattern.sub(_replace, text)

    @classmethod
    def of(cls, *objects: object) -> Masker:
        """A masker of every secret the objects declare (:func:`secrets_of`)."""
        return cls(secrets_of(*objects))

    def with_secrets(self, *secrets: str | None) -> Masker:
        """A masker that also knows ``secrets`` (this one when they add nothing)."""
        extra = [s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS]
        if all(s in self._secrets for s in extra):
            return self
        return Masker((*self._secrets, *extra))

    def __repr__(self) -> str:
        return f"<Masker of {len(self._secrets)} secret(s)>"


NO_SECRETS = Masker()
"""A masker that knows no secrets (it still masks the common credential forms)."""


def mask_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with ``secrets`` and common credential forms masked (see :class:`Masker`)."""
    return Masker(secrets)(text)


def _mask_value(value: Any, mask: Callable[[str], str], depth: int = 0) -> Any:
    """A JSON-like value with its strings masked; the same object when nothing changed."""
    if isinstance(value, str):
        return mask(value)
    if depth > 32:
        return value
    if isinstance(value, Mapping):
        items = {k: _mask_value(v, mask, depth + 1) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        return items if changed else value
    if isinstance(value, (list, tuple)):
        masked = [_mask_value(v, mask, depth + 1) for v in value]
        if all(m is v for m, v in zip(masked, value, strict=True)):
            return value
        return type(value)(masked) if isinstance(value, tuple) else masked
    return value


def mask_exception(exc: BaseException, mask: Callable[[str], str]) -> BaseException:
    """Mask secrets in an exception's message, in place, and in the exceptions it chains.

    The exception keeps its type and identity (callers still catch what they
    expect); its ``args`` and, where present, its ``message`` and ``body``
    attributes (as ``openai``'s API errors have) are masked. Returns ``exc``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        _mask_one(current, mask)
        current = current.__cause__ or current.__context__
    return exc


def _mask_one(exc: BaseException, mask: Callable[[str], str]) -> None:
    if isinstance(exc, UnicodeError):  # args are (encoding, object, ...), not a message
        return
    args = _mask_value(exc.args, mask)
    if args is not exc.args:
        exc.args = args
    for name in ("message", "body"):
        value = getattr(exc, name, None)
        if value is None:
            continue
        masked = _mask_value(value, mask)
        if masked is not value:
            # a read-only attribute stays as it is (args are masked all the same)
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, name, masked)
