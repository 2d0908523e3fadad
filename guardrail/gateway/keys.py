"""Gateway API keys: which route (policy and upstream) a request's ``Authorization`` gets.

Keys are known by their sha256 only: the config holds the digest, or names an
environment variable whose value is hashed when the gateway starts. A request's
bearer token is hashed and looked up; nothing else a client sends (no other
header, no body field) chooses or weakens the policy. With no keys configured
the gateway is open: every request gets the one ``open`` route, whatever it sends.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from guardrail.errors import ConfigurationError
from guardrail.gateway.config import GatewayConfig
from guardrail.gateway.shapes import ApiError

__all__ = ["KeyRing", "key_digest", "key_hint"]

R = TypeVar("R")


def key_digest(key: str) -> str:
    """The sha256 of a key, as lowercase hex: what a config's ``sha256`` holds."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_hint(authorization: str | None) -> str | None:
    """What an audit record may say of the bearer token presented: ``sha256:1a2b3c4d``.

    The first 8 hex digits of the token's sha256, enough to tell attempts with one
    key from attempts with another; ``None`` when no token was sent. It cannot be
    turned back into the key, but it can confirm a guess of a short one: gateway
    keys should be long and random.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return "sha256:" + key_digest(token.strip())[:8]


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        "invalid_request_error",
        code="invalid_api_key",
        headers=(("www-authenticate", "Bearer"),),
    )


class KeyRing(Generic[R]):
    """Maps a request's bearer token to its route (``R``), or refuses it with 401."""

    def __init__(self, routes: Mapping[str, R], open_route: R | None = None) -> None:
        """``routes`` maps key digests (:func:`key_digest`) to routes."""
        self._routes = dict(routes)
        self._open = open_route

    @classmethod
    def of(
        cls,
        config: GatewayConfig,
        route: Callable[[str, str, str], R],
        environ: Mapping[str, str] = os.environ,
    ) -> KeyRing[R]:
        """The key ring a config describes; ``route(name, policy, upstream)`` builds a route.

        A key read from the environment must be set (and not empty) when the gateway starts.
        """
        if config.open is not None:
            return cls({}, route("open", config.open.policy, config.open.upstream))
        routes: dict[str, R] = {}
        for i, key in enumerate(config.keys):
            digest = key.sha256
            if key.key_env is not None:
                value = environ.get(key.key_env)
                if not value:
                    raise ConfigurationError(
                        f"keys[{i}].key_env: the environment variable {key.key_env} is not set"
                    )
                digest = key_digest(value)
            if digest is None:  # the schema gives every key a sha256 or a key_env
                raise ConfigurationError(f"keys[{i}]: no sha256 and no key_env")
            if digest in routes:
                raise ConfigurationError(f"keys[{i}] ({key.id}): the same key is given twice")
            routes[digest] = route(key.id, key.policy, key.upstream)
        return cls(routes)

    @property
    def open(self) -> bool:
        """Whether requests need no key."""
        return self._open is not None

    def route_for(self, authorization: str | None) -> R:
        """The route of a request with this ``Authorization`` header; 401 when it has none."""
        if self._open is not None:
            return self._open
        if not authorization:
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        # Looked up by digest: the table holds no key, and a lookup takes the same
        # path whatever the key's first characters are.
        found = self._routes.get(key_digest(token.strip()))
        if found is None:
            raise _unauthorized("invalid API key")
        return found
