"""Importing guardrail (and its local backend module) must not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys
import guardrail
import guardrail.classifiers
import guardrail.classifiers.local
heavy = sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules)
print(",".join(heavy))
"""


def test_import_does_not_load_torch_or_transformers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


def test_lazy_attribute_resolves_the_class() -> None:
    import guardrail
    from guardrail.classifiers.local import LocalQwen3Guard

    assert guardrail.LocalQwen3Guard is LocalQwen3Guard


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        LocalQwen3Guard("unused")
    assert (info.value.package, info.value.extra) == ("torch", "local")
    assert "pip install 'guardrail[local]'" in str(info.value)
