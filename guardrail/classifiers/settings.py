"""The options of a :class:`~guardrail.classifiers.local.LocalQwen3Guard`, checked.

Both of its constructors take the same decoding and batching options; this module
owns their validation and the limits derived from them (inputs per model batch, the
longest guard input a model's context leaves room for), so a bad option is refused
before any model is loaded. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from guardrail.errors import ConfigurationError

if TYPE_CHECKING:
    from guardrail.classifiers.fastpath import FastPathOptions

__all__ = ["DTYPES", "MAX_CONTEXT", "Decoding", "LocalSettings", "check_dtype"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The ``dtype`` names a local guard accepts (``auto``: the checkpoint's own)."""
MAX_CONTEXT = 32768
"""The context Qwen3Guard is served with; larger configured windows are not used."""

Decoding = Literal["fast", "generate"]


def check_dtype(dtype: str | None) -> None:
    """Refuse a ``dtype`` that is not one of :data:`DTYPES` (``None``: choose one)."""
    if dtype is not None and dtype not in DTYPES:
        raise ConfigurationError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")


@dataclass(frozen=True)
class LocalSettings:
    """The decoding options of both constructors, checked when built."""

    max_input_tokens: int | None
    max_new_tokens: int
    batch_size: int | None
    top_logprobs: int
    decoding: Decoding
    max_batch_size: int
    max_wait_ms: float
    fast_path: FastPathOptions | None

    def __post_init__(self) -> None:
        if self.decoding not in ("fast", "generate"):
            raise ConfigurationError(
                f"decoding must be 'fast' or 'generate', not {self.decoding!r}"
            )
        if self.max_wait_ms < 0:
            raise ConfigurationError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        for name in ("max_new_tokens", "batch_size", "max_batch_size", "top_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {value}")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigurationError(
                f"max_input_tokens must be at least 1, got {self.max_input_tokens}"
            )

    @property
    def chunk_size(self) -> int:
        """Inputs per model batch (``batch_size`` is an alias of ``max_batch_size``)."""
        return self.batch_size or self.max_batch_size

    def input_limit(self, window: int | None, overhead: int) -> int:
        """Longest guard input in tokens for a model whose context is ``window`` tokens.

        ``max_input_tokens`` when given, else the context (at most :data:`MAX_CONTEXT`;
        ``None``: that) less the room for ``max_new_tokens``. A limit that leaves no
        room for content past the template's ``overhead`` tokens is refused.
        """
        limit = self.max_input_tokens or (
            min(window or MAX_CONTEXT, MAX_CONTEXT) - self.max_new_tokens
        )
        if limit <= overhead:
            raise ConfigurationError(
                f"max_input_tokens={limit} leaves no room for content: "
                f"the guard template alone takes {overhead} tokens"
            )
        return limit
