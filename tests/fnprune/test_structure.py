"""The library's shape (issue 20): no import circle between fnprune modules, no file over 450 lines,
no web import. Read from the source (the AST), so a deferred import inside a function counts too:
it hides a circle from Python, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fnprune"
MAX_LINES = 450
WEB = ("fastapi", "pydantic", "pydantic_core", "starlette", "uvicorn", "huey", "backend")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path] | None = None) -> set[str]:
    """Every module ``module`` imports (absolute names), wherever the import statement is.
    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of ``modules``, else to ``pkg``."""
    modules = modules or {}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{fnprune module: the fnprune modules it imports}`` (a package's ``__init__`` is a module like
    the others; importing a submodule is not counted as importing its package)."""
    modules = _modules()
    return {name: {t for t in _imports(name, path, modules) if t in modules and t != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_fnprune_modules():
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_file_in_fnprune_over_450_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_fnprune_never_imports_the_web():
    web = {name: sorted(t for t in _imports(name, path) if t.split(".")[0] in WEB)
           for name, path in _modules().items()}
    assert {name: found for name, found in web.items() if found} == {}


def test_the_names_the_readme_imports_exist():
    """README's library section (``from fnprune... import ...``) works as written."""
    import importlib
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    imports = re.findall(r"^from (fnprune[\w.]*) import ([\w, ]+)", readme, flags=re.M)
    assert imports
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert getattr(loaded, name) is not None, f"{module}.{name}"


ROOMS = ("models", "analysis", "pruning", "evaluation", "cli")  # each may import the floor and the rooms before it
ALLOWED_BACK_EDGES = {  # one-way at module level, named in ARCHITECTURE.md
    ("fnprune.analysis.networks", "fnprune.pruning.selection"),
    ("fnprune.pruning.job", "fnprune.evaluation.fidelity"),
    ("fnprune.pruning.job", "fnprune.evaluation.metrics"),
}


def _room(module: str) -> int:
    """-1 for the floor (fnprune's top-level modules), else the room's place in ROOMS."""
    parts = module.split(".")
    return ROOMS.index(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else -1


def test_rooms_import_the_floor_and_earlier_rooms_only():
    graph = import_graph()
    back = sorted((a, t) for a, targets in graph.items() for t in targets
                  if a not in ("fnprune", "fnprune.__main__") and _room(t) > _room(a) and _room(a) != _room(t) and (a, t) not in ALLOWED_BACK_EDGES)
    assert back == []
