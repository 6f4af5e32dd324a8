"""Small put/get with Rubin's lsst-daf-butler on a local SQLite repository (run in its own venv).

Not imported by the harness: :mod:`benchmarks.registry` runs this file with the
venv's Python (``lsst-daf-butler`` pins its own dependency versions, so it
stays out of objbutler's environment) and reads one JSON object from stdout::

    {"version": ..., "put_seconds": [...], "get_ref_seconds": [...], "get_dataid_seconds": [...]}

The workload is objbutler's ``put-small``: a dict metric per data ID
(``instrument``, ``detector``), stored with the ``StructuredDataDict`` storage
class, interleaved put / get-by-ref / get-by-data-ID, after a few warm-up puts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any


def main() -> None:
    """Parse ``--puts`` and ``--warmup``, run the workload, print JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--puts", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    import lsst.daf.butler
    from lsst.daf.butler import Butler, DatasetType

    with tempfile.TemporaryDirectory(prefix="daf-butler-bench-") as root:
        started = time.perf_counter()
        Butler.makeRepo(root)
        butler = Butler.from_config(root, writeable=True, run="bench")
        total = args.puts + args.warmup
        butler.registry.insertDimensionData(
            "instrument",
            {"name": "Bench", "detector_max": total + 1, "visit_max": 10**6, "exposure_max": 10**6,
             "visit_system": 0, "class_name": "bench.Bench"},
        )
        butler.registry.insertDimensionData(
            "detector",
            *[{"instrument": "Bench", "id": i, "full_name": f"D{i}", "name_in_raft": f"D{i}", "raft": "R0",
               "purpose": "SCIENCE"} for i in range(total)],
        )
        dataset_type = DatasetType("metric", ["instrument", "detector"], "StructuredDataDict",
                                   universe=butler.dimensions)
        butler.registry.registerDatasetType(dataset_type)
        setup = time.perf_counter() - started
        out: dict[str, Any] = {"version": getattr(lsst.daf.butler, "__version__", "?"), "setup_seconds": setup,
                               "put_seconds": [], "get_ref_seconds": [], "get_dataid_seconds": []}
        for i in range(total):
            metric = {"metric": "PA1", "value": 5.1 + i, "unit": "mmag"}
            t0 = time.perf_counter()
            ref = butler.put(metric, "metric", instrument="Bench", detector=i)
            t1 = time.perf_counter()
            butler.get(ref)
            t2 = time.perf_counter()
            butler.get("metric", instrument="Bench", detector=i)
            t3 = time.perf_counter()
            if i >= args.warmup:
                out["put_seconds"].append(t1 - t0)
                out["get_ref_seconds"].append(t2 - t1)
                out["get_dataid_seconds"].append(t3 - t2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
