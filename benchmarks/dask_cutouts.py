"""Benchmark: stamps per second of ``objbutler.dask.cutouts`` with 1 and 2 Dask workers, side by side.

One run starts LocalStack on 127.0.0.1 (or uses ``--endpoint``), fills a
repository with FITS and Zarr images, then runs the same cutout campaign on a
``LocalCluster`` of 1 and of 2 single-threaded worker processes (127.0.0.1, no
dashboard). Each cluster is warmed up with one untimed run (imports, first
connections); the best of ``--repeat`` timed runs counts. Prints a Markdown table
row; :func:`main` also returns the numbers for the benchmark harness.

Run it as ``python benchmarks/dask_cutouts.py [--images 8 --stamps 250 ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from objbutler import Butler
from objbutler.dask import connect, cutouts


def _s3_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "access_key": "test", "secret_key": "test", "region": "us-east-1"}


@contextlib.contextmanager
def _s3(endpoint: str | None) -> Iterator[dict[str, Any]]:
    if endpoint is not None:
        yield _s3_options(endpoint)
        return
    from objbutler_servers import start_localstack

    with start_localstack() as server:
        yield _s3_options(server.info.env["AWS_ENDPOINT_URL"])


def _fill(uri: str, options: dict[str, Any], images: int, side: int, stamps: int, stamp: int) -> list[dict[str, Any]]:
    """Put ``images`` images (alternately FITS and Zarr) and return ``stamps`` random box requests per image."""
    from astropy.nddata import NDData
    from astropy.wcs import WCS

    butler = Butler.create(uri, **options)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(images):
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [150.0 + i * 0.1, 2.0]
        wcs.wcs.crpix = [side / 2, side / 2]
        wcs.wcs.cd = [[-5.5e-5, 0.0], [0.0, 5.5e-5]]
        data = rng.normal(100.0, 10.0, (side, side)).astype("float32")
        fmt = "fits" if i % 2 == 0 else "zarr"
        ref = butler.put(NDData(data, wcs=wcs), "calexp", {"visit": i}, run="bench", format=fmt,
                         format_options={"chunks": (256, 256)} if fmt == "zarr" else None)
        corners = rng.integers(0, side - stamp, size=(stamps, 2))
        requests += [{"dataset_id": ref.id, "box": (int(x), int(y), int(x) + stamp, int(y) + stamp)}
                     for x, y in corners]
    order = rng.permutation(len(requests))
    return [requests[k] for k in order]


def _serial_rate(uri: str, options: dict[str, Any], requests: list[dict[str, Any]], repeat: int) -> float:
    """The same stamps in one process, without Dask: ``Butler.get_cutouts_many`` (the baseline)."""
    from objbutler import Box

    butler = Butler(uri, **options)
    refs = {ref.id: ref for ref in butler.query("calexp")}
    per_image: dict[Any, list[Box]] = {}
    for request in requests:
        per_image.setdefault(refs[request["dataset_id"]], []).append(Box(*request["box"]))
    best = float("inf")
    for _ in range(repeat + 1):  # the first run warms up
        start = time.perf_counter()
        butler.get_cutouts_many(per_image)
        best = min(best, time.perf_counter() - start)
    return len(requests) / best


def _rate(uri: str, options: dict[str, Any], requests: list[dict[str, Any]], workers: int, repeat: int) -> float:
    with connect(workers=workers) as client:
        cutouts(uri, requests, client=client, store_options=options).raise_for_errors()  # warm-up
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            results = cutouts(uri, requests, client=client, store_options=options)
            best = min(best, time.perf_counter() - start)
            results.raise_for_errors()
    return len(requests) / best


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print one Markdown table row; return its numbers.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    dict
        ``{"images", "stamps", "stamp_px", "side", "rate_serial", "rate_1", "rate_2", "speedup"}``
        (rates in stamps/s; ``rate_serial`` is ``Butler.get_cutouts_many`` in this process, no Dask).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images in the repository")
    parser.add_argument("--stamps", type=int, default=250, help="stamps per image")
    parser.add_argument("--side", type=int, default=2048, help="image side in pixels (float32)")
    parser.add_argument("--stamp", type=int, default=64, help="stamp side in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per cluster (best counts)")
    parser.add_argument("--endpoint", default=None, help="an S3 endpoint already running (keys test/test)")
    args = parser.parse_args(argv)

    with _s3(args.endpoint) as options:
        from objbutler.stores.s3 import S3Store

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        list(S3Store(bucket, create_bucket=True, **options).list())
        uri = f"s3://{bucket}/dask"
        requests = _fill(uri, options, args.images, args.side, args.stamps, args.stamp)
        serial = _serial_rate(uri, options, requests, args.repeat)
        rates = {workers: _rate(uri, options, requests, workers, args.repeat) for workers in (1, 2)}

    row = {
        "images": args.images, "stamps": len(requests), "stamp_px": args.stamp, "side": args.side,
        "rate_serial": serial, "rate_1": rates[1], "rate_2": rates[2], "speedup": rates[2] / rates[1],
    }
    print("| benchmark | images | stamps | in-process, no Dask (stamps/s) | 1 worker (stamps/s) "
          "| 2 workers (stamps/s) | 2 vs 1 worker |")
    print("|---|---|---|---|---|---|---|")
    print(f"| dask cutouts, LocalStack, {args.stamp}x{args.stamp} px from {args.side}^2 FITS+Zarr "
          f"| {args.images} | {len(requests)} | {serial:,.0f} | {rates[1]:,.0f} | {rates[2]:,.0f} "
          f"| {row['speedup']:.2f}x |")
    return row


if __name__ == "__main__":
    main()
