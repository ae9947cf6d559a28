"""Import structure: one direction, data/models/noise <- smoothing <- attacks <- training/evaluation
<- cli, with no cycles, checked statically (every import, also inside functions) and in a fresh
interpreter (importing a layer does not load the layers above it)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "smoothinf"
# Layer of each top-level part of the package; an import may only go to the same or a lower layer.
LAYERS = {
    "_version": 0,
    "errors": 0,
    "utils": 0,
    "distributed": 0,
    "recipes": 0,  # the packaged training recipes (YAML) and their lookup
    "data": 1,
    "noise": 1,
    "models": 2,  # checkpoints replay noise layers and read dataset normalisation
    "smoothing": 3,
    "attacks": 4,
    "training": 5,
    "evaluation": 5,
    "zoo": 6,  # shipped models and their cards, measured by the evaluation protocol
    "quickstart": 7,  # the MNIST quickstart on a zoo model
    "cli": 8,
    "__main__": 9,
    "": 9,  # the package root re-exports everything (lazily)
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The smoothinf modules an import statement loads (a ``from A import b`` of a sub-module b
    targets A.b; ``from smoothinf import __version__`` targets smoothinf._version, as the root
    package defines it from there and imports nothing else eagerly)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "smoothinf"]
    if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
        return []
    if node.module.split(".")[0] != "smoothinf":
        return []
    if node.module == "smoothinf" and [a.name for a in node.names] == ["__version__"]:
        return ["smoothinf._version"]
    out = []
    for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        out.append(sub if sub in modules else node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> smoothinf modules it imports anywhere in its body (module level or in functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {t for node in ast.walk(tree) for t in _targets(node, modules) if t != name}
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_part_has_a_layer():
    assert {_part(m) for m in _modules()} <= set(LAYERS)


def test_imports_go_down_the_layers():
    wrong = [
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if LAYERS[_part(dst)] > LAYERS[_part(src)]
    ]
    assert not wrong, "imports against the layer order: " + "; ".join(sorted(wrong))


def test_no_import_cycles_between_modules_or_parts():
    graph = import_graph()
    assert find_cycle(graph) is None, f"module import cycle: {' -> '.join(find_cycle(graph))}"
    parts: dict[str, set[str]] = {}
    for src, targets in graph.items():
        parts.setdefault(_part(src), set()).update(_part(t) for t in targets if _part(t) != _part(src))
    assert find_cycle(parts) is None, f"package import cycle: {' -> '.join(find_cycle(parts))}"


@pytest.mark.parametrize(
    "module,absent",
    [
        ("smoothinf", ["smoothinf.models", "smoothinf.attacks", "torch"]),
        ("smoothinf.models", ["smoothinf.smoothing", "smoothinf.attacks", "smoothinf.training"]),
        ("smoothinf.smoothing", ["smoothinf.attacks", "smoothinf.training", "smoothinf.evaluation"]),
        ("smoothinf.attacks", ["smoothinf.training", "smoothinf.evaluation", "smoothinf.cli"]),
    ],
)
def test_a_layer_does_not_load_the_layers_above(module, absent):
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    out = out.stdout.split()
    assert not [name for name in absent if name in out]


def test_public_names_load_on_access():
    import smoothinf

    assert smoothinf.PGD.__name__ == "PGD" and smoothinf.TrainConfig.__name__ == "TrainConfig"
    assert set(smoothinf.__all__) <= set(dir(smoothinf))
    with pytest.raises(AttributeError, match="no attribute"):
        smoothinf.not_a_name  # noqa: B018


def test_the_public_api_is_curated():
    """About 15 names, each one the README uses; everything else lives under its module."""
    import smoothinf

    assert 10 <= len(smoothinf.__all__) <= 16
    readme = (SRC.parent / "README.md").read_text()
    unused = [name for name in smoothinf.__all__ if name not in readme]
    assert not unused, f"public names the README never shows: {unused}"
