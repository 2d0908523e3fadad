"""What every audit record shares, and what tells records apart.

Every record carries the layout version (:data:`SCHEMA_VERSION`) and a time
written by :func:`iso_ms`. A guarded call's record has no ``kind`` field
(:mod:`~guardrail.audit.build` derives it); records that are not guarded calls
(a crash recovery, an event such as a circuit breaker's transition) are built
by :func:`event_dict` and carry a ``kind`` (see :data:`RECORD_KINDS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from guardrail.errors import ConfigurationError

__all__ = [
    "CALL_KIND",
    "EVENT_KIND",
    "RECORD_KINDS",
    "RECOVERY_KIND",
    "SCHEMA_VERSION",
    "as_utc",
    "check_event_names",
    "event_dict",
    "iso_ms",
    "utc_now",
]

SCHEMA_VERSION = 1
"""The record layout version written by this release (``schema_version``).

Still 1: a call record's layout is unchanged (old logs verify byte for byte),
and records of other kinds are told apart by their ``kind`` field."""

CALL_KIND = "call"
"""The kind of a guarded call's record; implied by the absence of a ``kind`` field."""
EVENT_KIND = "event"
"""The kind of an event record (:func:`~guardrail.audit.sinkbase.write_event`)."""
RECOVERY_KIND = "recovery"
"""The kind of the record a JSONL sink writes after moving a torn last line aside."""
RECORD_KINDS = (CALL_KIND, EVENT_KIND, RECOVERY_KIND)
"""The kinds this release writes. Readers accept any other kind as an event-like record."""


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """A datetime in UTC: naive values are taken as UTC, aware ones are converted.

    Every record (and every time filter) compares on this one clock.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso_ms(value: datetime) -> str:
    """A UTC datetime as written in records: ``2026-11-03T12:34:56.789Z``."""
    # isoformat is several times faster than strftime; the value is UTC, so the
    # "+00:00" suffix is replaced by "Z".
    text = value.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


# ----------------------------------------------------------- records that are not calls

_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


def check_event_names(kind: str, event: str) -> None:
    """Raise ConfigurationError unless ``kind`` and ``event`` are valid record names.

    ``kind``: lower-case letters, digits and ``_``, not ``call`` (a call record has
    no ``kind`` field); ``event``: 1-100 letters, digits and ``_.:-``.
    """
    if not isinstance(kind, str) or not _KIND.match(kind) or kind == CALL_KIND:
        raise ConfigurationError(
            f"audit record kind {kind!r} is not valid: lower-case letters, digits and _, "
            f"and not {CALL_KIND!r} (call records have no kind field)"
        )
    if not isinstance(event, str) or not _EVENT_TYPE.match(event):
        raise ConfigurationError(
            f"audit event type {event!r} is not valid: 1-100 letters, digits and _.:- "
            "(e.g. 'breaker.open')"
        )


def event_dict(
    event: str,
    details: Mapping[str, Any] | None = None,
    *,
    kind: str = EVENT_KIND,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A record that is not a guarded call, as its plain JSON dict (ready for ``write_json``).

    ``{"schema_version": 1, "kind": kind, "time": ..., "type": event, "details":
    {...}, "prev_hash": "", "hash": ""}``: chained like every record. ``event``
    names what happened (``breaker.open``); ``details`` holds JSON values under
    string keys (a value JSON cannot hold exactly makes the write raise
    ``AuditError``). ``time`` defaults to now (naive datetimes are UTC).
    """
    check_event_names(kind, event)
    if details is None:
        details = {}
    if not isinstance(details, Mapping) or not all(isinstance(k, str) for k in details):
        raise ConfigurationError("audit event details must be a mapping with string keys")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "time": iso_ms(utc_now() if time is None else as_utc(time)),
        "type": event,
        "details": dict(details),
        "prev_hash": "",
        "hash": "",
    }
