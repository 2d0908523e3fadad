"""The hash chain that makes an audit log tamper-evident.

Every record carries ``prev_hash``, the ``hash`` of the record before it (the
first record of a log has :data:`GENESIS_HASH`), and ``hash``, the SHA-256 of
the record's line without its hash member. How a line is laid out, in each
chain version, is :mod:`~guardrail.audit.linefmt`'s: version 2 (written now)
puts the chain fields at fixed offsets and hashes the line's exact bytes, so a
verifier needs no JSON parsing; version 1 (older logs, still verified) hashed
the record's canonical JSON.

Records are hashed in canonical JSON (:mod:`~guardrail.audit.canonical`).

What the chain detects, and where :func:`verify_chain` reports it:

- an edited record, or any byte changed in a version-2 line: its own hash no
  longer matches (``hash_mismatch`` at that line);
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from guardrail.audit.canonical import canonical_json as canonical_json  # re-exported: its old home
from guardrail.audit.canonical import encode_canonical
from guardrail.audit.linefmt import (
    CHAIN_FIELDS,
    CHAIN_VERSION,
    HASH_MEMBER,
    PREV_END,
    PREV_START,
    TAIL,
    V2_PREFIX,
    is_hex64,
    v1_fast_hasher,
    v2_close,
    v2_digest,
    v2_hash,
    v2_head,
    v2_shape,
)
from guardrail.audit.record import AuditRecord
from guardrail.errors import AuditError

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record of a log."""


def _with_hash(body_json: str, digest: str) -> str:
    # body_json is a non-empty JSON object: close it with the hash as last member.
    return f'{body_json[:-1]},"hash":"{digest}"}}'


def _v1_body(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a record's JSON dict without its ``hash`` field."""
    body = dict(data)
    body.pop("hash", None)
    return body


def _v2_parts(data: Mapping[str, Any], prev_hash: str, index: str | None) -> tuple[bytes, bytes]:
    """A record's version-2 line up to its members, and the members' canonical JSON (braced)."""
    members = {k: v for k, v in data.items() if k not in CHAIN_FIELDS and k != "kind"}
    kind = encode_canonical(data["kind"])[1] if "kind" in data else None
    return v2_head(prev_hash, index, kind, b""), encode_canonical(members)[1]


def _v2_head(data: Mapping[str, Any], prev_hash: str, index: str | None) -> bytes:
    """The bytes a version-2 hash covers for a record's JSON dict (see linefmt)."""
    prefix, members = _v2_parts(data, prev_hash, index)
    return prefix + b"," + members[1:-1] if len(members) > 2 else prefix


def _v2_fields(data: Mapping[str, Any]) -> tuple[str, str | None]:
    """A parsed version-2 record's ``prev_hash`` and ``index``; AuditError if malformed."""
    prev, index = data.get("prev_hash"), data.get("index")
    if not (isinstance(prev, str) and is_hex64(prev.encode("utf-8", "replace"))):
        raise AuditError("prev_hash is not 64 lower-case hex digits")
    if index is not None and not (
        isinstance(index, str) and is_hex64(index.encode("utf-8", "replace"))
    ):
        raise AuditError("index is not 64 lower-case hex digits")
    return prev, index


def _version(data: Mapping[str, Any]) -> int:
    chain = data.get("chain", 1)
    if chain not in (1, CHAIN_VERSION) or type(chain) is not int:
        raise AuditError(f"unknown chain version {chain!r}")
    return chain


def record_line(data: Mapping[str, Any]) -> str:
    """The line a sealed record is written as (its chain fields as they are).

    ``data`` is a parsed line: version 2 when it has ``"chain": 2``, else version 1.
    """
    if _version(data) == CHAIN_VERSION:
        prev, index = _v2_fields(data)
        line = v2_close(_v2_head(data, prev, index), str(data.get("hash", "")))
        return line.decode("utf-8")
    return _with_hash(canonical_json(_v1_body(data)), str(data.get("hash", "")))


def record_hash(data: Mapping[str, Any]) -> str:
    """The hash a record's line should carry, recomputed from its parsed fields.

    Version 2 (``"chain": 2``): the SHA-256 of the line the record is written as,
    without its hash member; version 1: of its canonical JSON without ``hash``.
    Raises ``AuditError`` for a record JSON cannot hold or with malformed chain fields.
    """
    if _version(data) == CHAIN_VERSION:
        prev, index = _v2_fields(data)
        return v2_digest(_v2_head(data, prev, index))
    return hashlib.sha256(encode_canonical(_v1_body(data))[1]).hexdigest()


@dataclass(frozen=True)
class SealedRecord:
    """A record placed in the chain: the line to write and its chain fields."""

    line: str
    """The record's line, chain fields and ``hash`` included, without a newline."""
    prev_hash: str
    hash: str
    payload: bytes = b""
    """The line's UTF-8 bytes with its newline: what a file sink writes."""


class HashChain:
    """The head of one chain: seal a record after it, advance once it is written.

    Sealing and advancing are separate so a failed write leaves the head where
    it was and the next record chains to the last one actually written. Not
    thread-safe by itself: sinks hold a lock around seal, write and advance so
    the chain order equals the write order. ``version`` is the line layout
    written (:data:`~guardrail.audit.linefmt.CHAIN_VERSION` by default; 1 for
    tools that must write logs that releases before version 2 verify).
    """

    def __init__(self, head: str = GENESIS_HASH, *, version: int = CHAIN_VERSION) -> None:
        if version not in (1, CHAIN_VERSION):
            raise ValueError(f"unknown chain version {version!r}")
        self.head = head
        self.version = version

    def seal(self, data: Mapping[str, Any], *, index: str | None = None) -> SealedRecord:
        """Chain a record's JSON dict (``record_dict(...)``, ``AuditRecord.to_json_dict()``).

        ``data`` is not modified; chain fields it holds (``chain``, ``prev_hash``,
        ``index``, ``hash``) are replaced. ``index`` is the digest of the log's index
        through this record's row (:mod:`~guardrail.audit.index`), version 2 only.
        """
        head = self.head
        payload, digest = self.seal_payload(data, index=index)
        return SealedRecord(payload[:-1].decode("utf-8"), head, digest, payload)

    def seal_payload(
        self, data: Mapping[str, Any], *, index: str | None = None
    ) -> tuple[bytes, str]:
        """:meth:`seal`'s line as the bytes a file sink writes (newline included), and its hash.

        The record is sealed after :attr:`head`, as by :meth:`seal`; make it the
        head with :meth:`advance_from` once it is written.
        """
        head = self.head
        if self.version == 1:
            if index is not None:
                raise ValueError("chain version 1 has no index field")
            body = {k: v for k, v in data.items() if k not in CHAIN_FIELDS}
            body["prev_hash"] = head
            encoded, raw = encode_canonical(body)
            digest = hashlib.sha256(raw).hexdigest()
            return (_with_hash(encoded, digest) + "\n").encode("utf-8"), digest
        # _v2_head / v2_digest / v2_close, with the members' bytes hashed and joined
        # in place rather than copied into each intermediate.
        prefix, members_json = _v2_parts(data, head, index)
        hasher = hashlib.sha256(prefix)
        if len(members_json) > 2:
            hasher.update(b",")
        hasher.update(memoryview(members_json)[1:])  # the members and the closing brace
        digest = hasher.hexdigest()
        inner = memoryview(members_json)[1:-1]
        comma = b"," if inner else b""
        tail = b"".join((HASH_MEMBER, digest.encode("ascii"), b'"}\n'))
        return b"".join((prefix, comma, inner, tail)), digest

    def advance(self, sealed: SealedRecord) -> None:
        """Make a written record the new head."""
        self.advance_from(sealed.prev_hash, sealed.hash)

    def advance_from(self, prev_hash: str, digest: str) -> None:
        """Make the written record with hash ``digest``, sealed after ``prev_hash``, the head."""
        if prev_hash != self.head:
            raise AuditError("audit chain advanced out of order (a sink wrote without its lock)")
        self.head = digest


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


Line = str | bytes | Mapping[str, Any] | AuditRecord
"""What :func:`verify_chain` takes: a raw line, a parsed line, or a record."""


def verify_chain(
    lines: Iterable[Line],
    *,
    genesis: str | None = GENESIS_HASH,
    on_record: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> VerifyResult:
    """Check a log's hash chain, stopping at the first problem.

    ``lines`` are raw lines (as read from a file, text or bytes; trailing
    newlines are fine), parsed dicts, or records, of either chain version. The
    first record must follow ``genesis``; pass ``genesis=None`` to verify a slice
    of a log that starts mid-chain (a rotated file, a ``tail``).
    ``on_record(number, data)`` is called for each record once it has verified
    (1-based; ``data["hash"]`` is its verified hash; raw version-2 lines are
    parsed only when it is given).

    The chain is the same for records of every kind (calls, events, recoveries).
    """
    checker = LineChecker(genesis)
    for number, item in enumerate(lines, start=1):
        problem = checker.check(number, item, parse=on_record is not None)
        if problem is not None:
            return checker.failed(problem)
        if on_record is not None:
            on_record(number, checker.data)
    return checker.result()


class LineChecker:
    """The per-line rules of :func:`verify_chain`, shared with the file verifier.

    :meth:`check` verifies one line after the ones before it and moves the head;
    :attr:`data` is the last line's parsed dict when it was parsed.
    """

    def __init__(self, genesis: str | None) -> None:
        self.prev = genesis
        self.count = 0
        self.head = GENESIS_HASH
        self.data: Mapping[str, Any] = {}
        self._fast = v1_fast_hasher()

    def result(self) -> VerifyResult:
        """The chain verified so far."""
        return VerifyResult(ok=True, count=self.count, head=self.head)

    def failed(self, problem: ChainProblem) -> VerifyResult:
        """The result when ``problem`` stopped the verification."""
        return VerifyResult(ok=False, count=self.count, head=self.head, problem=problem)

    def passed(self, digest: str, data: Mapping[str, Any]) -> None:
        """Record that a line with hash ``digest`` verified."""
        self.prev = self.head = digest
        self.count += 1
        self.data = data

    def check(self, number: int, item: Line, *, parse: bool) -> ChainProblem | None:
        """Verify one line; ``None`` when it holds (the head then moves to it)."""
        computed: str | None = None
        if isinstance(item, AuditRecord):
            data: Any = item.to_json_dict()
        elif isinstance(item, Mapping):
            data = item
        else:
            raw = item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass")
            if raw.startswith(V2_PREFIX):
                return self._check_v2(number, raw, parse=parse)
            if self._fast is not None and isinstance(item, bytes):
                hashed = self._fast(item)
                if hashed is not None:
                    data, computed = hashed
            if computed is None:
                text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
                parsed = _parse_text(number, text)
                if isinstance(parsed, ChainProblem):
                    return parsed
                data = parsed
                if "chain" in data:
                    return ChainProblem(
                        number,
                        "hash_mismatch",
                        "hash mismatch, the record was edited after it was written (its "
                        "line is not laid out as the chain version it names is written)",
                    )
        if not isinstance(data, Mapping):
            return ChainProblem(number, "bad_json", "not a JSON object")
        if computed is None:
            try:
                computed = record_hash(data)
            except AuditError as exc:
                return ChainProblem(number, "bad_json", str(exc))
        return self._link(number, data.get("hash"), computed, data.get("prev_hash"), data)

    def _check_v2(self, number: int, raw: bytes, *, parse: bool) -> ChainProblem | None:
        line = raw[:-1] if raw.endswith(b"\n") else raw
        shape = v2_shape(line)
        if shape is not None:
            parsed = _parse_text(number, raw.decode("utf-8", "replace"))
            if isinstance(parsed, ChainProblem):
                return parsed
            return ChainProblem(
                number,
                "hash_mismatch",
                f"hash mismatch, the record was edited after it was written ({shape})",
            )
        stored = line[len(line) - TAIL + len(HASH_MEMBER) : -2].decode("ascii", "replace")
        claimed = line[PREV_START:PREV_END].decode("ascii")
        computed = v2_hash(line)
        problem = self._linked(number, stored, computed, claimed)
        if problem is not None:
            return problem
        data: Mapping[str, Any] = {"hash": stored}
        if parse:  # only once the bytes verified: their hash is the finding otherwise
            parsed = _parse_text(number, raw.decode("utf-8", "replace"))
            if isinstance(parsed, ChainProblem):
                return parsed
            data = parsed
        self.passed(computed, data)
        return None

    def _link(
        self, number: int, stored: object, computed: str, claimed: object, data: Mapping[str, Any]
    ) -> ChainProblem | None:
        problem = self._linked(number, stored, computed, claimed)
        if problem is None:
            self.passed(computed, data)
        return problem

    def _linked(
        self, number: int, stored: object, computed: str, claimed: object
    ) -> ChainProblem | None:
        """The problem with a line's hash (first) or its link to the line before, if any."""
        if stored != computed:
            return ChainProblem(
                number,
                "hash_mismatch",
                f"hash mismatch, the record was edited after it was written "
                f"(stored {_short(stored)}, computed {_short(computed)})",
            )
        prev = self.prev
        if prev is not None and claimed != prev:
            where = (
                "the first record does not start the chain (records before it were removed)"
                if number == 1
                else "a record before this one was deleted, inserted or moved"
            )
            return ChainProblem(
                number,
                "prev_hash_mismatch",
                f"prev_hash mismatch, {where} "
                f"(prev_hash {_short(claimed)}, expected {_short(prev)})",
            )
        return None


_INCOMPLETE = (
    "incomplete last line (not valid JSON, no newline at its end): a write was "
    "interrupted by a crash, or the line was cut; the next JSONL sink to open the log "
    "moves it aside and chains a recovery record"
)


def _parse_text(number: int, text: str) -> Any:
    """A line's JSON value, or the :class:`ChainProblem` of a line that is not JSON."""
    if not text.strip():
        return ChainProblem(number, "bad_json", "empty line (inserted or corrupted)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        if not text.endswith("\n"):  # only a file's last line can lack one
            return ChainProblem(number, "bad_json", _INCOMPLETE)
        return ChainProblem(
            number, "bad_json", f"not valid JSON, the record is truncated or corrupted ({exc})"
        )
    if not isinstance(data, dict):
        return ChainProblem(number, "bad_json", "not a JSON object")
    return data
