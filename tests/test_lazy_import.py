"""Importing guardrail must not import its heavy or optional dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOADED = """
import sys
{imports}
print(",".join(sorted(m for m in {modules!r} if m in sys.modules)))
"""


def _loaded_after(imports: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds after running ``imports``."""
    code = LOADED.format(imports="\n".join(imports), modules=modules)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return [m for m in result.stdout.strip().split(",") if m]


def test_import_guardrail_loads_no_model_or_client_library() -> None:
    # torch/transformers come with a local model, httpx with a remote backend,
    # openai with wrap(): none of them with the package itself.
    heavy = ("torch", "transformers", "tokenizers", "httpx", "openai")
    assert _loaded_after(["import guardrail", "import guardrail.classifiers"], heavy) == []


def test_import_guardrail_loads_no_audit_review_dependency() -> None:
    # orjson, rich and duckdb come with the audit review commands, when they run.
    optional = ("duckdb", "orjson", "rich")
    assert _loaded_after(["import guardrail", "import guardrail.audit"], optional) == []
    assert (
        _loaded_after(["import guardrail.audit.scan", "import guardrail.audit.stats"], optional)
        == []
    )


def test_local_backend_modules_do_not_load_torch_or_transformers() -> None:
    modules = [
        "import guardrail.classifiers.local",
        "import guardrail.classifiers.encoding",
        "import guardrail.classifiers.fastpath",
        "import guardrail.classifiers.generate",
        "import guardrail.classifiers.batching",
        "import guardrail.classifiers.loading",
        "from guardrail.classifiers import FastPathOptions",
    ]
    assert _loaded_after(modules, ("torch", "transformers", "tokenizers")) == []


def test_lazy_attribute_resolves_the_class() -> None:
    import guardrail
    import guardrail.classifiers
    from guardrail.classifiers.fastpath import FastPathOptions
    from guardrail.classifiers.local import LocalQwen3Guard

    assert guardrail.LocalQwen3Guard is LocalQwen3Guard
    assert guardrail.classifiers.FastPathOptions is FastPathOptions


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail.classifiers.local import LocalQwen3Guard
    from guardrail.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        LocalQwen3Guard("unused")
    assert (info.value.package, info.value.extra) == ("torch", "local")
    assert "pip install 'guardrail[local]'" in str(info.value)
