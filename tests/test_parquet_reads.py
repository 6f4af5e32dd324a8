"""Parquet reads never start Arrow's global thread pool: a program that reads a checkpoint and ends must exit 0.

pyarrow's CPU pool, started by a read a few milliseconds before the interpreter ends, aborts the process at exit
(apache/arrow#34314: ``terminate called without an active exception``, exit -6) in about one run of seven.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

from objbutler import Butler
from objbutler.parquet_reads import read_parquet

PACKAGE = Path(__file__).resolve().parents[1] / "objbutler"
RUNS = 16  # with the pool, all 16 exit 0 with probability about (6/7)**16, 8%


def test_a_script_that_reads_a_checkpoint_exits_cleanly_every_time(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    butler = Butler.create(repo)
    butler.put(np.zeros((4, 4), np.float32), "calexp", {"visit": 1}, run="r")
    butler.registry.write_checkpoint()
    assert butler.query()  # served from a checkpoint the scripts below decode on their own
    script = f"from objbutler import Butler\nprint(len(Butler({repo!r}).query()))\n"
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
            for _ in range(RUNS)]
    assert [(run.returncode, run.stdout.strip()) for run in runs] == [(0, "1")] * RUNS, \
        [run.stderr[-300:] for run in runs if run.returncode]


def test_every_parquet_read_in_the_package_goes_through_read_parquet() -> None:
    """``pq.read_table``, ``ParquetFile`` and ``parquet.dataset`` default to the pool: one module may call them."""
    names = {"read_table", "ParquetFile", "ParquetDataset", "read_pandas", "read_parquet"}
    offenders = [f"{path.relative_to(PACKAGE)}:{node.lineno}"
                 for path in PACKAGE.rglob("*.py") if path.name != "parquet_reads.py"
                 for node in ast.walk(ast.parse(path.read_text(), str(path)))
                 if isinstance(node, ast.Attribute) and node.attr in names
                 and not (isinstance(node.value, ast.Name) and node.value.id not in {"pq", "parquet", "pa"})]
    assert offenders == []


def test_read_parquet_verifies_pages_when_asked() -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"a": np.arange(1000)}), sink, write_page_checksum=True, compression="none")
    data = bytearray(sink.getvalue())
    assert read_parquet(bytes(data), verify_pages=True).column("a").to_pylist() == list(range(1000))
    data[len(data) // 4] ^= 0xFF  # inside the first data page
    try:
        read_parquet(bytes(data), verify_pages=True)
    except (pa.ArrowException, OSError):
        pass
    else:
        raise AssertionError("a garbled page was read without complaint")
