"""What a request is routed to: a policy's guard and an upstream server, and building the upstreams.

A gateway key (or the open route) picks one :class:`GatewayRoute`; nothing else a
client sends chooses or weakens it (:mod:`~guardrail.gateway.keys`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from guardrail.errors import ConfigurationError, MissingDependencyError

try:
    import openai
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError(exc.name or "openai", "gateway") from None

from guardrail.gateway.config import UpstreamConfig
from guardrail.gateway.forward import ChatForwarder
from guardrail.guard import Guard
from guardrail.secrets import Masker

__all__ = ["GatewayRoute", "Upstream", "build_upstream"]


@dataclass(frozen=True)
class Upstream:
    """An upstream server: its client and what callers may send it."""

    name: str
    config: UpstreamConfig
    client: openai.AsyncOpenAI
    """For guarded Responses calls, and ``/v1/models`` (passed through as it is)."""
    forward: ChatForwarder
    """Guarded chat completions go through this leaner client."""
    secret: str | None
    """The upstream's API key (masked in every error and record; never logged)."""

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self.config.base_url!r})"


@dataclass(frozen=True)
class GatewayRoute:
    """What one key gets: a policy's guard and an upstream."""

    name: str
    """The key's id (``open`` for an open gateway)."""
    policy: str
    guard: Guard
    upstream: Upstream
    mask: Masker
    """The guard's secrets and the upstream's key."""


def build_upstream(name: str, config: UpstreamConfig, environ: Mapping[str, str]) -> Upstream:
    """The clients of upstream ``name``, its key read from the variable ``api_key_env`` names."""
    secret: str | None = None
    if config.api_key_env is not None:
        secret = environ.get(config.api_key_env)
        if not secret:
            raise ConfigurationError(
                f"upstreams.{name}.api_key_env: the environment variable "
                f"{config.api_key_env} is not set"
            )
    # The key is always given: left unset, the openai client would read OPENAI_API_KEY
    # and send it to whatever server the upstream is.
    client = openai.AsyncOpenAI(
        base_url=config.base_url,
        api_key=secret or "EMPTY",
        timeout=config.timeout_s,
        max_retries=config.max_retries,
        http_client=openai.DefaultAioHttpClient(timeout=config.timeout_s),
    )
    forward = ChatForwarder(
        config.base_url,
        api_key=secret or "EMPTY",
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
    )
    return Upstream(name=name, config=config, client=client, forward=forward, secret=secret)
