"""Core value types: stages, safety levels, categories and the guard's verdict.

Everything here is immutable and free of I/O so verdicts can be shared between
threads, cached, compared in tests and serialised into audit records.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Stage(str, Enum):
    """Which side of the conversation is judged."""

    PROMPT = "prompt"
    RESPONSE = "response"


class SafetyLevel(str, Enum):
    """The guard's three-level safety judgement."""

    SAFE = "Safe"
    UNSAFE = "Unsafe"
    CONTROVERSIAL = "Controversial"


class Category(str, Enum):
    """The official Qwen3Guard-Gen categories (the model emits one primary category)."""

    VIOLENT = "Violent"
    NON_VIOLENT_ILLEGAL_ACTS = "Non-violent Illegal Acts"
    SEXUAL_CONTENT = "Sexual Content or Sexual Acts"
    PII = "PII"
    SUICIDE_SELF_HARM = "Suicide & Self-Harm"
    UNETHICAL_ACTS = "Unethical Acts"
    POLITICALLY_SENSITIVE = "Politically Sensitive Topics"
    COPYRIGHT_VIOLATION = "Copyright Violation"
    JAILBREAK = "Jailbreak"  # prompt moderation only


class ControversialMode(str, Enum):
    """How to read ``Controversial``: strict counts it as unsafe, loose as safe."""

    STRICT = "strict"
    LOOSE = "loose"


class ReasoningMode(str, Enum):
    """What the guard sees of a reasoning model's answer.

    - ``separate`` (a policy's default): the thinking and the answer are judged in
      two calls and the response is unsafe if either is (the SafeRL convention).
    - ``answer``: the final answer only; thinking given in a separate
      ``reasoning_content`` field is not judged. Thinking inline in the content
      (``<think>...</think>``) reaches the caller, so it is judged with the answer.
    - ``joint``: the thinking and the answer are judged together in one call.
    """

    ANSWER = "answer"
    SEPARATE = "separate"
    JOINT = "joint"


ResponsePart = Literal["answer", "reasoning", "joint", "combined"]
"""Which part of a response a verdict covers (``combined`` merges several)."""

_SEVERITY = {SafetyLevel.SAFE: 0, SafetyLevel.CONTROVERSIAL: 1, SafetyLevel.UNSAFE: 2}


def severity(level: SafetyLevel) -> int:
    """Order levels for comparisons: Safe < Controversial < Unsafe."""
    return _SEVERITY[level]


class Verdict(BaseModel):
    """One guard judgement of a prompt or a response.

    Probabilities are present when the backend can give them (local models
    always; remote servers when they return logprobs). Each mapping is
    normalised over that field's valid values: ``level_probs`` is keyed by
    level name, ``category_probs`` by category name plus ``"None"``,
    ``refusal_probs`` by ``"Yes"``/``"No"``.
    """

    model_config = ConfigDict(frozen=True)

    stage: Stage
    level: SafetyLevel
    category: Category | None = None
    categories: tuple[Category, ...] = ()
    """Every category the output listed (the first is ``category``)."""
    refusal: bool | None = None
    """Response stage only: whether the answer refuses; ``None`` on prompts."""
    level_probs: Mapping[str, float] | None = None
    category_probs: Mapping[str, float] | None = None
    refusal_probs: Mapping[str, float] | None = None
    raw_text: str = ""
    model: str = ""
    latency_s: float = Field(default=0.0, ge=0.0)
    truncated: bool = False
    """The input exceeded the guard's context and its earliest content was dropped."""
    skipped_parts: tuple[str, ...] = ()
    """Content parts the guard could not read (``messages[0].content[1]:image_url``)."""
    part: ResponsePart = "answer"
    components: tuple[Verdict, ...] = ()
    """For a ``combined`` verdict: the verdicts it was merged from."""

    def is_unsafe(self, mode: ControversialMode | str = ControversialMode.STRICT) -> bool:
        """Whether the verdict counts as unsafe under the given reading of Controversial."""
        if self.level is SafetyLevel.UNSAFE:
            return True
        if self.level is SafetyLevel.CONTROVERSIAL:
            return ControversialMode(mode) is ControversialMode.STRICT
        return False

    def is_safe(self, mode: ControversialMode | str = ControversialMode.STRICT) -> bool:
        """The complement of :meth:`is_unsafe`."""
        return not self.is_unsafe(mode)

    def unsafe_probability(
        self, mode: ControversialMode | str = ControversialMode.STRICT
    ) -> float | None:
        """P(unsafe) under the given reading, or ``None`` without probabilities."""
        if self.level_probs is None:
            return None
        p = self.level_probs.get(SafetyLevel.UNSAFE.value, 0.0)
        if ControversialMode(mode) is ControversialMode.STRICT:
            p += self.level_probs.get(SafetyLevel.CONTROVERSIAL.value, 0.0)
        return p


class Action(str, Enum):
    """What the policy does with a checked prompt or response."""

    ALLOW = "allow"
    BLOCK = "block"
    REWRITE = "rewrite"
    FLAG = "flag"


class RewriteMode(str, Enum):
    """How a ``rewrite`` action changes the prompt or the response.

    Prompt stage: ``add_instruction`` (prepend a safety system message) or
    ``replace`` (replace the last user message). Response stage: ``template``
    (replace the answer with a fixed text) or ``regenerate`` (ask the upstream
    again with an instruction, every attempt re-checked).
    """

    ADD_INSTRUCTION = "add_instruction"
    REPLACE = "replace"
    TEMPLATE = "template"
    REGENERATE = "regenerate"


class Rewrite(BaseModel):
    """The rewrite a rule asks for."""

    model_config = ConfigDict(frozen=True)

    mode: RewriteMode
    text: str
    """The instruction (add_instruction, regenerate) or replacement text (replace, template)."""
    max_attempts: int = Field(default=1, ge=1, le=5)
    """For ``regenerate``: upstream attempts before falling back to block."""


class Retry(BaseModel):
    """Ask the upstream once more with an instruction (e.g. after an unnecessary refusal)."""

    model_config = ConfigDict(frozen=True)

    instruction: str
    max_attempts: int = Field(default=1, ge=1, le=3)


class Decision(BaseModel):
    """What the policy decided for one stage of one call, and why."""

    model_config = ConfigDict(frozen=True)

    stage: Stage
    action: Action
    rule_id: str
    """The matching rule's id; ``default`` for the policy default; ``failure`` when the
    guard failed and the stage's failure mode decided."""
    reason: str = ""
    verdict: Verdict | None = None
    flags: tuple[str, ...] = ()
    """Labels attached to the call (e.g. ``unnecessary_refusal``); set by flag rules."""
    message: str | None = None
    """For ``block``: the text returned instead of the answer."""
    rewrite: Rewrite | None = None
    retry: Retry | None = None
    error: str | None = None
    """The guard failure, when the decision was made by the failure mode."""

    @property
    def blocked(self) -> bool:
        """Whether this decision stops the call."""
        return self.action is Action.BLOCK
