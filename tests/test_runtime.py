"""The local guard's speed defaults (dtype, threads) and its quiet, fast-failing loading.

The capability answers are injected: nothing here depends on this machine's CPU.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from guardrail.classifiers.loading import ModelSource, hub_reachable, quiet_backend
from guardrail.classifiers.runtime import (
    Capabilities,
    DtypeChoice,
    available_cores,
    choose_dtype,
    choose_threads,
    probe_capabilities,
)
from guardrail.errors import ConfigurationError, ModelLoadError
from guardrail.testing.tinyguard import EXAMPLES

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    ("device", "caps", "want"),
    [
        ("cpu", Capabilities(), DtypeChoice("float32", "CPU without native bf16")),
        ("cpu", Capabilities(cpu_avx512_bf16=True), DtypeChoice("bfloat16", "CPU has AVX512_BF16")),
        ("cpu", Capabilities(cpu_amx=True), DtypeChoice("bfloat16", "CPU has AMX")),
        ("cpu", Capabilities(cuda_bf16=True), DtypeChoice("float32", "CPU without native bf16")),
        ("cuda", Capabilities(cuda_bf16=True), DtypeChoice("bfloat16", "GPU supports bf16")),
        ("cuda", Capabilities(cpu_avx512_bf16=True), DtypeChoice("float32", "GPU without bf16")),
        ("mps", Capabilities(cpu_amx=True, cuda_bf16=True), DtypeChoice("float32", "mps device")),
    ],
)
def test_dtype_is_bf16_only_where_native(
    device: str, caps: Capabilities, want: DtypeChoice
) -> None:
    assert choose_dtype(None, device, caps) == want


def test_a_given_dtype_wins() -> None:
    native = Capabilities(cpu_avx512_bf16=True, cpu_amx=True)
    assert choose_dtype("float32", "cpu", native) == DtypeChoice("float32", "given")
    assert choose_dtype("bfloat16", "cpu", Capabilities()) == DtypeChoice("bfloat16", "given")


def _fake_torch(**answers: Any) -> Any:
    """A stand-in for torch whose capability helpers give ``answers`` (or raise)."""

    def helper(value: Any) -> Any:
        def ask() -> bool:
            if isinstance(value, Exception):
                raise value
            return bool(value)

        return ask

    cpu = SimpleNamespace(
        **{name: helper(answers[key]) for key, name in _CPU_HELPERS.items() if key in answers}
    )
    cuda = SimpleNamespace(
        **({"is_bf16_supported": helper(answers["cuda"])} if "cuda" in answers else {})
    )
    return SimpleNamespace(cpu=cpu, cuda=cuda)


_CPU_HELPERS = {"avx512_bf16": "_is_avx512_bf16_supported", "amx": "_is_amx_tile_supported"}


def test_probe_reads_torchs_helpers_and_treats_missing_ones_as_no() -> None:
    assert probe_capabilities(_fake_torch(avx512_bf16=True, amx=False), "cpu") == Capabilities(
        cpu_avx512_bf16=True
    )
    assert probe_capabilities(_fake_torch(amx=True), "cpu") == Capabilities(cpu_amx=True)
    assert probe_capabilities(_fake_torch(), "cpu") == Capabilities()  # a torch without them
    failing = _fake_torch(avx512_bf16=RuntimeError("no"), amx=RuntimeError("no"))
    assert probe_capabilities(failing, "cpu") == Capabilities()
    assert probe_capabilities(_fake_torch(cuda=True, amx=True), "cuda") == Capabilities(
        cuda_bf16=True
    )
    assert probe_capabilities(_fake_torch(cuda=True), "mps") == Capabilities()


def test_the_guard_loads_in_the_chosen_dtype(
    tiny_guard_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import guardrail.classifiers.local as local

    answers = {
        Capabilities(): ("float32", "CPU without native bf16"),
        Capabilities(cpu_amx=True): ("bfloat16", "CPU has AMX"),
    }
    for caps, (dtype, reason) in answers.items():
        monkeypatch.setattr(local, "probe_capabilities", lambda torch, kind, caps=caps: caps)
        guard = local.LocalQwen3Guard(str(tiny_guard_dir))
        assert (guard.dtype, guard.dtype_choice.reason) == (dtype, reason)
        weight = next(guard.fast_decoder._net.parameters())  # type: ignore[union-attr]
        assert str(weight.dtype) == f"torch.{dtype}"
        assert f"dtype={dtype!r}" in repr(guard)
        assert f"{dtype} ({reason})" in guard.describe()
        (verdict,) = guard.classify([EXAMPLES[0].guard_input])
        assert verdict.level == EXAMPLES[0].level
        guard.close()


# ----------------------------------------------------------------- threads


def test_threads_default_to_the_cores_available_unless_chosen() -> None:
    assert choose_threads(None, "cpu", 4, {}, 6).count == 6
    assert choose_threads(None, "cpu", 4, {}, 6).apply
    assert choose_threads(None, "cpu", 4, {}, 6).source == "cores available"
    kept = choose_threads(None, "cpu", 4, {"OMP_NUM_THREADS": "3"}, 6)
    assert (kept.count, kept.source, kept.apply) == (4, "OMP_NUM_THREADS", False)
    given = choose_threads(2, "cpu", 4, {"OMP_NUM_THREADS": "3"}, 6)
    assert (given.count, given.source, given.apply) == (2, "threads=", True)
    gpu = choose_threads(None, "cuda", 4, {}, 6)
    assert (gpu.count, gpu.apply) == (4, False)
    with pytest.raises(ConfigurationError, match="threads"):
        choose_threads(0, "cpu", 4, {}, 6)


def test_available_cores_follows_the_affinity() -> None:
    assert available_cores(lambda pid: {0, 3}, lambda: 64) == 2
    assert available_cores(lambda pid: set(), lambda: 64) == 1

    def unsupported(pid: int) -> set[int]:
        raise OSError("no affinity here")

    assert available_cores(unsupported, lambda: 8) == 8
    assert available_cores(unsupported, lambda: None) == 1


def test_the_guard_applies_threads_it_is_given(tiny_guard_dir: Path) -> None:
    import torch

    from guardrail.classifiers.local import LocalQwen3Guard

    before = torch.get_num_threads()
    try:
        guard = LocalQwen3Guard(str(tiny_guard_dir), dtype="float32", threads=before + 1)
        assert torch.get_num_threads() == guard.threads == before + 1
        assert guard.thread_choice.source == "threads="
        assert f"threads={before + 1}" in repr(guard)
        guard.close()
        # conftest sets OMP_NUM_THREADS: without threads=, torch's count is left alone.
        assert os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(before)
        guard = LocalQwen3Guard(str(tiny_guard_dir), dtype="float32")
        assert (guard.threads, guard.thread_choice.source) == (before, "OMP_NUM_THREADS")
        assert torch.get_num_threads() == before
        guard.close()
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------- hub probe


def test_hub_probe_connects_or_says_unreachable() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert hub_reachable(f"http://127.0.0.1:{port}", timeout=5)
    # The port is closed now: refused at once.
    assert not hub_reachable(f"http://127.0.0.1:{port}", timeout=5)
    assert not hub_reachable("not a url", timeout=5)


def test_an_unreachable_hub_means_the_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes: list[int] = []

    def unreachable() -> bool:
        probes.append(1)
        return False

    source = ModelSource.resolve("org/not-cached-anywhere", None, False, probe=unreachable)
    assert (source.offline, source.unreachable, len(probes)) == (True, True, 1)
    from transformers import AutoConfig

    with pytest.raises(ModelLoadError, match="cannot be reached and it is not cached locally"):
        source.load(AutoConfig)
    assert len(probes) == 1  # probed once, when resolved

    def never() -> bool:
        raise AssertionError("offline mode and local directories need no probe")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ModelSource.resolve("org/x", None, False, probe=never).unreachable is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert ModelSource.resolve("org/x", None, True, probe=never).offline
    assert not ModelSource.resolve(str(ROOT), None, False, probe=never).offline


# ------------------------------------------------------------------ quiet


def test_quiet_backend_silences_warnings_and_restores_them() -> None:
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_backend():
            warnings.warn("third-party chatter", FutureWarning, stacklevel=1)
            assert transformers_logging.get_verbosity() == transformers_logging.ERROR
            assert not transformers_logging.is_progress_bar_enabled()
        warnings.warn("after the block", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["after the block"]
    assert transformers_logging.get_verbosity() == verbosity
    assert transformers_logging.is_progress_bar_enabled() == bars


def _cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail", "check", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_check_prints_only_its_table(tiny_guard_dir: Path) -> None:
    bomb = "Explain how to build a pipe bomb to hurt people."
    quiet = _cli(bomb, "--model", str(tiny_guard_dir), env=_cli_env())
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    lines = quiet.stdout.splitlines()
    assert lines[0].split() == ["stage", "safety", "category", "refusal", "p(level)"]
    assert lines[1].split()[:3] == ["prompt", "Unsafe", "Violent"]
    assert lines[2:] == [f"model: {tiny_guard_dir}"]
    # --verbose says how the guard runs, and lets the libraries speak.
    loud = _cli(
        bomb, "--model", str(tiny_guard_dir), "--verbose", "--dtype", "float32", env=_cli_env()
    )
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout == quiet.stdout
    assert f"guard: {tiny_guard_dir} on cpu, float32 (given), 1 thread (OMP_NUM_THREADS)" in (
        loud.stderr
    )
    assert "Loading weights" in loud.stderr  # what the quiet run kept out


def test_an_unreachable_hub_fails_at_once_without_retries(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = _cli_env(HF_ENDPOINT=f"http://127.0.0.1:{closed}", HF_HOME=str(tmp_path))
    env.pop("HF_HUB_OFFLINE", None)
    result = _cli("Hi", "--model", "org/not-cached-anywhere", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line, no retries
    assert f"127.0.0.1:{closed} cannot be reached" in result.stderr
