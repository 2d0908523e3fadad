"""Strict YAML documents: bounded parsing, with every field path's place recorded.

This module owns reading YAML text (str or UTF-8 bytes) for every strict file
guardrail reads, policies and case files alike, and the errors about the YAML
itself: size and character checks before parsing, bounded composition (nesting,
value count, aliases followed), duplicate and non-text keys, syntax errors. Each
raises :class:`~guardrail.errors.PolicyError` with the source, line and column.
:func:`parse_document` returns the data with a :class:`~guardrail.policy.humanize.Locator`
that maps field paths (e.g. ``("rules", 2, "when", "levels")``) back to lines and
columns; validating the data is the caller's job (:mod:`guardrail.policy.loader`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import yaml

from guardrail.errors import PolicyError
from guardrail.policy.humanize import FieldPath, Locator, format_field_path

__all__ = [
    "MAX_POLICY_BYTES",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_NODES",
    "DocumentKind",
    "YamlDocument",
    "parse_document",
]


_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"

# A policy is small (the default is 6 KB); anything this large or deep is a mistake or
# an attack, and PyYAML's pure-Python parser takes about a second per 100 KB of
# densely packed values. The limits keep any file's load well under a second.
MAX_POLICY_BYTES = 64 * 1024
"""The largest policy file (or text, UTF-8 encoded) that is parsed, in bytes."""
MAX_POLICY_DEPTH = 64
"""The deepest nesting of mappings and lists a policy may have."""
MAX_POLICY_NODES = 10_000
"""The most YAML values (keys, scalars, collections) a policy file may hold."""
# Aliases share nodes, so a few lines of YAML can expand exponentially: the values a
# policy expands to, aliases followed, are bounded too.
_MAX_EXPANDED = 20_000


@dataclass(frozen=True)
class DocumentKind:
    """What kind of YAML document is read: the words its errors use, and its size limits.

    This module's YAML reading (size and character checks, bounded parsing,
    field-path marks, duplicate keys) serves every strict YAML file guardrail reads;
    only the wording and the limits differ.
    """

    noun: str
    """``policy``: "the policy is too large"."""
    plural: str
    """``policies``: "policies may nest at most 64 levels deep"."""
    empty_hint: str
    """What an empty document is missing, e.g. "it needs at least 'version: 1', ..."."""
    max_bytes: int = MAX_POLICY_BYTES
    max_depth: int = MAX_POLICY_DEPTH
    max_nodes: int = MAX_POLICY_NODES
    max_expanded: int = _MAX_EXPANDED
    """The most values once aliases are followed."""


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document: its data, where each field path sits, and its bytes."""

    data: Any
    marks: Locator
    raw: bytes
    """The UTF-8 bytes that were parsed (their sha256 identifies the document)."""


# What YAML 1.1 refuses to read (PyYAML's Reader.NON_PRINTABLE).
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def parse_document(text: str | bytes, source: str, kind: DocumentKind) -> YamlDocument:
    """Parse a strict YAML document of ``kind``, recording where each field path sits.

    Refused, with :class:`~guardrail.errors.PolicyError` naming ``source`` and the
    line and column where they apply: text that is not ``str`` or UTF-8 bytes, a
    document over ``kind``'s size, nesting or value limits, characters YAML does not
    allow, YAML syntax errors, duplicate keys, keys that are not text, and an empty
    document. The caller validates the data (``marks`` locates its errors).
    """
    if isinstance(text, (bytearray, memoryview)):
        text = bytes(text)
    if not isinstance(text, (str, bytes)):
        raise PolicyError(
            f"a {kind.noun} must be YAML text or bytes, not {type(text).__name__}", source=source
        )
    # A str is at least one UTF-8 byte per character: too many characters is too large.
    if len(text) > kind.max_bytes:
        raise _too_large(source, kind)
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise PolicyError(
                "the file is not UTF-8 text", source=source, line=line, column=column
            ) from None
        _check_characters(text, source, kind)
    else:
        _check_characters(text, source, kind)  # before encoding: a lone surrogate has no UTF-8
        raw = text.encode("utf-8")
        if len(raw) > kind.max_bytes:
            raise _too_large(source, kind)
    data, marks = _parse(text, source, kind)
    return YamlDocument(data=data, marks=marks, raw=raw)


# ------------------------------------------------------------------------ YAML side


@dataclass
class _Marks:
    """Where each field path's key and value start in the text (0-based marks)."""

    keys: dict[FieldPath, yaml.Mark] = field(default_factory=dict)
    values: dict[FieldPath, yaml.Mark] = field(default_factory=dict)
    empty: set[FieldPath] = field(default_factory=set)
    """Paths whose value is empty (``key:`` alone): errors there point at the key."""

    def locate(self, path: FieldPath, *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of ``path``, or of its nearest located ancestor."""
        if (key or path in self.empty) and path in self.keys:
            mark = self.keys[path]
        else:
            while path and path not in self.values:
                path = path[:-1]
            mark = self.values[path]
        return mark.line + 1, mark.column + 1


def _too_large(source: str, kind: DocumentKind) -> PolicyError:
    return PolicyError(
        f"the {kind.noun} is too large: {kind.noun} files are limited to "
        f"{kind.max_bytes:,} bytes ({kind.max_bytes // 1024} KiB)",
        source=source,
    )


def _check_characters(text: str, source: str, kind: DocumentKind) -> None:
    """Refuse, with its place, the first character YAML does not allow."""
    found = _NON_PRINTABLE.search(text)
    if found is None:
        return
    char = found.group()
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        what = f"a lone surrogate (U+{code:04X}), which is not valid Unicode text"
    elif unicodedata.category(char) == "Cc":
        name = _CONTROL_NAMES.get(code)
        what = (
            f"the control character U+{code:04X}"
            + (f" ({name})" if name else "")
            + f', which YAML does not allow; write it as "\\x{code:02x}" inside double quotes'
        )
    else:
        what = f"the character U+{code:04X}, which YAML does not allow"
    start = found.start()
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    raise PolicyError(
        f"the {kind.noun} contains {what}",
        source=source,
        line=line,
        column=column,
    )


_CONTROL_NAMES = {0: "NUL", 7: "BEL", 8: "backspace", 0x1B: "ESC", 0x7F: "DEL"}


class _PolicyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting and value count are checked while composing.

    PyYAML composes nested collections recursively, so without a bound deep
    nesting ends in ``RecursionError``; values it cannot build (an integer of
    5,000 digits, the 31st of February) raise a located YAML error instead of
    ``ValueError``.
    """

    def __init__(self, text: str, source: str, kind: DocumentKind) -> None:
        super().__init__(text)
        self.source = source
        self.kind = kind
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        self.nodes += 1
        try:
            kind = self.kind
            if self.depth > kind.max_depth or self.nodes > kind.max_nodes:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                limit = (
                    f"{kind.plural} may nest at most {kind.max_depth} levels deep"
                    if self.depth > kind.max_depth
                    else f"{kind.plural} may hold at most {kind.max_nodes:,} values"
                )
                raise PolicyError(
                    f"the {kind.noun} is too large or too deeply nested: {limit}",
                    source=self.source,
                    line=mark.line + 1,
                    column=mark.column + 1,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            problem = (
                "this integer has too many digits to read"
                if node.tag == _INT_TAG
                else f"cannot read this value ({exc})"
            )
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _parse(text: str, source: str, kind: DocumentKind) -> tuple[Any, _Marks]:
    loader = _PolicyLoader(text, source, kind)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyError(
                f"the {kind.noun} is empty; {kind.empty_hint}",
                source=source,
                line=1,
                column=1,
            )
        marks = _Marks()
        _Walker(marks, source, kind).walk(root, ())
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        raise PolicyError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()
    return data, marks


def _syntax_error(exc: yaml.MarkedYAMLError, source: str) -> PolicyError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "malformed YAML"
    message = f"invalid YAML: {problem}"
    if exc.context:
        message += f" ({exc.context}"
        if exc.context_mark is not None and exc.context_mark is not mark:
            message += f" at line {exc.context_mark.line + 1}"
        message += ")"
    if "\\t" in problem or "\t" in problem:
        message += "; indent with spaces, YAML does not allow tabs"
    return PolicyError(
        message,
        source=source,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
    )


@dataclass
class _Walker:
    marks: _Marks
    source: str
    kind: DocumentKind
    visited: int = 0

    def walk(self, node: yaml.Node, path: FieldPath, depth: int = 0) -> None:
        self.visited += 1
        kind = self.kind
        if self.visited > kind.max_expanded or depth > kind.max_depth:
            mark = node.start_mark
            raise PolicyError(
                f"the {kind.noun} is too large or too deeply nested once its aliases are "
                f"followed (at most {kind.max_depth} levels and {kind.max_expanded:,} values; "
                "a recursive YAML alias?)",
                source=self.source,
                line=mark.line + 1,
                column=mark.column + 1,
            )
        self.marks.values.setdefault(path, node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _NULL_TAG and node.value == "":
                self.marks.empty.add(path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i), depth + 1)
        elif isinstance(node, yaml.MappingNode):
            self._walk_mapping(node, path, depth)

    def _walk_mapping(self, node: yaml.MappingNode, path: FieldPath, depth: int) -> None:
        # Merged mappings (<<: *anchor) first, so explicit keys override their marks,
        # as they override their values.
        explicit = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for merged in sources:
                    self.walk(merged, path, depth + 1)
            else:
                explicit.append((key_node, value_node))
        self.marks.values[path] = node.start_mark
        seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            key_path = (*path, key)
            mark = key_node.start_mark
            if key in seen:
                raise PolicyError(
                    f"duplicate key {key!r} (first given at line {seen[key].line + 1}); "
                    "YAML would silently keep only the last one",
                    source=self.source,
                    line=mark.line + 1,
                    column=mark.column + 1,
                    field=format_field_path(key_path),
                )
            seen[key] = mark
            self.marks.keys[key_path] = mark
            self.marks.values.pop(key_path, None)  # a merged value's mark is replaced
            self.marks.empty.discard(key_path)
            self.walk(value_node, key_path, depth + 1)

    def _key(self, node: yaml.Node, path: FieldPath) -> str:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG:
            return str(node.value)
        mark = node.start_mark
        shown = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
        raise PolicyError(
            f"keys must be text, but YAML reads {shown!r} as {_TAG_NAMES.get(node.tag, node.tag)}"
            " (quote it)",
            source=self.source,
            line=mark.line + 1,
            column=mark.column + 1,
            field=format_field_path(path) or None,
        )


_TAG_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    _NULL_TAG: "null",
    "tag:yaml.org,2002:timestamp": "a date",
}
