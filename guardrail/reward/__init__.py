"""Reward scorers: a scalar "how good is this answer", the optional second gate.

One module per model family, chosen explicitly by :func:`build_scorer`:

========== ================================== =========================================
kind       class                              models
========== ================================== =========================================
seqcls     SequenceClassificationScorer       Skywork-Reward-V2, ca-reward-3b-ja, ...
safe-rlhf  SafeRLHFScorer                     PKU-Alignment/beaver-7b-v1.0-reward/-cost
pair       PairScorer                         nicholasKluge/RewardModel (BERT pairs)
remote     RemoteRewardScorer                 any reward model served by vLLM (pooling)
========== ================================== =========================================

Importing this package never imports torch, transformers or httpx: the scorer
classes load on first use.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from guardrail.errors import ConfigurationError
from guardrail.reward.base import RewardPair, RewardScore, RewardScorer, ScoreKind

if TYPE_CHECKING:
    from guardrail.reward.pair import PairScorer
    from guardrail.reward.remote import RemoteRewardScorer
    from guardrail.reward.saferlhf import SafeRLHFScorer
    from guardrail.reward.seqcls import SequenceClassificationScorer

__all__ = [
    "SCORER_KINDS",
    "PairScorer",
    "RemoteRewardScorer",
    "RewardPair",
    "RewardScore",
    "RewardScorer",
    "SafeRLHFScorer",
    "ScoreKind",
    "SequenceClassificationScorer",
    "build_scorer",
]

_LAZY = {
    "SequenceClassificationScorer": "guardrail.reward.seqcls",
    "SafeRLHFScorer": "guardrail.reward.saferlhf",
    "PairScorer": "guardrail.reward.pair",
    "RemoteRewardScorer": "guardrail.reward.remote",
}

SCORER_KINDS: dict[str, str] = {
    "seqcls": "SequenceClassificationScorer",
    "safe-rlhf": "SafeRLHFScorer",
    "pair": "PairScorer",
    "remote": "RemoteRewardScorer",
}
"""Every kind :func:`build_scorer` knows, and the class it builds. Nothing else is accepted."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guardrail.reward' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def build_scorer(kind: str, model: str, **options: Any) -> RewardScorer:
    """Build the scorer for ``kind`` (see :data:`SCORER_KINDS`) with keyword ``options``.

    For ``remote``, ``model`` is the served model name and ``base_url`` is required
    in ``options``. An unknown kind raises :class:`~guardrail.errors.ConfigurationError`
    naming the valid kinds; options the class does not take raise one too.
    """
    class_name = SCORER_KINDS.get(kind)
    if class_name is None:
        raise ConfigurationError(
            f"unknown reward scorer kind {kind!r}; valid kinds: {', '.join(SCORER_KINDS)}"
        )
    cls = getattr(importlib.import_module(_LAZY[class_name]), class_name)
    args: tuple[Any, ...] = (model,)
    if kind == "remote":
        if "base_url" not in options:
            raise ConfigurationError("a remote reward scorer needs base_url=")
        args, options = (options.pop("base_url"),), {**options, "model": model}
    try:  # check the options first: a TypeError from inside loading is not a config error
        inspect.signature(cls).bind(*args, **options)
    except TypeError as exc:
        raise ConfigurationError(f"{kind} reward scorer: {exc}") from None
    return cls(*args, **options)  # type: ignore[no-any-return]
