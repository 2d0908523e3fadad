"""``guardrail serve``: the OpenAI-compatible guard gateway.

``guardrail serve --config gateway.yaml`` serves what the config file says;
``guardrail serve --policy policies/default.yaml --upstream http://llm:8000/v1``
serves one open route (no gateway key asked for) on 127.0.0.1. ``--host``,
``--port`` and ``--workers`` override the config. ``--check`` validates the
config, its policies and the environment variables it names, and exits.
"""

from __future__ import annotations

import argparse
from typing import Any

from guardrail.cli import EXIT_OK, error
from guardrail.errors import ConfigurationError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register ``serve`` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible guard gateway (needs guardrail[gateway])",
        description=(
            "Serve POST /v1/chat/completions (JSON and streaming), GET /v1/models, /healthz, "
            "/readyz and /metrics, guarding every call with a policy. Give --config FILE, or "
            "--policy and --upstream for one open route (no gateway key asked for: keep the "
            "default --host 127.0.0.1 unless a proxy in front authenticates callers)."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="gateway config YAML (keys, upstreams...)")
    p.add_argument("--policy", metavar="FILE", help="policy YAML for the open route")
    p.add_argument("--upstream", metavar="URL", help="upstream base URL, e.g. http://llm:8000/v1")
    p.add_argument(
        "--upstream-key-env",
        metavar="NAME",
        help="environment variable holding the upstream's API key (e.g. OPENAI_API_KEY)",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8080)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config, its policies and environment variables, then exit",
    )
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from guardrail.gateway.config import GatewayConfig, load_gateway_config

    simple = args.policy is not None or args.upstream is not None
    if args.config is not None:
        if simple or args.upstream_key_env is not None:
            raise ConfigurationError(
                "give --config, or --policy and --upstream; not both "
                "(the config file names its policies and upstreams)"
            )
        config = load_gateway_config(args.config)
    elif args.policy is None or args.upstream is None:
        raise ConfigurationError("give --config FILE, or both --policy FILE and --upstream URL")
    else:
        config = GatewayConfig.simple(
            policy=args.policy, upstream=args.upstream, api_key_env=args.upstream_key_env
        )
    server = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "workers": args.workers}.items()
        if v is not None
    }
    if server:
        merged = {**config.server.model_dump(), **server}
        config = config.model_copy(update={"server": type(config.server).model_validate(merged)})
    return config


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (0), or validate with ``--check``; 2 for a bad config."""
    from pydantic import ValidationError

    try:
        config = _config(args)
    except ValidationError as exc:  # a flag out of range (--port 70000)
        err = exc.errors()[0]
        return error(f"--{err['loc'][-1]}: {err['msg']}")
    from guardrail.gateway.serve import check_environment, serve
    from guardrail.policy import load_policy

    check_environment(config)
    for path in config.policies.values():
        load_policy(path)  # a bad policy fails here, with its file:line:col
    if args.check:
        where = f"{config.server.host}:{config.server.port}"
        mode = "open (no key)" if config.open is not None else f"{len(config.keys)} key(s)"
        print(f"OK  gateway config: {len(config.policies)} policy(ies), {mode}, {where}")
        return EXIT_OK
    serve(config, log_level=args.log_level)
    return EXIT_OK
