"""Guard inputs as token ids: the checkpoint's template, plain-text content, truncation.

:class:`GuardEncoder` turns a :class:`~guardrail.qwen3guard.GuardInput` into the ids
a Qwen3Guard-Gen checkpoint reads. Markup comes only from the checkpoint's chat
template; message text is encoded as plain text, so ``<|im_end|>``,
``<|im_start|>`` and the like inside a message can never become markup. The one
exception is a reasoning model's ``<think>``/``</think>``: the model's own
evaluation tokenizes them as its think tokens wherever they appear, so when the
tokenizer has them, content encodes them so too (they delimit thinking inside an
answer; they cannot end a message or start a turn). An input longer than the
limit keeps the template and the END of the conversation (content is dropped
from the start).

Pure tokenizer work: the tokenizer is passed in, nothing here imports torch or
transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from guardrail.errors import InputError, ModelLoadError
from guardrail.qwen3guard import (
    THINK_CLOSE,
    THINK_OPEN,
    GuardInput,
    GuardMessage,
    render_segments,
)
from guardrail.types import Stage

__all__ = ["EncodedInput", "GuardEncoder"]

_TRUNCATION_ROUNDS = 8
"""Re-encoding a cut text can merge a token or two differently: a few rounds converge."""

_HEAD_PROBES: dict[Stage, tuple[tuple[tuple[Any, str], ...], ...]] = {
    Stage.PROMPT: (
        (("user", "a"),),
        (("user", "b"),),
        (("user", ""),),
        (("assistant", "x"), ("user", "y")),
    ),
    Stage.RESPONSE: (
        (("user", "a"), ("assistant", "b")),
        (("user", "c"), ("assistant", "")),
        (("user", ""), ("assistant", "d")),
        (("assistant", "x"), ("user", "y"), ("assistant", "z")),
    ),
}
"""Conversations whose common token prefix is each stage's cacheable template head."""

_EMPTY_RESPONSE_CHECK = GuardInput((GuardMessage("user", ""), GuardMessage("assistant", "")))
"""The longest template (response moderation) with no content: the fixed overhead."""


@dataclass(frozen=True)
class EncodedInput:
    """A guard input as token ids, ready for the model."""

    input_ids: tuple[int, ...]
    guard_input: GuardInput
    """What was encoded: the input itself, or its truncated copy."""
    truncated: bool = False
    """Content was dropped from the start to fit ``max_input_tokens``."""


class GuardEncoder:
    """Encode guard inputs for one checkpoint's fast tokenizer (``tokenizer.json``).

    ``tokenizer`` is a transformers fast tokenizer carrying the checkpoint's chat
    template; without either, :class:`~guardrail.errors.ModelLoadError` names the
    checkpoint (``name``). Not thread-safe on its own:
    :class:`~guardrail.classifiers.local.LocalQwen3Guard` serialises its use with
    the model's lock.
    """

    def __init__(self, tokenizer: Any, name: str) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"{name!r} has no chat template; a Qwen3Guard-Gen checkpoint ships its "
                "moderation template in tokenizer_config.json"
            )
        if getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ModelLoadError(f"{name!r} needs a fast tokenizer (tokenizer.json)")
        self._tokenizer = tokenizer
        vocab: dict[str, int] = tokenizer.get_vocab()
        # Markup is split at every added token (special or not: Qwen3's <think> is
        # not "special"); whitespace tokens are left to the BPE like any text.
        added = sorted(
            (t for t in tokenizer.added_tokens_encoder if t.strip()), key=len, reverse=True
        )
        self._control_ids: dict[str, int] = {t: vocab[t] for t in added}
        self._control_re = (
            re.compile("(" + "|".join(map(re.escape, added)) + ")") if added else None
        )
        think = [t for t in (THINK_CLOSE, THINK_OPEN) if t in self._control_ids]
        self._think_re = re.compile("(" + "|".join(map(re.escape, think)) + ")") if think else None

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's transformers tokenizer."""
        return self._tokenizer

    def encode(self, guard_input: GuardInput, max_tokens: int) -> EncodedInput:
        """Token ids of the guard prompt for ``guard_input``, truncated to ``max_tokens``.

        The prompt is the checkpoint's chat template rendered around the messages;
        for ordinary text the ids equal ``tokenizer.apply_chat_template(messages)``.
        A longer input loses content from its start (see :meth:`drop_leading_content`)
        and comes back with ``truncated=True``. Raises
        :class:`~guardrail.errors.InputError` when it cannot be made to fit.
        """
        ids = self.ids(guard_input)
        current = guard_input
        for _ in range(_TRUNCATION_ROUNDS):
            if len(ids) <= max_tokens:
                return EncodedInput(tuple(ids), current, truncated=current is not guard_input)
            current = self.drop_leading_content(current, len(ids) - max_tokens, max_tokens)
            ids = self.ids(current)
        raise InputError(f"could not truncate the conversation to {max_tokens} tokens")

    def ids(self, guard_input: GuardInput) -> list[int]:
        """The guard prompt's ids, never truncated: template markup plus plain content."""
        segments = render_segments(
            lambda msgs: str(self._tokenizer.apply_chat_template(msgs, tokenize=False)),
            guard_input,
        )
        # Encode maximal runs of text between markup tokens as plain text, so the
        # BPE sees the same text the checkpoint was trained on (e.g. "USER: hi").
        ids: list[int] = []
        run = ""
        for segment in segments:
            splitter = self._think_re if segment.is_content else self._control_re
            if splitter is None:
                run += segment.text
                continue
            for k, piece in enumerate(splitter.split(segment.text)):
                if k % 2 == 0:
                    run += piece
                else:
                    ids += self.plain_ids(run)
                    ids.append(self._control_ids[piece])
                    run = ""
        return ids + self.plain_ids(run)

    def plain_ids(self, text: str) -> list[int]:
        """Encode ``text`` with no added token matched, special or not: how content is encoded.

        ``split_special_tokens=True`` alone would still match non-special added
        tokens such as Qwen3's ``<think>``, so run the backend's normaliser,
        pre-tokenizer and model directly.
        """
        if not text:
            return []
        backend = self._tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = [text]
        if backend.pre_tokenizer is not None:
            pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        return [t.id for piece in pieces for t in backend.model.tokenize(piece)]

    def content_ids(self, text: str) -> list[int]:
        """A message's text as the guard prompt encodes it: plain, think tags as their tokens."""
        if self._think_re is None:
            return self.plain_ids(text)
        ids: list[int] = []
        for k, piece in enumerate(self._think_re.split(text)):
            ids += self.plain_ids(piece) if k % 2 == 0 else [self._control_ids[piece]]
        return ids

    def drop_leading_content(
        self, guard_input: GuardInput, excess: int, max_tokens: int
    ) -> GuardInput:
        """``guard_input`` with ``excess`` content tokens dropped from its start.

        The earliest messages go first (emptied, never removed: the turns stay), and
        the message where the cut falls keeps its last tokens. ``max_tokens`` only
        names the limit in the :class:`~guardrail.errors.InputError` raised when
        even empty messages would not fit.
        """
        messages: list[GuardMessage] = []
        for message in guard_input.messages:
            ids = self.content_ids(message.content) if excess else []
            if len(ids) <= excess:
                excess -= len(ids)
                messages.append(message if not ids else GuardMessage(message.role, ""))
                continue
            # A cut inside a multi-byte character decodes to U+FFFD: drop it.
            kept = self._tokenizer.decode(ids[excess:]).lstrip("\ufffd")
            messages.append(GuardMessage(message.role, kept))
            excess = 0
        if excess:
            raise InputError(
                f"the conversation does not fit in max_input_tokens={max_tokens} "
                "even without its content (too many turns)"
            )
        return GuardInput(tuple(messages), guard_input.part, guard_input.skipped_parts)

    def template_overhead(self) -> int:
        """Tokens the longest template (response moderation) takes with empty messages."""
        return len(self.ids(_EMPTY_RESPONSE_CHECK))

    def template_heads(self) -> dict[Stage, list[int]]:
        """Per stage, the token prefix every guard input of that stage begins with.

        Found as the common prefix of a few probe conversations; the fast decoder
        caches the model's keys and values for it once.
        """
        heads: dict[Stage, list[int]] = {}
        for stage, probes in _HEAD_PROBES.items():
            encoded = [
                self.ids(GuardInput(tuple(GuardMessage(r, t) for r, t in probe)))
                for probe in probes
            ]
            n = min(len(e) for e in encoded)
            head = next((i for i in range(n) if len({e[i] for e in encoded}) > 1), n)
            heads[stage] = encoded[0][:head]
        return heads
