"""The layering of the package, checked on its source: no import cycles, no private modules borrowed.

Every ``import`` counts, at module level or inside a function (a deferred import that closes a cycle
is still a cycle: it only moves the failure to run time); imports under ``if TYPE_CHECKING:`` do not.
A private module (``objbutler.stores._base``) may be imported only from inside its own package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "objbutler"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not _is_type_checking(node):
            yield from _import_nodes(node)


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = _package_of(module).split(".")
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return {name for name in names if name in MODULES and name != module}


def _graph() -> dict[str, set[str]]:
    return {module: {target for node in _import_nodes(ast.parse(path.read_text(), str(path)))
                     for target in _targets(module, node)}
            for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_deferred_imports() -> None:
    graph = _graph()
    assert "objbutler.integrity" in graph["objbutler.butler"]  # imported inside Butler.ingest_refs
    provenance = [module for module in graph if module.startswith("objbutler.provenance")]
    assert "objbutler.provenance.walks" in provenance
    assert all("objbutler.butler" not in graph[m] for m in provenance)  # only under TYPE_CHECKING there


def test_no_import_cycles() -> None:
    graph = _graph()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check works
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        " <-> ".join(cycle) + ": " + "; ".join(f"{a} -> {b}" for a in cycle for b in sorted(graph[a] & set(cycle)))
        for cycle in cycles)


def test_no_module_imports_the_package_root() -> None:
    """The root is a lazy facade over every module: importing from it would close a cycle through it."""
    offenders = [module for module, targets in _graph().items() if "objbutler" in targets and module != "objbutler"]
    assert not offenders, f"import from the defining module instead of `objbutler`: {offenders}"


def test_no_private_module_of_another_package() -> None:
    borrowed = []
    for module, targets in _graph().items():
        for target in targets:
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_") and part != "__init__"]
            if not private:
                continue
            owner = ".".join(parts[: private[0]])
            here = _package_of(module)
            if here != owner and not here.startswith(owner + "."):
                borrowed.append(f"{module} -> {target}")
    assert not borrowed, "private modules imported from outside their package:\n" + "\n".join(sorted(borrowed))


def test_no_private_name_of_another_package() -> None:
    """``from objbutler.formats.x import _helper`` outside objbutler.formats borrows a private name too."""
    borrowed = []
    for module, path in MODULES.items():
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("objbutler"):
                continue
            private = [alias.name for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
            if not private or node.module not in MODULES:
                continue
            owner = _package_of(node.module)
            here = _package_of(module)
            if here != owner and not here.startswith(owner + "."):
                borrowed += [f"{module} -> {node.module}.{name}" for name in private]
    assert not borrowed, "private names imported from outside their package:\n" + "\n".join(sorted(borrowed))
