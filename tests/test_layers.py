"""The package's shape: imports point down the layers, never in a circle.

Every import statement counts, wherever it sits (module level, inside a
function, under ``TYPE_CHECKING``): a type-only import still couples two modules.
The layers, bottom to top, are those of the design notes; a module may import
from its own layer or below, never above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "guardrail"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("guardrail.types", "guardrail.errors", "guardrail.deadline", "guardrail.secrets"),
    ("guardrail.chat", "guardrail.report", "guardrail.responses", "guardrail.response_events"),
    ("guardrail.qwen3guard",),
    ("guardrail.http",),
    ("guardrail.classifiers", "guardrail.reward", "guardrail.testing", "guardrail.breaker"),
    ("guardrail.policy", "guardrail.audit"),
    ("guardrail.parts", "guardrail.measure"),
    ("guardrail.flow",),
    ("guardrail.guard", "guardrail.drivers", "guardrail.telemetry"),
    ("guardrail.client",),
    ("guardrail.gateway",),
    ("guardrail.cli", "guardrail.__main__", "guardrail"),
)

CLIENT_LIBRARIES = ("openai", "httpx", "httpx2", "aiohttp", "torch", "transformers", "tokenizers")
# Inside flow/, only the drivers may block or await.
DRIVERS = ("guardrail.flow.sync_driver", "guardrail.flow.async_driver")
BLOCKING = ("asyncio", "threading", "concurrent", "socket", "selectors", "subprocess", "queue")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported(name: str) -> Iterator[tuple[str, int]]:
    """(module, line) for every import statement in a module, resolved to full names."""
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name if is_package(name) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno


def internal_edges(name: str) -> Iterator[tuple[str, int]]:
    for target, line in imported(name):
        if target in MODULES and target != name:
            yield target, line


def layer(name: str) -> int:
    """The rank of a module's layer: its most specific prefix in :data:`LAYERS`."""
    matches = [
        (len(prefix), rank)
        for rank, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if name == prefix or (prefix != "guardrail" and name.startswith(prefix + "."))
    ]
    assert matches, f"{name} is in no layer: add it to LAYERS"
    return max(matches)[1]


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import circle of the graph, as a path that returns to its start, if any."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_checker_finds_circles() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)
    assert layer("guardrail.flow.stream") > layer("guardrail.policy.evaluate")
    assert layer("guardrail") == len(LAYERS) - 1


def test_no_import_circle() -> None:
    graph = {name: sorted({t for t, _ in internal_edges(name)}) for name in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_imports_point_down() -> None:
    upward = [
        f"{MODULES[name].relative_to(PACKAGE.parent)}:{line}: {name} imports {target}"
        for name in MODULES
        for target, line in internal_edges(name)
        if layer(target) > layer(name)
    ]
    assert upward == []


def _flow_modules() -> list[str]:
    return [n for n in MODULES if n == "guardrail.flow" or n.startswith("guardrail.flow.")]


def test_the_flow_imports_no_client_library() -> None:
    """Nothing the flow package imports, directly or through guardrail, is a client library."""
    seen: set[str] = set()
    todo = _flow_modules()
    found = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target, line in imported(name):
            if target.split(".")[0] in CLIENT_LIBRARIES:
                found.append(f"{name}:{line} imports {target}")
            if target in MODULES:
                todo.append(target)
    assert found == []
    assert "guardrail.flow.stream" in seen
    assert "guardrail.policy.evaluate" in seen  # the walk does follow guardrail imports


def test_importing_the_flow_loads_no_client_library() -> None:
    code = (
        "import sys\n"
        f"for name in {_flow_modules()!r}: __import__(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {CLIENT_LIBRARIES!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in _flow_modules() if n not in DRIVERS])
def test_only_the_drivers_block_or_await(name: str) -> None:
    tree = TREES[name]
    awaits = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Await | ast.AsyncFunctionDef | ast.AsyncFor | ast.AsyncWith)
    ]
    assert awaits == [], f"{name} awaits at lines {awaits}"
    blocking = [t for t, _ in imported(name) if t.split(".")[0] in BLOCKING]
    assert blocking == [], f"{name} imports {blocking}"
    sleeps = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "sleep"
    ]
    assert sleeps == []


def test_flows_are_stepped_in_one_place() -> None:
    """Only drive.py resumes generators; both drivers step flows through it."""
    steppers = {
        name
        for name in _flow_modules()
        for node in ast.walk(TREES[name])
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("send", "throw")
    }
    assert steppers == {"guardrail.flow.drive"}
    for driver in DRIVERS:
        names = {
            (node.module, alias.name)
            for node in ast.walk(TREES[driver])
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert ("guardrail.flow.drive", "Stepper") in names


# Modules a reader takes in at once. Pure modules with a reason to stay whole may be
# longer: the guard's protocol, the fast path's decoder, the test guard's data, the
# policy schema's field list.
MAX_LINES = 450
LONG_PURE = {
    "guardrail.qwen3guard": 800,
    "guardrail.classifiers.fastpath": 800,
    "guardrail.testing.tinyguard": 800,
    "guardrail.policy.schema": 800,
}
GUARD_LINES = 250


def test_modules_stay_small() -> None:
    too_long = []
    for name, path in MODULES.items():
        limit = GUARD_LINES if name == "guardrail.guard" else LONG_PURE.get(name, MAX_LINES)
        n = len(path.read_text().splitlines())
        if n > limit:
            too_long.append(f"{name}: {n} lines (at most {limit})")
    assert too_long == []
