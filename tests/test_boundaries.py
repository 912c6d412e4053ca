"""The rooms' boundaries, read from the source: the renderq kernel never imports the worker or the coordinator,
and neither the kernel nor the add-on has an import cycle (imports inside functions count too)."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imports_of(path: str, package: str) -> Iterator[str]:
    """Every module `path` imports, absolute names, wherever in the file the import stands."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
            if node.module or not node.level:
                yield base  # `from . import x` depends on x, not on the package that holds it
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph_of(folder: str, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    names = {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    modules = {f"{package}.{name}" if name != "__init__" else package for name in names}
    graph: dict[str, set[str]] = {}
    for name in names:
        module = f"{package}.{name}" if name != "__init__" else package
        found = set(imports_of(os.path.join(folder, f"{name}.py"), package))
        # A name that is no module (`from . import VERSION`) is the package's own: a dependency on the package.
        targets = {target if target in modules else target.rsplit(".", 1)[0] for target in found}
        graph[module] = {target for target in targets if target in modules and target != module}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            found = visit(target, path + [module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_the_kernel_never_imports_the_worker_or_the_coordinator() -> None:
    folder = os.path.join(ROOT, "renderq")
    wrong = [
        f"renderq/{name} imports {target}"
        for name in sorted(os.listdir(folder)) if name.endswith(".py")
        for target in imports_of(os.path.join(folder, name), "renderq")
        if target.split(".")[0] in ("worker", "coordinator")
    ]
    assert not wrong, wrong


def test_the_kernel_has_no_import_cycle() -> None:
    graph = graph_of(os.path.join(ROOT, "renderq"), "renderq")
    graph.pop("renderq", None)  # the package's __init__ imports nothing of its own
    assert cycle_in(graph) is None, " -> ".join(cycle_in(graph) or [])


def test_the_addon_has_no_import_cycle() -> None:
    graph = graph_of(os.path.join(ROOT, "addon", "renderq_addon"), "renderq_addon")
    assert cycle_in(graph) is None, " -> ".join(cycle_in(graph) or [])
