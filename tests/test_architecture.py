"""The rules of docs/architecture.md that code can check:

- the package's layers, bottom to top, and no import that runs against their order
  (lazy imports in functions included; imports for type checkers only are not run and
  do not count);
- no import circles;
- nothing above the built-in components imports them: the core names a default and
  builds it through the registry, so the built-ins are plugins like any other;
- the plugin API: the first-party plugins and the scaffold's skeletons import only
  ``imgxfer`` itself (their tests drive the whole tool and may import any of it);
- a package root a newcomer can read: at most 12 entries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imgxfer
from imgxfer.plugin import scaffold

ROOT = Path(imgxfer.__file__).parent
REPO = ROOT.parents[1]
# Bottom to top: a module may import its own layer and the layers below it.
LAYERS = ["core", "data", "nn", "plugin", "components", "run", "tasks", "sweep", "cli"]
# Inside tasks/, the dense task reuses classification's generate stage and report helpers.
TASK_ORDER = ["classify", "dense"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("imgxfer", *path.relative_to(ROOT).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imported(path: Path, names_too: bool = True) -> set[str]:
    """The imgxfer modules that ``path`` imports when it runs (``names_too``: and the
    names it takes from them, since ``from imgxfer.x import y`` may import module y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if names_too:
                names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n == "imgxfer" or n.startswith("imgxfer.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in imported(path) if t in modules and t not in (name, "imgxfer")}
            for name, path in modules.items()}


def _rank(module: str) -> tuple[int, int]:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":  # the plugin API; python -m imgxfer
        return (len(LAYERS), 0)
    layer = LAYERS.index(parts[1])
    if parts[1] != "tasks":
        return (layer, 0)
    # imgxfer.tasks itself (the table of tasks) stands above every task it names.
    return (layer, TASK_ORDER.index(parts[2]) if len(parts) > 2 else len(TASK_ORDER))


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


def test_every_module_is_in_a_layer():
    stray = [m for m in _modules() if m.count(".") >= 1 and m.split(".")[1] not in LAYERS
             and m != "imgxfer.__main__"]
    assert stray == []


def test_the_package_root_stays_small():
    assert len([p for p in ROOT.iterdir() if p.name != "__pycache__"]) <= 12


def test_no_import_runs_against_the_layers():
    upward = {m: sorted(t for t in targets if _rank(t) > _rank(m))
              for m, targets in _graph().items() if _rank(m)[0] < len(LAYERS)}
    assert {m: t for m, t in upward.items() if t} == {}


def test_no_import_circles():
    assert _cycle(_graph()) == []


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_an_upward_import_is_found():
    assert _rank("imgxfer.core.config") < _rank("imgxfer.plugin.registry")
    assert _rank("imgxfer.tasks.classify.plan") < _rank("imgxfer.tasks.dense.run")


def test_only_components_import_components():
    reaching = {m: sorted(t for t in targets if t.startswith("imgxfer.components."))
                for m, targets in _graph().items() if not m.startswith("imgxfer.components")}
    assert {m: t for m, t in reaching.items() if t} == {}


def _plugin_files() -> list[Path]:
    return sorted(REPO.glob("plugins/*/src/**/*.py"))


@pytest.mark.parametrize("path", _plugin_files(), ids=lambda p: p.name)
def test_first_party_plugins_import_only_the_plugin_api(path):
    assert imported(path, names_too=False) - {"imgxfer"} == set(), "import from imgxfer itself"


def test_scaffold_skeletons_import_only_the_plugin_api(tmp_path):
    kinds = ["encoder", "captioner", "generator", "adapter", "dataset"]
    folder = scaffold.new_plugin("mine", kinds, tmp_path, registry=None).folder
    sources = [p for p in folder.rglob("*.py") if "tests" not in p.parts]
    assert len(sources) >= len(kinds)
    assert {p.name: imported(p, names_too=False) - {"imgxfer"} for p in sources} \
        == {p.name: set() for p in sources}
