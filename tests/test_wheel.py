"""A wheel built from the tree installs and runs on its own, and ships only the runtime (issue 18).

The wheel is built from a copy of what the build reads (``pyproject.toml``, ``README.md``, ``objbutler/``),
so the build leaves nothing in the checkout. It is installed without dependencies into a fresh venv
that sees this interpreter's site-packages (numpy, astropy, ... are not installed again: the whole
module takes well under a minute), and ``objbutler --help`` and a small ``objbutler demo`` run from
that venv, in an empty directory, with ``PYTHONPATH`` unset: the checkout cannot stand in for the wheel
(a test checks which ``objbutler`` the venv imports).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# What server installation and management look like in source: none of it belongs in the runtime.
SERVER_INSTALLATION = re.compile(r"apt-get|tmpfs|memcached|\bmount\b.*-t|-m\", \"venv|-m venv|EnvBuilder|"
                                 r"venv\.create|localstack-core|objbutler_servers")


@dataclass(frozen=True)
class Installed:
    """The built wheel and the venv it is installed in."""

    wheel: Path
    venv: Path
    workdir: Path

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a program of the venv in its empty working directory, without this checkout on the path."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        return subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.workdir, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)


def _build_wheel(out: Path) -> Path:
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "objbutler", source / "objbutler", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out / "dist"),
                             str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (out / "dist").glob("objbutler-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # A directory of its own, not pytest's numbered temp dirs: those are pruned by other pytest runs.
    out = Path(tempfile.mkdtemp(prefix="objbutler-wheel-test-"))
    try:
        yield _install(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _install(out: Path) -> Installed:
    wheel = _build_wheel(out)
    env_dir = out / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    # --ignore-installed: the venv sees this interpreter's objbutler (an editable install of the same
    # version), which pip would otherwise take as already there and install nothing.
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                             "--no-deps", "--no-index", "--ignore-installed", "--quiet", str(wheel)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    workdir = out / "work"
    workdir.mkdir()
    return Installed(wheel, env_dir, workdir)


def test_the_venv_imports_objbutler_from_the_wheel(installed: Installed) -> None:
    result = installed.run("python", "-c", "import objbutler; print(objbutler.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed.venv), result.stdout


def test_objbutler_help_runs_from_the_wheel(installed: Installed) -> None:
    result = installed.run("objbutler", "--help")
    assert result.returncode == 0, result.stderr
    assert "objbutler: object-store-native datasets for astronomy." in result.stdout
    for command in ("demo", "put", "get", "cutout", "bench"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


def test_objbutler_demo_runs_from_the_wheel(installed: Installed) -> None:
    result = installed.run("objbutler", "demo", "--size", "256", "--stamps", "20", "--repo", "demo-repo",
                           "--png", "sheet.png")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 stamps of 64x64 from fits" in result.stdout and "from zarr" in result.stdout, result.stdout
    assert (installed.workdir / "demo-repo").is_dir()


def _wheel_files(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name).decode("utf-8", "replace") for name in archive.namelist()}


def test_the_wheel_ships_the_runtime_and_no_server_installation(installed: Installed) -> None:
    files = _wheel_files(installed.wheel)
    top_level = {name.split("/")[0] for name in files}
    assert top_level == {"objbutler", "objbutler-0.1.0.dist-info"}, sorted(top_level)
    modules = {name for name in files if name.endswith(".py")}
    # The runtime and the public testing aids for people writing their own stores are there ...
    for module in ("objbutler/__init__.py", "objbutler/cli.py", "objbutler/butler.py",
                   "objbutler/testing/conformance.py", "objbutler/testing/wrappers.py",
                   "objbutler/testing/faults.py", "objbutler/testing/faultproxy.py"):
        assert module in modules, module
    # ... the servers and the benchmark harness are not, nor any code that installs or mounts anything.
    assert "objbutler/testing/servers.py" not in modules
    assert not [name for name in files if "benchmarks" in name or "objbutler_servers" in name]
    offending = {name: sorted(set(SERVER_INSTALLATION.findall(text))) for name, text in files.items()
                 if name.endswith(".py") and SERVER_INSTALLATION.search(text)}
    assert not offending, f"server installation code in the wheel: {offending}"
    entry_points = files["objbutler-0.1.0.dist-info/entry_points.txt"]
    assert "objbutler = objbutler.cli:run" in entry_points


def test_the_pattern_finds_server_installation_code() -> None:
    """The wheel check would see the module that left (so its silence above means something)."""
    package = ROOT / "localstack" / "objbutler_servers"
    found = {word for path in package.glob("*.py") for word in SERVER_INSTALLATION.findall(path.read_text())}
    assert {"apt-get", "tmpfs", "memcached"} <= found, found
