"""Data in equals data out, or a clear refusal: the round trips tests/test_fidelity.py does not cover.

Every case puts one object into a fresh local repository and either

* gets back exactly what was put (by ref and by data ID): values bit for bit, dtype (byte order
  aside), shape, unit, mask, uncertainty, table and column metadata, header cards in order; or
* is refused by ``put`` with an error from objbutler's tree (``FormatError``, ``NotSupportedError``)
  and leaves nothing behind: no object in the store, no registry entry.

A put that succeeds and a get that then fails, or returns something else, is a silent change.

Covered: astropy Tables and QTables as ``parquet`` and ``ecsv`` (masked columns of every kind,
Quantity and Time and SkyCoord columns, multidimensional, bytes and unicode strings, empty and
whitespace strings, every integer width, float16, complex, big-endian, object columns, column
description/format/meta, table meta with nested, non-string-keyed, tuple and non-JSON values, zero
rows, odd column names); dicts as ``json`` (NaN/inf, big integers, tuples, non-string keys, numpy
values, bytes, datetimes, surrogates, deep nesting); images as ``fits`` and ``zarr`` (F-ordered,
strided, negative-stride, transposed, 1-D to 5-D, every pixel type and the ones refused, big-endian,
NaN payloads, numpy masked arrays, hostile header cards, NDData meta, units, CCDData flags and psf).
Tests that fail document a silent change (see the report that came with this file).
"""

from __future__ import annotations

import collections
import datetime
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.table import Column, MaskedColumn, QTable, Table
from astropy.time import Time
from astropy.utils.masked import Masked

from objbutler import Butler
from objbutler.errors import FormatError, NotSupportedError
from objbutler.registry.records import DatasetRef

DOCUMENTED = (FormatError, NotSupportedError)
"""What a refusal of an object that cannot be stored may raise (objbutler/errors.py)."""

TYPE, DATA_ID, RUN = "thing", {"n": 1}, "r"


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    return Butler.create(str(tmp_path / "repo"))


def _all_keys(butler: Butler) -> set[str]:
    return {meta.key for meta in butler.store.list()}


def _put_or_refusal(butler: Butler, obj: Any, fmt: str | None) -> DatasetRef | None:
    """The ref of a put that succeeded, or None after checking the refusal was clean and documented."""
    before = _all_keys(butler)
    error: Exception
    try:
        return butler.put(obj, TYPE, DATA_ID, run=RUN, format=fmt)
    except Exception as exc:  # which class it is, is what is checked below
        error = exc
    assert _all_keys(butler) == before, "a refused put left objects in the store"
    assert butler.query() == [], "a refused put left a registry entry"
    assert isinstance(error, DOCUMENTED), (
        f"refused with {type(error).__module__}.{type(error).__name__}, not an error of objbutler.errors: {error}")
    return None


def _get(butler: Butler, ref: DatasetRef) -> Any:
    try:
        return butler.get(ref)
    except Exception as exc:  # a put that was accepted must read back
        pytest.fail(f"put accepted the object but get cannot read it back: {type(exc).__name__}: {exc}")


def _round_trip(butler: Butler, obj: Any, fmt: str | None, *, must_keep: bool = False) -> Any | None:
    """What get returns for ``obj``, or None when put refused it cleanly (a failure if ``must_keep``)."""
    ref = _put_or_refusal(butler, obj, fmt)
    if ref is None:
        assert not must_keep, f"put refused an object {fmt} is documented to hold"
        return None
    return _get(butler, ref)


def _same(a: Any, b: Any) -> bool:
    """Deep equality that also requires the same types (a tuple is not a list, 1 is not "1"); NaN equals NaN."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys_a = {(type(k), k) for k in a}
        return keys_a == {(type(k), k) for k in b} and all(_same(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, np.ndarray | u.Quantity):
        return bool(np.shape(a) == np.shape(b) and np.all(a == b))
    return bool(a == b)


# ==================================================================== tables


def _mask(column: Any) -> np.ndarray:
    """The column's mask as a boolean array of its shape (all False when it has none)."""
    mask = getattr(column, "mask", None)
    shape = np.shape(column)
    return np.zeros(shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), shape)


def _plain(column: Any) -> np.ndarray:
    """The column's values without unit or mask."""
    if isinstance(column, Masked):
        column = column.unmasked
    if isinstance(column, u.Quantity):
        return np.asarray(column.value)
    if isinstance(column, np.ma.MaskedArray):
        return np.asarray(column.data)
    return np.asarray(column)


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("=")


def _column_problems(name: str, got: Any, put: Any, fmt: str = "parquet") -> list[str]:
    problems = []
    if isinstance(put, SkyCoord):
        if not isinstance(got, SkyCoord):
            return [f"{name}: SkyCoord came back as {type(got).__name__}"]
        if got.frame.name != put.frame.name or not (np.all(got.ra == put.ra) and np.all(got.dec == put.dec)):
            problems.append(f"{name}: SkyCoord {put} came back as {got}")
        return problems
    put_mask, got_mask = _mask(put), _mask(got)
    if got_mask.shape != put_mask.shape or not np.array_equal(got_mask, put_mask):
        problems.append(f"{name}: mask {put_mask.tolist()} came back as {got_mask.tolist()}")
    if isinstance(put, Time):
        if not isinstance(got, Time):
            return [*problems, f"{name}: Time came back as {type(got).__name__}"]
        for attr in ("scale", "format", "precision", "location"):
            if not _same(getattr(got, attr), getattr(put, attr)):
                problems.append(f"{name}: Time {attr} {getattr(put, attr)!r} came back as {getattr(got, attr)!r}")
        keep = ~put_mask
        if got.shape == put.shape and not np.all(got[keep] == put[keep]):
            delta = (got[keep] - put[keep]).to(u.ns)
            problems.append(f"{name}: Time values changed by up to {np.max(np.abs(delta)):.3g}")
        return problems
    put_values, got_values = _plain(put), _plain(got)
    width_only = (fmt == "ecsv" and put_values.dtype.kind == "U" and got_values.dtype.kind == "U")
    if _native(got_values.dtype) != _native(put_values.dtype) and not width_only:  # ECSV strings have no width
        problems.append(f"{name}: dtype {put_values.dtype} came back as {got_values.dtype}")
    if got_values.shape != put_values.shape:
        return [*problems, f"{name}: shape {put_values.shape} came back as {got_values.shape}"]
    keep = ~put_mask
    nan = put_values.dtype.kind in "fc" and got_values.dtype.kind in "fc"
    if not np.array_equal(got_values[keep], put_values[keep], equal_nan=nan):
        problems.append(f"{name}: values {put_values.tolist()!r} came back as {got_values.tolist()!r}")
    if getattr(got, "unit", None) != getattr(put, "unit", None):
        problems.append(f"{name}: unit {getattr(put, 'unit', None)!r} came back as {getattr(got, 'unit', None)!r}")
    for attr in ("description", "format", "meta"):
        want, have = getattr(put.info, attr, None) or None, getattr(got.info, attr, None) or None
        if not _same(have, want):
            problems.append(f"{name}: info.{attr} {want!r} came back as {have!r}")
    return problems


def _assert_tables_equal(got: Any, put: Table, fmt: str = "parquet") -> None:
    assert isinstance(got, Table), f"get returned a {type(got).__name__}"
    assert got.colnames == put.colnames, f"columns {put.colnames} came back as {got.colnames}"
    assert len(got) == len(put)
    problems = [p for name in put.colnames for p in _column_problems(name, got[name], put[name], fmt)]
    if not _same(dict(got.meta), dict(put.meta)):
        problems.append(f"table meta {dict(put.meta)!r} came back as {dict(got.meta)!r}")
    assert not problems, "; ".join(problems)


def _masked_time() -> Table:
    times = Time([60000.5, 60001.25, 60002.0], format="mjd", scale="tai")
    times[1] = np.ma.masked
    return Table({"t": times})


TABLES: dict[str, tuple[Callable[[], Table], bool]] = {
    # name: (factory, both formats are documented to hold it: refusing it is a failure too)
    "ints_floats_nan": (lambda: Table({"a": [1, 2, 3], "b": [1.5, -0.0, np.nan]}), True),
    "unit_column": (lambda: Table({"a": Column([1.0, 2.0], unit="erg / (cm2 s)")}), True),
    "scaled_and_log_units": (lambda: Table({"a": Column([1.0], unit=u.Unit("10 m")),
                                            "b": Column([2.0], unit=u.dex(u.cm / u.s**2))}), True),
    "bool": (lambda: Table({"a": [True, False]}), True),
    "uint8": (lambda: Table({"a": np.array([0, 255], np.uint8)}), True),
    "uint16": (lambda: Table({"a": np.array([0, 65535], np.uint16)}), True),
    "uint32": (lambda: Table({"a": np.array([0, 2**32 - 1], np.uint32)}), True),
    "uint64": (lambda: Table({"a": np.array([0, 2**64 - 1], np.uint64)}), True),
    "int8": (lambda: Table({"a": np.array([-128, 127], np.int8)}), True),
    "int64_extremes": (lambda: Table({"a": np.array([-(2**63), 2**63 - 1], np.int64)}), True),
    "float16": (lambda: Table({"a": np.array([1.5, 65504.0], np.float16)}), True),
    "float32": (lambda: Table({"a": np.array([0.1, 3.4e38], np.float32)}), True),
    "unicode": (lambda: Table({"a": ["héllo", "日本", "😀"]}), True),
    "zero_rows_float": (lambda: Table({"a": np.array([], np.float32)}), True),
    "odd_names": (lambda: Table({"a b": [1], "ñ": [2], "1": [3], "x.y": [4]}), True),
    "json_meta": (lambda: Table({"a": [1]}, meta={"x": {"y": [1, 2.5, None, "z"]}, "b": True}), True),
    "time_mjd_tai": (lambda: Table({"t": Time([60000.5, 60001.25], format="mjd", scale="tai")}), True),
    "qtable_quantity": (lambda: QTable({"a": [1.0, 2.0] * u.m, "b": [1, 2]}), False),
    "masked_int": (lambda: Table({"a": MaskedColumn([1, 2, 3], mask=[0, 1, 0])}), False),
    "masked_float": (lambda: Table({"a": MaskedColumn([1.0, 2.0, 3.0], mask=[0, 1, 0], unit="m")}), False),
    "masked_str": (lambda: Table({"a": MaskedColumn(["x", "yy", "z"], mask=[0, 1, 0])}), False),
    "masked_bool": (lambda: Table({"a": MaskedColumn([True, False, True], mask=[0, 1, 0])}), False),
    "masked_all": (lambda: Table({"a": MaskedColumn([1, 2], mask=[1, 1])}), False),
    "masked_quantity": (lambda: QTable({"a": Masked([1.0, 2.0] * u.m, mask=[False, True])}), False),
    "masked_time": (_masked_time, False),
    "multidim_int": (lambda: Table({"a": np.arange(12).reshape(4, 3)}), False),
    "multidim_float_3d": (lambda: Table({"a": np.arange(24.0).reshape(2, 3, 4)}), False),
    "multidim_masked": (lambda: Table({"a": MaskedColumn(np.arange(6).reshape(3, 2), mask=[[0, 1], [0, 0], [1, 1]])}),
                        False),
    "multidim_str": (lambda: Table({"a": np.array([["a", "b"], ["c", "d"]])}), False),
    "bytes": (lambda: Table({"a": np.array([b"ab", b"c"])}), False),
    "empty_string": (lambda: Table({"a": ["", "x"]}), False),
    "whitespace_strings": (lambda: Table({"a": ["a ", " b", "\tc"]}), False),
    "string_width": (lambda: Table({"a": np.array(["a", "b"], "U10")}), False),
    "zero_rows_str": (lambda: Table({"a": np.array([], np.int16), "b": np.array([], "U3")}), False),
    "complex": (lambda: Table({"a": np.array([1 + 2j, 3 - 4j])}), False),
    "big_endian": (lambda: Table({"a": np.array([1, 2], ">i4"), "b": np.array([1.5, 2.5], ">f8")}), False),
    "object_mixed": (lambda: Table({"a": np.array([1, "x", None], dtype=object)}), False),
    "object_str": (lambda: Table({"a": np.array(["x", "y"], dtype=object)}), False),
    "datetime64": (lambda: Table({"a": np.array(["2020-01-01", "2021-06-01T12:00"], "datetime64[ns]")}), False),
    "time_sub_millisecond": (lambda: Table({"t": Time(["2024-01-01T00:00:00.123456789", "2024-06-01T12:00:00"],
                                                      scale="utc", precision=9)}), False),
    "time_sub_millisecond_default_precision": (
        lambda: Table({"t": Time(["2024-01-01T00:00:00.123456789", "2024-06-01T12:00:00"], scale="utc")}), False),
    "time_location": (lambda: Table({"t": Time([60000.5], format="mjd",
                                               location=(10 * u.deg, 20 * u.deg, 30 * u.m))}), False),
    "skycoord": (lambda: Table({"c": SkyCoord([1.5, 2.0] * u.deg, [3.0, -4.25] * u.deg)}), False),
    "column_info": (lambda: Table([Column([1.0, 2.0], name="a", description="flux", format="%.3f", unit="Jy",
                                          meta={"ucd": "phot.flux"})]), False),
    "meta_int_key": (lambda: Table({"a": [1]}, meta={1: "one"}), False),
    "meta_tuple": (lambda: Table({"a": [1]}, meta={"t": (1, 2)}), False),
    "meta_quantity": (lambda: Table({"a": [1]}, meta={"exptime": 30 * u.s, "band": "r"}), False),
    "meta_not_serializable": (lambda: Table({"a": [1]}, meta={"f": Path("/x"), "band": "r"}), False),
    "unrecognized_unit": (lambda: Table({"a": Column([1.0], unit=u.Unit("blarg", parse_strict="silent"))}), False),
    "name_with_newline": (lambda: Table({"x\ny": [2]}), False),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", ["parquet", "ecsv"])
@pytest.mark.parametrize("case", list(TABLES))
def test_table_round_trips_or_is_refused(butler: Butler, fmt: str, case: str) -> None:
    factory, must_keep = TABLES[case]
    got = _round_trip(butler, factory(), fmt, must_keep=must_keep)
    if got is not None:
        _assert_tables_equal(got, factory(), fmt)


@pytest.mark.parametrize("fmt", ["parquet", "ecsv"])
def test_table_get_by_ref_and_by_data_id_agree(butler: Butler, fmt: str) -> None:
    put = Table({"a": Column([1.0, 2.0], unit="m", description="d"), "b": ["x", "yz"]}, meta={"k": 1})
    ref = butler.put(put, TYPE, DATA_ID, run=RUN, format=fmt)
    for got in (butler.get(ref), butler.get(TYPE, DATA_ID, run=RUN)):
        _assert_tables_equal(got, put, fmt)


def test_parquet_tables_written_before_masks_and_yaml_meta_still_read(butler: Butler) -> None:
    """Tables put by objbutler before 2026-12-01: meta as JSON in ``astropy_meta``, Time as MJD only."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from objbutler.formats.dispatch import read_dataset

    time = pa.field("t", pa.float64(), metadata={"astropy_time_scale": "tai", "astropy_time_format": "mjd",
                                                  "astropy_time_shown_as": "isot"})
    flux = pa.field("flux", pa.float64(), metadata={"unit": "Jy", "description": "flux"})
    old = pa.Table.from_arrays([pa.array([60000.5, 60001.0]), pa.array([1.5, np.nan])],
                               schema=pa.schema([time, flux], metadata={"astropy_meta": '{"band": "r"}'}))
    sink = io.BytesIO()
    pq.write_table(old, sink)
    butler.store.put("data/old.parquet", sink.getvalue())
    table = read_dataset(butler.store, "data/old.parquet", "parquet")
    assert dict(table.meta) == {"band": "r"}
    assert table["t"].scale == "tai" and table["t"].format == "isot" and table["t"][0].mjd == 60000.5
    assert table["flux"].unit == u.Jy and table["flux"].info.description == "flux"
    assert table["flux"][0] == 1.5 and np.isnan(table["flux"][1])


# ==================================================================== dicts

_deep: dict[str, Any] = {}
_level = _deep
for _ in range(5000):
    _level["x"] = {}
    _level = _level["x"]

DICTS: dict[str, tuple[Any, bool]] = {
    "scalars": ({"s": "x", "i": -3, "f": 0.1, "z": -0.0, "t": True, "n": None, "l": [1, [2, {}]]}, True),
    "extreme_floats": ({"max": 1.7976931348623157e308, "tiny": 5e-324}, True),
    "big_ints": ({"a": 2**53 + 1, "b": 2**64 + 7, "c": -(2**70)}, True),
    "unicode": ({"é": "日本", "emoji": "😀", "nul": "a\x00b", "newline": "a\nb"}, True),
    "empty": ({}, True),
    "ordered": (collections.OrderedDict([("b", 1), ("a", 2)]), True),
    "nan": ({"a": math.nan}, False),
    "inf": ({"a": [1.0, -math.inf]}, False),
    "tuple": ({"a": (1, 2)}, False),
    "int_key": ({1: "a"}, False),
    "float_key": ({1.5: "a"}, False),
    "bool_key": ({True: 1}, False),
    "none_key": ({None: 1}, False),
    "int_and_str_key": ({1: "a", "1": "b"}, False),
    "numpy_int": ({"a": np.int64(3)}, False),
    "numpy_float32": ({"a": np.float32(0.1)}, False),
    "numpy_array": ({"a": np.arange(3)}, False),
    "bytes": ({"a": b"x"}, False),
    "datetime": ({"a": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}, False),
    "set": ({"a": {1, 2}}, False),
    "complex": ({"a": 1j}, False),
    "lone_surrogate": ({"a": "\ud800"}, False),
    "huge_int": ({"a": 10**5000}, False),
    "deep_nesting": (_deep, False),
}


@pytest.mark.parametrize("case", list(DICTS))
def test_dict_round_trips_or_is_refused(butler: Butler, case: str) -> None:
    put, must_keep = DICTS[case]
    got = _round_trip(butler, put, "json", must_keep=must_keep)
    if got is not None:
        assert isinstance(got, dict)
        assert _same(got, put), f"{put!r} came back as {got!r}"[:500]


# ==================================================================== images


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=_native(array.dtype)).tobytes()


def _nan_payload() -> np.ndarray:
    quiet_nan_with_payload = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)[0]
    return np.array([[quiet_nan_with_payload, np.inf], [-np.inf, -0.0]], np.float32)


PIXELS: dict[str, tuple[Callable[[], np.ndarray], bool]] = {
    "f_order": (lambda: np.asfortranarray(np.arange(20, dtype=np.int32).reshape(4, 5)), True),
    "strided": (lambda: np.arange(200, dtype=np.float64).reshape(10, 20)[::2, 1::3], True),
    "negative_strides": (lambda: np.arange(20, dtype=np.int16).reshape(4, 5)[::-1, ::-1], True),
    "transposed": (lambda: np.arange(20, dtype=np.float32).reshape(4, 5).T, True),
    "read_only": (lambda: np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), np.float32).reshape(2, 3), True),
    "1d": (lambda: np.arange(7, dtype=np.float64), True),
    "4d": (lambda: np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5), True),
    "5d": (lambda: np.arange(96, dtype=np.int32).reshape(2, 2, 2, 3, 4), True),
    "1x1": (lambda: np.ones((1, 1), np.float32), True),
    "uint8": (lambda: np.array([[0, 255]], np.uint8), True),
    "int8": (lambda: np.array([[-128, 127], [0, -1]], np.int8), True),
    "uint16": (lambda: np.array([[0, 65535], [1, 32768]], np.uint16), True),
    "uint32": (lambda: np.array([[0, 2**32 - 1], [1, 2**31]], np.uint32), True),
    "uint64": (lambda: np.array([[0, 2**64 - 1], [1, 2**63]], np.uint64), True),
    "int64_extremes": (lambda: np.array([[-(2**63), 2**63 - 1]], np.int64), True),
    "big_endian_f8": (lambda: np.arange(6, dtype=">f8").reshape(2, 3), True),
    "big_endian_u2": (lambda: np.arange(6, dtype=">u2").reshape(2, 3), True),
    "big_endian_i8": (lambda: np.arange(6, dtype=">i8").reshape(2, 3), True),
    "nan_payload_inf_negzero": (_nan_payload, True),
    "subnormals": (lambda: np.array([[5e-324, -5e-324]], np.float64), True),
    "bool": (lambda: np.ones((2, 2), bool), False),
    "complex": (lambda: np.ones((2, 2), complex), False),
    "float16": (lambda: np.ones((2, 2), np.float16), False),
    "longdouble": (lambda: np.ones((2, 2), np.longdouble), False),
    "zero_d": (lambda: np.array(1.0), False),
    "zero_size": (lambda: np.ones((0, 3)), False),
    "object": (lambda: np.array([[1, 2]], object), False),
    "str": (lambda: np.array([["a"]]), False),
    "structured": (lambda: np.zeros((2, 2), [("a", "f4"), ("b", "i4")]), False),
    "datetime64": (lambda: np.zeros((2, 2), "datetime64[s]"), False),
}


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("case", list(PIXELS))
def test_pixels_round_trip_or_are_refused(butler: Butler, fmt: str, case: str) -> None:
    factory, must_keep = PIXELS[case]
    got = _round_trip(butler, factory(), fmt, must_keep=must_keep)
    if got is None:
        return
    put = factory()
    assert type(got) is NDData and got.mask is None and got.unit is None
    assert _native(got.data.dtype) == _native(put.dtype), f"dtype {put.dtype} came back as {got.data.dtype}"
    assert got.data.shape == put.shape and _bits(got.data) == _bits(put)


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_numpy_masked_array_keeps_its_mask(butler: Butler, fmt: str) -> None:
    put = np.ma.MaskedArray(np.arange(6.0).reshape(2, 3), mask=[[0, 1, 0], [0, 0, 1]])
    got = _round_trip(butler, put, fmt)
    if got is not None:
        np.testing.assert_array_equal(got.data, put.data)
        assert got.mask is not None, "the numpy.ma mask was dropped: masked pixels came back as valid values"
        np.testing.assert_array_equal(got.mask, put.mask)


def _hostile_cards() -> list[tuple[str, Any, str]]:
    return [
        ("OBJECT", "M31", "target"),
        ("LONGSTR", "x" * 150 + " end", "a CONTINUE card " + "y" * 60),
        ("HIERARCH ESO DET CHIP NAME", "CCD-44", ""),
        ("HIERARCH a lower case key", 3, "hierarch"),
        ("COMMENT", "first comment", ""),
        ("COMMENT", "second comment", ""),
        ("HISTORY", "step 1", ""),
        ("", "a blank-keyword card", ""),
        ("DUPKEY", 1, "first"),
        ("HISTORY", "step 2", ""),
        ("DUPKEY", 2, "second"),
        ("FLT", 1.0000000000000002, ""),
        ("BIGINT", 2**62, ""),
        ("BOOLF", False, ""),
        ("EMPTY", "", ""),
        ("UNDEF", None, "no value"),
        ("CPLX", 1 + 2j, ""),
        ("QUOTE", "it's", ""),
        ("LEAD", "   abc", ""),
        ("DATE-OBS", "2020-01-01T00:00:00", ""),
    ]


def _card_list(header: fits.Header) -> list[tuple[str, Any, str]]:
    out = []
    for card in header.cards:
        value = None if isinstance(card.value, fits.card.Undefined) else card.value
        out.append((card.keyword, value, card.comment))
    return out


def _header(cards: list[tuple[str, Any, str]]) -> fits.Header:
    header = fits.Header()
    for keyword, value, comment in cards:
        header.append(fits.Card(keyword, value, comment), end=True, bottom=True)
    return header


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("holder", ["PrimaryHDU", "ImageHDU", "NDData", "CCDData"])
def test_header_cards_come_back_in_order(butler: Butler, fmt: str, holder: str) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = _card_list(_header(_hostile_cards()))
    obj: Any
    if holder == "PrimaryHDU":
        obj = fits.PrimaryHDU(data, header=_header(_hostile_cards()))
    elif holder == "ImageHDU":
        obj = fits.ImageHDU(data, header=_header(_hostile_cards()), name="SCI")
        expected = _card_list(obj.header)[obj.header.index("PCOUNT") + 2 :]  # after the structural cards
    elif holder == "NDData":
        obj = NDData(data, meta=_header(_hostile_cards()))
    else:
        obj = CCDData(data, meta=_header(_hostile_cards()), unit="adu")
    got = _round_trip(butler, obj, fmt, must_keep=True)
    assert type(got).__name__ == ("NDData" if holder.endswith("HDU") else holder)
    assert _card_list(got.meta) == expected
    np.testing.assert_array_equal(got.data, data)


NDDATA_META: dict[str, dict[Any, Any]] = {
    "list_value": {"A": [1, 2]},
    "dict_value": {"A": {"b": 1}},
    "quantity_value": {"EXPTIME": 30 * u.s},
    "int_key": {1: "a"},
    "non_ascii_value": {"OBSERVER": "Hervé"},
    "newline_value": {"A": "a\nb"},
    "bytes_value": {"A": b"abc"},
    "nan_value": {"A": math.nan},
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("case", list(NDDATA_META))
def test_nddata_meta_a_header_cannot_hold(butler: Butler, fmt: str, case: str) -> None:
    meta = NDDATA_META[case]
    got = _round_trip(butler, NDData(np.ones((3, 4), np.float32), meta=meta), fmt)
    if got is not None:
        assert all(_same(got.meta[key], value) for key, value in meta.items()), f"{meta} came back as {got.meta}"


def _unit_cases() -> dict[str, Callable[[], NDData]]:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {
        "ccd_adu": lambda: CCDData(data, unit="adu"),
        "ccd_rate": lambda: CCDData(data, unit="electron / s"),
        "ccd_flux_density": lambda: CCDData(data, unit="erg / (Angstrom cm2 s)"),
        "ccd_scaled": lambda: CCDData(data, unit=u.Unit("1e-17 erg / (Angstrom cm2 s)")),
        "ccd_mag": lambda: CCDData(data, unit=u.mag),
        "ccd_dimensionless": lambda: CCDData(data, unit=u.dimensionless_unscaled),
        "nd_dex": lambda: NDData(data, unit=u.dex),
        "nd_dimensionless": lambda: NDData(data, unit=u.dimensionless_unscaled),
        "nd_no_unit_meta_bunit": lambda: NDData(data, meta={"BUNIT": "adu"}),
        "nd_unit_and_other_meta_bunit": lambda: NDData(data, unit="electron", meta={"BUNIT": "adu"}),
        "ccd_unit_and_other_meta_bunit": lambda: CCDData(data, unit="electron", meta={"BUNIT": "adu"}),
        "nd_unrecognized_unit": lambda: NDData(data, unit=u.Unit("blarg", parse_strict="silent")),
        "ccd_unrecognized_unit": lambda: CCDData(data, unit=u.Unit("blarg", parse_strict="silent")),
        "nd_partial_wcs_cards_in_meta": lambda: NDData(data, meta={"CRPIX1": 3.0, "OBJECT": "x"}),
        "ccd_flags": lambda: CCDData(data, unit="adu", flags=np.zeros((3, 4), np.int16)),
        "ccd_psf": lambda: CCDData(data, unit="adu", psf=np.ones((3, 3))),
        "ccd_uncertainty_f64_on_f32": lambda: CCDData(data, unit="adu",
                                                      uncertainty=StdDevUncertainty(np.ones((3, 4), np.float64))),
    }


UNIT_CASES = list(_unit_cases())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("case", UNIT_CASES)
def test_nddata_unit_meta_and_attributes(butler: Butler, fmt: str, case: str) -> None:
    factory = _unit_cases()[case]
    got = _round_trip(butler, factory(), fmt)
    if got is None:
        return
    put = factory()
    assert type(got) is type(put)
    assert got.unit == put.unit, f"unit {put.unit!r} came back as {got.unit!r}"
    assert got.data.dtype == put.data.dtype and np.array_equal(got.data, put.data)
    assert (got.wcs is None) == (put.wcs is None), f"wcs {put.wcs!r} came back as {got.wcs!r}"
    want = {str(key).upper(): value for key, value in dict(put.meta).items()}
    have = {key: value for key, value in got.meta.items() if key}
    assert have == want, f"meta {want} came back as {have}"
    if isinstance(put, CCDData):
        assert got.flags is None or np.array_equal(got.flags, put.flags)
        assert (got.flags is None) == (put.flags is None), "CCDData.flags were dropped"
    if put.uncertainty is not None:
        assert got.uncertainty.array.dtype == put.uncertainty.array.dtype
        np.testing.assert_array_equal(got.uncertainty.array, put.uncertainty.array)


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_image_get_by_ref_and_by_data_id_agree(butler: Butler, fmt: str) -> None:
    put = CCDData(np.arange(12, dtype=np.float32).reshape(3, 4), unit="electron", mask=np.eye(3, 4, dtype=bool),
                  uncertainty=StdDevUncertainty(np.ones((3, 4), np.float32)), meta={"OBJECT": "x"})
    ref = butler.put(put, TYPE, DATA_ID, run=RUN, format=fmt)
    for got in (butler.get(ref), butler.get(TYPE, DATA_ID, run=RUN)):
        assert type(got) is CCDData and got.unit == put.unit and got.meta["OBJECT"] == "x"
        np.testing.assert_array_equal(got.data, put.data)
        np.testing.assert_array_equal(got.mask, put.mask)
        np.testing.assert_array_equal(got.uncertainty.array, put.uncertainty.array)
