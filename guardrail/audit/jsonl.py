"""The JSON-lines file sink: chained appends, file locks, rollback, crash recovery, checkpoints.

:class:`JsonlSink` is the audit log most deployments keep. What it does to the
file besides appending (reading its tail, moving a torn tail aside) is
:mod:`~guardrail.audit.logfile`'s; the anchors it appends after every N records
are :mod:`~guardrail.audit.checkpoints`'. Writers in several processes share one
file under an exclusive ``flock`` (POSIX).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from guardrail.audit.chain import HashChain
from guardrail.audit.checkpoints import append_checkpoint, checkpoint_dict, default_checkpoint_path
from guardrail.audit.indexwriter import INDEX_DROPPED, IndexWriter
from guardrail.audit.keys import AuditKey
from guardrail.audit.kinds import RECOVERY_KIND, event_dict
from guardrail.audit.logfile import (
    TORN_LINE,
    count_lines,
    quarantine_tail,
    tail_hash,
    torn_start,
    write_all,
)
from guardrail.audit.sinkbase import SinkBase
from guardrail.errors import AuditError, ConfigurationError

try:  # POSIX: serialise writers of one file across processes (gunicorn workers...).
    import fcntl
except ImportError:  # pragma: no cover - Windows: one writer process per file
    fcntl = None  # type: ignore[assignment]

__all__ = ["JsonlSink"]


class JsonlSink(SinkBase):
    """Appends records to a JSON-lines file, one canonical, chained line per record.

    The parent directory is created if needed. Each record is written with one
    unbuffered ``write`` (so it is in the file when ``write`` returns) and, with
    ``fsync=True``, forced to disk before returning. Reopening an existing file
    resumes its chain from the last line, read from the end of the file, so a
    log stays verifiable across process restarts.

    On POSIX several processes may append to one file: an exclusive ``flock``
    is held around each write, and a sink that sees the file grew under it
    re-reads the last line before chaining. A failed write is rolled back
    (the file is truncated to its previous size) and raises ``AuditError``.

    **Crash recovery.** A crash mid-write leaves a torn last line (bytes after the
    last newline; never an acknowledged record, whose write had returned). Under
    the same lock, once, whichever sink next touches the file moves those bytes
    to ``<log>.quarantine-<UTC time>`` next to the log, cuts them from the log and
    chains a ``recovery`` record naming the quarantine file and the bytes' length
    and sha256 (:mod:`~guardrail.audit.logfile`); then it carries on.
    :attr:`recoveries` lists the recoveries this sink made. A last *complete*
    line that is not a record is refused, and the file left untouched.

    **Checkpoints.** With ``checkpoint_every=N``, every N-th record of the file
    (counting every writer's records) is followed by a checkpoint line (record
    count and head hash, signed with ``key`` when given) appended to
    ``checkpoint_path`` (default ``<log>.checkpoint``), and so is a sink's last
    record when it is closed (:mod:`~guardrail.audit.checkpoints`). Opening
    such a sink counts the file's lines once.

    **Index.** Unless ``index=False``, the sink keeps ``<log>.index``, the few
    facts ``audit stats`` reads, one short row per record, and each record's
    line commits the index's digest (:mod:`~guardrail.audit.index`,
    :mod:`~guardrail.audit.indexwriter`). A log that exists without an index
    stays without one. Opening a log hashes its index once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        checkpoint_every: int | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        key: AuditKey | None = None,
        index: bool = True,
    ) -> None:
        if checkpoint_every is not None and (
            type(checkpoint_every) is not int or checkpoint_every < 1
        ):
            raise ConfigurationError(
                f"checkpoint_every must be a positive integer, got {checkpoint_every!r}"
            )
        if checkpoint_path is not None and checkpoint_every is None:
            raise ConfigurationError("checkpoint_path is only used with checkpoint_every")
        self.path = Path(path)
        self.fsync = fsync
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = (
            None
            if checkpoint_every is None
            else Path(checkpoint_path)
            if checkpoint_path is not None
            else default_checkpoint_path(self.path)
        )
        # One unbuffered write lands in the page cache in microseconds; only an
        # fsync waits on the disk.
        self.blocking = fsync
        self._key = key
        self._lock = threading.Lock()
        self._chain = HashChain()
        self._end = -1  # file size after our last write; -1: re-read the tail
        self._count = 0  # records in the file (kept only with checkpoints)
        self._unanchored = False  # this sink wrote records after its last checkpoint
        self._recoveries: list[dict[str, Any]] = []
        self._index = IndexWriter(self.path) if index else None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Read-write (the tail is read to resume the chain), append-only writes.
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open audit log: {exc}") from exc
        try:
            with self._lock, self._file_lock():
                self._sync()
        except BaseException:
            os.close(self._fd)
            if self._index is not None:
                self._index.close()
            raise

    @property
    def head(self) -> str:
        """The hash of the last record written through this sink (or found in the file)."""
        return self._chain.head

    @property
    def recoveries(self) -> tuple[dict[str, Any], ...]:
        """The details of each torn tail this sink moved aside (see ``recovery`` records)."""
        return tuple(self._recoveries)

    def write_json(self, data: dict[str, Any]) -> None:
        """Append one record; raises ``AuditError`` if it is not in the file afterwards.

        With checkpoints, a checkpoint that falls due is written after the record;
        if that fails, ``AuditError`` says so (the record itself was written, and
        the next checkpoint covers it).
        """
        with self._lock:
            fd = self._fd
            if fd < 0:
                raise AuditError(f"{self.path}: audit sink is closed")
            _lock_file(fd)  # not _FileLock: this is the hot path
            try:
                self._append(data, self._sync())
            finally:
                _unlock_file(fd)

    def close(self) -> None:
        """Close the file; later writes raise ``AuditError``.

        With checkpoints, a sink that wrote records since its last checkpoint first
        writes one for the file as it is now (``AuditError`` if that fails; the file
        is closed either way).
        """
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._unanchored:
                    with self._file_lock():
                        self._sync()
                        self._checkpoint()
            finally:
                fd, self._fd = self._fd, -1
                os.close(fd)
                if self._index is not None:
                    self._index.close()

    def _file_lock(self) -> _FileLock:
        return _FileLock(self._fd)

    def _append(self, data: dict[str, Any], end: int) -> None:
        """Seal and write one record at ``end`` (the file's size), under both locks."""
        ix = self._index
        prepared = ix.prepare(data) if ix is not None and ix.active else None
        chain = self._chain
        head = chain.head
        payload, digest = chain.seal_payload(data, index=None if prepared is None else prepared.hex)
        try:
            write_all(self._fd, payload)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._rollback(end)
            raise AuditError(f"{self.path}: audit record not written: {exc}") from exc
        chain.advance_from(head, digest)
        self._end = end + len(payload)
        self._count += 1
        if prepared is not None:
            assert ix is not None
            try:
                ix.commit(prepared)
            except OSError as exc:
                self._drop_index(exc)
        every = self.checkpoint_every
        if every is not None:
            self._unanchored = True
            if self._count % every == 0:
                self._checkpoint()

    def _sync(self) -> int:
        """Return the file size, re-reading the chain head if someone else changed the file.

        A torn tail found on the way is moved aside and a recovery record chained.
        """
        try:
            end = os.fstat(self._fd).st_size
            if end == self._end:
                return end
            start = torn_start(self._fd, end)
            head = tail_hash(self._fd, start, self.path)  # refuses a bad last line first
            if self.checkpoint_every is not None:
                if 0 <= self._end <= start:  # only appended to: count the new lines
                    self._count += count_lines(self._fd, self._end, start)
                else:
                    self._count = count_lines(self._fd, 0, start)
            self._chain.head = head
            self._end = start
            failure = None
            if self._index is not None:
                try:
                    self._index.sync(self._fd, start)
                except OSError as exc:
                    failure = exc
                    self._index.active = False
            if start < end:
                self._recover(start, end)
            if failure is not None:
                self._drop_index(failure)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read audit log: {exc}") from exc
        return self._end

    def _drop_index(self, exc: OSError) -> None:
        """Stop indexing this log after a failure, and record why (under both locks)."""
        ix, self._index = self._index, None
        assert ix is not None
        ix.close()
        details = {"index": ix.path.name, "error": f"{exc.strerror or exc}"}
        self._append(event_dict(INDEX_DROPPED, details), self._end)

    def _recover(self, start: int, end: int) -> None:
        details = quarantine_tail(self._fd, self.path, start, end)
        self._recoveries.append(details)
        self._append(event_dict(TORN_LINE, details, kind=RECOVERY_KIND), start)
        os.fsync(self._fd)  # a recovery is rare: always make it durable

    def _checkpoint(self) -> None:
        """Append a checkpoint for the file as it is (under both locks, after a sync)."""
        assert self.checkpoint_path is not None  # only called with checkpoints
        data = checkpoint_dict(
            log=self.path.name, count=self._count, head=self._chain.head, key=self._key
        )
        append_checkpoint(self.checkpoint_path, data, fsync=self.fsync)
        self._unanchored = False

    def _rollback(self, end: int) -> None:
        # Drop any partial line so the file stays a valid chain; if even that fails,
        # the next write re-reads the tail and moves the partial line aside.
        try:
            os.ftruncate(self._fd, end)
        except OSError:
            self._end = -1


class _FileLock:
    """An exclusive ``flock`` on a descriptor (a no-op where fcntl is missing)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        _lock_file(self._fd)

    def __exit__(self, *exc_info: object) -> None:
        _unlock_file(self._fd)


def _lock_file(fd: int) -> None:
    if fcntl is not None and fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise AuditError(f"cannot lock audit log: {exc}") from exc


def _unlock_file(fd: int) -> None:
    if fcntl is not None and fd >= 0:
        fcntl.flock(fd, fcntl.LOCK_UN)
