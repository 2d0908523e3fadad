"""Keeping a log's index (:mod:`~guardrail.audit.index`) in step with the log.

:class:`IndexWriter` is the JSONL sink's: every call happens under the sink's
locks (the log's ``flock`` included), so no other writer changes either file
meanwhile. For each record the sink asks for the rows to append and the digest
of the index with them (:meth:`IndexWriter.prepare`), seals the record's line
with that digest, writes the line, and then the rows (:meth:`IndexWriter.commit`).

Whenever the sink re-reads the log (on opening it, or after another process
appended), :meth:`IndexWriter.sync` re-reads what is new in the index and checks
its digest against the one the log's last record commits:

- an empty log starts a new index (a previous log's index is cut to its header);
- an index that matches is continued;
- an index a crash left behind (the log holds records whose rows were never
  written) is caught up: its digest is found among the last records' ``index``
  fields and the missing rows are rebuilt from their lines (an index's bytes are
  a function of the records);
- otherwise (no index, a log written without one, an index that matches no
  recent record) the sink writes no index for this log: its records carry no
  ``index`` field, and the statistics read the log itself.

The index is derived data: a failure to write it never loses a record. The
sink then stops indexing this log and says so in an event record
(``audit.index_dropped``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guardrail.audit.index import INDEX_HEADER, IndexFile, RowBuilder, index_path, read_index
from guardrail.audit.linefmt import V2_PREFIX, v2_index
from guardrail.audit.logfile import line_start, pread_exact, write_all

__all__ = ["INDEX_DROPPED", "IndexWriter", "Prepared"]

INDEX_DROPPED = "audit.index_dropped"
"""The type of the event record a sink writes when it stops indexing a log."""

REPAIR_BYTES = 64 << 20
"""How far back from the log's end a sink looks for the record its index stopped at."""


class Prepared:
    """The rows for one record and the index's state once they are appended.

    A plain slotted class: one is made for every record written.
    """

    __slots__ = ("defines", "digest", "hex", "rows", "seq")

    def __init__(self, rows: bytes, digest: Any, defines: str | None, seq: int) -> None:
        self.rows = rows
        self.digest = digest
        """The SHA-256 object of the index with the rows."""
        self.defines = defines
        self.seq = seq
        self.hex: str = digest.hexdigest()
        """The digest the record's line commits."""


class IndexWriter:
    """A log's index as one sink writes it (see the module notes)."""

    def __init__(self, log: Path) -> None:
        self.path = index_path(log)
        self.fd = -1
        self.active = False
        """Whether the sink indexes this log: its next record carries ``index``."""
        self._state: IndexFile | None = None
        self._builder = RowBuilder()

    def close(self) -> None:
        """Close the index file."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _open(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)

    def sync(self, log_fd: int, log_end: int) -> None:
        """Re-read the index after the log changed, ending at ``log_end`` (whole lines).

        Sets :attr:`active`. Raises ``OSError`` when a file cannot be read or written.
        """
        self.active = False
        if log_end == 0:  # a new log: a new index
            self._open()
            os.ftruncate(self.fd, 0)
            write_all(self.fd, INDEX_HEADER)
            self._restart(read_index(self.fd, len(INDEX_HEADER), definitions=True))
            self.active = True
            return
        last = pread_exact(log_fd, line_start(log_fd, log_end), log_end - 1)
        committed = v2_index(last) if last.startswith(V2_PREFIX) else None
        if committed is None:
            self._state = None  # a log written without an index stays without one
            return
        self._open()
        size = os.fstat(self.fd).st_size
        if size == 0:  # deleted: rebuilt below if the log is short enough
            write_all(self.fd, INDEX_HEADER)
            size = len(INDEX_HEADER)
        state = self._state
        if state is None or state.end > size:
            state = None
        state = read_index(self.fd, size, start=state, definitions=True)
        if not state.header_ok:
            self._state = None
            return
        if state.end < size:  # a row cut short by a crash: never committed, drop it
            os.ftruncate(self.fd, state.end)
        self._restart(state)
        if state.digest.hexdigest().encode() != committed:
            self._catch_up(log_fd, log_end, committed)
        self.active = self._state is not None

    def _restart(self, state: IndexFile) -> None:
        self._state = state
        assert state.defined is not None
        self._builder.defined = state.defined

    def prepare(self, data: Mapping[str, Any]) -> Prepared:
        """The rows for the next record and the digest its line commits."""
        state = self._state
        assert state is not None  # only called while active
        seq = state.seq + 1
        rows, defines = self._builder.rows(seq, data)
        digest = state.digest.copy()
        digest.update(rows)
        return Prepared(rows, digest, defines, seq)

    def commit(self, prepared: Prepared) -> None:
        """Append the rows of a record whose line was written; raises ``OSError``.

        On failure the index is cut back to before the rows and :attr:`active` cleared.
        """
        state = self._state
        assert state is not None
        try:
            write_all(self.fd, prepared.rows)
        except OSError:
            self.active = False
            self._state = None
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, state.end)
            raise
        state.end += len(prepared.rows)
        state.digest = prepared.digest
        state.seq = prepared.seq
        if prepared.defines is not None:
            self._builder.defined.add(prepared.defines)

    def _catch_up(self, log_fd: int, log_end: int, committed: bytes) -> None:
        """Rebuild rows a crash left out, from the last records' lines (see the module notes)."""
        state = self._state
        assert state is not None
        start = max(0, log_end - REPAIR_BYTES)
        lines = pread_exact(log_fd, start, log_end).split(b"\n")[:-1]
        if start > 0:
            lines = lines[1:]  # the first may be a part of a line
        have = state.digest.hexdigest().encode()
        at = None
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith(V2_PREFIX) and v2_index(lines[i]) == have:
                at = i
                break
        if at is None:  # rows for every line from the first, when the log starts here
            if not (start == 0 and state.seq == 0):
                self._state = None
                return
            at = -1
        for line in lines[at + 1 :]:
            try:
                data = json.loads(line)
            except ValueError:
                self._state = None
                return
            prepared = self.prepare(data if isinstance(data, dict) else {})
            self.commit(prepared)
        if state.digest.hexdigest().encode() != committed:
            self._state = None
