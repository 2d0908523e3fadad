"""Verifying a log for a reviewer: its chain, its anchors, and what it holds.

:func:`verify_log` checks a JSONL log's hash chain
(:func:`~guardrail.audit.chain.verify_chain`) and then its **anchors**, facts
kept outside the log that a log cut at the end no longer reaches:

- ``expect_head``: a head hash noted earlier; the log must contain the record
  with that hash (it may have grown since);
- ``min_count``: the log must hold at least this many records;
- ``checkpoints``: a checkpoint file (:mod:`~guardrail.audit.checkpoints`); for
  each checkpoint, record ``count`` must have hash ``head``. With ``key``, every
  checkpoint must carry a valid signature; without, signatures go unchecked
  (and are reported so).

When the log has an index (:mod:`~guardrail.audit.index`), it is checked
against the digests the records commit (:mod:`~guardrail.audit.indexcheck`):
an index edited after it was written is a finding, one a crash left behind is
not. A live log is verified as it was when the verification started: the log
and its index are read up to their sizes then.

It also reports what the log holds: records per kind, and each **recovery**
(a torn last line a sink moved aside after a crash), with whether the
quarantine file next to the log is still there and matches the recorded
sha256 and length. A recovery is not a failure: the moved bytes were never an
acknowledged record. Counts are of records of every kind (calls, events,
recoveries), as checkpoints count them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from guardrail.audit.chain import VerifyResult
from guardrail.audit.chainscan import scan_chain
from guardrail.audit.checkpoints import BadCheckpoint, Checkpoint, read_checkpoints
from guardrail.audit.index import IndexFile, index_path, read_index
from guardrail.audit.indexcheck import IndexCheck, index_sizes, judge_index
from guardrail.audit.keys import AuditKey
from guardrail.audit.kinds import RECOVERY_KIND
from guardrail.audit.logfile import AuditFileError
from guardrail.errors import ConfigurationError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

FileState = Literal["matches", "differs", "missing", "not checked"]


@dataclass(frozen=True)
class RecoveryNote:
    """A recovery record found in a log: a torn last line moved aside after a crash."""

    record: int
    """The recovery record's 1-based number (its line)."""
    time: str
    quarantine: str | None
    """The quarantine file's name, next to the log (``None`` if the record names none)."""
    bytes: int | None
    """How many torn bytes were moved."""
    sha256: str | None
    file: FileState
    """Whether the quarantine file is there and holds exactly the recorded bytes."""


@dataclass(frozen=True)
class AnchorCheck:
    """One anchor checked against the log."""

    anchor: str
    """What was checked: ``--expect-head 3f2a…``, ``--min-count 200``, ``FILE:LINE`` of a
    checkpoint."""
    ok: bool
    message: str
    line: int | None = None
    """The log line a failure points at (the first missing record); ``None`` when the
    failure is the anchor's own (a bad or forged checkpoint)."""


@dataclass(frozen=True)
class LogVerification:
    """What :func:`verify_log` found; ``ok`` when the chain is intact and every anchor holds."""

    path: str
    chain: VerifyResult
    kinds: Mapping[str, int] = field(default_factory=dict)
    """Verified records per kind (``call``, ``event``, ``recovery``...)."""
    recoveries: tuple[RecoveryNote, ...] = ()
    anchors: tuple[AnchorCheck, ...] = ()
    index: IndexCheck | None = None
    """The log's index checked against it (``None``: the log has none)."""

    @property
    def ok(self) -> bool:
        """The chain is intact, every anchor holds and the index, if any, is not edited.

        Recoveries, and an index a crash left behind, do not count against it.
        """
        return (
            self.chain.ok
            and all(a.ok for a in self.anchors)
            and (self.index is None or self.index.ok)
        )

    @property
    def count(self) -> int:
        """Records verified (all of them when the chain is intact)."""
        return self.chain.count

    @property
    def head(self) -> str:
        """The hash of the last verified record."""
        return self.chain.head


def verify_log(
    path: str | os.PathLike[str],
    *,
    expect_head: str | None = None,
    min_count: int | None = None,
    checkpoints: str | os.PathLike[str] | None = None,
    key: AuditKey | None = None,
) -> LogVerification:
    """Verify a JSONL log's chain and anchors, and list its recoveries (see the module doc).

    Raises :class:`~guardrail.audit.reader.AuditFileError` (an ``AuditError``)
    when the log or checkpoint file cannot be read, and ``ConfigurationError``
    for a malformed ``expect_head`` or a negative ``min_count``; problems inside
    the files are reported in the result.
    """
    if expect_head is not None and not _HEX64.match(expect_head):
        raise ConfigurationError(
            f"expected head {expect_head!r} is not a record hash (64 lower-case hex digits)"
        )
    if min_count is not None and (type(min_count) is not int or min_count < 0):
        raise ConfigurationError(f"minimum count must be an integer >= 0, got {min_count!r}")
    entries = read_checkpoints(checkpoints) if checkpoints is not None else []
    checks: list[AnchorCheck] = []
    usable: list[tuple[Checkpoint, str]] = []
    for entry in entries:
        if isinstance(entry, BadCheckpoint):
            checks.append(AnchorCheck(entry.where, False, f"not a checkpoint: {entry.reason}"))
            continue
        signature = entry.signature(key)
        if signature == "invalid":
            checks.append(
                AnchorCheck(
                    entry.where,
                    False,
                    "checkpoint signature does not match: the checkpoint was forged or "
                    "altered (or signed with another key)",
                )
            )
        elif signature == "unsigned" and key is not None:
            checks.append(
                AnchorCheck(
                    entry.where,
                    False,
                    "unsigned checkpoint, but a key was given: with a key every "
                    "checkpoint must be signed (an unsigned one can be forged)",
                )
            )
        else:
            usable.append((entry, signature))

    log = Path(path)
    ix_path = index_path(log)
    sizes = index_sizes(log, ix_path)
    state: IndexFile | None = None
    if sizes is not None:
        try:
            with open(ix_path, "rb") as ix:
                state = read_index(ix.fileno(), sizes[1])
        except OSError as exc:
            raise AuditFileError(ix_path, f"cannot read index: {exc.strerror or exc}") from exc
    recoveries: list[RecoveryNote] = []

    def other(number: int, data: Mapping[str, Any]) -> None:
        if data.get("kind") == RECOVERY_KIND:
            recoveries.append(_recovery_note(log, number, data))

    scan = scan_chain(
        log,
        positions=frozenset(c.count for c, _ in usable),
        expect_head=expect_head,
        on_other=other,
        limit=None if sizes is None else sizes[0],
    )
    chain = scan.chain
    hashes = scan.hashes
    head_at = scan.head_at
    index = judge_index(
        log,
        ix_path,
        scan,
        state,
        log_size=None if sizes is None else sizes[0],
        index_size=0 if sizes is None else sizes[1],
    )
    broken = "" if chain.ok else f" (the chain breaks at line {_break_line(chain)} first)"
    count = chain.count

    if expect_head is not None:
        short = f"--expect-head {expect_head[:12]}…"
        if head_at is not None:
            checks.append(AnchorCheck(short, True, f"reached at record {head_at}"))
        else:
            checks.append(
                AnchorCheck(
                    short,
                    False,
                    f"no record has this hash: the log was cut before it or rewritten{broken}",
                    line=count + 1,
                )
            )
    if min_count is not None:
        name = f"--min-count {min_count}"
        if count >= min_count:
            checks.append(AnchorCheck(name, True, f"reached ({count} records)"))
        else:
            checks.append(
                AnchorCheck(
                    name,
                    False,
                    f"the log holds {count} records, {min_count - count} fewer than "
                    f"{min_count}: records were cut from the end{broken}",
                    line=count + 1,
                )
            )
    for checkpoint, signature in usable:
        checks.append(_check_checkpoint(checkpoint, signature, count, hashes, broken))
    return LogVerification(
        path=str(path),
        chain=chain,
        kinds=dict(scan.kinds),
        recoveries=tuple(recoveries),
        anchors=tuple(checks),
        index=index,
    )


def _break_line(chain: VerifyResult) -> int:
    return chain.problem.line if chain.problem is not None else chain.count + 1


def _check_checkpoint(
    checkpoint: Checkpoint, signature: str, count: int, hashes: Mapping[int, str], broken: str
) -> AnchorCheck:
    signed = {
        "valid": "signature valid",
        "unchecked": "signature not checked: no key",
        "unsigned": "unsigned",
    }[signature]
    target = checkpoint.count
    if count < target:
        return AnchorCheck(
            checkpoint.where,
            False,
            f"the log holds {count} records, the checkpoint anchors record {target} "
            f"({target - count} records cut from the end; checkpoint {signed}){broken}",
            line=count + 1,
        )
    if hashes.get(target) != checkpoint.head:
        return AnchorCheck(
            checkpoint.where,
            False,
            f"record {target} is not the checkpointed one (hash {hashes.get(target, '')[:12]}…, "
            f"checkpoint {checkpoint.head[:12]}…): the log was rewritten; checkpoint {signed}",
            line=target,
        )
    return AnchorCheck(checkpoint.where, True, f"record {target} matches ({signed})")


def _recovery_note(log: Path, number: int, data: Mapping[str, Any]) -> RecoveryNote:
    details = data.get("details")
    details = details if isinstance(details, Mapping) else {}
    name, size, digest = details.get("quarantine"), details.get("bytes"), details.get("sha256")
    name = name if isinstance(name, str) else None
    size = size if type(size) is int else None
    digest = digest if isinstance(digest, str) else None
    time = data.get("time")
    return RecoveryNote(
        record=number,
        time=time if isinstance(time, str) else "",
        quarantine=name,
        bytes=size,
        sha256=digest,
        file=_quarantine_state(log, name, size, digest),
    )


def _quarantine_state(
    log: Path, name: str | None, size: int | None, digest: str | None
) -> FileState:
    # Only a plain name next to the log is looked at: a log line never makes us read
    # a file elsewhere.
    if not name or name in (".", "..") or "/" in name or "\\" in name or size is None:
        return "not checked"
    target = log.parent / name
    try:
        with open(target, "rb") as fh:
            h = hashlib.sha256()
            n = 0
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "not checked"
    return "matches" if (n == size and h.hexdigest() == digest) else "differs"
