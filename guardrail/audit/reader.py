"""Reading audit logs back: records, search filters, summaries and file verification.

Everything here iterates lazily, so a bad line deep in a large file raises only
after every record before it was yielded (a search prints what it found before
reporting the problem).

A log holds guarded calls' records (:class:`~guardrail.audit.record.AuditRecord`)
and, since crash recovery and events exist, records of other kinds
(:class:`~guardrail.audit.record.EventRecord`). :func:`read_entries` yields
both; :func:`read_records` only the calls, so code written for call records
keeps working on any log. Filters and summaries take either.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from guardrail.audit.chain import GENESIS_HASH, VerifyResult, verify_chain
from guardrail.audit.kinds import CALL_KIND
from guardrail.audit.logfile import AuditFileError as AuditFileError  # re-exported
from guardrail.audit.record import AuditEntry, AuditRecord, EventRecord, parse_entry
from guardrail.types import Stage

_GZIP_MAGIC = b"\x1f\x8b"


def _open_text(path: str | os.PathLike[str]) -> TextIO:
    """The log as text: plain, or gzip-compressed (told by its first bytes, not its name)."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _open_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise AuditFileError(path, f"cannot open audit log: {exc.strerror or exc}") from exc
    with fh:
        number = 0
        try:
            for number, line in enumerate(fh, start=1):
                yield number, line
        except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib: a damaged gzip file
            raise AuditFileError(path, f"read failed: {exc}", line=number + 1) from exc


def read_entries(path: str | os.PathLike[str]) -> Iterator[AuditEntry]:
    """Yield every record of a JSONL audit log in file order, lazily: calls and other kinds.

    The file may be gzip-compressed (a rotated log): it is read as it is decompressed.

    A line with a ``kind`` field is an :class:`~guardrail.audit.record.EventRecord`
    (a recovery, an event...), any other an :class:`AuditRecord`. Blank lines are
    skipped (:func:`verify_file` reports them). A line that is not JSON, or not a
    record, raises :class:`AuditFileError` naming the file and line, after the
    records before it were yielded. Reading does not check the hash chain; use
    :func:`verify_file` or :func:`~guardrail.audit.verify.verify_log` for that.
    """
    for number, line in _open_lines(path):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise AuditFileError(path, f"not valid JSON ({exc})", line=number) from exc
        if not isinstance(data, dict):
            raise AuditFileError(path, "not an audit record: not a JSON object", line=number)
        try:
            yield parse_entry(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "record"
            raise AuditFileError(
                path, f"not an audit record: {field}: {err['msg']}", line=number
            ) from None


def read_records(path: str | os.PathLike[str]) -> Iterator[AuditRecord]:
    """Yield the guarded calls' records of a JSONL audit log in file order, lazily.

    Records of other kinds (recoveries, events) are passed over: use
    :func:`read_entries` to see them. Errors as :func:`read_entries`.
    """
    for entry in read_entries(path):
        if isinstance(entry, AuditRecord):
            yield entry


def verify_file(
    path: str | os.PathLike[str],
    *,
    genesis: str | None = GENESIS_HASH,
    on_record: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> VerifyResult:
    """Verify the hash chain of a JSONL audit log (see :func:`~guardrail.audit.chain.verify_chain`).

    Raises :class:`AuditFileError` only when the file cannot be read at all;
    problems inside it are reported in the result. Anchors, recoveries and counts
    per kind: :func:`~guardrail.audit.verify.verify_log`. Without ``on_record``
    the file is verified by :func:`~guardrail.audit.chainscan.scan_chain`, which
    parses no call's line of the current chain version.
    """
    if on_record is None:
        from guardrail.audit.chainscan import scan_chain

        return scan_chain(path, genesis=genesis).chain
    return verify_chain(_raw_lines(path), genesis=genesis, on_record=on_record)


def _raw_lines(path: str | os.PathLike[str]) -> Iterator[bytes | str]:
    """A log's lines as bytes, for the chain's fast path; as text where text differs.

    The lines are those a text reader yields (universal newlines): a line with a
    carriage return is decoded and split as a text reader splits it.
    """
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        fh: Any = gzip.GzipFile(path, "rb") if compressed else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise AuditFileError(path, f"cannot open audit log: {exc.strerror or exc}") from exc
    with fh:
        number = 0
        try:
            for line in fh:
                if b"\r" not in line:
                    number += 1
                    yield line
                    continue
                text = line.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
                parts = text.split("\n")
                for i, part in enumerate(parts):
                    if i < len(parts) - 1:
                        number += 1
                        yield part + "\n"
                    elif part:
                        number += 1
                        yield part
        except (OSError, EOFError, zlib.error) as exc:
            raise AuditFileError(path, f"read failed: {exc}", line=number + 1) from exc


def _fold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


@dataclass(frozen=True)
class RecordFilter:
    """Search criteria; every given criterion must hold (``None`` matches anything).

    - ``since`` (inclusive) / ``until`` (exclusive): the record's time; naive
      datetimes are taken as UTC;
    - ``action``: the call's final action;
    - ``flag``: one of the call's flags;
    - ``request_id``: exact match;
    - ``stage``, ``rule_id``, ``level``, ``category``: must all hold for ONE
      check of the call (``stage=response, level=Unsafe`` finds calls whose
      response was judged unsafe, not calls with an unsafe prompt and some response);
    - ``text``: a substring of the prompt or the response, case-insensitive; only
      records whose content mode kept the text (``full``, ``truncated``) can match,
      hashed content cannot be searched;
    - ``kind``: the record's kind (``call``, ``event``, ``recovery``);
    - ``event``: the type of a record that is not a call (``breaker.open``).

    The criteria about a call (action, flag, request id, text, the checks) match no
    record of another kind, and ``event`` no call; the times match both.
    Names compare case-insensitively (``unsafe`` matches ``Unsafe``).
    """

    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    stage: str | None = None
    rule_id: str | None = None
    flag: str | None = None
    level: str | None = None
    category: str | None = None
    request_id: str | None = None
    kind: str | None = None
    event: str | None = None
    text: str | None = None

    def matches(self, record: AuditEntry) -> bool:
        """Whether ``record`` meets every criterion."""
        if self.kind is not None and record.kind != self.kind.casefold():
            return False
        if self.since is not None and record.time < _utc(self.since):
            return False
        if self.until is not None and record.time >= _utc(self.until):
            return False
        if isinstance(record, EventRecord):
            return self._call_criteria_unset() and (
                self.event is None or record.type.casefold() == self.event.casefold()
            )
        if self.event is not None:
            return False
        if self.request_id is not None and record.request_id != self.request_id:
            return False
        if self.action is not None and record.final_action.value != self.action.casefold():
            return False
        if self.flag is not None and not any(
            f.casefold() == self.flag.casefold() for f in record.flags
        ):
            return False
        if self.text is not None and not text_matches(
            self.text.casefold(),
            record.content.mode,
            record.content.prompt,
            record.content.response,
        ):
            return False
        stage, rule, level, cat = (
            _fold(self.stage),
            _fold(self.rule_id),
            _fold(self.level),
            _fold(self.category),
        )
        if stage is None and rule is None and level is None and cat is None:
            return True
        for entry in record.stages:
            if stage is not None and entry.stage.value != stage:
                continue
            if rule is not None and entry.decision.rule_id.casefold() != rule:
                continue
            verdict = entry.verdict
            if level is not None and (verdict is None or verdict.level.value.casefold() != level):
                continue
            if cat is not None and (
                verdict is None
                or verdict.category is None
                or verdict.category.value.casefold() != cat
            ):
                continue
            return True
        return False

    def _call_criteria_unset(self) -> bool:
        return (
            self.action is None
            and self.stage is None
            and self.rule_id is None
            and self.flag is None
            and self.level is None
            and self.category is None
            and self.request_id is None
            and self.text is None
        )


SEARCHABLE_CONTENT = ("full", "truncated")
"""The content modes that keep readable text (``hash`` and ``none`` cannot be searched)."""


def text_matches(folded: str, mode: object, prompt: object, response: object) -> bool:
    """Whether ``folded`` (casefolded) occurs in a record's kept prompt or response text."""
    if mode not in SEARCHABLE_CONTENT:
        return False
    return any(isinstance(t, str) and folded in t.casefold() for t in (prompt, response))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


_E = TypeVar("_E", bound=AuditEntry)


def filter_records(records: Iterable[_E], criteria: RecordFilter) -> Iterator[_E]:
    """Yield the records that match ``criteria``, lazily (calls, other kinds, or both)."""
    return (r for r in records if criteria.matches(r))


class Percentiles(BaseModel):
    """Nearest-rank percentiles of a latency, in seconds (``None`` without data)."""

    model_config = ConfigDict(frozen=True)

    count: int = 0
    p50: float | None = None
    p95: float | None = None


def percentiles(values: list[float]) -> Percentiles:
    """p50 and p95 by the nearest-rank method (always an observed value)."""
    if not values:
        return Percentiles()
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return Percentiles(count=len(ordered), p50=rank(0.50), p95=rank(0.95))


class Summary(BaseModel):
    """What a set of audit records adds up to.

    Units: ``records`` and the ``by_action``/``by_rule``/``by_flag`` counts are
    calls (a rule that fired on several checks of one call counts once);
    ``checks``, ``by_level``, ``by_category``, ``refusals`` and ``guard_errors``
    count guard checks (a regenerated response is checked more than once).
    Records that are not calls are counted apart, in ``by_kind`` and ``by_event``.
    """

    model_config = ConfigDict(frozen=True)

    records: int = 0
    first_time: datetime | None = None
    last_time: datetime | None = None
    by_action: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    by_flag: dict[str, int] = {}
    unnecessary_refusals: int = 0
    """Calls flagged ``unnecessary_refusal`` (a safe prompt answered with a refusal)."""
    checks: dict[str, int] = {}
    """Guard checks per stage (``prompt``, ``response``)."""
    by_level: dict[str, dict[str, int]] = {}
    """Per stage: guard checks per safety level."""
    by_category: dict[str, dict[str, int]] = {}
    """Per stage: guard checks per category (checks without a category are not counted)."""
    refusals: int = 0
    """Response checks the guard judged to be refusals."""
    guard_errors: int = 0
    """Checks where the guard failed and the failure mode decided."""
    errors: int = 0
    """Every error recorded (guard, upstream, reward...)."""
    latency: dict[str, Percentiles] = {}
    """``guard``, ``upstream``, ``total``."""
    by_kind: dict[str, int] = {}
    """Records per kind: ``call`` (= ``records``), ``event``, ``recovery``..."""
    by_event: dict[str, int] = {}
    """Records that are not calls, per type (``breaker.open``, ``torn_line``...)."""


UNNECESSARY_REFUSAL = "unnecessary_refusal"


def summarize(records: Iterable[AuditEntry]) -> Summary:
    """Count a stream of records (see :class:`Summary`); consumes it in one pass.

    Records of every kind may be given (:func:`read_entries`): calls are
    summarised, the others counted per kind and type.
    """
    by_kind: Counter[str] = Counter()
    by_event: Counter[str] = Counter()
    n = 0
    first: datetime | None = None
    last: datetime | None = None
    by_action: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    by_flag: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    by_level: dict[str, Counter[str]] = {s.value: Counter() for s in Stage}
    by_category: dict[str, Counter[str]] = {s.value: Counter() for s in Stage}
    refusals = guard_errors = errors = 0
    guard: list[float] = []
    upstream: list[float] = []
    total: list[float] = []
    for record in records:
        by_kind[record.kind] += 1
        if isinstance(record, EventRecord):
            by_event[record.type] += 1
            continue
        n += 1
        first = record.time if first is None or record.time < first else first
        last = record.time if last is None or record.time > last else last
        by_action[record.final_action.value] += 1
        by_rule.update({e.decision.rule_id for e in record.stages})
        by_flag.update(record.flags)
        errors += len(record.errors)
        for entry in record.stages:
            s = entry.stage.value
            checks[s] += 1
            guard_errors += entry.error is not None
            v = entry.verdict
            if v is not None:
                by_level[s][v.level.value] += 1
                if v.category is not None:
                    by_category[s][v.category.value] += 1
                refusals += v.refusal is True and entry.stage is Stage.RESPONSE
        guard.append(record.latency.guard_s)
        if record.latency.upstream_s is not None:
            upstream.append(record.latency.upstream_s)
        total.append(record.latency.total_s)
    return Summary(
        records=n,
        first_time=first,
        last_time=last,
        by_action=dict(by_action.most_common()),
        by_rule=dict(by_rule.most_common()),
        by_flag=dict(by_flag.most_common()),
        unnecessary_refusals=by_flag[UNNECESSARY_REFUSAL],
        checks=dict(checks),
        by_level={s: dict(c.most_common()) for s, c in by_level.items()},
        by_category={s: dict(c.most_common()) for s, c in by_category.items()},
        refusals=refusals,
        guard_errors=guard_errors,
        errors=errors,
        latency={
            "guard": percentiles(guard),
            "upstream": percentiles(upstream),
            "total": percentiles(total),
        },
        by_kind={CALL_KIND: n, **dict(by_kind.most_common())},
        by_event=dict(by_event.most_common()),
    )
