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
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

from guardrail.audit.chain import GENESIS_HASH, HashChain, SealedRecord
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
    A file whose last line is incomplete (a crash mid-write) is refused rather
    than chained onto: verify it and move it aside.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._chain = HashChain()
        self._end = -1  # file size after our last write; -1: re-read the tail
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

    def write_json(self, data: dict[str, Any]) -> None:
        """Append one record; raises ``AuditError`` if it is not in the file afterwards."""
        with self._lock:
            fd = self._fd
            if fd < 0:
                raise AuditError(f"{self.path}: audit sink is closed")
            _lock_file(fd)  # not _FileLock: this is the hot path
            try:
                end = self._sync()
                sealed = self._chain.seal(data)
                payload = (sealed.line + "\n").encode("utf-8")
                try:
                    _write_all(fd, payload)
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    self._rollback(end)
                    raise AuditError(f"{self.path}: audit record not written: {exc}") from exc
                self._chain.advance(sealed)
                self._end = end + len(payload)
            finally:
                _unlock_file(fd)

    def close(self) -> None:
        """Close the file; later writes raise ``AuditError``."""
        with self._lock:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def _file_lock(self) -> _FileLock:
        return _FileLock(self._fd)

    def _sync(self) -> int:
        """Return the file size, re-reading the chain head if someone else changed the file."""
        try:
            end = os.fstat(self._fd).st_size
            if end != self._end:
                self._chain.head = _tail_hash(self._fd, end, self.path)
                self._end = end
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read audit log: {exc}") from exc
        return end

    def _rollback(self, end: int) -> None:
        # Drop any partial line so the file stays a valid chain; if even that fails,
        # the next write re-reads the tail and refuses the torn line loudly.
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


def _write_all(fd: int, payload: bytes) -> None:
    written = os.write(fd, payload)
    if written < len(payload):  # a short write (rare): write the rest
        view = memoryview(payload)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _tail_hash(fd: int, end: int, path: Path) -> str:
    """The ``hash`` of the last line in the first ``end`` bytes of the file."""
    if end == 0:
        return GENESIS_HASH
    block = 4096
    pos = end
    buf = b""
    while True:
        # The last line is short in practice; grow the window only for long records.
        step = min(block, pos)
        pos -= step
        os.lseek(fd, pos, os.SEEK_SET)
        buf = _read_exact(fd, step) + buf
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut >= 0 or pos == 0:
            break
        block *= 2
    if not buf.endswith(b"\n"):
        raise AuditError(
            f"{path}: the last line is incomplete (a write was interrupted); "
            "run `guardrail audit verify` on it and move it aside before appending"
        )
    last = buf[cut + 1 :]
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


def _read_exact(fd: int, size: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


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


SINK_KINDS = ("jsonl", "stdout", "logger", "none")


def sink_from_settings(
    sink: str,
    path: str | os.PathLike[str] | None = None,
    fsync: bool = False,
    logger: Any = None,
) -> AuditSink:
    """Build the sink a policy's ``audit`` section names (``jsonl|stdout|logger|none``)."""
    if sink == "jsonl":
        if not path:
            raise ConfigurationError("audit sink 'jsonl' needs a path")
        return JsonlSink(path, fsync=fsync)
    if sink == "stdout":
        return StdoutSink()
    if sink == "logger":
        return LoggerSink(logger)
    if sink == "none":
        return NullSink()
    raise ConfigurationError(
        f"unknown audit sink {sink!r}; expected one of {', '.join(SINK_KINDS)}"
    )
