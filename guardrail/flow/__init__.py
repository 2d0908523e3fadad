"""The guarded call, written once as generators of effects, and its two drivers.

Nothing in this package imports a model, network or client library. A flow
(:func:`completion_flow`, :func:`stream_flow`, :func:`check_flow`) reads its
:class:`FlowSettings`, records what happens on a :class:`Trace`, and yields
effects (:mod:`~guardrail.flow.effects`) instead of performing I/O. The drivers
are the only code that blocks or awaits: :class:`SyncDriver` (threads) and
:class:`AsyncDriver` (tasks), stepping flows through the one
:class:`~guardrail.flow.drive.Stepper`. This is how sync and async callers share
one implementation of the logic (the pattern of httpx's auth flows), and how
tests pin a flow's behaviour by answering its effects by hand.

Modules, in the order data flows:

- :mod:`~guardrail.flow.settings`: what a flow reads (the policy, best-of-n);
- :mod:`~guardrail.flow.effects`: the effects, the jobs they start, typed handles;
- :mod:`~guardrail.flow.checks`: one checked step, the prompt phase, direct checks,
  refused calls;
- :mod:`~guardrail.flow.completion`: the non-streaming call;
- :mod:`~guardrail.flow.buffer`: the sans-I/O stream buffer (``StreamState``);
- :mod:`~guardrail.flow.stream`: the streaming call;
- :mod:`~guardrail.flow.trace`: the trace -> report and audit record;
- :mod:`~guardrail.flow.drive`, :mod:`~guardrail.flow.sync_driver`,
  :mod:`~guardrail.flow.async_driver`: performing the effects.
"""

from __future__ import annotations

from guardrail.flow.async_driver import AsyncDriver
from guardrail.flow.buffer import StreamState
from guardrail.flow.checks import check_flow, refuse
from guardrail.flow.completion import completion_flow
from guardrail.flow.settings import FlowSettings
from guardrail.flow.stream import stream_flow
from guardrail.flow.sync_driver import CheckPace, SyncDriver
from guardrail.flow.trace import Recording, Trace, audit_record

__all__ = [
    "AsyncDriver",
    "CheckPace",
    "FlowSettings",
    "Recording",
    "StreamState",
    "SyncDriver",
    "Trace",
    "audit_record",
    "check_flow",
    "completion_flow",
    "refuse",
    "stream_flow",
]
