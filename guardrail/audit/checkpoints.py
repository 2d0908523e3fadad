"""Checkpoints: a log's record count and head hash, kept outside the log.

The hash chain catches every edit, insertion, deletion and reordering, but not
records cut from the end: what remains is a valid, shorter chain. A checkpoint
says "this log had ``count`` records, the last with hash ``head``"; a log that
no longer reaches it was cut (``guardrail audit verify --checkpoint FILE``).

A JSONL sink with ``checkpoint_every: N`` appends one checkpoint line to its
checkpoint file (by default ``<log>.checkpoint``) every N records, and one when
it is closed. The file is separate from the log, and not a record in the chain,
on purpose: a checkpoint inside the log is cut along with the tail it should
anchor, while a checkpoint file can be shipped where the log's writer (and an
attacker who holds the log) cannot rewrite it: another host, a log collector,
append-only or write-once storage.

With a key (``audit.hmac_key_env``), each checkpoint carries ``mac``:
``hmac-sha256:`` of its canonical JSON without ``mac`` (see
:meth:`AuditKey.sign <guardrail.audit.keys.AuditKey.sign>`), so a checkpoint
file written by someone without the key is rejected; an older genuine
checkpoint can still be replayed, which only weakens the anchor to that older
count.

A line: ``{"checkpoint":1,"count":200,"head":"<64 hex>","log":"audit.jsonl",
"time":"2026-11-03T12:00:00.000Z","mac":"hmac-sha256:<64 hex>"}``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from guardrail.audit.canonical import canonical_json
from guardrail.audit.keys import HMAC_PREFIX, AuditKey
from guardrail.audit.kinds import iso_ms, utc_now
from guardrail.errors import AuditError

CHECKPOINT_VERSION = 1
"""The value of a checkpoint line's ``checkpoint`` field."""

CHECKPOINT_SUFFIX = ".checkpoint"
"""A log's default checkpoint file is the log's path with this appended."""

_FIELDS = frozenset({"checkpoint", "count", "head", "log", "time", "mac"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAC = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")


def default_checkpoint_path(log: str | os.PathLike[str]) -> Path:
    """``<log>.checkpoint``: where a sink writes checkpoints unless told otherwise."""
    path = Path(log)
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def checkpoint_dict(
    *,
    log: str,
    count: int,
    head: str,
    key: AuditKey | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """One checkpoint as its JSON dict, signed with ``key`` when given."""
    body: dict[str, Any] = {
        "checkpoint": CHECKPOINT_VERSION,
        "count": count,
        "head": head,
        "log": log,
        "time": iso_ms(utc_now() if time is None else time),
    }
    if key is not None:
        body["mac"] = key.sign(canonical_json(body))
    return body


def append_checkpoint(path: Path, data: dict[str, Any], *, fsync: bool) -> None:
    """Append one checkpoint line to ``path`` (created with its parents if needed)."""
    line = (canonical_json(data) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise AuditError(f"{path}: audit checkpoint not written: {exc}") from exc


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint line, parsed (its signature not yet checked)."""

    where: str
    """``FILE:LINE`` of the checkpoint."""
    count: int
    head: str
    log: str
    time: str
    mac: str | None
    body: str
    """The canonical JSON its ``mac`` signs."""

    def signature(self, key: AuditKey | None) -> str:
        """``valid``, ``invalid``, ``unsigned`` or ``unchecked`` (signed, but no key given)."""
        if self.mac is None:
            return "unsigned"
        if key is None:
            return "unchecked"
        return "valid" if key.verify(self.body, self.mac) else "invalid"


@dataclass(frozen=True)
class BadCheckpoint:
    """A line of a checkpoint file that is not a checkpoint."""

    where: str
    reason: str


def read_checkpoints(path: str | os.PathLike[str]) -> list[Checkpoint | BadCheckpoint]:
    """Parse a checkpoint file, one entry per non-blank line.

    Raises :class:`~guardrail.errors.AuditError` only when the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AuditError(f"{path}: cannot read checkpoint file: {exc.strerror or exc}") from exc
    out: list[Checkpoint | BadCheckpoint] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            out.append(_parse(f"{path}:{number}", line))
    return out


def _parse(where: str, line: str) -> Checkpoint | BadCheckpoint:
    try:
        data = json.loads(line)
    except ValueError as exc:
        return BadCheckpoint(where, f"not valid JSON ({exc})")
    if not isinstance(data, dict) or data.get("checkpoint") != CHECKPOINT_VERSION:
        return BadCheckpoint(where, f'not a checkpoint (no "checkpoint": {CHECKPOINT_VERSION})')
    count, head, log, time, mac = (data.get(k) for k in ("count", "head", "log", "time", "mac"))
    if type(count) is not int or count < 1:
        return BadCheckpoint(where, f"count must be a positive integer, got {count!r}")
    if not isinstance(head, str) or not _HEX64.match(head):
        return BadCheckpoint(where, "head must be 64 lower-case hex digits")
    if not isinstance(log, str) or not isinstance(time, str):
        return BadCheckpoint(where, "log and time must be strings")
    if mac is not None and not (isinstance(mac, str) and _MAC.match(mac)):
        return BadCheckpoint(where, f"mac must be {HMAC_PREFIX}<64 hex digits>")
    unknown = data.keys() - _FIELDS
    if unknown:
        return BadCheckpoint(where, f"unknown fields: {', '.join(sorted(unknown))}")
    body = {k: v for k, v in data.items() if k != "mac"}
    return Checkpoint(where, count, head, log, time, mac, canonical_json(body))
