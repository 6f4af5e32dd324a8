"""The ``objbutler`` command line: thin commands that parse arguments and call library functions.

A dataset is named as ``URI TYPE --data-id KEY=VALUE [--data-id ...] --run RUN``;
values that look like integers are integers.
"""

from __future__ import annotations

import json
import sys
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
def get(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, out: Path) -> None:
    """Read one dataset and write it to a local file."""
    from objbutler.butler import Butler
    from objbutler.ingest import write_local

    obj = Butler(uri).get(dataset_type, parse_data_id(data_id), run)
    write_local(obj, out)
    click.echo(f"wrote {out}")


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
def cutout(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, boxes: Path | None,
           radec: Path | None, size: str | None, mode: str, out: Path | None, png: Path | None) -> None:
    """Cut postage stamps out of one image with a few coalesced range reads."""
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
    butler = Butler(uri)
    ref = butler.find(dataset_type, parse_data_id(data_id), run)
    requests = read_boxes_csv(boxes) if boxes is not None else read_radec_csv(radec)  # type: ignore[arg-type]
    start = time.perf_counter()
    stamps = butler.get_cutouts(ref, requests, mode=mode,  # type: ignore[arg-type]
                                size=_parse_size(size) if radec is not None else None)
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


@main.command()
@click.option("--repo", default="./objbutler-demo", show_default=True, help="Where the demo repository goes.")
@click.option("--stamps", default=1000, show_default=True, help="Number of postage stamps to cut.")
@click.option("--size", default=4096, show_default=True, help="Side of the synthetic PVI in pixels.")
@click.option("--png", default=None, help="Write a contact sheet of the first stamps to this PNG file.")
def demo(repo: str, stamps: int, size: int, png: str | None) -> None:
    """Run the end-to-end demo on an embedded local repository."""
    from objbutler.demo import run_demo

    run_demo(repo, n_stamps=stamps, image_size=size, png=png, echo=click.echo)


if __name__ == "__main__":
    main()
