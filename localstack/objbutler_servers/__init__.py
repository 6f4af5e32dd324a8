"""Real object-store servers on 127.0.0.1 for objbutler's tests, docs and benchmarks (a development tool).

Not part of the ``objbutler`` runtime: this distribution (``objbutler-servers``, in the repository's
``localstack/`` folder) installs LocalStack and Swift into virtual environments of their own, installs
Debian's ``memcached`` with apt-get and mounts a tmpfs for Swift's devices. Install it from a clone
with ``python3 -m pip install -e ./localstack``; ``python -m objbutler_servers --help`` is its command
line. It imports only the standard library.

Modules: :mod:`~objbutler_servers.install` (venvs, memcached), :mod:`~objbutler_servers.launch`
(start each kind), :mod:`~objbutler_servers.running` (processes, run directory, stop),
:mod:`~objbutler_servers.cli` (the command line).

Three servers are supported, each listening on loopback only, on free ports:

``localstack``
    LocalStack's S3 provider run on the host (no Docker) from its own venv.
``swift``
    A real single-node OpenStack Swift (proxy with ``tempauth`` and ``s3api``,
    object, container and account servers, one-replica rings) plus a
    ``memcached``, with its devices on a tmpfs (mounting it needs root).
``moto``
    moto's S3 mock server, from the current Python (``moto[server]``).

It installs the servers into dedicated
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

from objbutler_servers.cli import main
from objbutler_servers.install import (
    LOCALSTACK_REQUIREMENTS,
    SWIFT_REQUIREMENTS,
    install_localstack,
    install_memcached,
    install_swift,
    servers_dir,
)
from objbutler_servers.launch import (
    KINDS,
    SWIFT_KEY,
    SWIFT_USER,
    start_localstack,
    start_moto,
    start_server,
    start_swift,
)
from objbutler_servers.running import RunningServer, ServerError, ServerInfo, stop_all

__all__ = [
    "KINDS",
    "LOCALSTACK_REQUIREMENTS",
    "SWIFT_KEY",
    "SWIFT_REQUIREMENTS",
    "SWIFT_USER",
    "RunningServer",
    "ServerError",
    "ServerInfo",
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
