"""The package's import graph has no cycle: every module under wavflow/ is read with `ast` (never imported), its
imports of wavflow modules collected (module level and inside functions, relative ones resolved), and the graph
searched for a cycle. A cycle works only as long as nobody reorders an import; the message prints it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wavflow"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The wavflow module `import name` runs: the longest known prefix (`a.b.attr` imports module a.b)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _never_imported(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (never runs) or `if __name__ == "__main__":` (runs only when the file is the program,
    as the module __main__, never when it is imported under its own name)."""
    test = node.test if isinstance(node, ast.If) else None
    if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
            (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _executed_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except the bodies of the ifs `_never_imported` names: their imports cannot close a
    cycle (they are how a module names a type of a module that imports it, or how `python -m wavflow.mel`
    reaches the command it stands for)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _never_imported(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The wavflow modules that module `name` imports anywhere in its body.

    `from X import y` imports X, and also X.y where that is a module. Importing a.b.c also runs the packages a.b
    and a above it; that implicit edge is kept for packages the importer does not live in (a package's own
    submodules run while it initialises, the normal layout, not a cycle)."""
    tree = ast.parse(modules[name].read_text(), str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(full: str) -> None:
        target = _target(full, modules)
        if target is None:
            return
        found.add(target)
        parent = target.rpartition(".")[0]
        while parent and not (name == parent or name.startswith(parent + ".")):
            found.add(parent)
            parent = parent.rpartition(".")[0]

    for node in _executed_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "wavflow" or alias.name.startswith("wavflow."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == "wavflow" or source.startswith("wavflow.")):
                continue
            add(source)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    add(f"{source}.{alias.name}")
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, modules) for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_finder_sees_relative_and_in_function_imports(tmp_path):
    pkg = tmp_path / "wavflow"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nfrom ..a import f\n"
                                      "if TYPE_CHECKING:\n    from .. import c\n")
    (pkg / "c.py").write_text("import wavflow.sub.b\nif __name__ == '__main__':\n    import wavflow.a\n")
    modules = module_names(pkg)
    graph = {name: imports_of(name, modules) for name in modules}
    assert graph["wavflow.a"] == {"wavflow.sub", "wavflow.sub.b"}
    assert graph["wavflow.sub.b"] == {"wavflow.a"}  # the type-only import is not an edge
    assert graph["wavflow.c"] == {"wavflow.sub", "wavflow.sub.b"}
    assert find_cycle(graph) == ["wavflow.a", "wavflow.sub.b", "wavflow.a"]


def test_no_import_cycle():
    graph = import_graph()
    assert "wavflow.inference" in graph and graph["wavflow.cli"] <= {"wavflow.errors"}  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
