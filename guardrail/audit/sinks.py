"""Where audit records go: a JSONL file, stdout, the app's own logger, or nowhere.

:func:`sink_from_config` builds the sink a policy's ``audit`` section names. The
sinks themselves: :class:`~guardrail.audit.jsonl.JsonlSink` (a JSON-lines file,
its own module), :class:`StreamSink` / :class:`StdoutSink` (chained lines on a
text stream), :class:`LoggerSink` (the app's logger) and
:class:`~guardrail.audit.sinkbase.NullSink`; the protocol they share, and
:func:`write_record` / :func:`write_event`, are
:mod:`~guardrail.audit.sinkbase`'s (re-exported here).

A write either lands whole or raises :class:`~guardrail.errors.AuditError`, and a
failed write never advances the hash chain, so the next record chains to the
last one that was actually written. Sinks are thread-safe (a lock around seal +
write keeps the chain order equal to the output order) and may be called from
async code: a write is a few microseconds of CPU and one ``write`` syscall (plus
``fsync`` when asked for; offload that case with ``asyncio.to_thread``).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import IO, Any, Protocol

from guardrail.audit.chain import HashChain, SealedRecord
from guardrail.audit.jsonl import JsonlSink
from guardrail.audit.keys import AuditKey
from guardrail.audit.linefmt import CHAIN_FIELDS, CHAIN_VERSION
from guardrail.audit.sinkbase import (
    AuditSink,
    NullSink,
    SinkBase,
    json_writer,
    write_event,
    write_record,
)
from guardrail.errors import AuditError, ConfigurationError

__all__ = [
    "AUDIT_EVENT",
    "SINK_KINDS",
    "AuditSettings",
    "AuditSink",
    "JsonlSink",
    "LoggerSink",
    "NullSink",
    "StdoutSink",
    "StreamSink",
    "json_writer",
    "sink_from_config",
    "sink_from_settings",
    "write_event",
    "write_record",
]

AUDIT_EVENT = "guardrail.audit"
"""The event name :class:`LoggerSink` logs records under."""


class StreamSink(SinkBase):
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


class LoggerSink(SinkBase):
    """Emits each record through the app's own logger as event ``guardrail.audit``.

    ``logger`` is anything with ``.info(event, **fields)``, typically a structlog
    ``BoundLogger``; the record's fields (with ``chain``, ``prev_hash`` and
    ``hash``, chained per sink; :func:`~guardrail.audit.chain.record_hash`
    recomputes a hash from them) become the event's key-values and the app's
    processors render them. With no logger, ``structlog.get_logger("guardrail.audit")`` is bound on
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
            fields = {
                **{k: v for k, v in data.items() if k not in CHAIN_FIELDS},
                "chain": CHAIN_VERSION,
                "prev_hash": sealed.prev_hash,
                "hash": sealed.hash,
            }
            try:
                self._logger.info(AUDIT_EVENT, **fields)
            except Exception as exc:
                raise AuditError(f"audit record not logged: {exc!r}") from exc
            self._chain.advance(sealed)


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
    def index(self) -> bool:
        """Whether the JSONL sink keeps the log's index."""
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
        index=config.index,
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
    index: bool = True,
) -> AuditSink:
    """Build the sink a policy's ``audit`` section names (``jsonl|stdout|logger|none``).

    ``checkpoint_every``, ``checkpoint_path``, ``key`` (which signs the
    checkpoints) and ``index`` are the JSONL sink's, see :class:`JsonlSink`.
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
            index=index,
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
