"""How a policy handles calls: scheduling, failures, blocking, streaming, audit, client APIs.

The sections of a policy file besides its backends and its rules; each is a
frozen model with the documented defaults, and a setting its section would never
read (``fsync`` with a ``stdout`` sink...) is an error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from guardrail.policy.fields import EnvName, FieldValueError, Seconds, StrictModel, Text
from guardrail.types import Action, Stage

__all__ = [
    "DEFAULT_BLOCK_MESSAGE",
    "GUARDED_APIS",
    "AuditConfig",
    "BlockConfig",
    "ClientConfig",
    "DefaultsConfig",
    "ExecutionConfig",
    "FailureConfig",
    "StreamingConfig",
    "TelemetryConfig",
]

DEFAULT_BLOCK_MESSAGE = "Sorry, I can't help with that."
"""The neutral refusal returned for a blocked call when no rule gives its own message."""


class ExecutionConfig(StrictModel):
    """How the prompt check is scheduled against the upstream LLM call."""

    mode: Literal["concurrent", "sequential"] = "concurrent"
    """``concurrent``: the upstream call starts together with the prompt check and is
    cancelled if the prompt is blocked (lowest latency). ``sequential``: the upstream
    is called only after the prompt passed (no upstream cost for blocked prompts)."""
    timeout_s: Seconds = 30.0
    """Deadline of each guard check, in seconds; a check that misses it counts as a
    guard failure and the stage's ``failure`` mode decides."""


class FailureConfig(StrictModel):
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


class BlockConfig(StrictModel):
    """What the application sees when a call is blocked."""

    behavior: Literal["raise", "message"] = "raise"
    """``raise``: the client raises ``BlockedError`` (carrying the decision). ``message``:
    the client returns a normal completion whose text is the block message and whose
    ``finish_reason`` is ``content_filter``."""
    message: Text = DEFAULT_BLOCK_MESSAGE
    """The text of a blocked call; a block rule's own ``message`` overrides it."""


class StreamingConfig(StrictModel):
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


class AuditConfig(StrictModel):
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
    index: StrictBool = True
    """``jsonl`` only: keep ``<path>.index``, one short row per record bound to the log
    by its hash chain, which ``guardrail audit stats`` reads instead of the log."""
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
        for name in ("path", "fsync", "index", "checkpoint_every"):
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


class DefaultsConfig(StrictModel):
    """The action when no rule of a stage matches (``rule_id`` ``default``)."""

    prompt: Literal["allow", "flag", "block"] = "allow"
    """Default for prompts; ``flag`` adds the flag ``default``."""
    response: Literal["allow", "flag", "block"] = "allow"
    """Default for responses; ``flag`` adds the flag ``default``."""

    def for_stage(self, stage: Stage) -> Action:
        """The default action of ``stage``."""
        return Action(self.prompt if stage is Stage.PROMPT else self.response)


class TelemetryConfig(StrictModel):
    """Tracing of guarded calls beyond the audit log."""

    otel: StrictBool = False
    """Emit OpenTelemetry spans (needs the ``guardrail[otel]`` extra) through the
    global tracer provider: one per guarded call, with its checks, upstream calls and
    reward scorings as children. ``Guard(tracer_provider=...)`` turns spans on with
    that provider whatever this says."""


GUARDED_APIS = frozenset(
    {"chat.completions.create", "chat.completions.parse", "responses.create", "responses.parse"}
)
"""The APIs of a wrapped ``openai`` client that always go through the guard."""

ApiName = Annotated[StrictStr, Field(pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")]
"""A dotted path of the ``openai`` client: ``completions``, ``responses.retrieve``..."""


class ClientConfig(StrictModel):
    """What a wrapped ``openai`` client lets through without the guard.

    ``chat.completions`` and ``responses`` (``create``, ``parse``) are guarded;
    APIs that return no model output (``models``, ``files``, ``embeddings``,
    ``moderations``...) pass. Every other API raises ``UnguardedAccessError``
    unless listed here. The gateway serves guarded routes only and ignores this.
    """

    passthrough: tuple[ApiName, ...] = ()
    """APIs that pass through UNCHECKED: each a dotted path from the client
    (``responses.retrieve``, ``completions``), or a resource, covering everything
    under it (``beta.threads``). Guarded APIs stay guarded."""

    @model_validator(mode="after")
    def _check_names(self) -> ClientConfig:
        seen: set[str] = set()
        for i, name in enumerate(self.passthrough):
            if name in seen:
                raise FieldValueError(f"{name!r} is listed twice", "passthrough", i)
            seen.add(name)
            parts = name.split(".")
            if "with_raw_response" in parts or "with_streaming_response" in parts:
                raise FieldValueError(
                    "raw-response helpers are always refused: they would return guarded "
                    "answers unchecked",
                    "passthrough",
                    i,
                )
            # A resource above a guarded API (``responses``) covers its other APIs only.
            if name in GUARDED_APIS:
                raise FieldValueError(
                    f"{name} is always guarded; it cannot pass through", "passthrough", i
                )
        return self
