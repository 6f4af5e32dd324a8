"""The ``objbutler`` command line: thin commands that parse arguments and call library functions.

A dataset is named as ``URI TYPE --data-id KEY=VALUE [--data-id ...] --run RUN``;
values that look like integers are integers.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from objbutler import __version__
from objbutler.errors import ObjButlerError


def parse_data_id(pairs: Sequence[str]) -> dict[str, int | str]:
    """Turn ``["visit=903334", "band=r"]`` into ``{"visit": 903334, "band": "r"}``."""
    data_id: dict[str, int | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--data-id")
        try:
            data_id[key.strip()] = int(value)
        except ValueError:
            data_id[key.strip()] = value
    return data_id


class _Group(click.Group):
    """Turn objbutler errors into one clear line and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ObjButlerError as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)


data_id_option = click.option("--data-id", "data_id", multiple=True, metavar="KEY=VALUE", help="Data ID item.")
run_option = click.option("--run", default=None, help="Run (collection) name.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="objbutler")
def main() -> None:
    """objbutler: object-store-native datasets for astronomy."""


@main.command()
@click.argument("uri")
@click.option("--format", "default_format", type=click.Choice(["fits", "zarr"]), default="fits", show_default=True,
              help="Default format of image datasets.")
@click.option("--allow-no-atomic-create", is_flag=True, help="Accept a store that ignores conditional writes.")
def create(uri: str, default_format: str, allow_no_atomic_create: bool) -> None:
    """Create an empty repository at URI."""
    from objbutler.butler import Butler

    butler = Butler.create(uri, default_format=default_format, allow_no_atomic_create=allow_no_atomic_create)
    click.echo(f"created {uri} (commit protocol: {butler.config['commit_protocol']})")


@main.command(name="put")
@click.argument("uri")
@click.argument("dataset_type")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_id_option
@click.option("--header-key", "header_keys", multiple=True, metavar="KEY=CARD",
              help="Take a data ID item from a FITS header card, e.g. visit=EXPNUM.")
@run_option
@click.option("--format", "fmt", type=click.Choice(["fits", "zarr"]), default=None, help="Storage format.")
@click.option("--hdu", default=None, help="HDU to ingest (index or name); default: the first with image data.")
def put_command(uri: str, dataset_type: str, files: tuple[Path, ...], data_id: tuple[str, ...],
                header_keys: tuple[str, ...], run: str | None, fmt: str | None, hdu: str | None) -> None:
    """Ingest FITS FILES as datasets of DATASET_TYPE (data ID from options and header cards)."""
    from objbutler.butler import Butler
    from objbutler.ingest import ingest_files

    if run is None:
        raise click.BadParameter("a run is required", param_hint="--run")
    butler = Butler(uri)
    refs, failures = ingest_files(butler, dataset_type, list(files), parse_data_id(data_id),
                                  dict(_split_pairs(header_keys)), run, fmt, hdu, progress=len(files) > 1)
    for ref in refs:
        click.echo(f"{ref.id}  {ref.dataset_type}  {json.dumps(ref.data_id)}  {ref.key}")
    for path, error in failures:
        click.echo(f"error: {path}: {type(error).__name__}: {error}", err=True)
    if failures:
        sys.exit(1)


main.add_command(put_command, name="ingest")


def _split_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=CARD, got {pair!r}")
        out.append((key, value))
    return out


@main.command()
@click.argument("uri")
@click.argument("dataset_type")
@data_id_option
@run_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the dataset (FITS for images, JSON for metadata, ECSV for tables).")
@click.option("--efd", is_flag=True, help="Add EFD summary cards for the exposure to the image header.")
@click.option("--efd-run", default=None, help="Only EFD extracts in this run (default: any).")
@click.option("--efd-type", default="efd_extract", show_default=True, help="Dataset type of the EFD extracts.")
def get(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, out: Path, efd: bool,
        efd_run: str | None, efd_type: str) -> None:
    """Read one dataset and write it to a local file."""
    from objbutler.butler import Butler
    from objbutler.ingest import write_local

    efd_options: Any = False
    if efd:
        from objbutler.efd import EfdOptions

        efd_options = EfdOptions(dataset_type=efd_type, run=efd_run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = Butler(uri).get(dataset_type, parse_data_id(data_id), run, efd=efd_options)
    for warning in caught:
        click.echo(f"warning: {warning.category.__name__}: {warning.message}", err=True)
    write_local(obj, out)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("uri")
@click.argument("dataset_type")
@data_id_option
@run_option
@click.option("--depth", type=click.IntRange(min=0), default=None, help="Generations to follow (default: all).")
@click.option("--format", "fmt", type=click.Choice(["tree", "prov-json"]), default="tree", show_default=True)
@click.option("--descendants", is_flag=True, help="Datasets made from this one (in URI) instead of its inputs.")
def provenance(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, depth: int | None, fmt: str,
               descendants: bool) -> None:
    """Show a dataset's lineage as a tree, or export it as W3C PROV-JSON."""
    from objbutler.butler import Butler

    butler = Butler(uri)
    walk = butler.descendants if descendants else butler.provenance
    graph = walk(dataset_type, parse_data_id(data_id), run, depth=depth)
    click.echo(json.dumps(graph.to_prov_json(), indent=2) if fmt == "prov-json" else graph.to_tree_text())


@main.command(name="put-many")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dataset_type")
@click.option("--to", "targets", multiple=True, required=True, metavar="URI[:FORMAT]",
              help="A repository and its format, e.g. s3://b/repo:zarr (repeatable; no format: its default).")
@data_id_option
@run_option
@click.option("--hdu", default=None, help="HDU to read (index or name); default: the first with image data.")
def put_many(file: Path, dataset_type: str, targets: tuple[str, ...], data_id: tuple[str, ...], run: str | None,
             hdu: str | None) -> None:
    """Put one FITS FILE into several repositories, each in its own format (exit 1 if any failed)."""
    from astropy.io import fits

    from objbutler.butler import Butler
    from objbutler.multi import put_many_repos, split_target

    if run is None:
        raise click.BadParameter("a run is required", param_hint="--run")
    butlers = [(Butler(target_uri), target_fmt) for target_uri, target_fmt in map(split_target, targets)]
    with fits.open(file, memmap=False) as hdul:
        image = hdul if hdu is None else hdul[int(hdu) if hdu.isdigit() else hdu]
        results = put_many_repos(butlers, image, dataset_type, parse_data_id(data_id), run=run)
    for result in results:
        click.echo(str(result))
    if not all(result.ok for result in results):
        sys.exit(1)


@main.command()
@click.argument("uri")
@click.argument("dataset_type", required=False)
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE", help="Data ID condition (repeatable).")
@run_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def query(uri: str, dataset_type: str | None, where: tuple[str, ...], run: str | None, as_json: bool) -> None:
    """List datasets, optionally by type, data ID conditions and run."""
    from objbutler.butler import Butler

    refs = Butler(uri).query(dataset_type, parse_data_id(where), run)
    if as_json:
        for ref in refs:
            click.echo(json.dumps(ref.to_json()))
        return
    rows = [(r.dataset_type, r.run, json.dumps(r.data_id), r.format, str(r.size), r.id) for r in refs]
    header = ("TYPE", "RUN", "DATA ID", "FORMAT", "BYTES", "ID")
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo(f"{len(refs)} dataset(s)")


@main.command()
@click.argument("uri")
@click.option("--verify-checksums", is_flag=True, help="Read every dataset and compare checksums.")
def fsck(uri: str, verify_checksums: bool) -> None:
    """Check the registry against the data: exit 1 if any entry dangles (orphans are reported only)."""
    from objbutler.butler import Butler
    from objbutler.maintenance import fsck as run_fsck

    report = run_fsck(Butler(uri), verify_checksums=verify_checksums)
    for ref, reason in report.dangling:
        click.echo(f"DANGLING {ref.dataset_type} {json.dumps(ref.data_id)} run={ref.run} {ref.key}: {reason}")
    for orphan in report.orphans:
        click.echo(f"orphan {orphan.key} ({orphan.size} bytes, modified {orphan.last_modified})")
    click.echo(f"{report.checked} entries checked, {len(report.dangling)} dangling, {len(report.orphans)} orphan(s)")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("uri")
@click.option("--older-than", default="1h", show_default=True, help="Grace period, e.g. 30m, 1h, 2d.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def vacuum(uri: str, older_than: str, dry_run: bool) -> None:
    """Remove orphaned data objects older than the grace period (never a committed dataset)."""
    from objbutler.butler import Butler
    from objbutler.maintenance import parse_age
    from objbutler.maintenance import vacuum as run_vacuum

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    removed = run_vacuum(Butler(uri), age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for orphan in removed:
        click.echo(f"{verb} {orphan.key} ({orphan.size} bytes)")
    click.echo(f"{verb} {len(removed)} orphan(s)")


@main.command()
@click.argument("uri")
@click.argument("dataset_type")
@data_id_option
@run_option
@click.option("--boxes", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns x0,y0,x1,y1 (half-open, 0-based pixels).")
@click.option("--radec", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns ra,dec in degrees (then --size).")
@click.option("--size", default=None, help="Stamp size for --radec: pixels, or an angle like 10arcsec.")
@click.option("--mode", type=click.Choice(["trim", "partial", "strict"]), default="trim", show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="A directory for one FITS file per stamp, or a file ending in .npz for all stamps.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a contact sheet of the stamps to this PNG.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Cut on this running Dask scheduler (tcp://host:8786) instead of in this process.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Cut on a local Dask cluster of N worker processes (127.0.0.1, no dashboard).")
def cutout(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, boxes: Path | None,
           radec: Path | None, size: str | None, mode: str, out: Path | None, png: Path | None,
           scheduler: str | None, workers: int | None) -> None:
    """Cut postage stamps out of one image with a few coalesced range reads (optionally on Dask)."""
    import time

    from objbutler.butler import Butler
    from objbutler.stamps_io import (
        read_boxes_csv,
        read_radec_csv,
        write_contact_sheet,
        write_fits_stamps,
        write_npz,
    )

    if (boxes is None) == (radec is None):
        raise click.UsageError("give exactly one of --boxes and --radec")
    if radec is not None and size is None:
        raise click.UsageError("--radec needs --size")
    if scheduler is not None and workers is not None:
        raise click.UsageError("give --scheduler or --workers, not both")
    butler = Butler(uri)
    ref = butler.find(dataset_type, parse_data_id(data_id), run)
    requests = read_boxes_csv(boxes) if boxes is not None else read_radec_csv(radec)  # type: ignore[arg-type]
    start = time.perf_counter()
    stamp_size = _parse_size(size) if radec is not None else None
    if scheduler is not None or workers is not None:
        from objbutler.dask import run_cutout_job

        stamps = run_cutout_job(uri, ref, requests, scheduler=scheduler, workers=workers,
                                mode=mode, size=stamp_size)  # type: ignore[arg-type]
    else:
        stamps = butler.get_cutouts(ref, requests, mode=mode, size=stamp_size)  # type: ignore[arg-type]
    click.echo(f"{len(stamps)} stamps in {time.perf_counter() - start:.3f} s")
    if out is not None:
        if out.suffix == ".npz":
            write_npz(stamps, out)
        else:
            write_fits_stamps(stamps, out)
        click.echo(f"wrote {out}")
    if png is not None:
        write_contact_sheet(stamps, png, title=f"{dataset_type} {json.dumps(ref.data_id)}")
        click.echo(f"wrote {png}")


def _parse_size(text: str | None) -> Any:
    from astropy import units as u

    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return u.Quantity(text)
    except (TypeError, ValueError):
        raise click.BadParameter(f"cannot read {text!r} as pixels or an angle", param_hint="--size") from None


@main.command(name="cutouts-at")
@click.argument("uri")
@click.argument("dataset_type")
@click.option("--radec", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Catalogue with ra,dec columns in degrees: .csv, .ecsv or .parquet.")
@click.option("--size", required=True, help="Stamp size: pixels, or an angle like 10arcsec.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="A directory (resumable: stamps-*.fits, results.csv) or one .fits file.")
@click.option("--run", default=None, help="Only images of this run.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE", help="Data ID condition (repeatable).")
@click.option("--mode", type=click.Choice(["trim", "partial", "strict"]), default="trim", show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Positions per batch (memory holds one batch's stamps).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--png", "png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Light curve: a catalogue of one position; its stamps in time order with their dates.")
def cutouts_at(uri: str, dataset_type: str, radec: Path, size: str, out: Path, run: str | None,
               where: tuple[str, ...], mode: str, chunk: int, no_progress: bool, png: Path | None) -> None:
    """Stamps of every image of TYPE at every catalogue position, with a results table."""
    import time

    from tqdm import tqdm

    from objbutler.butler import Butler
    from objbutler.sky.catalog import read_catalog, write_catalog_cutouts

    butler = Butler(uri)
    coords = read_catalog(radec)
    if png is not None and len(coords) != 1:
        raise click.BadParameter(f"--png draws one position's light curve; {radec} has {len(coords)} positions",
                                 param_hint="--png")
    conditions = parse_data_id(where) if where else None
    started = time.perf_counter()
    with tqdm(total=len(coords), unit="pos", disable=no_progress) as bar:
        summary = write_catalog_cutouts(butler, dataset_type, coords, _parse_size(size), out, run=run,
                                        where=conditions, mode=mode, chunk=chunk,  # type: ignore[arg-type]
                                        progress=bar.update)
    click.echo(f"{summary.stamps} stamps at {summary.positions} positions in {time.perf_counter() - started:.2f} s "
               f"({summary.without_image} positions in no image, {summary.skipped} skipped"
               + (f", {summary.chunks_resumed} chunks resumed" if summary.chunks_resumed else "") + ")")
    click.echo(f"wrote {out} (results: {summary.results})")
    if png is not None:
        from objbutler.stamps_io import write_light_curve

        history = butler.cutouts_at(coords[0], _parse_size(size), dataset_type, run, conditions,
                                    mode=mode)[0]  # type: ignore[arg-type]
        position = coords[0]
        write_light_curve(history, png, title=f"{dataset_type} at RA {position.ra.deg:.6f} Dec "
                                              f"{position.dec.deg:.6f}: {len(history)} images")
        click.echo(f"wrote {png}")


@main.command()
@click.argument("uri")
@click.option("--type", "dataset_type", default=None, help="Only datasets of this type.")
@click.option("--jobs", type=click.IntRange(min=1), default=16, show_default=True, help="Headers read at once.")
def reindex(uri: str, dataset_type: str | None, jobs: int) -> None:
    """Record sky footprints for images put before objbutler recorded them (one header read each)."""
    from objbutler.butler import Butler
    from objbutler.sky.reindex import reindex as run_reindex

    report = run_reindex(Butler(uri), dataset_type, jobs=jobs)
    click.echo(f"{report.recorded} of {report.examined} images given a footprint in {report.commits} commit(s); "
               f"{len(report.without_wcs)} without a celestial WCS, {len(report.failed)} unreadable")
    for dataset_id, problem in sorted(report.failed.items())[:20]:
        click.echo(f"  {dataset_id}: {problem}", err=True)


@main.command()
@click.option("--repo", default="./objbutler-demo", show_default=True, help="Where the demo repository goes.")
@click.option("--stamps", default=1000, show_default=True, help="Number of postage stamps to cut.")
@click.option("--size", default=4096, show_default=True, help="Side of the synthetic PVI in pixels.")
@click.option("--png", default=None, help="Write a contact sheet of the first stamps to this PNG file.")
def demo(repo: str, stamps: int, size: int, png: str | None) -> None:
    """Run the end-to-end demo on an embedded local repository."""
    from objbutler.demo import run_demo

    run_demo(repo, n_stamps=stamps, image_size=size, png=png, echo=click.echo)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--type", "dataset_type", default=None, help="Only datasets of this type.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE", help="Data ID condition (repeatable).")
@run_option
@click.option("--with-inputs", is_flag=True, help="Also copy provenance inputs, recursively within SRC.")
@click.option("--jobs", default=8, show_default=True, help="Datasets copied at once.")
@click.option("--batch-size", default=32, show_default=True, help="Datasets per registry commit.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def clone(src: str, dst: str, dataset_type: str | None, where: tuple[str, ...], run: str | None,
          with_inputs: bool, jobs: int, batch_size: int, no_progress: bool) -> None:
    """Copy datasets (data and registry entries) from SRC into DST, creating DST if needed.

    Checksums are verified; rerunning an interrupted clone copies only what is missing.
    """
    from objbutler.clone import clone as run_clone

    report = run_clone(src, dst, dataset_type=dataset_type, where=parse_data_id(where), run=run,
                       with_inputs=with_inputs, progress=not no_progress, jobs=jobs, batch_size=batch_size)
    for ref, reason in report.failed:
        click.echo(f"error: {ref.dataset_type} {json.dumps(ref.data_id)} run={ref.run}: {reason}", err=True)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("suite", type=click.Choice(["cutouts", "registry", "verify", "sky", "all"]))
@click.option("--target", default="localstack", show_default=True,
              help="localstack, moto, swift, local, an s3:// URI (AWS_* variables) or a directory.")
@click.option("--quick", is_flag=True, help="Short run (under 3 minutes; slow baselines on a few stamps, labelled ~).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows here.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write README.md and PNG plots into this directory.")
@click.option("--image-size", type=click.IntRange(64), default=None, help="Side of the cutouts image [default: 4096].")
@click.option("--smoke", is_flag=True, hidden=True, help="Tiny registry suite (for the unit test).")
def bench(suite: str, target: str, quick: bool, json_path: Path | None, report_dir: Path | None,
          image_size: int | None, smoke: bool) -> None:
    """Benchmark objbutler against what users do today (runs from a source checkout: benchmarks/)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise click.ClickException(f"objbutler bench needs the source checkout's benchmarks/ next to {root}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.run import main as run_benchmarks

    sys.exit(run_benchmarks(suite, target, quick=quick, json_path=json_path, report_dir=report_dir,
                            image_size=image_size, smoke=smoke))


if __name__ == "__main__":
    main()
