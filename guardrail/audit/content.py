"""What an audit record keeps of the prompt and response text: the content modes.

``full`` keeps a text, ``truncated`` cuts it, ``hash`` keeps a sha256 (or, with
the audit key, an HMAC) and ``none`` drops it (:func:`content_view`). The write
side (:mod:`~guardrail.audit.build`) checks the mode once per record and calls
:func:`view_text` for each text.
"""

from __future__ import annotations

import hashlib

from guardrail.audit.keys import AuditKey
from guardrail.audit.params import CONTENT_MODES, DEFAULT_TRUNCATE_CHARS, ContentMode
from guardrail.errors import ConfigurationError

__all__ = ["check_content_mode", "content_view", "view_text"]


def content_view(
    text: str | None,
    mode: ContentMode | str,
    truncate_chars: int = DEFAULT_TRUNCATE_CHARS,
    *,
    key: AuditKey | None = None,
) -> str | None:
    """What an audit record keeps of ``text`` under a content mode.

    - ``full``: the text as it is;
    - ``truncated``: the first ``truncate_chars`` characters plus ``…[+K chars]``
      when ``K`` more were cut (short texts are kept whole);
    - ``hash``: without ``key``, ``sha256:<hex>`` of the UTF-8 text, enough to tell
      whether a known text was sent without storing it (an unkeyed hash: anyone can
      recover a short or guessable text by hashing candidates); with ``key``,
      ``hmac-sha256:<hex>`` (:meth:`AuditKey.content_hash
      <guardrail.audit.keys.AuditKey.content_hash>`), which only a holder of the
      key can compute, so only they can match or guess texts; a lone surrogate,
      which UTF-8 cannot encode, is hashed as its three-byte form (``surrogatepass``);
    - ``none``: ``None``.

    ``None`` text stays ``None`` in every mode (e.g. no response for a blocked prompt).
    """
    return view_text(text, check_content_mode(mode), truncate_chars, key)


def view_text(
    text: str | None, mode: ContentMode, truncate_chars: int, key: AuditKey | None = None
) -> str | None:
    """:func:`content_view` for a mode already checked (:func:`check_content_mode`)."""
    if mode == "full" or text is None:
        return text
    if mode == "truncated":
        if truncate_chars < 0:
            raise ConfigurationError(f"truncate_chars must be >= 0, got {truncate_chars}")
        extra = len(text) - truncate_chars
        return text if extra <= 0 else f"{text[:truncate_chars]}…[+{extra} chars]"
    if mode == "hash":
        data = text.encode("utf-8", "surrogatepass")
        if key is not None:
            return key.content_hash(data)
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return None


def check_content_mode(mode: str) -> ContentMode:
    """Return ``mode`` as a :data:`ContentMode`, or raise ConfigurationError naming the choices."""
    for known in CONTENT_MODES:
        if mode == known:
            return known
    raise ConfigurationError(
        f"unknown audit content mode {mode!r}; expected one of {', '.join(CONTENT_MODES)}"
    )
