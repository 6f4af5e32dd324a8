"""The install declares exactly what the runtime imports.

Every third-party module that ``objbutler`` imports at module level must come from a core dependency
in pyproject.toml, and every core dependency must be imported somewhere (so the core install stays
small and resolves fast). Imports deferred into functions, and the ``objbutler.dask`` and
``objbutler.testing`` subpackages, may also use an optional extra, but never an undeclared package.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "objbutler"
# Subpackages that serve one optional feature: their module-level imports may come from extras.
OPTIONAL_SUBPACKAGES = ("objbutler/dask/", "objbutler/service/", "objbutler/testing/")
# Development-only tools the testing helpers import lazily (installed by the CI script, not by pip).
DEV_ONLY = {"localstack", "swift"}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for group in project["optional-dependencies"].values() for r in group}
    return core, extras - {"objbutler"}


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """``(top-level module, at module level?)`` for every absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    guarded = {id(child) for node in tree.body if isinstance(node, ast.If | ast.Try) for child in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        at_module_level = id(node) in top_level or id(node) in guarded
        for name in names:
            yield name.split(".")[0], at_module_level


@functools.cache
def _providers() -> dict[str, list[str]]:
    return packages_distributions()


def _distributions(module: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in _providers().get(module, [])}


def _third_party(module: str) -> bool:
    return module not in sys.stdlib_module_names and module not in {"objbutler", "benchmarks", "__future__"}


def test_runtime_imports_are_declared_and_core_is_used() -> None:
    core, extras = _declared()
    undeclared: list[str] = []
    needs_core: list[str] = []
    used: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        optional_module = relative.startswith(OPTIONAL_SUBPACKAGES)
        for module, at_module_level in _imports(path):
            if not _third_party(module) or module in DEV_ONLY:
                continue
            dists = _distributions(module)
            assert dists, f"{relative}: imports {module!r}, which no installed distribution provides"
            used |= dists
            if not dists & (core | extras):
                undeclared.append(f"{relative}: {module} ({', '.join(sorted(dists))})")
            elif at_module_level and not optional_module and not dists & core:
                needs_core.append(f"{relative}: {module} is imported at module level but only in an extra")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)
    assert not needs_core, "\n".join(needs_core)
    assert core <= used, f"core dependencies nothing in objbutler imports: {sorted(core - used)}"
