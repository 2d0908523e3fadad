"""Guard backends: local (transformers) and remote (OpenAI-compatible server).

One module per concern: ``base`` (the Classifier protocol, moderation helpers),
``local`` (LocalQwen3Guard: model and decoding orchestration), ``encoding``
(tokenising, truncation), ``fastpath`` (the fast decoder and its options),
``generate`` (the model-card decoder), ``batching`` (micro-batching, bounded
fan-out), ``loading`` (checkpoint resolution, device and dtype defaults) and
``remote`` (RemoteQwen3Guard).

Backends are imported lazily so that ``import guardrail`` never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.classifiers.base import (
    Classifier,
    amoderate,
    amoderate_many,
    moderate,
    moderate_many,
)

if TYPE_CHECKING:
    from guardrail.classifiers.fastpath import FastPathOptions
    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.classifiers.remote import RemoteQwen3Guard

_LAZY = {
    "FastPathOptions": "guardrail.classifiers.fastpath",
    "LocalQwen3Guard": "guardrail.classifiers.local",
    "RemoteQwen3Guard": "guardrail.classifiers.remote",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guardrail.classifiers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Classifier",
    "FastPathOptions",
    "LocalQwen3Guard",
    "RemoteQwen3Guard",
    "amoderate",
    "amoderate_many",
    "moderate",
    "moderate_many",
]
