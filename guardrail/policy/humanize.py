"""Turn what is wrong with a policy's data into located, human messages.

The loader hands over the parsed data, the pydantic errors of validating it
against :class:`~guardrail.policy.schema.Policy`, and a :class:`Locator` that
knows where each field path sits in the file. This module picks the errors that
are causes rather than consequences, maps each to its line and column, and
rewrites pydantic's wording for a person editing YAML::

    rules[1].when.levls: unknown key 'levls'; did you mean 'levels'?
    streaming.chunk_chars: expected an integer, got the text '400' (remove the quotes)

It reads no YAML: errors about the YAML itself (syntax, duplicate keys) are the
loader's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Protocol, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from guardrail.errors import PolicyError
from guardrail.policy.schema import Conditions, FieldValueError, Policy, Rule

__all__ = [
    "FieldPath",
    "Locator",
    "check_document",
    "format_field_path",
    "validation_error",
]

FieldPath = tuple[str | int, ...]
"""Where a value sits in the policy data, e.g. ``("rules", 2, "when", "levels")``."""


class Locator(Protocol):
    """Where field paths sit in the policy file (the loader's YAML marks)."""

    def locate(self, path: FieldPath, *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of ``path``'s value, or of its key with ``key=True``.

        A path that is not in the file resolves to its nearest ancestor that is.
        """
        ...


def format_field_path(path: FieldPath) -> str:
    """``("rules", 2, "when", "levels", 0)`` -> ``rules[2].when.levels[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_document(data: Any, marks: Locator, source: str) -> None:
    """Raise :class:`PolicyError` unless ``data`` is a mapping that says ``version: 1``.

    Checked before the schema: a list, or a file for another version, would
    otherwise drown the real cause in unknown-key and type errors.
    """
    if not isinstance(data, Mapping):
        line, column = marks.locate(())
        raise PolicyError(
            f"the top level must be a mapping of keys (version, name, rules...), "
            f"not {_describe(data)}",
            source=source,
            line=line,
            column=column,
        )
    if "version" not in data:
        line, column = marks.locate(())
        raise PolicyError(
            "missing; a policy starts with 'version: 1'",
            source=source,
            line=line,
            column=column,
            field="version",
        )
    version = data["version"]
    if type(version) is int and version == 1:
        return
    line, column = marks.locate(("version",))
    if type(version) is int:
        message = f"unsupported policy version {version}; this guardrail reads version 1"
    else:
        message = f"expected the integer 1, got {_describe(version)}"
    raise PolicyError(message, source=source, line=line, column=column, field="version")


def validation_error(
    exc: ValidationError,
    marks: Locator,
    source: str,
    *,
    root: type[BaseModel] = Policy,
) -> PolicyError:
    """The one :class:`PolicyError` to raise for a failed validation of ``root``.

    It is the first problem in file order, with ``(+N more errors)`` when there
    are others, located at its line, column and field path. ``root`` is the model
    the document was validated against (a :class:`Policy` by default): unknown keys
    are matched against its fields for "did you mean".
    """
    problems = sorted(
        (_problem(err, marks, source, root) for err in _root_causes(exc.errors())),
        key=lambda p: (p.line or 0, p.column or 0),
    )
    first, more = problems[0], len(problems) - 1
    if not more:
        return first
    return PolicyError(
        f"{first.reason} (+{more} more error{'s' if more > 1 else ''})",
        source=source,
        line=first.line,
        column=first.column,
        field=first.field,
    )


def _root_causes(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop the errors that are only consequences of another one.

    A list with a bad item is also "too short" (pydantic counts the valid items),
    and a misspelt key is also a missing one: report the bad item and the unknown
    key, whose message names the intended key.
    """
    locs = [tuple(err["loc"]) for err in errors]
    unknown: dict[FieldPath, list[str]] = {}
    for err, loc in zip(errors, locs, strict=True):
        if err["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
    kept = []
    for err, loc in zip(errors, locs, strict=True):
        if err["type"] in ("too_short", "string_too_short") and any(
            other[: len(loc)] == loc and other != loc for other in locs
        ):
            continue
        if err["type"] == "missing" and any(
            _closest(key, [str(loc[-1])]) for key in unknown.get(loc[:-1], ())
        ):
            continue
        kept.append(err)
    return kept or errors


def _problem(err: ErrorDetails, marks: Locator, source: str, root: type[BaseModel]) -> PolicyError:
    loc: FieldPath = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    at_key = False
    if loc and loc[-1] == "[key]":  # a mapping key failed (min_probability names)
        loc, at_key = loc[:-1], True
    path = loc
    error = ctx.get("error")
    if kind == "value_error" and isinstance(error, FieldValueError):
        path = (*loc, *error.path)
        message = error.reason
        line, column = marks.locate(path)
    elif kind == "extra_forbidden":
        message = _unknown_key(loc, root)
        line, column = marks.locate(loc, key=True)
    elif kind == "missing":
        message = "required key is missing"
        line, column = marks.locate(loc[:-1])
    else:
        message = _humanize(kind, err["msg"], ctx, value, loc, at_key=at_key, root=root)
        line, column = marks.locate(loc, key=at_key)
    return PolicyError(
        message,
        source=source,
        line=line,
        column=column,
        field=format_field_path(path) or None,
    )


def _unknown_key(loc: FieldPath, root: type[BaseModel]) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1], root)
    message = f"unknown key {key!r}"
    if model is None:
        return message
    if model is Rule and key in Conditions.model_fields:
        return f"{message}; conditions go under 'when:' (when: {{{key}: ...}})"
    names = list(model.model_fields)
    guess = _closest(key, names)
    if guess is not None:
        return f"{message}; did you mean {guess!r}?"
    return f"{message}; expected one of: {', '.join(names)}"


def _model_at(path: FieldPath, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (None inside a dict)."""
    model = root
    for part in path:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        inner = _inner_model(info.annotation) if info is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _closest(word: str, choices: list[str]) -> str | None:
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not matches:
        folded = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        matches = [lowered[m] for m in folded]
    return matches[0] if matches else None


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "text",
    "dict": "a mapping (key: value)",
    "model": "a mapping (key: value)",
    "model_attributes": "a mapping (key: value)",
    "tuple": "a list",
    "list": "a list",
}
_TYPE_ERROR = re.compile(r"^(int|float|bool|string|dict|model_attributes|model|tuple|list)_")
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _humanize(
    kind: str,
    msg: str,
    ctx: Mapping[str, Any],
    value: Any,
    loc: FieldPath,
    *,
    at_key: bool,
    root: type[BaseModel],
) -> str:
    if kind in ("enum", "literal_error"):
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        return _bad_choice(value, choices, loc, at_key=at_key, policy=root is Policy)
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    if kind in ("too_short", "string_too_short"):
        return "must not be empty (remove the key to leave it unset)"
    if kind == "string_pattern_mismatch":
        return _pattern_message(loc, value)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op, limit = next((_BOUNDS[k], ctx[k]) for k in _BOUNDS if k in ctx)
        return f"must be {op} {limit}, got {value!r}"
    if kind == "finite_number":
        return f"must be a finite number, got {value!r}"
    match = _TYPE_ERROR.match(kind)
    if match is not None or kind == "int_from_float":
        expected = _EXPECTED[match.group(1)] if match is not None else "an integer"
        return f"expected {expected}, got {_describe(value)}{_hint(expected, value)}"
    return msg[0].lower() + msg[1:] if msg else kind


def _bad_choice(
    value: Any, choices: list[str], loc: FieldPath, *, at_key: bool, policy: bool
) -> str:
    what = "name" if at_key else "value"
    if policy and value == "None" and "categories" in loc:
        return "'None' is not a category; to match verdicts without one use 'no_category: true'"
    message = f"invalid {what} {value!r}; expected one of: {', '.join(choices)}"
    guess = _closest(value, choices) if isinstance(value, str) else None
    if guess is not None:
        message = f"invalid {what} {value!r}; did you mean {guess!r}? (expected one of: "
        message += f"{', '.join(choices)})"
    return message


def _pattern_message(loc: FieldPath, value: Any) -> str:
    last = loc[-1] if loc else ""
    if "passthrough" in loc:
        return (
            f"{value!r} is not an API of the openai client; write its dotted path in "
            "lower case, e.g. 'responses.retrieve' or 'completions'"
        )
    if last == "api_key_env":
        return (
            f"{value!r} is not an environment variable name; give the NAME of the variable "
            "that holds the key, never the key itself"
        )
    return f"{value!r} may contain only letters, digits, '_', '.' and '-'"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _hint(expected: str, value: Any) -> str:
    if expected == "text" and isinstance(value, (bool, int, float)):
        return " (quote it: YAML reads yes/no/on/off/true/false and numbers as non-text)"
    if expected == "a list" and isinstance(value, str):
        return f" (write [{value}] for a list of one)"
    if value is None:
        return " (fill in the value or remove the key)"
    if expected in ("an integer", "a number") and isinstance(value, str):
        return " (remove the quotes)"
    return ""
