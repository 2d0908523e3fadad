"""Declarative policies: what to do with each verdict, loaded from strict YAML.

- :mod:`~guardrail.policy.schema`: the frozen pydantic models of a policy file, by
  concern in :mod:`~guardrail.policy.fields` (strict base, scalars),
  :mod:`~guardrail.policy.backends` (guard, reward models, breakers),
  :mod:`~guardrail.policy.handling` (execution, failure, block, streaming, audit,
  client APIs, defaults) and :mod:`~guardrail.policy.rules` (conditions, rules);
- :mod:`~guardrail.policy.loader`: YAML -> :class:`Policy`, with every error located
  by file, line, column and field path; the strict YAML reading itself is
  :mod:`~guardrail.policy.document`;
- :mod:`~guardrail.policy.humanize`: the wording of those errors (did you mean,
  expected types, bounds);
- :mod:`~guardrail.policy.evaluate`: the pure decision function;
- :mod:`~guardrail.policy.cases`: policy test cases, read and run against
  :func:`evaluate`, with their models in :mod:`~guardrail.policy.case_schema`;
- :mod:`~guardrail.policy.packaged`: the built-in default policy, shipped as
  ``guardrail/policy/default.yaml`` and read on first use.

Typical use::

    policy = load_policy("policies/default.yaml")
    decision = evaluate(policy, Stage.PROMPT, verdict)
"""

from __future__ import annotations

from guardrail.policy.evaluate import GUARD_ERROR_FLAG, evaluate
from guardrail.policy.humanize import format_field_path
from guardrail.policy.loader import default_policy, load_policy, load_policy_text
from guardrail.policy.packaged import default_policy_text
from guardrail.policy.schema import (
    DEFAULT_BLOCK_MESSAGE,
    PROBABILITY_NAMES,
    RESERVED_RULE_IDS,
    AuditConfig,
    BlockConfig,
    ClientConfig,
    Conditions,
    DefaultsConfig,
    ExecutionConfig,
    FailureConfig,
    GuardConfig,
    Policy,
    ProbabilityName,
    Rule,
    RuleRetry,
    RuleRewrite,
    StreamingConfig,
    TelemetryConfig,
    policy_json_schema,
)

__all__ = [
    "DEFAULT_BLOCK_MESSAGE",
    "DEFAULT_POLICY_TEXT",
    "GUARD_ERROR_FLAG",
    "PROBABILITY_NAMES",
    "RESERVED_RULE_IDS",
    "AuditConfig",
    "BlockConfig",
    "ClientConfig",
    "Conditions",
    "DefaultsConfig",
    "ExecutionConfig",
    "FailureConfig",
    "GuardConfig",
    "Policy",
    "ProbabilityName",
    "Rule",
    "RuleRetry",
    "RuleRewrite",
    "StreamingConfig",
    "TelemetryConfig",
    "default_policy",
    "evaluate",
    "format_field_path",
    "load_policy",
    "load_policy_text",
    "policy_json_schema",
]


def __getattr__(name: str) -> str:
    """``DEFAULT_POLICY_TEXT``: the default policy's YAML, read from the package on first use.

    A module attribute rather than a constant so that importing guardrail reads no file.
    """
    if name == "DEFAULT_POLICY_TEXT":
        return default_policy_text()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
