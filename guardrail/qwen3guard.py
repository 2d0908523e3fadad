"""The Qwen3Guard-Gen protocol, pure: conversation -> guard input, output -> Verdict.

Nothing here touches a model or the network. The classifiers build on it:

- :func:`guard_inputs` normalises OpenAI-style messages into what the guard sees.
- :func:`render_segments` renders a guard input with a checkpoint's own chat
  template while keeping message text apart from template markup, so that a
  message containing ``<|im_end|>`` can never become markup (the local backend
  tokenizes content segments with special tokens split).
- :func:`escape_markup` neutralises markup in text sent to a guard server, which
  tokenizes the rendered template itself.
- :func:`parse_verdict` reads the model's two or three verdict lines, strictly:
  anything that is not a verdict raises :class:`~guardrail.errors.VerdictParseError`.
- :func:`field_probabilities` turns per-token top log-probabilities into
  calibrated probabilities for each verdict field.

What the guard sees of a conversation
-------------------------------------
- ``user`` turns as they are; ``assistant`` turns by their final answer (the
  thinking of earlier turns is dropped), tool calls written out as
  ``Tool call: name(arguments)`` lines (a custom tool's input stands for its
  arguments; a call of any other shape is shown whole, as JSON).
- ``tool`` / ``function`` results as user turns headed ``Tool result (name):``, so
  a prompt check also covers content that tools feed back into the conversation.
- ``system`` / ``developer`` messages are the application's own instructions and
  are left out by default (the official template would fold them into the first
  user turn and dilute it); ``include_system=True`` shows them as a user turn
  headed ``System:``.
- Text content parts are joined with newlines; image, audio and file parts are
  skipped and listed in ``Verdict.skipped_parts``. A lone surrogate (text that is
  not valid Unicode) is seen as U+FFFD.
- For a prompt check, anything after the last user or tool turn (an assistant
  prefill) is not judged.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from guardrail.chat import as_mapping, describe, message_list
from guardrail.errors import ConfigurationError, InputError, VerdictParseError
from guardrail.types import (
    Category,
    ReasoningMode,
    ResponsePart,
    SafetyLevel,
    Stage,
    Verdict,
    severity,
)

DEFAULT_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"
"""The default guard checkpoint."""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ENDOFTEXT = "<|endoftext|>"
GENERATION_PROMPT = f"{IM_START}assistant\n{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"
"""How every guard prompt ends: the assistant header and an empty thinking block."""

PROMPT_CATEGORIES: tuple[Category, ...] = tuple(Category)
RESPONSE_CATEGORIES: tuple[Category, ...] = tuple(
    c for c in Category if c is not Category.JAILBREAK
)

GuardRole = Literal["user", "assistant"]


# --------------------------------------------------------------------------- inputs


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate becomes U+FFFD, a surrogate pair its character.

    Text from the application may hold lone surrogates (e.g. file names decoded with
    ``surrogateescape``), which no tokenizer or JSON request can carry; the guard
    judges the text around them. Audit records keep the original text.
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@dataclass(frozen=True)
class GuardMessage:
    """One turn as the guard sees it (always valid Unicode, see :func:`valid_text`)."""

    role: GuardRole
    content: str

    def __post_init__(self) -> None:
        content = self.content
        if not content.isascii():  # ASCII is valid as it is: no call, no copy
            object.__setattr__(self, "content", valid_text(content))


@dataclass(frozen=True)
class GuardInput:
    """A conversation ready for the guard; the last message's role sets the stage."""

    messages: tuple[GuardMessage, ...]
    part: ResponsePart = "answer"
    skipped_parts: tuple[str, ...] = ()

    @property
    def stage(self) -> Stage:
        """Prompt moderation when the last turn is the user's, else response moderation."""
        return Stage.RESPONSE if self.messages[-1].role == "assistant" else Stage.PROMPT

    def as_dicts(self, *, escape: bool = False) -> list[dict[str, str]]:
        """Chat-completion message dicts; ``escape`` neutralises markup for servers."""
        return [
            {"role": m.role, "content": escape_markup(m.content) if escape else m.content}
            for m in self.messages
        ]


@dataclass
class _Normalised:
    messages: list[GuardMessage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    last_reasoning: str | None = None
    reasoning_inline: bool = False
    """The last answer's thinking was inside its content (so it reaches the caller)."""


_TEXT_PART_KEYS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
}


def _content_text(content: Any, where: str, skipped: list[str]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable) and not isinstance(content, (bytes, Mapping)):
        texts: list[str] = []
        for j, raw_part in enumerate(content):
            part = as_mapping(raw_part, f"{where}[{j}]")
            kind = str(part.get("type", ""))
            key = _TEXT_PART_KEYS.get(kind)
            if key is not None:
                value = part.get(key)
                if not isinstance(value, str):
                    raise InputError(f"{kind} part has no {key!r} string", where=f"{where}[{j}]")
                texts.append(value)
            else:
                skipped.append(f"{where}[{j}]:{kind or 'unknown'}")
        return "\n".join(texts)
    raise InputError(
        f"content must be a string, a list of parts or None, not {type(content).__name__}",
        where=where,
    )


def split_reasoning(content: str) -> tuple[str | None, str]:
    """Split a reasoning model's answer into (thinking, final answer).

    Handles ``<think>...</think>answer``, a missing opening tag
    (``...</think>answer``) and an unclosed block (all thinking, no answer yet).
    """
    stripped = content.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN) :]
        end = body.find(THINK_CLOSE)
        if end < 0:
            return body.strip(), ""
        return body[:end].strip(), body[end + len(THINK_CLOSE) :].lstrip()
    end = content.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in content[:end]:
        return content[:end].strip(), content[end + len(THINK_CLOSE) :].lstrip()
    return None, content


def _tool_call_lines(message: Mapping[str, Any], where: str) -> list[str]:
    lines: list[str] = []
    calls = message.get("tool_calls") or []
    if not isinstance(calls, (list, tuple)):
        raise InputError(
            f"tool_calls must be a list of tool calls, not {describe(calls)}",
            where=f"{where}.tool_calls",
        )
    legacy = message.get("function_call")
    if legacy:
        calls = [*calls, {"function": legacy}]
    for k, raw_call in enumerate(calls):
        call_where = f"{where}.tool_calls[{k}]"
        name, arguments = _call_text(as_mapping(raw_call, call_where), call_where)
        lines.append(f"Tool call: {name}({arguments})")
    return lines


_CALL_ENVELOPE = frozenset(("id", "type", "index"))
"""A tool call's keys that say nothing the model wrote."""


def _call_text(call: Mapping[str, Any], where: str) -> tuple[str, Any]:
    """A tool call's name and what it passes: a function's arguments, a custom tool's input.

    A call of another shape is judged by all it carries (as JSON), so no text the
    model wrote into a tool call goes unjudged.
    """
    custom = call.get("custom")
    if call.get("type") == "custom" or (custom and not call.get("function")):
        payload = as_mapping(custom or {}, f"{where}.custom")
        return payload.get("name") or "?", payload.get("input") or ""
    function = as_mapping(call.get("function") or {}, f"{where}.function")
    if not function:
        rest = {key: value for key, value in call.items() if key not in _CALL_ENVELOPE}
        if rest and set(rest) != {"function"}:
            return "?", json.dumps(rest, ensure_ascii=False, sort_keys=True, default=str)
    return function.get("name") or "?", function.get("arguments") or ""


def _normalise(items: Sequence[Any], *, include_system: bool, response: bool) -> _Normalised:
    out = _Normalised()
    last = len(items) - 1
    for i, raw in enumerate(items):
        where = "response" if response and i == last else f"messages[{i}]"
        message = raw if type(raw) is dict else as_mapping(raw, where)
        role = message.get("role")
        content = message.get("content")
        # Plain text first: the common case needs no part walking.
        text = (
            content
            if type(content) is str
            else _content_text(content, f"{where}.content", out.skipped)
        )
        out.last_reasoning = None
        if role == "user":
            out.messages.append(GuardMessage("user", text))
        elif role == "assistant":
            reasoning, answer = split_reasoning(text)
            out.reasoning_inline = reasoning is not None
            field_reasoning = message.get("reasoning_content") or message.get("reasoning")
            if isinstance(field_reasoning, str) and field_reasoning.strip():
                reasoning = field_reasoning.strip()
            refusal = message.get("refusal")
            extra = [refusal] if isinstance(refusal, str) and refusal else []
            if message.get("tool_calls") or message.get("function_call"):
                extra += _tool_call_lines(message, where)
            if extra:
                answer = "\n".join(p for p in (answer, *extra) if p)
            out.messages.append(GuardMessage("assistant", answer))
            out.last_reasoning = reasoning
        elif role in ("tool", "function"):
            name = message.get("name") or message.get("tool_call_id") or "tool"
            out.messages.append(GuardMessage("user", f"Tool result ({name}):\n{text}"))
        elif role in ("system", "developer"):
            if include_system:
                out.messages.append(GuardMessage("user", f"System:\n{text}"))
        else:
            raise InputError(f"unknown role {role!r}", where=f"{where}.role")
    return out


def guard_inputs(
    messages: Sequence[Any] | Iterable[Any],
    response: Any = None,
    *,
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER,
    include_system: bool = False,
) -> tuple[GuardInput, ...]:
    """Normalise a conversation into what the guard judges.

    Without ``response`` the last user (or tool) turn is judged (prompt
    moderation). With ``response`` (a string, or an assistant message as a dict
    or pydantic object, e.g. ``completion.choices[0].message``) the answer is
    appended and judged (response moderation). ``reasoning`` picks what the guard
    sees of a reasoning model's thinking (see :class:`~guardrail.types.ReasoningMode`);
    ``separate`` yields two inputs whose verdicts :func:`combine_verdicts` merges.

    Whatever the messages hold, a conversation that cannot be judged raises
    :class:`~guardrail.errors.InputError` naming where (``messages[2].tool_calls``,
    ``response``); an unknown ``reasoning`` raises
    :class:`~guardrail.errors.ConfigurationError`.
    """
    try:
        mode = reasoning if type(reasoning) is ReasoningMode else ReasoningMode(reasoning)
    except ValueError:
        choices = ", ".join(m.value for m in ReasoningMode)
        raise ConfigurationError(
            f"unknown reasoning mode {reasoning!r}; expected {choices}"
        ) from None
    items = message_list(messages)
    if response is not None:
        items.append(
            {"role": "assistant", "content": response} if isinstance(response, str) else response
        )
    norm = _normalise(items, include_system=include_system, response=response is not None)
    convo = norm.messages
    skipped = tuple(norm.skipped)
    if not convo:
        raise InputError("the conversation has no user or assistant message to judge")
    if response is None:
        last_user = len(convo) - 1
        while last_user >= 0 and convo[last_user].role != "user":
            last_user -= 1
        if last_user < 0:
            raise InputError("a prompt check needs at least one user message")
        return (GuardInput(tuple(convo[: last_user + 1]), "answer", skipped),)
    if convo[-1].role != "assistant":
        raise InputError("the response must be an assistant message", where="response")
    context, last = tuple(convo[:-1]), convo[-1]
    for message in context:  # a loop, not any(): this runs for every check
        if message.role == "user":
            break
    else:
        raise InputError("a response check needs the user message it answers")
    thinking = norm.last_reasoning
    if mode is ReasoningMode.ANSWER and norm.reasoning_inline:
        # Thinking inside the content reaches the caller with the answer, so it is
        # judged with it: a stray </think> must never hide returned text.
        mode = ReasoningMode.JOINT
    if not thinking or mode is ReasoningMode.ANSWER:
        return (GuardInput((*context, last), "answer", skipped),)
    if mode is ReasoningMode.JOINT:
        joint = f"{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\n\n{last.content}"
        return (GuardInput((*context, GuardMessage("assistant", joint)), "joint", skipped),)
    return (
        GuardInput((*context, GuardMessage("assistant", thinking)), "reasoning", skipped),
        GuardInput((*context, last), "answer", skipped),
    )


def combine_verdicts(verdicts: Sequence[Verdict]) -> Verdict:
    """Merge the verdicts of one check's inputs: the response is as unsafe as its worst part.

    A single verdict is returned as it is. The refusal judgement comes from the
    final answer, since only the answer can refuse the user.
    """
    if not verdicts:
        raise ValueError("combine_verdicts needs at least one verdict")
    if len(verdicts) == 1:
        return verdicts[0]
    worst = max(verdicts, key=lambda v: (severity(v.level), v.part != "answer"))
    answer = next((v for v in verdicts if v.part == "answer"), verdicts[-1])
    return worst.model_copy(
        update={
            "part": "combined",
            "refusal": answer.refusal,
            "refusal_probs": answer.refusal_probs,
            "latency_s": max(v.latency_s for v in verdicts),
            "truncated": any(v.truncated for v in verdicts),
            "components": tuple(verdicts),
        }
    )


# ------------------------------------------------------------------------ rendering

_MARKUP = re.compile(r"<\|[^|<>\s]{1,64}\|>|</?think>")


def escape_markup(text: str) -> str:
    """Neutralise chat markup in text that a server will tokenize with special tokens parsed.

    A zero-width space after ``<`` keeps the text readable to the guard while
    stopping ``<|im_end|>``, ``<|im_start|>``, ``<think>`` and the like from
    matching a special token.
    """
    return _MARKUP.sub(lambda m: "<\u200b" + m.group(0)[1:], text)


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered guard prompt: template markup, or message content."""

    text: str
    is_content: bool


_SENTINEL = re.compile("\ue000(\\d+)\ue001")


def render_segments(
    render: Callable[[list[dict[str, str]]], str], guard_input: GuardInput
) -> list[Segment]:
    """Render ``guard_input`` with a chat template, keeping content apart from markup.

    ``render`` is the checkpoint's template, e.g.
    ``lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False)``. Each
    message's content is replaced by a private-use sentinel before rendering, so
    the template's markup is found exactly, and the real text is put back as
    content segments. The result always ends with :data:`GENERATION_PROMPT`
    (appended if the template did not add it).
    """
    placeholders = [
        {"role": m.role, "content": f"\ue000{i}\ue001"} for i, m in enumerate(guard_input.messages)
    ]
    rendered = render(placeholders)
    pieces = _SENTINEL.split(rendered)
    # split() alternates markup and sentinel indices: [markup, idx, markup, idx, ..., markup]
    indices = [int(p) for p in pieces[1::2]]
    if indices != list(range(len(guard_input.messages))):
        raise InputError(
            "the chat template did not render every message exactly once "
            f"(rendered message order {indices}); is this a Qwen3Guard-Gen checkpoint?"
        )
    segments: list[Segment] = []
    for k, markup in enumerate(pieces[0::2]):
        if markup:
            segments.append(Segment(markup, False))
        if k < len(indices):
            content = guard_input.messages[indices[k]].content
            if content:
                segments.append(Segment(content, True))
    if not rendered.rstrip().endswith(GENERATION_PROMPT.rstrip()):
        segments.append(Segment(GENERATION_PROMPT, False))
    return segments


# -------------------------------------------------------------------------- parsing

_FIELD_LINE = re.compile(r"^(safety|categories|category|refusal)\s*:\s*(.*)$", re.IGNORECASE)
_NOISE_LINE = re.compile(r"^[`'\"*_#>\-\s]*(?:text|plaintext)?\s*$", re.IGNORECASE)
_LEVELS = {lv.value.lower(): lv for lv in SafetyLevel}
_CATEGORIES = {c.value.lower(): c for c in Category}
_REFUSALS = {"yes": True, "no": False}


def _clean_line(line: str) -> str:
    line = line.replace("**", "").replace("__", "").strip()
    return re.sub(r"^(?:[-*•>]\s+|#+\s*)", "", line).strip()


def _clean_value(value: str) -> str:
    return value.strip().strip("`'\"").strip().rstrip(".").strip()


def _strip_think(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        end = stripped.find(THINK_CLOSE)
        if end >= 0:
            return stripped[end + len(THINK_CLOSE) :]
    return text


def parse_verdict(
    text: str,
    *,
    stage: Stage | str,
    model: str = "",
    latency_s: float = 0.0,
    level_probs: Mapping[str, float] | None = None,
    category_probs: Mapping[str, float] | None = None,
    refusal_probs: Mapping[str, float] | None = None,
    truncated: bool = False,
    skipped_parts: Sequence[str] = (),
    part: ResponsePart = "answer",
) -> Verdict:
    """Parse Qwen3Guard-Gen output into a :class:`~guardrail.types.Verdict`.

    Tolerates what real deployments emit: surrounding whitespace, ``**bold**``
    markup and list bullets, an empty thinking block before the verdict, missing
    trailing lines (no ``Categories`` -> ``None``; no ``Refusal`` -> ``None``),
    extra lines after the verdict, and a ``Refusal`` line on prompts (ignored).
    The first meaningful line must be ``Safety: <level>``; a chatty answer, an
    unknown level, category or refusal value raises
    :class:`~guardrail.errors.VerdictParseError`, so it can never read as Safe
    (as does output that is not text). An unknown ``stage`` raises
    :class:`~guardrail.errors.ConfigurationError`.
    """
    try:
        stage = stage if type(stage) is Stage else Stage(stage)
    except ValueError:
        raise ConfigurationError(f"unknown stage {stage!r}; expected prompt or response") from None
    if not isinstance(text, str):
        shown = repr(text)
        raise VerdictParseError(f"guard output must be text, not {type(text).__name__}", text=shown)
    level, categories, refusal = _parse_fields(text, stage)
    return Verdict(
        stage=stage,
        level=level,
        category=categories[0] if categories else None,
        categories=categories,
        refusal=refusal if stage is Stage.RESPONSE else None,
        level_probs=level_probs,
        category_probs=category_probs,
        refusal_probs=refusal_probs if stage is Stage.RESPONSE else None,
        raw_text=text,
        model=model,
        latency_s=latency_s,
        truncated=truncated,
        skipped_parts=tuple(skipped_parts),
        part=part,
    )


# -------------------------------------------------------------------- probabilities


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token with the top alternatives at its position (text, logprob)."""

    token: str
    logprob: float | None = None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class FieldProbabilities:
    """Probabilities per verdict field, each normalised over that field's values."""

    level: dict[str, float] | None = None
    category: dict[str, float] | None = None
    refusal: dict[str, float] | None = None


FIELD_VALUES: dict[str, tuple[str, ...]] = {
    "safety": tuple(lv.value for lv in SafetyLevel),
    "categories": (*(c.value for c in Category), "None"),
    "refusal": ("Yes", "No"),
}


@functools.lru_cache(maxsize=1024)
def _parse_fields(text: str, stage: Stage) -> tuple[SafetyLevel, tuple[Category, ...], bool | None]:
    # Guards repeat a handful of distinct outputs: parse each text once.
    lines = [_clean_line(raw) for raw in _strip_think(text).splitlines()]
    lines = [ln for ln in lines if ln and not _NOISE_LINE.match(ln)]
    if not lines:
        raise VerdictParseError("empty guard output", text=text)
    first = _FIELD_LINE.match(lines[0])
    if first is None or first.group(1).lower() != "safety":
        raise VerdictParseError("guard output does not start with a 'Safety:' line", text=text)
    level = _LEVELS.get(_clean_value(first.group(2)).lower())
    if level is None:
        raise VerdictParseError(f"unknown safety level {first.group(2)!r}", text=text)

    categories: list[Category] = []
    refusal: bool | None = None
    seen: set[str] = set()
    for line in lines[1:]:
        match = _FIELD_LINE.match(line)
        if match is None:
            continue  # extra trailing text is tolerated; the verdict lines decide
        name = match.group(1).lower()
        name = "categories" if name == "category" else name
        if name in seen or name == "safety":
            continue
        seen.add(name)
        value = _clean_value(match.group(2))
        if name == "categories":
            for item in (_clean_value(v) for v in value.split(",")):
                if not item or item.lower() == "none":
                    continue
                category = _CATEGORIES.get(item.lower())
                if category is None:
                    raise VerdictParseError(f"unknown category {item!r}", text=text)
                if category not in categories:
                    categories.append(category)
        elif stage is Stage.RESPONSE:
            parsed = _REFUSALS.get(value.lower())
            if parsed is None:
                raise VerdictParseError(f"unknown refusal value {value!r}", text=text)
            refusal = parsed
    return level, tuple(categories), refusal


def match_field_value(token: str, values: Sequence[str]) -> str | None:
    """Which field value a token begins, or ``None`` if it begins none or several.

    An exact match wins; otherwise a unique prefix match, preferring values where
    the token ends at a word boundary (`` Non`` begins ``Non-violent...``, not ``None``).
    """
    s = token.replace("*", "").strip().lower()
    if not s:
        return None
    exact = [v for v in values if v.lower() == s]
    if exact:
        return exact[0]
    prefixed = [v for v in values if v.lower().startswith(s)]
    if len(prefixed) > 1:
        prefixed = [v for v in prefixed if not v[len(s)].isalnum()]
    return prefixed[0] if len(prefixed) == 1 else None


def _distribution(entry: TokenLogprobs, values: Sequence[str]) -> dict[str, float] | None:
    mass = dict.fromkeys(values, 0.0)
    alternatives = dict(entry.top)
    if entry.logprob is not None:
        alternatives.setdefault(entry.token, entry.logprob)
    for token, logprob in alternatives.items():
        value = match_field_value(token, values)
        if value is not None and math.isfinite(logprob):
            mass[value] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {v: p / total for v, p in mass.items()}


def field_probabilities(tokens: Sequence[TokenLogprobs]) -> FieldProbabilities:
    """Read each verdict field's distribution at the token where its value begins.

    Works on any backend that reports per-token top log-probabilities (local
    models, and OpenAI-compatible servers asked for ``logprobs``). Alternatives
    are mapped to field values with :func:`match_field_value`; the mass that maps
    to no value is dropped and the rest renormalised.
    """
    found: dict[str, dict[str, float] | None] = {}
    text = ""
    pending: str | None = None
    for entry in tokens:
        if pending is not None and entry.token.replace("*", "").strip():
            found[pending] = _distribution(entry, FIELD_VALUES[pending])
            pending = None
        text += entry.token
        tail = _clean_line(text.rsplit("\n", 1)[-1]).lower()
        for name in FIELD_VALUES:
            if name not in found and tail.rstrip().endswith(name + ":"):
                pending = name
    return FieldProbabilities(
        level=found.get("safety"),
        category=found.get("categories"),
        refusal=found.get("refusal"),
    )
