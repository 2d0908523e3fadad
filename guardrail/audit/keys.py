r"""The audit key: keyed content hashes and signed checkpoints.

One secret, read from the environment variable a policy names
(``audit.hmac_key_env``), serves two purposes, kept apart by a fixed label
before each message so that a MAC made for one can never pass as the other
(a prompt is attacker-chosen text; without the labels, the keyed hash of a
prompt shaped like a checkpoint would be a valid checkpoint signature):

- the ``hash`` content mode: ``HMAC-SHA256(key, "guardrail.audit.content\n" +
  UTF-8 text)``, written as ``hmac-sha256:<hex>`` (:meth:`AuditKey.content_hash`);
- checkpoints: ``HMAC-SHA256(key, "guardrail.audit.checkpoint\n" + canonical
  JSON of the checkpoint without its mac)`` (:meth:`AuditKey.sign`).

The key never appears in records, errors or reprs: :class:`AuditKey` shows
itself as ``AuditKey(<hidden>)`` and error messages name only the variable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from guardrail.errors import ConfigurationError

MIN_KEY_BYTES = 16
"""The shortest key accepted (32 random bytes, e.g. ``openssl rand -hex 32``, recommended)."""

HMAC_PREFIX = "hmac-sha256:"
"""How a keyed content hash or a checkpoint signature starts."""

_CONTENT_LABEL = b"guardrail.audit.content\n"
_CHECKPOINT_LABEL = b"guardrail.audit.checkpoint\n"


class AuditKey:
    """A secret key for keyed content hashes and checkpoint signatures; never shown.

    Build it from the environment with :meth:`from_env`, or from bytes (at least
    :data:`MIN_KEY_BYTES`). Equality is identity: two keys are never compared
    by value outside :meth:`verify`.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes):
            raise ConfigurationError(f"audit key must be bytes, not {type(key).__name__}")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigurationError(
                f"audit key too short ({len(key)} bytes): at least {MIN_KEY_BYTES} bytes "
                "are needed; use 32 random bytes, e.g. `openssl rand -hex 32`"
            )
        self._key = key

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> AuditKey:
        """The key held by environment variable ``name`` (its UTF-8 bytes).

        Raises :class:`~guardrail.errors.ConfigurationError` naming the variable
        (never its value) when it is unset, empty or too short.
        """
        env = os.environ if environ is None else environ
        value = env.get(name)
        if not value:
            raise ConfigurationError(
                f"audit key: environment variable {name} is not set (or is empty); "
                "set it to a secret of at least 32 random bytes, e.g. `openssl rand -hex 32`"
            )
        try:
            return cls(value.encode("utf-8"))
        except ConfigurationError as exc:
            raise ConfigurationError(f"audit key from {name}: {exc}") from None
        except UnicodeEncodeError:
            raise ConfigurationError(f"audit key from {name}: not encodable as UTF-8") from None

    def content_hash(self, data: bytes) -> str:
        """``hmac-sha256:<hex>`` of a text's UTF-8 bytes, as the ``hash`` content mode keeps it."""
        return HMAC_PREFIX + self._mac(_CONTENT_LABEL, data)

    def sign(self, body: str) -> str:
        """The signature of a checkpoint's canonical JSON (without its ``mac``)."""
        return HMAC_PREFIX + self._mac(_CHECKPOINT_LABEL, body.encode("utf-8"))

    def verify(self, body: str, mac: str) -> bool:
        """Whether ``mac`` is this key's signature of ``body`` (constant-time comparison)."""
        return hmac.compare_digest(self.sign(body), mac)

    def _mac(self, label: bytes, data: bytes) -> str:
        return hmac.new(self._key, label + data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "AuditKey(<hidden>)"

    __str__ = __repr__

    def __copy__(self) -> AuditKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> AuditKey:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # A key is not pickled (a pickle is an easy way for a secret to reach a file).
        raise TypeError("an AuditKey cannot be pickled; read it from the environment instead")
