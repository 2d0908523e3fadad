"""Where audit records go: a JSONL file, stdout, the app's own logger, or nowhere.

Every sink has ``write(record)`` and ``close()``. The built-in sinks also have
``write_json(data)``, which writes a record's plain JSON dict
(:func:`~guardrail.audit.build.record_dict`) without building the model; the
engine uses it when :func:`json_writer` finds it. A write either lands whole or
raises :class:`~guardrail.errors.AuditError`: a safety layer never drops an
audit record silently, and the engine decides what a failed write means for
the call. A failed write never advances the hash chain, so the next record
chains to the last one that was actually written.

Sinks are thread-safe (a lock around seal + write keeps the chain order equal
to the output order) and may be called from async code: a write is a few
microseconds of CPU and one ``write`` syscall (plus ``fsync`` when asked for;
offload that case with ``asyncio.to_thread``).

:func:`write_event` appends a record that is not a guarded call (e.g. a circuit
breaker's transition) to any sink with ``write_json``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

from guardrail.audit.build import RECOVERY_KIND, event_dict
from guardrail.audit.chain import HashChain, SealedRecord
from guardrail.audit.checkpoints import append_checkpoint, checkpoint_dict, default_checkpoint_path
from guardrail.audit.keys import AuditKey
from guardrail.audit.logfile import (
    TORN_LINE,
    count_lines,
    quarantine_tail,
    tail_hash,
    torn_start,
    write_all,
)
from guardrail.audit.record import AuditRecord
from guardrail.errors import AuditError, ConfigurationError

try:  # POSIX: serialise writers of one file across processes (gunicorn workers...).
    import fcntl
except ImportError:  # pragma: no cover - Windows: one writer process per file
    fcntl = None  # type: ignore[assignment]

AUDIT_EVENT = "guardrail.audit"
"""The event name :class:`LoggerSink` logs records under."""


@runtime_checkable
class AuditSink(Protocol):
    """Where the engine writes one record per guarded call."""

    def write(self, record: AuditRecord) -> None:
        """Write one record; raise :class:`~guardrail.errors.AuditError` if it was not written."""
        ...

    def close(self) -> None:
        """Release the sink's resources; later writes raise ``AuditError``."""
        ...


_S = TypeVar("_S", bound="_Sink")


class _Sink:
    """What the built-in sinks share: ``write`` by way of ``write_json``, context management."""

    def write(self, record: AuditRecord) -> None:
        """Write one record; raise :class:`~guardrail.errors.AuditError` if it was not written."""
        self.write_json(record.to_json_dict())

    def write_json(self, data: dict[str, Any]) -> None:
        """Write one record given as its JSON dict (``record_dict(...)``), unmodified."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the sink's resources (nothing to release by default)."""

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def json_writer(sink: AuditSink) -> Callable[[dict[str, Any]], None] | None:
    """The sink's ``write_json``, to hand it a record as its JSON dict; ``None`` if none.

    Built-in sinks have one; so do their subclasses, unless they override ``write``
    (such a subclass is given records, as it expects). Other sinks opt in by
    defining ``write_json(data)``; the :class:`AuditSink` protocol itself only
    promises ``write(record)``.
    """
    if isinstance(sink, _Sink):
        if type(sink).write in (_Sink.write, NullSink.write):
            return sink.write_json
        return None
    write_json = getattr(sink, "write_json", None)
    return write_json if callable(write_json) else None


def write_record(sink: AuditSink, data: dict[str, Any]) -> None:
    """Write a call's record, given as its JSON dict, to ``sink``.

    Sinks with a ``write_json`` (the built-in ones) take the dict; others get it
    validated as an :class:`~guardrail.audit.record.AuditRecord`.
    """
    write_json = json_writer(sink)
    if write_json is not None:
        write_json(data)
    else:
        sink.write(AuditRecord.model_validate(data))


class NullSink(_Sink):
    """Discards every record (``audit: {sink: none}``)."""

    def write(self, record: AuditRecord) -> None:
        """Do nothing (not even serialise the record)."""

    def write_json(self, data: dict[str, Any]) -> None:
        """Do nothing."""


class JsonlSink(_Sink):
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
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        checkpoint_every: int | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        key: AuditKey | None = None,
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
        self._key = key
        self._lock = threading.Lock()
        self._chain = HashChain()
        self._end = -1  # file size after our last write; -1: re-read the tail
        self._count = 0  # records in the file (kept only with checkpoints)
        self._unanchored = False  # this sink wrote records after its last checkpoint
        self._recoveries: list[dict[str, Any]] = []
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

    def _file_lock(self) -> _FileLock:
        return _FileLock(self._fd)

    def _append(self, data: dict[str, Any], end: int) -> None:
        """Seal and write one record at ``end`` (the file's size), under both locks."""
        sealed = self._chain.seal(data)
        payload = (sealed.line + "\n").encode("utf-8")
        try:
            write_all(self._fd, payload)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._rollback(end)
            raise AuditError(f"{self.path}: audit record not written: {exc}") from exc
        self._chain.advance(sealed)
        self._end = end + len(payload)
        self._count += 1
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
            if start < end:
                self._recover(start, end)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read audit log: {exc}") from exc
        return self._end

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


class StreamSink(_Sink):
    """Writes chained JSON lines to a text stream (``sys.stdout`` when ``stream`` is None).

    The chain starts at genesis for each sink, i.e. per process for stdout.
    ``sys.stdout`` is looked up at each write, so redirections made after the
    sink was built are honoured.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._chain = HashChain()

    @property
    def head(self) -> str:
        """The hash of the last record written."""
        return self._chain.head

    def write_json(self, data: dict[str, Any]) -> None:
        """Write and flush one line; raises ``AuditError`` if the stream fails."""
        with self._lock:
            sealed = self._chain.seal(data)
            stream = self._stream if self._stream is not None else sys.stdout
            try:
                stream.write(sealed.line + "\n")
                stream.flush()
            except (OSError, ValueError) as exc:  # ValueError: write to a closed stream
                raise AuditError(f"audit record not written to stream: {exc}") from exc
            self._chain.advance(sealed)


class StdoutSink(StreamSink):
    """Chained JSON lines on standard output (``audit: {sink: stdout}``)."""

    def __init__(self) -> None:
        super().__init__(None)


class LoggerSink(_Sink):
    """Emits each record through the app's own logger as event ``guardrail.audit``.

    ``logger`` is anything with ``.info(event, **fields)``, typically a structlog
    ``BoundLogger``; the record's fields (with ``prev_hash`` and ``hash``, chained
    per sink) become the event's key-values and the app's processors render
    them. With no logger, ``structlog.get_logger("guardrail.audit")`` is bound on
    the first write, after the app has had the chance to configure structlog;
    this library never configures structlog itself.
    """

    def __init__(self, logger: Any = None) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._chain = HashChain()

    def write_json(self, data: dict[str, Any]) -> None:
        """Log one record; raises ``AuditError`` if the logger fails."""
        with self._lock:
            if self._logger is None:
                import structlog

                # Bind once: calls through the lazy proxy cost ~10 us more each.
                self._logger = structlog.get_logger(AUDIT_EVENT).bind()
            sealed: SealedRecord = self._chain.seal(data)
            fields = {**data, "prev_hash": sealed.prev_hash, "hash": sealed.hash}
            try:
                self._logger.info(AUDIT_EVENT, **fields)
            except Exception as exc:
                raise AuditError(f"audit record not logged: {exc!r}") from exc
            self._chain.advance(sealed)


def write_event(
    sink: AuditSink,
    event: str,
    details: Mapping[str, Any] | None = None,
    *,
    time: datetime | None = None,
) -> None:
    """Append an event record (not a guarded call) to ``sink``, chained like every record.

    ``event`` names what happened, e.g. ``"breaker.open"`` (1-100 letters, digits
    and ``_.:-``); ``details`` holds its facts as JSON values under string keys,
    e.g. ``{"backend": "guard", "failures": 5}``; ``time`` defaults to now. The
    line is :func:`~guardrail.audit.build.event_dict`'s: ``{"kind": "event",
    "type": event, "details": {...}, "time": ...}`` plus the chain fields.
    Readers show it as an :class:`~guardrail.audit.record.EventRecord`
    (``guardrail audit search --kind event``; ``summary`` counts events apart
    from calls).

    Raises ``ConfigurationError`` for a bad name or details, and ``AuditError``
    when the record was not written, as for any record, or when ``sink`` cannot
    take records as JSON dicts (it needs ``write_json(data)``, which every
    built-in sink has: a sink given only call records is never handed one of
    another shape).
    """
    data = event_dict(event, details, time=time)
    write_json = getattr(sink, "write_json", None)
    if not callable(write_json):
        raise AuditError(
            f"{type(sink).__name__} cannot take event records: it has no "
            "write_json(data) method (every built-in sink has one)"
        )
    write_json(data)


SINK_KINDS = ("jsonl", "stdout", "logger", "none")


class AuditSettings(Protocol):
    """What :func:`sink_from_config` reads: a policy's ``audit`` section (``AuditConfig``)."""

    @property
    def sink(self) -> str:
        """``jsonl``, ``stdout``, ``logger`` or ``none``."""
        ...

    @property
    def path(self) -> str:
        """The JSONL file."""
        ...

    @property
    def fsync(self) -> bool:
        """Whether each JSONL record is synced to disk."""
        ...

    @property
    def checkpoint_every(self) -> int | None:
        """Records between checkpoints; ``None``: no checkpoints."""
        ...

    @property
    def checkpoint_path(self) -> str | None:
        """The checkpoint file; ``None``: the default, next to the log."""
        ...


def sink_from_config(
    config: AuditSettings, logger: Any = None, *, key: AuditKey | None = None
) -> AuditSink:
    """The sink a policy's ``audit`` section describes (``key`` signs its checkpoints)."""
    return sink_from_settings(
        config.sink,
        config.path,
        config.fsync,
        logger,
        checkpoint_every=config.checkpoint_every,
        checkpoint_path=config.checkpoint_path,
        key=key,
    )


def sink_from_settings(
    sink: str,
    path: str | os.PathLike[str] | None = None,
    fsync: bool = False,
    logger: Any = None,
    *,
    checkpoint_every: int | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    key: AuditKey | None = None,
) -> AuditSink:
    """Build the sink a policy's ``audit`` section names (``jsonl|stdout|logger|none``).

    ``checkpoint_every``, ``checkpoint_path`` and ``key`` (which signs the
    checkpoints) are the JSONL sink's, see :class:`JsonlSink`.
    """
    if sink != "jsonl" and (checkpoint_every is not None or checkpoint_path is not None):
        raise ConfigurationError(f"audit checkpoints need sink 'jsonl' (this sink is {sink!r})")
    if sink == "jsonl":
        if not path:
            raise ConfigurationError("audit sink 'jsonl' needs a path")
        return JsonlSink(
            path,
            fsync=fsync,
            checkpoint_every=checkpoint_every,
            checkpoint_path=checkpoint_path,
            key=key,
        )
    if sink == "stdout":
        return StdoutSink()
    if sink == "logger":
        return LoggerSink(logger)
    if sink == "none":
        return NullSink()
    raise ConfigurationError(
        f"unknown audit sink {sink!r}; expected one of {', '.join(SINK_KINDS)}"
    )
