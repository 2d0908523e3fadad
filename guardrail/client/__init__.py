"""The wrapped ``openai`` client: :func:`wrap`, its proxies and its stream objects.

- :mod:`~guardrail.client.proxies`: :func:`wrap` and the proxies that route
  ``chat.completions.create``/``parse`` and ``responses.create``/``parse``
  through the guard;
- :mod:`~guardrail.client.access`: which other APIs pass through and which
  raise (``client.passthrough`` in the policy);
- :mod:`~guardrail.client.calls`: one guarded chat call, adapted from ``openai``'s
  parameters and types to :mod:`guardrail.flow`;
- :mod:`~guardrail.client.responses`: one guarded Responses API call, adapted to
  the same flow;
- :mod:`~guardrail.client.streams`: ``GuardedStream`` / ``AsyncGuardedStream``, and
  ``GuardedEvents`` / ``AsyncGuardedEvents`` for Responses API streams.
"""

from __future__ import annotations

from guardrail.client.proxies import wrap
from guardrail.client.streams import (
    AsyncGuardedEvents,
    AsyncGuardedStream,
    GuardedEvents,
    GuardedStream,
)

__all__ = ["AsyncGuardedEvents", "AsyncGuardedStream", "GuardedEvents", "GuardedStream", "wrap"]
