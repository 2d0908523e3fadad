"""guardrail: Qwen3Guard-Gen safety middleware for OpenAI-compatible clients (chat, Responses).

Importing this package is cheap and side-effect free: torch and transformers are
imported only when a local model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.classifiers.base import Classifier, amoderate, moderate
from guardrail.errors import (
    AuditError,
    BlockedError,
    CaseFileError,
    CircuitOpenError,
    ClassifierError,
    ConfigurationError,
    DatasetError,
    GuardConnectionError,
    GuardHTTPError,
    GuardrailError,
    GuardTimeoutError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    PolicyError,
    RemoteGuardError,
    RemoteGuardTimeoutError,
    UnguardedAccessError,
    VerdictParseError,
)
from guardrail.qwen3guard import DEFAULT_MODEL, GuardInput, guard_inputs, parse_verdict
from guardrail.report import GuardReport, StageOutcome, report, request_id_of
from guardrail.types import (
    Action,
    Category,
    ControversialMode,
    Decision,
    ReasoningMode,
    SafetyLevel,
    Stage,
    Verdict,
)

if TYPE_CHECKING:
    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.classifiers.remote import RemoteQwen3Guard
    from guardrail.client import wrap
    from guardrail.guard import Guard
    from guardrail.policy import Policy, load_policy

__version__ = "0.1.0"

# Imported on first use: the backends pull in torch/httpx, the client pulls in openai.
_LAZY = {
    "LocalQwen3Guard": "guardrail.classifiers.local",
    "RemoteQwen3Guard": "guardrail.classifiers.remote",
    "Guard": "guardrail.guard",
    "wrap": "guardrail.client",
    "Policy": "guardrail.policy",
    "load_policy": "guardrail.policy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guardrail' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_MODEL",
    "Action",
    "AuditError",
    "BlockedError",
    "CaseFileError",
    "Category",
    "CircuitOpenError",
    "Classifier",
    "ClassifierError",
    "ConfigurationError",
    "ControversialMode",
    "DatasetError",
    "Decision",
    "GuardConnectionError",
    "GuardHTTPError",
    "Guard",
    "GuardInput",
    "GuardReport",
    "GuardTimeoutError",
    "GuardrailError",
    "InputError",
    "LocalQwen3Guard",
    "MissingDependencyError",
    "ModelLoadError",
    "Policy",
    "PolicyError",
    "ReasoningMode",
    "RemoteGuardError",
    "RemoteGuardTimeoutError",
    "RemoteQwen3Guard",
    "SafetyLevel",
    "Stage",
    "StageOutcome",
    "UnguardedAccessError",
    "Verdict",
    "VerdictParseError",
    "__version__",
    "amoderate",
    "guard_inputs",
    "load_policy",
    "moderate",
    "parse_verdict",
    "report",
    "request_id_of",
    "wrap",
]
