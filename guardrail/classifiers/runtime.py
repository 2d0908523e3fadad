"""How a local model runs when the user does not say: its dtype and torch's thread count.

The choices are pure functions of what the hardware can do (:class:`Capabilities`)
and of the process's environment, so tests drive them with made-up answers;
:func:`probe_capabilities` asks torch for the real ones. Nothing here imports torch
at import time.

- dtype: bf16 where the hardware computes it natively (a CPU with AVX512_BF16 or AMX,
  a CUDA GPU with bf16 support), where it runs about twice as fast as fp32 for the
  same verdicts; fp32 everywhere else (a CPU without native bf16 emulates it, far
  slower than fp32).
- threads: every core available to the process (its CPU affinity, which containers
  and ``taskset`` narrow), unless the user chose (``threads=`` or ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from guardrail.errors import ConfigurationError

__all__ = [
    "Capabilities",
    "DtypeChoice",
    "ThreadChoice",
    "apply_threads",
    "available_cores",
    "choose_dtype",
    "choose_threads",
    "probe_capabilities",
]


@dataclass(frozen=True)
class Capabilities:
    """What the hardware computes natively, as far as the dtype choice cares."""

    cpu_avx512_bf16: bool = False
    """The CPU has AVX512_BF16 instructions (bf16 dot products)."""
    cpu_amx: bool = False
    """The CPU has AMX tiles (bf16 matrix units)."""
    cuda_bf16: bool = False
    """The CUDA device computes bf16 (Ampere and later)."""


@dataclass(frozen=True)
class DtypeChoice:
    """The weights' dtype and why it was chosen."""

    name: str
    """``float32``, ``bfloat16``, ``float16`` or ``auto``."""
    reason: str
    """Why, in a few words (``given``, ``CPU has AVX512_BF16``, ...)."""


@dataclass(frozen=True)
class ThreadChoice:
    """torch's intra-op thread count for a CPU model and where it came from."""

    count: int
    source: str
    """``threads=``, ``OMP_NUM_THREADS``, ``cores available`` or ``not a CPU device``."""
    apply: bool
    """Whether the guard sets torch's (process-wide) thread count to ``count``."""


def _flag(module: Any, name: str) -> bool:
    """A capability helper's answer; a missing helper (private API, other builds) is "no"."""
    helper = getattr(module, name, None)
    if not callable(helper):
        return False
    try:
        return bool(helper())
    except Exception:  # a helper that cannot answer here: no such capability
        return False


def probe_capabilities(torch: Any, device_type: str) -> Capabilities:
    """Ask torch what ``device_type`` (``cpu``, ``cuda``, ...) computes natively.

    The CPU helpers are private torch API, so each is looked up with ``getattr`` and a
    missing one reads as "no" (the fp32 default, always correct).
    """
    if device_type == "cuda":
        return Capabilities(cuda_bf16=_flag(torch.cuda, "is_bf16_supported"))
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)
        return Capabilities(
            cpu_avx512_bf16=_flag(cpu, "_is_avx512_bf16_supported"),
            cpu_amx=_flag(cpu, "_is_amx_tile_supported"),
        )
    return Capabilities()


def choose_dtype(given: str | None, device_type: str, caps: Capabilities) -> DtypeChoice:
    """The dtype to load weights in: ``given`` if set, else bf16 where native, else fp32."""
    if given is not None:
        return DtypeChoice(given, "given")
    if device_type == "cuda":
        if caps.cuda_bf16:
            return DtypeChoice("bfloat16", "GPU supports bf16")
        return DtypeChoice("float32", "GPU without bf16")
    if device_type == "cpu":
        if caps.cpu_amx:
            return DtypeChoice("bfloat16", "CPU has AMX")
        if caps.cpu_avx512_bf16:
            return DtypeChoice("bfloat16", "CPU has AVX512_BF16")
        return DtypeChoice("float32", "CPU without native bf16")
    return DtypeChoice("float32", f"{device_type} device")


def available_cores(
    affinity: Callable[[int], set[int]] | None = None,
    cpu_count: Callable[[], int | None] = os.cpu_count,
) -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else all."""
    affinity = affinity or getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        try:
            return max(1, len(affinity(0)))
        except OSError:
            pass  # no affinity here: count every core
    return max(1, cpu_count() or 1)


def choose_threads(
    given: int | None,
    device_type: str,
    current: int,
    env: Mapping[str, str],
    cores: int,
) -> ThreadChoice:
    """The torch thread count: ``given``, else ``OMP_NUM_THREADS``'s (kept), else ``cores``.

    ``current`` is torch's count now (what ``OMP_NUM_THREADS`` already set). Only CPU
    models get a count applied: torch's setting is process-wide.
    """
    if given is not None:
        if given < 1:
            raise ConfigurationError(f"threads must be at least 1, got {given}")
        return ThreadChoice(given, "threads=", apply=True)
    if device_type != "cpu":
        return ThreadChoice(current, "not a CPU device", apply=False)
    if env.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(current, "OMP_NUM_THREADS", apply=False)
    return ThreadChoice(cores, "cores available", apply=True)


def apply_threads(torch: Any, threads: int | None, device_type: str) -> ThreadChoice:
    """Choose torch's thread count (see :func:`choose_threads`) and set it."""
    choice = choose_threads(
        threads, device_type, torch.get_num_threads(), os.environ, available_cores()
    )
    if choice.apply and torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)
    return choice
