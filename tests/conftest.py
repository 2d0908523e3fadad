"""Shared test fixtures.

Tests never touch the network: Hugging Face Hub access is switched off for the
whole session before anything imports ``huggingface_hub``.

torch runs single-threaded unless ``OMP_NUM_THREADS`` says otherwise: the tiny
models are as fast on one thread, and with two, OpenMP's spin-waiting makes them
10-20x slower whenever another process shares the 2-core machine.

Fixtures for a real (tiny) guard model, built once per session:

- ``tiny_guard_dir``: a saved Qwen3Guard-Gen-format checkpoint (see ``tinyguard.py``
  for its dataset, ``tinyguard.EXAMPLES``, and the exact verdict of each example).
- ``tiny_guard``: a :class:`~guardrail.classifiers.local.LocalQwen3Guard` loaded from it,
  in fp32 (the dtype it was trained and checked in) whatever this machine's default is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when torch is first imported

if TYPE_CHECKING:
    from guardrail.classifiers.local import LocalQwen3Guard


@pytest.fixture(scope="session")
def tiny_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny trained guard checkpoint (built once per session, ~15-30 s)."""
    pytest.importorskip("torch")
    from guardrail.testing.tinyguard import build_tiny_guard

    path = tmp_path_factory.mktemp("tiny-guard")
    build_tiny_guard(path)
    return path


@pytest.fixture(scope="session")
def tiny_guard(tiny_guard_dir: Path) -> LocalQwen3Guard:
    """The tiny guard loaded through the public ``LocalQwen3Guard(path)`` path, in fp32."""
    from guardrail.classifiers.local import LocalQwen3Guard

    return LocalQwen3Guard(str(tiny_guard_dir), dtype="float32")
