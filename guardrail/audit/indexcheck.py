"""Checking a log's index against the log (``guardrail audit verify``).

Each record's line commits the digest of the index through its row
(:mod:`~guardrail.audit.index`), so the index is verified by hashing it once
and comparing the digest with the one the log's last record commits, as the
chain is verified (:func:`~guardrail.audit.chainscan.scan_chain`); only when
they differ is the log searched for an earlier record that commits it. What
:func:`judge_index` concludes:

- ``ok``: the index is exactly what the sinks wrote for these records;
- ``behind``: it ends at an earlier record (a crash between a record's write and
  its row's; the next sink to open the log catches it up, and ``stats`` reads
  the log until then): not a finding;
- ``unbound``: the log's last record commits no index (written without one), or
  ``missing``: the records commit one but there is no index file; ``stats`` reads
  the log: not a finding;
- ``mismatch``: the index matches none of the records: a row was edited, added
  or removed. A finding, located by a second pass (:func:`locate_mismatch`) at
  the first index line whose digest differs from the one its record commits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from guardrail.audit.chainscan import ChainScan, find_committed
from guardrail.audit.index import INDEX_HEADER, IndexFile
from guardrail.audit.linefmt import V2_PREFIX, v2_index

__all__ = ["IndexCheck", "IndexState", "judge_index", "locate_mismatch"]

IndexState = Literal["ok", "behind", "unbound", "missing", "mismatch"]


@dataclass(frozen=True)
class IndexCheck:
    """What checking a log's index found."""

    path: str
    state: IndexState
    message: str
    line: int | None = None
    """The index line a ``mismatch`` points at."""

    @property
    def ok(self) -> bool:
        """Whether this is not a finding (only a ``mismatch`` is)."""
        return self.state != "mismatch"


def judge_index(
    log: Path,
    index: Path,
    scan: ChainScan,
    state: IndexFile | None,
    *,
    log_size: int | None,
    index_size: int,
) -> IndexCheck | None:
    """Compare an index with what the chain scan found.

    ``None`` when no index is in play, or when the chain is broken (its finding comes
    first, and the index would only repeat it).
    """
    name = str(index)
    if not scan.chain.ok:  # the chain's finding says it all
        return None
    if state is None:
        if scan.last_index is None:
            return None
        return IndexCheck(
            name, "missing", "the records commit an index, but there is no index file"
        )
    if scan.last_index is None:
        return IndexCheck(
            name, "unbound", "the log's last record commits no index: the index is not used"
        )
    count = scan.chain.count
    if state.header_ok and state.digest.hexdigest() == scan.last_index:
        return IndexCheck(name, "ok", f"{state.seq} rows match the log")
    at = find_committed(log, state.digest.hexdigest(), limit=log_size) if state.header_ok else None
    if at is not None:
        return IndexCheck(
            name,
            "behind",
            f"it ends at record {at} of {count} (a crash left it behind; the "
            "next sink to open the log catches it up, stats reads the log until then)",
        )
    line, why = locate_mismatch(log, index, log_size=log_size, index_size=index_size)
    return IndexCheck(name, "mismatch", why, line=line)


def _lines(path: Path, size: int | None) -> Iterator[bytes]:
    left = size
    with open(path, "rb") as fh:
        for line in fh:
            if left is not None:
                if left <= 0:
                    return
                left -= len(line)
            yield line


def locate_mismatch(
    log: Path, index: Path, *, log_size: int | None, index_size: int
) -> tuple[int, str]:
    """The first index line whose digest differs from the one its record commits, and why."""
    rows = _lines(index, index_size)
    header = next(rows, b"")
    if header != INDEX_HEADER:
        return 1, "not an index of this release: its first line is not the header"
    digest = hashlib.sha256(header)
    at = 1
    number = 0
    for number, line in enumerate(_lines(log, log_size), start=1):
        while True:
            row = next(rows, None)
            if row is None:
                return at + 1, f"the index ends before record {number}'s row: rows were removed"
            at += 1
            digest.update(row)
            if not row.startswith(b"0\t"):  # a record's row (0: a key's definition)
                break
        committed = v2_index(line.rstrip(b"\n")) if line.startswith(V2_PREFIX) else None
        if committed is not None and digest.hexdigest().encode() != committed:
            return at, (
                f"the index through this row does not match the digest record {number} "
                "commits: this row, or one before it, was edited, added or removed"
            )
    return at + 1, (
        f"the index has rows past the log's last record ({number}): records were cut "
        "from the end of the log, or rows were added to the index"
    )


def index_sizes(log: Path, index: Path) -> tuple[int, int] | None:
    """The log's and the index's sizes as the last writer left them; ``None``: no index."""
    from guardrail.audit.index import snapshot_sizes

    try:
        return snapshot_sizes(os.fspath(log), os.fspath(index))
    except FileNotFoundError:
        return None
