"""The backends a policy names: the guard model, the reward models, their circuit breakers.

Each section says which model to use and how to reach it (in this process, or an
OpenAI-compatible server), and settings that could never take effect for the
chosen backend are errors (``base_url`` on a local guard, ``multiplier`` on a
model that is not a ``pair`` model...).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, StrictBool, StrictFloat, StrictInt, model_validator

from guardrail.policy.fields import (
    EnvName,
    FieldValueError,
    Label,
    Score,
    Seconds,
    StrictModel,
    Text,
)
from guardrail.qwen3guard import DEFAULT_MODEL

__all__ = ["BreakerConfig", "GuardConfig", "RewardConfig", "RewardModelConfig"]


class BreakerConfig(StrictModel):
    """A circuit breaker around one backend (the guard, or each reward model).

    After repeated failures the backend is left alone for ``cooldown_s``: its
    checks fail at once, unsent, with ``CircuitOpenError``, and the stage's
    ``failure`` mode decides them (a reward model's answers stay unscored). Then
    ``probes`` trial calls go through; ``successes`` of them in a row close the
    breaker, one failure opens it again. Failures are errors, timeouts and calls
    still running at the check's deadline; a conversation the guard cannot take
    (an input error) is not one.
    """

    enabled: StrictBool = True
    """``false``: never fail fast (every check calls the backend, however often it fails)."""
    failures: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = 5
    """Open after this many failed calls in a row; ``null``: only ``failure_rate`` opens it."""
    failure_rate: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] | None = 0.5
    """Open when at least this share of the calls of the last ``window_s`` failed (once
    ``min_calls`` were made in it); ``null``: only ``failures`` opens it."""
    window_s: Seconds = 30.0
    """The failure-rate window, in seconds."""
    min_calls: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 20
    """Calls the window must hold before ``failure_rate`` is read."""
    cooldown_s: Seconds = 10.0
    """How long an open breaker fails calls fast before it lets trial calls through."""
    probes: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    """Trial calls let through at once while half-open; other calls fail fast meanwhile."""
    successes: Annotated[StrictInt, Field(ge=1, le=1000)] = 2
    """Successful trial calls in a row that close the breaker again."""

    @model_validator(mode="after")
    def _check_triggers(self) -> BreakerConfig:
        given = self.model_fields_set
        if not self.enabled:
            for name in type(self).model_fields:
                if name != "enabled" and name in given:
                    raise FieldValueError("only used when the breaker is enabled", name)
            return self
        if self.failures is None and self.failure_rate is None:
            raise FieldValueError(
                "failures and failure_rate cannot both be null: the breaker could never "
                "open (set enabled: false to turn it off)",
                "failures" if "failures" in given else "failure_rate",
            )
        if self.failure_rate is None:
            for name in ("window_s", "min_calls"):
                if name in given:
                    raise FieldValueError("only used with failure_rate (which is null here)", name)
        return self


class GuardConfig(StrictModel):
    """Which guard model judges the traffic, and how to reach it."""

    backend: Literal["local", "remote"] = "local"
    """``local`` runs the model in this process (needs ``guardrail[local]``); ``remote``
    calls an OpenAI-compatible server (vLLM, SGLang) at ``base_url``."""
    model: Text = DEFAULT_MODEL
    """Hub id or local directory (local), or the model name the server serves (remote)."""
    revision: Text | None = None
    """Local only: the hub revision (tag or commit) to load; pin it in production."""
    device: Text | None = None
    """Local only: ``cpu``, ``cuda``, ``cuda:1``...; unset picks the best available."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    """Local only: the weights' dtype; unset lets the backend choose."""
    base_url: Text | None = None
    """Remote only, and required there: the server's OpenAI-compatible base URL,
    e.g. ``http://localhost:8000/v1``."""
    api_key_env: EnvName = "GUARDRAIL_GUARD_API_KEY"
    """Remote only: the NAME of the environment variable holding the server's API key
    (never the key itself; policy files get committed)."""
    timeout_s: Seconds = 10.0
    """Remote only: the HTTP timeout of one request to the guard server, in seconds."""
    max_retries: Annotated[StrictInt, Field(ge=0, le=10)] = 2
    """Remote only: retries of a failed request (connection errors, 5xx) before the
    check counts as failed. No retry starts past the check's deadline."""
    breaker: BreakerConfig = BreakerConfig()
    """The guard's circuit breaker (local or remote): fail fast while the guard keeps
    failing, then try it again."""

    @model_validator(mode="after")
    def _check_backend(self) -> GuardConfig:
        given = self.model_fields_set
        if self.backend == "remote":
            if self.base_url is None:
                raise FieldValueError(
                    "required when backend is 'remote' (e.g. http://localhost:8000/v1)",
                    "base_url",
                )
            url = urlsplit(self.base_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise FieldValueError(
                    f"{self.base_url!r} is not an http:// or https:// URL "
                    "(e.g. http://localhost:8000/v1)",
                    "base_url",
                )
            for name in ("revision", "device", "dtype"):
                if name in given:
                    raise FieldValueError(
                        "only used with backend 'local' (a remote server loads its own model)",
                        name,
                    )
        else:
            for name in ("base_url", "api_key_env", "timeout_s", "max_retries"):
                if name in given:
                    raise FieldValueError(
                        "only used with backend 'remote' (set backend: remote to use a server)",
                        name,
                    )
        return self


_SHA = re.compile(r"^[0-9a-f]{40}$")

_KIND_ONLY: dict[str, tuple[str, ...]] = {
    "multiplier": ("pair",),
    "append_eos": ("safe-rlhf",),
    "truncation_side": ("seqcls", "safe-rlhf"),
}
"""Reward model settings that only one family reads, and the kinds that read them."""


class RewardModelConfig(StrictModel):
    """One reward model: which family, where it is, and which conversations it scores."""

    id: Label
    """Name of the model in audit records."""
    kind: Literal["seqcls", "safe-rlhf", "pair", "remote"]
    """The family: ``seqcls`` (sequence-classification reward models, chat template),
    ``safe-rlhf`` (PKU beaver reward/cost score models), ``pair`` (BERT-style
    (prompt, answer) encoders) or ``remote`` (a reward model served by vLLM)."""
    model: Text
    """Hub id or local directory; for ``remote``, the served model name."""
    revision: Text | None = None
    """Hub revision to pin (a commit sha is required with ``trust_remote_code``)."""
    languages: tuple[Text, ...] | None = Field(default=None, min_length=1)
    """Only score conversations in these languages (``ja``, ``en``, ``zh``...); the first
    model whose languages match is used, a model without ``languages`` matches any."""
    mean: Score | None = None
    """With ``std``: scores are normalised as ``(score - mean) / std`` before rules see them."""
    std: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] | None = None
    trust_remote_code: StrictBool = False
    """Run the model repository's own code: a security decision, only with a pinned
    ``revision`` (a 40-hex commit sha)."""
    device: Text | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    base_url: Text | None = None
    """``remote`` only: the vLLM server, e.g. ``http://reward-host:8000``."""
    api: Literal["pooling", "classify", "score"] = "pooling"
    """``remote`` only: which vLLM endpoint serves the scores."""
    api_key_env: EnvName = "GUARDRAIL_REWARD_API_KEY"
    """``remote`` only: the environment variable holding the server's API key."""
    timeout_s: Seconds = 30.0
    """``remote`` only: per request."""
    multiplier: Score = 1.0
    """``pair`` only: the score is the model's logit times this (not 0). It is the
    ``alpha`` of nicholasKluge/RewardModel's early remote-code revisions (whose
    training range was -1..1 at alpha 1); 1 scores as current revisions' model card."""
    append_eos: StrictBool = True
    """``safe-rlhf`` only: end the scored answer with the EOS token, as safe-rlhf's
    training data does (``true``), or not, as the model card's example does
    (``false``). Scores move with it: fit thresholds, ``mean`` and ``std`` with the
    same setting."""
    truncation_side: Literal["left", "right"] = "left"
    """``seqcls`` and ``safe-rlhf`` only: which end of an input longer than 4096 tokens
    is dropped. ``left`` drops the start of the conversation and keeps the
    end of the answer, where the score is read; ``right`` drops the end, as the
    ca-reward-3b-ja card's example and safe-rlhf's training do. Either way the score
    is marked ``truncated``."""

    @model_validator(mode="after")
    def _check(self) -> RewardModelConfig:
        if (self.mean is None) != (self.std is None):
            raise FieldValueError("mean and std must be given together", "std")
        given = self.model_fields_set
        for name, kinds in _KIND_ONLY.items():
            if name in given and self.kind not in kinds:
                raise FieldValueError(
                    f"only used with kind {' or '.join(map(repr, kinds))} "
                    f"(this model's kind is {self.kind!r})",
                    name,
                )
        if self.multiplier == 0:
            raise FieldValueError("must not be 0 (every answer would score 0)", "multiplier")
        if self.trust_remote_code and not (self.revision and _SHA.match(self.revision)):
            raise FieldValueError(
                "trust_remote_code needs revision pinned to a 40-hex commit sha", "revision"
            )
        if self.kind == "remote" and not self.base_url:
            raise FieldValueError("a remote reward model needs base_url", "base_url")
        if self.kind != "remote" and self.base_url is not None:
            raise FieldValueError("only remote reward models take base_url", "base_url")
        return self


class RewardConfig(StrictModel):
    """Optional reward-model gating: a quality score per answer, and best-of-n."""

    models: tuple[RewardModelConfig, ...] = Field(min_length=1)
    """The reward models, tried in order for each conversation (see ``languages``)."""
    best_of_n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    """Ask the upstream for this many candidates (when the caller asks for one) and
    return the best-scoring one that passes the safety gate."""
    breaker: BreakerConfig = BreakerConfig()
    """The circuit breaker of each reward model (one per model, these settings):
    while open, its answers stay unscored at once."""

    @model_validator(mode="after")
    def _unique(self) -> RewardConfig:
        seen: set[str] = set()
        for i, model in enumerate(self.models):
            if model.id in seen:
                raise FieldValueError(f"duplicate reward model id {model.id!r}", "models", i, "id")
            seen.add(model.id)
        return self
