"""Data in equals data out for files written by others, through ``ingest`` and ``clone`` (adversarial).

What is checked, on local repositories only (no servers):

* every FITS file of astropy's own test data (``io/fits/tests/data``, ``io/fits/hdu/compressed/tests/data``,
  ``wcs/tests/data/*.fits``) ingested with ``transfer="copy"`` and ``"direct"``: either every image HDU
  reads back as astropy reads it (pixels bit for bit and dtype, including scaled and unsigned integers
  and BLANK, tile-compressed HDUs, user header cards, the celestial WCS) and the registered object is
  the file itself (size, SHA-256, and for a copy the very bytes), or the file is refused with an
  :class:`~objbutler.errors.ObjButlerError` and nothing is stored;
* hand-made files: scaled/unsigned integers with BLANK (whole reads and cutouts), trailing bytes,
  truncation, ``.fits.gz``, header keys missing or of the wrong type, duplicate data IDs in one ingest
  (per-source results, no leftover copies), a direct file replaced or deleted after ingest (``get``
  and ``fsck`` must tell), an HDU that follows a zero-row binary table with a heap, a file whose name
  holds glob characters, Zarr arrays written by zarr-python (fill values, missing chunks, shards,
  codecs);
* ``clone`` of a repository with FITS, Zarr, Parquet tables, JSON dicts, ingested copies and direct
  datasets in several runs and types, into a local directory, read with the source and the direct
  files gone: every dataset equal, the registry equal (refs, dataset types, dimensions), cloning
  again and after new puts incremental, and a clone killed midway by an exception injected into the
  destination store, then resumed, ending equal and clean under ``fsck``.

Failing tests are the record of bugs found; they are not marked xfail.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import astropy
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from objbutler import Box, Butler, DatasetRef
from objbutler.clone import clone, cloned_ref
from objbutler.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    InvalidKeyError,
    NotFoundError,
    ObjButlerError,
)
from objbutler.ingest import ingest_objects
from objbutler.maintenance import fsck
from objbutler.stores import open_store
from objbutler.testing.faults import FailingWritesStore

TRANSFERS = ("copy", "direct")
ASTROPY = Path(astropy.__file__).parent
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK",
               "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "", "END", "EXTNAME", "EXTVER", "INHERIT", "GROUPS"}


def _corpus() -> list[Path]:
    found = [*(ASTROPY / "io/fits/tests/data").glob("*.fits*"),
             *(ASTROPY / "io/fits/hdu/compressed/tests/data").glob("*.fits*"),
             *(ASTROPY / "wcs/tests/data").glob("*.fits")]
    return sorted(path for path in found if path.is_file())


def _astropy_open(path: Path) -> fits.HDUList | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path)
            hdul.readall()
            return hdul
    except Exception:
        return None


def _image_hdus(hdul: fits.HDUList) -> list[int]:
    out = []
    for index, hdu in enumerate(hdul):
        if isinstance(hdu, fits.GroupsHDU) or not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                data = hdu.data
            except Exception:
                continue
        if data is not None and data.size:
            out.append(index)
    return out


def _same_pixels(got: Any, expected: np.ndarray) -> bool:
    got = np.asarray(got)
    return (got.shape == expected.shape and got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
            and np.array_equal(got, expected, equal_nan=expected.dtype.kind in "fc"))


def _wcs_keys(header: fits.Header) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return set(WCS(header, relax=True).to_header(relax=True))
        except Exception:
            return set()


_WCS_FAMILY = ("CRPIX", "CRVAL", "CTYPE", "CUNIT", "CDELT", "CROTA", "CD", "PC", "PV", "PS", "WCSAXES", "LONPOLE",
               "LATPOLE", "RADESYS", "EQUINOX", "EPOCH", "A_", "B_", "AP_", "BP_", "MJD", "DATE", "CNPIX", "PLT",
               "PPO", "AMD", "DSS", "XPIXEL", "YPIXEL", "Z", "TTYPE", "TFORM", "TFIELDS", "THEAP", "TZERO", "TSCAL")


def _user_cards(header: fits.Header) -> dict[str, Any]:
    """Cards that are neither structure nor WCS (objbutler documents rewriting the WCS ones)."""
    skip = _wcs_keys(header)
    out = {}
    for card in header.cards:
        key = card.keyword
        if key in _STRUCTURAL or key in skip or key.startswith(("NAXIS", *_WCS_FAMILY)) or key in out:
            continue
        out[key] = card.value
    return out


def _stored_nothing(butler: Butler) -> bool:
    return not butler.query() and not list(butler.store.list("data/"))


def _ingest(butler: Butler, sources: Any, transfer: str, **options: Any) -> tuple[list[DatasetRef], list[Any]]:
    return ingest_objects(butler, "raw", sources, run="r", transfer=transfer, progress=False, **options)


# -- astropy's own test files ----------------------------------------------------------------------------


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_astropy_corpus_reads_back_as_astropy_reads_it(tmp_path: Path, transfer: str) -> None:
    files = _corpus()
    assert len(files) > 40, "astropy's test data was not found"
    problems: list[str] = []
    ingested = 0
    for number, path in enumerate(files):
        hdul = _astropy_open(path)
        images = _image_hdus(hdul) if hdul is not None else []
        butler = Butler.create(str(tmp_path / f"repo{number}"))
        refs, failures = _ingest(butler, str(path), transfer, data_id={"n": number})
        if failures:
            (_, error), = failures
            if not isinstance(error, ObjButlerError) or not str(error):
                problems.append(f"{path.name}: refused outside the error tree: {error!r}")
            if not _stored_nothing(butler):
                problems.append(f"{path.name}: refused ({error}) but something was stored")
            continue
        assert hdul is not None, f"{path.name}: ingested a file astropy cannot open"
        ingested += 1
        (ref,) = refs
        raw = path.read_bytes()
        if ref.size != len(raw) or ref.checksum != f"sha256:{hashlib.sha256(raw).hexdigest()}":
            problems.append(f"{path.name}: recorded size/checksum are not the file's")
        if transfer == "direct" and ref.key != path.as_uri():
            problems.append(f"{path.name}: direct key {ref.key} is not the file {path.as_uri()}")
        if transfer == "copy" and butler.store.get(ref.key) != raw:
            problems.append(f"{path.name}: the copy's bytes are not the file's")
        default = ref.layout.get("hdu") if ref.layout else None
        if default != (images[0] if images else None):
            problems.append(f"{path.name}: default HDU {default}, astropy's first image with data is {images[:1]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for index in images:
                hdu = hdul[index]
                try:
                    got = butler.get(ref, hdu=index)
                except ObjButlerError as exc:
                    problems.append(f"{path.name}[{index}]: ingested but get raised {exc!r}")
                    continue
                if not _same_pixels(got.data, hdu.data):
                    problems.append(f"{path.name}[{index}]: pixels {np.asarray(got.data).dtype} differ from "
                                    f"astropy's {hdu.data.dtype}")
                header = hdu.header
                for key, value in _user_cards(header).items():
                    if key not in got.meta:
                        problems.append(f"{path.name}[{index}]: card {key} is missing from meta")
                    elif got.meta[key] != value:
                        problems.append(f"{path.name}[{index}]: card {key} = {got.meta[key]!r}, astropy {value!r}")
                try:
                    wcs = WCS(header, fobj=hdul)
                except Exception:
                    continue
                if wcs.has_celestial and wcs.naxis == 2 and hdu.data.ndim == 2 and got.wcs is not None:
                    ny, nx = hdu.data.shape
                    ys, xs = np.mgrid[-3:ny + 3:5, -3:nx + 3:5]
                    expected = np.array(wcs.pixel_to_world_values(xs.ravel(), ys.ravel()))
                    actual = np.array(got.wcs.pixel_to_world_values(xs.ravel(), ys.ravel()))
                    if not np.allclose(actual, expected, rtol=0, atol=1e-9, equal_nan=True):
                        problems.append(f"{path.name}[{index}]: the WCS maps pixels elsewhere")
        hdul.close()
    assert ingested >= 20
    assert problems == []


# -- hand-made files ---------------------------------------------------------------------------------------


def _raw_image_extension(raw: np.ndarray, **cards: Any) -> bytes:
    """An IMAGE extension written byte by byte (raw big-endian pixels, the scaling cards as given)."""
    header = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", {"i": 8 * raw.itemsize, "u": 8, "f": -8 * raw.itemsize}
                                                          [raw.dtype.kind]),
                          ("NAXIS", 2), ("NAXIS1", raw.shape[1]), ("NAXIS2", raw.shape[0]), ("PCOUNT", 0),
                          ("GCOUNT", 1), *cards.items()])
    data = np.ascontiguousarray(raw, raw.dtype.newbyteorder(">")).tobytes()
    return header.tostring().encode() + data + b"\0" * (-len(data) % 2880)


def _primary(**cards: Any) -> bytes:
    header = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True), *cards.items()])
    return header.tostring().encode()


SCALED: dict[str, Callable[[np.random.Generator], bytes]] = {
    "uint16": lambda g: _raw_image_extension(g.integers(-2**15, 2**15, (13, 17)).astype("i2"), BZERO=32768),
    "uint32": lambda g: _raw_image_extension(g.integers(-2**31, 2**31, (13, 17)).astype("i4"), BZERO=2**31),
    "uint64": lambda g: _raw_image_extension(g.integers(-2**63, 2**63 - 1, (13, 17), dtype="i8"), BZERO=2**63),
    "int8": lambda g: _raw_image_extension(g.integers(0, 256, (13, 17)).astype("u1"), BZERO=-128),
    "int16 BLANK": lambda g: _raw_image_extension(g.integers(-5, 5, (13, 17)).astype("i2"), BLANK=3),
    "int16 BSCALE BZERO BLANK": lambda g: _raw_image_extension(g.integers(-5, 5, (13, 17)).astype("i2"),
                                                               BSCALE=0.5, BZERO=10.0, BLANK=-5),
    "int32 BSCALE": lambda g: _raw_image_extension(g.integers(-2**31, 2**31, (13, 17)).astype("i4"),
                                                   BSCALE=1e-3, BZERO=-7.25),
    "uint16 BLANK": lambda g: _raw_image_extension(g.integers(-5, 5, (13, 17)).astype("i2"), BZERO=32768, BLANK=-3),
    "uint8 BZERO": lambda g: _raw_image_extension(g.integers(0, 256, (13, 17)).astype("u1"), BZERO=3.0),
    "float32 BSCALE": lambda g: _raw_image_extension(g.normal(0, 1, (13, 17)).astype("f4"), BSCALE=2.0, BZERO=1.0),
    "float64 BLANK (ignored)": lambda g: _raw_image_extension(g.normal(0, 1, (13, 17)).astype("f8"), BLANK=1),
    "int16 BLANK not an int": lambda g: _raw_image_extension(g.integers(-5, 5, (13, 17)).astype("i2"), BLANK="x"),
}


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_scaled_and_unsigned_integers_bit_for_bit(tmp_path: Path, transfer: str) -> None:
    rng = np.random.default_rng(7)
    boxes = [Box(0, 0, 5, 5), Box(3, 4, 17, 13), Box(10, 8, 20, 20)]
    slices = [np.s_[0:5, 0:5], np.s_[4:13, 3:17], np.s_[8:13, 10:17]]
    for number, (name, make) in enumerate(SCALED.items()):
        path = tmp_path / f"scaled{number}.fits"
        path.write_bytes(_primary(EXPNUM=number) + make(rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = fits.getdata(path, 1)
        butler = Butler.create(str(tmp_path / f"repo{number}"))
        (ref,), failures = _ingest(butler, str(path), transfer, header_keys={"visit": "EXPNUM"})
        assert failures == []
        assert _same_pixels(butler.get(ref).data, expected), name
        for stamp, where in zip(butler.get_cutouts(ref, boxes), slices, strict=True):
            assert _same_pixels(stamp.data, expected[where]), f"{name}: cutout {where}"


def _mef(path: Path, image: np.ndarray, **cards: Any) -> None:
    primary = fits.PrimaryHDU(header=fits.Header(list(cards.items())))
    fits.HDUList([primary, fits.ImageHDU(image, name="SCI"),
                  fits.CompImageHDU(image.astype("f4") * 2, name="CMP")]).writeto(path, overwrite=True)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).normal(100, 5, (30, 40)).astype("f4")


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_trailing_bytes_truncation_and_gzip(tmp_path: Path, transfer: str, image: np.ndarray) -> None:
    base = tmp_path / "base.fits"
    _mef(base, image, EXPNUM=1)
    data = base.read_bytes()
    trailing = tmp_path / "trailing.fits"
    trailing.write_bytes(data + b"not FITS at all" * 50)
    butler = Butler.create(str(tmp_path / "repo"))
    (ref,), failures = _ingest(butler, str(trailing), transfer, header_keys={"visit": "EXPNUM"})
    assert failures == []
    assert _same_pixels(butler.get(ref).data, image)
    assert _same_pixels(butler.get(ref, hdu="CMP").data, fits.getdata(trailing, "CMP"))
    assert ref.size == len(data) + 15 * 50
    last = tmp_path / "last-hdu-cut.fits"  # the chosen HDU whole, the last one truncated: astropy drops it
    last.write_bytes(data[:-3000])
    other = Butler.create(str(tmp_path / "repo-last"))
    (ref,), failures = _ingest(other, str(last), transfer, header_keys={"visit": "EXPNUM"})
    assert failures == [] and _same_pixels(other.get(ref).data, image)
    with pytest.raises(FormatError, match="truncated"):
        other.get(ref, hdu="CMP")
    for visit, cut in enumerate((5760 + 1000, 2880 + 100, 100, 0), start=2):
        broken = tmp_path / f"cut{visit}.fits"
        broken.write_bytes(_primary(EXPNUM=visit)[:cut] if cut < 2880 else data[:cut])
        other = Butler.create(str(tmp_path / f"repo{visit}"))
        refs, failures = _ingest(other, str(broken), transfer, header_keys={"visit": "EXPNUM"})
        assert refs == [] and len(failures) == 1, cut
        assert isinstance(failures[0][1], FormatError), failures
        assert _stored_nothing(other)
    gz = tmp_path / "image.fits.gz"
    fits.HDUList([fits.PrimaryHDU(image, header=fits.Header([("EXPNUM", 9)]))]).writeto(gz)
    other = Butler.create(str(tmp_path / "repo-gz"))
    refs, failures = _ingest(other, str(gz), transfer, header_keys={"visit": "EXPNUM"})
    assert refs == [] and isinstance(failures[0][1], FormatError) and "gzip" in str(failures[0][1])
    assert _stored_nothing(other)


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_header_keys_missing_or_of_the_wrong_type_fail_their_source_alone(tmp_path: Path, transfer: str,
                                                                          image: np.ndarray) -> None:
    values: dict[str, Any] = {"good": 5, "float-int": 6.0, "bool": True, "fraction": 1.5, "unsafe": "x/y",
                              "empty": ""}
    for name, value in values.items():
        _mef(tmp_path / f"{name}.fits", image, EXPNUM=value)
    _mef(tmp_path / "missing.fits", image, OTHER=1)
    butler = Butler.create(str(tmp_path / "repo"))
    refs, failures = _ingest(butler, str(tmp_path / "*.fits"), transfer, header_keys={"visit": "EXPNUM"})
    assert sorted(ref.data_id["visit"] for ref in refs) == [5, 6]
    failed = {Path(source).stem: error for source, error in failures}
    assert sorted(failed) == ["bool", "empty", "fraction", "missing", "unsafe"]
    assert all(isinstance(error, InvalidKeyError) for error in failed.values()), failed
    assert len(butler.query()) == 2
    if transfer == "copy":
        assert len(list(butler.store.list("data/"))) == 2
    report = fsck(butler, verify_checksums=True)
    assert report.ok and not report.orphans


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_header_values_of_both_kinds_in_one_ingest_are_committed_or_refused(tmp_path: Path, transfer: str,
                                                                            image: np.ndarray) -> None:
    """EXPNUM = 5 in one file and EXPNUM = 'abc' in another: a data ID key holds one kind (put_many refuses
    the second item with a ConflictError); whatever ingest reports as ingested must be in the registry."""
    _mef(tmp_path / "a.fits", image, EXPNUM=5)
    _mef(tmp_path / "b.fits", image, EXPNUM="abc")
    butler = Butler.create(str(tmp_path / "repo"))
    refs, failures = _ingest(butler, str(tmp_path / "*.fits"), transfer, header_keys={"visit": "EXPNUM"})
    assert len(refs) + len(failures) == 2
    assert all(isinstance(error, ConflictError) for _, error in failures), failures
    reported = sorted(ref.id for ref in refs)
    assert sorted(ref.id for ref in Butler(str(tmp_path / "repo")).query()) == reported, (
        f"ingest reported {[ref.data_id for ref in refs]} as ingested, the registry holds "
        f"{[ref.data_id for ref in Butler(str(tmp_path / 'repo')).query()]}")
    assert len(refs) == 1
    for ref in refs:
        assert _same_pixels(butler.get(ref).data, image)
    report = fsck(butler)
    assert report.ok and not report.orphans, report.orphans


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_duplicate_data_ids_in_one_ingest_leave_one_winner_and_no_leftovers(tmp_path: Path, transfer: str,
                                                                            image: np.ndarray) -> None:
    for number in range(6):
        _mef(tmp_path / f"d{number}.fits", image + number, EXPNUM=7 if number < 4 else number)
    butler = Butler.create(str(tmp_path / "repo"))
    refs, failures = _ingest(butler, str(tmp_path / "d*.fits"), transfer, header_keys={"visit": "EXPNUM"},
                             batch_size=3, jobs=2)
    assert sorted(ref.data_id["visit"] for ref in refs) == [4, 5, 7]
    assert len(failures) == 3 and all(isinstance(error, ConflictError) for _, error in failures)
    winner = butler.find("raw", {"visit": 7}, run="r")
    source = Path(winner.key.removeprefix("file://")) if winner.is_direct else None
    expected = fits.getdata(source, "SCI") if source else None
    got = butler.get(winner).data
    assert expected is None or _same_pixels(got, expected)
    if transfer == "copy":
        assert len(list(butler.store.list("data/"))) == 3
    report = fsck(butler, verify_checksums=True)
    assert report.ok and not report.orphans


def test_direct_file_replaced_or_deleted_after_ingest_is_never_served_by_get(tmp_path: Path,
                                                                             image: np.ndarray) -> None:
    for visit in (1, 2):
        _mef(tmp_path / f"raw{visit}.fits", image, EXPNUM=visit)
    butler = Butler.create(str(tmp_path / "repo"))
    direct, failures = _ingest(butler, str(tmp_path / "raw*.fits"), "direct", header_keys={"visit": "EXPNUM"})
    assert failures == [] and len(direct) == 2
    copies, failures = ingest_objects(butler, "raw", str(tmp_path / "raw*.fits"), run="copied", progress=False,
                                      header_keys={"visit": "EXPNUM"})
    assert failures == []
    size = (tmp_path / "raw1.fits").stat().st_size
    _mef(tmp_path / "raw1.fits", image + 1, EXPNUM=1)  # same size, other pixels
    assert (tmp_path / "raw1.fits").stat().st_size == size
    (tmp_path / "raw2.fits").unlink()
    with pytest.raises(FormatError, match="checksum"):
        butler.get("raw", {"visit": 1}, run="r")
    with pytest.raises(NotFoundError, match="deleted outside objbutler"):
        butler.get("raw", {"visit": 2}, run="r")
    report = fsck(butler)
    assert sorted(ref.data_id["visit"] for ref, _ in report.dangling) == [1, 2]
    for ref in copies:  # the copies do not change
        assert _same_pixels(butler.get(ref).data, image)


def test_hdu_after_a_zero_row_table_with_a_heap_is_the_one_astropy_reads(tmp_path: Path) -> None:
    """A BINTABLE with NAXIS2 = 0 and PCOUNT > 0 still has PCOUNT bytes of data (FITS 4.0, eq. 2).

    The heap here holds what looks like an image extension; astropy skips it and reads the real one.
    """
    real = np.arange(12 * 10, dtype=">f4").reshape(12, 10)
    decoy = np.full((12, 10), -1, dtype=">f4")
    heap = fits.ImageHDU(decoy, name="SCI").header.tostring().encode() + decoy.tobytes()
    heap += b"\0" * (-len(heap) % 2880)
    table = fits.Header([("XTENSION", "BINTABLE"), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", 8), ("NAXIS2", 0),
                         ("PCOUNT", len(heap)), ("GCOUNT", 1), ("TFIELDS", 1), ("TFORM1", "1PB(0)"),
                         ("TTYPE1", "V")])
    path = tmp_path / "heap.fits"
    path.write_bytes(_primary(EXPNUM=5) + table.tostring().encode() + heap
                     + _raw_image_extension(real.astype("f4"), EXTNAME="SCI"))
    with fits.open(path) as hdul:
        assert len(hdul) == 3 and _same_pixels(hdul[2].data, real)
    for transfer in TRANSFERS:
        butler = Butler.create(str(tmp_path / transfer))
        (ref,), failures = _ingest(butler, str(path), transfer, header_keys={"visit": "EXPNUM"})
        assert failures == []
        assert _same_pixels(butler.get(ref).data, real), transfer
        (stamp,) = butler.get_cutouts(ref, [Box(0, 0, 10, 12)])
        assert _same_pixels(stamp.data, real), f"{transfer}: cutout served the bytes inside the table's heap"


@pytest.mark.parametrize("spelling", ["path", "file-uri"])
def test_a_file_named_with_glob_characters_is_that_file(tmp_path: Path, spelling: str) -> None:
    fits.PrimaryHDU(np.zeros((4, 4), "f4"), header=fits.Header([("EXPNUM", 1)])).writeto(tmp_path / "r[1].fits")
    fits.PrimaryHDU(np.ones((4, 4), "f4"), header=fits.Header([("EXPNUM", 1)])).writeto(tmp_path / "r1.fits")
    named = tmp_path / "r[1].fits"
    source = str(named) if spelling == "path" else named.as_uri()  # the URI escapes the brackets: %5B1%5D
    butler = Butler.create(str(tmp_path / "repo"))
    refs, failures = _ingest(butler, source, "direct", header_keys={"visit": "EXPNUM"})
    assert failures == [] and len(refs) == 1
    assert refs[0].key == named.as_uri(), f"asked for {named.name}, registered {refs[0].key}"
    assert _same_pixels(butler.get(refs[0]).data, np.zeros((4, 4), "f4"))


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_zarr_arrays_written_by_zarr_python_read_back_equal(tmp_path: Path, transfer: str) -> None:
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(5)
    cases: dict[str, dict[str, Any]] = {
        "plain": {}, "fill 7, one chunk written": {"fill_value": 7, "write": np.s_[0:16, 0:16]},
        "nan fill": {"fill_value": float("nan"), "write": np.s_[0:10, 0:10]},
        "int16 fill -3": {"dtype": "i2", "fill_value": -3, "write": np.s_[0:20, :]},
        "sharded, partial": {"chunks": (8, 8), "shards": (16, 16), "fill_value": 2, "write": np.s_[0:9, 0:9]},
        "uneven chunks": {"shape": (37, 41), "chunks": (10, 7)},
        "big-endian": {"serializer": zarr.codecs.BytesCodec(endian="big")},
        "transposed": {"filters": [zarr.codecs.TransposeCodec(order=(1, 0))]},
    }
    for number, (name, options) in enumerate(cases.items()):
        options = {"shape": (40, 50), "chunks": (16, 16), "dtype": "f4", "fill_value": 0, **options}
        where = options.pop("write", np.s_[...])
        array = zarr.create_array(str(tmp_path / f"a{number}.zarr"), attributes={"TRACT": number}, **options)
        array[where] = rng.normal(0, 100, options["shape"]).astype(options["dtype"])[where]
        expected = array[...]
        butler = Butler.create(str(tmp_path / f"repo{number}"))
        (ref,), failures = ingest_objects(butler, "coadd", str(tmp_path / f"a{number}.zarr"), run="r",
                                          header_keys={"tract": "TRACT"}, transfer=transfer, progress=False)
        assert failures == []
        assert _same_pixels(butler.get(ref).data, expected), name
        (stamp,) = butler.get_cutouts(ref, [Box(3, 5, 20, 30)])
        assert _same_pixels(stamp.data, expected[5:30, 3:20]), name


# -- clone ------------------------------------------------------------------------------------------------


def _fill_source(root: Path) -> tuple[Butler, Path]:
    """A repository with FITS, Zarr, Parquet, JSON, ingested copies and direct datasets, in several runs."""
    zarr = pytest.importorskip("zarr")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(11)
    for visit in (1, 2, 3):
        _mef(raw / f"r{visit}.fits", rng.integers(0, 1000, (20, 30)).astype("i2"), EXPNUM=visit)
    array = zarr.create_array(str(raw / "a.zarr"), shape=(40, 40), chunks=(16, 16), dtype="f4", fill_value=0,
                              attributes={"TRACT": 5})
    array[:30, :] = rng.normal(0, 1, (30, 40)).astype("f4")
    src = Butler.create(str(root / "src"))
    header = fits.Header([("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", 150.0), ("CRVAL2", 2.0),
                          ("CRPIX1", 16.0), ("CRPIX2", 12.0), ("CDELT1", -5e-5), ("CDELT2", 5e-5), ("SEED", 1)])
    for run in ("a", "b"):
        fits_ref = src.put(fits.PrimaryHDU(rng.normal(0, 1, (24, 32)).astype("f4"), header=header), "calexp",
                           {"visit": 1}, run=run, format="fits")
        src.put(rng.normal(0, 1, (24, 32)), "calexp", {"visit": 2}, run=run, format="zarr")
        src.put({"seeing": 0.7, "nested": {"list": [1, 2.5, "x"]}}, "metric", {"visit": 1}, run=run,
                inputs=[fits_ref])
        src.put(Table({"id": [1, 2, 3], "flux": [0.5, np.nan, 2.0], "name": ["a", "b", "c"]}), "catalog",
                {"visit": 1}, run=run)
    for run, transfer, hdu in (("copied", "copy", None), ("direct", "direct", None), ("direct-cmp", "direct", "CMP")):
        refs, failures = ingest_objects(src, "raw", str(raw / "r*.fits"), run=run, header_keys={"visit": "EXPNUM"},
                                        transfer=transfer, hdu=hdu, progress=False)
        assert failures == [] and len(refs) == 3
    for run, transfer in (("copied", "copy"), ("direct", "direct")):
        refs, failures = ingest_objects(src, "coadd", str(raw / "a.zarr"), run=run, header_keys={"tract": "TRACT"},
                                        transfer=transfer, progress=False)
        assert failures == [] and len(refs) == 1
    return src, raw


def _value(obj: Any) -> Any:
    """A dataset as plain comparable values."""
    if isinstance(obj, Table):
        return [(name, str(obj[name].dtype), repr(np.asarray(obj[name]).tolist())) for name in obj.colnames]
    if hasattr(obj, "data") and hasattr(obj, "meta"):
        data = np.asarray(obj.data)
        return (str(data.dtype.newbyteorder("=")), data.shape, np.ascontiguousarray(data).tobytes(),
                sorted((str(k), repr(v)) for k, v in dict(obj.meta).items()))
    return json.dumps(obj, sort_keys=True)


def _registry(butler: Butler) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    state = butler.registry.refresh()
    refs = sorted(json.dumps({k: v for k, v in cloned_ref(ref).to_json().items() if k != "repository"},
                             sort_keys=True) for ref in state.all_refs())
    return refs, dict(state.dataset_types), dict(state.dimensions)


def _contents(butler: Butler) -> dict[str, Any]:
    out = {}
    for ref in butler.query():
        out[ref.id] = _value(butler.get(ref))
        if ref.format in ("fits", "zarr"):
            stamps = butler.get_cutouts(ref, [Box(0, 0, 7, 5), Box(12, 10, 40, 40)], mode="partial", fill_value=0)
            out[ref.id + "/cutouts"] = [np.asarray(stamp.data).tobytes() for stamp in stamps]
    return out


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Butler, Path, dict[str, Any], tuple[Any, ...]]]:
    src, raw = _fill_source(tmp_path)
    yield src, raw, _contents(src), _registry(src)


def test_clone_reads_back_equal_with_the_source_and_the_direct_files_gone(
        tmp_path: Path, source: tuple[Butler, Path, dict[str, Any], tuple[Any, ...]]) -> None:
    src, raw, contents, registry = source
    report = clone(src, str(tmp_path / "dst"), progress=False)
    assert report.ok and len(report.copied) == len(src.query()) == report.selected
    shutil.rmtree(tmp_path / "src")
    shutil.rmtree(raw)
    dst = Butler(str(tmp_path / "dst"))
    assert not any(ref.is_direct for ref in dst.query())
    assert _registry(dst) == registry
    assert _contents(dst) == contents
    check = fsck(dst, verify_checksums=True)
    assert check.ok and not check.orphans


def test_clone_twice_and_after_new_puts_is_incremental(
        tmp_path: Path, source: tuple[Butler, Path, dict[str, Any], tuple[Any, ...]]) -> None:
    src, _, _, _ = source
    first = clone(src, str(tmp_path / "dst"), progress=False)
    again = clone(src, str(tmp_path / "dst"), progress=False)
    assert again.ok and again.copied == [] and len(again.skipped) == len(first.copied)
    new = [src.put({"late": i}, "metric", {"visit": 10 + i}, run="c") for i in range(3)]
    new.append(src.put(np.arange(6.0).reshape(2, 3), "calexp", {"visit": 3}, run="a", format="zarr"))
    third = clone(src, str(tmp_path / "dst"), progress=False)
    assert third.ok and sorted(ref.id for ref in third.copied) == sorted(ref.id for ref in new)
    dst = Butler(str(tmp_path / "dst"))
    assert _registry(dst) == _registry(src)
    assert _contents(dst) == _contents(src)


class _KilledError(Exception):
    """Stands for the process dying: not an ObjButlerError, so nothing in objbutler catches it."""


@pytest.mark.parametrize("where", ["data", "commit"])
def test_interrupted_clone_resumes_to_an_equal_clean_copy(
        tmp_path: Path, source: tuple[Butler, Path, dict[str, Any], tuple[Any, ...]], where: str) -> None:
    src, _, contents, registry = source
    Butler.create(str(tmp_path / "dst"))
    counter = itertools.count()
    lock = threading.Lock()

    def should_fail(method: str, key: str) -> bool:
        if not key.startswith("data/" if where == "data" else "manifest/log/"):
            return False
        with lock:
            return next(counter) >= (9 if where == "data" else 1)

    dying = FailingWritesStore(open_store(str(tmp_path / "dst")), should_fail, error=_KilledError)
    with pytest.raises((_KilledError, CommitOutcomeUnknownError)):  # a commit write that dies is reported so
        clone(src, Butler(str(tmp_path / "dst"), store=dying), progress=False, batch_size=4, jobs=2)
    halfway = Butler(str(tmp_path / "dst"))
    assert 0 < len(halfway.query()) < len(src.query())
    resumed = clone(src, str(tmp_path / "dst"), progress=False)
    assert resumed.ok and len(resumed.copied) + len(resumed.skipped) == len(src.query())
    dst = Butler(str(tmp_path / "dst"))
    assert _registry(dst) == registry
    assert _contents(dst) == contents
    check = fsck(dst, verify_checksums=True)
    assert check.ok and not check.orphans, check.orphans


def test_clone_refuses_a_direct_file_replaced_since_ingest(tmp_path: Path, image: np.ndarray) -> None:
    _mef(tmp_path / "r1.fits", image, EXPNUM=1)
    src = Butler.create(str(tmp_path / "src"))
    (ref,), failures = _ingest(src, str(tmp_path / "r1.fits"), "direct", header_keys={"visit": "EXPNUM"})
    assert failures == []
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(header=fits.Header([("EXPNUM", 1)])), fits.ImageHDU(image + 1, name="SCI"),
                  fits.CompImageHDU(image * 2, name="CMP")]).writeto(buffer)
    (tmp_path / "r1.fits").write_bytes(buffer.getvalue())
    report = clone(src, str(tmp_path / "dst"), progress=False)
    assert [failed.id for failed, _ in report.failed] == [ref.id]
    dst = Butler(str(tmp_path / "dst"))
    assert dst.query() == [] and not list(dst.store.list("data/"))
    assert os.path.exists(tmp_path / "r1.fits")
