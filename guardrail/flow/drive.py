"""Stepping a flow, written once for both drivers: send, throw, abandon.

A driver asks :meth:`Stepper.next_effect` for the effect to perform, performs
it, and hands back the outcome with :meth:`Stepper.resolve` or :meth:`Stepper.reject`.
When the driver's caller goes away (closes a stream early, is cancelled, or an
exception escapes), :meth:`Stepper.abandon` throws
:class:`~guardrail.flow.effects.Abandoned` into the flow so its cleanup effects
(cancel, close, audit) still run; chunks it emits then are dropped, as nobody
is listening.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from guardrail.errors import GuardTimeoutError
from guardrail.flow.effects import Abandoned, Classify, Effect, Emit, Flow, Job

T = TypeVar("T")


class Stepper(Generic[T]):
    """Steps one flow: hands out the effects to perform and takes their outcomes."""

    __slots__ = ("_abandoned", "_error", "_flow", "finished", "result", "value")

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.value: Any = None
        """The outcome of the last effect, sent into the flow at the next step.

        Drivers set it directly (the same as :meth:`resolve`, without a call per effect).
        """
        self._error: BaseException | None = None
        self._abandoned = False
        self.finished = False
        """Whether the flow has returned or raised."""
        self.result: T | None = None
        """What the flow returned, once finished."""

    def next_effect(self) -> Effect | None:
        """Resume the flow with the last outcome; its next effect, or ``None`` once it returned.

        An exception the flow raises propagates (except the ``Abandoned`` signal
        of an abandoned flow, which ends it quietly).
        """
        while True:
            value, error = self.value, self._error
            self.value = self._error = None
            try:
                effect = self._flow.throw(error) if error is not None else self._flow.send(value)
            except StopIteration as stop:
                self.finished = True
                self.result = stop.value
                return None
            except Abandoned:
                self.finished = True
                if self._abandoned:
                    return None
                raise
            except BaseException:
                self.finished = True
                raise
            if not (self._abandoned and type(effect) is Emit):
                return effect
            # Abandoned: nobody is listening to what the flow emits.

    def resolve(self, value: Any) -> None:
        """The outcome of the last effect: its value."""
        self.value = value

    def reject(self, error: BaseException) -> None:
        """The outcome of the last effect: an exception, raised inside the flow."""
        self._error = error

    def abandon(self) -> bool:
        """Start abandoning an unfinished flow; False when it had already finished."""
        if self.finished:
            return False
        self._abandoned = True
        self.value, self._error = None, Abandoned()
        return True


def timeout_error(job: Job[Any], timeout: float) -> GuardTimeoutError:
    """The error of a check (or a reward scoring) that overran its deadline."""
    what = job.stage.value if isinstance(job, Classify) else "reward"
    return GuardTimeoutError(f"{what} check exceeded its {timeout:g}s deadline")
