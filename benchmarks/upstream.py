"""The fake OpenAI-compatible upstream (``tests/fakellm.py``) in its own process.

The flow benchmarks measure the client side: a server sharing the client's
interpreter lock would have its pacing (chunk delays, response times) skewed by
whatever the client does, so it runs in a child process.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Fixed:
    """An answer function giving the same text to every request (picklable)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, messages: list[dict[str, Any]], index: int) -> str:
        return self.text


def _main(text: str, delay_s: float, chunk_delay_s: float, ready: Any, stop: Any) -> None:
    from fakellm import fake_llm

    with fake_llm(Fixed(text), delay_s=delay_s, chunk_delay_s=chunk_delay_s) as llm:
        ready.put(llm.base_url)
        stop.wait()


@contextmanager
def upstream_process(
    text: str, *, delay_s: float = 0.0, chunk_delay_s: float = 0.0
) -> Iterator[str]:
    """Serve ``text`` as every chat completion from a child process; yields the base URL."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(
        target=_main, args=(text, delay_s, chunk_delay_s, ready, stop), daemon=True
    )
    process.start()
    try:
        yield ready.get(timeout=60)
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.terminate()
