"""Every 2-D image HDU of astropy's own test FITS files, through objbutler, compared with astropy (issue 13).

The files are found at test time under the installed astropy's ``io/fits/tests/data`` and
``wcs/tests/data`` (``*.fits``, ``*.fits.gz``, ...). Each runs in its own process
(``python -m objbutler.testing.corpus FILE``, see :mod:`objbutler.testing.corpus`), two at a time, so
that a crash fails this test instead of killing the run. Asserted: no process died (signal or
non-zero exit), no mismatch, every refusal an ObjButlerError with a message. The summary (files,
HDUs, ok, refused by reason, findings) is printed at the end of the test even without ``-s``, and
written as JSON to ``$OBJBUTLER_CORPUS_SUMMARY`` when that is set.

The whole corpus takes ~45 s on two cores, so it always runs whole.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from objbutler.testing.corpus import check_file, corpus_files

WORKERS = 2
FILE_TIMEOUT = 300


def _run(path: Path) -> dict[str, Any]:
    """One file in its own interpreter: its JSON lines, or how the process ended."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "objbutler.testing.corpus", str(path)], capture_output=True,
                              text=True, timeout=FILE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"file": str(path), "death": f"no answer in {FILE_TIMEOUT} s", "results": []}
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    death = None
    if done.returncode < 0:
        death = f"killed by {signal.Signals(-done.returncode).name}"
    elif done.returncode:
        death = f"exit status {done.returncode}"
    if death:
        death += f"; stderr tail: {done.stderr[-1500:]}"
    return {"file": str(path), "death": death, "results": results, "seconds": time.monotonic() - started}


def _pixels_as(stored: dict[str, Any]) -> tuple[Any, ...]:
    """How pixels are stored, with FITS defaults filled in (BSCALE 1, BZERO 0, no BLANK, uncompressed)."""
    return (stored.get("bitpix"), stored.get("bscale", 1), stored.get("bzero", 0), stored.get("blank"),
            stored.get("compression"))


def _summary(runs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    results = [result for run in runs for result in run["results"]]
    hdus = [result for result in results if result["status"] != "skipped"]
    cases = [(result, fmt, outcome) for result in hdus for fmt, outcome in result["formats"].items()]
    refused: collections.Counter[str] = collections.Counter()
    stored_as: collections.Counter[str] = collections.Counter()
    for result, _, outcome in cases:
        if outcome["status"] == "refused":
            refused[f"{outcome['error_class']}: {outcome['message'][:100]}"] += 1
        layout = outcome.get("stored_layout")
        if layout is not None and _pixels_as(layout) != _pixels_as(result["stored_as"]):
            stored_as[f"{result['stored_as']} stored as {layout}"] += 1
    return {
        "files": len(runs),
        "seconds": round(seconds, 1),
        "workers": WORKERS,
        "image_hdus": len(hdus),
        "cases (HDU x format)": len(cases),
        "ok": sum(outcome["status"] == "ok" for _, _, outcome in cases),
        "refused": dict(refused),
        "mismatch": [f"{r['file']}[{r['hdu']}] {fmt}: {o['mismatches']}" for r, fmt, o in cases
                     if o["status"] == "mismatch"],
        "process deaths": [f"{run['file']}: {run['death']}" for run in runs if run["death"]],
        "skipped (astropy cannot read)": [f"{Path(r['file']).name}[{r['hdu']}]: {r['reason']}" for r in results
                                          if r["status"] == "skipped"],
        "dtype findings": sorted({f"{Path(r['file']).name}[{r['hdu']}] {fmt}: {d}" for r, fmt, o in cases
                                  for d in o.get("dtype", [])}),
        "representation (FITS)": dict(stored_as),
        "objbutler warnings": sorted({f"{Path(r['file']).name}[{r['hdu']}]: {n[:160]}" for r, _, o in cases
                                      for n in o.get("notes", []) if n.startswith("WCSWarning")}),
        "header cards changed or dropped": sorted({f"{Path(r['file']).name}[{r['hdu']}] {fmt}: {n[:200]}"
                                                   for r, fmt, o in cases for n in o.get("notes", [])
                                                   if n.startswith("meta")}),
    }


@pytest.fixture(scope="module")
def corpus() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    files = corpus_files()
    assert len(files) >= 40, f"astropy's test data should hold ~47 FITS files, found {len(files)}"
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = list(pool.map(_run, files))
    summary = _summary(runs, time.monotonic() - started)
    target = os.environ.get("OBJBUTLER_CORPUS_SUMMARY")
    if target:
        Path(target).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1, default=str))
    return runs, summary


def test_astropy_corpus_round_trips(corpus: tuple[list[dict[str, Any]], dict[str, Any]],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    runs, summary = corpus
    with capsys.disabled():
        print("\n\nastropy FITS corpus through objbutler:\n" + json.dumps(summary, indent=1))
    assert not summary["process deaths"]
    assert not summary["mismatch"]
    refusals = [outcome for run in runs for result in run["results"] if result["status"] != "skipped"
                for outcome in result["formats"].values() if outcome["status"] == "refused"]
    for outcome in refusals:
        assert outcome["objbutler_error"], outcome
        assert outcome["message"].strip(), outcome
    assert summary["image_hdus"] >= 25 and summary["ok"] >= 2 * 24  # astropy 8.0: 29 HDUs, 27 of them stored


def test_the_dss_and_lookup_files_are_covered(corpus: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    """The two files of the issue: the DSS plate solution reads back, the lookup table is refused by name."""
    runs, _ = corpus
    by_name = {Path(result["file"]).name: result for run in runs for result in run["results"]
               if result.get("hdu") in (0, 1) and result["status"] != "skipped"}
    dss = by_name["dss.14.29.56-62.41.05.fits.gz"]
    assert dss["status"] == "ok" and "wcs_note" not in dss  # a celestial WCS, so sky cutouts were compared
    lookup = by_name["dist_lookup.fits.gz"]
    for outcome in lookup["formats"].values():
        assert outcome["status"] == "refused" and outcome["error_class"] == "objbutler.errors.FormatError"
        assert "CPDIS1" in outcome["message"]


def test_the_runner_reports_what_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is not vacuous: altered pixels and a shifted WCS are mismatches, an empty image a refusal."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [10.0, 8.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    data = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "one.fits"
    fits.PrimaryHDU(data, wcs.to_header()).writeto(path)
    (ok,) = check_file(path, tmp_path / "a")
    assert ok["status"] == "ok", ok

    from objbutler.butler import Butler

    real_get = Butler.get

    def altered(self: Butler, *args: Any, **kwargs: Any) -> Any:
        got = real_get(self, *args, **kwargs)
        got.data[3, 4] += 1
        got.wcs.wcs.crpix = got.wcs.wcs.crpix + 0.01
        return got

    monkeypatch.setattr(Butler, "get", altered)
    (bad,) = check_file(path, tmp_path / "b")
    for outcome in bad["formats"].values():
        assert outcome["status"] == "mismatch"
        assert any("1 of 600 pixels differ" in m for m in outcome["mismatches"])
        assert any("get().wcs: maps pixels to the sky differently" in m for m in outcome["mismatches"])

    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU(np.zeros((0, 4), np.int16)).writeto(empty)
    (refused,) = check_file(empty, tmp_path / "c")
    assert refused["status"] == "refused"
    assert refused["formats"]["fits"]["error_class"] == "objbutler.errors.FormatError"
