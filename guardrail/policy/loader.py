"""Load policies from YAML, with errors that point at the file, line, column and field.

:mod:`guardrail.policy.document` reads the YAML: it composes it into a node
graph, records where every key and value sits (by field path, e.g.
``("rules", 2, "when", "levels")``) and rejects what PyYAML would accept
silently: duplicate keys and non-text keys. The data is then validated by
:class:`~guardrail.policy.schema.Policy`, and :mod:`guardrail.policy.humanize`
maps each pydantic error back to its place and rewrites it for a human::

    policy.yaml:14:7: rules[1].when.levls: unknown key 'levls'; did you mean 'levels'?

This module owns reading policy files and turning their text into a
:class:`Policy`; :mod:`~guardrail.policy.document` owns the errors about the
YAML itself and :mod:`~guardrail.policy.humanize` the wording of every error
about what the policy says.

Whatever a file holds, loading it either returns a :class:`Policy` or raises
:class:`~guardrail.errors.PolicyError`, within a bounded time: a file is
refused before it is parsed when it is larger than :data:`MAX_POLICY_BYTES` or
holds characters YAML does not allow (control characters, lone surrogates),
and parsing stops at :data:`MAX_POLICY_DEPTH` levels of nesting or
:data:`MAX_POLICY_NODES` values. Each error says which limit was hit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from guardrail.errors import PolicyError
from guardrail.policy.document import (
    MAX_POLICY_BYTES,
    MAX_POLICY_DEPTH,
    MAX_POLICY_NODES,
    DocumentKind,
    YamlDocument,
    parse_document,
)
from guardrail.policy.humanize import Locator, check_document, validation_error
from guardrail.policy.humanize import format_field_path as format_field_path
from guardrail.policy.packaged import default_policy_text
from guardrail.policy.schema import Policy

# The YAML reading (document), format_field_path (humanize) and DEFAULT_POLICY_TEXT
# (package data) are still reachable here for code that imported them from this module.
__all__ = [
    "MAX_POLICY_BYTES",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_NODES",
    "POLICY_DOCUMENT",
    "DocumentKind",
    "YamlDocument",
    "default_policy",
    "load_policy",
    "load_policy_text",
    "parse_document",
]

POLICY_DOCUMENT = DocumentKind(
    noun="policy",
    plural="policies",
    empty_hint="it needs at least 'version: 1', a 'name' and rules",
)
"""A policy file."""

# ---------------------------------------------------------------------- public API


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a YAML policy file.

    The policy's :attr:`~Policy.source` is ``path`` and its
    :attr:`~Policy.content_hash` the sha256 of the file's bytes. Every problem,
    from an unreadable file to a rule that can never take effect, raises
    :class:`~guardrail.errors.PolicyError` naming the file and, when it applies,
    the 1-based line and column and the field path.
    """
    try:
        source = os.fspath(path)
    except TypeError:
        raise PolicyError(
            f"a policy path must be a string or path, not {type(path).__name__}"
        ) from None
    try:
        with Path(source).open("rb") as file:
            raw = file.read(MAX_POLICY_BYTES + 1)  # never more, whatever the file is
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy file: {exc.strerror or exc}", source=source
        ) from exc
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise PolicyError(f"cannot read the policy file: {exc}", source=source) from None
    return load_policy_text(raw, source)


def load_policy_text(text: str | bytes, source: str = "<string>") -> Policy:
    """Validate a policy given as YAML text; ``source`` names it in errors.

    Bytes must be UTF-8. The content hash is the sha256 of the UTF-8 bytes.
    Anything wrong, the text's type and size included, raises
    :class:`~guardrail.errors.PolicyError`.
    """
    document = parse_document(text, source, POLICY_DOCUMENT)
    policy = _validate(document.data, document.marks, source)
    policy._source = source
    policy._content_hash = hashlib.sha256(document.raw).hexdigest()
    return policy


def default_policy() -> Policy:
    """The balanced default policy, parsed once (policies are immutable).

    The same object as :meth:`Policy.default() <guardrail.policy.schema.Policy.default>`.
    """
    return Policy.default()


def __getattr__(name: str) -> str:
    # DEFAULT_POLICY_TEXT is read from the package data when first asked for, so that
    # importing this module reads no file.
    if name == "DEFAULT_POLICY_TEXT":
        return default_policy_text()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ validation side


def _validate(data: Any, marks: Locator, source: str) -> Policy:
    check_document(data, marks, source)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        error = validation_error(exc, marks, source)
    # Raised outside the except block: the pydantic error is fully restated.
    raise error
