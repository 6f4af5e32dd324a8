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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "objbutler"
# Subpackages that serve one optional feature: their module-level imports may come from extras.
OPTIONAL_SUBPACKAGES = ("objbutler/dask/", "objbutler/service/", "objbutler/testing/")
# The development packages beside the runtime, each with a pyproject.toml of its own (issue 18).
SERVERS = ROOT / "localstack"
BENCH = ROOT / "benchmarks"


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


def _pyproject(folder: Path) -> dict[str, Any]:
    return tomllib.loads((folder / "pyproject.toml").read_text())


def test_runtime_imports_are_declared_and_core_is_used() -> None:
    core, extras = _declared()
    undeclared: list[str] = []
    needs_core: list[str] = []
    used: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        optional_module = relative.startswith(OPTIONAL_SUBPACKAGES)
        for module, at_module_level in _imports(path):
            if not _third_party(module):
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


def test_no_sys_path_edits_in_the_runtime() -> None:
    """The runtime imports what is installed: nothing in objbutler/ puts a checkout on the import path."""
    pattern = re.compile(r"\bsys\.path\b|\bsite\.addsitedir\b|\bPYTHONPATH\b")
    offending = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offending, "\n".join(offending)


def test_no_server_installation_in_the_runtime() -> None:
    """Installing and running servers (venvs, apt-get, tmpfs) is the objbutler-servers package's job."""
    pattern = re.compile(r"apt-get|tmpfs|memcached|EnvBuilder|venv\.create|-m venv|objbutler_servers")
    offending = [f"{path.relative_to(ROOT)}: {sorted(set(pattern.findall(path.read_text())))}"
                 for path in sorted(PACKAGE.rglob("*.py")) if pattern.search(path.read_text())]
    assert not offending, "\n".join(offending)
    assert not (PACKAGE / "testing" / "servers.py").exists()


def test_the_servers_package_uses_the_standard_library_only() -> None:
    project = _pyproject(SERVERS)
    assert project["project"]["name"] == "objbutler-servers"
    assert project["project"]["dependencies"] == []
    assert project["tool"]["setuptools"]["packages"] == ["objbutler_servers"]
    modules = sorted((SERVERS / "objbutler_servers").rglob("*.py"))
    assert modules
    outside = [f"{path.relative_to(ROOT)}: {module}" for path in modules
               for module, at_module_level in _imports(path)
               if at_module_level and module not in sys.stdlib_module_names | {"objbutler_servers", "__future__"}]
    assert not outside, outside


def test_the_bench_harness_registers_the_entry_point_objbutler_bench_loads() -> None:
    from objbutler import cli

    project = _pyproject(BENCH)
    entry_points = project["project"]["entry-points"]
    assert list(entry_points) == [cli.BENCH_ENTRY_POINTS]
    module, _, function = entry_points[cli.BENCH_ENTRY_POINTS]["harness"].partition(":")
    source = ROOT / (module.replace(".", "/") + ".py")
    assert re.search(rf"^def {function}\(", source.read_text(), re.MULTILINE), (source, function)
    assert set(project["project"]["dependencies"]) == {"objbutler", "objbutler-servers"}


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"^python3 -m pip install -e '\.\[test\]'.* && python3 -m pytest$", readme, re.MULTILINE)
    return command


def test_the_readme_test_command_installs_the_dev_packages_and_ci_runs_it() -> None:
    from objbutler import cli

    command = _readme_test_command()
    for folder in ("./localstack", "./benchmarks"):
        assert f" -e {folder}" in command and f" -e {folder}" in cli.BENCH_INSTALL, folder
        assert (ROOT / folder / "pyproject.toml").is_file(), folder
    ci_run = (ROOT / ".ci" / "run").read_text()
    # .ci/run reads the command out of README.md and runs its two halves: the install, then pytest.
    assert re.search(r"^readme_test=\$\(grep -m1 -E .*README\.md\)", ci_run, re.MULTILINE)
    assert re.search(r'^eval "\$readme_install"', ci_run, re.MULTILINE)
    assert re.search(r'^eval "\$readme_pytest"$', ci_run, re.MULTILINE)
    floor = (ROOT / ".ci" / "floor").read_text()
    assert "-e ./localstack" in floor  # the floor venv runs tests, whose fixtures import objbutler_servers


def test_nothing_names_the_module_that_left() -> None:
    texts = [ROOT / "README.md", ROOT / "mkdocs.yml", *ROOT.glob(".ci/*"), *(ROOT / "docs").rglob("*.md"),
             *SERVERS.rglob("*.*"), *BENCH.rglob("*.py"), *BENCH.rglob("*.md"), *(ROOT / "tests").glob("*.py")]
    stale = "objbutler." + "testing.servers"
    offending = [str(path.relative_to(ROOT)) for path in texts
                 if path.is_file() and "__pycache__" not in path.parts and stale in path.read_text(errors="replace")]
    assert not offending, offending
