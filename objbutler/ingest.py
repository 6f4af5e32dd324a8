"""Ingest FITS files from disk and write datasets back to local files (used by the CLI)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from astropy.io import fits

from objbutler.butler import Butler
from objbutler.errors import FormatError, InvalidKeyError, ObjButlerError
from objbutler.registry.records import DatasetRef

__all__ = ["ingest_files", "write_local"]


def _select_hdu(hdul: fits.HDUList, hdu: str | None) -> Any:
    if hdu is None:
        return hdul
    try:
        return hdul[int(hdu)]
    except ValueError:
        return hdul[hdu]


def _data_id_for(header: fits.Header, fixed: Mapping[str, int | str], header_keys: Mapping[str, str],
                 path: Path) -> dict[str, int | str]:
    data_id = dict(fixed)
    for key, card in header_keys.items():
        if card not in header:
            raise InvalidKeyError(f"{path}: header has no card {card!r} for data ID key {key!r}")
        value = header[card]
        data_id[key] = int(value) if isinstance(value, int | float) and float(value).is_integer() else value
    return data_id


def ingest_files(
    butler: Butler,
    dataset_type: str,
    paths: Sequence[Path],
    data_id: Mapping[str, int | str],
    header_keys: Mapping[str, str],
    run: str,
    fmt: str | None = None,
    hdu: str | None = None,
    progress: bool = False,
) -> tuple[list[DatasetRef], list[tuple[Path, Exception]]]:
    """Put each FITS file as one dataset; a failure of one file does not stop the others.

    Parameters
    ----------
    butler : Butler
        The repository.
    dataset_type : str
        Dataset type of every file.
    paths : sequence of Path
        FITS files.
    data_id : mapping
        Data ID items common to all files.
    header_keys : mapping
        Data ID key -> header card to read it from (per file).
    run : str
        Run name.
    fmt : str, optional
        Storage format (repository default otherwise).
    hdu : str, optional
        HDU index or name (default: the first with image data).
    progress : bool
        Show a progress bar (tqdm) on stderr.

    Returns
    -------
    refs, failures
        Committed refs and ``(path, error)`` for files that failed.
    """
    from tqdm import tqdm

    refs: list[DatasetRef] = []
    failures: list[tuple[Path, Exception]] = []
    for path in tqdm(paths, disable=not progress, unit="file", desc="ingest"):
        try:
            with fits.open(path, memmap=False) as hdul:
                selected = _select_hdu(hdul, hdu)
                header = selected.header if not isinstance(selected, fits.HDUList) else hdul[0].header
                did = _data_id_for(header, data_id, header_keys, path)
                refs.append(butler.put(selected, dataset_type, did, run=run, format=fmt))
        except (ObjButlerError, OSError, KeyError, IndexError, TypeError) as exc:
            failures.append((path, exc))
    return refs, failures


def write_local(obj: Any, path: Path) -> None:
    """Write a dataset as ``get`` returned it: images as FITS, dicts as JSON, tables as ECSV or Parquet."""
    from astropy.nddata import NDData
    from astropy.table import Table

    if isinstance(obj, NDData):
        header = fits.Header(obj.meta) if not isinstance(obj.meta, fits.Header) else obj.meta
        fits.PrimaryHDU(obj.data, header=header).writeto(path, overwrite=True)
    elif isinstance(obj, dict):
        path.write_text(json.dumps(obj, indent=2))
    elif isinstance(obj, Table):
        obj.write(path, format="parquet" if path.suffix == ".parquet" else "ascii.ecsv", overwrite=True)
    else:
        raise FormatError(f"cannot write a {type(obj).__name__} to a local file")
