"""A running server: its processes, run directory, state file and how to stop it (one job: lifecycle)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_STATE_FILE = "server.json"
_RUN_DIR_PREFIX = "objbutler-server-"


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



# LocalStack's S3 provider spools object data under a hard-coded /tmp/localstack-s3-storage/<bucket>,
# shared by every instance (deleting a bucket in one removes the directory under the others). No


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


def _run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None) -> str:
    """Run a command to completion; raise ServerError with its output on failure."""
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise ServerError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))
    return result.stdout
