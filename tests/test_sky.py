"""Sky footprints in the registry, find_images, cutouts_at and reindex, against astropy's own answers.

Images are small (80 x 100 up to 120 x 100) with jittered, rotated, SIP-distorted WCSs, FITS and
Zarr alternately; positions are random around the field. ``find_images`` must agree with each
image's WCS (``world_to_pixel`` inside the pixel bounds; positions within 1 pixel of an edge may go
either way), and every stamp must equal astropy's ``Cutout2D`` at that position on that image.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from click.testing import CliRunner
from conftest import Backend

from objbutler import Butler
from objbutler.cli import main
from objbutler.errors import InvalidCutoutError, InvalidKeyError
from objbutler.registry.checkpoint import CHECKPOINT_PREFIX, decode_checkpoint
from objbutler.testing.skyfield import pvis
from objbutler.testing.wrappers import CountingStore

FIELD = (150.1, 2.2)


def _positions(n: int, seed: int = 3, spread: float = 0.012) -> SkyCoord:
    rng = np.random.default_rng(seed)
    ra = FIELD[0] + rng.uniform(-spread, spread, n) / np.cos(np.radians(FIELD[1]))
    dec = FIELD[1] + rng.uniform(-spread, spread, n)
    return SkyCoord(ra * u.deg, dec * u.deg)


def _fill(butler: Butler, n: int, shape: tuple[int, int] = (120, 100), formats: tuple[str, ...] = ("fits", "zarr"),
          seed: int = 7) -> list[fits.PrimaryHDU]:
    hdus = list(pvis(n, shape=shape, field=FIELD, seed=seed))
    for visit, hdu in enumerate(hdus):
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi", format=formats[visit % len(formats)])
    return hdus


def _truth(hdus: list[fits.PrimaryHDU], positions: SkyCoord) -> tuple[np.ndarray, np.ndarray]:
    """``inside[k, i]``: position i in image k by its WCS; ``sure[k, i]``: more than 1 pixel from every edge."""
    inside, sure = [], []
    for hdu in hdus:
        ny, nx = hdu.data.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, y = WCS(hdu.header).world_to_pixel(positions)
        inside.append((x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5))
        margin = np.minimum.reduce([np.abs(x + 0.5), np.abs(x - (nx - 0.5)), np.abs(y + 0.5), np.abs(y - (ny - 0.5))])
        sure.append(margin > 1.0)
    return np.array(inside), np.array(sure)


def _check_find(butler: Butler, hdus: list[fits.PrimaryHDU], positions: SkyCoord) -> int:
    found = butler.find_images(positions, "calexp")
    assert len(found) == len(positions)
    inside, sure = _truth(hdus, positions)
    got = np.zeros_like(inside)
    for i, refs in enumerate(found):
        mjds = [ref.sky["mjd"] for ref in refs]
        assert mjds == sorted(mjds)  # ordered by time
        for ref in refs:
            got[ref.data_id["visit"], i] = True
    wrong = (got != inside) & sure
    assert not wrong.any(), f"{wrong.sum()} (image, position) pairs disagree with the WCS"
    return int(got.sum())


def _check_stamps(butler: Butler, positions: SkyCoord, result: list, size: int, mode: str) -> int:
    """Every stamp equals Cutout2D on the image as stored (its pixels and the WCS a reader of the file builds)."""
    count = 0
    images: dict[str, object] = {}
    for i, pairs in enumerate(result):
        for ref, stamp in pairs:
            image = images.setdefault(ref.id, butler.get(ref))
            expected = Cutout2D(image.data, positions[i], size, wcs=image.wcs, mode=mode,  # type: ignore[attr-defined]
                                fill_value=np.nan)
            assert stamp.ref is ref and stamp.index == i
            assert stamp.data.shape == expected.data.shape
            np.testing.assert_array_equal(stamp.data, expected.data)
            assert stamp.slices_original == expected.slices_original
            assert stamp.position_original == expected.position_original
            # all_world2pix iterates until every position of a call is within 1e-4 px: a batch and a single
            # position (Cutout2D's) stop at slightly different points
            np.testing.assert_allclose(stamp.input_position_original, expected.input_position_original, atol=1e-4)
            np.testing.assert_allclose(stamp.wcs.wcs.crpix, expected.wcs.wcs.crpix, atol=1e-9)
            count += 1
    return count


# --------------------------------------------------------------------- registry records


def test_put_records_footprint_time_band(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    hdu = next(pvis(1, shape=(80, 100), field=FIELD))
    ref = butler.put(hdu, "calexp", {"visit": 1}, run="r")
    sky = ref.sky
    assert sky is not None and sky["shape"] == [80, 100] and sky["band"] == "u"
    assert abs(sky["mjd"] - fits.Header(hdu.header).get("MJD-OBS", sky["mjd"])) < 1e-6
    assert len(sky["ra"]) >= 4 and sky["error_px"] <= 0.05
    wcs = WCS(hdu.header)
    x, y = wcs.world_to_pixel(SkyCoord(sky["ra"] * u.deg, sky["dec"] * u.deg))
    on_edge = np.minimum.reduce([np.abs(x + 0.5), np.abs(x - 99.5), np.abs(y + 0.5), np.abs(y - 79.5)])
    assert on_edge.max() < 1e-6  # every vertex lies on the pixel bounds
    assert butler.query("calexp")[0].sky == sky  # through the commit JSON
    butler.registry.write_checkpoint()
    again = Butler(str(tmp_path / "repo"))
    assert again.query("calexp")[0].sky == sky  # through the checkpoint columns


def test_images_without_celestial_wcs_have_no_footprint() -> None:
    butler = Butler.create("memory://sky-nowcs")
    assert butler.put(np.zeros((10, 10), np.float32), "raw", {"visit": 1}, run="r").sky is None
    assert butler.put({"a": 1}, "meta", {"visit": 1}, run="r").sky is None
    assert butler.find_images(SkyCoord(1 * u.deg, 2 * u.deg), "raw") == [[]]


def test_old_checkpoint_without_sky_columns_still_opens(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, commit_protocol="sequenced")  # old repositories are sequenced
    _fill(butler, 3, formats=("fits",))
    butler.registry.write_checkpoint()
    key = next(m.key for m in butler.store.list(CHECKPOINT_PREFIX))
    path = Path(uri) / key
    table = pq.read_table(path)
    old = table.drop_columns([c for c in table.column_names if c.startswith("sky")])
    old = old.replace_schema_metadata(table.schema.metadata)
    pq.write_table(old, path)
    reopened = Butler(uri)
    refs = reopened.query("calexp")
    assert len(refs) == 3 and all(ref.sky is None for ref in refs)
    assert reopened.find_images(SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg), "calexp") == [[]]
    decoded = decode_checkpoint(path.read_bytes(), key)
    assert "sky_ra" in decoded.table.column_names  # conformed: the columns are there, null


def test_old_records_without_sky_still_read() -> None:
    from objbutler.registry.records import DatasetRef

    raw = {"id": "x", "dataset_type": "t", "data_id": {"visit": 1}, "run": "r", "format": "fits", "key": "data/k",
           "size": 1, "checksum": "sha256:0", "created": "2026-01-01T00:00:00.000000Z", "provenance": None}
    ref = DatasetRef.from_json(raw)
    assert ref.sky is None and "sky" not in ref.to_json()


# --------------------------------------------------------------------- find_images and cutouts_at


@pytest.mark.parametrize("size,mode", [(15, "trim"), (9, "partial")])
def test_find_images_and_cutouts_match_astropy_local(tmp_path: Path, size: int, mode: str) -> None:
    butler = Butler.create(str(tmp_path / "repo"), checkpoint_interval=16)  # a checkpoint part and a tail part
    hdus = _fill(butler, 50)
    positions = _positions(1000)
    hits = _check_find(Butler(str(tmp_path / "repo")), hdus, positions)
    assert hits > 1000
    result = butler.cutouts_at(positions[:60], size, "calexp", mode=mode)
    assert _check_stamps(butler, positions[:60], result, size, mode) > 60


def _check_remote(backend: Backend, n: int, positions: int, stamps: int, interval: int) -> None:
    """find_images and stamps against astropy, request accounting, and reindex, on a server."""
    from objbutler.stores import open_store

    uri = backend.new_uri()
    counting = CountingStore(open_store(uri, **backend.options))
    butler = Butler.create(uri, checkpoint_interval=interval, store=counting)
    hdus = _fill(butler, n, shape=(90, 80))  # FITS and Zarr alternately
    _check_find(butler, hdus, _positions(positions))
    result = butler.cutouts_at(_positions(positions)[:stamps], 11, "calexp")
    assert _check_stamps(butler, _positions(positions)[:stamps], result, 11, "trim") >= stamps // 2
    centre = SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg)
    butler.cutouts_at(centre, 11, "calexp")  # warm
    counting.reset()
    images = len(butler.cutouts_at(centre, 11, "calexp")[0])
    by_method = dict(counting.requests_by_method)
    assert images >= n - 3 and counting.requests <= images + 2, by_method  # FITS: one range; Zarr: one chunk
    assert by_method.get("get", 0) == 0, by_method  # no header, no zarr.json


def _check_reindex(backend: Backend, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    uri = backend.new_uri()
    butler = Butler.create(uri, checkpoint_interval=4, **backend.options)
    hdus = _put_without_sky(butler, monkeypatch, n)
    from objbutler.sky.reindex import reindex

    assert reindex(butler).recorded == n
    reader = Butler(uri, **backend.options)
    _check_find(reader, hdus, _positions(200))
    assert len(reader.find_images(SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg), "calexp")[0]) >= n - 2


@pytest.mark.servers
def test_sky_on_localstack(localstack_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    _check_remote(localstack_backend, 60, 1000, 40, interval=32)
    _check_reindex(localstack_backend, monkeypatch, 8)


@pytest.mark.servers
def test_sky_on_swift(swift_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    _check_remote(swift_backend, 12, 300, 20, interval=8)
    _check_reindex(swift_backend, monkeypatch, 6)


def test_query_contains_and_filters(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    _fill(butler, 12, formats=("fits",))
    centre = SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg)
    every = butler.query("calexp", contains=centre)
    assert len(every) == 12  # the jitter keeps the field centre in every image
    assert [r.sky["mjd"] for r in every] == sorted(r.sky["mjd"] for r in every)
    assert butler.query("calexp", where={"visit": [1, 2]}, contains=centre) == [
        r for r in every if r.data_id["visit"] in (1, 2)]
    mjds = sorted(r.sky["mjd"] for r in every)
    window = butler.find_images(centre, "calexp", time=(mjds[2], mjds[5]))[0]
    assert [r.sky["mjd"] for r in window] == mjds[2:5]
    assert butler.find_images(centre, "calexp", run="other")[0] == []
    with pytest.raises(InvalidKeyError):
        butler.query("calexp", contains=SkyCoord([1, 2] * u.deg, [1, 2] * u.deg))
    with pytest.raises(InvalidCutoutError):
        butler.find_images([1, 2], "calexp")
    with pytest.raises(InvalidCutoutError):
        butler.cutouts_at(centre, None, "calexp")


def test_sky_index_is_reused_while_the_log_has_not_moved() -> None:
    from objbutler.sky.index import state_sky_index

    butler = Butler.create("memory://sky-cache")
    _fill(butler, 3, formats=("fits",))
    state = butler.registry.refresh()
    first = state_sky_index(state)
    assert state_sky_index(butler.registry.refresh()) is first
    butler.put(next(pvis(1, shape=(50, 50), field=FIELD, seed=99)), "calexp", {"visit": 50}, run="pvi")
    assert state_sky_index(butler.registry.refresh()) is not first


def test_one_position_over_k_images_costs_at_most_k_plus_2_requests() -> None:
    counting = CountingStore(Butler.create("memory://sky-count").store)
    butler = Butler("memory://sky-count", store=counting)
    k = 25
    _fill(butler, k, formats=("fits",))
    centre = SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg)
    butler.cutouts_at(centre, 21, "calexp")  # warm: the registry view and the index
    counting.reset()
    result = butler.cutouts_at(centre, 21, "calexp")
    images = len(result[0])
    assert images >= k - 3 and images == len(butler.find_images(centre, "calexp")[0])
    counting.reset()
    butler.cutouts_at(centre, 21, "calexp")
    assert counting.requests <= images + 2, dict(counting.requests_by_method)
    assert counting.requests_by_method["get_ranges"] == images  # one stamp-sized range per image, no header read
    positions = _positions(2000, spread=0.003)
    counting.reset()
    many = butler.cutouts_at(positions, 5, "calexp")
    assert sum(len(p) for p in many) > 2000
    assert counting.requests <= 4 * k + 2, dict(counting.requests_by_method)  # a few requests per image


def test_cutouts_at_angle_size_and_strict_skips(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    _fill(butler, 6, formats=("fits",))
    positions = _positions(40)
    result = butler.cutouts_at(positions, 3 * u.arcsec, "calexp")
    assert _check_stamps(butler, positions, result, 15, "trim") > 0  # 3" at 0.2"/px is 15 pixels
    strict = butler.cutouts_at(positions, 31, "calexp", mode="strict")
    assert all(stamp.data.shape == (31, 31) for pairs in strict for _, stamp in pairs)
    assert all("strict" in s.reason for s in strict.skipped)  # type: ignore[attr-defined]


# --------------------------------------------------------------------- reindex


def _put_without_sky(butler: Butler, monkeypatch: pytest.MonkeyPatch, n: int) -> list[fits.PrimaryHDU]:
    import objbutler.sky.footprint as footprint

    with monkeypatch.context() as patch:
        patch.setattr(footprint, "sky_record", lambda *args, **kwargs: None)
        hdus = _fill(butler, n)
    return hdus


def test_reindex_fills_old_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, checkpoint_interval=4)
    hdus = _put_without_sky(butler, monkeypatch, 10)
    butler.put(np.zeros((5, 5), np.float32), "calexp", {"visit": 99}, run="pvi")  # no WCS
    assert all(ref.sky is None for ref in butler.query("calexp"))
    centre = SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg)
    assert butler.find_images(centre, "calexp") == [[]]
    other = Butler(uri)
    other.find_images(centre, "calexp")  # a reader with a warm index before the reindex
    result = CliRunner().invoke(main, ["reindex", uri])
    assert result.exit_code == 0, result.output
    assert "10 of 11 images" in result.output and "1 without" in result.output
    for reader in (Butler(uri), other):
        assert len(reader.find_images(centre, "calexp")[0]) == 10
        _check_find(reader, hdus, _positions(300))
    key = sorted(m.key for m in butler.store.list(CHECKPOINT_PREFIX))[-1]
    table = decode_checkpoint(butler.store.get(key), key).table
    assert pa.compute.sum(pa.compute.is_valid(table["sky_ra"])).as_py() == 10  # folded into the columns
    again = CliRunner().invoke(main, ["reindex", uri])
    assert "0 of 1 images" in again.output  # only the image without a WCS is left to examine


def test_annotations_before_a_checkpoint_survive_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from objbutler.sky.reindex import reindex

    butler = Butler.create("memory://sky-annotate", checkpoint_interval=100)
    _put_without_sky(butler, monkeypatch, 4)
    butler.registry.write_checkpoint()  # the datasets are now checkpoint rows without a sky record
    report = reindex(butler, checkpoint=False)
    assert report.recorded == 4 and report.commits == 1
    fresh = Butler("memory://sky-annotate")  # reads the checkpoint, then the annotation in the tail
    assert all(ref.sky is not None for ref in fresh.query("calexp"))
    fresh.registry.write_checkpoint()
    assert all(ref.sky is not None for ref in Butler("memory://sky-annotate").query("calexp"))


def test_annotation_commit_is_ignored_by_a_malformed_record() -> None:
    from objbutler.registry.commits import new_commit
    from objbutler.registry.state import commit_problem

    assert commit_problem(new_commit([], {}, [], [{"id": 3, "sky": {}}])) is not None
    assert commit_problem(new_commit([], {}, [], [{"id": "x", "sky": {"ra": []}}])) is None


# --------------------------------------------------------------------- the CLI writer


def test_cli_cutouts_at_directory_resumes(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri)
    hdus = _fill(butler, 5, formats=("fits",))
    positions = _positions(30)
    catalog = tmp_path / "cat.csv"
    rows = [f"{float(c.ra.deg)!r},{float(c.dec.deg)!r}" for c in positions]
    lines = ["ra,dec", *rows, "150.9,2.9"]  # the last: in no image
    catalog.write_text("\n".join(lines) + "\n")
    out = tmp_path / "stamps"
    args = ["cutouts-at", uri, "calexp", "--radec", str(catalog), "--size", "11", "--out", str(out), "--chunk", "8",
            "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("position,ra,dec,dataset_id")
    assert any(row.endswith(",no_image") for row in rows)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["done"] == [0, 1, 2, 3]
    first = rows
    rerun = CliRunner().invoke(main, args)
    assert "4 chunks resumed" in rerun.output
    assert (out / "results.csv").read_text().splitlines() == first
    first_file = next(path for path in sorted(out.glob("stamps-*.fits")) if len(fits.open(path)) > 1)
    with fits.open(first_file) as stamps:
        hdu = stamps[1]
        position, dataset = hdu.name[1:].split("_")
        ref = next(r for r in butler.query("calexp") if r.id.startswith(dataset.lower()))
        expected = Cutout2D(hdus[ref.data_id["visit"]].data, positions[int(position)], 11, mode="trim",
                            wcs=WCS(hdus[ref.data_id["visit"]].header))
        np.testing.assert_array_equal(hdu.data, expected.data)


def test_catalog_stamp_extensions_carry_the_stamp_wcs(tmp_path: Path) -> None:
    """The fast stamp serializer writes what astropy would: valid FITS, the stamp's pixels and WCS (SIP shifted)."""
    from objbutler.sky.catalog import write_catalog_cutouts

    butler = Butler.create(str(tmp_path / "repo"))
    _fill(butler, 4)  # FITS and Zarr parents
    positions = _positions(12, spread=0.002)
    expected = butler.cutouts_at(positions, 9, "calexp")
    summary = write_catalog_cutouts(butler, "calexp", positions, 9, tmp_path / "out")
    assert summary.stamps == sum(len(pairs) for pairs in expected) > 12
    with fits.open(tmp_path / "out" / "stamps-00000.fits", memmap=False, lazy_load_hdus=False) as handle:
        handle.verify("exception")
        by_name = {hdu.name: hdu for hdu in handle[1:]}
        for hdu in by_name.values():
            hdu.data  # noqa: B018 (read before the file closes)
    grid = np.array([[0.0, 0.0], [8.0, 0.0], [4.0, 6.0]])
    for i, pairs in enumerate(expected):
        for ref, stamp in pairs:
            hdu = by_name[f"P{i}_{ref.id[:8]}".upper()]  # EXTNAME is read upper-cased
            np.testing.assert_array_equal(hdu.data, stamp.data)
            assert (hdu.header["BBOX_X0"], hdu.header["BBOX_Y1"]) == (stamp.bbox.x0, stamp.bbox.y1)
            assert hdu.header["DATASET"] == ref.id and hdu.header["MJD-OBS"] == ref.sky["mjd"]
            written = WCS(hdu.header).all_pix2world(grid, 0)
            np.testing.assert_allclose(written, stamp.wcs.all_pix2world(grid, 0), rtol=0, atol=1e-10)


def test_catalog_chunks_follow_the_sky_so_images_are_read_by_fewer_chunks(tmp_path: Path) -> None:
    from objbutler.sky.catalog import write_catalog_cutouts
    from objbutler.testing.skyfield import tiles

    butler = Butler.create(str(tmp_path / "repo"))
    hdus, (ra0, ra1, dec0, dec1) = tiles(9, shape=(60, 60))
    for visit, hdu in enumerate(hdus):
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi")
    rng = np.random.default_rng(4)
    coords = SkyCoord(rng.uniform(ra0, ra1, 450) * u.deg, rng.uniform(dec0, dec1, 450) * u.deg)  # rows in no order
    reads: list[int] = []
    real = butler.cutouts_at

    def spy(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        reads.append(len({ref.id for pairs in result for ref, _ in pairs}))
        return result

    butler.cutouts_at = spy  # type: ignore[method-assign]
    summary = write_catalog_cutouts(butler, "calexp", coords, 5, tmp_path / "out", chunk=50)
    assert len(reads) == 9 and summary.stamps > 450
    found = butler.find_images(coords, "calexp")
    row_order = sum(len({ref.id for refs in found[k : k + 50] for ref in refs}) for k in range(0, 450, 50))
    assert row_order >= 70 and sum(reads) <= 0.7 * row_order, (reads, row_order)  # rows: every image, every chunk
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()[1:]
    positions = [int(row.split(",")[0]) for row in rows]
    assert positions == sorted(positions) and set(positions) == set(range(450))  # the table is in row order


def test_cli_cutouts_at_single_fits(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri)
    _fill(butler, 3, formats=("fits",))
    catalog = tmp_path / "cat.ecsv"
    from astropy.table import Table

    positions = _positions(5)
    Table({"ra": positions.ra.deg, "dec": positions.dec.deg}).write(catalog)
    out = tmp_path / "stamps.fits"
    result = CliRunner().invoke(main, ["cutouts-at", uri, "calexp", "--radec", str(catalog), "--size", "7",
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with fits.open(out) as handle:
        assert handle[-1].name == "RESULTS"
        table = Table(handle[-1].data)
        stamps = [h for h in handle[1:-1]]
        assert len(stamps) == sum(1 for flag, stamp in zip(table["flags"], table["stamp"], strict=True)
                                  if stamp and not flag.startswith(("skipped", "no_image")))


def test_cli_cutouts_at_png_draws_one_light_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import objbutler.stamps_io as stamps_io

    uri = str(tmp_path / "repo")
    butler = Butler.create(uri)
    _fill(butler, 5)
    catalog = tmp_path / "one.csv"
    catalog.write_text(f"ra,dec\n{FIELD[0]!r},{FIELD[1]!r}\n")
    drawn: dict[str, object] = {}
    real = stamps_io.write_contact_sheet

    def spy(stamps: list, path: Path, **kwargs: object) -> None:
        drawn.update(stamps=stamps, **kwargs)
        real(stamps, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stamps_io, "write_contact_sheet", spy)
    args = ["cutouts-at", uri, "calexp", "--radec", str(catalog), "--size", "11", "--out", str(tmp_path / "out"),
            "--no-progress", "--png", str(tmp_path / "lc.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lc.png").read_bytes()[:4] == b"\x89PNG"
    history = butler.cutouts_at(SkyCoord(FIELD[0] * u.deg, FIELD[1] * u.deg), 11, "calexp")[0]
    from astropy.time import Time

    dates = [Time(ref.sky["mjd"], format="mjd").iso[:16] for ref, _ in history]
    assert dates == sorted(dates) and len(dates) == 5
    assert drawn["labels"] == [f"{d} {ref.sky['band']}" for d, (ref, _) in zip(dates, history, strict=True)]
    for got, (_, want) in zip(drawn["stamps"], history, strict=True):  # type: ignore[call-overload]
        np.testing.assert_array_equal(got.data, want.data)  # in time order
    two = tmp_path / "two.csv"
    two.write_text(f"ra,dec\n{FIELD[0]!r},{FIELD[1]!r}\n{FIELD[0]!r},{FIELD[1]!r}\n")
    refused = CliRunner().invoke(main, [*args[:4], str(two), *args[5:]])
    assert refused.exit_code != 0 and "one position" in refused.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 1
    assert "error: PNG output needs matplotlib" in missing.output and "plots" in missing.output


# --------------------------------------------------------------------- the benchmark suite and its proxy


def test_bench_sky_smoke_local(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(main, ["bench", "sky", "--target", "local", "--quick", "--smoke", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "NOTE object history" in result.output
    rows = json.loads(out.read_text())
    methods = {(row["workload"], row["method"]) for row in rows if row["seconds"] is not None}
    for method in ("objbutler", "header-per-image", "floor"):
        assert ("history 12 PVIs", method) in methods
    assert any(row["method"] == "objbutler" and row["workload"].startswith("find") for row in rows)


def test_proxy_adds_latency() -> None:
    import http.server
    import threading
    import time
    import urllib.request

    import benchmarks.proxy as proxy_module

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with proxy_module.ProxyProcess(f"http://127.0.0.1:{upstream.server_address[1]}", latency_ms=60) as proxy:
            started = time.perf_counter()
            with urllib.request.urlopen(f"{proxy.endpoint}/x", timeout=10) as answer:
                assert answer.read() == b"ok"
            assert time.perf_counter() - started >= 0.06
            assert proxy.stats()["requests"] == 1
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_a_parquet_catalogue_written_by_pyarrow_is_read_without_pandas(tmp_path: Path) -> None:
    """Astropy reads Parquet through pandas, which objbutler does not install: catalogues go through pyarrow."""
    import pyarrow as pa

    from objbutler.dask.requests import parse_requests
    from objbutler.errors import FormatError
    from objbutler.sky.catalog import read_catalog

    positions = _positions(4)
    catalog = tmp_path / "targets.parquet"
    pq.write_table(pa.table({"ra": positions.ra.deg, "dec": positions.dec.deg, "mag": [20.0, 21.0, 22.0, 23.0]}),
                   catalog)
    coords = read_catalog(catalog)
    assert np.allclose(coords.ra.deg, positions.ra.deg) and np.allclose(coords.dec.deg, positions.dec.deg)
    requests = parse_requests(str(catalog), dataset_type="calexp", size=5, data_id_keys=())
    expected = list(zip(positions.ra.deg, positions.dec.deg, strict=True))
    assert [(r.ra, r.dec) for r in requests] == pytest.approx(expected)
    garbled = tmp_path / "garbled.parquet"
    garbled.write_bytes(b"PAR1 not really")
    with pytest.raises(FormatError, match=r"garbled\.parquet"):
        read_catalog(garbled)


def test_a_null_position_in_a_parquet_catalogue_is_missing_not_zero(tmp_path: Path) -> None:
    """A Parquet null reads as a masked entry; the catalogue must not take its fill value (0) for a position."""
    import pyarrow as pa

    from objbutler.sky.catalog import read_catalog

    catalog = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"ra": pa.array([150.1, None]), "dec": pa.array([2.2, 2.3])}), catalog)
    coords = read_catalog(catalog)
    assert coords.ra.deg[0] == pytest.approx(150.1) and np.isnan(coords.ra.deg[1])


@pytest.mark.parametrize("stamps", [1, 2, 9])
def test_a_contact_sheets_title_fits_inside_the_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    stamps: int) -> None:
    """A light curve of one image got a one-line title wider than its 1.4-inch figure, cut off at both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from objbutler import stamps_io
    from objbutler.cutouts import Box, Cutout

    kept: list[object] = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to measure it
    sheet = [Cutout(np.arange(81.0).reshape(9, 9), Box(0, 0, 9, 9), index=i) for i in range(stamps)]
    title = "calexp at RA 150.100000 Dec 2.200000: 1 images, the whole of this title must show"
    stamps_io.write_contact_sheet(sheet, tmp_path / "sheet.png", title=title)
    figure = kept[0]
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    (text,) = figure.texts  # type: ignore[attr-defined]  # the suptitle
    box, frame = text.get_window_extent(renderer), figure.bbox  # type: ignore[attr-defined]
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1, (box, frame)
    assert text.get_text().replace("\n", " ") == title
