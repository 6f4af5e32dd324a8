"""Modules split by job keep every public name where callers import it from.

``objbutler.provenance`` became a package (activity, record, cards, graph, walks) and
``objbutler.formats.zarr_array`` was split into header / write / plan / shard-index modules; the
names below are the ones the repository, its docs and its tests used before the split.
"""

from __future__ import annotations

import importlib

import pytest

BEFORE = {
    "objbutler.provenance": [
        "ACTIVITY_PREFIX", "MAX_HEADER_INPUTS", "PROV_NAMESPACE", "Activity", "EdgeKind", "LineageEdge",
        "LineageGraph", "LineageNode", "ProvenanceWarning", "activity_scope", "bounded_card", "current_activity",
        "provenance_cards", "provenance_record", "software_versions", "stamp_fits_cards", "walk_downstream",
        "walk_upstream",
    ],
    "objbutler.formats.zarr_array": [
        "DEFAULT_COMPRESSOR", "IMAGE_MEMBER", "ZARR_JSON", "ZarrObjects", "decode_zarr", "encode_zarr", "fetch_zarr",
        "header_from_json", "header_to_json", "plan_chunks", "read_zarr", "read_zarr_cutouts", "read_zarr_wcs",
        "write_zarr", "write_zarr_objects", "zarr_checksum", "zarr_checksum_of_digests", "zarr_image_attributes",
    ],
}
PRIVATE_BEFORE = {
    "objbutler.formats.zarr_array": ["_WCS_RELAX", "_load_image", "_value_to_json", "_value_from_json", "_decoder",
                                     "_all_chunks_written", "_group_members", "_parse_metadata"],
}
"""Private names other modules and tests imported from the old module (kept importable there)."""
"""Public names per split module (its ``__all__`` before the split, plus names imported by callers)."""

JOBS = {
    "objbutler.provenance": {
        "objbutler.provenance.activity": ["Activity", "activity_scope", "current_activity", "software_versions"],
        "objbutler.provenance.record": ["provenance_record"],
        "objbutler.provenance.cards": ["bounded_card", "provenance_cards", "stamp_fits_cards"],
        "objbutler.provenance.graph": ["LineageGraph", "LineageNode", "LineageEdge"],
        "objbutler.provenance.walks": ["walk_upstream", "walk_downstream"],
    },
    "objbutler.formats.zarr_array": {
        "objbutler.formats.zarr_header": ["header_to_json", "header_from_json"],
        "objbutler.formats.zarr_write": ["encode_zarr", "write_zarr", "write_zarr_objects", "zarr_checksum"],
        "objbutler.formats.zarr_plan": ["plan_chunks"],
        "objbutler.formats.zarr_shards": ["_read_shard_indexes", "_check_shards"],
        "objbutler.formats.zarr_array": ["read_zarr", "read_zarr_cutouts", "fetch_zarr", "decode_zarr"],
    },
}
"""Where each job lives now: the split is real (each name is defined in its job's module)."""


@pytest.mark.parametrize("module", sorted(BEFORE))
def test_every_public_name_is_still_importable_from_the_old_path(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in BEFORE[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing}"
    assert set(BEFORE[module]) <= set(imported.__all__)
    lost = [name for name in PRIVATE_BEFORE.get(module, []) if not hasattr(imported, name)]
    assert not lost, f"{module} lost {lost}"


@pytest.mark.parametrize("module", sorted(JOBS))
def test_each_job_lives_in_its_own_module(module: str) -> None:
    imported = importlib.import_module(module)
    for job, names in JOBS[module].items():
        for name in names:
            assert getattr(imported, name).__module__ == job, f"{module}.{name} is not defined in {job}"
