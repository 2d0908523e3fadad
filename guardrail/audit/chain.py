"""The hash chain that makes an audit log tamper-evident.

Every record carries ``prev_hash``, the ``hash`` of the record before it (the
first record of a log has :data:`GENESIS_HASH`), and ``hash``, the SHA-256 of
the record's canonical JSON without its ``hash`` field. Canonical JSON is
``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8, so any tool can recompute a hash from the parsed line.

Text that is not valid Unicode (a lone surrogate such as ``"\udc80"``, which
UTF-8 cannot encode) is kept losslessly: canonical JSON writes each lone
surrogate as its JSON escape (the six characters ``\udc80``), which every JSON
reader turns back into the same string, and a surrogate pair (two code units
of UTF-16) as the one character it encodes, as a JSON reader reads it. Text
without surrogates, the usual case, is unaffected.

A written line is exactly that canonical JSON with ``"hash":"<hex>"`` appended
as the last member: the record is encoded once per write (the dominant cost),
and the hashed bytes are the line minus its last member.

What the chain detects, and where :func:`verify_chain` reports it:

- an edited record: its own hash no longer matches (``hash_mismatch`` at that line);
- a deleted, inserted or reordered record: the next line's ``prev_hash`` no
  longer names the line before it (``prev_hash_mismatch``);
- a truncated or garbled line: ``bad_json``.

What it cannot detect alone: records cut from the END of a log, or a log
rewritten wholesale with fresh hashes. Keep the last ``hash``
(:attr:`VerifyResult.head`) and the count somewhere else to anchor the log
against those: a checkpoint file (:mod:`~guardrail.audit.checkpoints`), checked
by :func:`~guardrail.audit.verify.verify_log`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from guardrail.audit.record import AuditRecord
from guardrail.errors import AuditError

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record of a log."""


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


def _canonical(data: Mapping[str, Any]) -> tuple[str, bytes]:
    """Canonical JSON as text and as the UTF-8 bytes hashed, encoded once."""
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
    """The one serialisation hashes are computed over; always encodable as UTF-8.

    Raises :class:`~guardrail.errors.AuditError` for values JSON cannot hold
    exactly (NaN, infinities, non-JSON types, circular references).
    """
    return _canonical(data)[0]


def _with_hash(body_json: str, digest: str) -> str:
    # body_json is a non-empty JSON object: close it with the hash as last member.
    return f'{body_json[:-1]},"hash":"{digest}"}}'


def _body(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a record's JSON dict without its ``hash`` field."""
    body = dict(data)
    body.pop("hash", None)
    return body


def record_line(data: Mapping[str, Any]) -> str:
    """The line a sealed record is written as (its chain fields as they are)."""
    return _with_hash(canonical_json(_body(data)), str(data.get("hash", "")))


def record_hash(data: Mapping[str, Any]) -> str:
    """SHA-256 hex of a record's canonical JSON without its ``hash`` field."""
    return hashlib.sha256(_canonical(_body(data))[1]).hexdigest()


@dataclass(frozen=True)
class SealedRecord:
    """A record placed in the chain: the line to write and its chain fields."""

    line: str
    """Canonical JSON with ``prev_hash`` set and ``hash`` appended, without a newline."""
    prev_hash: str
    hash: str


class HashChain:
    """The head of one chain: seal a record after it, advance once it is written.

    Sealing and advancing are separate so a failed write leaves the head where
    it was and the next record chains to the last one actually written. Not
    thread-safe by itself: sinks hold a lock around seal, write and advance so
    the chain order equals the write order.
    """

    def __init__(self, head: str = GENESIS_HASH) -> None:
        self.head = head

    def seal(self, data: Mapping[str, Any]) -> SealedRecord:
        """Chain a record's JSON dict (``record_dict(...)``, ``AuditRecord.to_json_dict()``).

        ``data`` is not modified: the line is encoded from a copy with ``prev_hash`` set.
        """
        head = self.head
        body = _body(data)
        body["prev_hash"] = head
        encoded, raw = _canonical(body)
        digest = hashlib.sha256(raw).hexdigest()
        return SealedRecord(line=_with_hash(encoded, digest), prev_hash=head, hash=digest)

    def advance(self, sealed: SealedRecord) -> None:
        """Make a written record the new head."""
        if sealed.prev_hash != self.head:
            raise AuditError("audit chain advanced out of order (a sink wrote without its lock)")
        self.head = sealed.hash


ProblemKind = Literal["bad_json", "hash_mismatch", "prev_hash_mismatch"]


@dataclass(frozen=True)
class ChainProblem:
    """The first thing wrong with a log."""

    line: int
    """1-based line number."""
    kind: ProblemKind
    """``bad_json`` (truncated or garbled line), ``hash_mismatch`` (record edited),
    ``prev_hash_mismatch`` (a record deleted, inserted or reordered before this one)."""
    message: str


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_chain`."""

    ok: bool
    count: int
    """Records verified (all of them when ``ok``; those before the problem otherwise)."""
    head: str
    """The hash of the last verified record (:data:`GENESIS_HASH` for an empty log)."""
    problem: ChainProblem | None = None


def _short(h: object) -> str:
    return f"{h[:12]}…" if isinstance(h, str) and len(h) > 12 else repr(h)


def verify_chain(
    lines: Iterable[str | bytes | Mapping[str, Any] | AuditRecord],
    *,
    genesis: str | None = GENESIS_HASH,
    on_record: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> VerifyResult:
    """Check a log's hash chain, stopping at the first problem.

    ``lines`` are raw JSON lines (as read from a file; trailing newlines are
    fine), parsed dicts, or records. The first record must follow ``genesis``;
    pass ``genesis=None`` to verify a slice of a log that starts mid-chain (a
    rotated file, a ``tail``). ``on_record(number, data)`` is called for each
    record once it has verified (1-based; ``data["hash"]`` is its verified hash).

    The chain is the same for records of every kind (calls, events, recoveries).
    """
    prev = genesis
    count = 0
    head = GENESIS_HASH
    fast = _fast_hasher()
    for number, item in enumerate(lines, start=1):
        computed: str | None = None
        if isinstance(item, AuditRecord):
            data: Any = item.to_json_dict()
        elif isinstance(item, Mapping):
            data = item
        elif fast is not None and isinstance(item, bytes) and (hashed := fast(item)) is not None:
            data, computed = hashed
        else:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            if not text.strip():
                return _fail(count, head, number, "bad_json", "empty line (inserted or corrupted)")
            try:
                data = json.loads(text)
            except ValueError as exc:
                if not text.endswith("\n"):  # only a file's last line can lack one
                    return _fail(count, head, number, "bad_json", _INCOMPLETE)
                return _fail(
                    count,
                    head,
                    number,
                    "bad_json",
                    f"not valid JSON, the record is truncated or corrupted ({exc})",
                )
        if not isinstance(data, Mapping):
            return _fail(count, head, number, "bad_json", "not a JSON object")
        stored = data.get("hash")
        if computed is None:
            try:
                computed = record_hash(data)
            except AuditError as exc:
                return _fail(count, head, number, "bad_json", str(exc))
        if stored != computed:
            return _fail(
                count,
                head,
                number,
                "hash_mismatch",
                f"hash mismatch, the record was edited after it was written "
                f"(stored {_short(stored)}, computed {_short(computed)})",
            )
        claimed = data.get("prev_hash")
        if prev is not None and claimed != prev:
            where = (
                "the first record does not start the chain (records before it were removed)"
                if number == 1
                else "a record before this one was deleted, inserted or moved"
            )
            return _fail(
                count,
                head,
                number,
                "prev_hash_mismatch",
                f"prev_hash mismatch, {where} "
                f"(prev_hash {_short(claimed)}, expected {_short(prev)})",
            )
        prev = head = computed
        count += 1
        if on_record is not None:
            on_record(number, data)
    return VerifyResult(ok=True, count=count, head=head)


# ---------------------------------------------------------------- the fast path

# A written line ends with its hash member: ,"hash":"<64 hex>"} and the newline.
_HASH_MEMBER = b',"hash":"'
_TAIL = len(_HASH_MEMBER) + 64 + len(b'"}\n')
_HEX = frozenset(b"0123456789abcdef")

FastHasher = Callable[[bytes], "tuple[dict[str, Any], str] | None"]


def _fast_hasher() -> FastHasher | None:
    """The fast path of :func:`verify_chain` for raw lines, or ``None`` without orjson.

    Re-encoding every record as canonical JSON with the ``json`` module costs
    more than anything else in a verification. A line written by a sink is
    already that canonical JSON with the hash member appended, so its hash is
    the SHA-256 of the line's own bytes minus that member, *provided* those
    bytes are exactly what :func:`canonical_json` makes of the parsed record.
    The fast path proves that with orjson, several times faster: the record is
    parsed, re-encoded with sorted keys and compared byte for byte with the
    line. orjson's compact sorted output is byte-identical to the canonical
    form (same separators, the same escapes, keys in code point order, the same
    shortest float digits) except for how floats below 1e-4 or in exponent form
    are written; a line holding such a number, or anything orjson cannot read or
    writes differently, goes the slow path, which hashes exactly as before.
    Either way the bytes hashed are the canonical JSON, and the result is the
    same.
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
            n <= _TAIL
            or line[n - _TAIL : n - _TAIL + len(_HASH_MEMBER)] != _HASH_MEMBER
            or line[n - 3 :] != b'"}\n'
            or b"\r" in line  # text readers split lines there: the slow path does too
        ):
            return None
        try:
            data = loads(line)
        except ValueError:
            return None
        if type(data) is not dict:
            return None
        stored = data.pop("hash", None)
        body = line[: n - _TAIL] + b"}"
        if (
            type(stored) is not str
            or len(stored) != 64
            or not _HEX.issuperset(stored.encode())
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


_INCOMPLETE = (
    "incomplete last line (not valid JSON, no newline at its end): a write was "
    "interrupted by a crash, or the line was cut; the next JSONL sink to open the log "
    "moves it aside and chains a recovery record"
)


def _fail(count: int, head: str, line: int, kind: ProblemKind, message: str) -> VerifyResult:
    return VerifyResult(ok=False, count=count, head=head, problem=ChainProblem(line, kind, message))
