"""No import circles among the project's modules.

Read from the source with `ast` rather than by importing: an import inside a function closes a circle just as
surely at the time it runs, and importing would only see the module-level half.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("f2lightning", "downstream")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file. `from pkg import sub` counts as `pkg.sub` when
    `sub` is a module, otherwise as `pkg`; the implicit import of a module's parent packages is not an edge
    (every package's `__init__` would otherwise close a circle with the modules it re-exports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_cycles() -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list of names."""
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_finder_sees_function_level_imports(tmp_path, monkeypatch):
    # A circle closed only by an import inside a function must be found, or the test above proves nothing.
    package = tmp_path / "f2lightning"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from f2lightning.b import g\n")
    (package / "b.py").write_text("def g():\n    from f2lightning import a\n")
    (tmp_path / "downstream").mkdir()
    monkeypatch.setattr(__name__ + ".ROOT", tmp_path)
    assert import_cycles() == [["f2lightning.a", "f2lightning.b"]]
