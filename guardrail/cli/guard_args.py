"""The guard flags shared by ``check`` and ``eval``, and the guard they describe."""

from __future__ import annotations

import argparse
import sys

from guardrail.classifiers.base import Classifier
from guardrail.qwen3guard import DEFAULT_MODEL

__all__ = ["add_guard_arguments", "build_guard"]


def add_guard_arguments(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """Add ``--model``/``--base-url`` and the local and remote guard settings to ``p``.

    ``default`` describes which guard runs when neither flag is given.
    """
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--model",
        metavar="ID_OR_DIR",
        help=f"guard checkpoint: hub id or local directory (default {default or DEFAULT_MODEL})",
    )
    where.add_argument(
        "--base-url", metavar="URL", help="OpenAI-compatible guard server, e.g. http://host:8000/v1"
    )
    p.add_argument("--served-model", metavar="NAME", help="model name on the server (remote)")
    p.add_argument("--revision", help="hub revision to pin (local)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (local)")
    p.add_argument(
        "--dtype",
        help="float32, bfloat16, float16 or auto (local; default bfloat16 where the CPU or "
        "GPU computes it natively, else float32)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (local; default OMP_NUM_THREADS if set, else the cores "
        "available to the process)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (remote)")


def build_guard(args: argparse.Namespace) -> Classifier:
    """The guard the flags describe: a server (``--base-url``) or a local model.

    Loads a local model; with ``args.verbose`` says how it runs on stderr.
    """
    if args.base_url:
        from guardrail.classifiers.remote import RemoteQwen3Guard

        return RemoteQwen3Guard(
            args.base_url, model=args.served_model or DEFAULT_MODEL, timeout=args.timeout
        )
    from guardrail.classifiers.local import LocalQwen3Guard

    guard = LocalQwen3Guard(
        args.model or DEFAULT_MODEL,
        revision=args.revision,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
    )
    if args.verbose:
        print(f"guard: {guard.describe()}", file=sys.stderr)
    return guard
