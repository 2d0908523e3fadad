"""``wrap()`` and its proxies: a Guard in front of an ``openai.OpenAI`` or ``AsyncOpenAI``.

The wrapper is a thin proxy. ``chat.completions.create`` / ``parse`` and
``responses.create`` / ``parse`` go through the guard, keep their signatures and
return the same types (``ChatCompletion`` or a stream of ``ChatCompletionChunk``;
``Response`` or a stream of Responses events with ``stream=True``). Every other
API follows :mod:`~guardrail.client.access`: those that return no model output
(``models``, ``files``, ``embeddings``, ``moderations``...) pass through; the
others (legacy ``completions``, ``responses.retrieve``, ``realtime``,
``beta.threads``...) raise :class:`~guardrail.errors.UnguardedAccessError`
unless the policy lists them under ``client.passthrough``. Helpers that would
return a guarded API's raw output (``with_raw_response`` and
``with_streaming_response`` on the client, ``beta``, ``chat``, ``chat.completions``
and ``responses``) always raise. Attributes that are not APIs
(``api_key``, ``base_url``...) pass through. ``with_options`` and ``copy``
return wrapped clients.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from guardrail.client.access import RAW_HELPERS, checked, is_api, raw_refusal
from guardrail.client.calls import acomplete, complete
from guardrail.client.responses import acreate_response, create_response
from guardrail.errors import ConfigurationError
from guardrail.secrets import Masker

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI

    from guardrail.guard import Guard
    from guardrail.policy import Policy

ClientT = TypeVar("ClientT")
ProxyT = TypeVar("ProxyT", bound="_Proxy")


class _Proxy:
    """Delegates every attribute it does not define to the wrapped object.

    ``mask`` knows the guard's secrets and the wrapped client's API key.
    """

    _wrapped: Any
    _guard: Guard
    _mask: Masker

    def __init__(self, wrapped: Any, guard: Guard, mask: Masker) -> None:
        object.__setattr__(self, "_wrapped", wrapped)
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "_mask", mask)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._wrapped, name, value)

    def __repr__(self) -> str:
        return f"<guarded {self._wrapped!r}>"

    def _api(self, path: str, name: str) -> Any:
        """The wrapped resource's attribute ``name`` (an API at ``path``), if it may pass."""
        if name in RAW_HELPERS:
            raise raw_refusal(path)
        value = getattr(self._wrapped, name)
        if name.startswith("_"):
            return value
        return checked(path, value, self._guard.policy.client.passthrough)

    def _resource(self, path: str, name: str) -> Any:
        """The wrapped object's attribute ``name``; an API resource only if it may pass.

        Attributes that are not API resources (``api_key``, ``with_options``...) pass.
        """
        if name in RAW_HELPERS:
            raise raw_refusal(path)
        value = getattr(self._wrapped, name)
        if is_api(value):
            return checked(path, value, self._guard.policy.client.passthrough)
        return value

    def _child(self, name: str, inner: Any, make: Callable[[Any, Guard, Masker], ProxyT]) -> ProxyT:
        # Wrappers of the client's (stable) sub-resources are built once, not per call.
        cached: ProxyT | None = self.__dict__.get(name)
        if cached is None or cached._wrapped is not inner:
            cached = make(inner, self._guard, self._mask)
            object.__setattr__(self, name, cached)
        return cached


class _GuardedCompletions(_Proxy):
    def __getattr__(self, name: str) -> Any:
        return self._api(f"chat.completions.{name}", name)

    def create(self, **params: Any) -> Any:
        """Guarded ``chat.completions.create``: same parameters, same return types."""
        return complete(self._guard, self._wrapped.create, params, self._mask)

    def parse(self, **params: Any) -> Any:
        """Guarded ``chat.completions.parse`` (structured outputs)."""
        return complete(self._guard, self._wrapped.parse, params, self._mask, streams=False)


class _AsyncGuardedCompletions(_GuardedCompletions):
    async def create(self, **params: Any) -> Any:
        """Guarded async ``chat.completions.create``."""
        return await acomplete(self._guard, self._wrapped.create, params, self._mask)

    async def parse(self, **params: Any) -> Any:
        """Guarded async ``chat.completions.parse``."""
        return await acomplete(self._guard, self._wrapped.parse, params, self._mask, streams=False)


class _GuardedResponses(_Proxy):
    def __getattr__(self, name: str) -> Any:
        return self._api(f"responses.{name}", name)

    def create(self, **params: Any) -> Any:
        """Guarded ``responses.create``: same parameters, same return types."""
        return create_response(self._guard, self._wrapped.create, params, self._mask)

    def parse(self, **params: Any) -> Any:
        """Guarded ``responses.parse`` (structured outputs)."""
        return create_response(self._guard, self._wrapped.parse, params, self._mask, streams=False)


class _AsyncGuardedResponses(_GuardedResponses):
    async def create(self, **params: Any) -> Any:
        """Guarded async ``responses.create``."""
        return await acreate_response(self._guard, self._wrapped.create, params, self._mask)

    async def parse(self, **params: Any) -> Any:
        """Guarded async ``responses.parse``."""
        return await acreate_response(
            self._guard, self._wrapped.parse, params, self._mask, streams=False
        )


class _GuardedChat(_Proxy):
    def __getattr__(self, name: str) -> Any:
        if name in RAW_HELPERS:
            raise raw_refusal(f"chat.{name}")
        return getattr(self._wrapped, name)

    @property
    def completions(self) -> _GuardedCompletions:
        return self._child("_completions", self._wrapped.completions, _completions)


def _is_async(inner: Any) -> bool:
    # openai decorates create(); unwrap to see whether it is a coroutine function.
    return inspect.iscoroutinefunction(inspect.unwrap(inner.create))


def _completions(inner: Any, guard: Guard, mask: Masker) -> _GuardedCompletions:
    cls = _AsyncGuardedCompletions if _is_async(inner) else _GuardedCompletions
    return cls(inner, guard, mask)


def _responses(inner: Any, guard: Guard, mask: Masker) -> _GuardedResponses:
    cls = _AsyncGuardedResponses if _is_async(inner) else _GuardedResponses
    return cls(inner, guard, mask)


class _GuardedBeta(_Proxy):
    def __getattr__(self, name: str) -> Any:
        # beta.chat (older clients' beta.chat.completions.parse) is refused like any other.
        return self._resource(f"beta.{name}", name)


class _GuardedClient(_Proxy):
    _owns_guard: bool

    def __getattr__(self, name: str) -> Any:
        return self._resource(name, name)

    @property
    def chat(self) -> _GuardedChat:
        return self._child("_chat", self._wrapped.chat, _GuardedChat)

    @property
    def responses(self) -> _GuardedResponses:
        return self._child("_responses", self._wrapped.responses, _responses)

    @property
    def beta(self) -> _GuardedBeta:
        return self._child("_beta", self._wrapped.beta, _GuardedBeta)

    def with_options(self, **options: Any) -> Any:
        """A wrapped copy of the client with other options (same guard)."""
        return _guarded_client(self._wrapped.with_options(**options), self._guard)

    def copy(self, **options: Any) -> Any:
        """A wrapped copy of the client (same guard)."""
        return _guarded_client(self._wrapped.copy(**options), self._guard)

    def close(self) -> Any:
        """Close the client, and the guard when ``wrap()`` created it."""
        result = self._wrapped.close()
        if getattr(self, "_owns_guard", False):
            self._guard.close()
        return result

    @property
    def guard(self) -> Guard:
        """The guard checking this client's calls."""
        return self._guard


@overload
def wrap(
    client: OpenAI, *, policy: Policy | str | Path | None = ..., guard: Guard | None = ...
) -> OpenAI: ...
@overload
def wrap(
    client: AsyncOpenAI, *, policy: Policy | str | Path | None = ..., guard: Guard | None = ...
) -> AsyncOpenAI: ...
@overload
def wrap(
    client: ClientT, *, policy: Policy | str | Path | None = ..., guard: Guard | None = ...
) -> ClientT: ...
def wrap(
    client: Any, *, policy: Policy | str | Path | None = None, guard: Guard | None = None
) -> Any:
    """Guard every chat completion and response made through ``client``.

    Give either a ``policy`` (a :class:`~guardrail.policy.Policy`, or a path to a
    policy YAML file; default: the balanced default policy) or a ready ``guard``
    (to share one loaded guard model between clients). The returned object
    behaves like ``client`` for type checkers and at run time, except that it is
    a proxy (``isinstance(wrapped, openai.OpenAI)`` is false).
    """
    from guardrail.guard import Guard

    if guard is not None and policy is not None:
        raise ConfigurationError("give either policy= or guard=, not both")
    if not hasattr(client, "chat"):
        raise ConfigurationError(
            f"{type(client).__name__} has no 'chat' attribute; wrap an openai.OpenAI "
            "or openai.AsyncOpenAI client"
        )
    wrapped = _guarded_client(client, guard if guard is not None else Guard(policy))
    object.__setattr__(wrapped, "_owns_guard", guard is None)
    return cast(Any, wrapped)


def _guarded_client(client: Any, guard: Guard) -> _GuardedClient:
    # The client's own API key joins the guard's secrets for its calls (a guard may
    # be shared by clients with different keys).
    key = getattr(client, "api_key", None)
    mask = guard.settings.mask.with_secrets(key if isinstance(key, str) else None)
    return _GuardedClient(client, guard, mask)
