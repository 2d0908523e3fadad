"""Verifying a log file's chain fast: large reads, and no JSON parsing for version-2 lines.

:func:`scan_chain` reads a log (plain, or gzip as it is decompressed) in
blocks of a few MB and checks each version-2 line where it lies in the block:
its fixed layout, ``prev_hash`` against the line before, and the SHA-256 of its
bytes (:mod:`~guardrail.audit.linefmt`); a call's line is never parsed. Any
other line (version 1, a record that is not a call, anything that fails a
check) goes through :class:`~guardrail.audit.chain.LineChecker`, the rules of
:func:`~guardrail.audit.chain.verify_chain`, so both report the same problem
at the same line. Lines are split as a text reader splits them (a carriage
return ends a line too). Memory stays constant: the records are not kept.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from binascii import hexlify
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from guardrail.audit.chain import GENESIS_HASH, LineChecker, VerifyResult
from guardrail.audit.kinds import CALL_KIND
from guardrail.audit.linefmt import (
    HASH_MEMBER,
    INDEX_END,
    INDEX_START,
    MIN_V2,
    PREV_END,
    TAIL,
    V2_PREFIX,
)
from guardrail.audit.logfile import AuditFileError

__all__ = ["ChainScan", "find_committed", "scan_chain"]

_BLOCK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"
_INDEX_MEMBER = b',"index":"'
_KIND_MEMBER = b',"kind":'


@dataclass
class ChainScan:
    """What :func:`scan_chain` found besides the chain's verdict."""

    chain: VerifyResult = field(default_factory=lambda: VerifyResult(True, 0, GENESIS_HASH))
    kinds: Counter[str] = field(default_factory=Counter)
    """Verified records per kind (``?`` for a kind that is not a string)."""
    hashes: dict[int, str] = field(default_factory=dict)
    """The hash of each verified record whose number was asked for."""
    head_at: int | None = None
    """The first verified record whose hash is the expected head."""
    last_index: str | None = None
    """The last verified record's ``index`` digest (``None`` when it has none)."""


class _Opened:
    """A log's bytes in blocks: plain, or decompressed gzip (told by its first bytes).

    For a plain file the kernel is asked to read the next blocks ahead
    (``POSIX_FADV_WILLNEED``) while the current one is hashed, so reading from disk
    and verifying overlap.
    """

    def __init__(self, path: str | os.PathLike[str], limit: int | None) -> None:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        self.fh: Any = gzip.GzipFile(path, "rb") if compressed else open(path, "rb", buffering=0)  # noqa: SIM115
        self.left = None if compressed else limit
        self.fd = -1 if compressed else self.fh.fileno()
        self.pos = 0

    def read(self) -> bytes:
        size = _BLOCK if self.left is None else min(_BLOCK, self.left)
        if size <= 0:
            return b""
        chunk: bytes = self.fh.read(size)
        self.pos += len(chunk)
        if self.left is not None:
            self.left -= len(chunk)
        if self.fd >= 0 and chunk and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self.fd, self.pos, 2 * _BLOCK, os.POSIX_FADV_WILLNEED)
            except OSError:  # a filesystem without read-ahead advice: read as it comes
                self.fd = -1
        return chunk


def _text_lines(line: bytes) -> Iterator[str]:
    """A line holding a carriage return, split as a text reader splits it."""
    text = line.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    parts = text.split("\n")
    for i, part in enumerate(parts):
        if i < len(parts) - 1:
            yield part + "\n"
        elif part:
            yield part


@dataclass
class _Run:
    """Where a run of fast lines ended, and what it found (see :func:`_fast_run`)."""

    pos: int
    prev: bytes
    calls: int
    indexed_at: int
    """Where the run's last line starts if it has an index field; -1 if not; -2: no line."""
    notes: list[tuple[int, bytes]]


def _fast_run(
    buf: bytes,
    pos: int,
    end: int,
    prev: bytes,
    watch: frozenset[int] | None,
    first: int,
    want_head: bytes | None,
) -> _Run:
    """Verify consecutive version-2 calls' lines from ``pos``; stop at any other line.

    The hot loop: each line is checked where it lies in ``buf``, without a copy.
    ``watch`` (record numbers) and ``want_head`` ask for the hashes of those records
    (numbered from ``first``) in ``notes``.
    """
    view = memoryview(buf)
    starts = buf.startswith
    find = buf.find
    sha256 = hashlib.sha256
    expect = V2_PREFIX + prev + b'"'
    calls = 0
    indexed_at = -2
    notes: list[tuple[int, bytes]] = []
    while pos < end:
        nl = find(b"\n", pos)
        k = nl - TAIL
        if nl - pos < MIN_V2 or not starts(expect, pos):
            break
        h = sha256(view[pos:k])
        h.update(b"}")
        digest = hexlify(h.digest())
        at = pos + PREV_END + 1
        ix = -1
        if starts(_INDEX_MEMBER, at):
            ix = pos
            at = pos + INDEX_END + 1
        # The line must end with exactly its hash member, holding this digest; a record
        # with a kind (not a call) goes by the general rules (`,"k` is read first: cheap).
        if not starts(HASH_MEMBER + digest + b'"}', k) or (
            buf[at + 2] == 0x6B and starts(_KIND_MEMBER, at)
        ):
            break
        calls += 1
        prev = digest
        expect = V2_PREFIX + digest + b'"'
        indexed_at = ix
        if watch is not None and (first + calls in watch or digest == want_head):
            notes.append((first + calls, digest))
        pos = nl + 1
    return _Run(pos, prev, calls, indexed_at, notes)


def scan_chain(
    path: str | os.PathLike[str],
    *,
    genesis: str | None = GENESIS_HASH,
    positions: frozenset[int] = frozenset(),
    expect_head: str | None = None,
    on_other: Callable[[int, Mapping[str, Any]], None] | None = None,
    limit: int | None = None,
) -> ChainScan:
    """Verify a log file's chain, noting what :func:`~guardrail.audit.verify.verify_log` needs.

    ``positions``: record numbers whose hashes to keep; ``expect_head``: a hash to
    find; ``on_other(number, data)``: called with each verified record that is not
    a call (parsed); ``limit``: read only this many bytes of a plain log. Raises
    :class:`~guardrail.audit.reader.AuditFileError` when the file cannot be read.
    """
    try:
        src = _Opened(path, limit)
    except OSError as exc:
        raise AuditFileError(path, f"cannot open audit log: {exc.strerror or exc}") from exc
    scan = _Scan(genesis, positions, expect_head, on_other)
    with src.fh:
        try:
            return scan.run(src)
        except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib: a damaged gzip file
            raise AuditFileError(path, f"read failed: {exc}", line=scan.number + 1) from exc


class _Scan:
    """One :func:`scan_chain`: the fast runs, and the general rules between them."""

    def __init__(
        self,
        genesis: str | None,
        positions: frozenset[int],
        expect_head: str | None,
        on_other: Callable[[int, Mapping[str, Any]], None] | None,
    ) -> None:
        self.out = ChainScan()
        self.checker = LineChecker(genesis)
        self.positions = positions
        self.expect_head = expect_head
        self.on_other = on_other
        self.prev = None if genesis is None else genesis.encode()
        self.last_index: bytes | None = None
        self.number = 0

    def note(self, number: int, head: str) -> None:
        if number in self.positions:
            self.out.hashes[number] = head
        if self.out.head_at is None and head == self.expect_head:
            self.out.head_at = number

    def slow(self, item: bytes | str) -> bool:
        """One line by the general rules; False once the chain is broken."""
        checker = self.checker
        checker.prev = None if self.prev is None else self.prev.decode()
        if checker.count:
            checker.head = checker.prev or GENESIS_HASH
        problem = checker.check(self.number, item, parse=True)
        if problem is not None:
            self.out.chain = checker.failed(problem)
            return False
        self.prev = checker.head.encode()
        data = checker.data
        kind = data.get("kind", CALL_KIND)
        self.out.kinds[kind if isinstance(kind, str) else "?"] += 1
        index = data.get("index") if data.get("chain") == 2 else None
        self.last_index = index.encode() if isinstance(index, str) else None
        self.note(self.number, checker.head)
        if kind != CALL_KIND and self.on_other is not None:
            self.on_other(self.number, data)
        return True

    def slow_line(self, line: bytes) -> bool:
        if b"\r" not in line:
            self.number += 1
            return self.slow(line)
        for item in _text_lines(line):
            self.number += 1
            if not self.slow(item):
                return False
        return True

    def block(self, buf: bytes, end: int) -> bool:
        """Every line of ``buf[:end]`` (whole lines); False once the chain is broken."""
        if b"\r" in buf[:end]:
            return all(self.slow_line(line + b"\n") for line in buf[:end].split(b"\n")[:-1])
        watch = self.positions if self.positions or self.expect_head is not None else None
        want_head = None if self.expect_head is None else self.expect_head.encode()
        pos = 0
        while pos < end:
            if self.prev is not None:
                run = _fast_run(buf, pos, end, self.prev, watch, self.number, want_head)
                if run.calls:
                    self.checker.count += run.calls
                    self.out.kinds[CALL_KIND] += run.calls
                    self.number += run.calls
                    self.prev = run.prev
                    at = run.indexed_at
                    self.last_index = buf[at + INDEX_START : at + INDEX_END] if at >= 0 else None
                    for number, digest in run.notes:
                        self.note(number, digest.decode())
                    pos = run.pos
                    if pos >= end:
                        break
            nl = buf.find(b"\n", pos)
            if not self.slow_line(buf[pos : nl + 1]):
                return False
            pos = nl + 1
        return True

    def run(self, src: _Opened) -> ChainScan:
        rest = b""
        while True:
            chunk = src.read()
            if not chunk:
                break
            buf = rest + chunk if rest else chunk
            end = buf.rfind(b"\n") + 1
            rest = buf[end:]
            if not self.block(buf, end):
                return self.out
        if rest and not self.slow_line(rest):
            return self.out
        checker = self.checker
        head = GENESIS_HASH if self.prev is None or checker.count == 0 else self.prev.decode()
        self.out.chain = VerifyResult(ok=True, count=checker.count, head=head)
        self.out.last_index = None if self.last_index is None else self.last_index.decode()
        return self.out


def find_committed(
    path: str | os.PathLike[str], digest: str, *, limit: int | None = None
) -> int | None:
    """The number of the record whose line commits index digest ``digest``, if any.

    A search of the log's bytes (a plain log, its first ``limit`` bytes) for the
    digest where a version-2 line holds its ``index`` field; no line is parsed.
    """
    needle = b'"index":"' + digest.encode() + b'"'
    offset = PREV_END + 2  # where the needle starts in a line that has it
    number = 0
    carry = b""
    with open(path, "rb", buffering=0) as fh:
        left = limit
        while left is None or left > 0:
            chunk = fh.read(_BLOCK if left is None else min(_BLOCK, left))
            if not chunk:
                return None
            if left is not None:
                left -= len(chunk)
            buf = carry + chunk
            end = buf.rfind(b"\n") + 1
            at = buf.find(needle, 0, end)
            while at >= 0:
                start = buf.rfind(b"\n", 0, at) + 1
                if at - start == offset and buf.startswith(V2_PREFIX, start):
                    return number + buf.count(b"\n", 0, start) + 1
                at = buf.find(needle, at + 1, end)
            number += buf.count(b"\n", 0, end)
            carry = buf[end:]
    return None
