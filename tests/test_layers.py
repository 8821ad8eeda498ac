"""The package's import graph, read from the source: no cycle, and no import from a lower layer to a higher one
(the layers of :data:`rklu_llm.layers.LAYERS`, which docs/architecture.md names in the same order)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import rklu_llm
from rklu_llm.layers import LAYERS, layer_of

PACKAGE = Path(rklu_llm.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("rklu_llm", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def runtime_imports(tree: ast.Module):
    """Every import statement that can run (those under ``if TYPE_CHECKING:`` are for type checkers only)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def import_graph() -> dict[str, set[str]]:
    """``module -> the package's modules it imports`` (``from .x import name`` of a sub-module counts as that
    sub-module; a package's ``__init__`` as the package, which importing any of its modules runs first)."""
    found = modules()
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in found else base for alias in node.names]
            for target in (t for t in targets if t in found and t != name):
                graph[name].add(target)
                parts = target.split(".")
                for k in range(2, len(parts)):  # importing a.b.c runs a.b's __init__ first
                    parent = ".".join(parts[:k])
                    if not (name == parent or name.startswith(parent + ".")):
                        graph[name].add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)  # raises for a module no layer holds


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_module_imports_a_higher_layer(graph):
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    assert upward == []


def test_the_check_sees_an_upward_import():
    """The graph is really read: the trainer imports the hub (below it), and the reverse would be refused."""
    graph = import_graph()
    assert "rklu_llm.hub" in graph["rklu_llm.trainer"]
    assert layer_of("rklu_llm.trainer") > layer_of("rklu_llm.hub") > layer_of("rklu_llm.config")
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]


def test_the_docs_name_the_same_layers_in_the_same_order():
    """docs/architecture.md lists the layers, bottom to top, as ``N. **name**``: the names of LAYERS, in order."""
    documented = re.findall(r"^\d+\. \*\*(.+?)\*\*", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert documented == [name for name, _ in LAYERS]
