"""``cutouts-at --out NAME.zarr``: the group stock zarr reads, its stamps and results, resuming and refusing.

Every check reads the group with plain ``zarr.open_group`` (no objbutler) and compares it with what
``Butler.cutouts_at`` returns, with astropy's ``Cutout2D`` on the images as put, and with the
directory writer's ``results.csv``.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from click.testing import CliRunner

import objbutler.sky.catalog_zarr as catalog_zarr
from objbutler import Butler
from objbutler.cli import main
from objbutler.errors import AlreadyExistsError, InvalidCutoutError
from objbutler.sky.catalog import COLUMNS, write_catalog_cutouts
from objbutler.testing.skyfield import pvis

FIELD = (150.1, 2.2)


def _repo(tmp_path: Path, n: int = 4, formats: tuple[str, ...] = ("fits", "zarr"),
          dtype: str | None = None) -> tuple[Butler, list[fits.PrimaryHDU]]:
    butler = Butler.create(str(tmp_path / "repo"))
    hdus = list(pvis(n, shape=(60, 50), field=FIELD, seed=7))
    for visit, hdu in enumerate(hdus):
        if dtype is not None:
            hdu.data = (hdu.data * 10).astype(dtype)
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi", format=formats[visit % len(formats)])
    return butler, hdus


def _catalog(hdus: list[fits.PrimaryHDU], n: int = 30, seed: int = 3) -> SkyCoord:
    """Positions over the images, one at a corner of image 0 (trimmed), one far away (in no image)."""
    rng = np.random.default_rng(seed)
    ra = FIELD[0] + rng.uniform(-0.006, 0.006, n)
    dec = FIELD[1] + rng.uniform(-0.006, 0.006, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corner = WCS(hdus[0].header).pixel_to_world(1.0, 2.0)
    ra = np.concatenate([ra, [corner.ra.deg, FIELD[0] + 3.0]])
    dec = np.concatenate([dec, [corner.dec.deg, FIELD[1] + 3.0]])
    return SkyCoord(ra * u.deg, dec * u.deg)


def _read(out: Path) -> tuple[zarr.Group, dict[str, np.ndarray]]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stock reader opens it without a complaint
        group = zarr.open_group(out, mode="r")
        results = {name: group["results"][name][:] for name in COLUMNS}
    return group, results


def _tree(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def _by_pair(results: dict[str, np.ndarray]) -> dict[tuple[int, str], int]:
    return {(int(p), str(d)): k for k, (p, d) in enumerate(zip(results["position"], results["dataset_id"],
                                                                   strict=True)) if d}


def test_stamps_and_results_read_back_with_plain_zarr(tmp_path: Path) -> None:
    butler, hdus = _repo(tmp_path)
    coords = _catalog(hdus)
    summary = write_catalog_cutouts(butler, "calexp", coords, 11, tmp_path / "stamps.zarr", chunk=7)
    group, results = _read(tmp_path / "stamps.zarr")
    expected = butler.cutouts_at(coords, 11, "calexp")
    stamps, valid, row = group["stamps"][:], group["valid"][:], group["row"][:]
    assert stamps.shape == (sum(len(pairs) for pairs in expected), 11, 11) == (summary.stamps, 11, 11)
    assert stamps.dtype == np.float32 and group["stamps"].metadata.dimension_names == ("stamp", "y", "x")
    pair_row = _by_pair(results)
    trimmed = 0
    for i, pairs in enumerate(expected):
        for ref, stamp in pairs:
            k = pair_row[(i, ref.id)]
            index = int(results["stamp"][k])
            assert row[index] == k
            y0, y1, x0, x1 = valid[index]
            np.testing.assert_array_equal(stamps[index, y0:y1, x0:x1], stamp.data)
            frame = np.ones(stamps.shape[1:], bool)
            frame[y0:y1, x0:x1] = False
            assert np.isnan(stamps[index][frame]).all()  # the rest of the frame is the fill value
            hdu = hdus[ref.data_id["visit"]]
            truth = Cutout2D(hdu.data, coords[i], 11, wcs=WCS(hdu.header), mode="partial", fill_value=np.nan)
            np.testing.assert_array_equal(stamps[index], truth.data)  # trim stamps sit where partial puts them
            assert (results["x0"][k], results["y0"][k], results["x1"][k], results["y1"][k]) == (
                stamp.bbox.x0, stamp.bbox.y0, stamp.bbox.x1, stamp.bbox.y1)
            trimmed += results["flags"][k] == "trimmed"
    assert trimmed >= 1 and (results["stamp"] == -1).sum() == summary.without_image >= 1
    # the same rows as the directory writer's results.csv, but for where the stamp is
    write_catalog_cutouts(butler, "calexp", coords, 11, tmp_path / "dir", chunk=7)
    with open(tmp_path / "dir" / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(results["position"])
    for k, line in enumerate(table):
        for name in COLUMNS:
            got = results[name][k]
            if name == "stamp":
                assert (got >= 0) == bool(line[name])
            elif line[name] == "":
                assert got in ("", 0) or (isinstance(got, float) and math.isnan(got)), (name, got)
            elif name in ("ra", "dec", "mjd", "x", "y"):
                assert float(got) == pytest.approx(float(line[name]), abs=1e-12)
            else:
                assert str(got) == line[name], (name, got, line[name])


@pytest.mark.parametrize("crash", ["after_chunk_marked", "before_chunk_marked", "after_complete_mark"])
def test_a_crash_then_a_rerun_gives_the_uninterrupted_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            crash: str) -> None:
    butler, hdus = _repo(tmp_path)
    coords = _catalog(hdus)
    write_catalog_cutouts(butler, "calexp", coords, 9, tmp_path / "whole.zarr", chunk=6)
    out = tmp_path / "crashed.zarr"
    calls: list[int] = []
    if crash == "after_chunk_marked":
        def progress(done: int) -> None:
            calls.append(done)
            if len(calls) == 3:
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=6, progress=progress)
        finished = 3
    elif crash == "before_chunk_marked":  # chunk 3's stamps are in the array, its rows and its mark are not
        real = catalog_zarr._write_json

        def failing(path: Path, document: Any) -> None:
            if path.name == "results-00003.json":
                raise OSError("disk gone")
            real(path, document)

        monkeypatch.setattr(catalog_zarr, "_write_json", failing)
        with pytest.raises(OSError, match="disk gone"):
            write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=6)
        monkeypatch.setattr(catalog_zarr, "_write_json", real)
        finished = 3
    elif crash == "after_complete_mark":  # done, but .parts/ still there and the metadata not consolidated
        tidy = catalog_zarr._tidy

        def crashing(out: Path) -> None:
            raise OSError("power cut")

        monkeypatch.setattr(catalog_zarr, "_tidy", crashing)
        with pytest.raises(OSError, match="power cut"):
            write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=6)
        monkeypatch.setattr(catalog_zarr, "_tidy", tidy)
        assert (out / ".parts").is_dir()
        finished = math.ceil(len(coords) / 6)
    reads: list[int] = []
    real_cutouts = butler.cutouts_at

    def spy(*args: Any, **kwargs: Any) -> Any:
        reads.append(len(args[0]))
        return real_cutouts(*args, **kwargs)

    butler.cutouts_at = spy  # type: ignore[method-assign]
    summary = write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=6)
    chunks = math.ceil(len(coords) / 6)
    assert summary.chunks_resumed == finished and len(reads) == chunks - finished
    assert _tree(out) == _tree(tmp_path / "whole.zarr")  # byte for byte
    again = write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=6)  # complete: nothing is cut
    assert again.chunks_resumed == chunks and len(reads) == chunks - finished and again.stamps == summary.stamps


def test_another_command_is_refused_without_overwrite(tmp_path: Path) -> None:
    butler, hdus = _repo(tmp_path, n=2)
    coords = _catalog(hdus, n=8)
    out = tmp_path / "stamps.zarr"
    write_catalog_cutouts(butler, "calexp", coords, 11, out, chunk=4)
    before = _tree(out)
    with pytest.raises(AlreadyExistsError, match=r"differs in size.*--overwrite"):
        write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=4)
    moved = SkyCoord(coords.ra + 1 * u.arcsec, coords.dec)  # as many positions, other places
    with pytest.raises(AlreadyExistsError, match=r"differs in catalog"):
        write_catalog_cutouts(butler, "calexp", moved, 11, out, chunk=4)
    assert _tree(out) == before  # refused before touching it
    summary = write_catalog_cutouts(butler, "calexp", coords, 9, out, chunk=4, overwrite=True)
    group, _ = _read(out)
    assert group["stamps"].shape == (summary.stamps, 9, 9)
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError, match="not a cutouts-at Zarr output"):
        write_catalog_cutouts(butler, "calexp", coords, 9, tmp_path / "other.zarr")
    assert (tmp_path / "other.zarr" / "notes.txt").read_text() == "mine"


def test_cli_zarr_output_exit_codes(tmp_path: Path) -> None:
    _, hdus = _repo(tmp_path, n=2, formats=("fits",))
    coords = _catalog(hdus, n=6)
    catalog = tmp_path / "cat.csv"
    catalog.write_text("ra,dec\n" + "".join(f"{float(c.ra.deg)!r},{float(c.dec.deg)!r}\n" for c in coords))
    args = ["cutouts-at", str(tmp_path / "repo"), "calexp", "--radec", str(catalog), "--out",
            str(tmp_path / "s.zarr"), "--chunk", "3", "--no-progress", "--size"]
    first = CliRunner().invoke(main, [*args, "7"])
    assert first.exit_code == 0, first.output
    assert "3 chunks resumed" in CliRunner().invoke(main, [*args, "7"]).output
    refused = CliRunner().invoke(main, [*args, "5"])
    assert refused.exit_code == 4 and "--overwrite" in refused.output, refused.output
    replaced = CliRunner().invoke(main, [*args, "5", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert _read(tmp_path / "s.zarr")[0]["stamps"].shape[1:] == (5, 5)
    angle = CliRunner().invoke(main, [*args, "5arcsec", "--overwrite"])
    assert angle.exit_code == 1 and "in pixels" in angle.output, angle.output


def test_positions_in_no_image(tmp_path: Path) -> None:
    butler, _ = _repo(tmp_path, n=2)
    coords = SkyCoord([10.0, 11.0, 12.0] * u.deg, [-40.0, -41.0, -42.0] * u.deg)
    summary = write_catalog_cutouts(butler, "calexp", coords, 11, tmp_path / "none.zarr", chunk=2)
    group, results = _read(tmp_path / "none.zarr")
    assert summary.stamps == 0 and summary.without_image == 3
    assert group["stamps"].shape == (0, 11, 11) and group["valid"].shape == (0, 4) and group["row"].shape == (0,)
    assert list(results["position"]) == [0, 1, 2] and list(results["stamp"]) == [-1, -1, -1]
    assert list(results["flags"]) == ["no_image"] * 3 and np.isnan(results["x"]).all()


@pytest.mark.parametrize("mode", ["trim", "partial"])
def test_edge_stamps_keep_their_frame_and_real_box(tmp_path: Path, mode: str) -> None:
    butler, hdus = _repo(tmp_path, n=1, formats=("fits",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(hdus[0].header)
        coords = wcs.pixel_to_world([1.0, 48.0, 25.0], [2.0, 57.0, 30.0])  # two corners and the middle
    write_catalog_cutouts(butler, "calexp", coords, (9, 7), tmp_path / "edge.zarr", mode=mode)  # type: ignore[arg-type]
    group, results = _read(tmp_path / "edge.zarr")
    stamps, valid = group["stamps"][:], group["valid"][:]
    assert stamps.shape == (3, 9, 7)
    expected = butler.cutouts_at(coords, (9, 7), "calexp", mode=mode)  # type: ignore[arg-type]
    flags = []
    for i, ((_, stamp),) in enumerate(expected):
        k = int(results["stamp"][i])
        truth = Cutout2D(hdus[0].data, coords[i], (9, 7), wcs=wcs, mode="partial", fill_value=np.nan)
        np.testing.assert_array_equal(stamps[k], truth.data)  # never shrunk or stretched: the whole box
        (rows, cols) = truth.slices_cutout
        assert tuple(valid[k]) == (rows.start, rows.stop, cols.start, cols.stop)
        y0, y1, x0, x1 = valid[k]
        if mode == "trim":
            np.testing.assert_array_equal(stamps[k, y0:y1, x0:x1], stamp.data)
        else:
            np.testing.assert_array_equal(stamps[k], stamp.data)
        flags.append(str(results["flags"][i]))
    assert flags == (["trimmed", "trimmed", ""] if mode == "trim" else ["padded", "padded", ""])
    assert tuple(valid[2]) == (0, 9, 0, 7)


def test_pixel_type_is_the_images_or_float64(tmp_path: Path) -> None:
    butler, hdus = _repo(tmp_path / "ints", n=2, formats=("fits", "zarr"), dtype="int16")
    coords = _catalog(hdus, n=10)
    write_catalog_cutouts(butler, "calexp", coords, 11, tmp_path / "int.zarr")
    group, _ = _read(tmp_path / "int.zarr")
    assert group["stamps"].dtype == np.int16 and group["stamps"].fill_value == 0
    write_catalog_cutouts(butler, "calexp", coords, 11, tmp_path / "padded.zarr", mode="partial")
    assert _read(tmp_path / "padded.zarr")[0]["stamps"].dtype == np.float64  # NaN pads
    mixed, _ = _repo(tmp_path / "mixed", n=2)
    mixed.put(fits.PrimaryHDU((hdus[0].data * 3).astype("int32"), header=hdus[0].header), "calexp", {"visit": 9},
              run="pvi")
    write_catalog_cutouts(mixed, "calexp", coords, 11, tmp_path / "mixed.zarr")
    group, results = _read(tmp_path / "mixed.zarr")
    assert group["stamps"].dtype == np.float64
    k = int(np.flatnonzero((results["stamp"] >= 0) & (results["data_id"] == '{"visit": 9}'))[0])
    assert group["stamps"].attrs == {} and np.nanmax(group["stamps"][int(results["stamp"][k])]) > 0


def test_angle_size_is_refused(tmp_path: Path) -> None:
    butler, hdus = _repo(tmp_path, n=1)
    with pytest.raises(InvalidCutoutError, match="in pixels"):
        write_catalog_cutouts(butler, "calexp", _catalog(hdus, n=2), 5 * u.arcsec, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_xarray_opens_the_group(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    butler, hdus = _repo(tmp_path, n=2)
    coords = _catalog(hdus, n=10)
    write_catalog_cutouts(butler, "calexp", coords, 11, tmp_path / "x.zarr", chunk=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # consolidated metadata: no fallback warning
        stamps = xr.open_zarr(tmp_path / "x.zarr")
        table = xr.open_zarr(tmp_path / "x.zarr", group="results")
    assert stamps["stamps"].dims == ("stamp", "y", "x") and table["position"].dims == ("row",)
    frame = table.to_dataframe()
    assert list(frame["position"]) == sorted(frame["position"]) and set(frame["position"]) == set(range(12))
    assert os.path.isdir(tmp_path / "x.zarr" / "results")


def test_stamps_from_a_sky_query_pickle_with_their_wcs_and_ref(tmp_path: Path) -> None:
    """Sky-query stamps carry a lazily built parent WCS (a lock and a closure): they still pickle, for
    Dask and multiprocessing, as pixels, box, WCS and ref."""
    import pickle

    butler, hdus = _repo(tmp_path)
    coords = _catalog(hdus, n=5)
    pairs = [pair for found in butler.cutouts_at(coords, 11, "calexp") for pair in found]
    assert pairs
    back = pickle.loads(pickle.dumps(pairs))
    for (ref, stamp), (ref_back, stamp_back) in zip(pairs, back, strict=True):
        assert ref_back == ref and stamp_back.ref == stamp.ref and stamp_back.bbox == stamp.bbox
        np.testing.assert_array_equal(stamp_back.data, stamp.data)
        assert stamp_back.input_position_original == stamp.input_position_original
        assert stamp_back.wcs is not None and stamp_back.wcs.wcs.compare(stamp.wcs.wcs)
