"""put keeps what it is given, or refuses it with a clear error (issue 13).

CCDData/NDData (unit, mask, uncertainty, WCS, meta), scaled integers, tile-compressed HDUs and
multi-extension HDULists round-trip through FITS (and Zarr where it can hold them) on a local
directory, LocalStack and Swift; stock tools (``CCDData.read``, ``astropy.io.fits.open``,
zarr-python) read what was stored.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import astropy
import numpy as np
import pytest
import zarr
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance, NDData, StdDevUncertainty, UnknownUncertainty, VarianceUncertainty
from astropy.wcs import WCS
from conftest import Backend

from objbutler import Butler
from objbutler.errors import FormatError, NotSupportedError
from objbutler.formats import _internals

FITS_DATA = Path(astropy.__file__).parent / "io" / "fits" / "tests" / "data"
COMPRESSED_DATA = Path(astropy.__file__).parent / "io" / "fits" / "hdu" / "compressed" / "tests" / "data"


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [20.0, 15.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    return wcs


def _ccd() -> CCDData:
    data = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    return CCDData(data, unit="electron", mask=data % 7 == 0, uncertainty=StdDevUncertainty(np.sqrt(data) + 1),
                   wcs=_wcs(), meta={"OBJECT": "M13", "EXPTIME": 30.0})


def _stored(butler: Butler, ref: Any) -> bytes:
    return butler.store.get(ref.key)


def _butler(backend: Backend) -> Butler:
    return Butler.create(backend.new_uri(), **backend.options)


def _check_ccd(got: Any, put: CCDData) -> None:
    assert type(got) is type(put)
    assert got.unit == put.unit
    np.testing.assert_array_equal(got.data, put.data)
    np.testing.assert_array_equal(got.mask, put.mask)
    assert type(got.uncertainty) is type(put.uncertainty)
    np.testing.assert_array_equal(got.uncertainty.array, put.uncertainty.array)
    np.testing.assert_allclose(got.wcs.wcs.crval, put.wcs.wcs.crval)
    assert got.meta["OBJECT"] == "M13" and got.meta["EXPTIME"] == 30.0


def _round_trips(backend: Backend) -> None:
    butler = _butler(backend)
    ccd = _ccd()
    for fmt in ("fits", "zarr"):
        ref = butler.put(ccd, "calexp", {"visit": 1}, run=fmt, format=fmt)
        _check_ccd(butler.get(ref), ccd)
        stamp = butler.get_cutouts(ref, [(2, 3, 12, 9)])[0]
        np.testing.assert_array_equal(stamp.data, ccd.data[3:9, 2:12])
    ref = butler.put(ccd, "calexp", {"visit": 2}, run="fits", format="fits")
    read = CCDData.read(io.BytesIO(_stored(butler, ref)))  # stock astropy reads the stored object
    _check_ccd(read, ccd)
    with fits.open(COMPRESSED_DATA / "m13_rice.fits") as hdus:
        expected = hdus[1].data.copy()
        ref = butler.put(hdus, "raw", {"visit": 1}, run="fits", format="fits")
    with fits.open(io.BytesIO(_stored(butler, ref))) as stored:
        assert isinstance(stored[1], fits.CompImageHDU) and stored[1].compression_type == "RICE_1"
    np.testing.assert_array_equal(butler.get(ref).data, expected)


def test_round_trips_local(local_backend: Backend) -> None:
    _round_trips(local_backend)


@pytest.mark.servers
def test_round_trips_localstack(localstack_backend: Backend) -> None:
    _round_trips(localstack_backend)


@pytest.mark.servers
def test_round_trips_swift(swift_backend: Backend) -> None:
    _round_trips(swift_backend)


# -------------------------------------------------------------------- NDData and CCDData


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("uncertainty", [StdDevUncertainty, VarianceUncertainty, InverseVariance])
def test_ccddata_round_trips(local_backend: Backend, fmt: str, uncertainty: type) -> None:
    butler = _butler(local_backend)
    ccd = _ccd()
    ccd.uncertainty = uncertainty(ccd.uncertainty.array)
    ref = butler.put(ccd, "calexp", {"visit": 1}, run="r", format=fmt)
    _check_ccd(butler.get(ref), ccd)


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_nddata_keeps_unit_mask_and_uncertainty(local_backend: Backend, fmt: str) -> None:
    butler = _butler(local_backend)
    data = np.arange(12.0).reshape(3, 4)
    only_unit = butler.put(NDData(data, unit="adu"), "a", {"visit": 1}, run="r", format=fmt)
    got = butler.get(only_unit)
    assert type(got) is NDData and got.unit == u.adu and got.mask is None and got.uncertainty is None
    full = NDData(data, unit=u.Jy, mask=data > 5, uncertainty=VarianceUncertainty(data + 1))
    got = butler.get(butler.put(full, "a", {"visit": 2}, run="r", format=fmt))
    assert type(got) is NDData and got.unit == u.Jy
    np.testing.assert_array_equal(got.mask, data > 5)
    assert isinstance(got.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(got.uncertainty.array, data + 1)


def test_ccddata_read_of_the_stored_fits(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    ccd = _ccd()
    ref = butler.put(ccd, "calexp", {"visit": 1}, run="r")
    _check_ccd(CCDData.read(io.BytesIO(_stored(butler, ref))), ccd)
    with fits.open(io.BytesIO(_stored(butler, ref))) as hdus:
        assert [hdu.name for hdu in hdus] == ["PRIMARY", "MASK", "UNCERT"]
        assert hdus[0].header["BUNIT"] == "electron"


def test_zarr_group_opens_with_zarr(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    ccd = _ccd()
    ref = butler.put(ccd, "calexp", {"visit": 1}, run="r", format="zarr")
    group = zarr.open_group(zarr.storage.LocalStore(Path(butler.uri) / ref.key), mode="r")
    np.testing.assert_array_equal(group["image"][...], ccd.data)
    np.testing.assert_array_equal(group["mask"][...], ccd.mask)
    np.testing.assert_array_equal(group["uncertainty"][...], ccd.uncertainty.array)
    assert group["uncertainty"].attrs["objbutler"]["class"] == "StdDevUncertainty"
    assert group["image"].attrs["nddata"] == {"class": "CCDData", "unit": "electron"}
    assert butler.get_wcs(ref) is not None


def test_the_checksum_covers_every_object(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    for fmt in ("fits", "zarr"):
        ref = butler.put(_ccd(), "calexp", {"visit": 1}, run=fmt, format=fmt)
        store = butler.store
        mask_key = ref.key if fmt == "fits" else f"{ref.key}/mask/c/0/0"
        data = bytearray(store.get(mask_key))
        data[-1] ^= 0xFF
        store.put(mask_key, bytes(data))
        with pytest.raises(FormatError, match=r"checksum|size"):
            butler.get(ref)


@pytest.mark.parametrize("bad", [
    lambda d: NDData(d, uncertainty=UnknownUncertainty(d)),
    lambda d: NDData(d, psf=np.ones((3, 3))),
    lambda d: NDData(d, mask=np.zeros((2, 2), bool)),
    lambda d: NDData(d, unit="m", uncertainty=StdDevUncertainty(d, unit="cm")),
])
def test_what_cannot_be_stored_is_refused(local_backend: Backend, bad: Any) -> None:
    butler = _butler(local_backend)
    with pytest.raises(FormatError):
        butler.put(bad(np.ones((4, 5))), "a", {"visit": 1}, run="r")


# -------------------------------------------------------------------- scaled integers and compression


def _astropy_pixels(path: Path, index: int) -> np.ndarray:
    with fits.open(path) as hdus:
        return np.array(hdus[index].data)


def test_scaled_integers_stay_integers(local_backend: Backend) -> None:
    if not _internals.ASTROPY_SCALING:
        pytest.skip("raw-integer storage needs astropy's scaling internals; the public fallback keeps exact floats")
    butler = _butler(local_backend)
    path = FITS_DATA / "scale.fits"
    with fits.open(path) as hdus:
        ref = butler.put(hdus[0], "raw", {"visit": 1}, run="r")
    expected = _astropy_pixels(path, 0)
    got = butler.get(ref).data
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    with fits.open(io.BytesIO(_stored(butler, ref)), do_not_scale_image_data=True) as stored:
        assert stored[0].header["BITPIX"] == 16 and stored[0].header["BSCALE"] == pytest.approx(0.045777764213996)
    assert ref.size == path.stat().st_size
    stamp = butler.get_cutouts(ref, [(1, 2, 6, 9)])[0].data
    assert np.array_equal(stamp, expected[2:9, 1:6])


def test_int64_with_blank_stays_int64(local_backend: Backend, tmp_path: Path) -> None:
    if not _internals.ASTROPY_SCALING:
        pytest.skip("raw-integer storage needs astropy's scaling internals; the public fallback keeps exact floats")
    butler = _butler(local_backend)
    hdu = fits.PrimaryHDU(np.arange(12, dtype=np.int64).reshape(3, 4))
    hdu.header["BLANK"] = 5
    path = tmp_path / "blank.fits"
    hdu.writeto(path)
    with fits.open(path) as hdus:
        ref = butler.put(hdus, "raw", {"visit": 1}, run="r")
    expected = _astropy_pixels(path, 0)
    assert np.array_equal(butler.get(ref).data, expected, equal_nan=True)
    with fits.open(io.BytesIO(_stored(butler, ref)), do_not_scale_image_data=True) as stored:
        assert stored[0].header["BITPIX"] == 64 and stored[0].header["BLANK"] == 5


@pytest.mark.parametrize("name", ["m13_rice.fits", "m13_hcomp.fits", "m13_gzip.fits", "compressed_with_nan.fits"])
def test_compressed_images_stay_compressed(local_backend: Backend, name: str) -> None:
    butler = _butler(local_backend)
    path = COMPRESSED_DATA / name
    with fits.open(path) as hdus:
        original = hdus[1].compression_type
        ref = butler.put(hdus, "raw", {"visit": 1}, run="r")
    expected = _astropy_pixels(path, 1)
    got = butler.get(ref).data
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    with fits.open(io.BytesIO(_stored(butler, ref))) as stored:
        assert isinstance(stored[1], fits.CompImageHDU)
        if expected.dtype.kind != "f":
            assert stored[1].compression_type == original
    assert ref.size < 1.5 * path.stat().st_size  # not decompressed (m13: 69 KB, 184 KB decompressed)
    stamp = butler.get_cutouts(ref, [(2, 3, 9, 10)])[0].data
    assert np.array_equal(stamp, expected[3:10, 2:9], equal_nan=True)


def test_format_options_still_decide(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    with fits.open(COMPRESSED_DATA / "m13_rice.fits") as hdus:
        ref = butler.put(hdus, "raw", {"visit": 1}, run="r", format_options={"compression": None})
    with fits.open(io.BytesIO(_stored(butler, ref))) as stored:
        assert not any(isinstance(hdu, fits.CompImageHDU) for hdu in stored)
        assert stored[1].data.shape == (300, 300)


# -------------------------------------------------------------------- multi-extension files


def _mef() -> fits.HDUList:
    sci = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "Rubin"
    return fits.HDUList([primary, fits.ImageHDU(sci, _wcs().to_header(), name="SCI"),
                         fits.ImageHDU((sci > 100).astype(np.int32), name="MASK"),
                         fits.ImageHDU(sci * 2, name="VAR")])


def test_every_image_hdu_is_kept(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    hdus = _mef()
    ref = butler.put(hdus, "raw", {"visit": 1}, run="r")
    with fits.open(io.BytesIO(_stored(butler, ref))) as stored:
        assert [h.name for h in stored] == ["PRIMARY", "SCI", "MASK", "VAR"]
        assert stored[0].header["TELESCOP"] == "Rubin"
    np.testing.assert_array_equal(butler.get(ref).data, hdus["SCI"].data)
    for name in ("SCI", "MASK", "VAR"):
        np.testing.assert_array_equal(butler.get(ref, hdu=name).data, hdus[name].data)
        stamp = butler.get_cutouts(ref, [(1, 2, 5, 7)], hdu=name)[0].data
        np.testing.assert_array_equal(stamp, hdus[name].data[2:7, 1:5])
    np.testing.assert_array_equal(butler.get(ref, hdu=3).data, hdus["VAR"].data)


def test_zarr_refuses_several_hdus_by_name(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    with pytest.raises(FormatError, match="MASK"):
        butler.put(_mef(), "raw", {"visit": 1}, run="r", format="zarr")
    ref = butler.put(np.ones((3, 3)), "raw", {"visit": 2}, run="r", format="zarr")
    with pytest.raises(NotSupportedError):
        butler.get(ref, hdu="SCI")


def test_tables_in_an_hdulist_are_refused(local_backend: Backend) -> None:
    butler = _butler(local_backend)
    hdus = fits.HDUList([fits.PrimaryHDU(np.ones((3, 3))), fits.BinTableHDU.from_columns(
        [fits.Column("a", "E", array=np.arange(3.0))], name="CAT")])
    with pytest.raises(FormatError, match="CAT"):
        butler.put(hdus, "raw", {"visit": 1}, run="r")
