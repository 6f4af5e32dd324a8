"""Install the servers: LocalStack and Swift into venvs of their own, Debian's memcached (apt-get)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from objbutler_servers.running import ServerError, _run

LOCALSTACK_REQUIREMENTS = (
    "localstack-core[base-runtime]==4.13.1",
    "cbor2<6",
    "pyopenssl<24.3",
    "cryptography<44",
    "service_identity",
)
SWIFT_REQUIREMENTS = ("swift==2.38.3",)
_INSTALLED_MARKER = ".objbutler-installed"


def servers_dir() -> Path:
    """Return the directory that holds the server venvs.

    Returns
    -------
    pathlib.Path
        ``$OBJBUTLER_SERVERS_DIR`` if set, else ``~/.cache/objbutler/servers``.
    """
    env = os.environ.get("OBJBUTLER_SERVERS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "objbutler" / "servers"


def install_localstack(*, force: bool = False) -> Path:
    """Install LocalStack (S3 only is used) into its own Python 3.11 venv.

    Parameters
    ----------
    force : bool, optional
        Rebuild the venv even if it is complete.

    Returns
    -------
    pathlib.Path
        The venv directory, ``servers_dir() / "localstack-venv"``.
    """
    return _ensure_venv("localstack", LOCALSTACK_REQUIREMENTS, force=force)


def install_swift(*, force: bool = False) -> Path:
    """Install Swift into its own Python 3.11 venv, and memcached if missing.

    Parameters
    ----------
    force : bool, optional
        Rebuild the venv even if it is complete.

    Returns
    -------
    pathlib.Path
        The venv directory, ``servers_dir() / "swift-venv"``.
    """
    install_memcached()
    return _ensure_venv("swift", SWIFT_REQUIREMENTS, force=force)


def install_memcached() -> str:
    """Return the ``memcached`` executable, installing Debian's package if needed.

    Returns
    -------
    str
        Path of ``memcached``.

    Raises
    ------
    ServerError
        If it is missing and cannot be installed (apt-get needs root).
    """
    found = shutil.which("memcached")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ServerError("memcached is not installed; as root: apt-get install memcached")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], what="apt-get update", env=env)
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "memcached"],
        what="apt-get install memcached",
        env=env,
    )
    found = shutil.which("memcached")
    if not found:
        raise ServerError("apt-get installed memcached but it is not on PATH")
    return found


def _base_python() -> str:
    """Find a Python 3.11 to build the venvs with (the servers' pins need it)."""
    override = os.environ.get("OBJBUTLER_SERVERS_PYTHON")
    if override:
        return override
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p / "bin" / "python") for p in sorted(pyenv.glob("3.11*"), reverse=True)]
    candidates += [c for c in (shutil.which("python3.11"),) if c]
    probe = "import sys; assert sys.version_info[:2] == (3, 11)"
    for candidate in candidates:
        # A pyenv shim may exist yet fail for an inactive version: check that it runs.
        if subprocess.run([candidate, "-c", probe], capture_output=True, check=False).returncode == 0:
            return candidate
    raise ServerError("no Python 3.11 found for the server venvs; set OBJBUTLER_SERVERS_PYTHON")


def _ensure_venv(name: str, requirements: Sequence[str], *, force: bool) -> Path:
    """Create ``servers_dir()/NAME-venv`` with ``requirements`` unless already done.

    A marker file written last records the requirements, so an interrupted
    install is redone and a changed pin triggers a rebuild. A lock file keeps
    concurrent installers (pytest-xdist workers) from colliding.
    """
    root = servers_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"{name}-venv"
    marker = venv / _INSTALLED_MARKER
    spec = "\n".join(requirements) + "\n"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and marker.is_file() and marker.read_text() == spec and (venv / "bin" / "python").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        _run([_base_python(), "-m", "venv", str(venv)], what=f"creating {venv}")
        _run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *requirements,
            ],
            what=f"pip install into {venv}",
        )
        marker.write_text(spec)
    return venv
