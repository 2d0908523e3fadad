"""A log's index: the few facts ``audit stats`` reads, one short row per record.

A JSONL sink writes, next to ``LOG``, the file ``LOG.index``: tab-separated
rows that a statistics engine reads instead of parsing every JSON record (a
tenth of the bytes, no JSON), by DuckDB or in Python
(:mod:`~guardrail.audit.indexstats`). The first line is :data:`INDEX_HEADER`;
then, per record, in log order::

    seq  ms  key  guard_us  upstream_us  total_us  prompt_us  response_us  more

``seq`` is the record's number in the log (1-based), ``ms`` its time (ms since
the epoch), ``key`` the id of its categorical facts
(:func:`~guardrail.audit.tally.record_facts`: kind, final action, flags, each
check's stage, rule, level, category, refusal and failure), then the call's
latencies in whole microseconds, the first prompt and first response check's,
and ``more``: any further check latencies as ``p<us>`` / ``r<us>``, space
separated. Empty fields are missing values. A key's id is the first 16 hex
digits of the SHA-256 of its JSON; the first row that uses an id is preceded by
its definition, ``0  <tab>  id  ...  <key JSON>`` (``seq`` 0, the JSON in the
last column). A record the statistics cannot read gets the id ``!``: an index
holding one is never used (the full log names the problem). The index's bytes
are a function of the log's records alone, so a sink can regenerate rows a
crash left out.

**Trust.** The index is bound to the log by the hash chain: each record's line
carries ``index``, the SHA-256 of the index file through that record's row
(:mod:`~guardrail.audit.linefmt`). :func:`bind_index` takes the log's last
line and the index's size together (under a shared lock on the log), hashes
the index, and uses it only when the digest equals the one the last line
commits. A missing, stale (the log grew past it, or a crash left it behind),
edited or foreign index is refused with the reason, and the statistics read
the full log instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.audit.linefmt import V2_PREFIX, v2_index
from guardrail.audit.logfile import line_start, pread_exact
from guardrail.audit.tally import CALL, RecordKey, record_facts

try:  # POSIX: take the log's last line and the index's size as one writer left them.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "INDEX_HEADER",
    "INDEX_SUFFIX",
    "UNINDEXABLE",
    "BoundIndex",
    "IndexFile",
    "RowBuilder",
    "bind_index",
    "check_index",
    "decode_key",
    "index_path",
    "read_index",
    "snapshot_index",
    "snapshot_sizes",
]

INDEX_SUFFIX = ".index"
"""A log's index is the log's path with this appended."""
INDEX_HEADER = b"guardrail-audit-index\t1\n"
"""The index file's first line (its format version)."""
UNINDEXABLE = "!"
"""The key id of a record the statistics cannot read."""
COLUMNS = 9
_CHUNK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"


def index_path(log: str | os.PathLike[str]) -> Path:
    """``LOG.index``: where the JSONL sink keeps a log's index."""
    path = Path(log)
    return path.with_name(path.name + INDEX_SUFFIX)


def key_json(key: RecordKey) -> bytes:
    """A record key as the ASCII JSON its definition row holds."""
    return json.dumps(key, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def decode_key(text: str | bytes) -> RecordKey:
    """A key back from its JSON (lists become the tuples :func:`record_facts` builds).

    Raises ``ValueError`` or ``TypeError`` for a definition that is not a key.
    """
    value = json.loads(text)
    if not isinstance(value, list) or not value:
        raise ValueError("not a record key")
    if value[0] == CALL:
        _, action, flags, checks = value
        return (CALL, action, tuple(flags), tuple(tuple(c) for c in checks))
    _, kind, type_ = value
    return (value[0], kind, type_)


class RowBuilder:
    """Turns records into index rows, defining each key id the first time it is used.

    ``defined`` holds the ids the index file already defines, so a row built here
    is the row any sink would append at this point of the file.
    """

    def __init__(self, defined: set[str] | None = None) -> None:
        self.defined: set[str] = set() if defined is None else defined
        self._ids: dict[RecordKey, tuple[str, bytes]] = {}

    def rows(self, seq: int, data: Mapping[str, Any]) -> tuple[bytes, str | None]:
        """The bytes to append for record ``seq``, and the key id they define (if new).

        The caller adds the id to :attr:`defined` once the bytes are in the file.
        """
        try:
            try:
                ms, key, times, checks = record_facts(data)
            except TypeError:
                # Given with tuples for lists...: the index describes the record's line.
                from guardrail.audit.canonical import canonical_json

                ms, key, times, checks = record_facts(json.loads(canonical_json(data)))
            known = self._ids.get(key)
            if known is None:
                definition = key_json(key)
                known = self._ids[key] = (hashlib.sha256(definition).hexdigest()[:16], definition)
        except (KeyError, TypeError, ValueError, AttributeError):
            return f"{seq}\t\t{UNINDEXABLE}\t\t\t\t\t\t\n".encode(), None
        kid, definition = known
        prompt = response = ""
        more = []
        for stage, us in checks:
            if stage == "prompt":
                if prompt:
                    more.append(f"p{us}")
                else:
                    prompt = str(us)
            elif stage == "response":
                if response:
                    more.append(f"r{us}")
                else:
                    response = str(us)
        guard, upstream, total = times
        row = (
            f"{seq}\t{ms}\t{kid}\t{'' if guard is None else guard}\t"
            f"{'' if upstream is None else upstream}\t{'' if total is None else total}\t"
            f"{prompt}\t{response}\t{' '.join(more)}\n"
        ).encode()
        if kid in self.defined:
            return row, None
        return b"0\t\t" + kid.encode() + b"\t\t\t\t\t\t" + definition + b"\n" + row, kid


@dataclass
class IndexFile:
    """What reading an index's bytes ``[0, end)`` found (:func:`read_index`)."""

    end: int
    """Bytes read: up to the end of the last complete line."""
    digest: Any
    """The SHA-256 object of those bytes (``hashlib``)."""
    seq: int = 0
    """The last record's number."""
    defined: set[str] | None = None
    """The key ids defined (when asked for)."""
    unindexable: bool = False
    """Whether a row has the id ``!``."""
    header_ok: bool = True


def read_index(
    fd: int, size: int, *, start: IndexFile | None = None, definitions: bool = False
) -> IndexFile:
    """Hash an index's bytes up to its last newline before ``size``, from ``start`` on.

    ``start`` is the state of an earlier read of the same file (its bytes are not
    read again). Collects the key ids defined when ``definitions`` is set.
    """
    state = start or IndexFile(0, hashlib.sha256(), defined=set() if definitions else None)
    pos = state.end
    carry = b""
    while pos < size:
        chunk = os.pread(fd, min(_CHUNK, size - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        whole = data[:cut]
        if not whole:
            continue
        if state.end == 0 and not whole.startswith(INDEX_HEADER):
            state.header_ok = False
        state.digest.update(whole)
        state.end += len(whole)
        if b"\t!\t" in whole:
            state.unindexable = True
        if state.defined is not None:
            _definitions(whole, state.defined)
        last = whole.rfind(b"\n", 0, len(whole) - 1) + 1
        seq = whole[last : whole.find(b"\t", last)]
        if seq.isdigit() and int(seq) > 0:
            state.seq = int(seq)
    return state


def _definitions(lines: bytes, into: set[str]) -> None:
    """Add the key ids defined in whole lines ``lines`` (rows ``0<tab><tab>id...``)."""
    at = 0 if lines.startswith(b"0\t\t") else lines.find(b"\n0\t\t") + 1 or -1
    while at >= 0:
        into.add(lines[at + 3 : lines.index(b"\t", at + 3)].decode("ascii", "replace"))
        nxt = lines.find(b"\n0\t\t", at)
        at = nxt + 1 if nxt >= 0 else -1


@dataclass(frozen=True)
class BoundIndex:
    """A log's index as the log stands: read its first ``size`` bytes, ``rows`` records.

    :func:`bind_index` returns one only once its digest matched ``committed``;
    :func:`snapshot_index` before (:func:`check_index` then checks it).
    """

    log: str
    path: str
    size: int
    rows: int
    committed: bytes = b""
    """The index digest the log's last record commits (hex)."""


def bind_index(log: str | os.PathLike[str]) -> BoundIndex | str:
    """The log's index when its digest is the one the log's last record commits.

    Otherwise the reason it cannot be used (a plain sentence). Never raises for a
    problem with the index; an unreadable log is the statistics' to report.
    """
    found = snapshot_index(log)
    if isinstance(found, str):
        return found
    problem = check_index(found)
    return found if problem is None else problem


def snapshot_index(log: str | os.PathLike[str]) -> BoundIndex | str:
    """The log's index as the log stands, NOT yet checked (see :func:`check_index`).

    The checks that need no hashing are made: a plain log whose last record commits
    an index digest, an index that starts with the header and ends with a whole row.
    """
    path = index_path(log)
    try:
        with open(log, "rb") as fh:
            if fh.read(2) == _GZIP_MAGIC:
                return "the log is gzip-compressed (only plain logs are indexed)"
            with open(path, "rb") as ix:
                last, size = _snapshot(fh.fileno(), ix.fileno())
                committed = v2_index(last) if last.startswith(V2_PREFIX) else None
                if committed is None:
                    return "the log's last record commits no index (written without one)"
                if pread_exact(ix.fileno(), 0, len(INDEX_HEADER)) != INDEX_HEADER:
                    return "the index is not one this release writes"
                if size == len(INDEX_HEADER) or pread_exact(ix.fileno(), size - 1, size) != b"\n":
                    return "the index ends in an incomplete row (a write was interrupted)"
                last_row = pread_exact(ix.fileno(), line_start(ix.fileno(), size), size)
    except FileNotFoundError:
        return f"no index ({path.name} not found)"
    except OSError as exc:
        return f"the index cannot be read ({exc.strerror or exc})"
    seq = last_row.split(b"\t", 1)[0]
    if not seq.isdigit():
        return "the index is not one this release writes"
    return BoundIndex(os.fspath(log), str(path), size, int(seq), committed)


def check_index(index: BoundIndex) -> str | None:
    """Why a snapshot's index cannot be used (its digest differs...); ``None``: it can."""
    try:
        with open(index.path, "rb") as ix:
            digest, marked = _digest(ix.fileno(), index.size)
    except OSError as exc:
        return f"the index cannot be read ({exc.strerror or exc})"
    if digest != index.committed:
        return (
            "the index does not match the log's last record (stale: the log grew past "
            "it or a crash left it behind; or edited)"
        )
    if marked:
        return "the index marks a record the statistics cannot read"
    return None


def _digest(fd: int, size: int) -> tuple[bytes, bool]:
    """The SHA-256 (hex) of a file's first ``size`` bytes, and whether a row has id ``!``.

    Hashed as read, block by block (no line splitting: the bytes are what count).
    """
    h = hashlib.sha256()
    marked = False
    tail = b""
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(_CHUNK, size - pos), pos)
        if not chunk:
            break
        h.update(chunk)
        if not marked:
            marked = b"\t!\t" in chunk or b"\t!\t" in tail + chunk[:2]
        tail = chunk[-2:]
        pos += len(chunk)
    return h.hexdigest().encode(), marked


def snapshot_sizes(log: str, index: str) -> tuple[int, int]:
    """The log's and its index's sizes, as the last writer left them (``OSError``)."""
    with open(log, "rb") as fh, open(index, "rb") as ix, _shared(fh.fileno()):
        return os.fstat(fh.fileno()).st_size, os.fstat(ix.fileno()).st_size


@contextmanager
def _shared(fd: int) -> Iterator[None]:
    """A shared ``flock`` on the log: no writer is between a record's line and its row."""
    locked = False
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            locked = True
        except OSError:  # e.g. a filesystem without locks: a race only makes a mismatch
            pass
    try:
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _snapshot(log_fd: int, index_fd: int) -> tuple[bytes, int]:
    """The log's last line and the index's size, as the last writer left them."""
    with _shared(log_fd):
        end = os.fstat(log_fd).st_size
        size = os.fstat(index_fd).st_size
        if end == 0 or pread_exact(log_fd, end - 1, end) != b"\n":
            return b"", size
        return pread_exact(log_fd, line_start(log_fd, end), end - 1), size
