"""A repository of mixed datasets (FITS and Zarr images with a WCS, JSON metrics) and a full snapshot of
what it answers (queries, gets, cutouts), for the clone and cache tests: two snapshots compare equal
exactly when two repositories answer alike."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from objbutler_servers import ServerInfo

from objbutler import Box, Butler, DatasetRef
from objbutler.stores.s3 import S3Store

SHAPE = (96, 128)
BOXES = [Box(0, 0, 16, 16), Box(40, 30, 72, 62), Box(120, 90, 140, 110), Box(-8, -8, 8, 8)]


def s3_repo_uri(info: ServerInfo) -> tuple[str, dict[str, Any]]:
    """A fresh repository URI in a new bucket of an S3 server, and the store options to reach it."""
    env = info.env
    options = {"endpoint_url": env["AWS_ENDPOINT_URL"], "access_key": env["AWS_ACCESS_KEY_ID"],
               "secret_key": env["AWS_SECRET_ACCESS_KEY"], "region": env.get("AWS_DEFAULT_REGION", "us-east-1")}
    bucket = f"work-{uuid.uuid4().hex[:10]}"
    list(S3Store(bucket, create_bucket=True, **options).list())
    return f"s3://{bucket}/repo", options


def make_wcs(shape: tuple[int, int] = SHAPE, ra: float = 150.0) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, 2.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = [[-5.5e-5, 0.0], [0.0, 5.5e-5]]
    return wcs


def image(seed: int) -> fits.PrimaryHDU:
    rng = np.random.default_rng(seed)
    header = make_wcs(ra=150.0 + seed * 0.01).to_header()
    header["SEED"] = seed
    return fits.PrimaryHDU(rng.normal(100, 10, SHAPE).astype("float32"), header=header)


def fill(butler: Butler, count: int = 50, run: str = "run1") -> list[DatasetRef]:
    """Put ``count`` datasets cycling FITS calexp, Zarr coadd, JSON metric (derived from the calexp before it)."""
    refs: list[DatasetRef] = []
    last_image: DatasetRef | None = None
    for i in range(count):
        if i % 3 == 0:
            last_image = butler.put(image(i), "calexp", {"visit": 1000 + i, "detector": i % 4}, run=run,
                                    format="fits")
            refs.append(last_image)
        elif i % 3 == 1:
            refs.append(butler.put(image(i), "coadd", {"tract": 9, "patch": i}, run=run, format="zarr",
                                   format_options={"chunks": (32, 32)}))
        else:
            inputs = [last_image] if last_image is not None else []
            refs.append(butler.put({"index": i, "value": i * 0.5}, "metric", {"visit": 1000 + i}, run=run,
                                   inputs=inputs, derived_from=inputs))
    return refs


def _ref_view(ref: DatasetRef) -> dict[str, Any]:
    return ref.to_json()


def _pixels(array: Any) -> tuple[str, tuple[int, ...], bytes]:
    array = np.asarray(array)
    return (str(array.dtype.newbyteorder("=")), array.shape, np.ascontiguousarray(array, array.dtype.newbyteorder("="))
            .tobytes())


def snapshot(butler: Butler) -> dict[str, Any]:
    """Everything a repository answers about its datasets, as plain comparable values."""
    out: dict[str, Any] = {
        "all": sorted((_ref_view(r) for r in butler.query()), key=lambda v: v["id"]),
        "calexp_d1": sorted(r.id for r in butler.query("calexp", where={"detector": 1})),
        "coadd_range": sorted(r.id for r in butler.query("coadd", where={"patch": range(10, 30)}, run="run1")),
        "metric_in": sorted(r.id for r in butler.query("metric", where={"visit": [1002, 1005, 1999]})),
    }
    gets: dict[str, Any] = {}
    cutouts: dict[str, Any] = {}
    for ref in sorted(butler.query(), key=lambda r: r.id):
        obj = butler.get(ref)
        if ref.format == "json":
            gets[ref.id] = obj
            continue
        wcs = obj.wcs.to_header_string() if obj.wcs is not None else None
        gets[ref.id] = (_pixels(obj.data), wcs)
        stamps = butler.get_cutouts(ref, BOXES, mode="partial", fill_value=-1.0)
        sky = SkyCoord(obj.wcs.pixel_to_world([20, 60], [20, 50]))
        stamps += butler.get_cutouts(ref, sky, size=12)
        cutouts[ref.id] = [(_pixels(s.data), s.bbox) for s in stamps]
    out["gets"] = gets
    out["cutouts"] = cutouts
    return out
