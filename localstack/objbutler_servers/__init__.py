"""Real object-store servers on 127.0.0.1 for objbutler's tests, docs and benchmarks (a development tool).

Not part of the ``objbutler`` runtime: this distribution (``objbutler-servers``, in the repository's
``localstack/`` folder) installs LocalStack and Swift into virtual environments of their own, installs
Debian's ``memcached`` with apt-get and mounts a tmpfs for Swift's devices. Install it from a clone
with ``python3 -m pip install -e ./localstack``; ``python -m objbutler_servers --help`` is its command
line. It imports only the standard library.
"""

from objbutler_servers.servers import (
    KINDS,
    LOCALSTACK_REQUIREMENTS,
    SWIFT_KEY,
    SWIFT_REQUIREMENTS,
    SWIFT_USER,
    RunningServer,
    ServerError,
    ServerInfo,
    install_localstack,
    install_memcached,
    install_swift,
    main,
    servers_dir,
    start_localstack,
    start_moto,
    start_server,
    start_swift,
    stop_all,
)

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
