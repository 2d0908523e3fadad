"""The gateway's config file: its schema, and a loader whose errors say file:line:col: field.

A config names the upstreams (OpenAI-compatible servers, each with the NAME of
the environment variable holding its key), the policies, and who may call:
either ``keys`` (each gateway key, given as its sha256 or read from an
environment variable, maps to a policy and an upstream) or ``open`` (no key is
asked for: the policy and upstream every request gets). Policy paths are read
relative to the config file. Example (``examples/gateway.yaml``)::

    version: 1
    server: {host: 127.0.0.1, port: 8080}
    upstreams:
      main: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}
    policies:
      default: ../policies/default.yaml
    keys:
      - {id: team-a, sha256: "9f86d0...", policy: default, upstream: main}

Loading either returns a :class:`GatewayConfig` or raises
:class:`~guardrail.errors.GatewayConfigError` pointing at the line, column and
field (``gateway.yaml:9:22: keys[0].policy: unknown policy 'defualt'; did you
mean 'default'?``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator
from pydantic_core import ErrorDetails

from guardrail.errors import GatewayConfigError
from guardrail.policy.fields import EnvName, FieldValueError, Label, Seconds, StrictModel, Text
from guardrail.policy.humanize import format_field_path

__all__ = [
    "MAX_CONFIG_BYTES",
    "GatewayAuditConfig",
    "GatewayConfig",
    "KeyConfig",
    "LimitsConfig",
    "RouteConfig",
    "ServerConfig",
    "UpstreamConfig",
    "load_gateway_config",
]

MAX_CONFIG_BYTES = 256 * 1024
"""The largest gateway config file that is parsed, in bytes."""

Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Url = Annotated[StrictStr, Field(pattern=r"^https?://[^\s]+$")]


class ServerConfig(StrictModel):
    """Where the gateway listens."""

    host: Text = "127.0.0.1"
    """The address to bind; the default takes connections from this machine only."""
    port: Annotated[StrictInt, Field(ge=0, le=65535)] = 8080
    workers: Annotated[StrictInt, Field(ge=1, le=256)] = 1
    """Worker processes; each runs its own guards and, with more than one, writes its
    own JSONL audit file (``audit.jsonl`` -> ``audit.w0.jsonl``...: one hash chain per
    worker, see :mod:`guardrail.audit.workers`)."""
    access_log: StrictBool = False
    """Log one line per request (method, path, status; never a header or body)."""


class LimitsConfig(StrictModel):
    """What one gateway process accepts."""

    max_in_flight: Annotated[StrictInt, Field(ge=1)] = 256
    """Requests served at once per worker; beyond it a request gets 429 with Retry-After."""
    max_body_bytes: Annotated[StrictInt, Field(ge=1024)] = 4 * 1024 * 1024
    """The largest request body; a larger one gets 413."""
    retry_after_s: Annotated[StrictInt, Field(ge=1)] = 1
    """The ``Retry-After`` a 429 carries, in seconds."""
    drain_timeout_s: Seconds = 30.0
    """On shutdown (SIGTERM), how long requests in flight may take to finish; those
    still running then are cancelled (their calls audited as abandoned) before the
    audit logs are flushed and closed."""


class GatewayAuditConfig(StrictModel):
    """Audit settings of the gateway itself (each call is audited by its policy's sink)."""

    unauthenticated_policy: Label | None = None
    """The policy whose audit log records requests refused for their key (401), which
    no key routed to a policy; default: the first policy listed."""


class UpstreamConfig(StrictModel):
    """An OpenAI-compatible server the gateway forwards guarded calls to."""

    base_url: Url
    """e.g. ``https://api.openai.com/v1`` or ``http://vllm:8000/v1``."""
    api_key_env: EnvName | None = None
    """The NAME of the environment variable holding the upstream's key (never the key)."""
    timeout_s: Seconds = 600.0
    max_retries: Annotated[StrictInt, Field(ge=0, le=10)] = 0
    """Retries of a failed upstream call (the caller's own client usually retries)."""
    models: tuple[Text, ...] | None = None
    """When set, the only models callers may ask for (others get 400 ``model_not_found``)."""
    extra_params: tuple[Text, ...] = ()
    """Body fields beyond OpenAI's (``top_k``, vLLM's ``guided_json``...) forwarded as they are."""


class RouteConfig(StrictModel):
    """The policy and upstream a request gets."""

    policy: Label
    upstream: Label


class KeyConfig(RouteConfig):
    """One gateway API key: how it is known, and its policy and upstream."""

    id: Label
    """A name for the key in logs and metrics (never the key)."""
    sha256: Sha256 | None = None
    """The key's sha256, as lowercase hex (``printf %s "$KEY" | sha256sum``)."""
    key_env: EnvName | None = None
    """Or: the NAME of an environment variable holding the key."""

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if (self.sha256 is None) == (self.key_env is None):
            raise FieldValueError("give exactly one of sha256 or key_env")
        return self


class GatewayConfig(StrictModel):
    """A whole gateway: server, limits, upstreams, policies and who may call."""

    version: Literal[1]
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: GatewayAuditConfig = GatewayAuditConfig()
    upstreams: Annotated[dict[Label, UpstreamConfig], Field(min_length=1)]
    policies: Annotated[dict[Label, Text], Field(min_length=1)]
    """Policy name -> policy file (relative to the config file)."""
    keys: tuple[KeyConfig, ...] = ()
    """Gateway API keys; when empty, ``open`` must say what unauthenticated calls get."""
    open: RouteConfig | None = None
    """No key asked for: every request gets this policy and upstream (give ``keys`` or this)."""

    @model_validator(mode="after")
    def _routes(self) -> GatewayConfig:
        if self.keys and self.open is not None:
            raise FieldValueError(
                "give keys or open, not both: with keys, every caller needs a key", "open"
            )
        if not self.keys and self.open is None:
            raise FieldValueError(
                "missing; give keys (callers need a key) or open (no key asked for)"
            )
        routes: list[tuple[tuple[str | int, ...], RouteConfig]] = [
            (("keys", i), key) for i, key in enumerate(self.keys)
        ]
        if self.open is not None:
            routes.append((("open",), self.open))
        unauthenticated = self.audit.unauthenticated_policy
        if unauthenticated is not None:
            _known(
                unauthenticated,
                self.policies,
                "policy",
                ("audit", "unauthenticated_policy"),
            )
        for where, route in routes:
            _known(route.policy, self.policies, "policy", (*where, "policy"))
            _known(route.upstream, self.upstreams, "upstream", (*where, "upstream"))
        seen: dict[str, int] = {}
        for i, key in enumerate(self.keys):
            if key.id in seen:
                raise FieldValueError(
                    f"duplicate key id {key.id!r} (first at keys[{seen[key.id]}])",
                    "keys",
                    i,
                    "id",
                )
            seen[key.id] = i
        return self

    @property
    def unauthenticated_policy(self) -> str:
        """The policy whose audit log records 401s (``audit.unauthenticated_policy``)."""
        return self.audit.unauthenticated_policy or next(iter(self.policies))

    @classmethod
    def simple(
        cls,
        *,
        policy: str,
        upstream: str,
        api_key_env: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        workers: int = 1,
    ) -> GatewayConfig:
        """The config of ``guardrail serve --policy P --upstream URL``: open, one route."""
        data = {
            "version": 1,
            "server": {"host": host, "port": port, "workers": workers},
            "upstreams": {"default": {"base_url": upstream, "api_key_env": api_key_env}},
            "policies": {"default": policy},
            "open": {"policy": "default", "upstream": "default"},
        }
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise GatewayConfigError(
                _message(err), source="<flags>", field=format_field_path(tuple(err["loc"]))
            ) from None


def _known(name: str, names: dict[str, Any], what: str, path: tuple[str | int, ...]) -> None:
    if name in names:
        return
    message = f"unknown {what} {name!r}"
    guess = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    message += f"; did you mean {guess[0]!r}?" if guess else f"; defined: {', '.join(names)}"
    raise FieldValueError(message, *path)


# ---------------------------------------------------------------------------- loading


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a gateway config file; policy paths come back absolute.

    Every problem raises :class:`~guardrail.errors.GatewayConfigError` naming the
    file and, where it applies, the 1-based line and column and the field.
    """
    source = os.fspath(path)
    try:
        with Path(source).open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise GatewayConfigError(
            f"cannot read the config file: {exc.strerror or exc}", source=source
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise GatewayConfigError(
            f"the config is too large (limit {MAX_CONFIG_BYTES // 1024} KiB)", source=source
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayConfigError("the file is not UTF-8 text", source=source) from None
    config = load_gateway_config_text(text, source)
    base = Path(source).resolve().parent
    policies = {name: str(base / p) for name, p in config.policies.items()}
    return config.model_copy(update={"policies": policies})


def load_gateway_config_text(text: str, source: str = "<string>") -> GatewayConfig:
    """Validate a gateway config given as YAML text (policy paths are left as written)."""
    marks = _Marks()
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise GatewayConfigError("the config is empty", source=source, line=1, column=1)
        _walk(root, (), marks, source)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise GatewayConfigError(
            f"invalid YAML: {exc.problem or 'malformed YAML'}",
            source=source,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise GatewayConfigError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise GatewayConfigError("the top level must be a mapping", source=source, line=1)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        error = _located(exc, marks, source)
    raise error


@dataclass
class _Marks:
    """Where each field path's value (and, for mapping entries, its key) starts."""

    values: dict[tuple[str | int, ...], yaml.Mark] = field(default_factory=dict)
    keys: dict[tuple[str | int, ...], yaml.Mark] = field(default_factory=dict)

    def locate(self, path: tuple[str | int, ...], *, key: bool = False) -> yaml.Mark | None:
        """The mark of ``path`` (its key with ``key=True``), or of its nearest located parent."""
        if key and path in self.keys:
            return self.keys[path]
        while path and path not in self.values:
            path = path[:-1]
        return self.values.get(path)


def _walk(
    node: yaml.Node, path: tuple[str | int, ...], marks: _Marks, source: str, depth: int = 0
) -> None:
    """Record where each field path starts; refuse duplicate keys and deep nesting."""
    if depth > 32 or len(marks.values) > 20_000:
        raise GatewayConfigError(
            "the config is too deeply nested or too large",
            source=source,
            line=node.start_mark.line + 1,
        )
    marks.values.setdefault(path, node.start_mark)
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), marks, source, depth + 1)
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if key in seen:
                mark = key_node.start_mark
                raise GatewayConfigError(
                    f"duplicate key {key!r}; YAML would silently keep only the last one",
                    source=source,
                    line=mark.line + 1,
                    column=mark.column + 1,
                    field=format_field_path((*path, key)),
                )
            seen.add(key)
            key_path = (*path, key)
            marks.keys[key_path] = key_node.start_mark
            _walk(value_node, key_path, marks, source, depth + 1)


def _message(err: ErrorDetails) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    error = ctx.get("error")
    if kind == "value_error" and isinstance(error, FieldValueError):
        return error.reason
    if kind == "extra_forbidden":
        return f"unknown key {str(err['loc'][-1])!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch" and err["loc"] and "env" in str(err["loc"][-1]):
        return (
            f"{err.get('input')!r} is not an environment variable name; give the NAME of the "
            "variable that holds the key, never the key itself"
        )
    if kind == "string_pattern_mismatch" and err["loc"] and err["loc"][-1] == "sha256":
        return "expected 64 lowercase hex digits (the sha256 of the key)"
    msg = err["msg"]
    return msg[0].lower() + msg[1:] if msg else kind


def _located(exc: ValidationError, marks: _Marks, source: str) -> GatewayConfigError:
    """The first error in file order, located; ``(+N more)`` when there are others."""
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, FieldValueError):
            loc = (*loc, *error.path)
        where = loc[:-1] if err["type"] == "missing" else loc
        mark = marks.locate(where, key=err["type"] == "extra_forbidden")
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        found.append((line or 0, column or 0, _message(err), format_field_path(loc)))
    found.sort(key=lambda f: (f[0], f[1]))
    line, column, message, field = found[0]
    if len(found) > 1:
        message += f" (+{len(found) - 1} more error{'s' if len(found) > 2 else ''})"
    return GatewayConfigError(
        message, source=source, line=line or None, column=column or None, field=field or None
    )
