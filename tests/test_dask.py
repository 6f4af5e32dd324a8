"""objbutler.dask: cutout and ingest campaigns on a LocalCluster (2 worker processes) against LocalStack.

The distributed result must equal the serial ``Butler.get_cutouts`` result
exactly (pixels, bbox, WCS); a missing image must fail only its own requests.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import NDData
from astropy.table import Table
from astropy.wcs import WCS, WCSHDO_P17, WCSHDO_all

from objbutler import Box, Butler, Cutout, DatasetRef, InvalidCutoutError, NotFoundError
from objbutler.dask import (
    CutoutRequest,
    ErrorRecord,
    RepositoryOutput,
    _auto_task_size,
    _pack,
    cutouts,
    ingest,
    parse_requests,
)
from objbutler.dask.tasks import ImageGroup, Item
from objbutler.errors import InvalidKeyError

distributed = pytest.importorskip("distributed")

N_IMAGES, N_STAMPS, SHAPE, STAMP = 20, 50, (240, 320), 16
EXACT = WCSHDO_all | WCSHDO_P17


def _wcs(seed: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0 + seed / 97, 2.0 - seed / 89]  # numbers that 12 digits would round
    wcs.wcs.crpix = [SHAPE[1] / 2 + 1 / 3, SHAPE[0] / 2 - 1 / 7]
    wcs.wcs.cd = [[-5.5e-5 / 3, 1e-7 / 7], [2e-7 / 3, 5.5e-5 / 7]]
    return wcs


@dataclasses.dataclass
class Campaign:
    uri: str
    options: dict[str, Any]
    butler: Butler
    refs: list[DatasetRef]
    requests: list[dict[str, Any]]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def campaign(localstack_backend: Any) -> Campaign:
    """20 images (FITS and Zarr, each with a WCS), 50 requests each (boxes and sky positions), shuffled."""
    uri, options = localstack_backend.new_uri(), localstack_backend.options
    butler = Butler.create(uri, **options)
    rng = np.random.default_rng(8)
    refs, requests = [], []
    for i in range(N_IMAGES):
        data = rng.normal(100, 10, SHAPE).astype("float32")
        fmt = "fits" if i % 2 == 0 else "zarr"
        options_for = {"chunks": (64, 64)} if fmt == "zarr" else None
        ref = butler.put(NDData(data, wcs=_wcs(i)), "calexp", {"visit": 100 + i, "detector": i % 3}, run="run1",
                         format=fmt, format_options=options_for)
        refs.append(ref)
        for j in range(N_STAMPS):
            if j % 2 == 0:  # a pixel box, some hanging over the edge (trim)
                x0, y0 = int(rng.integers(-8, SHAPE[1] - 8)), int(rng.integers(-8, SHAPE[0] - 8))
                requests.append({"dataset_type": "calexp", "visit": 100 + i, "detector": i % 3,
                                 "box": (x0, y0, x0 + STAMP, y0 + STAMP)})
            else:  # a sky position inside the image
                x, y = rng.uniform(10, SHAPE[1] - 10), rng.uniform(10, SHAPE[0] - 10)
                ra, dec = _wcs(i).pixel_to_world_values(x, y)
                requests.append({"dataset_id": ref.id, "ra": float(ra), "dec": float(dec)})
    order = rng.permutation(len(requests))
    return Campaign(uri, options, butler, refs, [requests[k] for k in order])


def _serial(butler: Butler, refs: list[DatasetRef], requests: list[dict[str, Any]]) -> list[Cutout]:
    """The reference answer: one serial get_cutouts call per image and request kind."""
    by_name = {(r.data_id["visit"], r.data_id["detector"]): r for r in refs}
    by_id = {r.id: r for r in refs}
    wanted: dict[tuple[str, str], list[int]] = {}
    for index, request in enumerate(requests):
        ref = by_id[request["dataset_id"]] if "dataset_id" in request else by_name[
            (request["visit"], request["detector"])]
        wanted.setdefault((ref.id, "box" if "box" in request else "sky"), []).append(index)
    answer: dict[int, Cutout] = {}
    for (ref_id, kind), indices in wanted.items():
        if kind == "box":
            stamps = butler.get_cutouts(by_id[ref_id], [Box(*requests[k]["box"]) for k in indices])
        else:
            coords = SkyCoord([requests[k]["ra"] for k in indices], [requests[k]["dec"] for k in indices], unit="deg")
            stamps = butler.get_cutouts(by_id[ref_id], coords, size=STAMP)
        answer.update(zip(indices, stamps, strict=True))
    return [answer[k] for k in range(len(requests))]


def _assert_same(got: Cutout | None, want: Cutout, index: int) -> None:
    assert got is not None, index
    assert got.index == index
    assert got.bbox == want.bbox, index
    assert got.slices_original == want.slices_original, index  # Cutout2D's bookkeeping travels too
    assert got.data.dtype == want.data.dtype
    np.testing.assert_array_equal(got.data, want.data)
    assert got.wcs is not None and want.wcs is not None
    # exactly: every number to 17 digits, and the same world coordinates bit for bit
    assert got.wcs.to_header_string(relax=EXACT) == want.wcs.to_header_string(relax=EXACT)
    assert got.wcs.array_shape == want.wcs.array_shape
    pixels = np.array([[0.0, 0.5, STAMP - 1.0], [0.0, 3.25, STAMP - 1.0]])
    np.testing.assert_array_equal(got.wcs.pixel_to_world_values(*pixels), want.wcs.pixel_to_world_values(*pixels))


@pytest.mark.servers
def test_campaign_equals_serial_result(campaign: Campaign, client: Any) -> None:
    results = cutouts(campaign.uri, campaign.requests, client=client, store_options=campaign.options, size=STAMP)
    assert results.ok, results.errors[:3]
    assert len(results) == N_IMAGES * N_STAMPS
    serial = _serial(campaign.butler, campaign.refs, campaign.requests)
    for index, (got, want) in enumerate(zip(results.stamps, serial, strict=True)):
        _assert_same(got, want, index)


@pytest.mark.servers
def test_missing_images_fail_only_their_requests(campaign: Campaign, client: Any) -> None:
    butler = campaign.butler
    gone = butler.put(NDData(np.ones(SHAPE, "float32"), wcs=_wcs(0)), "calexp", {"visit": 999, "detector": 0},
                      run="run1")
    butler.store.delete(gone.key)  # committed, but its data object is gone
    never_put = dataclasses.replace(campaign.refs[0], id=str(uuid.uuid4()))
    requests = list(campaign.requests[:200])
    failing = {
        3: ("unknown data ID", {"dataset_type": "calexp", "visit": 12345, "detector": 0, "box": (0, 0, 8, 8)}),
        50: ("deleted", {"ref": gone, "box": (0, 0, 8, 8)}),
        51: ("deleted", {"dataset_type": "calexp", "visit": 999, "detector": 0, "ra": 150.0, "dec": 2.0}),
        120: ("never put", {"ref": never_put, "box": (0, 0, 8, 8)}),
    }
    for position, (_, request) in sorted(failing.items()):
        requests.insert(position, request)
    bad = {position: why for position, (why, _) in failing.items()}

    results = cutouts(campaign.uri, requests, client=client, store_options=campaign.options, size=STAMP)

    assert {r.index for r in results.errors} == set(bad)
    for record in results.errors:
        assert isinstance(record, ErrorRecord)
        assert record.error_type == "NotFoundError", record
        assert record.message
        if bad[record.index] == "deleted":
            assert record.dataset_id == gone.id and "999" in record.target
    ok = [k for k in range(len(requests)) if k not in bad]
    serial = _serial(butler, campaign.refs, [requests[k] for k in ok])
    for k, want in zip(ok, serial, strict=True):
        _assert_same(results.stamps[k], want, k)
    for k in bad:
        assert results.stamps[k] is None

    with pytest.raises(ExceptionGroup) as caught:
        cutouts(campaign.uri, requests[:6], client=client, store_options=campaign.options, size=STAMP,
                on_error="raise")
    assert caught.group_contains(NotFoundError)


@pytest.mark.servers
def test_bad_box_fails_alone_and_outputs_go_to_a_repository(campaign: Campaign, client: Any,
                                                            localstack_backend: Any) -> None:
    ref = campaign.refs[1]
    requests = [{"ref": ref, "box": (0, 0, 8, 8), "stamp_id": "a"},
                {"ref": ref, "box": (-4, 0, 4, 8), "stamp_id": "b"},  # not wholly inside: strict refuses it
                {"ref": ref, "box": (10, 10, 20, 30), "stamp_id": "c"}]
    out_uri = localstack_backend.new_uri()
    Butler.create(out_uri, **campaign.options)
    results = cutouts(campaign.uri, requests, client=client, store_options=campaign.options, mode="strict",
                      out=RepositoryOutput(out_uri, run="stamps", store_options=campaign.options))
    assert [r.index for r in results.errors] == [1]
    assert results.errors[0].error_type == "InvalidCutoutError"
    assert "request 0" not in results.errors[0].message
    assert results.stamps == [None] * 3
    out = Butler(out_uri, **campaign.options)
    stored = {r.data_id["stamp"]: r for r in out.query("cutout")}
    assert set(stored) == {"a", "c"}
    want = campaign.butler.get_cutouts(ref, [Box(10, 10, 20, 30)], mode="strict")[0]
    np.testing.assert_array_equal(out.get(stored["c"]).data, want.data)
    assert stored["c"].provenance is not None
    assert stored["c"].provenance["derived_from"][0]["id"] == ref.id
    # the task's stamps went into one group commit (one log object), the refused one aside
    assert sum(1 for meta in out.store.list("manifest/log/")
               if meta.key.endswith(".json") and not meta.key.startswith("manifest/log/~")) == 1


@pytest.mark.servers
def test_partial_stamps_keep_their_overlap_with_the_image(campaign: Campaign, client: Any) -> None:
    """A stamp padded past the far edges knows which parent pixels it holds (Cutout2D's slices_original)."""
    ref = campaign.refs[1]
    ny, nx = campaign.butler.get(ref).data.shape
    box = (nx - 4, ny - 3, nx + 6, ny + 7)
    results = cutouts(campaign.uri, [{"ref": ref, "box": box}], client=client, store_options=campaign.options,
                      mode="partial", fill_value=0.0)
    want = campaign.butler.get_cutouts(ref, [Box(*box)], mode="partial", fill_value=0.0)[0]
    got = results.stamps[0]
    assert got is not None
    assert got.slices_original == want.slices_original == (slice(ny - 3, ny), slice(nx - 4, nx))
    np.testing.assert_array_equal(got.data, want.data)


@pytest.mark.servers
def test_parallel_ingest_commits_every_item(localstack_backend: Any, client: Any, tmp_path: Path) -> None:
    uri, options = localstack_backend.new_uri(), localstack_backend.options
    butler = Butler.create(uri, **options)
    rng = np.random.default_rng(3)
    items: list[Any] = []
    for i in range(4):
        path = tmp_path / f"raw{i}.fits"
        fits.PrimaryHDU(rng.normal(size=(64, 48)).astype("float32"), header=_wcs(i).to_header()).writeto(path)
        items.append(path)
    items += [NDData(rng.normal(size=(32, 32)).astype("float32"), wcs=_wcs(9)) for _ in range(4)]
    data_ids = [{"exposure": i} for i in range(8)]
    items.append(items[0])
    data_ids.append({"exposure": 0})  # a duplicate: fails alone

    results = ingest(uri, items, "raw", data_ids, "night1", client=client, store_options=options)

    assert [(e.index, e.error_type) for e in results.errors] == [(8, "ConflictError")]
    assert str(items[0]) == results.errors[0].target
    committed = {r.data_id["exposure"]: r for r in butler.query("raw", run="night1")}
    assert sorted(committed) == list(range(8))
    assert [r.id if r else None for r in results.refs] == [committed[i].id for i in range(8)] + [None]
    with fits.open(items[2]) as hdul:
        np.testing.assert_array_equal(butler.get(committed[2]).data, hdul[0].data)
    np.testing.assert_array_equal(butler.get(committed[5]).data, items[5].data)


def test_ingest_of_file_paths_only_as_in_the_docs(client: Any, tmp_path: Path) -> None:
    """docs/dask.md's call: file paths only, one data ID for all, header keys tell the files apart."""
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri)
    rng = np.random.default_rng(4)
    paths = []
    for exposure in range(3):
        header = _wcs(exposure).to_header()
        header["EXPID"], header["DETECTOR"] = 100 + exposure, 7
        path = tmp_path / f"raw{exposure}.fits"
        fits.PrimaryHDU(rng.normal(size=(16, 12)).astype("float32"), header=header).writeto(path)
        paths.append(path)
    results = ingest(uri, sorted(paths), "raw", {"instrument": "LATISS"}, run="night1",
                     header_keys={"exposure": "EXPID", "detector": "DETECTOR"}, client=client)
    assert results.errors == []
    assert sorted(r.data_id["exposure"] for r in butler.query("raw")) == [100, 101, 102]
    with fits.open(paths[1]) as hdul:
        np.testing.assert_array_equal(butler.get("raw", {"instrument": "LATISS", "exposure": 101, "detector": 7}).data,
                                      hdul[0].data)


def test_an_ingest_task_commits_its_items_together(client: Any, tmp_path: Path) -> None:
    """One task of 6 files and 6 objects makes two registry commits, not twelve; a taken data ID fails alone."""
    butler = Butler.create(str(tmp_path / "repo"))
    rng = np.random.default_rng(5)
    items: list[Any] = []
    for i in range(6):
        path = tmp_path / f"f{i}.fits"
        fits.PrimaryHDU(rng.normal(size=(8, 8)).astype("float32")).writeto(path)
        items.append(path)
    items += [NDData(rng.normal(size=(8, 8)).astype("float32")) for _ in range(6)]
    butler.put(items[-1], "raw", {"exposure": 11}, run="night1")  # taken before the ingest
    before = sum(1 for meta in butler.store.list("manifest/log/") if meta.key.endswith(".json"))
    results = ingest(butler.uri, items, "raw", [{"exposure": i} for i in range(12)], run="night1", client=client,
                     items_per_task=12)
    assert [(e.index, e.error_type) for e in results.errors] == [(11, "ConflictError")]
    after = sum(1 for meta in butler.store.list("manifest/log/") if meta.key.endswith(".json"))
    assert after - before == 2
    assert len(butler.query("raw", run="night1")) == 12


# -- no cluster needed ----------------------------------------------------------------------------


def test_parse_requests_from_a_table_with_masked_cells() -> None:
    table = Table(
        {"visit": [1, 1, 2], "ra": [150.0, np.nan, 150.1], "dec": [2.0, np.nan, 2.1],
         "x0": np.ma.masked_array([0, 5, 0], mask=[True, False, True]),
         "y0": np.ma.masked_array([0, 6, 0], mask=[True, False, True]),
         "x1": np.ma.masked_array([0, 15, 0], mask=[True, False, True]),
         "y1": np.ma.masked_array([0, 16, 0], mask=[True, False, True])}
    )
    parsed = parse_requests(table, dataset_type="calexp", run="run1", size=32)
    assert parsed[0] == CutoutRequest("calexp", {"visit": 1}, "run1", ra=150.0, dec=2.0)
    assert parsed[1].box == Box(5, 6, 15, 16) and parsed[1].ra is None
    assert isinstance(parsed[2].data_id["visit"], int)  # type: ignore[index]
    table["mag"] = [20.1, 21.0, 19.5]  # a catalogue column, not a data ID key
    with pytest.raises(InvalidKeyError, match="'mag'"):
        parse_requests(table, dataset_type="calexp", size=32)
    assert parse_requests(table, dataset_type="calexp", size=32, data_id_keys=["visit"])[0].data_id == {"visit": 1}


@pytest.mark.parametrize(
    "row",
    [
        {"dataset_type": "calexp", "visit": 1},                                     # neither box nor position
        {"dataset_type": "calexp", "visit": 1, "ra": 1.0, "dec": 2.0, "box": (0, 0, 1, 1)},  # both
        {"dataset_type": "calexp", "visit": 1, "ra": 1.0},                          # half a position
        {"dataset_type": "calexp", "visit": 1, "ra": 1.0, "dec": 2.0},              # no size anywhere
        {"dataset_type": "calexp", "visit": 1, "box": (0.5, 0, 1, 1)},              # not whole pixels
    ],
)
def test_malformed_rows_raise_before_anything_runs(row: dict[str, Any]) -> None:
    with pytest.raises(InvalidCutoutError, match="request 1"):
        parse_requests([{"dataset_id": "x", "box": (0, 0, 1, 1)}, row])


def test_packing_keeps_images_whole_and_splits_big_ones() -> None:
    def group(n: int) -> ImageGroup:
        ref = DatasetRef(str(uuid.uuid4()), "calexp", {"visit": n}, "r", "fits", "k", 0, "", "")
        return ImageGroup(ref, tuple(Item(i, Box(0, 0, 1, 1), None, None, None, None) for i in range(n)))

    tasks = _pack([group(50), group(50), group(50), group(500)], target=125)
    sizes = [[len(g.items) for g in task] for task in tasks]
    assert sizes == [[50, 50], [50], [125], [125], [125], [125]]
    assert _auto_task_size(4000, 2) == 1000
    assert _auto_task_size(1000, 2) == 256
    assert _auto_task_size(10**7, 8) == 2000


def test_sky_positions_without_an_image_use_the_sky_index(client: Any, tmp_path: Path) -> None:
    """A catalogue of positions alone: each row answers once per image holding it, as Butler.cutouts_at cuts them."""
    from objbutler.testing.skyfield import pvis

    uri = str(tmp_path / "repo")
    butler = Butler.create(uri)
    for visit, hdu in enumerate(pvis(6, shape=(90, 80), field=(150.1, 2.2))):
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi", format="zarr" if visit % 2 else "fits")
    rng = np.random.default_rng(2)
    ra, dec = 150.1 + rng.uniform(-0.003, 0.003, 15), 2.2 + rng.uniform(-0.003, 0.003, 15)
    table = Table({"ra": [*ra, 151.0], "dec": [*dec, 3.0], "mag": rng.uniform(18, 22, 16)})  # the last: no image
    results = cutouts(uri, table, client=client, dataset_type="calexp", size=9, data_id_keys=())
    expected = butler.cutouts_at(SkyCoord(ra, dec, unit="deg"), 9, "calexp")
    found = butler.find_images(SkyCoord(ra, dec, unit="deg"), "calexp")
    assert results.unmatched == [15]
    assert [(row, ref.id) for row, ref in zip(results.rows, results.refs, strict=True)] == [
        (row, ref.id) for row, refs in enumerate(found) for ref in refs]
    assert len(results) > 30
    want = {(row, ref.id): stamp for row, pairs in enumerate(expected) for ref, stamp in pairs}
    failed = {record.index for record in results.errors}
    for index, (row, ref, stamp) in enumerate(zip(results.rows, results.refs, results.stamps, strict=True)):
        assert ref is not None
        if (row, ref.id) not in want:  # cutouts_at skipped it (a position past the pixel bounds)
            assert index in failed
            continue
        assert stamp is not None and stamp.ref == ref and stamp.index == index
        assert stamp.bbox == want[(row, ref.id)].bbox
        np.testing.assert_array_equal(stamp.data, want[(row, ref.id)].data)
    with pytest.raises(InvalidKeyError, match="name the image"):
        parse_requests([{"box": (0, 0, 1, 1)}])  # a box still needs its image


def test_cli_cutout_runs_on_a_scheduler(client: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from objbutler.cli import main

    repo = str(tmp_path / "repo")
    butler = Butler.create(repo)
    data = np.random.default_rng(5).normal(size=SHAPE).astype("float32")
    butler.put(NDData(data, wcs=_wcs(4)), "calexp", {"visit": 1}, run="r")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("x0,y0,x1,y1\n0,0,10,12\n310,230,326,246\n40,50,56,66\n")
    radec = tmp_path / "radec.csv"
    ra, dec = _wcs(4).pixel_to_world_values([20.0, 100.5, 200.0], [30.0, 60.0, 220.25])
    radec.write_text("ra,dec\n" + "".join(f"{float(r)!r},{float(d)!r}\n" for r, d in zip(ra, dec, strict=True)))
    for table, extra in ((boxes, ["--boxes", str(boxes)]), (radec, ["--radec", str(radec), "--size", "16"])):
        outputs = {}
        for name, where in (("serial", []), ("dask", ["--scheduler", client.scheduler.address])):
            outputs[name] = tmp_path / f"{table.stem}-{name}.npz"
            result = CliRunner().invoke(main, ["cutout", repo, "calexp", "--data-id", "visit=1", *extra, *where,
                                               "--out", str(outputs[name])], catch_exceptions=False)
            assert result.exit_code == 0, result.output
        with np.load(outputs["serial"]) as serial, np.load(outputs["dask"]) as distributed_:
            assert sorted(serial.files) == sorted(distributed_.files)
            for key in serial.files:
                np.testing.assert_array_equal(serial[key], distributed_[key])
    result = CliRunner().invoke(main, ["cutout", repo, "calexp", "--data-id", "visit=1", "--boxes", str(boxes),
                                       "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"])
    assert result.exit_code != 0 and "not both" in result.output


def test_a_local_cluster_takes_no_fixed_port(capfd: pytest.CaptureFixture[str]) -> None:
    """``--workers N`` starts a cluster whose scheduler HTTP server takes a free port, not 8787 (and no warning)."""
    import socket
    import warnings

    from objbutler.dask import connect

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))  # another cluster's dashboard, say
        holder.listen()
    except OSError:
        pass  # taken already (by another cluster, say): that is the case itself
    try:
        with warnings.catch_warnings(record=True) as caught, connect(workers=1) as client:
            warnings.simplefilter("always")
            assert client.submit(sum, [20, 22]).result() == 42
            ports = client.scheduler_info().get("services", {}).values()
    finally:
        holder.close()
    assert 8787 not in ports
    messages = [str(w.message) for w in caught] + [capfd.readouterr().err]
    assert not [m for m in messages if "already in use" in m], messages
