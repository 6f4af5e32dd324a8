"""The cutouts suite: many 64x64 stamps from one PVI, objbutler against what users do today.

Matrix (issue 4): a 4096x4096 float32 PVI with a TAN WCS stored three ways
(FITS, tile-compressed FITS with ``RICE_1`` on 256x256 tiles, Zarr v3 on
256x256 chunks); workloads of N = 1, 10, 100, 1000 random stamps and 1000
clustered ones (four clusters); methods:

``objbutler``          ``butler.get_cutouts(ref, boxes)`` (the cost-model planner)
``whole-download``     one GET of the object (Zarr: ``zarr`` reads the whole array), then numpy slicing
``astropy-fsspec``     ``fits.open(url, use_fsspec=True)`` + ``.section`` per stamp (astropy's documented route)
``astrocut``           ``astrocut.FITSCutout`` per stamp (it reopens the file each time)
``zarr-per-stamp``     ``zarr.open_array(FsspecStore)`` then ``array[y0:y1, x0:x1]`` per stamp
``exact-ranges`` ...   the fixed strategies of :mod:`benchmarks.strategies` (``exact-tiles`` ... when compressed)
``floor: ...``         compressed only, lower bounds rather than methods: ``GET only`` downloads the object and
                       decodes nothing (what any method that needs every tile spends on moving bytes);
                       ``2 round trips`` makes two dependent 100-byte range reads (what reading one tile costs a
                       reader that must read the tile table first)

plus a sweep of image size (1k, 2k, 4k, 8k square FITS) for objbutler and
the fixed strategies. Per-stamp methods can be capped to a subset of the
stamps (``measured``), scaled up and labelled as extrapolated.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from benchmarks import strategies
from benchmarks.measure import Case, Row, interleave, rows_for
from benchmarks.targets import Target
from objbutler.butler import Butler
from objbutler.cutouts import Box
from objbutler.demo import make_pvi
from objbutler.stores import open_store
from objbutler.testing.wrappers import CountingStore

__all__ = ["FORMATS", "Settings", "clustered_boxes", "random_boxes", "run_cutouts"]

STAMP = 64
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "fits": ("fits", {}),
    "fits-rice": ("fits", {"compression": "RICE_1"}),
    "zarr": ("zarr", {}),
}
"""Benchmark format name -> (objbutler format, format_options)."""

KiB = 1024
MiB = 1024 * KiB


@dataclasses.dataclass
class Settings:
    """What one run of the suite covers (see :func:`settings_for`).

    ``caps`` limits a method (``"method"`` or ``"format/method"``, the latter
    first) to its first ``cap`` stamps, scaled up linearly and labelled as
    extrapolated when the workload has more: right for methods whose cost per
    stamp does not fall with N (reopening per stamp, one request set per
    stamp), so a method that caches the whole object (astropy's route on the
    13 MB compressed file fits in one 50 MiB readahead block) is not capped.
    ``budgets`` gives a method its own repetition budget (seconds); ``only_at``
    limits a method to some workloads.
    """

    image_size: int = 4096
    counts: tuple[int, ...] = (1, 10, 100, 1000)
    clustered: int = 1000
    reps: int = 5
    budget_seconds: float = 30.0
    caps: dict[str, int] = dataclasses.field(default_factory=dict)
    budgets: dict[str, float] = dataclasses.field(default_factory=dict)
    only_at: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    sweep_sizes: tuple[int, ...] = (1024, 2048, 4096, 8192)
    sweep_counts: tuple[int, ...] = (1, 100, 1000)
    sweep_reps: int = 3
    formats: tuple[str, ...] = tuple(FORMATS)


def settings_for(quick: bool, image_size: int | None = None) -> Settings:
    """Full or quick settings; ``image_size`` changes the image side (the smoke test uses a tiny one).

    Full: N = 1, 10, 100, 1000 random and 1000 clustered, 5 repetitions (fewer
    for a method whose calls add up to 30 s; 100 s for astropy's route, which is
    measured on every stamp), astrocut on up to 10 stamps (compressed: 100),
    exact ranges (64 requests per stamp) on up to 10; sweep 1k-8k. Quick: N = 1 and
    1000 random, 3 repetitions, astropy's route on the plain FITS on 20 stamps
    (in full on the compressed one), exact ranges on 2, zarr per-stamp on 15, astrocut and the Zarr
    whole download (7 s through s3fs) only at N = 1; sweep 1k and 2k at N = 1000.
    """
    size = image_size or 4096
    if quick:
        return Settings(
            image_size=size, counts=(1, 1000), clustered=0, reps=3, budget_seconds=3.0,
            caps={"fits/astropy-fsspec": 20, "astrocut": 1, "exact-ranges": 2, "zarr-per-stamp": 15},
            only_at={"astrocut": ("random-1",), "zarr/whole-download": ("random-1",)},
            sweep_sizes=(1024, 2048) if image_size is None else (size,), sweep_counts=(1000,), sweep_reps=2,
        )
    return Settings(
        image_size=size,
        caps={"fits/astrocut": 10, "fits-rice/astrocut": 100, "exact-ranges": 10},
        budgets={"astropy-fsspec": 100.0},
        sweep_sizes=(1024, 2048, 4096, 8192) if image_size is None else (size,),
    )


# -- workloads -----------------------------------------------------------------------


def random_boxes(n: int, size: int, rng: np.random.Generator, stamp: int = STAMP) -> list[Box]:
    """``n`` stamps uniformly at random, wholly inside a ``size`` square image."""
    side = min(stamp, size)
    corners = rng.integers(0, size - side + 1, (n, 2))
    return [Box(int(x), int(y), int(x) + side, int(y) + side) for x, y in corners]


def clustered_boxes(n: int, size: int, rng: np.random.Generator, clusters: int = 4, stamp: int = STAMP) -> list[Box]:
    """``n`` stamps around ``clusters`` centres (sigma = size / 32), wholly inside the image."""
    side = min(stamp, size)
    centres = rng.uniform(0.2 * size, 0.8 * size, (clusters, 2))
    picks = centres[rng.integers(0, clusters, n)] + rng.normal(0, size / 32, (n, 2))
    corners = np.clip(np.round(picks - side / 2), 0, size - side).astype(int)
    return [Box(int(x), int(y), int(x) + side, int(y) + side) for x, y in corners]


def workloads(settings: Settings, seed: int = 5) -> list[tuple[str, list[Box]]]:
    """``[("random-1", boxes), ..., ("clustered-1000", boxes)]``."""
    rng = np.random.default_rng(seed)
    size = settings.image_size
    cells = [(f"random-{n}", random_boxes(n, size, rng)) for n in settings.counts]
    if settings.clustered:
        cells.append((f"clustered-{settings.clustered}", clustered_boxes(settings.clustered, size, rng)))
    return cells


# -- the methods -----------------------------------------------------------------------


def _open_fits(url: str, options: dict[str, Any]) -> fits.HDUList:
    if url.startswith("s3://"):
        return fits.open(url, use_fsspec=True, fsspec_kwargs=options)
    return fits.open(url)


def astropy_sections(url: str, options: dict[str, Any], boxes: Sequence[Box], hdu: int) -> list[np.ndarray]:
    """astropy's documented cloud route: open with fsspec, ``.section`` per stamp."""
    with _open_fits(url, options) as hdus:
        image = hdus[hdu]
        return [np.asarray(image.section[b.y0 : b.y1, b.x0 : b.x1]) for b in boxes]


def astrocut_stamps(url: str, options: dict[str, Any], coords: Any, hdu: int) -> list[Any]:
    """One ``astrocut.FITSCutout`` per stamp, as its API goes (one position per cutout object)."""
    from astrocut import FITSCutout

    kwargs = {"fsspec_kwargs": {"anon": False, **options}} if url.startswith("s3://") else {}
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for coord in coords:
            cutout = FITSCutout([url], coord, cutout_size=STAMP, extension=hdu, **kwargs)
            out.append(cutout.cutouts_by_file)
    return out


def open_zarr(url: str, options: dict[str, Any]) -> Any:
    """``zarr.open_array`` on zarr's own store for the URL (FsspecStore for s3://, LocalStore otherwise)."""
    import zarr
    from zarr.storage import FsspecStore, LocalStore

    store: Any
    if url.startswith("s3://"):
        store = FsspecStore.from_url(url, storage_options=options, read_only=True)
    else:
        store = LocalStore(url, read_only=True)
    return zarr.open_array(store, mode="r")


def zarr_per_stamp(url: str, options: dict[str, Any], boxes: Sequence[Box]) -> list[np.ndarray]:
    """zarr slicing, one stamp at a time (each slice fetches the chunks it touches)."""
    array = open_zarr(url, options)
    return [np.asarray(array[b.y0 : b.y1, b.x0 : b.x1]) for b in boxes]


def zarr_whole(url: str, options: dict[str, Any], boxes: Sequence[Box]) -> list[np.ndarray]:
    """zarr reads the whole array (all chunks, concurrently), then numpy slicing."""
    image = np.asarray(open_zarr(url, options)[:])
    return [image[b.y0 : b.y1, b.x0 : b.x1].copy() for b in boxes]


@dataclasses.dataclass
class StoredImage:
    """One stored benchmark image and the ways to reach it."""

    name: str
    butler: Butler
    ref: Any
    url: str
    store: Any
    wcs: Any
    size: int


def _capped(settings: Settings, fmt: str, method: str, n: int) -> int | None:
    cap = settings.caps.get(f"{fmt}/{method}", settings.caps.get(method))
    return cap if cap is not None and cap < n else None


def cases_for(image: StoredImage, workload: str, boxes: list[Box], target: Target, settings: Settings, *,
              baselines: bool = True) -> list[Case]:
    """Every method for one format and one workload (objbutler first)."""
    n = len(boxes)
    counter = target.counter(image.store)
    store, key, url, options = image.store, image.ref.key, image.url, target.fsspec_options
    butler, ref = image.butler, image.ref
    warm_box = boxes[:1]

    def case(method: str, run: Callable[[list[Box]], object], kind: str = "baseline",
             per_stamp: bool = False, counted: bool = True) -> Case:
        """``per_stamp``: warm up on one stamp only; caps come from the settings."""
        measured = _capped(settings, image.name, method, n)
        subset = boxes[:measured] if measured else boxes
        warm = (lambda: run(warm_box)) if per_stamp else None
        return Case(method, lambda: run(subset), n, measured=measured, kind=kind,
                    counter=counter if counted else target.counter(), warm=warm, budget=settings.budgets.get(method))

    cases = [case("objbutler", lambda b: butler.get_cutouts(ref, b), kind="objbutler")]
    fmt = image.name
    http = not target.is_local
    if fmt == "fits":
        cases += [
            case("whole-download", lambda b: strategies.fits_whole(store, key, b), kind="fixed"),
            case("exact-ranges", lambda b: strategies.fits_ranges(store, key, b, None), kind="fixed", per_stamp=True),
            case("merged-64KiB", lambda b: strategies.fits_ranges(store, key, b, 64 * KiB), kind="fixed"),
            case("merged-4MiB", lambda b: strategies.fits_ranges(store, key, b, 4 * MiB), kind="fixed"),
        ]
    elif fmt == "fits-rice":
        cases += [
            case("whole-download", lambda b: strategies.fits_whole(store, key, b), kind="fixed"),
            case("exact-tiles", lambda b: strategies.compressed_fixed(store, key, b, None), kind="fixed"),
            case("merged-tiles-4MiB", lambda b: strategies.compressed_fixed(store, key, b, 4 * MiB), kind="fixed"),
            # floors, not strategies: what any reader of every tile / of one tile without an index must spend
            case("floor: GET only", lambda b: store.get(key), kind="floor"),
            case("floor: 2 round trips", lambda b: strategies.two_round_trips(store, key), kind="floor"),
        ]
    else:
        cases.append(case("whole-download", lambda b: zarr_whole(url, options, b), kind="fixed", counted=http))
    if not baselines:
        return cases
    cases = cases + _baselines(image, boxes, target, case)
    only = settings.only_at
    return [c for c in cases if workload in only.get(f"{fmt}/{c.method}", only.get(c.method, (workload,)))]


def _baselines(image: StoredImage, boxes: list[Box], target: Target, case: Callable[..., Case]) -> list[Case]:
    """astropy's route and astrocut (FITS), or zarr per-stamp slicing (Zarr)."""
    cases: list[Case] = []
    fmt, url, options = image.name, image.url, target.fsspec_options
    http = not target.is_local
    if fmt.startswith("fits"):
        hdu = 0 if fmt == "fits" else 1
        cases.append(case("astropy-fsspec", lambda b: astropy_sections(url, options, b, hdu), per_stamp=True,
                          counted=http))
        if _has_astrocut():
            centres = [((b.x0 + b.x1 - 1) / 2, (b.y0 + b.y1 - 1) / 2) for b in boxes]
            coords = image.wcs.pixel_to_world([c[0] for c in centres], [c[1] for c in centres])
            # every subset a case runs is a prefix of the boxes
            cases.append(case("astrocut", lambda b: astrocut_stamps(url, options, coords[: len(b)], hdu),
                              per_stamp=True, counted=http))
    else:
        cases.append(case("zarr-per-stamp", lambda b: zarr_per_stamp(url, options, b), per_stamp=True, counted=http))
    return cases


def _has_astrocut() -> bool:
    try:
        import astrocut  # noqa: F401
    except ImportError:
        return False
    return True


# -- setup and the suite -------------------------------------------------------------------


def store_image(target: Target, fmt: str, size: int, log: Callable[[str], None]) -> StoredImage:
    """Make a repository on the target and put one synthetic PVI in it in format ``fmt``."""
    uri = target.new_uri(f"cutouts-{fmt}-{size}")
    store = CountingStore(open_store(uri, **target.store_options)) if target.is_local else None
    butler = Butler.create(uri, store=store, **target.store_options)
    hdu, _ = make_pvi(size, n_stars=max(10, 3000 * size * size // 4096**2))
    obj_format, options = FORMATS[fmt]
    ref = butler.put(hdu, "pvi", {"visit": size, "detector": 0}, run="bench", format=obj_format,
                     format_options=options)
    log(f"  stored {fmt} {size}x{size}: {ref.size / MiB:.1f} MiB at {uri}/{ref.key}")
    from astropy.wcs import WCS

    return StoredImage(fmt, butler, ref, target.object_url(uri, ref.key), butler.store, WCS(hdu.header), size)


def _check_same(image: StoredImage, boxes: list[Box], target: Target) -> None:
    """objbutler's stamps equal the whole-download stamps (a sanity check, not a test)."""
    ours = [c.data for c in image.butler.get_cutouts(image.ref, boxes)]
    if image.name == "zarr":
        theirs = zarr_whole(image.url, target.fsspec_options, boxes)
    else:
        theirs = strategies.fits_whole(image.store, image.ref.key, boxes)
    for a, b in zip(ours, theirs, strict=True):
        if not np.array_equal(a, b, equal_nan=True):
            raise AssertionError(f"{image.name}: objbutler's stamps differ from the whole-download stamps")


def run_cutouts(target: Target, settings: Settings, log: Callable[[str], None] = print) -> list[Row]:
    """The format x workload matrix, then the image-size sweep."""
    rows: list[Row] = []
    cells = workloads(settings)
    for fmt in settings.formats:
        log(f"cutouts: {fmt} {settings.image_size}x{settings.image_size}")
        image = store_image(target, fmt, settings.image_size, log)
        _check_same(image, cells[1][1] if len(cells) > 1 else cells[0][1], target)
        for workload, boxes in cells:
            log(f"  {workload}")
            cases = cases_for(image, workload, boxes, target, settings)
            interleave(cases, settings.reps, budget_seconds=settings.budget_seconds, log=log)
            rows += rows_for("cutouts", workload, cases, _extra(image, target))
    rows += run_sweep(target, settings, log)
    return rows


def run_sweep(target: Target, settings: Settings, log: Callable[[str], None] = print) -> list[Row]:
    """objbutler and the fixed strategies on FITS images of growing size."""
    rows: list[Row] = []
    rng = np.random.default_rng(11)
    for size in settings.sweep_sizes:
        log(f"cutouts size sweep: fits {size}x{size}")
        image = store_image(target, "fits", size, log)
        for n in settings.sweep_counts:
            log(f"  random-{n}")
            cases = cases_for(image, f"random-{n}", random_boxes(n, size, rng), target, settings, baselines=False)
            interleave(cases, settings.sweep_reps, budget_seconds=settings.budget_seconds, log=log)
            rows += rows_for("cutouts-size", f"{size}px random-{n}", cases, _extra(image, target))
        image.butler.store.delete(image.ref.key)
    return rows


def _extra(image: StoredImage, target: Target) -> dict[str, Any]:
    return {"format": image.name, "image_size": image.size, "object_bytes": image.ref.size, "target": target.name}
