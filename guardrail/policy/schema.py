"""The policy schema: what a policy file may say, as frozen pydantic models.

A policy is versioned (``version: 1``) and strict on purpose, because a typo in a
safety policy must never turn into a silently ignored setting:

- unknown keys are errors (``extra="forbid"`` on every model);
- scalars are not coerced: ``"400"`` is not a number and ``yes`` is not a string;
- settings that could never take effect are errors too: ``refusal`` on a prompt
  rule, a ``template`` rewrite of a prompt, ``base_url`` on a local guard...

The models validate Python data; :mod:`guardrail.policy.loader` reads YAML and,
with :mod:`guardrail.policy.humanize`, turns validation errors into
:class:`~guardrail.errors.PolicyError` with the file, line, column and field path.
This module imports neither: :meth:`Policy.default` validates the packaged
default through :mod:`guardrail.policy.packaged`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from guardrail.policy.packaged import (
    DEFAULT_POLICY_SOURCE,
    default_policy_bytes,
    default_policy_data,
)
from guardrail.qwen3guard import DEFAULT_MODEL
from guardrail.types import (
    Action,
    Category,
    ControversialMode,
    ReasoningMode,
    Retry,
    Rewrite,
    RewriteMode,
    SafetyLevel,
    Stage,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DEFAULT_BLOCK_MESSAGE",
    "PROBABILITY_NAMES",
    "RESERVED_RULE_IDS",
    "AuditConfig",
    "BlockConfig",
    "BreakerConfig",
    "Conditions",
    "DefaultsConfig",
    "ExecutionConfig",
    "FailureConfig",
    "FieldValueError",
    "GuardConfig",
    "Policy",
    "RewardConfig",
    "RewardModelConfig",
    "ProbabilityName",
    "Rule",
    "RuleRetry",
    "RuleRewrite",
    "StreamingConfig",
    "policy_json_schema",
]

DEFAULT_BLOCK_MESSAGE = "Sorry, I can't help with that."
"""The neutral refusal returned for a blocked call when no rule gives its own message."""

RESERVED_RULE_IDS = frozenset({"default", "failure"})
"""Rule ids that :func:`~guardrail.policy.evaluate.evaluate` uses for its own decisions."""

ProbabilityName = Literal[
    "Safe",
    "Unsafe",
    "Controversial",
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
    "Refusal",
]
"""What a probability threshold can name: a safety level, a category, or ``Refusal``
(P(Refusal: Yes), response rules only). Kept in step with the enums by a test."""

PROBABILITY_NAMES: frozenset[str] = frozenset(get_args(ProbabilityName))

# Scalar types. Strict: YAML already types its scalars, so a quoted "0.8" where a
# number belongs is a mistake worth reporting rather than coercing.
Probability = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Seconds = Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)]
Score = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1)]
Label = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
EnvName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FieldValueError(ValueError):
    """A validation error about a sub-field of the model being validated.

    Cross-field checks run in model validators, whose errors pydantic locates at
    the model itself; ``path`` names the sub-field so the loader can point at the
    exact key (``rules[2]`` + ``("when", "refusal")``).
    """

    def __init__(self, message: str, *path: str | int) -> None:
        self.reason = message
        self.path = path
        where = ".".join(str(p) for p in path)
        super().__init__(f"{where}: {message}" if where else message)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- settings


class BreakerConfig(_Model):
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


class GuardConfig(_Model):
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


class ExecutionConfig(_Model):
    """How the prompt check is scheduled against the upstream LLM call."""

    mode: Literal["concurrent", "sequential"] = "concurrent"
    """``concurrent``: the upstream call starts together with the prompt check and is
    cancelled if the prompt is blocked (lowest latency). ``sequential``: the upstream
    is called only after the prompt passed (no upstream cost for blocked prompts)."""
    timeout_s: Seconds = 30.0
    """Deadline of each guard check, in seconds; a check that misses it counts as a
    guard failure and the stage's ``failure`` mode decides."""


class FailureConfig(_Model):
    """What happens when the guard cannot judge (error, timeout, unparsable output).

    ``closed`` blocks the call; ``open`` lets it through with the flag ``guard_error``.
    Either way the failure is audited.
    """

    prompt: Literal["closed", "open"] = "closed"
    """Failure mode of the prompt check."""
    response: Literal["closed", "open"] = "closed"
    """Failure mode of the response check."""

    def for_stage(self, stage: Stage) -> Literal["closed", "open"]:
        """The failure mode of ``stage``."""
        return self.prompt if stage is Stage.PROMPT else self.response


class BlockConfig(_Model):
    """What the application sees when a call is blocked."""

    behavior: Literal["raise", "message"] = "raise"
    """``raise``: the client raises ``BlockedError`` (carrying the decision). ``message``:
    the client returns a normal completion whose text is the block message and whose
    ``finish_reason`` is ``content_filter``."""
    message: Text = DEFAULT_BLOCK_MESSAGE
    """The text of a blocked call; a block rule's own ``message`` overrides it."""


class StreamingConfig(_Model):
    """How streamed responses are checked."""

    release: Literal["check_before_release", "check_after_release"] = "check_before_release"
    """``check_before_release``: text is held back until the guard has passed it, so no
    unchecked text reaches the caller. ``check_after_release``: text flows at once and
    the stream is cut when a check fails (lower latency; unsafe text may leak)."""
    chunk_chars: Annotated[StrictInt, Field(gt=0)] = 400
    """Characters of new text per guard check."""
    sentence_boundary: StrictBool = True
    """Extend each chunk to the next sentence end, so the guard judges whole sentences."""
    replacement: StrictStr | None = None
    """Text emitted when a stream is cut; unset emits no text, only ``finish_reason``
    ``content_filter``."""


class AuditConfig(_Model):
    """Where decisions are recorded and how much content the records keep."""

    sink: Literal["jsonl", "stdout", "none", "logger"] = "jsonl"
    """``jsonl``: append to ``path``; ``stdout``: one JSON line per record on stdout;
    ``logger``: the ``guardrail.audit`` structlog logger; ``none``: no audit (not
    recommended)."""
    path: Text = "guardrail-audit.jsonl"
    """``jsonl`` only: the file records are appended to."""
    content: Literal["full", "truncated", "hash", "none"] = "hash"
    """How prompts and responses appear in records: verbatim, cut to
    ``truncate_chars``, as a sha256 (matchable, not readable), or not at all."""
    truncate_chars: Annotated[StrictInt, Field(gt=0)] = 200
    """``content: truncated`` only: characters kept of each text."""
    fsync: StrictBool = False
    """``jsonl`` only: fsync after each record (durable, slower)."""
    checkpoint_every: Annotated[StrictInt, Field(gt=0)] | None = None
    """``jsonl`` only: after every N records (and when the sink closes), append the
    log's record count and head hash to ``checkpoint_path``, an anchor that catches
    records cut from the end of the log (``guardrail audit verify --checkpoint``).
    Off by default: a checkpoint protects only when kept where whoever can rewrite
    the log cannot rewrite it too."""
    checkpoint_path: Text | None = None
    """``checkpoint_every`` only: the checkpoint file (default: the log's path plus
    ``.checkpoint``); best on another volume, or shipped off the host."""
    hmac_key_env: EnvName | None = None
    """The NAME of an environment variable holding a secret key (never the key itself).
    With it, ``content: hash`` keeps HMAC-SHA256 (``hmac-sha256:...``) instead of a
    plain sha256, so only the key's holders can match or guess texts, and
    checkpoints are signed. The variable must be set when the guard is built."""

    @model_validator(mode="after")
    def _check_used(self) -> AuditConfig:
        given = self.model_fields_set
        for name in ("path", "fsync", "checkpoint_every"):
            if name in given and self.sink != "jsonl":
                raise FieldValueError(
                    f"only used with sink 'jsonl' (this sink is {self.sink!r})", name
                )
        if "truncate_chars" in given and self.content != "truncated":
            raise FieldValueError(
                f"only used with content 'truncated' (content is {self.content!r})",
                "truncate_chars",
            )
        if "checkpoint_path" in given and self.checkpoint_every is None:
            raise FieldValueError("only used with checkpoint_every", "checkpoint_path")
        if (
            self.hmac_key_env is not None
            and self.content != "hash"
            and self.checkpoint_every is None
        ):  # the key would sign and hash nothing
            raise FieldValueError(
                f"only used with content 'hash' or checkpoint_every "
                f"(content is {self.content!r}, no checkpoints)",
                "hmac_key_env",
            )
        return self


_SHA = re.compile(r"^[0-9a-f]{40}$")

_KIND_ONLY: dict[str, tuple[str, ...]] = {
    "multiplier": ("pair",),
    "append_eos": ("safe-rlhf",),
    "truncation_side": ("seqcls", "safe-rlhf"),
}
"""Reward model settings that only one family reads, and the kinds that read them."""


class RewardModelConfig(_Model):
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


class RewardConfig(_Model):
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


class DefaultsConfig(_Model):
    """The action when no rule of a stage matches (``rule_id`` ``default``)."""

    prompt: Literal["allow", "flag", "block"] = "allow"
    """Default for prompts; ``flag`` adds the flag ``default``."""
    response: Literal["allow", "flag", "block"] = "allow"
    """Default for responses; ``flag`` adds the flag ``default``."""

    def for_stage(self, stage: Stage) -> Action:
        """The default action of ``stage``."""
        return Action(self.prompt if stage is Stage.PROMPT else self.response)


# ------------------------------------------------------------------------------ rules


class Conditions(_Model):
    """When a rule applies. Every condition given must hold; a list means "any of".

    No conditions (or no ``when``) matches every verdict of the rule's stage.
    Conditions on data a verdict may lack (probabilities, refusal, reward, the
    prompt's verdict) do NOT match when that data is missing.
    """

    levels: tuple[SafetyLevel, ...] | None = Field(default=None, min_length=1)
    """The verdict's safety level is one of these."""
    unsafe: StrictBool | None = None
    """Shorthand: ``true`` matches verdicts that count as unsafe under the policy's
    ``controversial`` reading (strict: Unsafe or Controversial; loose: Unsafe only);
    ``false`` matches the others."""
    categories: tuple[Category, ...] | None = Field(default=None, min_length=1)
    """One of the verdict's categories is one of these. ``None`` is not a category:
    use ``no_category``."""
    no_category: StrictBool | None = None
    """``true``: the verdict has no category (``Categories: None``); ``false``: it has one."""
    refusal: StrictBool | None = None
    """Response rules only: the guard judged the answer a refusal (``true``) or not
    (``false``). Does not match when the verdict has no refusal judgement."""
    prompt_levels: tuple[SafetyLevel, ...] | None = Field(default=None, min_length=1)
    """Response rules only: the PROMPT's safety level is one of these. Does not match
    when the prompt was not checked."""
    min_probability: dict[ProbabilityName, Probability] | None = Field(default=None, min_length=1)
    """P(name) >= threshold for every entry, e.g. ``{Unsafe: 0.8}``. Names are safety
    levels (P of that level), categories (P of that category) or ``Refusal``
    (P(Refusal: Yes), response rules only). Does NOT match when the verdict carries no
    probabilities (a remote guard without logprobs)."""
    max_probability: dict[ProbabilityName, Probability] | None = Field(default=None, min_length=1)
    """P(name) <= threshold for every entry; same names as ``min_probability``. Does
    NOT match when the verdict carries no probabilities."""
    reward_above: Score | None = None
    """Response rules only: the reward score is > this value. Does not match when no
    reward was computed."""
    reward_below: Score | None = None
    """Response rules only: the reward score is < this value. Does not match when no
    reward was computed."""

    @model_validator(mode="after")
    def _check_consistent(self) -> Conditions:
        if self.no_category is True and self.categories is not None:
            raise FieldValueError(
                "a verdict cannot both have no category and one of 'categories'; "
                "keep only one of the two",
                "no_category",
            )
        if self.min_probability and self.max_probability:
            for name, high in self.max_probability.items():
                low = self.min_probability.get(name)
                if low is not None and low > high:
                    raise FieldValueError(
                        f"is below min_probability {low} for {name!r}: the rule can never match",
                        "max_probability",
                        name,
                    )
        if (
            self.reward_above is not None
            and self.reward_below is not None
            and self.reward_above >= self.reward_below
        ):
            raise FieldValueError(
                f"must be greater than reward_above ({self.reward_above}): "
                "the rule can never match",
                "reward_below",
            )
        return self

    def response_only(self) -> tuple[tuple[str, ...], ...]:
        """Paths of the response-only conditions used here (empty if all suit prompts)."""
        used: list[tuple[str, ...]] = [
            (name,)
            for name in ("refusal", "prompt_levels", "reward_above", "reward_below")
            if getattr(self, name) is not None
        ]
        for name in ("min_probability", "max_probability"):
            thresholds = getattr(self, name)
            if thresholds and "Refusal" in thresholds:
                used.append((name, "Refusal"))
        return tuple(used)


def _check_max_attempts(data: Any) -> Any:
    # The types.py models coerce ("2" -> 2, true -> 1); a policy file must not.
    if isinstance(data, dict):
        value = data.get("max_attempts")
        if value is not None and type(value) is not int:
            got = f"the text {value!r}" if isinstance(value, str) else repr(value)
            raise FieldValueError(f"expected an integer, got {got}", "max_attempts")
    return data


class RuleRewrite(Rewrite):
    """A rule's rewrite: how the prompt or the response is changed.

    Prompt rules: ``add_instruction`` (prepend a safety system message with ``text``)
    or ``replace`` (replace the last user message with ``text``). Response rules:
    ``template`` (replace the answer with ``text``) or ``regenerate`` (ask the
    upstream again with the instruction ``text``, every attempt re-checked, up to
    ``max_attempts``, then block).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, title="Rewrite"
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_attempts(cls, data: Any) -> Any:
        return _check_max_attempts(data)

    @field_validator("text")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class RuleRetry(Retry):
    """Ask the upstream once more with ``instruction`` and re-check the new answer.

    Response rules only; the typical use is recovering an unnecessary refusal.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, title="Retry"
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_attempts(cls, data: Any) -> Any:
        return _check_max_attempts(data)

    @field_validator("instruction")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


_REWRITE_MODES = {
    Stage.PROMPT: (RewriteMode.ADD_INSTRUCTION, RewriteMode.REPLACE),
    Stage.RESPONSE: (RewriteMode.TEMPLATE, RewriteMode.REGENERATE),
}


class Rule(_Model):
    """One rule: on ``stage``, when ``when`` holds, take ``action``.

    Rules are tried in file order and the first match of the stage decides.
    """

    id: Label
    """Unique id, recorded in every decision the rule makes (letters, digits, ``_.-``)."""
    description: StrictStr = ""
    """Why the rule exists; recorded as the decision's reason."""
    stage: Stage
    """``prompt`` (the user's request) or ``response`` (the model's answer)."""
    when: Conditions = Conditions()
    """The conditions; omitted, the rule matches every verdict of its stage."""
    action: Action
    """``allow``, ``block``, ``rewrite`` (needs ``rewrite``) or ``flag`` (let through
    with a label)."""
    message: Text | None = None
    """Block rules only: the text of the blocked call, instead of ``block.message``."""
    rewrite: RuleRewrite | None = None
    """Required when ``action`` is ``rewrite``, and only then."""
    retry: RuleRetry | None = None
    """Response rules with action ``flag`` or ``allow`` only: ask the upstream again with
    an instruction (re-checked), e.g. after an unnecessary refusal."""
    flag: Label | None = None
    """A label added to the decision's flags; flag rules default to their ``id``."""

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_RULE_IDS:
            raise ValueError(
                f"{value!r} is reserved for the decisions guardrail makes itself "
                "(default, failure); pick another id"
            )
        return value

    @model_validator(mode="after")
    def _check_rule(self) -> Rule:
        stage, action = self.stage, self.action
        if action is Action.REWRITE and self.rewrite is None:
            raise FieldValueError("required when action is 'rewrite'", "rewrite")
        if self.rewrite is not None:
            if action is not Action.REWRITE:
                raise FieldValueError(
                    f"only used when action is 'rewrite' (this rule's action is {action.value!r})",
                    "rewrite",
                )
            allowed = _REWRITE_MODES[stage]
            mode = self.rewrite.mode
            if mode not in allowed:
                raise FieldValueError(
                    f"{mode.value!r} does not apply to {stage.value} rules; use "
                    f"{' or '.join(m.value for m in allowed)}",
                    "rewrite",
                    "mode",
                )
            if (
                mode is not RewriteMode.REGENERATE
                and "max_attempts" in self.rewrite.model_fields_set
            ):
                raise FieldValueError("only used with mode 'regenerate'", "rewrite", "max_attempts")
        if self.message is not None and action is not Action.BLOCK:
            raise FieldValueError(
                f"only used by block rules (this rule's action is {action.value!r})", "message"
            )
        if self.retry is not None:
            if stage is not Stage.RESPONSE:
                raise FieldValueError("only applies to response rules", "retry")
            if action not in (Action.FLAG, Action.ALLOW):
                raise FieldValueError(
                    f"only used with action 'flag' or 'allow' (this rule's action is "
                    f"{action.value!r}); to retry before blocking use "
                    "rewrite: {mode: regenerate}",
                    "retry",
                )
        if stage is Stage.PROMPT:
            for path in self.when.response_only():
                detail = (
                    "P(Refusal) is judged only on responses; only response rules can use it"
                    if path[-1] == "Refusal"
                    else "only applies to response rules"
                )
                raise FieldValueError(detail, "when", *path)
        else:
            for i, category in enumerate(self.when.categories or ()):
                if category is Category.JAILBREAK:
                    raise FieldValueError(
                        "Jailbreak is judged only on prompts: a response rule with it never "
                        "matches",
                        "when",
                        "categories",
                        i,
                    )
        return self

    @property
    def flag_label(self) -> str | None:
        """The label this rule adds to a decision (its ``id`` for flag rules)."""
        if self.flag is not None:
            return self.flag
        return self.id if self.action is Action.FLAG else None


# ----------------------------------------------------------------------------- policy


class Policy(_Model):
    """A guardrail policy: the guard to use, the rules, and what to do on failure.

    Load one with :func:`~guardrail.policy.load_policy` (YAML, with located errors),
    or use :meth:`Policy.default`. Equality compares the policy's meaning; the
    provenance (:attr:`source`, :attr:`content_hash`) is not part of it.
    """

    model_config = ConfigDict(title="guardrail policy")

    version: Literal[1]
    """Schema version of the file; this guardrail reads version 1."""
    name: Text
    """The policy's name, recorded in every audit record."""
    description: StrictStr = ""
    """What the policy is for."""
    guard: GuardConfig = GuardConfig()
    """The guard model and how to reach it."""
    controversial: ControversialMode = ControversialMode.STRICT
    """How the ``unsafe`` condition reads a Controversial verdict: ``strict`` counts it
    as unsafe, ``loose`` as safe. Conditions on ``levels`` are unaffected."""
    reasoning: ReasoningMode = ReasoningMode.SEPARATE
    """What the guard sees of a reasoning model's answer: ``separate`` (the default:
    thinking and answer judged apart; unsafe if either is), ``joint`` (together) or
    ``answer`` (the final answer only: a separate ``reasoning_content`` is not judged)."""
    include_system: StrictBool = False
    """Show the guard the conversation's system messages as context."""
    execution: ExecutionConfig = ExecutionConfig()
    """Scheduling of the checks and their deadline."""
    failure: FailureConfig = FailureConfig()
    """Fail closed (block) or open (allow, flag ``guard_error``) per stage."""
    block: BlockConfig = BlockConfig()
    """What the application sees when a call is blocked."""
    streaming: StreamingConfig = StreamingConfig()
    """How streamed responses are checked."""
    audit: AuditConfig = AuditConfig()
    """Where decisions are recorded."""
    reward: RewardConfig | None = None
    """Optional reward models scoring answers for rules (``reward_above`` /
    ``reward_below``), best-of-n and the audit's hybrid score."""
    rules: tuple[Rule, ...] = ()
    """The rules, tried in order; the first matching rule of a stage decides."""
    defaults: DefaultsConfig = DefaultsConfig()
    """The action per stage when no rule matches."""

    _source: str | None = PrivateAttr(default=None)
    _content_hash: str | None = PrivateAttr(default=None)
    _by_stage: dict[Stage, tuple[Rule, ...]] = PrivateAttr(default_factory=dict)
    # Owned by guardrail.policy.evaluate: the rules compiled for the hot path.
    _compiled: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_unique_ids(self) -> Policy:
        first: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.id in first:
                raise FieldValueError(
                    f"duplicate rule id {rule.id!r} (already used by rules[{first[rule.id]}])",
                    "rules",
                    i,
                    "id",
                )
            first[rule.id] = i
            if self.reward is None and (
                rule.when.reward_above is not None or rule.when.reward_below is not None
            ):
                which = "reward_above" if rule.when.reward_above is not None else "reward_below"
                raise FieldValueError(
                    "reward conditions need a reward section naming the reward models",
                    "rules",
                    i,
                    "when",
                    which,
                )
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Index the rules by stage once, for :meth:`rules_for`."""
        self._by_stage = {
            stage: tuple(rule for rule in self.rules if rule.stage is stage) for stage in Stage
        }

    def rules_for(self, stage: Stage | str) -> tuple[Rule, ...]:
        """The rules of ``stage``, in evaluation order."""
        return self._by_stage[Stage(stage)]

    @property
    def source(self) -> str | None:
        """Where the policy was loaded from (a path, ``<string>``...); ``None`` if built in code."""
        return self._source

    @property
    def content_hash(self) -> str:
        """Hex sha256 identifying the policy in audit records.

        For a loaded policy, the hash of the file's bytes (``sha256sum`` agrees); for
        one built in Python, the hash of its canonical JSON.
        """
        if self._content_hash is None:
            canonical = self.model_dump_json().encode("utf-8")
            self._content_hash = hashlib.sha256(canonical).hexdigest()
        return self._content_hash

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy the policy; with ``update``, the result is validated like a new policy.

        pydantic's plain ``model_copy(update=...)`` skips validation and would keep
        this policy's compiled rules and content hash, which no longer fit.
        """
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**self.model_dump(exclude_unset=True), **update})

    @classmethod
    def default(cls) -> Policy:
        """The balanced default policy (the same text as ``policies/default.yaml``).

        Parsed once from the packaged ``guardrail/policy/default.yaml`` and shared
        (policies are immutable).
        """
        return _default_policy()

    def __eq__(self, other: object) -> bool:
        # pydantic would also compare private attributes (provenance, caches).
        if not isinstance(other, Policy):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((self.name, self.version))


@functools.cache
def _default_policy() -> Policy:
    policy = Policy.model_validate(default_policy_data())
    # The same provenance as loading the file with guardrail.policy.load_policy_text.
    policy._source = DEFAULT_POLICY_SOURCE
    policy._content_hash = hashlib.sha256(default_policy_bytes()).hexdigest()
    return policy


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors and CI (draft 2020-12)."""
    schema = Policy.model_json_schema()
    body = {k: v for k, v in schema.items() if k not in ("title", "description")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "guardrail policy",
        "description": (
            "A guardrail policy (version 1): the guard model, ordered rules per stage "
            "(prompt, response; the first matching rule decides), defaults, failure "
            "modes, blocking, streaming and audit settings. Probability conditions do "
            "not match verdicts without probabilities."
        ),
        **body,
    }
