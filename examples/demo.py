"""The demo behind ``./dev.sh demo``: the quickstart, runnable on any machine.

It starts a local scripted upstream LLM and wraps an OpenAI client pointed at it.
The guard is the real Qwen3Guard-Gen-0.6B when it can be loaded (from the hub or
its cache, or ``--guard-model DIR``); offline, the demo says so and trains the tiny
demo guard from ``guardrail.testing.tinyguard`` instead (about 20 s on 2 cores),
which knows only a few fixed conversations: enough to show every path.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from common import add_common_args
from quickstart import run

import guardrail
from guardrail import LocalQwen3Guard, ModelLoadError
from guardrail.classifiers.loading import quiet_backend

TINY_DIR = Path(__file__).resolve().parent.parent / ".cache" / "tiny-guard"


def load_guard(model: str) -> guardrail.Classifier:
    try:
        return LocalQwen3Guard(model)
    except ModelLoadError as exc:
        print(f"note: {exc}")
    if not (TINY_DIR / "config.json").exists():
        from guardrail.testing.tinyguard import build_tiny_guard

        print(f"note: training the tiny demo guard into {TINY_DIR} (a toy, not a safety model)")
        started = time.perf_counter()
        build_tiny_guard(TINY_DIR)
        print(f"note: trained in {time.perf_counter() - started:.0f} s")
    return LocalQwen3Guard(str(TINY_DIR))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show transformers' warnings and progress"
    )
    args = parser.parse_args()
    args.demo_upstream = True
    with contextlib.nullcontext() if args.verbose else quiet_backend():
        return run(args, classifier=load_guard(args.guard_model))


if __name__ == "__main__":
    sys.exit(main())
