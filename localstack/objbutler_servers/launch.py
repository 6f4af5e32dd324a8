"""Start LocalStack, Swift (with memcached, devices on a tmpfs) and moto on 127.0.0.1, on free ports."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from objbutler_servers.install import install_localstack, install_memcached, install_swift, servers_dir
from objbutler_servers.running import (
    HOST,
    RunningServer,
    _free_ports,
    _http,
    _port_open,
    _run,
    _s3_env,
    _starting,
)

KINDS = ("localstack", "swift", "moto")
"""Server kinds known to :func:`start_server` and the command line."""
SWIFT_USER = "test:tester"
SWIFT_KEY = "testing"


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

