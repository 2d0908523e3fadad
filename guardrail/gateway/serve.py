"""Serving the gateway with uvicorn: one process, or several workers.

With one worker the app is built here, so a bad policy or a missing key fails
before the port is bound. Each serving process freezes its start-up heap once its
app is built (:func:`settle_heap`). Workers (``server.workers > 1``) are processes uvicorn
spawns: each builds its own app from the config, handed over in the environment
variable :data:`CONFIG_ENV` as JSON (policy paths already absolute; it holds
names of key variables and key digests, never a key). Every worker runs its own
guards and writes its own JSONL audit file, with its own hash chain: the policy's
``audit.jsonl`` becomes ``audit.w0.jsonl``, ``audit.w1.jsonl``... (a slot per live
worker, :mod:`guardrail.audit.workers`); ``guardrail audit verify audit.jsonl``
checks each of them.

On SIGTERM/SIGINT uvicorn stops accepting connections and waits up to
``limits.drain_timeout_s`` for the requests in flight, then cancels those left
(each abandoned call still writes its record); the app's shutdown then waits for
them to end and closes the upstream clients and the guards, flushing and closing
the audit logs (:meth:`~guardrail.gateway.app.Gateway.shutdown`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Any

from guardrail.errors import ConfigurationError, MissingDependencyError
from guardrail.gateway.config import GatewayConfig

__all__ = [
    "CONFIG_ENV",
    "app_from_environment",
    "check_environment",
    "serve",
    "settle_heap",
    "uvicorn_options",
]

CONFIG_ENV = "GUARDRAIL_GATEWAY_CONFIG_JSON"
"""Where workers find the gateway config (JSON), set by :func:`serve`."""


def check_environment(config: GatewayConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`ConfigurationError` when a variable the config names is not set."""
    for name, upstream in config.upstreams.items():
        if upstream.api_key_env is not None and not environ.get(upstream.api_key_env):
            raise ConfigurationError(
                f"upstreams.{name}.api_key_env: the environment variable "
                f"{upstream.api_key_env} is not set"
            )
    for i, key in enumerate(config.keys):
        if key.key_env is not None and not environ.get(key.key_env):
            raise ConfigurationError(
                f"keys[{i}].key_env: the environment variable {key.key_env} is not set"
            )


def app_from_environment() -> Any:
    """The app of one worker process (uvicorn's factory), from :data:`CONFIG_ENV`."""
    from guardrail.gateway.app import create_app

    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise ConfigurationError(f"{CONFIG_ENV} is not set: start workers with guardrail serve")
    app = create_app(GatewayConfig.model_validate_json(text), per_worker_audit=True)
    settle_heap()
    return app


def settle_heap() -> None:
    """Keep the start-up heap (modules, guards, the app) out of the garbage collector's scans.

    A serving process's imports (openai's and pydantic's types above all) leave
    hundreds of thousands of long-lived objects that every full collection would
    traverse again (about a tenth of the gateway's CPU per request in bench (g)); frozen
    (:func:`gc.freeze`), collections scan only what requests allocate.
    """
    gc.collect()
    gc.freeze()


def uvicorn_options(config: GatewayConfig, *, log_level: str = "info") -> dict[str, Any]:
    """uvicorn.run options for ``config``: address, access log, drain timeout, no server header.

    uvicorn picks uvloop and httptools (the ``gateway`` extra's) when installed.
    """
    server = config.server
    return {
        "host": server.host,
        "port": server.port,
        "log_level": log_level,
        "access_log": server.access_log,
        "timeout_graceful_shutdown": config.limits.drain_timeout_s,
        "server_header": False,
    }


def serve(config: GatewayConfig, *, log_level: str = "info") -> None:
    """Serve the gateway until SIGINT/SIGTERM (blocking)."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError("uvicorn", "gateway") from None
    check_environment(config)
    options = uvicorn_options(config, log_level=log_level)
    if config.server.workers > 1:
        os.environ[CONFIG_ENV] = config.model_dump_json()
        uvicorn.run(
            "guardrail.gateway.serve:app_from_environment",
            factory=True,
            workers=config.server.workers,
            **options,
        )
        return
    from guardrail.gateway.app import create_app

    app = create_app(config)
    settle_heap()
    uvicorn.run(app, **options)
