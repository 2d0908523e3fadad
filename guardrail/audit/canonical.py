"""Canonical JSON: the one serialisation audit records are hashed and written in.

Canonical JSON is ``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8. Text that is not valid Unicode (a lone
surrogate such as ``"\udc80"``, which UTF-8 cannot encode) is kept losslessly:
canonical JSON writes each lone surrogate as its JSON escape (the six
characters ``\udc80``), which every JSON reader turns back into the same string,
and a surrogate pair (two code units of UTF-16) as the one character it
encodes, as a JSON reader reads it. Text without surrogates, the usual case, is
unaffected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from guardrail.errors import AuditError

__all__ = ["canonical_json", "encode_canonical"]

# Built once: json.dumps with non-default options constructs a new encoder per call.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
)

try:  # CPython: call the C encoder JSONEncoder.encode would use, built once.
    from _json import encode_basestring as _c_encode_string
    from _json import make_encoder as _c_make_encoder
except ImportError:  # pragma: no cover - other interpreters: JSONEncoder.encode
    _C_ENCODE: Any = None
else:
    # The same arguments JSONEncoder.iterencode passes for _ENCODER's options (so the
    # output is byte-identical), except that it skips the check for circular
    # references (its id() bookkeeping costs ~10% of an encode): a cycle ends in
    # RecursionError instead, reported like any other unserialisable value.
    _C_ENCODE = _c_make_encoder(
        None, _ENCODER.default, _c_encode_string, None, ":", ",", True, False, False
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(encoded: str) -> str:
    r"""JSON text with its surrogates made UTF-8-safe (see the module notes).

    Surrogates occur only inside JSON strings (everything else is ASCII), where a
    ``\uXXXX`` escape stands for the code unit itself.
    """
    joined = encoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", joined)


def encode_canonical(data: Any) -> tuple[str, bytes]:
    """Canonical JSON of a JSON value, as text and as the UTF-8 bytes hashed, encoded once."""
    try:
        if _C_ENCODE is not None and type(data) is dict:
            encoded = "".join(_C_ENCODE(data, 0))
        else:
            encoded = _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise AuditError(f"audit record is not serialisable as JSON: {exc}") from exc
    try:
        return encoded, encoded.encode("utf-8")
    except UnicodeEncodeError:  # surrogates, which UTF-8 cannot hold (see the module notes)
        encoded = _escape_surrogates(encoded)
        return encoded, encoded.encode("utf-8")


def canonical_json(data: Mapping[str, Any]) -> str:
    """The one serialisation records are written in; always encodable as UTF-8.

    Raises :class:`~guardrail.errors.AuditError` for values JSON cannot hold
    exactly (NaN, infinities, non-JSON types, circular references).
    """
    return encode_canonical(data)[0]
