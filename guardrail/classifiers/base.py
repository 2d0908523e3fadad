"""The contract every guard backend meets, and moderation helpers written once over it.

A backend only turns :class:`~guardrail.qwen3guard.GuardInput` batches into
verdicts; normalising conversations and merging the verdicts of a reasoning
model's thinking and answer happen here, identically for every backend and for
sync and async callers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from guardrail.errors import ClassifierError
from guardrail.qwen3guard import GuardInput, combine_verdicts, guard_inputs
from guardrail.types import ReasoningMode, Verdict


@runtime_checkable
class Classifier(Protocol):
    """A guard backend: a batch of guard inputs in, one verdict per input out, in order."""

    @property
    def model_id(self) -> str:
        """The guard model's id (hub id, directory or served model name)."""
        ...

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Judge every input; raises :class:`~guardrail.errors.ClassifierError` on failure."""
        ...

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Async twin of :meth:`classify` that never blocks the event loop."""
        ...


Conversation = tuple[Sequence[Any] | Iterable[Any], Any]
"""A conversation to check: (messages, response or ``None`` for a prompt check)."""


def plan(
    conversations: Sequence[Conversation],
    *,
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER,
    include_system: bool = False,
) -> tuple[list[GuardInput], list[int]]:
    """Flatten conversations into guard inputs plus how many inputs each one produced."""
    flat: list[GuardInput] = []
    sizes: list[int] = []
    for messages, response in conversations:
        inputs = guard_inputs(
            messages, response, reasoning=reasoning, include_system=include_system
        )
        flat.extend(inputs)
        sizes.append(len(inputs))
    return flat, sizes


def regroup(verdicts: Sequence[Verdict], sizes: Sequence[int]) -> list[Verdict]:
    """Merge flat verdicts back into one verdict per conversation."""
    if len(verdicts) == len(sizes) == sizes.count(1):
        return list(verdicts)  # one input per conversation: nothing to merge
    if len(verdicts) != sum(sizes):
        raise ClassifierError(
            f"the guard returned {len(verdicts)} verdicts for {sum(sizes)} inputs"
        )
    out: list[Verdict] = []
    start = 0
    for size in sizes:
        out.append(combine_verdicts(verdicts[start : start + size]))
        start += size
    return out


def moderate_many(
    classifier: Classifier,
    conversations: Sequence[Conversation],
    *,
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER,
    include_system: bool = False,
) -> list[Verdict]:
    """Check several conversations in one batch; one verdict per conversation."""
    flat, sizes = plan(conversations, reasoning=reasoning, include_system=include_system)
    return regroup(classifier.classify(flat), sizes)


async def amoderate_many(
    classifier: Classifier,
    conversations: Sequence[Conversation],
    *,
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER,
    include_system: bool = False,
) -> list[Verdict]:
    """Async twin of :func:`moderate_many`."""
    flat, sizes = plan(conversations, reasoning=reasoning, include_system=include_system)
    return regroup(await classifier.aclassify(flat), sizes)


def moderate(
    classifier: Classifier,
    messages: Sequence[Any] | Iterable[Any],
    response: Any = None,
    *,
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER,
    include_system: bool = False,
) -> Verdict:
    """Check one prompt (``response=None``) or one response with ``classifier``."""
    return moderate_many(
        classifier, [(messages, response)], reasoning=reasoning, include_system=include_system
    )[0]


async def amoderate(
    classifier: Classifier,
    messages: Sequence[Any] | Iterable[Any],
    response: Any = None,
    *,
    reasoning: ReasoningMode | str = ReasoningMode.ANSWER,
    include_system: bool = False,
) -> Verdict:
    """Async twin of :func:`moderate`."""
    verdicts = await amoderate_many(
        classifier, [(messages, response)], reasoning=reasoning, include_system=include_system
    )
    return verdicts[0]
