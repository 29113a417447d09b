"""No import cycles between maskinit's modules: each concept has one home, and homes import one way.

The imports are read from the source with `ast` (module-level and function-level alike: a lazy
import inside a function still ties two modules together), and the module graph is searched for a
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import maskinit

PACKAGE_DIR = Path(maskinit.__file__).resolve().parent


def module_name(path: Path, root: Path = PACKAGE_DIR, package: str = "maskinit") -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def package_modules(root: Path = PACKAGE_DIR, package: str = "maskinit") -> dict[str, Path]:
    return {module_name(path, root, package): path for path in sorted(root.rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of `known` that `path` (module `name`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    current_package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = current_package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from .data import coco` imports the module maskinit.data.coco; `from .errors import X` the module errors
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import maskinit.data.coco.x` -> the module it names
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE_DIR, package: str = "maskinit") -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imported_modules(path, name, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for neighbour in sorted(graph.get(node, ())):
            if state.get(neighbour) == "open":
                return stack[stack.index(neighbour):] + [neighbour]
            if neighbour not in state:
                cycle = visit(neighbour)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_maskinit_modules():
    graph = import_graph()
    assert {"maskinit.config", "maskinit.recipes", "maskinit.evaluation", "maskinit.visualize"} <= set(graph)
    assert "maskinit.recipes" in graph["maskinit.config"]  # the graph sees module-level imports
    assert "maskinit.visualize" in graph["maskinit.evaluation"]  # and imports inside functions
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_function_level_and_relative_cycles(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from ..c import other\n")
    (package / "c.py").write_text("import os\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert find_cycle(graph) is None
    (package / "c.py").write_text("from . import a\n")  # c -> a -> sub.b -> c
    cycle = find_cycle(import_graph(package, "pkg"))
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.sub.b", "pkg.c"} and cycle[0] == cycle[-1]


def test_one_line_has_one_home():
    from maskinit import errors

    for name, path in package_modules().items():
        tree = ast.parse(path.read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        if name != "maskinit.errors":
            assert "one_line" not in defined, f"{name} defines its own one_line"
    assert errors.one_line(ValueError("first\nsecond")) == "first"
