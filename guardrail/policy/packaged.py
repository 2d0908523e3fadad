"""The policy shipped inside the package: ``default.yaml``, read on first use.

``guardrail/policy/default.yaml`` is the one copy of the built-in default policy
(``policies/default.yaml`` in a checkout links to it). It is read through
:mod:`importlib.resources`, so it is found in a checkout, a wheel or a zip alike,
and only when first asked for: importing guardrail reads no file.

This module knows nothing of the schema; :meth:`~guardrail.policy.schema.Policy.default`
validates what it returns.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

__all__ = [
    "DEFAULT_POLICY_SOURCE",
    "default_policy_bytes",
    "default_policy_data",
    "default_policy_text",
]

DEFAULT_POLICY_SOURCE = "<default policy>"
"""The :attr:`~guardrail.policy.schema.Policy.source` of the built-in default policy."""

_DEFAULT_RESOURCE = "default.yaml"


@functools.cache
def default_policy_bytes() -> bytes:
    """The bytes of the packaged ``default.yaml`` (its sha256 is the policy's hash)."""
    return resources.files("guardrail.policy").joinpath(_DEFAULT_RESOURCE).read_bytes()


def default_policy_text() -> str:
    """The packaged default policy as YAML text (what ``DEFAULT_POLICY_TEXT`` names)."""
    return default_policy_bytes().decode("utf-8")


def default_policy_data() -> Any:
    """The packaged default policy parsed into plain data, ready for validation.

    A plain YAML read is enough here: the file ships with the package, and the tests
    load it through the strict loader (duplicate keys, located errors) as well.
    """
    return yaml.safe_load(default_policy_bytes())
