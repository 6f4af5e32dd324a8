"""Client CPU per small range GET: objbutler's botocore store against obstore (Rust), on one server.

Issue 15 asks, where CPU per request bounds many-image reads, for an obstore read path measured
against botocore. This times ``n`` range GETs of ``size`` bytes (one per object, 16 in flight, as an
object history reads one stamp per image) through each client, in alternating rounds, and reports
wall time and this process's CPU per request. obstore is not a dependency of objbutler: install it
(``pip install obstore``) to include it; the server's own CPU is not counted here.

    python -m benchmarks.read_path [--n 1000] [--size 10404]

starts LocalStack on 127.0.0.1, fills a bucket, and prints one line per client and round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

LANES = 16


def _botocore_reader(options: dict[str, Any], bucket: str, keys: list[str], size: int) -> Callable[[], None]:
    from objbutler.stores._concurrency import run_concurrently
    from objbutler.stores.s3 import S3Store

    store = S3Store(bucket, **options)

    def run() -> None:
        run_concurrently(lambda key: store.get_ranges(key, [(0, size)]), keys, LANES)

    return run


def _obstore_reader(options: dict[str, Any], bucket: str, keys: list[str], size: int) -> Callable[[], None] | None:
    try:
        import obstore
        from obstore.store import S3Store as ObStore
    except ImportError:
        return None
    store = ObStore(bucket, endpoint=options["endpoint_url"], access_key_id=options["access_key"],
                    secret_access_key=options["secret_key"], region=options.get("region", "us-east-1"),
                    client_options={"allow_http": True})

    async def everything() -> None:
        lanes = asyncio.Semaphore(LANES)

        async def one(key: str) -> None:
            async with lanes:
                await obstore.get_range_async(store, key, start=0, end=size)

        await asyncio.gather(*(one(key) for key in keys))

    return lambda: asyncio.run(everything())


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    """Start LocalStack, fill it, and time both clients."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="Objects (one range GET each).")
    parser.add_argument("--size", type=int, default=51 * 51 * 4, help="Bytes per GET.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import objbutler_servers as servers

    from objbutler.stores._concurrency import run_concurrently
    from objbutler.stores.s3 import S3Store

    with servers.start_server("localstack") as server:
        env = server.info.env
        options: dict[str, Any] = {"endpoint_url": env["AWS_ENDPOINT_URL"], "access_key": env["AWS_ACCESS_KEY_ID"],
                   "secret_key": env["AWS_SECRET_ACCESS_KEY"], "region": env.get("AWS_DEFAULT_REGION", "us-east-1")}
        bucket = f"readpath-{uuid.uuid4().hex[:8]}"
        filler = S3Store(bucket, create_bucket=True, **options)
        keys = [f"obj/{k:05d}" for k in range(args.n)]
        payload = os.urandom(args.size * 4)
        run_concurrently(lambda key: filler.put(key, payload), keys, 8)
        readers = {"botocore (objbutler S3Store)": _botocore_reader(options, bucket, keys, args.size),
                   "obstore (async, 16 in flight)": _obstore_reader(options, bucket, keys, args.size)}
        for name, run in readers.items():
            if run is None:
                print(f"{name}: not installed")
                continue
            run()  # warm: connections, credentials
        for round_index in range(args.rounds):
            order = list(readers.items()) if round_index % 2 == 0 else list(reversed(readers.items()))
            for name, run in order:
                if run is None:
                    continue
                wall, cpu = _timed(run)
                print(f"round {round_index}: {name:<32} {args.n} GETs in {wall:.2f} s, "
                      f"client CPU {1000 * cpu / args.n:.3f} ms per GET")


if __name__ == "__main__":
    main()
