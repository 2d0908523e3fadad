"""The bytes of a JSON-lines audit log on disk: its tail, its line count, torn tails.

What :class:`~guardrail.audit.jsonl.JsonlSink` does to the file besides appending,
written once here. Every function works on an open descriptor whose caller holds
the log's lock (the sink's ``flock``), so no other writer changes the file meanwhile.

A **torn tail** is what a crash mid-write leaves: bytes after the last newline.
A record is appended with one ``write`` ending in its newline, so a write that
returned (an acknowledged record) never leaves a torn tail; the torn bytes were
never acknowledged. :func:`quarantine_tail` moves them into a file next to the
log, ``<log>.quarantine-<UTC time>``, and truncates the log back to its last
newline; the sink then chains a ``recovery`` record naming that file and the
moved bytes' length and sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guardrail.audit.chain import GENESIS_HASH
from guardrail.errors import AuditError


class AuditFileError(AuditError):
    """An audit log could not be read: ``path`` and, when known, the 1-based ``line``.

    Also importable from :mod:`guardrail.audit.reader` and :mod:`guardrail.audit`.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, *, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


QUARANTINE_INFIX = ".quarantine-"
"""Torn bytes of ``audit.jsonl`` are moved to ``audit.jsonl.quarantine-<UTC time>``."""

TORN_LINE = "torn_line"
"""The ``type`` of the recovery record written after a torn tail was moved aside."""

_BLOCK = 4096
_COUNT_CHUNK = 1 << 20


def pread_exact(fd: int, start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of the file (fewer only if it is shorter)."""
    parts = []
    while start < end:
        chunk = os.pread(fd, end - start, start)
        if not chunk:
            break
        parts.append(chunk)
        start += len(chunk)
    return b"".join(parts)


def write_all(fd: int, payload: bytes) -> None:
    """Write every byte of ``payload`` (a short write, rare, is followed by the rest)."""
    written = os.write(fd, payload)
    if written < len(payload):
        view = memoryview(payload)[written:]
        while view:
            view = view[os.write(fd, view) :]


def line_start(fd: int, end: int) -> int:
    """Where the last line of the first ``end`` bytes starts (just after the newline before it).

    With ``end`` just after a newline, that is the start of the last complete line;
    otherwise the start of the incomplete line at the end. 0 when there is no
    earlier newline. Reads backwards in growing blocks (long records are rare).
    """
    block = _BLOCK
    pos = end
    limit = end - 1  # a newline ending the first `end` bytes does not start a line
    while pos > 0:
        step = min(block, pos)
        pos -= step
        buf = pread_exact(fd, pos, pos + step)
        cut = buf.rfind(b"\n", 0, max(0, limit - pos))
        if cut >= 0:
            return pos + cut + 1
        block *= 2
    return 0


def torn_start(fd: int, end: int) -> int:
    """Where a torn tail starts in the first ``end`` bytes; ``end`` when there is none."""
    if end == 0 or pread_exact(fd, end - 1, end) == b"\n":
        return end
    return line_start(fd, end)


def tail_hash(fd: int, end: int, path: Path) -> str:
    """The ``hash`` of the last line of the first ``end`` bytes, which end with a newline.

    Raises ``AuditError`` when that line is not a record: a log not written by a sink,
    or edited, is never chained onto (nor changed).
    """
    if end == 0:
        return GENESIS_HASH
    start = line_start(fd, end)
    last = pread_exact(fd, start, end)
    try:
        data = json.loads(last)
        head = data["hash"]
    except (ValueError, TypeError, KeyError) as exc:
        raise AuditError(
            f"{path}: the last line is not an audit record, cannot resume its hash chain "
            f"({exc}); run `guardrail audit verify` on it"
        ) from exc
    if not (isinstance(head, str) and len(head) == 64):
        raise AuditError(f"{path}: the last line has no valid hash, cannot resume its chain")
    return head


def count_lines(fd: int, start: int, end: int) -> int:
    """Newlines in the bytes ``[start, end)``: the records there, in a log of whole lines."""
    count = 0
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(_COUNT_CHUNK, end - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count


def quarantine_tail(fd: int, path: Path, start: int, end: int) -> dict[str, Any]:
    """Move the torn bytes ``[start, end)`` of the log into a quarantine file, then cut them.

    The quarantine file (``<log>.quarantine-<UTC time>``, a suffix ``-2``, ``-3``...
    if taken; the log's permissions) is written and synced before the log is
    truncated, so the bytes exist somewhere at every moment. Returns the recovery
    record's details: the quarantine file's name (next to the log), the torn
    bytes' ``offset``, length (``bytes``) and ``sha256``, and a ``reason``.
    """
    torn = pread_exact(fd, start, end)
    digest = hashlib.sha256(torn).hexdigest()
    try:
        mode = os.fstat(fd).st_mode & 0o777
        target = _create_quarantine(path, mode)
        try:
            write_all(target[1], torn)
            os.fsync(target[1])
        finally:
            os.close(target[1])
        _sync_dir(path.parent)
        os.ftruncate(fd, start)
        os.fsync(fd)
    except OSError as exc:
        raise AuditError(
            f"{path}: the last line is incomplete (a write was interrupted) and could not "
            f"be moved aside: {exc}"
        ) from exc
    return {
        "quarantine": target[0].name,
        "offset": start,
        "bytes": len(torn),
        "sha256": digest,
        "reason": "incomplete last line (no newline at its end): a write was interrupted",
    }


def _create_quarantine(path: Path, mode: int) -> tuple[Path, int]:
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"
    base = path.with_name(f"{path.name}{QUARANTINE_INFIX}{stamp}")
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            return candidate, os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
    raise OSError(f"no free quarantine file name after {base.name}-999")


def _sync_dir(directory: Path) -> None:
    # Make the new file's directory entry durable; some filesystems cannot (EINVAL).
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
