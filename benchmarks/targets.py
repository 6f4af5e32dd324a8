"""Where the benchmarks run: start the server, put the counting proxy in front, clean up after.

``localstack`` (the default and the one the committed report uses), ``moto``
(quick fixtures only: it re-reads whole objects per ranged GET, so never
quote its numbers), ``swift`` (a real single-node Swift: objbutler uses its
native API, ``swift://``, the S3 clients of the other methods its ``s3api``,
both through the proxy), ``local`` (a temporary directory,
counted with a CountingStore), or a URI: ``s3://bucket/prefix`` (endpoint and
keys from the usual ``AWS_*`` variables) or a local path.

Every S3 client of every method (objbutler's botocore store, s3fs under
astropy and astrocut, zarr's FsspecStore) is pointed at the proxy's endpoint,
never at the server itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.measure import Counter, NullCounter, ProxyCounter, StoreCounter
from benchmarks.proxy import ProxyProcess

__all__ = ["TARGETS", "Target", "open_target"]

TARGETS = ("localstack", "moto", "swift", "local")


@dataclasses.dataclass
class Target:
    """A place to make benchmark repositories, and how every client reaches it.

    Attributes
    ----------
    name : str
        ``localstack``, ``moto``, ``swift``, ``local`` or the URI given.
    base : str
        URI under which repositories are made (``s3://bucket/run-id`` or a directory).
    store_options : dict
        ``open_store``/``Butler`` options (the proxy's endpoint and keys).
    proxy : ProxyProcess or None
        The counting proxy (None for local targets).
    server_endpoint : str or None
        The server behind the proxy.
    server_pids : tuple of int
        The server's processes when this run started it (for CPU accounting), else empty.
    profile : str
        The network profile clients see (:mod:`benchmarks.profiles`; ``loopback``: the server as it is).
    """

    name: str
    base: str
    store_options: dict[str, Any]
    proxy: ProxyProcess | None = None
    server_endpoint: str | None = None

    s3_keys: tuple[str, str] | None = None
    server_pids: tuple[int, ...] = ()
    profile: str = "loopback"

    @property
    def is_local(self) -> bool:
        """True for a local directory (no HTTP)."""
        return not self.base.startswith(("s3://", "swift://"))

    def new_uri(self, label: str) -> str:
        """A fresh repository location under :attr:`base`."""
        return f"{self.base}/{label}-{uuid.uuid4().hex[:8]}"

    def new_bucket_uri(self, label: str) -> str:
        """A fresh repository location in a bucket of its own, where this run started the S3 server.

        LocalStack lists a prefix in time that grows with the number of objects in the whole bucket
        (measured: 3.8 ms for a 10-key prefix alone, 42 ms beside 30,000 other keys), which AWS S3 does
        not; rows that list (concurrent writers, put_many) would otherwise pay for the objects every
        earlier row left. On a server this run did not start (an ``s3://`` target, Swift) and locally:
        :meth:`new_uri`.
        """
        if not self.server_pids or not self.base.startswith("s3://"):
            return self.new_uri(label)
        from objbutler.stores.s3 import S3Store

        bucket = re.sub(r"[^a-z0-9-]+", "-", f"bench-{label.lower()}")[:50].strip("-") + f"-{uuid.uuid4().hex[:8]}"
        list(S3Store(bucket, create_bucket=True, **self.store_options).list("none/"))
        return f"s3://{bucket}/repo"

    def object_url(self, repo_uri: str, key: str) -> str:
        """The URL (or path) a non-objbutler client opens for ``key`` of a repository (Swift: its s3api)."""
        return f"{repo_uri}/{key}".replace("swift://", "s3://", 1)

    @property
    def fsspec_options(self) -> dict[str, Any]:
        """s3fs storage options that reach the server through the proxy."""
        if self.is_local:
            return {}
        key, secret = self.s3_keys or (self.store_options.get("access_key"), self.store_options.get("secret_key"))
        endpoint = self.proxy.endpoint if self.proxy is not None else self.store_options.get("endpoint_url")
        return {
            "key": key,
            "secret": secret,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": self.store_options.get("region", "us-east-1")},
        }

    def counter(self, store: Any = None) -> Counter:
        """How to count a method: the proxy for HTTP targets; a CountingStore (if given) for local ones."""
        if self.proxy is not None:
            return ProxyCounter(self.proxy)
        if store is not None and hasattr(store, "requests_by_method"):
            return StoreCounter(store)
        return NullCounter()


def _s3_target(name: str, bucket_uri: str, endpoint: str, access_key: str, secret_key: str,
               region: str = "us-east-1", server_pids: tuple[int, ...] = ()) -> Iterator[Target]:
    from objbutler.stores.s3 import S3Store

    proxy = ProxyProcess(endpoint) if _is_loopback(endpoint) else None
    try:
        options = {
            "endpoint_url": proxy.endpoint if proxy else endpoint,
            "access_key": access_key,
            "secret_key": secret_key,
            "region": region,
        }
        parsed = urllib.parse.urlsplit(bucket_uri)
        bucket = S3Store(parsed.netloc, endpoint_url=options["endpoint_url"], access_key=access_key,
                         secret_key=secret_key, region=region, create_bucket=True)
        list(bucket.list("none/"))
        base = f"{bucket_uri.rstrip('/')}/bench-{uuid.uuid4().hex[:8]}"
        yield Target(name, base, options, proxy, endpoint, server_pids=server_pids)
    finally:
        if proxy is not None:
            proxy.stop()


def _swift_target(info: Any, log: Any) -> Iterator[Target]:
    from objbutler.stores.swift import SwiftStore

    log(f"swift is up at {info.endpoint}")
    with ProxyProcess(info.endpoint) as proxy:
        # tempauth hands out a storage URL on the host the client asked: the proxy's
        options = {"auth_url": f"{proxy.endpoint}/auth/v1.0", "user": info.env["ST_USER"], "key": info.env["ST_KEY"]}
        list(SwiftStore("objbutler-bench", create_container=True, **options).list("none/"))
        keys = (info.s3_env["AWS_ACCESS_KEY_ID"], info.s3_env["AWS_SECRET_ACCESS_KEY"])
        yield Target("swift", f"swift://objbutler-bench/bench-{uuid.uuid4().hex[:8]}", options, proxy, info.endpoint,
                     s3_keys=keys, server_pids=tuple(info.pids))


def _is_loopback(endpoint: str) -> bool:
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    return host == "localhost" or host.startswith("127.")


@contextlib.contextmanager
def open_target(name: str, log: Any = print) -> Iterator[Target]:
    """Start (or reach) the target, yield it, and stop everything this call started.

    Parameters
    ----------
    name : str
        One of :data:`TARGETS`, an ``s3://`` URI or a local path.
    log : callable
        Progress lines.

    Yields
    ------
    Target
    """
    import objbutler_servers as servers

    if name == "swift":
        log("starting swift on 127.0.0.1 ...")
        with servers.start_server(name) as server:
            yield from _swift_target(server.info, log)
        log("stopped swift")
        return
    if name in ("localstack", "moto"):
        log(f"starting {name} on 127.0.0.1 ...")
        with servers.start_server(name) as server:
            info = server.info
            env = info.s3_env if name == "swift" else info.env
            endpoint = env["AWS_ENDPOINT_URL"]
            log(f"{name} is up at {endpoint}")
            yield from _s3_target(name, "s3://objbutler-bench", endpoint, env["AWS_ACCESS_KEY_ID"],
                                  env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_DEFAULT_REGION", "us-east-1"),
                                  tuple(info.pids))
        log(f"stopped {name}")
        return
    if name.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        if not endpoint:
            raise ValueError("an s3:// target needs AWS_ENDPOINT_URL (and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
        yield from _s3_target(name, name, endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                              os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                              os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return
    if name == "local":
        directory = tempfile.mkdtemp(prefix="objbutler-bench-")
        try:
            yield Target("local", directory, {})
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    path = Path(name.removeprefix("file://")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    yield Target(str(path), str(path / f"bench-{uuid.uuid4().hex[:8]}"), {})
