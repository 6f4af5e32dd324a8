"""Parquet bytes to an Arrow table, always decoded on the calling thread.

Every Parquet read in objbutler goes through :func:`read_parquet`, so none of them starts Arrow's global CPU
thread pool. A pool started by a short program aborts the process at exit when the program ends within a few
milliseconds of the read (apache/arrow#34314, ``terminate called without an active exception``): measured with
pyarrow 26, 4-7 of 30 runs of a script that only calls ``pq.read_table(..., use_threads=False)`` and exits, for any
table size; 0 of 30 with ``use_threads=False``. The pool buys nothing here: decoding a million-row checkpoint
(58 MB) on a 2-core machine took 0.18-0.35 s on the calling thread and 0.20-0.74 s in the pool.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["read_parquet"]


def read_parquet(data: bytes, *, verify_pages: bool = False) -> pa.Table:
    """Decode a whole Parquet file held in memory.

    Parameters
    ----------
    data : bytes
        The file's bytes.
    verify_pages : bool
        Check each page's CRC (files written with ``write_page_checksum=True``), so a page garbled at rest or on
        the way fails to read instead of misreading.

    Returns
    -------
    pyarrow.Table
        The file's rows, with its schema metadata.

    Raises
    ------
    pyarrow.ArrowException, OSError
        When the bytes are not a readable Parquet file.
    """
    return pq.read_table(io.BytesIO(data), page_checksum_verification=verify_pages, use_threads=False)
