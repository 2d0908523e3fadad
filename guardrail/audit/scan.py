"""Scanning audit logs fast: records as plain dicts, filtered without building models.

The review commands (``guardrail audit list``, ``stats``, ``export``, ``show``)
read logs of millions of records. Validating each line into an
:class:`~guardrail.audit.record.AuditRecord` costs far more than parsing it, so
this module reads lines as bytes, parses them with ``orjson`` when it is
installed (``json`` otherwise), checks only the fields the tools read, and
applies a :class:`~guardrail.audit.reader.RecordFilter` to the dicts with the
same meaning as :meth:`RecordFilter.matches <guardrail.audit.reader.RecordFilter.matches>`.
Everything streams: memory does not grow with the log.

A line that is not JSON, or not a record in the fields read, raises
:class:`~guardrail.audit.reader.AuditFileError` naming the file and line,
after every match before it was yielded.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

from guardrail.audit.kinds import CALL_KIND, iso_ms
from guardrail.audit.reader import AuditFileError, RecordFilter, text_matches

__all__ = [
    "ScannedRecord",
    "epoch_ms",
    "iter_lines",
    "json_loads",
    "match_dict",
    "record_kind",
    "scan",
    "shape_problem",
    "time_key",
]

_GZIP_MAGIC = b"\x1f\x8b"

_LOADS: Callable[[bytes], Any] | None = None


def json_loads() -> Callable[[bytes], Any]:
    """The JSON parser the scan uses: ``orjson.loads`` when installed, else ``json.loads``.

    Imported on first use, so that ``import guardrail`` loads neither.
    """
    global _LOADS
    if _LOADS is None:
        try:
            import orjson

            _LOADS = orjson.loads
        except ImportError:  # pragma: no cover - orjson is a dependency; json still works
            import json

            _LOADS = json.loads
    return _LOADS


def open_binary(path: str | os.PathLike[str]) -> BinaryIO | gzip.GzipFile:
    """The log's bytes: plain, or decompressed gzip (told by its first bytes, not its name)."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        if compressed:
            return gzip.GzipFile(path, "rb")
        return open(path, "rb", buffering=1 << 20)
    except OSError as exc:
        raise AuditFileError(path, f"cannot open audit log: {exc.strerror or exc}") from exc


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """``(number, line)`` for every line of a log, 1-based, as bytes with their newline."""
    fh = open_binary(path)
    with fh:
        number = 0
        try:
            for number, line in enumerate(fh, start=1):
                yield number, line
        except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib: a damaged gzip file
            raise AuditFileError(path, f"read failed: {exc}", line=number + 1) from exc


@dataclass(frozen=True)
class ScannedRecord:
    """One record of a log as the scan read it: where it is, its dict and its line."""

    path: str
    line: int
    data: dict[str, Any]
    raw: bytes
    """The line's bytes, without the newline (the record verbatim, chain fields included)."""


def record_kind(data: Mapping[str, Any]) -> str:
    """``call`` for a guarded call's record (it has no ``kind`` field), else its kind."""
    kind = data.get("kind")
    return CALL_KIND if kind is None else str(kind)


def shape_problem(data: Mapping[str, Any]) -> str | None:
    """The first field a review tool reads that is missing or of the wrong type, if any."""
    if not isinstance(data.get("time"), str):
        return "time: not a string"
    if "kind" in data:
        if not isinstance(data["kind"], str):
            return "kind: not a string"
        if not isinstance(data.get("type"), str):
            return "type: not a string"
        return None
    if not isinstance(data.get("request_id"), str):
        return "request_id: not a string"
    if not isinstance(data.get("final_action"), str):
        return "final_action: not a string"
    stages = data.get("stages")
    if not isinstance(stages, list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("decision"), dict)
        and isinstance(s.get("stage"), str)
        and (s.get("verdict") is None or isinstance(s["verdict"], dict))
        for s in stages
    ):
        return "stages: not a list of checks"
    if not isinstance(data.get("flags"), list):
        return "flags: not a list"
    return None


def parse_line(path: str, number: int, line: bytes) -> dict[str, Any] | None:
    """One line as a record dict; ``None`` for a blank line; AuditFileError if not a record."""
    try:
        data = json_loads()(line)
    except ValueError as exc:
        if not line.strip():
            return None
        raise AuditFileError(path, f"not valid JSON ({exc})", line=number) from None
    if not isinstance(data, dict):
        raise AuditFileError(path, "not an audit record: not a JSON object", line=number)
    problem = shape_problem(data)
    if problem is not None:
        raise AuditFileError(path, f"not an audit record: {problem}", line=number)
    return data


def scan(
    paths: Iterable[str | os.PathLike[str]], criteria: RecordFilter | None = None
) -> Iterator[ScannedRecord]:
    """Yield the records of the logs, in order, that match ``criteria`` (all when ``None``)."""
    keep = _matcher(criteria) if criteria is not None else None
    for p in paths:
        path = os.fspath(p)
        for number, line in iter_lines(path):
            data = parse_line(path, number, line)
            if data is None:
                continue
            if keep is None or keep(data):
                yield ScannedRecord(path, number, data, line.rstrip(b"\r\n"))


# --------------------------------------------------------------------------- times

_MINUTES: dict[str, int] = {}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _canonical_time(text: str) -> bool:
    # The form every record is written in: 2026-11-03T12:34:56.789Z (fixed width, UTC).
    return len(text) == 24 and text[23] == "Z" and text[10] == "T" and text[19] == "."


def time_key(text: str) -> str:
    """A record's time in the written form, so that times compare as strings.

    Records are written ``2026-11-03T12:34:56.789Z``; a time in another ISO-8601
    form (an offset, other precision) is converted.
    """
    if _canonical_time(text):
        return text
    return iso_ms(_parse_time(text))


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"time: {text!r} is not an ISO-8601 time") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def epoch_ms(text: str) -> int:
    """Milliseconds since the Unix epoch of a record's time."""
    if _canonical_time(text):
        minute = text[:16]
        base = _MINUTES.get(minute)
        if base is None:
            if len(_MINUTES) > 100_000:  # bounded: a log spans few distinct minutes per run
                _MINUTES.clear()
            base = (_parse_time(minute + ":00+00:00") - _EPOCH) // _MS
            _MINUTES[minute] = base
        return base + int(text[17:19]) * 1000 + int(text[20:23])
    return (_parse_time(text) - _EPOCH) // _MS


def _bound(value: datetime) -> str:
    """A filter's time in the written form, rounded up to the millisecond.

    Record times are whole milliseconds, so ``time >= since`` (``< until``) holds
    exactly when it holds for the bound rounded up.
    """
    utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    micro = utc.microsecond % 1000
    if micro:
        utc = utc + timedelta(microseconds=1000 - micro)
    return iso_ms(utc)


# ------------------------------------------------------------------------- filters


def _fold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


def _matcher(criteria: RecordFilter) -> Callable[[dict[str, Any]], bool]:
    """``criteria`` as a predicate on record dicts (see :func:`match_dict`)."""
    since = _bound(criteria.since) if criteria.since is not None else None
    until = _bound(criteria.until) if criteria.until is not None else None
    kind = _fold(criteria.kind)
    event = _fold(criteria.event)
    action = _fold(criteria.action)
    flag = _fold(criteria.flag)
    text = _fold(criteria.text)
    request_id = criteria.request_id
    stage, rule, level, cat = (
        _fold(criteria.stage),
        _fold(criteria.rule_id),
        _fold(criteria.level),
        _fold(criteria.category),
    )
    checks = not (stage is None and rule is None and level is None and cat is None)
    call_criteria = (
        action is not None
        or flag is not None
        or text is not None
        or request_id is not None
        or checks
    )

    def check_matches(entry: dict[str, Any]) -> bool:
        if stage is not None and str(entry["stage"]) != stage:
            return False
        if rule is not None and str(entry["decision"].get("rule_id")).casefold() != rule:
            return False
        verdict = entry.get("verdict")
        if level is not None and (verdict is None or str(verdict.get("level")).casefold() != level):
            return False
        if cat is not None:
            category = None if verdict is None else verdict.get("category")
            if category is None or str(category).casefold() != cat:
                return False
        return True

    def keep(data: dict[str, Any]) -> bool:
        record_kind_value = data.get("kind")
        if kind is not None and (record_kind_value or CALL_KIND) != kind:
            return False
        if since is not None or until is not None:
            t = time_key(data["time"])
            if since is not None and t < since:
                return False
            if until is not None and t >= until:
                return False
        if record_kind_value is not None:  # not a call: only the time, kind and event apply
            return not call_criteria and (event is None or data["type"].casefold() == event)
        if event is not None:
            return False
        if request_id is not None and data["request_id"] != request_id:
            return False
        if action is not None and data["final_action"] != action:
            return False
        if flag is not None and not any(str(f).casefold() == flag for f in data["flags"]):
            return False
        if text is not None:
            content = data.get("content")
            if not isinstance(content, dict) or not text_matches(
                text, content.get("mode"), content.get("prompt"), content.get("response")
            ):
                return False
        if not checks:
            return True
        return any(check_matches(e) for e in data["stages"])

    return keep


def match_dict(criteria: RecordFilter, data: dict[str, Any]) -> bool:
    """Whether a record's dict meets ``criteria``, as ``criteria.matches`` would its model."""
    return _matcher(criteria)(data)
