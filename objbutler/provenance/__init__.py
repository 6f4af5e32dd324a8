"""Provenance: what a dataset was made from, by which activity, and the lineage walks over it.

One module per job: :mod:`~objbutler.provenance.activity` (the activity model and the
``butler.activity`` block), :mod:`~objbutler.provenance.record` (what a put records),
:mod:`~objbutler.provenance.cards` (FITS PROV cards), :mod:`~objbutler.provenance.graph`
(the lineage graph and its PROV-JSON export) and :mod:`~objbutler.provenance.walks`
(upstream/downstream walks). Every public name is importable from ``objbutler.provenance``.

What a put records
------------------
``butler.put(..., inputs=[...], derived_from=[...], activity=...)`` stores a
small dict in the dataset's registry entry (``DatasetRef.provenance``)::

    {"inputs":       [link, ...],   # every dataset given to the processing
     "derived_from": [link, ...],   # the subset the output was derived from
     "activity":     {...}}         # Activity.to_json(), when there is one

where a *link* is ``{"id", "repository", "dataset_type", "data_id", "run"}``:
enough to find the input again in its own repository, and to show it when that
repository cannot be reached. ``derived_from`` must be a subset of ``inputs``.

An :class:`Activity` is the task that made the dataset: a name, a JSON-safe
config, software versions (objbutler, numpy, astropy and Python filled in,
plus any the caller adds), the host, and UTC start/end times. Either pass one
to ``put(activity=...)`` or open ``with butler.activity(name, config=...)``,
which stamps every put made through that Butler inside the block. The state of
that block lives on the Butler instance (a stack, so blocks nest), never in a
module global. An activity's end is not known while its puts happen, so the
block, when it closes, writes one small completion record
``provenance/activities/<id>.json`` to the repository; lineage walks read it to
fill in the end time of entries that were stamped while the block was open.

FITS datasets also carry bounded header cards (see :func:`provenance_cards`):
the activity, the input count and the first :data:`MAX_HEADER_INPUTS` inputs
with a derived flag. The full lists live only in the registry.

Walks
-----
:func:`walk_upstream` follows inputs recursively, across repositories: a link
whose repository differs from the one being walked is opened as another
Butler (cached for that one walk only). An input that cannot be found or
whose repository cannot be opened becomes an *unresolved* node with the
reason, not an error. :func:`walk_downstream` scans one repository's registry
once (linear time) and follows the reverse links. Both return a
:class:`LineageGraph`, which renders as an indented tree
(:meth:`LineageGraph.to_tree_text`) or as W3C PROV-JSON
(:meth:`LineageGraph.to_prov_json`).
"""

from objbutler.provenance.activity import (
    ACTIVITY_PREFIX,
    Activity,
    ProvenanceWarning,
    activity_scope,
    current_activity,
    software_versions,
)
from objbutler.provenance.cards import MAX_HEADER_INPUTS, bounded_card, provenance_cards, stamp_fits_cards
from objbutler.provenance.graph import PROV_NAMESPACE, EdgeKind, LineageEdge, LineageGraph, LineageNode
from objbutler.provenance.record import provenance_record
from objbutler.provenance.walks import walk_downstream, walk_upstream

__all__ = [
    "ACTIVITY_PREFIX",
    "MAX_HEADER_INPUTS",
    "PROV_NAMESPACE",
    "Activity",
    "EdgeKind",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "ProvenanceWarning",
    "activity_scope",
    "bounded_card",
    "current_activity",
    "provenance_cards",
    "provenance_record",
    "software_versions",
    "stamp_fits_cards",
    "walk_downstream",
    "walk_upstream",
]
