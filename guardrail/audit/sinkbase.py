"""The audit sink protocol, what the built-in sinks share, and handing any sink a record.

Every sink has ``write(record)`` and ``close()`` (:class:`AuditSink`). The
built-in sinks derive from :class:`SinkBase` and also have ``write_json(data)``,
which writes a record's plain JSON dict
(:func:`~guardrail.audit.build.record_dict`) without building the model; the
engine uses it when :func:`json_writer` finds it (:func:`write_record`). A write
either lands whole or raises :class:`~guardrail.errors.AuditError`: a safety
layer never drops an audit record silently, and the engine decides what a failed
write means for the call.

:func:`write_event` appends a record that is not a guarded call (e.g. a circuit
breaker's transition) to any sink with ``write_json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from guardrail.audit.kinds import event_dict
from guardrail.audit.record import AuditRecord
from guardrail.errors import AuditError

__all__ = ["AuditSink", "NullSink", "SinkBase", "json_writer", "write_event", "write_record"]


@runtime_checkable
class AuditSink(Protocol):
    """Where the engine writes one record per guarded call."""

    def write(self, record: AuditRecord) -> None:
        """Write one record; raise :class:`~guardrail.errors.AuditError` if it was not written."""
        ...

    def close(self) -> None:
        """Release the sink's resources; later writes raise ``AuditError``."""
        ...


_S = TypeVar("_S", bound="SinkBase")


class SinkBase:
    """What the built-in sinks share: ``write`` by way of ``write_json``, context management.

    ``blocking`` says whether a write may wait (on the disk, a pipe, a logging
    handler): async calls hand such writes to a worker thread and make the
    others inline. A sink of your own may set ``blocking = False`` to opt in.
    """

    blocking: bool = True

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
    if isinstance(sink, SinkBase):
        if type(sink).write in (SinkBase.write, NullSink.write):
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


class NullSink(SinkBase):
    """Discards every record (``audit: {sink: none}``)."""

    blocking = False

    def write(self, record: AuditRecord) -> None:
        """Do nothing (not even serialise the record)."""

    def write_json(self, data: dict[str, Any]) -> None:
        """Do nothing."""


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
