"""The gateway: an OpenAI-compatible HTTP proxy that guards every chat completion and response.

Any application that speaks OpenAI's API (any language, any SDK) changes one
base URL and is guarded by the same flow as :func:`guardrail.wrap`:
``guardrail serve --policy policies/default.yaml --upstream http://llm:8000/v1``.

Modules, in the order a request meets them:

- :mod:`~guardrail.gateway.config`: the config file's schema and located errors;
- :mod:`~guardrail.gateway.keys`: gateway API keys -> a route
  (:mod:`~guardrail.gateway.routes`: a policy's guard and an upstream);
- :mod:`~guardrail.gateway.app`: the Starlette app (needs the ``gateway`` extra);
- :mod:`~guardrail.gateway.endpoint`: admission (key, drain, in-flight bound, body)
  before a guarded API's call, with :mod:`~guardrail.gateway.inflight` (the bound
  and the drain) and :mod:`~guardrail.gateway.auditing` (the one audit record of a
  refused request);
- :mod:`~guardrail.gateway.chat`: the guarded chat completions API, sent upstream by
  :mod:`~guardrail.gateway.forward` (a lean aiohttp client);
- :mod:`~guardrail.gateway.responses`: the guarded Responses API (the same
  endpoint; the upstream's ``openai`` client);
- :mod:`~guardrail.gateway.asgi`: body reads, disconnects, sending;
- :mod:`~guardrail.gateway.shapes`: OpenAI-shaped errors;
- :mod:`~guardrail.gateway.metrics`: Prometheus text;
- :mod:`~guardrail.gateway.serve`: running it with uvicorn (workers, drain).

Importing this package imports neither Starlette nor uvicorn: the app module
does, when the gateway is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.gateway.config import GatewayConfig, load_gateway_config
from guardrail.gateway.keys import key_digest

if TYPE_CHECKING:
    from guardrail.gateway.app import Gateway, create_app
    from guardrail.gateway.serve import serve

__all__ = ["Gateway", "GatewayConfig", "create_app", "key_digest", "load_gateway_config", "serve"]

_LAZY = {
    "Gateway": "guardrail.gateway.app",
    "create_app": "guardrail.gateway.app",
    "serve": "guardrail.gateway.serve",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guardrail.gateway' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
