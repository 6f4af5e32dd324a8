"""The Butler API on the embedded backends: repositories, put/get round trips, queries, bad input."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, NDData
from astropy.table import Table
from astropy.wcs import WCS

from objbutler import Butler, DatasetRef
from objbutler.errors import (
    AlreadyExistsError,
    ConflictError,
    FormatError,
    InvalidKeyError,
    NotFoundError,
)


@pytest.fixture(params=["local", "memory"])
def butler(request: pytest.FixtureRequest, tmp_path: Path) -> Butler:
    uri = str(tmp_path / "repo") if request.param == "local" else f"memory://{uuid.uuid4().hex}"
    return Butler.create(uri)


def make_wcs(shape: tuple[int, int]) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = [[-5.5e-5, 1e-7], [2e-7, 5.5e-5]]
    return wcs


def make_hdu(shape: tuple[int, int] = (300, 200), dtype: str = "float32") -> fits.PrimaryHDU:
    rng = np.random.default_rng(3)
    data = (rng.normal(100, 10, shape) * (100 if "int" in dtype else 1)).astype(dtype)
    header = make_wcs(shape).to_header()
    header["EXPTIME"] = (30.0, "seconds")
    header["FILTER"] = "r"
    header["VISIT"] = 903334
    header["HISTORY"] = "made by a test"
    return fits.PrimaryHDU(data, header=header)


# -- repositories --------------------------------------------------------------


def test_create_twice_and_open_missing(tmp_path: Path) -> None:
    Butler.create(str(tmp_path / "r"))
    with pytest.raises(AlreadyExistsError):
        Butler.create(str(tmp_path / "r"))
    with pytest.raises(NotFoundError, match="no objbutler repository"):
        Butler(str(tmp_path / "elsewhere"))


def test_corrupt_config_is_a_format_error(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "r"))
    butler.store.put("objbutler.json", b"{not json")
    with pytest.raises(FormatError):
        Butler(str(tmp_path / "r"))


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "int32", "uint16", "uint8", ">f4"])
def test_image_round_trip_is_exact(butler: Butler, fmt: str, dtype: str) -> None:
    hdu = make_hdu(dtype=dtype)
    ref = butler.put(hdu, "calexp", {"visit": 903334, "detector": 22}, run="run1", format=fmt)
    back = butler.get(ref)
    assert isinstance(back, NDData)
    assert back.data.dtype == np.dtype(dtype).newbyteorder("=") or back.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.data, hdu.data)
    assert back.data.shape == hdu.data.shape
    for key in ("EXPTIME", "FILTER", "VISIT"):
        assert back.meta[key] == hdu.header[key]
    assert back.meta.comments["EXPTIME"] == "seconds"
    assert "made by a test" in str(back.meta["HISTORY"])
    original = WCS(hdu.header)
    np.testing.assert_allclose(back.wcs.wcs.crval, original.wcs.crval)
    np.testing.assert_allclose(back.wcs.pixel_scale_matrix, original.pixel_scale_matrix)
    np.testing.assert_allclose(back.wcs.wcs.crpix, original.wcs.crpix)


def test_put_accepts_every_image_type(butler: Butler) -> None:
    hdu = make_hdu()
    data = hdu.data
    objects = {
        "array": data,
        "hdu": hdu,
        "imagehdu": fits.ImageHDU(data, header=hdu.header),
        "hdulist": fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=hdu.header)]),
        "nddata": NDData(data, wcs=WCS(hdu.header), meta={"FILTER": "r"}),
        "ccddata": CCDData(data, unit="adu", wcs=WCS(hdu.header), meta={"FILTER": "r"}),
    }
    for detector, (name, obj) in enumerate(objects.items()):
        ref = butler.put(obj, "img", {"visit": 1, "detector": detector}, run="r")
        back = butler.get("img", {"visit": 1, "detector": detector}, run="r")
        np.testing.assert_array_equal(back.data, data, err_msg=name)
        if name != "array":
            assert back.wcs is not None, name
        assert ref.format == "fits"


def test_metadata_and_table_datasets(butler: Butler) -> None:
    metric = {"metric": "PA1", "value": 5.1, "unit": "mmag", "nested": {"n": [1, 2]}}
    ref = butler.put(metric, "metric", {"visit": 7, "detector": 1}, run="squash")
    assert ref.format == "json"
    assert butler.get(ref) == metric
    table = Table({"time": [1.0, 2.0, 3.0], "temp": [10.5, 10.7, 10.2]})
    for fmt in ("parquet", "ecsv"):
        tref = butler.put(table, f"efd_{fmt}", {"day_obs": 20261126}, run="efd", format=fmt)
        back = butler.get(tref)
        assert list(back["temp"]) == [10.5, 10.7, 10.2]
    with pytest.raises(FormatError):
        butler.put({"bad": math.nan}, "metric", {"visit": 8, "detector": 1}, run="squash")
    with pytest.raises(FormatError):
        butler.put(metric, "metric2", {"visit": 8}, run="squash", format="fits")


def test_ref_fields(butler: Butler) -> None:
    ref = butler.put(make_hdu(), "calexp", {"visit": 903334, "detector": 22}, run="run1")
    assert isinstance(ref, DatasetRef)
    uuid.UUID(ref.id)
    assert ref.dataset_type == "calexp"
    assert ref.data_id == {"detector": 22, "visit": 903334}
    assert ref.run == "run1"
    assert ref.format == "fits"
    assert ref.key.startswith("data/run1/calexp/") and ref.key.endswith(".fits")
    assert ref.checksum.startswith("sha256:") and ref.size == butler.store.head(ref.key).size


def test_stock_astropy_and_zarr_read_what_we_wrote(tmp_path: Path) -> None:
    import zarr

    butler = Butler.create(str(tmp_path / "repo"))
    hdu = make_hdu()
    fref = butler.put(hdu, "calexp", {"visit": 1, "detector": 1}, run="r", format="fits")
    zref = butler.put(hdu, "calexp", {"visit": 1, "detector": 2}, run="r", format="zarr")
    with fits.open(tmp_path / "repo" / fref.key) as hdul:
        np.testing.assert_array_equal(hdul[0].data, hdu.data)
        assert hdul[0].header["FILTER"] == "r"
    array = zarr.open_array(str(tmp_path / "repo" / zref.key), mode="r")
    np.testing.assert_array_equal(array[:], hdu.data)


# -- queries -------------------------------------------------------------------


def test_query(butler: Butler) -> None:
    for visit in range(10):
        for detector in range(3):
            butler.put({"v": visit}, "metric", {"visit": visit, "detector": detector}, run=f"run{visit % 2}")
    butler.put({"v": -1}, "other", {"band": "r"}, run="run0")
    assert len(butler.query()) == 31
    assert len(butler.query("metric")) == 30
    assert len(butler.query("metric", where={"visit": 3})) == 3
    assert len(butler.query("metric", where={"visit": 3}, run="run1")) == 3
    assert butler.query("metric", where={"visit": 3}, run="run0") == []
    assert len(butler.query("metric", where={"visit": [1, 2], "detector": 0})) == 2
    assert len(butler.query("metric", where={"visit": range(2, 5)})) == 9
    assert len(butler.query(where={"band": "r"})) == 1
    # a query that could only match nothing by mistake says why, naming what is registered
    with pytest.raises(InvalidKeyError, match=r"'nonexistent'.*\['band', 'detector', 'visit'\]"):
        butler.query(where={"nonexistent": 1})
    with pytest.raises(InvalidKeyError, match=r"'band'.*metric has keys"):
        butler.query("metric", where={"band": "r"})
    with pytest.raises(InvalidKeyError, match=r"holds int values.*str '3'"):
        butler.query("metric", where={"visit": "3"})
    with pytest.raises(InvalidKeyError, match="holds int values"):
        butler.query("metric", where={"visit": [1, "2"]})
    with pytest.raises(InvalidKeyError, match="a range cannot"):
        butler.query(where={"band": range(3)})
    with pytest.raises(InvalidKeyError, match="conditions take"):
        butler.query("metric", where={"visit": {"gt": 3}})
    with pytest.raises(NotFoundError, match=r"'no_such_type'.*registered: \["):
        butler.query("no_such_type")
    assert len(butler.query("metric", where={"visit": np.int64(3)})) == 3  # numpy ints are ints
    with pytest.raises(InvalidKeyError, match=r"lacks \['detector'\]"):
        butler.get("metric", {"visit": 3}, run="run1")


def test_query_after_checkpoint_combines_checkpoint_and_tail(tmp_path: Path) -> None:
    # the sequenced log names checkpoints by position (claimed ones: tests/test_compaction.py)
    butler = Butler.create(str(tmp_path / "r"), checkpoint_interval=10, commit_protocol="sequenced")
    for visit in range(25):
        butler.put({"v": visit}, "metric", {"visit": visit}, run="r")
    assert [m.key for m in butler.store.list("manifest/checkpoints/")][-1].endswith("20.parquet")
    fresh = Butler(str(tmp_path / "r"))
    assert len(fresh.query("metric")) == 25
    assert len(fresh.query("metric", where={"visit": range(15, 22)})) == 7
    assert fresh.get("metric", {"visit": 17}, run="r") == {"v": 17}


@pytest.mark.parametrize("protocol", ["sequenced", "claimed"])
def test_checkpoint_is_plain_parquet(tmp_path: Path, protocol: str) -> None:
    import pyarrow.parquet as pq

    butler = Butler.create(str(tmp_path / "r"), checkpoint_interval=5, commit_protocol=protocol)
    for visit in range(5):
        butler.put({"v": visit}, "metric", {"visit": visit, "band": "g"}, run="r")
    butler.registry.write_checkpoint()  # claimed writers check from a random phase: make sure of one now
    key = sorted(m.key for m in butler.store.list("manifest/checkpoints/"))[-1]
    table = pq.read_table(tmp_path / "r" / key)
    assert table.num_rows == 5
    assert sorted(table["dim.visit"].to_pylist()) == [0, 1, 2, 3, 4]
    assert set(table["dim.band"].to_pylist()) == {"g"}
    assert json.loads(table["data_id"][0].as_py())["band"] == "g"


def test_long_lived_butler_sees_new_commits(tmp_path: Path) -> None:
    reader = Butler.create(str(tmp_path / "r"))
    with pytest.raises(NotFoundError, match="none yet"):
        reader.query("metric")
    writer = Butler(str(tmp_path / "r"))
    writer.put({"v": 1}, "metric", {"visit": 1}, run="r")
    assert len(reader.query("metric")) == 1
    assert reader.get("metric", {"visit": 1}) == {"v": 1}


# -- conflicts and bad input ---------------------------------------------------


def test_duplicate_data_id_conflicts_and_leaves_no_object(butler: Butler) -> None:
    butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    before = sorted(m.key for m in butler.store.list("data/"))
    with pytest.raises(ConflictError):
        butler.put({"v": 2}, "metric", {"visit": 1}, run="r")
    assert sorted(m.key for m in butler.store.list("data/")) == before
    butler.put({"v": 2}, "metric", {"visit": 1}, run="other-run")  # another run is fine


def test_dataset_type_must_keep_its_keys_and_kind(butler: Butler) -> None:
    butler.put({"v": 1}, "metric", {"visit": 1, "detector": 2}, run="r")
    with pytest.raises(ConflictError, match="registered with data ID keys"):
        butler.put({"v": 1}, "metric", {"visit": 2}, run="r")
    with pytest.raises(ConflictError):
        butler.put(np.zeros((4, 4)), "metric", {"visit": 3, "detector": 2}, run="r")
    with pytest.raises(ConflictError, match="holds int values"):
        butler.put({"v": 1}, "other", {"visit": "one"}, run="r")


@pytest.mark.parametrize(
    "data_id",
    [
        {"visit": math.nan},
        {"visit": math.inf},
        {"visit": 1.5},
        {"visit": True},
        {"visit": None},
        {"visit": "a/b"},
        {"visit": ".."},
        {"visit": "x" * 10_000},
        {"visit": "tab\tin"},
        {"visit": 2**70},
        {"Visit": 1},
        {"../x": 1},
        [("visit", 1)],
    ],
)
def test_bad_data_ids_rejected_before_any_write(butler: Butler, data_id: object) -> None:
    with pytest.raises(InvalidKeyError):
        butler.put({"v": 1}, "metric", data_id, run="r")  # type: ignore[arg-type]
    assert list(butler.store.list("data/")) == []


@pytest.mark.parametrize("run", ["", "../escape", "a//b", "/abs", "tab\t", "x" * 500])
def test_bad_runs_rejected(butler: Butler, run: str) -> None:
    with pytest.raises(InvalidKeyError):
        butler.put({"v": 1}, "metric", {"visit": 1}, run=run)


@pytest.mark.parametrize("name", ["", "a/b", "../x", "has space", 3])
def test_bad_dataset_type_names_rejected(butler: Butler, name: object) -> None:
    with pytest.raises(InvalidKeyError):
        butler.put({"v": 1}, name, {"visit": 1}, run="r")  # type: ignore[arg-type]


def test_wrong_object_types_are_clear_errors(butler: Butler) -> None:
    for obj in (object(), "a string", np.array(["a", "b"]), fits.PrimaryHDU()):
        with pytest.raises(FormatError):
            butler.put(obj, "img", {"visit": 1}, run="r")
    assert list(butler.store.list("data/")) == []


def test_get_errors(butler: Butler) -> None:
    butler.put({"v": 1}, "metric", {"visit": 1}, run="a")
    butler.put({"v": 2}, "metric", {"visit": 1}, run="b")
    with pytest.raises(NotFoundError, match="unknown dataset type"):
        butler.get("nope", {"visit": 1})
    with pytest.raises(NotFoundError):
        butler.get("metric", {"visit": 2}, run="a")
    with pytest.raises(InvalidKeyError, match="several runs"):
        butler.get("metric", {"visit": 1})
    assert butler.get("metric", {"visit": 1}, run="b") == {"v": 2}


def test_derived_from_must_be_subset_of_inputs(butler: Butler) -> None:
    a = butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    b = butler.put({"v": 2}, "metric", {"visit": 2}, run="r")
    with pytest.raises(ValueError, match="subset"):
        butler.put({"v": 3}, "metric", {"visit": 3}, run="r", inputs=[a], derived_from=[b])
    ref = butler.put({"v": 3}, "metric", {"visit": 3}, run="r", inputs=[a, b], derived_from=[a])
    assert [link["id"] for link in ref.provenance["inputs"]] == [a.id, b.id]
    assert [link["id"] for link in butler.query("metric", where={"visit": 3})[0].provenance["derived_from"]] == [a.id]


def test_butler_pickles(tmp_path: Path) -> None:
    import pickle

    butler = Butler.create(str(tmp_path / "r"))
    butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    clone = pickle.loads(pickle.dumps(butler))
    assert clone.get("metric", {"visit": 1}) == {"v": 1}
