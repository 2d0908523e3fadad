"""Async streaming: text is released only after the guard has checked it.

    python examples/async_streaming.py --base-url http://localhost:8000/v1 --model qwen3

With the default ``check_before_release`` mode no unchecked text reaches the
caller; an unsafe answer is cut with ``finish_reason="content_filter"``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import openai
from common import add_common_args, make_classifier, upstream_url

import guardrail
from guardrail.audit import JsonlSink

POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"


async def run(args: argparse.Namespace) -> int:
    guard = guardrail.Guard(POLICY, classifier=make_classifier(args), sink=JsonlSink(args.audit))
    with upstream_url(args) as base_url:
        client = guardrail.wrap(
            openai.AsyncOpenAI(base_url=base_url, api_key=args.api_key), guard=guard
        )
        for question in args.questions:
            print(f"\n> {question}\n  ", end="", flush=True)
            try:
                stream = await client.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": question}],
                    stream=True,
                )
                finish = None
                async for chunk in stream:
                    for choice in chunk.choices:
                        print(choice.delta.content or "", end="", flush=True)
                        finish = choice.finish_reason or finish
                print(f"\n  finish_reason={finish} action={stream.report.action.value}")
            except guardrail.BlockedError as blocked:
                print(f"BLOCKED by rule {blocked.decision.rule_id!r}")
    guard.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "questions",
        nargs="*",
        default=["How do I bake sourdough bread at home?", "What is the capital of France?"],
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
