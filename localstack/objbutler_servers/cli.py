"""The command line: ``python -m objbutler_servers install|start|stop ...``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from objbutler_servers.install import install_localstack, install_swift
from objbutler_servers.launch import KINDS, start_server
from objbutler_servers.running import _STATE_FILE, RunningServer, ServerError, stop_all


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
        prog="python -m objbutler_servers",
        description="Install, start and stop real object-store servers on 127.0.0.1 for tests and benchmarks."
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
