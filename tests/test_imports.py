"""The package's import structure, read from the source with ``ast`` (no module is imported): no cycles, and every
import follows the layer order, so the structure cannot regress silently.

Layers (a module may import its own layer or a lower one):

0. the core: the compiled-op wrappers and the leaf helpers (``ops``, ``qap``, ``qaplib``, ``reference``, ...)
1. the losses: ``losses``, ``imle``, ``diagnostics``, ``heads``
2. ``models``, ``data``
3. ``train``, ``eval`` (``eval`` does not import ``train``)
4. the commands: ``cli``, ``bench``, ``info``, the package root

Imports inside functions count like any other (a lazy import does not hide an edge). ``from . import _C``
(the compiled core, loaded by the package root before any submodule) is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lvmmed_ext"
PKG = "lvmmed_ext"

LAYERS = {
    0: ("errors", "options", "system", "_loader", "_build_info", "distributed", "noise", "ops", "qap", "reference",
        "problems", "qaplib"),
    1: ("losses", "imle", "diagnostics", "heads"),
    2: ("models", "data"),
    3: ("train", "eval"),
    4: ("cli", "__main__", "bench", "info"),
}  # fmt: skip
FORBIDDEN = {("eval", "train")}  # (importer, imported): same layer, but one-way
COMPILED = {f"{PKG}._C"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.AST) -> list[str]:
    """The package modules an import statement of ``module`` loads (most specific known module)."""
    is_pkg = MODULES[module].name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES | dict.fromkeys(COMPILED) else target
                 for a in node.names]  # fmt: skip
    out = []
    for name in names:
        if not (name == PKG or name.startswith(PKG + ".")) or name in COMPILED:
            continue
        while name not in MODULES and "." in name:
            name = name.rpartition(".")[0]
        if name != module:
            out.append(name)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _targets(module, node)}  # fmt: skip
    return graph


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else "<root>"


def _layer(module: str) -> int:
    if module == PKG:
        return 4
    top = _top(module)
    for layer, tops in LAYERS.items():
        if top in tops:
            return layer
    raise AssertionError(f"{module}: not in any layer of tests/test_imports.py LAYERS; give it one")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_graph_sees_the_package():
    graph = _graph()
    assert len(graph) > 50
    assert "lvmmed_ext.data.io" in graph["lvmmed_ext.data.manifest"]  # a plain relative import
    assert "lvmmed_ext.heads.base" in graph["lvmmed_ext.heads.gm"]
    assert graph["lvmmed_ext.ops"] == set()  # `from . import _C` is the compiled core, not an edge


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_follow_the_layer_order():
    bad = []
    for module, deps in sorted(_graph().items()):
        for dep in sorted(deps):
            if _layer(dep) > _layer(module):
                bad.append(f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})")
            elif (_top(module), _top(dep)) in FORBIDDEN:
                bad.append(f"{module} imports {dep} ({_top(module)} must not import {_top(dep)})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "graph, expected",
    [({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]), ({"a": {"b"}, "b": {"c"}, "c": set()}, [])],
)
def test_cycle_finder(graph, expected):
    assert _cycles(graph) == expected
