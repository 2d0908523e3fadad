"""guardrail: Qwen3Guard-Gen safety middleware for OpenAI-compatible chat clients.

Importing this package is cheap and side-effect free: torch and transformers are
imported only when a local model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.classifiers.base import Classifier, amoderate, moderate
from guardrail.errors import (
    AuditError,
    BlockedError,
    ClassifierError,
    ConfigurationError,
    GuardConnectionError,
    GuardHTTPError,
    GuardrailError,
    GuardTimeoutError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    PolicyError,
    RemoteGuardError,
    VerdictParseError,
)
from guardrail.qwen3guard import DEFAULT_MODEL, GuardInput, guard_inputs, parse_verdict
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

__version__ = "0.1.0"

_LAZY = {
    "LocalQwen3Guard": "guardrail.classifiers.local",
    "RemoteQwen3Guard": "guardrail.classifiers.remote",
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
    "Category",
    "Classifier",
    "ClassifierError",
    "ConfigurationError",
    "ControversialMode",
    "Decision",
    "GuardConnectionError",
    "GuardHTTPError",
    "GuardInput",
    "GuardTimeoutError",
    "GuardrailError",
    "InputError",
    "LocalQwen3Guard",
    "MissingDependencyError",
    "ModelLoadError",
    "PolicyError",
    "ReasoningMode",
    "RemoteGuardError",
    "RemoteQwen3Guard",
    "SafetyLevel",
    "Stage",
    "Verdict",
    "VerdictParseError",
    "__version__",
    "amoderate",
    "guard_inputs",
    "moderate",
    "parse_verdict",
]
