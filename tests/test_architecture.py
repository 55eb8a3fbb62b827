"""The rules of docs/architecture.md that code can check: no import circles inside
imgxfer (lazy imports in functions included), and the core imports no built-in
component (it names a default and builds it through the registry)."""

import ast
from pathlib import Path

import imgxfer

ROOT = Path(imgxfer.__file__).parent
COMPONENT_PACKAGES = ("imgxfer.encoders.", "imgxfer.adapters.", "imgxfer.generators.",
                      "imgxfer.captioners.", "imgxfer.datasets.")
# Helpers that live beside the built-in components and that the core and plugins share.
SHARED = {"imgxfer.encoders.preprocess", "imgxfer.encoders.weights", "imgxfer.datasets.files",
          "imgxfer.datasets.common", "imgxfer.datasets.layout", "imgxfer.generators.training",
          "imgxfer.generators.text"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("imgxfer", *path.relative_to(ROOT).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgxfer"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t not in (name, "imgxfer")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, or [] (depth-first search with the path kept)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_no_import_circles():
    assert _cycle(_imports(_modules())) == []


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_core_imports_no_built_in_component():
    graph = _imports(_modules())
    core = [m for m in graph if not m.startswith(COMPONENT_PACKAGES) and m != "imgxfer.builtin"]
    reaching = {m: sorted(t for t in graph[m] if t.startswith(COMPONENT_PACKAGES)
                          and t not in SHARED) for m in core}
    assert {m: t for m, t in reaching.items() if t} == {}
