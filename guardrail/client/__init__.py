"""The wrapped ``openai`` client: :func:`wrap`, its proxies and its stream objects.

- :mod:`~guardrail.client.proxies`: :func:`wrap` and the proxies that route
  ``chat.completions.create``/``parse`` through the guard (and refuse helpers
  that would bypass it);
- :mod:`~guardrail.client.calls`: one guarded call, adapted from ``openai``'s
  parameters and types to :mod:`guardrail.flow`;
- :mod:`~guardrail.client.streams`: ``GuardedStream`` / ``AsyncGuardedStream``.
"""

from __future__ import annotations

from guardrail.client.proxies import wrap
from guardrail.client.streams import AsyncGuardedStream, GuardedStream

__all__ = ["AsyncGuardedStream", "GuardedStream", "wrap"]
