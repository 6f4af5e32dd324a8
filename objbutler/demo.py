"""The README demo: the main job on the embedded local default.

Kept in the library (not the CLI) so tests can run it with a small image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from objbutler.stores import open_store

__all__ = ["run_demo"]


def run_demo(
    repo: str,
    n_stamps: int = 1000,
    image_size: int = 4096,
    png: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Write an image-sized object to a local store and range-read stamps' rows from it.

    Parameters
    ----------
    repo : str
        Local directory of the demo store.
    n_stamps : int
        Number of 64-row stamps whose rows are read.
    image_size : int
        Side of the synthetic float32 image.
    png : str, optional
        Unused until the Butler lands (contact sheet).
    echo : callable
        Where progress lines go.

    Returns
    -------
    dict
        Timings and request counts.
    """
    Path(repo).mkdir(parents=True, exist_ok=True)
    store = open_store(repo)
    rng = np.random.default_rng(42)
    image = rng.normal(1000.0, 30.0, (image_size, image_size)).astype(">f4")
    start = time.perf_counter()
    store.put("demo/pvi.raw", image.tobytes())
    put_seconds = time.perf_counter() - start
    row_bytes = image_size * 4
    ys = rng.integers(0, image_size - 64, n_stamps)
    ranges = [(int(y) * row_bytes, (int(y) + 64) * row_bytes) for y in ys]
    start = time.perf_counter()
    blocks = store.get_ranges("demo/pvi.raw", ranges)
    get_seconds = time.perf_counter() - start
    assert all(len(b) == 64 * row_bytes for b in blocks)
    echo(f"put {image.nbytes / 2**20:.0f} MiB in {put_seconds * 1000:.1f} ms; "
         f"{n_stamps} range reads in {get_seconds * 1000:.1f} ms")
    return {"put_seconds": put_seconds, "get_seconds": get_seconds}
