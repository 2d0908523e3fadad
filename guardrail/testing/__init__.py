r"""Fakes for testing code that uses guardrail, without a model or a server.

:class:`ScriptedClassifier` is a real :class:`~guardrail.classifiers.base.Classifier`
that answers with scripted guard output, parsed by the same
:func:`~guardrail.parse_verdict` as real model output, so policies, the engine
and audit records behave exactly as in production::

    guard = ScriptedClassifier({"bomb": "Safety: Unsafe\\nCategories: Violent"})
    client = guardrail.wrap(openai.OpenAI(...), guard=Guard(policy, classifier=guard))
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from guardrail.errors import GuardrailError
from guardrail.qwen3guard import GuardInput, parse_verdict
from guardrail.types import Stage, Verdict

SAFE_PROMPT = "Safety: Safe\nCategories: None"
SAFE_RESPONSE = "Safety: Safe\nCategories: None\nRefusal: No"

Script = Callable[[GuardInput], str] | Mapping[str, str]


class ScriptedClassifier:
    """A guard whose output is scripted.

    ``script`` is either a function from the guard input to the guard's output
    text, or a mapping ``{substring: output}`` matched (in order, case-
    insensitively) against the judged turn's text; unmatched inputs get a Safe
    verdict (with ``Refusal: No`` on responses). ``delay_s`` simulates the guard's
    latency (sleeping, or ``asyncio.sleep`` in :meth:`aclassify`); ``error``, when
    set, is raised by every call. Every judged input is recorded in ``calls``.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        delay_s: float = 0.0,
        error: GuardrailError | None = None,
        model_id: str = "scripted-guard",
    ) -> None:
        self.script = script
        self.delay_s = delay_s
        self.error = error
        self._model_id = model_id
        self.calls: list[GuardInput] = []
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The fake guard's model id."""
        return self._model_id

    def output(self, guard_input: GuardInput) -> str:
        """The scripted guard output for one input."""
        if callable(self.script):
            return self.script(guard_input)
        text = guard_input.messages[-1].content.lower()
        for needle, output in (self.script or {}).items():
            if needle.lower() in text:
                return output
        return SAFE_RESPONSE if guard_input.stage is Stage.RESPONSE else SAFE_PROMPT

    def _verdicts(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        with self._lock:
            self.calls.extend(inputs)
        if self.error is not None:
            raise self.error
        return [
            parse_verdict(
                self.output(inp),
                stage=inp.stage,
                model=self._model_id,
                latency_s=self.delay_s,
                skipped_parts=inp.skipped_parts,
                part=inp.part,
            )
            for inp in inputs
        ]

    def classify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Judge inputs from the script (after ``delay_s``)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return self._verdicts(inputs)

    async def aclassify(self, inputs: Sequence[GuardInput]) -> list[Verdict]:
        """Async twin of :meth:`classify`."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self._verdicts(inputs)
