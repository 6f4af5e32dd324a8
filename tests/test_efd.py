"""EFD extracts as table datasets, and EFD summary cards added to images on get(..., efd=True)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from click.testing import CliRunner

from objbutler import Butler
from objbutler.cli import main
from objbutler.efd import (
    EfdCoverageWarning,
    EfdOptions,
    EfdTimeWarning,
    day_obs,
    exposure_span,
    read_efd_cards,
    summarize_topics,
)
from objbutler.errors import NotFoundError, NotSupportedError

NIGHT_START = Time("2026-11-27T01:00:00", scale="utc")  # day_obs 20261126 (UTC-12h)
STEP = 7.0  # seconds between EFD samples
EXPOSURE_START = "2026-11-27T03:10:01.500"  # not on the sample grid
EXPTIME = 30.0


def make_extract(start: Time = NIGHT_START, hours: float = 4.0, seed: int = 1, time_kind: str = "time") -> Table:
    """A time column (astropy Time, ISO strings or MJD floats) plus topics with units and descriptions."""
    rng = np.random.default_rng(seed)
    times = start + np.arange(0.0, hours * 3600, STEP) * u.s
    table = Table()
    if time_kind == "time":
        table["time"] = times
    elif time_kind == "iso":
        table["time"] = times.isot
    else:
        table["mjd"] = times.mjd
    n = len(times)
    table["dome_temperature"] = rng.normal(5.0, 0.4, n) * u.deg_C
    table["dome_temperature"].description = "Dome air temperature"
    table["seeing"] = np.abs(rng.normal(0.7, 0.1, n)) * u.arcsec
    table["mount_az"] = np.linspace(10.0, 200.0, n) * u.deg
    table["mount_el"] = rng.uniform(30, 85, n)
    table["dome_state"] = np.where(np.arange(n) % 3 == 0, "OPEN", "MOVING")
    return table


def raw_image(**cards: object) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU(np.zeros((6, 5), dtype="float32"))
    for key, value in cards.items():
        hdu.header[key.replace("_", "-")] = value
    return hdu


def expected_summary(table: Table, start: Time, end: Time) -> dict[str, dict[str, object]]:
    """Independently: seconds from MJD floats with numpy, nearest by argmin, stats over the inclusive span."""
    column = table["time"] if "time" in table.colnames else table["mjd"]
    if isinstance(column, Time):
        mjd = column.utc.mjd
    elif np.asarray(column).dtype.kind in "US":
        mjd = Time(np.asarray(column), scale="utc").mjd
    else:
        mjd = np.asarray(column, dtype=float)
    t = (mjd - start.utc.mjd) * 86400.0
    duration = (end.utc.mjd - start.utc.mjd) * 86400.0
    inside = (t >= 0) & (t <= duration)
    nearest = int(np.argmin(np.abs(t - duration / 2)))
    out: dict[str, dict[str, object]] = {}
    for name in ("dome_temperature", "seeing", "mount_az", "mount_el"):
        values = np.asarray(table[name].value if hasattr(table[name], "value") else table[name], dtype=float)
        out[name] = {"mid": values[nearest], "mean": np.mean(values[inside]), "min": np.min(values[inside]),
                     "max": np.max(values[inside]), "n": int(inside.sum())}
    out["dome_state"] = {"mid": str(table["dome_state"][nearest]), "n": int(inside.sum())}
    return out


def assert_cards_match(header: fits.Header, expected: dict[str, dict[str, object]]) -> None:
    found = read_efd_cards(header)
    assert list(found) == list(expected)
    for topic, stats in expected.items():
        assert set(found[topic]) == set(stats), topic
        for stat, value in stats.items():
            if isinstance(value, str | int) and not isinstance(value, float):
                assert found[topic][stat] == value, (topic, stat)
            else:
                assert found[topic][stat] == pytest.approx(value, rel=1e-12, abs=1e-12), (topic, stat)


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    return Butler.create(str(tmp_path / "repo"))


# -- extracts round-trip ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "ecsv"])
def test_extract_round_trips_with_time_columns(butler: Butler, fmt: str) -> None:
    table = make_extract(hours=0.5)
    table["iso"] = table["time"].isot
    table["mjd_float"] = table["time"].mjd
    table["tai"] = table["time"].tai
    ref = butler.put(table, "efd_extract", {"day_obs": 20261126}, run="efd", format=fmt)
    back = butler.get(ref)
    assert back.colnames == table.colnames
    for name in ("time", "tai"):
        assert isinstance(back[name], Time) and back[name].scale == table[name].scale
        assert back[name].format == table[name].format
        tolerance = 1e-6 if fmt == "parquet" else 1e-9  # Parquet stores float64 MJD: about a microsecond
        assert np.max(np.abs((back[name] - table[name]).to_value(u.s))) < tolerance
    assert list(back["iso"]) == list(table["iso"]) and back["iso"].dtype.kind == "U"
    np.testing.assert_array_equal(np.asarray(back["mjd_float"]), np.asarray(table["mjd_float"]))
    assert back["dome_temperature"].unit == u.deg_C
    assert back["dome_temperature"].info.description == "Dome air temperature"
    np.testing.assert_array_equal(back["dome_temperature"].value, table["dome_temperature"].value)


# -- exposure span ---------------------------------------------------------------


def test_exposure_span_keywords() -> None:
    start = Time(EXPOSURE_START, scale="utc")
    end = start + EXPTIME * u.s
    spans = [
        exposure_span({"DATE-BEG": start.isot, "DATE-END": end.isot}),
        exposure_span({"MJD-BEG": start.mjd, "MJD-END": end.mjd}),
        exposure_span({"DATE-OBS": start.isot, "EXPTIME": EXPTIME}),
        exposure_span({"MJD-OBS": start.mjd, "EXPOSURE": EXPTIME}),
        exposure_span({"DATE-BEG": start.isot, "EXPTIME": EXPTIME}),
    ]
    for span in spans:
        assert span is not None
        assert abs((span[0] - start).to_value(u.s)) < 1e-3 and abs((span[1] - end).to_value(u.s)) < 1e-3
    tai = exposure_span({"DATE-BEG": start.tai.isot, "DATE-END": end.tai.isot, "TIMESYS": "TAI"})
    assert tai is not None and tai[0].scale == "tai" and abs((tai[0] - start).to_value(u.s)) < 1e-3
    for header in ({}, {"DATE-OBS": start.isot}, {"EXPTIME": 30.0}, {"DATE-OBS": "not a date", "EXPTIME": 1.0},
                   {"DATE-BEG": end.isot, "DATE-END": start.isot}):
        assert exposure_span(header) is None, header


def test_day_obs_is_the_date_at_utc_minus_12h() -> None:
    assert day_obs(Time("2026-11-27T03:00:00", scale="utc")) == 20261126
    assert day_obs(Time("2026-11-27T12:00:01", scale="utc")) == 20261127
    assert day_obs(Time("2026-11-27T03:00:00", scale="utc"), offset_hours=0) == 20261127


# -- cards -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "ecsv"])
@pytest.mark.parametrize("time_kind", ["time", "iso", "mjd"])
def test_cards_equal_values_computed_from_the_table(butler: Butler, fmt: str, time_kind: str) -> None:
    extract = make_extract(time_kind=time_kind)
    butler.put(extract, "efd_extract", {"day_obs": 20261126}, run="efd", format=fmt)
    ref = butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 1}, run="raw")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = butler.get(ref, efd=True).meta
    start = Time(EXPOSURE_START, scale="utc")
    end = start + EXPTIME * u.s
    expected = expected_summary(extract, start, end)
    assert expected["seeing"]["n"] == 4  # 30 s at one sample per 7 s
    assert_cards_match(header, expected)
    assert header["EFDNEXT"] == 1 and header["EFDEX1"] == butler.find("efd_extract", {"day_obs": 20261126}).id
    assert header["EFDMID"] == (start + EXPTIME / 2 * u.s).isot
    assert "[deg_C] dome_temperature" in header.comments["EFD01MID"]
    assert header.comments["EFD01NAM"] == "EFD topic"


def test_tai_header_against_a_utc_extract(butler: Butler) -> None:
    extract = make_extract()
    butler.put(extract, "efd_extract", {"day_obs": 20261126}, run="efd")
    start = Time(EXPOSURE_START, scale="utc")
    end = start + EXPTIME * u.s
    hdu = raw_image(DATE_BEG=start.tai.isot, DATE_END=end.tai.isot, TIMESYS="TAI")
    header = butler.get(butler.put(hdu, "raw", {"exposure": 2}, run="raw"), efd=True).meta
    assert_cards_match(header, expected_summary(extract, start, end))  # the 37 s TAI-UTC offset is applied
    assert header.comments["EFDMID"].startswith("[TAI]")


def test_exposure_across_two_extracts(butler: Butler) -> None:
    first = make_extract(hours=2.0, seed=1)
    second = make_extract(start=NIGHT_START + 2 * u.hour, hours=2.0, seed=2)
    butler.put(first, "efd_extract", {"day_obs": 20261126, "part": 1}, run="efd")
    butler.put(second, "efd_extract", {"day_obs": 20261126, "part": 2}, run="efd", format="ecsv")
    start = NIGHT_START + 2 * u.hour - 15.5 * u.s
    hdu = raw_image(DATE_OBS=start.isot, EXPTIME=EXPTIME)
    header = butler.get(butler.put(hdu, "raw", {"exposure": 3}, run="raw"), efd=True).meta
    from astropy.table import vstack

    assert header["EFDNEXT"] == 2
    assert_cards_match(header, expected_summary(vstack([first, second]), start, start + EXPTIME * u.s))


def test_only_candidate_extracts_are_read(butler: Butler) -> None:
    butler.put(make_extract(), "efd_extract", {"day_obs": 20261126}, run="efd")
    other = butler.put(make_extract(start=NIGHT_START + 1 * u.day), "efd_extract", {"day_obs": 20261127}, run="efd")
    butler.store.delete(other.key)  # reading it would fail
    hdu = raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME)
    header = butler.get(butler.put(hdu, "raw", {"exposure": 4}, run="raw"), efd=True).meta
    assert header["EFDNEXT"] == 1


def test_nan_and_masked_samples_are_skipped(butler: Butler) -> None:
    extract = make_extract()
    start = Time(EXPOSURE_START, scale="utc")
    t = (extract["time"] - start).to_value(u.s)
    inside = np.flatnonzero((t >= 0) & (t <= EXPTIME))
    extract["seeing"][inside[0]] = np.nan
    extract["mount_el"] = np.ma.MaskedArray(extract["mount_el"], mask=np.zeros(len(extract), bool))
    extract["mount_el"].mask[inside[1]] = True
    extract["gap"] = np.full(len(extract), np.nan)  # a topic with no valid sample: left out
    butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 5}, run="raw")
    butler.put(extract, "efd_extract", {"day_obs": 20261126}, run="efd", format="ecsv")
    header = butler.get("raw", {"exposure": 5}, "raw", efd=True).meta
    found = read_efd_cards(header)
    seeing = np.asarray(extract["seeing"])[inside[1:]]
    assert found["seeing"]["n"] == len(inside) - 1 and found["seeing"]["mean"] == pytest.approx(np.mean(seeing))
    elevation = np.asarray(extract["mount_el"])[np.delete(inside, 1)]
    assert found["mount_el"]["n"] == len(inside) - 1 and found["mount_el"]["max"] == pytest.approx(elevation.max())
    assert "gap" not in found


def test_stored_image_is_never_modified(butler: Butler) -> None:
    butler.put(make_extract(), "efd_extract", {"day_obs": 20261126}, run="efd")
    ref = butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 6}, run="raw")
    before = butler.store.get(ref.key)
    assert "EFDNTOP" in butler.get(ref, efd=True).meta
    assert butler.store.get(ref.key) == before
    assert not any(key.startswith("EFD") for key in butler.get(ref).meta)


def test_cards_of_a_previous_get_are_replaced(butler: Butler) -> None:
    butler.put(make_extract(), "efd_extract", {"day_obs": 20261126}, run="efd")
    ref = butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 7}, run="raw")
    with_cards = butler.get(ref, efd=True)
    with_cards.meta["EFD05NAM"] = "stale"
    copy = butler.put(with_cards, "raw", {"exposure": 8}, run="raw")  # someone stored the annotated image
    header = butler.get(copy, efd=True).meta
    assert header["EFDNTOP"] == 5 and list(header).count("EFDNTOP") == 1 and header["EFD05NAM"] == "dome_state"


def test_efd_run_and_dataset_type_options(butler: Butler) -> None:
    butler.put(make_extract(seed=1), "efd_extract", {"day_obs": 20261126}, run="efd/v1")
    v2 = make_extract(seed=2)
    butler.put(v2, "efd_extract", {"day_obs": 20261126}, run="efd/v2")
    butler.put(v2, "efd_weather", {"day_obs": 20261126}, run="weather")
    ref = butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 9}, run="raw")
    start = Time(EXPOSURE_START, scale="utc")
    expected = expected_summary(v2, start, start + EXPTIME * u.s)
    assert_cards_match(butler.get(ref, efd=EfdOptions(run="efd/v2")).meta, expected)
    assert_cards_match(butler.get(ref, efd=EfdOptions(dataset_type="efd_weather")).meta, expected)
    assert butler.get(ref, efd=True).meta["EFDNEXT"] == 2  # any run: both versions


def test_no_covering_extract_warns_and_adds_nothing(butler: Butler) -> None:
    butler.put(make_extract(hours=1.0), "efd_extract", {"day_obs": 20261126}, run="efd")  # ends 02:00
    ref = butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 10}, run="raw")
    with pytest.warns(EfdCoverageWarning, match="covers the exposure"):
        header = butler.get(ref, efd=True).meta
    assert not any(key.startswith("EFD") for key in header)
    with pytest.raises(NotFoundError, match="covers the exposure"):
        butler.get(ref, efd="require")
    # partly covered: the exposure starts before the first sample
    early = (NIGHT_START - 10 * u.s).isot
    partial = butler.put(raw_image(DATE_OBS=early, EXPTIME=EXPTIME), "raw", {"exposure": 11}, run="raw")
    with pytest.warns(EfdCoverageWarning):
        assert "EFDNTOP" not in butler.get(partial, efd=True).meta


def test_missing_time_keywords_warn_or_raise(butler: Butler) -> None:
    butler.put(make_extract(), "efd_extract", {"day_obs": 20261126}, run="efd")
    ref = butler.put(raw_image(DATE_OBS=EXPOSURE_START), "raw", {"exposure": 12}, run="raw")  # no EXPTIME
    with pytest.warns(EfdTimeWarning, match="time keywords") as record:
        header = butler.get(ref, efd=True).meta
    assert record[0].filename == __file__  # the warning points at the caller
    assert "EFDNTOP" not in header
    with pytest.raises(NotFoundError, match="time keywords"):
        butler.get(ref, efd="require")


def test_efd_on_a_non_image_and_bad_argument(butler: Butler) -> None:
    ref = butler.put(make_extract(hours=0.1), "efd_extract", {"day_obs": 20261126}, run="efd")
    with pytest.raises(NotSupportedError):
        butler.get(ref, efd=True)
    image_ref = butler.put(raw_image(), "raw", {"exposure": 13}, run="raw")
    with pytest.raises(ValueError, match="efd must be"):
        butler.get(image_ref, efd="yes")


def test_summarize_topics_directly() -> None:
    extract = make_extract(time_kind="iso")
    start = Time(EXPOSURE_START, scale="utc")
    summaries = summarize_topics([extract], start, start + EXPTIME * u.s)
    expected = expected_summary(extract, start, start + EXPTIME * u.s)
    assert [s.name for s in summaries] == list(expected)
    assert summaries[0].unit == "deg_C" and summaries[0].mean == pytest.approx(expected["dome_temperature"]["mean"])
    assert summaries[-1].mean is None and summaries[-1].mid == expected["dome_state"]["mid"]


def test_cli_get_efd(butler: Butler, tmp_path: Path) -> None:
    extract = make_extract()
    butler.put(extract, "efd_extract", {"day_obs": 20261126}, run="efd")
    butler.put(raw_image(DATE_OBS=EXPOSURE_START, EXPTIME=EXPTIME), "raw", {"exposure": 14}, run="raw")
    out = tmp_path / "raw.fits"
    args = ["get", butler.uri, "raw", "--data-id", "exposure=14", "--run", "raw", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--efd"])
    assert result.exit_code == 0, result.output
    start = Time(EXPOSURE_START, scale="utc")
    with fits.open(out) as hdul:
        assert_cards_match(hdul[0].header, expected_summary(extract, start, start + EXPTIME * u.s))
    plain = CliRunner().invoke(main, [*args, "--overwrite"])  # the file of the first get is there
    assert plain.exit_code == 0
    with fits.open(out) as hdul:
        assert "EFDNTOP" not in hdul[0].header
    other_run = CliRunner().invoke(main, [*args, "--efd", "--efd-run", "nope", "--overwrite"])
    assert other_run.exit_code == 0 and "warning: EfdCoverageWarning" in other_run.output
