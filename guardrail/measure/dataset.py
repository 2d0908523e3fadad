"""Labelled data sets for ``guardrail eval``: JSONL or CSV in, validated rows out.

Each record is one conversation to judge and the labels it is measured against:

- ``prompt`` (required): the user's message;
- ``response`` (optional): the assistant's answer. A row with a response is judged
  at the response stage (prompt and response together), a row without one at the
  prompt stage. An empty or blank response counts as none;
- the gold safety label, one of ``level`` (``Safe``, ``Controversial`` or
  ``Unsafe``) or ``label`` (``safe`` or ``unsafe``);
- ``category`` (optional): the gold category (a Qwen3Guard category name, or
  ``None`` for a row that has none);
- ``refusal`` (optional, response rows only): whether the response refuses
  (``yes``/``no``/``true``/``false``, or a JSON boolean);
- ``expected_action`` (optional): the policy decision the row must get
  (``allow``, ``block``, ``rewrite`` or ``flag``);
- ``id`` (optional): a name for the row, unique in the file.

Values are matched without regard to case. In CSV an empty cell is a missing
value. Any other field whose name is close to one of these is taken for a typo
and refused; other fields are ignored and listed in
:attr:`Dataset.ignored_fields`. Every problem raises
:class:`~guardrail.errors.DatasetError` naming the file, the line where the record
starts (and, in CSV, its data row) and the field; nothing is judged then.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from guardrail.errors import DatasetError
from guardrail.types import Action, Category, ControversialMode, SafetyLevel, Stage

__all__ = [
    "FIELDS",
    "Dataset",
    "DatasetFormat",
    "LabelledRow",
    "load_dataset",
    "load_dataset_text",
]

DatasetFormat = Literal["jsonl", "csv"]
"""The file formats a data set can be written in."""

FIELDS = ("id", "prompt", "response", "level", "label", "category", "refusal", "expected_action")
"""Every field a record may carry."""

_SUFFIXES: Mapping[str, DatasetFormat] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_LEVELS = {level.value.lower(): level for level in SafetyLevel}
_LABELS = {"safe": False, "unsafe": True}
_CATEGORIES = {c.value.lower(): c for c in Category}
_BOOLEANS = {"yes": True, "true": True, "no": False, "false": False}
_ACTIONS = {a.value: a for a in Action}
_LEVEL_CHOICES = ", ".join(level.value for level in SafetyLevel)
_CATEGORY_CHOICES = "one of " + ", ".join(repr(c.value) for c in Category) + " or 'None'"
_ACTION_CHOICES = ", ".join(a.value for a in Action)


@dataclass(frozen=True)
class LabelledRow:
    """One conversation of a data set and its gold labels."""

    line: int
    """The 1-based line where the record starts."""
    row: int | None
    """The 1-based data row in a CSV file (the header is not counted); ``None`` in JSONL."""
    id: str | None
    prompt: str
    response: str | None
    level: SafetyLevel | None
    """The gold level, when the record gives ``level``."""
    label: bool | None
    """The gold binary label (``True`` = unsafe), when the record gives ``label``."""
    category: Category | None
    """The gold category; see :attr:`has_category` for whether one was given."""
    has_category: bool
    """Whether the record gives a category (``None`` counts as one: no category)."""
    refusal: bool | None
    expected_action: Action | None

    @property
    def stage(self) -> Stage:
        """The response stage for a row with a response, else the prompt stage."""
        return Stage.PROMPT if self.response is None else Stage.RESPONSE

    @property
    def name(self) -> str:
        """The row's id, or where it is (``line 4``, ``row 3``) when it has none."""
        if self.id is not None:
            return self.id
        return f"row {self.row}" if self.row is not None else f"line {self.line}"

    def gold_unsafe(self, mode: ControversialMode | str) -> bool:
        """Whether the gold label is unsafe under ``mode``'s reading of Controversial.

        A binary ``label`` reads the same in both modes; a ``Controversial`` level is
        unsafe in the strict reading and safe in the loose one.
        """
        if self.label is not None:
            return self.label
        if self.level is SafetyLevel.UNSAFE:
            return True
        if self.level is SafetyLevel.CONTROVERSIAL:
            return ControversialMode(mode) is ControversialMode.STRICT
        return False

    @property
    def gold_safe(self) -> bool:
        """Whether the row is labelled safe outright (``level: Safe`` or ``label: safe``)."""
        return self.label is False or self.level is SafetyLevel.SAFE


@dataclass(frozen=True)
class Dataset:
    """A validated data set."""

    source: str
    format: DatasetFormat
    rows: tuple[LabelledRow, ...]
    ignored_fields: tuple[str, ...] = ()
    """Fields present in the file that are not read (sorted)."""


def _format_of(source: str, file_format: str | None) -> DatasetFormat:
    if file_format is not None:
        if file_format not in ("jsonl", "csv"):
            raise DatasetError(
                f"unknown format {file_format!r}; expected jsonl or csv", source=source
            )
        return "jsonl" if file_format == "jsonl" else "csv"
    found = _SUFFIXES.get(Path(source).suffix.lower())
    if found is None:
        raise DatasetError(
            "cannot tell the format from the file name; name it .jsonl or .csv, or give "
            "the format (--format jsonl|csv)",
            source=source,
        )
    return found


def load_dataset(path: str | Path, *, file_format: DatasetFormat | None = None) -> Dataset:
    """Read and validate a data set file (format from its suffix unless ``file_format``).

    Raises :class:`~guardrail.errors.DatasetError` for a file that cannot be read or
    holds an invalid record, located by line (and CSV row) and field.
    """
    source = str(path)
    fmt = _format_of(source, file_format)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    return load_dataset_text(data, source, file_format=fmt)


def load_dataset_text(
    data: bytes | str, source: str = "<data>", *, file_format: DatasetFormat = "jsonl"
) -> Dataset:
    """Validate a data set given as bytes (UTF-8) or text; see :func:`load_dataset`."""
    text = _decode(data, source) if isinstance(data, bytes) else data
    text = text.removeprefix("\ufeff")
    fmt = _format_of(source, file_format)
    records = _jsonl_records(text, source) if fmt == "jsonl" else _csv_records(text, source)
    rows: list[LabelledRow] = []
    ignored: set[str] = set()
    seen_ids: dict[str, int] = {}
    for line, row, record in records:
        here = _Where(source, line, row)
        parsed = _row(record, here, ignored)
        if parsed.id is not None:
            if parsed.id in seen_ids:
                raise here.error(
                    f"duplicate id {parsed.id!r} (first on line {seen_ids[parsed.id]})", "id"
                )
            seen_ids[parsed.id] = line
        rows.append(parsed)
    if not rows:
        raise DatasetError("the data set has no rows", source=source)
    return Dataset(source, fmt, tuple(rows), tuple(sorted(ignored)))


# ------------------------------------------------------------------------- reading


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"not valid UTF-8 (byte {data[exc.start]:#04x})", source=source, line=line
        ) from None


def _jsonl_records(text: str, source: str) -> Iterator[tuple[int, int | None, dict[str, Any]]]:
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", source=source, line=number
            ) from None
        except RecursionError:
            raise DatasetError(
                "invalid JSON: nested too deeply", source=source, line=number
            ) from None
        if not isinstance(value, dict):
            raise DatasetError(
                f"each line must be a JSON object, not {_describe(value)}",
                source=source,
                line=number,
            )
        yield number, None, value


def _csv_records(text: str, source: str) -> Iterator[tuple[int, int | None, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    row_number = 0
    end = 0  # the line on which the previous record ended
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"invalid CSV: {exc}", source=source, line=reader.line_num) from None
        end = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if header is None:
            header = [cell.strip() for cell in cells]
            _check_header(header, source, start)
            continue
        row_number += 1
        if len(cells) != len(header):
            raise DatasetError(
                f"expected {len(header)} columns (as the header), found {len(cells)}",
                source=source,
                line=start,
                row=row_number,
            )
        # An empty cell is a missing value.
        yield start, row_number, {k: v for k, v in zip(header, cells, strict=True) if v.strip()}


def _check_header(header: list[str], source: str, line: int) -> None:
    seen: set[str] = set()
    for column, name in enumerate(header, start=1):
        if not name:
            raise DatasetError(
                f"column {column} of the header has no name", source=source, line=line
            )
        if name in seen:
            raise DatasetError(
                f"column {name!r} appears twice in the header", source=source, line=line
            )
        seen.add(name)
    if "prompt" not in seen:
        raise DatasetError("the header has no 'prompt' column", source=source, line=line)


# ---------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Where:
    source: str
    line: int
    row: int | None

    def error(self, message: str, field: str | None = None) -> DatasetError:
        return DatasetError(message, source=self.source, line=self.line, row=self.row, field=field)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(record: Mapping[str, Any], name: str, here: _Where) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise here.error(f"expected text, got {_describe(value)}", name)
    return value


def _choice(
    record: Mapping[str, Any], name: str, here: _Where, choices: Mapping[str, Any], expected: str
) -> Any:
    value = _text(record, name, here)
    if value is None:
        return None
    found = choices.get(value.strip().lower())
    if found is None:
        raise here.error(f"unknown value {value!r}; expected {expected}", name)
    return found


def _unknown_fields(record: Mapping[str, Any], here: _Where, ignored: set[str]) -> None:
    for name in record:
        if name in FIELDS:
            continue
        close = difflib.get_close_matches(name.lower(), FIELDS, n=1, cutoff=0.75)
        if close:
            raise here.error(f"unknown field; did you mean {close[0]!r}?", name)
        ignored.add(name)


def _row(record: Mapping[str, Any], here: _Where, ignored: set[str]) -> LabelledRow:
    _unknown_fields(record, here, ignored)
    raw_id = record.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise here.error(f"expected text or an integer, got {_describe(raw_id)}", "id")
    prompt = _text(record, "prompt", here)
    if prompt is None or not prompt.strip():
        raise here.error("missing: every row needs the user's prompt", "prompt")
    response = _text(record, "response", here)
    if response is not None and not response.strip():
        response = None
    level: SafetyLevel | None = _choice(record, "level", here, _LEVELS, _LEVEL_CHOICES)
    label: bool | None = _choice(record, "label", here, _LABELS, "safe or unsafe")
    if level is None and label is None:
        raise here.error(
            "missing: give the gold 'level' (Safe, Controversial, Unsafe) or 'label' "
            "(safe, unsafe)",
            "level",
        )
    if level is not None and label is not None:
        raise here.error("give 'level' or 'label', not both", "label")
    has_category = record.get("category") is not None
    category: Category | None = None
    if has_category:
        text = _text(record, "category", here)
        assert text is not None
        if text.strip().lower() != "none":
            category = _choice(record, "category", here, _CATEGORIES, _CATEGORY_CHOICES)
    refusal = _refusal(record, here)
    if refusal is not None and response is None:
        raise here.error("a refusal label needs a response to judge", "refusal")
    action: Action | None = _choice(record, "expected_action", here, _ACTIONS, _ACTION_CHOICES)
    return LabelledRow(
        line=here.line,
        row=here.row,
        id=None if raw_id is None else str(raw_id),
        prompt=prompt,
        response=response,
        level=level,
        label=label,
        category=category,
        has_category=has_category,
        refusal=refusal,
        expected_action=action,
    )


def _refusal(record: Mapping[str, Any], here: _Where) -> bool | None:
    value = record.get("refusal")
    if value is None or isinstance(value, bool):
        return value
    found: bool | None = _choice(record, "refusal", here, _BOOLEANS, "yes, no, true or false")
    return found
