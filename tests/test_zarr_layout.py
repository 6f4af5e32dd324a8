"""Zarr images carry their array metadata in the registry: a stamp costs its chunk reads, no ``zarr.json``.

Counted with :class:`objbutler.testing.wrappers.CountingStore` on a memory store (one request per
object or range asked for). Images are small synthetic PVIs (:mod:`objbutler.testing.skyfield`).
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.nddata import NDData
from astropy.wcs import WCS

from objbutler import Box, Butler
from objbutler.testing.skyfield import pvis
from objbutler.testing.wrappers import CountingStore

FIELD = (150.1, 2.2)
CENTRE = SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg)


def _butler(name: str) -> tuple[Butler, CountingStore]:
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    counting = CountingStore(Butler.create(f"memory://{name}").store)
    return Butler(f"memory://{name}", store=counting), counting


def _put(butler: Butler, n: int, **options: object) -> None:
    for visit, hdu in enumerate(pvis(n, shape=(120, 100), field=FIELD)):
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi", format="zarr", format_options=options or None)


def _history_requests(butler: Butler, counting: CountingStore) -> tuple[int, int, dict[str, int]]:
    """Stamps and data requests of one warm object history (11-pixel stamps at the field centre).

    The registry's one listing of its log (a warm Butler's refresh) is not counted.
    """
    butler.cutouts_at(CENTRE, 11, "calexp")  # warm: registry view and sky index
    counting.reset()
    result = butler.cutouts_at(CENTRE, 11, "calexp")
    for ref, stamp in result[0]:  # the pixels are the image's
        image = butler.get(ref).data
        np.testing.assert_array_equal(stamp.data, image[stamp.slices_original])
    counting.reset()
    butler.cutouts_at(CENTRE, 11, "calexp")
    by_method = dict(counting.requests_by_method)
    assert by_method.pop("list", 0) <= 1, by_method
    return len(result[0]), sum(by_method.values()), by_method


def test_unsharded_zarr_stamp_is_one_request_per_image() -> None:
    butler, counting = _butler("zl-plain")
    _put(butler, 6)
    ref = butler.query("calexp")[0]
    assert ref.layout is not None and ref.layout["array"] == "" and "fits_header" not in ref.layout["metadata"][
        "attributes"]
    images, requests, by_method = _history_requests(butler, counting)
    assert images >= 5
    assert requests == images, by_method  # the chunk, no zarr.json
    butler.registry.write_checkpoint()  # the layout survives the checkpoint columns
    again = Butler(butler.uri, store=counting)
    assert _history_requests(again, counting)[1] == images


def test_group_image_reads_its_image_member_directly() -> None:
    butler, counting = _butler("zl-group")
    for visit, hdu in enumerate(pvis(4, shape=(120, 100), field=FIELD)):
        image = NDData(hdu.data, wcs=WCS(hdu.header), meta=hdu.header, mask=hdu.data > 1050)
        butler.put(image, "calexp", {"visit": visit}, run="pvi", format="zarr")
    assert butler.query("calexp")[0].layout["array"] == "image"
    images, requests, by_method = _history_requests(butler, counting)
    assert images >= 3 and requests == images, by_method  # no group zarr.json, no array zarr.json


def test_sharded_zarr_costs_its_index_read_and_no_listing() -> None:
    butler, counting = _butler("zl-shard")
    _put(butler, 4, chunks=(16, 16), shards=(64, 64))
    assert butler.query("calexp")[0].layout["shards"]
    images, requests, by_method = _history_requests(butler, counting)
    assert images >= 3
    assert by_method.get("get", 0) == 0, by_method  # no zarr.json, and (above) no listing of the shards
    # per image: one shard index, then the inner chunks an 11-pixel stamp touches (1 to 4) in one call
    assert 2 * images <= requests <= 5 * images, by_method


def test_refs_without_a_layout_read_zarr_json() -> None:
    import objbutler.formats.zarr_layout as zarr_layout

    butler, counting = _butler("zl-old")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zarr_layout, "zarr_layout", lambda objects: None)
        _put(butler, 4)
    assert all(ref.layout is None for ref in butler.query("calexp"))
    images, requests, by_method = _history_requests(butler, counting)
    assert images >= 3 and requests == 2 * images, by_method  # zarr.json, then the chunk


def test_box_cutouts_read_no_zarr_json_even_for_the_wcs() -> None:
    butler, counting = _butler("zl-wcs")
    _put(butler, 1)
    ref = butler.query("calexp")[0]
    counting.reset()
    (stamp,) = butler.get_cutouts(ref, [Box(10, 20, 30, 35)])
    assert counting.requests == 1
    stored = butler.get(ref)
    np.testing.assert_array_equal(stamp.data, stored.data[20:35, 10:30])
    counting.reset()
    grid = np.array([[0.0, 0.0], [19.0, 14.0]])
    np.testing.assert_allclose(stamp.wcs.all_pix2world(grid, 0), stored.wcs.all_pix2world(grid + np.array([10, 20]), 0),
                               rtol=0, atol=1e-10)
    assert counting.requests == 0  # the WCS of the registry's sky record: no zarr.json


def test_sky_position_cutouts_and_get_wcs_read_no_zarr_json() -> None:
    butler, counting = _butler("zl-sky")
    _put(butler, 1)
    ref = butler.query("calexp")[0]
    stored = butler.get(ref)
    counting.reset()
    wcs = butler.get_wcs(ref)
    (stamp,) = butler.get_cutouts(ref, CENTRE, size=9)
    assert counting.requests_by_method.get("get", 0) == 0, dict(counting.requests_by_method)
    assert counting.requests == 1  # the one chunk
    grid = np.array([[0.0, 0.0], [50.0, 40.0]])
    np.testing.assert_allclose(wcs.all_pix2world(grid, 0), stored.wcs.all_pix2world(grid, 0), rtol=0, atol=1e-10)
    x, y = stored.wcs.world_to_pixel(CENTRE)
    x0, y0 = int(np.ceil(float(x) - 4.5)), int(np.ceil(float(y) - 4.5))
    np.testing.assert_array_equal(stamp.data, stored.data[y0:y0 + 9, x0:x0 + 9])
    wcs.wcs.crval = [0.0, 0.0]  # the caller's own copy: the next reader is not affected
    assert butler.get_wcs(ref).wcs.crval[0] != 0.0


@pytest.mark.parametrize("broken", [
    {"zarr": 1, "array": "", "metadata": {"zarr_format": 2}},
    {"zarr": 1, "array": "../elsewhere", "metadata": {}},
    {"zarr": 99},
    "not a dict",
])
def test_a_malformed_layout_is_ignored(broken: object) -> None:
    butler, counting = _butler("zl-broken")
    _put(butler, 1)
    ref = dataclasses.replace(butler.query("calexp")[0], layout=broken)
    counting.reset()
    (stamp,) = butler.get_cutouts(ref, [Box(0, 0, 5, 5)])
    np.testing.assert_array_equal(stamp.data, butler.get(ref).data[:5, :5])
    assert counting.requests_by_method["get"] >= 1  # zarr.json was read instead
