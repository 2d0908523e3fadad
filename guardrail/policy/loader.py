"""Load policies from YAML, with errors that point at the file, line, column and field.

The YAML is composed into a node graph first. One walk over it records where
every key and value sits (by field path, e.g. ``("rules", 2, "when", "levels")``)
and rejects what PyYAML would accept silently: duplicate keys and non-text keys.
The data is then validated by :class:`~guardrail.policy.schema.Policy`, and each
pydantic error is mapped back to its node and rewritten for a human::

    policy.yaml:14:7: rules[1].when.levls: unknown key 'levls'; did you mean 'levels'?
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from guardrail.errors import PolicyError
from guardrail.policy.schema import Conditions, FieldValueError, Policy, Rule

__all__ = [
    "DEFAULT_POLICY_TEXT",
    "default_policy",
    "format_field_path",
    "load_policy",
    "load_policy_text",
]

FieldPath = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Aliases share nodes, so a few lines of YAML can expand exponentially; a policy is
# small, and anything this large or deep is a mistake or an attack.
_MAX_NODES = 100_000
_MAX_DEPTH = 64


# ---------------------------------------------------------------------- public API


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a YAML policy file.

    The policy's :attr:`~Policy.source` is ``path`` and its
    :attr:`~Policy.content_hash` the sha256 of the file's bytes. Every problem,
    from an unreadable file to a rule that can never take effect, raises
    :class:`~guardrail.errors.PolicyError` naming the file and, when it applies,
    the 1-based line and column and the field path.
    """
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy file: {exc.strerror or exc}", source=source
        ) from exc
    return load_policy_text(raw, source)


def load_policy_text(text: str | bytes, source: str = "<string>") -> Policy:
    """Validate a policy given as YAML text; ``source`` names it in errors.

    Bytes must be UTF-8. The content hash is the sha256 of the UTF-8 bytes.
    """
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
    else:
        raw = text.encode("utf-8")
    data, marks = _parse(text, source)
    policy = _validate(data, marks, source)
    policy._source = source
    policy._content_hash = hashlib.sha256(raw).hexdigest()
    return policy


@functools.cache
def default_policy() -> Policy:
    """The balanced default policy, parsed once (policies are immutable)."""
    return load_policy_text(DEFAULT_POLICY_TEXT, "<default policy>")


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


def _parse(text: str, source: str) -> tuple[Any, _Marks]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyError(
                "the policy is empty; it needs at least 'version: 1', a 'name' and rules",
                source=source,
                line=1,
                column=1,
            )
        marks = _Marks()
        _Walker(marks, source).walk(root, ())
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
    visited: int = 0

    def walk(self, node: yaml.Node, path: FieldPath, depth: int = 0) -> None:
        self.visited += 1
        if self.visited > _MAX_NODES or depth > _MAX_DEPTH:
            mark = node.start_mark
            raise PolicyError(
                "the policy is too large or too deeply nested (a recursive YAML alias?)",
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


# ------------------------------------------------------------------ validation side


def _validate(data: Any, marks: _Marks, source: str) -> Policy:
    if not isinstance(data, Mapping):
        line, column = marks.locate(())
        raise PolicyError(
            f"the top level must be a mapping of keys (version, name, rules...), "
            f"not {_describe(data)}",
            source=source,
            line=line,
            column=column,
        )
    _check_version(data, marks, source)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = sorted(
            (_problem(err, marks, source) for err in _root_causes(exc.errors())),
            key=lambda p: (p.line or 0, p.column or 0),
        )
    first, more = problems[0], len(problems) - 1
    if not more:
        raise first
    raise PolicyError(
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


def _check_version(data: Mapping[str, Any], marks: _Marks, source: str) -> None:
    # Checked before the rest: a file for another version would otherwise drown the
    # real cause in unknown-key errors.
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


def _problem(err: ErrorDetails, marks: _Marks, source: str) -> PolicyError:
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
        message = _unknown_key(loc)
        line, column = marks.locate(loc, key=True)
    elif kind == "missing":
        message = "required key is missing"
        line, column = marks.locate(loc[:-1])
    else:
        message = _humanize(kind, err["msg"], ctx, value, loc, at_key=at_key)
        line, column = marks.locate(loc, key=at_key)
    return PolicyError(
        message,
        source=source,
        line=line,
        column=column,
        field=format_field_path(path) or None,
    )


def _unknown_key(loc: FieldPath) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
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


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (None inside a dict)."""
    model: type[BaseModel] = Policy
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
) -> str:
    if kind in ("enum", "literal_error"):
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        return _bad_choice(value, choices, loc, at_key=at_key)
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


def _bad_choice(value: Any, choices: list[str], loc: FieldPath, *, at_key: bool) -> str:
    what = "name" if at_key else "value"
    if value == "None" and "categories" in loc:
        return "'None' is not a category; to match verdicts without one use 'no_category: true'"
    message = f"invalid {what} {value!r}; expected one of: {', '.join(choices)}"
    guess = _closest(value, choices) if isinstance(value, str) else None
    if guess is not None:
        message = f"invalid {what} {value!r}; did you mean {guess!r}? (expected one of: "
        message += f"{', '.join(choices)})"
    return message


def _pattern_message(loc: FieldPath, value: Any) -> str:
    last = loc[-1] if loc else ""
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


# -------------------------------------------------------------- the default policy

# Byte-identical to policies/default.yaml (a test keeps them in step), so the
# default policy's content hash is the same whichever way it is loaded.
DEFAULT_POLICY_TEXT = """\
# guardrail policy: the balanced default.
#
# guardrail uses this policy when none is given (guardrail.Policy.default()).
# To adapt it, copy the file, change `name`, edit, and check your copy with
#     guardrail policy validate my-policy.yaml
# which points at the exact line and field of any mistake.
#
# How a call is decided, stage by stage (first the prompt, then the response):
#   1. The guard model (Qwen3Guard-Gen) returns a verdict: a safety level (Safe,
#      Controversial or Unsafe), at most one category, and for responses whether
#      the answer is a refusal; local models also give probabilities.
#   2. The rules of that stage are tried top to bottom and the FIRST rule whose
#      `when` conditions all hold decides. Put narrow rules above broad ones.
#   3. If no rule matches, `defaults` decides.
#   4. If the guard itself fails (error, timeout, unreadable output), the
#      `failure` mode of the stage decides; no rule is tried.
# Every decision, failures included, is written to the audit log with the rule
# id, the verdict and this file's sha256.
#
# The JSON Schema for editors: guardrail policy schema --output policy.schema.json

version: 1
name: default
description: >-
  Balanced default: blocks unsafe and jailbreak prompts and unsafe responses,
  flags controversial content, answers self-harm topics with a supportive
  template, and recovers unnecessary refusals.

guard:
  backend: local                  # local: the model runs in this process
  model: Qwen/Qwen3Guard-Gen-0.6B # or -4B / -8B: more accurate, slower
  # To use a guard served by vLLM or SGLang instead:
  # backend: remote
  # base_url: http://localhost:8000/v1
  # api_key_env: GUARDRAIL_GUARD_API_KEY   # the variable's NAME, never the key
  # timeout_s: 10                          # per HTTP request
  # max_retries: 2

# How `unsafe: true` conditions read Controversial: strict = unsafe, loose = safe.
# The rules below name levels explicitly, so this setting does not change them.
controversial: strict

# Reasoning models: judge the final answer only (answer), the thinking and the
# answer apart (separate: unsafe if either is), or both together (joint).
reasoning: answer
include_system: false   # show the guard the system prompt as context

execution:
  # concurrent: the upstream call starts together with the prompt check and is
  # cancelled if the prompt is blocked (lowest latency). sequential: the upstream
  # is only called once the prompt passed (no cost for blocked prompts).
  mode: concurrent
  timeout_s: 30         # deadline of each guard check; missing it is a failure

failure:
  # closed: block the call when the guard cannot judge it. open: let it through
  # with the flag guard_error. Either way the failure is audited.
  prompt: closed
  response: closed

block:
  behavior: raise       # raise BlockedError; `message` returns a normal completion
  message: Sorry, I can't help with that.

streaming:
  release: check_before_release   # no unchecked text ever reaches the caller
  chunk_chars: 400                # new text per guard check
  sentence_boundary: true         # extend chunks to the end of the sentence
  replacement: null               # text emitted when a stream is cut (null: none)

audit:
  sink: jsonl
  path: guardrail-audit.jsonl
  content: hash         # prompts and responses as sha256 only: full | truncated | hash | none
  fsync: false

rules:
  # ---------------------------------------------------------------- prompts
  # Jailbreak attempts are blocked at any level, including Controversial ones
  # (which the rule below would only flag). Safe verdicts carry no category, so
  # this never blocks a prompt judged Safe.
  - id: block-jailbreak
    description: Jailbreak attempt
    stage: prompt
    when:
      categories: [Jailbreak]
    action: block
    flag: jailbreak

  - id: block-unsafe-prompt
    description: The guard judged the request Unsafe
    stage: prompt
    when:
      levels: [Unsafe]
    action: block

  # Controversial: harm depends on context. Let it through, but mark the call
  # so it can be reviewed in the audit log.
  - id: flag-controversial-prompt
    stage: prompt
    when:
      levels: [Controversial]
    action: flag
    flag: controversial_prompt

  # -------------------------------------------------------------- responses
  - id: block-unsafe-response
    description: The guard judged the answer Unsafe
    stage: response
    when:
      levels: [Unsafe]
    action: block

  # Unnecessary refusal: a request judged Safe was answered with a (safe)
  # refusal. Safety checks alone push models toward refusing; this rule makes
  # over-refusal visible and asks the model once more, with an instruction to
  # answer. The new answer is checked again like any other.
  - id: unnecessary-refusal
    description: A safe request was refused
    stage: response
    when:
      prompt_levels: [Safe]
      levels: [Safe]
      refusal: true
    action: flag
    flag: unnecessary_refusal
    retry:
      instruction: >-
        The user's request is safe. Answer it directly and helpfully,
        without refusing or lecturing.
      max_attempts: 1

  # Controversial answers about self-harm are replaced by a supportive text
  # rather than passed on or bluntly blocked.
  - id: support-self-harm
    description: Controversial answer on suicide or self-harm
    stage: response
    when:
      levels: [Controversial]
      categories: ["Suicide & Self-Harm"]
    action: rewrite
    rewrite:
      mode: template
      text: >-
        I can't help with that, but you don't have to go through this alone.
        If you are thinking about harming yourself, please reach out to someone
        you trust or to a local crisis line or emergency number right now.
    flag: self_harm

  # Other Controversial answers pass, marked for review.
  - id: flag-controversial-response
    stage: response
    when:
      levels: [Controversial]
    action: flag
    flag: controversial_response

# When no rule of a stage matches: allow, flag (flag "default") or block.
defaults:
  prompt: allow
  response: allow
"""
