"""The kernel's layout by capability (issue 16): each subpackage imports on its own, and no
two capabilities import each other, even through others.

The graph is built with the standard library's `ast` from the source files, so it sees
function-level imports too (an import moved into a function to hide a cycle is still a
cycle); only imports under `if TYPE_CHECKING:` are left out, as they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "agentidp_server"
KERNEL = Path(__file__).resolve().parent.parent / PACKAGE
ROOT = "(package root)"


def _module_name(path: Path, kernel: Path = KERNEL) -> str:
    parts = path.relative_to(kernel.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _unit(module: str, units: set[str]) -> str:
    """The capability a kernel module belongs to: its subpackage, or itself at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in units else ROOT


def import_graph(kernel: Path = KERNEL) -> dict[str, set[str]]:
    """Edges between the kernel's top-level units (subpackages and top-level modules)."""
    files = sorted(kernel.rglob("*.py"))
    modules = {_module_name(p, kernel) for p in files}
    units = {p.stem if p.parent == kernel else p.relative_to(kernel).parts[0] for p in files}
    units.discard("__init__")
    graph: dict[str, set[str]] = {unit: set() for unit in units | {ROOT}}
    for path in files:
        source = _unit(_module_name(path, kernel), units)
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level or not (node.module or "").startswith(PACKAGE):
                    continue
                base = node.module or ""
                # `from agentidp_server import audit` names a unit; `import Actor` the root.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                targets = [alias.name for alias in node.names if alias.name.startswith(PACKAGE)]
            for target in targets:
                unit = _unit(target, units)
                if unit != source:
                    graph[source].add(unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _subpackages() -> list[str]:
    return sorted(p.parent.name for p in KERNEL.glob("*/__init__.py"))


@pytest.mark.parametrize("subpackage", _subpackages())
def test_each_subpackage_imports_alone_in_a_fresh_interpreter(subpackage: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{subpackage}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_kernel_has_subpackages_by_capability() -> None:
    assert {"audit", "directory", "keys", "oauth", "server", "storage", "util"} <= set(
        _subpackages()
    )


def test_no_import_cycle_between_kernel_units() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between kernel units: " + " -> ".join(cycle or [])


def test_the_cycle_finder_names_a_cycle(tmp_path: Path) -> None:
    kernel = tmp_path / PACKAGE
    (kernel / "a").mkdir(parents=True)
    (kernel / "__init__.py").write_text("")
    (kernel / "a" / "__init__.py").write_text("")
    (kernel / "a" / "x.py").write_text("def f():\n    from agentidp_server import b\n")
    (kernel / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from agentidp_server.a.x import f\n"
        "if TYPE_CHECKING:\n    from agentidp_server import c\n"
    )
    (kernel / "c.py").write_text("import agentidp_server.b\n")
    graph = import_graph(kernel)
    assert graph["c"] == {"b"}
    assert graph["b"] == {"a"}  # the TYPE_CHECKING import of c is left out
    assert find_cycle(graph) == ["a", "b", "a"]
