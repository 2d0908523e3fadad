"""Declarative policies: what to do with each verdict, loaded from strict YAML.

- :mod:`~guardrail.policy.schema`: the frozen pydantic models of a policy file;
- :mod:`~guardrail.policy.loader`: YAML -> :class:`Policy`, with every error located
  by file, line, column and field path;
- :mod:`~guardrail.policy.humanize`: the wording of those errors (did you mean,
  expected types, bounds);
- :mod:`~guardrail.policy.evaluate`: the pure decision function.

Typical use::

    policy = load_policy("policies/default.yaml")
    decision = evaluate(policy, Stage.PROMPT, verdict)
"""

from __future__ import annotations

from guardrail.policy.evaluate import GUARD_ERROR_FLAG, evaluate
from guardrail.policy.humanize import format_field_path
from guardrail.policy.loader import (
    DEFAULT_POLICY_TEXT,
    default_policy,
    load_policy,
    load_policy_text,
)
from guardrail.policy.schema import (
    DEFAULT_BLOCK_MESSAGE,
    PROBABILITY_NAMES,
    RESERVED_RULE_IDS,
    AuditConfig,
    BlockConfig,
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
    "default_policy",
    "evaluate",
    "format_field_path",
    "load_policy",
    "load_policy_text",
    "policy_json_schema",
]
