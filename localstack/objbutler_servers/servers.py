"""Install, start and stop real object-store servers on 127.0.0.1 for tests and benchmarks.

Three servers are supported, each listening on loopback only, on free ports:

``localstack``
    LocalStack's S3 provider run on the host (no Docker) from its own venv.
``swift``
    A real single-node OpenStack Swift (proxy with ``tempauth`` and ``s3api``,
    object, container and account servers, one-replica rings) plus a
    ``memcached``, with its devices on a tmpfs (mounting it needs root).
``moto``
    moto's S3 mock server, from the current Python (``moto[server]``).

The module is pure standard library: it installs the servers into dedicated
venvs under :func:`servers_dir` and runs them as child processes, so importing
it needs none of them. Every server gets a fresh run directory (config, data,
logs) and its own process groups; :meth:`RunningServer.stop` ends them and
removes the directory.

Examples
--------
>>> with start_localstack() as server:  # doctest: +SKIP
...     os.environ.update(server.info.env)

From a shell::

    python -m objbutler_servers install all
    eval "$(python -m objbutler_servers start localstack --pidfile /tmp/ls.json)"
    python -m objbutler_servers stop --pidfile /tmp/ls.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "KINDS",
    "LOCALSTACK_REQUIREMENTS",
    "RunningServer",
    "ServerError",
    "ServerInfo",
    "SWIFT_KEY",
    "SWIFT_REQUIREMENTS",
    "SWIFT_USER",
    "install_localstack",
    "install_memcached",
    "install_swift",
    "main",
    "servers_dir",
    "start_localstack",
    "start_moto",
    "start_server",
    "start_swift",
    "stop_all",
]

KINDS = ("localstack", "swift", "moto")
"""Server kinds known to :func:`start_server` and the command line."""

HOST = "127.0.0.1"
LOCALSTACK_REQUIREMENTS = (
    "localstack-core[base-runtime]==4.13.1",
    "cbor2<6",
    "pyopenssl<24.3",
    "cryptography<44",
    "service_identity",
)
SWIFT_REQUIREMENTS = ("swift==2.38.3",)
SWIFT_USER = "test:tester"
SWIFT_KEY = "testing"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_STATE_FILE = "server.json"
_RUN_DIR_PREFIX = "objbutler-server-"
_INSTALLED_MARKER = ".objbutler-installed"


class ServerError(RuntimeError):
    """A server could not be installed, started or stopped.

    Messages about a failed start end with the tail of the server's logs.
    """


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """How to reach a running server, and what to clean up after it.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    endpoint : str
        Base URL, always ``http://127.0.0.1:PORT``. For Swift this is the proxy;
        its auth URL is ``env["ST_AUTH"]``.
    env : dict of str to str
        Environment variables that point a client at the server: the AWS ones
        (``AWS_ENDPOINT_URL`` and keys) for S3 servers, ``ST_AUTH``/``ST_USER``/
        ``ST_KEY`` for Swift.
    s3_env : dict of str to str
        For Swift, the AWS variables to reach its ``s3api`` (access key
        ``test:tester``, secret ``testing``); empty for the S3 servers, whose
        ``env`` already is that.
    pids : tuple of int
        Leader of each process group started (empty for in-process moto).
    run_dir : str or None
        Private directory with config, data and ``logs/``; removed on stop.
    mounts : tuple of str
        tmpfs mount points to unmount on stop.
    """

    kind: str
    endpoint: str
    env: dict[str, str] = dataclasses.field(hash=False)
    s3_env: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    pids: tuple[int, ...] = ()
    run_dir: str | None = None
    mounts: tuple[str, ...] = ()

    def export_lines(self) -> list[str]:
        """Return ``export NAME=VALUE`` shell lines for :attr:`env`.

        Returns
        -------
        list of str
            One line per variable, values quoted for POSIX shells.
        """
        return [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]


@dataclasses.dataclass
class _Proc:
    """One child process: the leader of its own process group."""

    name: str
    pid: int
    start_ticks: int | None
    log: str
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _start_ticks(self.pid) == self.start_ticks and self.start_ticks is not None

    def signal_group(self, sig: int) -> None:
        # A group whose leader is another process by now (PID reuse) is not ours.
        if self.popen is None and not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class RunningServer:
    """A started server: its :class:`ServerInfo` and the means to stop it.

    Use it as a context manager, or call :meth:`stop`. Obtain one from the
    ``start_*`` functions or, for a server started by another process, from
    :meth:`from_state_file`.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    run_dir : pathlib.Path or None
        The server's private directory (None for in-process moto).
    stop_timeout : float
        Default seconds :meth:`stop` waits between SIGTERM and SIGKILL.
    """

    def __init__(self, kind: str, run_dir: Path | None) -> None:
        self.kind = kind
        self.run_dir = run_dir
        self._procs: list[_Proc] = []
        self._mounts: list[Path] = []
        self._callbacks: list[Callable[[], None]] = []
        self._info: ServerInfo | None = None
        self._stopped = False
        self.stop_timeout = 10.0

    @property
    def info(self) -> ServerInfo:
        """ServerInfo: endpoint, client environment, PIDs and directories."""
        if self._info is None:
            raise ServerError(f"{self.kind} server has not finished starting")
        return self._info

    @property
    def log_dir(self) -> Path:
        """Path: directory that holds one log file per process."""
        if self.run_dir is None:
            raise ServerError(f"{self.kind} server has no run directory")
        return self.run_dir / "logs"

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        endpoint = self._info.endpoint if self._info else "starting"
        return f"<RunningServer {self.kind} {endpoint}>"

    # -- building (used by the start functions) ---------------------------------

    def _spawn(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``argv`` in a new session, output appended to ``logs/NAME.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=self.run_dir,
                start_new_session=True,
            )
        self._procs.append(_Proc(name, popen.pid, _start_ticks(popen.pid), str(log), popen))
        self._checkpoint()

    def _mount_tmpfs(self, path: Path, size: str = "4g") -> None:
        path.mkdir(parents=True, exist_ok=True)
        _run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            what=f"mounting a tmpfs on {path} (needs root)",
        )
        self._mounts.append(path)
        self._checkpoint()

    def _wait_ready(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll ``check`` until it returns True; fail early if a child exits."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self._procs:
                if not proc.alive():
                    code = proc.popen.returncode if proc.popen else "?"
                    raise ServerError(f"{what}: {proc.name} exited with status {code}" + self._log_tails())
            try:
                if check():
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{what}: not ready after {timeout:g} s" + self._log_tails())
            time.sleep(0.2)

    def _log_tails(self, lines: int = 30) -> str:
        parts = []
        for proc in self._procs:
            with contextlib.suppress(OSError):
                tail = Path(proc.log).read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"\n--- last lines of the {proc.name} log ---\n" + "\n".join(tail))
        return "".join(parts)

    def _finish(self, endpoint: str, env: dict[str, str], s3_env: dict[str, str] | None = None) -> RunningServer:
        self._info = ServerInfo(
            kind=self.kind,
            endpoint=endpoint,
            env=env,
            s3_env=s3_env or {},
            pids=tuple(p.pid for p in self._procs),
            run_dir=str(self.run_dir) if self.run_dir else None,
            mounts=tuple(str(m) for m in self._mounts),
        )
        self._checkpoint()
        return self

    def _checkpoint(self) -> None:
        """Keep ``run_dir/server.json`` current, so ``stop --all`` can clean up even a half-started server."""
        if self.run_dir is not None:
            self.write_state(self.run_dir / _STATE_FILE)

    # -- state files -------------------------------------------------------------

    def write_state(self, path: str | os.PathLike[str]) -> None:
        """Write what :meth:`from_state_file` needs to stop this server (a pidfile).

        Parameters
        ----------
        path : str or path-like
            File to write (JSON).
        """
        state: dict[str, Any] = {
            "kind": self.kind,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "mounts": [str(m) for m in self._mounts],
            "procs": [[p.name, p.pid, p.start_ticks, p.log] for p in self._procs],
            "info": dataclasses.asdict(self._info) if self._info else None,
            "stop_timeout": self.stop_timeout,
        }
        tmp = Path(f"{os.fspath(path)}.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)

    @classmethod
    def from_state_file(cls, path: str | os.PathLike[str]) -> RunningServer:
        """Rebuild a handle on a server started elsewhere, from its pidfile.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`write_state` (``--pidfile``).

        Returns
        -------
        RunningServer
            A handle whose :meth:`stop` ends the recorded processes (only
            those whose start time still matches, so reused PIDs are safe).
        """
        state = json.loads(Path(path).read_text())
        server = cls(state["kind"], Path(state["run_dir"]) if state["run_dir"] else None)
        server._procs = [_Proc(n, pid, ticks, log) for n, pid, ticks, log in state["procs"]]
        server._mounts = [Path(m) for m in state["mounts"]]
        server.stop_timeout = state.get("stop_timeout", server.stop_timeout)
        if state["info"]:
            info = state["info"]
            server._info = ServerInfo(**{**info, "pids": tuple(info["pids"]), "mounts": tuple(info["mounts"])})
        return server

    # -- stopping ----------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server: SIGTERM each process group, SIGKILL stragglers, clean up.

        Unmounts the tmpfs mounts and removes the run directory. Calling it
        again does nothing.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait after SIGTERM before SIGKILL; default
            :attr:`stop_timeout` (10 s, 5 s for LocalStack, which keeps no state).

        Raises
        ------
        ServerError
            If a mount point could not be unmounted (the directory is then kept).
        """
        if self._stopped:
            return
        self._stopped = True
        for callback in self._callbacks:
            callback()
        for proc in self._procs:
            proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        while any(p.alive() for p in self._procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in self._procs:
            proc.signal_group(signal.SIGKILL)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        failed = [m for m in self._mounts if not _unmount(m)]
        if failed:
            raise ServerError(f"could not unmount {', '.join(map(str, failed))}; kept {self.run_dir}")
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)


# -- installing ----------------------------------------------------------------------


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


def _run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None) -> str:
    """Run a command to completion; raise ServerError with its output on failure."""
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise ServerError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))
    return result.stdout


# -- small helpers -------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, in clock ticks; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _unmount(path: Path) -> bool:
    """Unmount ``path`` if it is a mount point (lazily if busy); True when done."""
    for argv in (["umount", str(path)], ["umount", "-l", str(path)]):
        if not os.path.ismount(path):
            return True
        subprocess.run(argv, capture_output=True, check=False)
    return not os.path.ismount(path)


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def _http(
    method: str, url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to a loopback URL, bypassing any proxy settings."""
    scheme, rest = url.split("://", 1)
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    if scheme != "http" or host != HOST:
        raise ValueError(f"refusing non-loopback URL {url}")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        conn.close()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


@contextlib.contextmanager
def _starting(kind: str, with_run_dir: bool = True) -> Iterator[RunningServer]:
    """Yield a new RunningServer; stop it (and clean up) if starting fails."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{_RUN_DIR_PREFIX}{kind}-")) if with_run_dir else None
    server = RunningServer(kind, run_dir)
    try:
        yield server
    except BaseException:
        with contextlib.suppress(ServerError):
            server.stop()
        raise


def _s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, **S3_ENV}


# -- LocalStack --------------------------------------------------------------------

# LocalStack's S3 provider spools object data under a hard-coded /tmp/localstack-s3-storage/<bucket>,
# shared by every instance (deleting a bucket in one removes the directory under the others). No
# setting changes it, so point the module constant at the run directory before the runtime starts.
_LOCALSTACK_LAUNCHER = """
import os, runpy
import localstack.services.s3.provider as s3_provider
s3_provider.DEFAULT_S3_TMP_DIR = os.environ["OBJBUTLER_S3_STORAGE_DIR"]
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"""


def start_localstack(port: int | None = None, *, timeout: float = 60.0, install: bool = True) -> RunningServer:
    """Start LocalStack's S3 on 127.0.0.1 (installing it first if needed).

    Parameters
    ----------
    port : int, optional
        Port to listen on; a free one by default.
    timeout : float, optional
        Seconds to wait for ``/_localstack/health`` to report S3 running.
    install : bool, optional
        Call :func:`install_localstack` first (quick when already installed).

    Returns
    -------
    RunningServer
        ``info.env`` holds ``AWS_ENDPOINT_URL`` and the test credentials.

    Raises
    ------
    ServerError
        If it does not become ready in time (the message has the log tail).
    """
    venv = install_localstack() if install else servers_dir() / "localstack-venv"
    port = port or _free_ports(1)[0]
    endpoint = f"http://{HOST}:{port}"
    with _starting("localstack") as server:
        assert server.run_dir is not None
        # It usually exits 2-3 s after SIGTERM, but its shutdown sometimes hangs.
        server.stop_timeout = 5.0
        env = {
            "GATEWAY_LISTEN": f"{HOST}:{port}",
            "GATEWAY_SERVER": "hypercorn",  # the default (twisted) binds 0.0.0.0
            "LOCALSTACK_HOST": f"{HOST}:{port}",
            "SERVICES": "s3",
            "EAGER_SERVICE_LOADING": "1",
            "LOCALSTACK_TELEMETRY_DISABLED": "1",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DNS_ADDRESS": "0",
            # Host mode even inside a container (it looks for /.dockerenv), so
            # all its files live under FILESYSTEM_ROOT, private to this instance.
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(server.run_dir / "fs"),
            "CONFIG_DIR": str(server.run_dir / "config"),
            "OBJBUTLER_S3_STORAGE_DIR": str(server.run_dir / "s3-storage"),
        }
        server._spawn("localstack", [venv / "bin" / "python", "-c", _LOCALSTACK_LAUNCHER], env)

        def ready() -> bool:
            status, _, body = _http("GET", f"{endpoint}/_localstack/health")
            services = json.loads(body).get("services", {}) if status == 200 else {}
            return services.get("s3") in ("running", "available")

        server._wait_ready("LocalStack", ready, timeout)
        return server._finish(endpoint, _s3_env(endpoint))


# -- Swift -------------------------------------------------------------------------

_RING_SCRIPT = """
import json, sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], json.loads(sys.argv[2])
for kind, port in ports.items():
    builder = RingBuilder(8, 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1",
                     "port": port, "device": "d1", "weight": 1.0})
    builder.rebalance()
    builder.save(f"{etc}/{kind}.builder")
    builder.get_ring().save(f"{etc}/{kind}.ring.gz")
"""

_SWIFT_DEFAULT = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {etc}
devices = {devices}
mount_check = false
disable_fallocate = true
recon_cache_path = {run}/cache
log_name = {name}
"""

_SWIFT_STORAGE = """
[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

_SWIFT_PROXY = """
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats \
s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""


def _write_swift_config(run: Path, ports: Mapping[str, int]) -> Path:
    """Write swift.conf, the rings' server configs and the proxy config; return etc/."""
    etc = run / "etc"
    etc.mkdir()
    # swift_dir in every server config points Swift here instead of /etc/swift.
    (etc / "swift.conf").write_text(
        textwrap.dedent(f"""\
        [swift-hash]
        swift_hash_path_suffix = objbutler-{run.name}
        swift_hash_path_prefix = objbutler

        [storage-policy:0]
        name = Policy-0
        default = yes
        """)
    )
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
    for name, port in ports.items():
        if name == "memcached":
            continue
        text = _SWIFT_DEFAULT.format(
            port=port, user=user, etc=etc, devices=run / "devices", run=run, name=f"{name}-server"
        )
        if name == "proxy":
            text += _SWIFT_PROXY.format(memcached_port=ports["memcached"])
        else:
            text += _SWIFT_STORAGE.format(kind=name)
        (etc / f"{name}-server.conf").write_text(text)
    return etc


def start_swift(*, timeout: float = 60.0, install: bool = True) -> RunningServer:
    """Start a single-node Swift (plus memcached) on 127.0.0.1; needs root.

    The devices directory is a fresh 4 GiB tmpfs (ext4's xattrs are too small
    for Swift's metadata); it is unmounted on stop.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait for the whole cluster to answer.
    install : bool, optional
        Call :func:`install_swift` first (quick when already installed).

    Returns
    -------
    RunningServer
        ``info.env`` holds ``ST_AUTH`` (``http://127.0.0.1:PORT/auth/v1.0``),
        ``ST_USER`` (``test:tester``) and ``ST_KEY`` (``testing``);
        ``info.s3_env`` reaches the same store through ``s3api``.

    Raises
    ------
    ServerError
        If a process exits or the cluster is not ready in time (with log tails).
    """
    venv = install_swift() if install else servers_dir() / "swift-venv"
    memcached = install_memcached()
    names = ("memcached", "object", "container", "account", "proxy")
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    endpoint = f"http://{HOST}:{ports['proxy']}"
    with _starting("swift") as server:
        run = server.run_dir
        assert run is not None
        server._mount_tmpfs(run / "devices")
        (run / "devices" / "d1").mkdir()
        etc = _write_swift_config(run, ports)
        rings = {k: ports[k] for k in ("object", "container", "account")}
        _run(
            [str(venv / "bin" / "python"), "-c", _RING_SCRIPT, str(etc), json.dumps(rings)], what="building Swift rings"
        )

        user = ["-u", "root"] if os.geteuid() == 0 else []
        server._spawn("memcached", [memcached, "-l", HOST, "-p", str(ports["memcached"]), "-U", "0", "-m", "64", *user])
        for name in ("object", "container", "account", "proxy"):
            # -v keeps a console log handler, so the log file gets Swift's log lines.
            server._spawn(name, [venv / "bin" / f"swift-{name}-server", etc / f"{name}-server.conf", "-v"])

        def ready() -> bool:
            if not all(_port_open(p) for p in ports.values()):
                return False
            status, _, body = _http("GET", f"{endpoint}/healthcheck")
            if status != 200 or body != b"OK":
                return False
            status, headers, _ = _http(
                "GET", f"{endpoint}/auth/v1.0", {"X-Auth-User": SWIFT_USER, "X-Auth-Key": SWIFT_KEY}
            )
            token, url = headers.get("X-Auth-Token"), headers.get("X-Storage-Url")
            if status != 200 or not token or not url:
                return False
            status, _, _ = _http("HEAD", url, {"X-Auth-Token": token})
            return 200 <= status < 300

        server._wait_ready("Swift", ready, timeout)
        env = {"ST_AUTH": f"{endpoint}/auth/v1.0", "ST_USER": SWIFT_USER, "ST_KEY": SWIFT_KEY}
        s3_env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": SWIFT_USER,
            "AWS_SECRET_ACCESS_KEY": SWIFT_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        return server._finish(endpoint, env, s3_env)


# -- moto ---------------------------------------------------------------------------


def start_moto(port: int | None = None, *, in_process: bool = True, timeout: float = 30.0) -> RunningServer:
    """Start moto's S3 mock server on 127.0.0.1.

    Parameters
    ----------
    port : int, optional
        Port to listen on; a free one by default.
    in_process : bool, optional
        Run ``moto.server.ThreadedMotoServer`` in a thread of this process
        (the default), or, if False, ``python -m moto.server`` as a child
        process that outlives this one (what the command line uses).
    timeout : float, optional
        Seconds to wait for the child process to answer.

    Returns
    -------
    RunningServer
        ``info.env`` holds ``AWS_ENDPOINT_URL`` and the test credentials.
    """
    if in_process:
        from moto.server import ThreadedMotoServer

        with _starting("moto", with_run_dir=False) as server:
            moto = ThreadedMotoServer(ip_address=HOST, port=port or 0, verbose=False)
            moto.start()
            server._callbacks.append(moto.stop)
            endpoint = "http://{}:{}".format(*moto.get_host_and_port())
            return server._finish(endpoint, _s3_env(endpoint))
    port = port or _free_ports(1)[0]
    endpoint = f"http://{HOST}:{port}"
    with _starting("moto") as server:
        server._spawn("moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)])
        server._wait_ready("moto", lambda: _http("GET", f"{endpoint}/moto-api/")[0] == 200, timeout)
        return server._finish(endpoint, _s3_env(endpoint))


def start_server(kind: str, **kwargs: Any) -> RunningServer:
    """Start a server by kind name.

    Parameters
    ----------
    kind : {"localstack", "swift", "moto"}
        Which server.
    **kwargs
        Passed to :func:`start_localstack`, :func:`start_swift` or :func:`start_moto`.

    Returns
    -------
    RunningServer
        The started server.
    """
    starters: dict[str, Callable[..., RunningServer]] = {
        "localstack": start_localstack,
        "swift": start_swift,
        "moto": start_moto,
    }
    if kind not in starters:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")
    return starters[kind](**kwargs)


def stop_all() -> list[str]:
    """Stop every server whose run directory is still in the temp directory.

    For clean-up after a killed test run (leftover processes and tmpfs mounts).

    Returns
    -------
    list of str
        The run directories that were cleaned up.
    """
    done = []
    for state in sorted(Path(tempfile.gettempdir()).glob(f"{_RUN_DIR_PREFIX}*/{_STATE_FILE}")):
        RunningServer.from_state_file(state).stop()
        done.append(str(state.parent))
    return done


# -- command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``install``, ``start`` and ``stop`` servers.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m objbutler_servers", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install server venvs (and memcached)")
    p_install.add_argument("what", choices=("localstack", "swift", "all"))
    p_install.add_argument("--force", action="store_true", help="rebuild the venvs")
    p_start = sub.add_parser("start", help="start a server; print shell export lines")
    p_start.add_argument("kind", choices=KINDS)
    p_start.add_argument("--pidfile", help="write the state needed by 'stop' here")
    p_stop = sub.add_parser("stop", help="stop a server started with 'start'")
    group = p_stop.add_mutually_exclusive_group(required=True)
    group.add_argument("--pidfile", help="file written by 'start --pidfile'")
    group.add_argument("--all", action="store_true", help="stop every server that has a run directory in the temp dir")
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            for what in ("localstack", "swift") if args.what == "all" else (args.what,):
                began = time.monotonic()
                venv = (install_localstack if what == "localstack" else install_swift)(force=args.force)
                print(f"{what}: {venv} ({time.monotonic() - began:.1f} s)", file=sys.stderr)
        elif args.command == "start":
            began = time.monotonic()
            kwargs = {"in_process": False} if args.kind == "moto" else {}
            server = start_server(args.kind, **kwargs)
            pidfile = args.pidfile or str(Path(server.info.run_dir or ".") / _STATE_FILE)
            if args.pidfile:
                server.write_state(args.pidfile)
            print(
                f"# {args.kind} ready in {time.monotonic() - began:.1f} s; "
                f"stop with: python -m objbutler_servers stop --pidfile {pidfile}"
            )
            print("\n".join(server.info.export_lines()))
        elif args.all:
            for run_dir in stop_all():
                print(f"stopped {run_dir}", file=sys.stderr)
        else:
            RunningServer.from_state_file(args.pidfile).stop()
            Path(args.pidfile).unlink(missing_ok=True)
    except (ServerError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
