"""The astropy-free FITS writer of bare arrays: the same bytes and layout as astropy's, and used by put."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from objbutler import Butler
from objbutler.formats._image import as_image
from objbutler.formats.dispatch import encode_dataset
from objbutler.formats.fits import encode_fits
from objbutler.formats.fits_headers import fits_layout
from objbutler.formats.fits_plain import BITPIX_OF, encode_plain_fits

NATIVE = ["uint8", "int16", "int32", "int64", "float32", "float64", ">f4", "<i8", ">i2"]
SHAPES = [(16, 16), (7,), (3, 5, 2), (1, 1), (100, 37)]


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = []
    for dtype in NATIVE:
        for shape in SHAPES:
            array = (rng.standard_normal(shape) * 1000).astype(dtype)
            if array.dtype.kind == "f":
                array.flat[0] = np.nan
                array.flat[-1] = -np.inf
            arrays += [array, array.T if array.ndim > 1 else array[::2]]  # and a non-contiguous view
    return arrays


@pytest.mark.parametrize("array", _arrays(), ids=lambda a: f"{a.dtype.str}{a.shape}{a.flags.c_contiguous}")
def test_same_bytes_and_layout_as_astropy(array: np.ndarray) -> None:
    plain = encode_plain_fits(as_image(array))
    assert plain is not None
    expected = encode_fits(as_image(array))
    assert plain[0] == expected
    assert plain[1] == fits_layout(expected)


@pytest.mark.parametrize("obj", [
    np.zeros((4, 4), dtype=np.uint16),  # BZERO
    np.zeros((4, 4), dtype=np.int8),  # BZERO
    fits.PrimaryHDU(np.zeros((4, 4), dtype=np.float32), fits.Header([("OBJECT", "m31")])),  # a card
])
def test_not_plain_goes_to_astropy(obj: Any) -> None:
    assert encode_plain_fits(as_image(obj)) is None


def test_compression_goes_to_astropy() -> None:
    image = as_image(np.zeros((4, 4), dtype=np.float32))
    assert encode_plain_fits(image, compression="GZIP_2") is None
    assert encode_plain_fits(image, compression=None) is not None
    assert set(BITPIX_OF.values()) == {8, 16, 32, 64, -32, -64}


def test_put_many_of_arrays_never_calls_astropy_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count astropy FITS writes during put_many of bare arrays (none), and read the bytes back."""
    butler = Butler.create(str(tmp_path / "repo"))
    writes = []
    original = fits.HDUList.writeto

    def counting(self: fits.HDUList, *args: Any, **kwargs: Any) -> None:
        writes.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(fits.HDUList, "writeto", counting)
    arrays = [np.full((16, 16), i, dtype=np.float32) for i in range(20)]
    refs = butler.put_many([(a, "small", {"visit": i}) for i, a in enumerate(arrays)], run="r")
    assert writes == []
    for ref, array in zip(refs, arrays, strict=True):
        stored = butler.store.get(ref.key)
        assert stored == encode_fits(as_image(array))
        assert ref.layout == {"hdu": 0, "data_start": 2880, "shape": [16, 16], "bitpix": -32}
        np.testing.assert_array_equal(np.asarray(butler.get(ref).data), array)
    writes.clear()
    encode_dataset(fits.PrimaryHDU(arrays[0], fits.Header([("OBJECT", "m31")])), "fits", "fits", {})
    assert writes == [1]  # an image with cards still goes through astropy
