"""How a sealed record is laid out on its line, in each chain version.

**Version 2** (written by this release). The chain fields come first, at fixed
byte offsets, and the record's hash covers the line's exact bytes::

    {"chain":2,"prev_hash":"<64 hex>"[,"index":"<64 hex>"][,"kind":...],<members>,"hash":"<64 hex>"}

- ``prev_hash`` starts at byte 24 of every line;
- ``index`` (optional) is the SHA-256 of the log's index file through this
  record's row (:mod:`~guardrail.audit.index`), so the index is covered by the
  chain;
- ``kind`` (records that are not calls) comes next, so a reader tells a call
  from other records without parsing the line;
- ``<members>`` are the record's other fields as canonical JSON
  (:func:`~guardrail.audit.canonical.canonical_json`, keys sorted), braces removed;
- ``hash`` is the SHA-256 of the line's bytes before ``,"hash":"`` followed by
  ``}``: the line without its hash member, itself a JSON object.

Verifying a line is therefore a SHA-256 of its bytes and a few slices, with no
JSON parsing, and any byte changed anywhere in the line (the hash member
included) makes it fail. Any tool can still recompute a hash from the parsed
record (:func:`~guardrail.audit.chain.record_hash`): the layout is a function
of its fields.

**Version 1** (logs written before): the line is the canonical JSON of the
record (``prev_hash`` among the sorted keys) with ``"hash"`` appended; the hash
is over that canonical JSON, so a verifier proves the line is canonical before
trusting its bytes (:func:`v1_fast_hasher`). A line without a ``chain`` field is
version 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

CHAIN_VERSION = 2
"""The chain version this release writes (the ``chain`` field of each line)."""

CHAIN_FIELDS = frozenset({"chain", "prev_hash", "index", "hash"})
"""The fields a sink sets when it seals a record (any given with the record are replaced)."""

V2_PREFIX = b'{"chain":2,"prev_hash":"'
"""How every version-2 line starts."""
PREV_START = len(V2_PREFIX)
PREV_END = PREV_START + 64
_INDEX_MEMBER = b',"index":"'
INDEX_START = PREV_END + 1 + len(_INDEX_MEMBER)
INDEX_END = INDEX_START + 64
_KIND_MEMBER = b',"kind":'
HASH_MEMBER = b',"hash":"'
TAIL = len(HASH_MEMBER) + 64 + 2
"""The bytes of ``,"hash":"<64 hex>"}`` ending a line (without its newline)."""
MIN_V2 = PREV_END + 1 + TAIL
_HEX = frozenset(b"0123456789abcdef")


def is_hex64(value: bytes) -> bool:
    """Whether ``value`` is 64 lower-case hex digits (a SHA-256 as the chain writes it)."""
    return len(value) == 64 and _HEX.issuperset(value)


def v2_head(prev_hash: str, index: str | None, kind_json: bytes | None, members: bytes) -> bytes:
    """The bytes a version-2 hash covers, without the closing brace.

    ``kind_json`` is the canonical JSON of the record's ``kind`` (``None`` for a
    call) and ``members`` the canonical JSON of its other fields without braces.
    """
    parts = [V2_PREFIX, prev_hash.encode("ascii"), b'"']
    if index is not None:
        parts += (_INDEX_MEMBER, index.encode("ascii"), b'"')
    if kind_json is not None:
        parts += (_KIND_MEMBER, kind_json)
    if members:
        parts += (b",", members)
    return b"".join(parts)


def v2_digest(head: bytes) -> str:
    """The hash of a line whose :func:`v2_head` is ``head``."""
    return hashlib.sha256(head + b"}").hexdigest()


def v2_close(head: bytes, digest: str) -> bytes:
    """The whole line (without newline): ``head`` with the hash member appended."""
    return b"".join((head, HASH_MEMBER, digest.encode("ascii"), b'"}'))


def v2_shape(line: bytes) -> str | None:
    """What is wrong with a version-2 line's fixed layout; ``None`` when it is in place.

    ``line`` is without its newline. The hash itself is not checked here.
    """
    n = len(line)
    if n < MIN_V2 or line[PREV_END] != 0x22:  # '"' closing prev_hash
        return "the chain fields are not laid out as written"
    if line[n - TAIL : n - TAIL + len(HASH_MEMBER)] != HASH_MEMBER or line[n - 2 :] != b'"}':
        return "the line does not end with its hash member"
    if not is_hex64(line[PREV_START:PREV_END]):
        return "prev_hash is not 64 lower-case hex digits"
    return None


def v2_hash(line: bytes) -> str:
    """The hash a version-2 line (without newline, layout checked) should carry."""
    h = hashlib.sha256(memoryview(line)[: len(line) - TAIL])
    h.update(b"}")
    return h.hexdigest()


def v2_index(line: bytes) -> bytes | None:
    """The ``index`` digest of a version-2 line, or ``None`` when it has none."""
    if line[PREV_END + 1 : INDEX_START] == _INDEX_MEMBER and line[INDEX_END] == 0x22:
        return line[INDEX_START:INDEX_END]
    return None


def v2_has_kind(line: bytes) -> bool:
    """Whether a version-2 line is of a record with a ``kind`` (not a call)."""
    at = INDEX_END + 1 if v2_index(line) is not None else PREV_END + 1
    return line[at : at + len(_KIND_MEMBER)] == _KIND_MEMBER


# ------------------------------------------------------------- version 1, read only

FastHasher = Callable[[bytes], "tuple[dict[str, Any], str] | None"]

_V1_TAIL = len(HASH_MEMBER) + 64 + len(b'"}\n')


def v1_fast_hasher() -> FastHasher | None:
    """A fast hasher of version-1 lines (raw bytes with newline), or ``None`` without orjson.

    A version-1 hash is over the record's canonical JSON. A line written by a
    sink is that canonical JSON with the hash member appended, so its hash is
    the SHA-256 of the line's bytes minus that member, *provided* those bytes
    are exactly the canonical JSON of the parsed record. orjson proves it, far
    faster than the ``json`` module: the record is parsed, re-encoded with
    sorted keys and compared byte for byte with the line. orjson's compact
    sorted output is byte-identical to the canonical form except for floats
    below 1e-4 or in exponent form; a line holding such a number, or anything
    orjson cannot read or writes differently, returns ``None`` and goes the
    slow path, which hashes exactly as before. Either way the bytes hashed are
    the canonical JSON, and the result is the same.
    """
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency
        return None
    loads = orjson.loads
    dumps = orjson.dumps
    sort_keys = orjson.OPT_SORT_KEYS
    sha256 = hashlib.sha256

    def hashed(line: bytes) -> tuple[dict[str, Any], str] | None:
        n = len(line)
        if (
            n <= _V1_TAIL
            or line[n - _V1_TAIL : n - _V1_TAIL + len(HASH_MEMBER)] != HASH_MEMBER
            or line[n - 3 :] != b'"}\n'
            or b"\r" in line  # text readers split lines there: the slow path does too
        ):
            return None
        try:
            data = loads(line)
        except ValueError:
            return None
        if type(data) is not dict or "chain" in data:
            return None
        stored = data.pop("hash", None)
        body = line[: n - _V1_TAIL] + b"}"
        if (
            type(stored) is not str
            or not is_hex64(stored.encode())
            or line[n - 67 : n - 3] != stored.encode()
        ):
            data["hash"] = stored
            return None
        try:
            same = dumps(data, option=sort_keys) == body
        except TypeError:  # e.g. an integer beyond 64 bits
            same = False
        data["hash"] = stored
        if not same or not _plain_floats(body):
            return None
        return data, sha256(body).hexdigest()

    return hashed


def _plain_floats(body: bytes) -> bool:
    """Whether no number in ``body`` can be written differently by json and orjson.

    They differ only for floats below 1e-4 (``1e-05`` / ``0.00001``) and in the
    exponent's digits (``1.5e-07`` / ``1.5e-7``). Conservative: a string that
    merely looks like such a number sends the line the slow path, nothing worse.
    """
    if b"0.0000" in body:
        return False
    for marker in (b"e-", b"e+"):
        i = body.find(marker)
        while i > 0:
            if 48 <= body[i - 1] <= 57:  # a digit before the e: a number's exponent
                return False
            i = body.find(marker, i + 2)
    return True
