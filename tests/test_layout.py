"""The package's layout: no import cycles, and nothing deprecated by Flask.

Every import counts as an edge, also one inside a function, except those
under ``if TYPE_CHECKING:`` (which only the type checker follows).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_sse_keepalive"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports at run time."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if node.module:
                found.add(base)
            # ``from . import server`` imports the module ``server``
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    # A module's own packages are imported before it, by Python: no edge.
    ancestors = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 1)}
    return {module for module in found if module in modules and module not in {name, *ancestors}}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := walk(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "flask_sse_keepalive.stream" in graph["flask_sse_keepalive.direct"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set(), "c": {"c"}}, ["c", "c"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_a_function_level_import_is_an_edge() -> None:
    source = PACKAGE / "views.py"
    graph = import_graph()
    # views imports the extension only for types: not an edge ...
    assert "flask_sse_keepalive.extension" not in graph["flask_sse_keepalive.views"]
    # ... while an import inside a function is one.
    module = ast.parse(source.read_text())
    assert any(isinstance(node, ast.If) and _is_type_checking(node) for node in module.body)
    brokers = graph["flask_sse_keepalive.brokers"]
    assert "flask_sse_keepalive.brokers.redis" in brokers  # imported in create_broker()


def test_nothing_flask_deprecates_is_used() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for name in ("request_ctx", "_request_ctx_stack", "_app_ctx_stack", "app_ctx"):
            assert f"flask.globals import {name}" not in text, f"{path.name} imports {name}"
            assert f"globals.{name}" not in text, f"{path.name} uses {name}"
