"""Provenance: what a dataset was made from, by which activity, and the lineage walks over it.

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

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import platform
import re
import socket
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from objbutler.errors import FormatError, NotFoundError, ObjButlerError
from objbutler.registry.commits import utc_now
from objbutler.registry.records import DatasetRef

if TYPE_CHECKING:
    from objbutler.butler import Butler
    from objbutler.registry.state import RegistryState

__all__ = [
    "ACTIVITY_PREFIX",
    "MAX_HEADER_INPUTS",
    "PROV_NAMESPACE",
    "Activity",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "ProvenanceWarning",
    "activity_scope",
    "bounded_card",
    "provenance_cards",
    "provenance_record",
    "software_versions",
    "stamp_fits_cards",
    "walk_downstream",
    "walk_upstream",
]

ACTIVITY_PREFIX = "provenance/activities/"
MAX_HEADER_INPUTS = 20
PROV_NAMESPACE = "urn:objbutler:"
EdgeKind = Literal["used", "wasDerivedFrom"]

_CARD_PATTERN = re.compile(r"^PROV(ACT|ACID|NIN|NDER|IN\d+|DF\d+)$")


class ProvenanceWarning(UserWarning):
    """Provenance could not be recorded completely (e.g. an activity's completion record)."""


def software_versions() -> dict[str, str]:
    """Versions of objbutler, numpy, astropy and Python in this process."""
    import astropy
    import numpy

    from objbutler.version import __version__

    return {
        "objbutler": __version__,
        "numpy": numpy.__version__,
        "astropy": astropy.__version__,
        "python": platform.python_version(),
    }


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-safe (finite numbers, strings, lists, dicts): {exc}") from None


@dataclasses.dataclass(slots=True)
class Activity:
    """The processing step that produced datasets.

    Parameters
    ----------
    name : str
        The task, e.g. ``"make_coadd"``.
    config : dict, optional
        Its parameters; must be JSON-safe (a copy is kept).
    software : dict, optional
        Extra ``{package: version}``; objbutler, numpy, astropy and Python are
        filled in automatically unless given here.
    host : str, optional
        Where it ran (default: this host's name).
    started : str, optional
        ISO-8601 UTC start (default: now).
    ended : str or None
        ISO-8601 UTC end; set by :meth:`finish` or when a
        ``butler.activity`` block closes.
    id : str, optional
        UUID (default: a fresh one).

    Attributes
    ----------
    outputs : list of str
        IDs of the datasets this process has put with this activity.
    """

    name: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    software: dict[str, str] = dataclasses.field(default_factory=dict)
    host: str = dataclasses.field(default_factory=socket.gethostname)
    started: str = dataclasses.field(default_factory=utc_now)
    ended: str | None = None
    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    outputs: list[str] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"an activity needs a non-empty name, got {self.name!r}")
        if not isinstance(self.config, Mapping):
            raise ValueError(f"activity config must be a dict, got {type(self.config).__name__}")
        self.config = _json_copy(dict(self.config), "activity config")
        self.software = {**software_versions(), **{str(k): str(v) for k, v in self.software.items()}}

    def finish(self) -> Activity:
        """Set the end time to now (if not set yet); returns the activity."""
        if self.ended is None:
            self.ended = utc_now()
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (what the registry stores)."""
        return {
            "id": self.id, "name": self.name, "config": self.config, "software": dict(self.software),
            "host": self.host, "started": self.started, "ended": self.ended,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Activity:
        """Parse :meth:`to_json` output."""
        return cls(
            name=str(raw["name"]), config=dict(raw.get("config") or {}), software=dict(raw.get("software") or {}),
            host=str(raw.get("host", "")), started=str(raw.get("started", "")), ended=raw.get("ended"),
            id=str(raw["id"]),
        )


# -- recording -----------------------------------------------------------------


def _links(refs: Iterable[DatasetRef]) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "repository": r.repository, "dataset_type": r.dataset_type, "data_id": r.data_id, "run": r.run}
        for r in refs
    ]


def provenance_record(
    inputs: Sequence[DatasetRef] | None,
    derived_from: Sequence[DatasetRef] | None,
    activity: Activity | None = None,
) -> dict[str, Any] | None:
    """The provenance dict a put stores in the registry entry (None when there is nothing to record).

    Parameters
    ----------
    inputs : sequence of DatasetRef, optional
        Every contributing input.
    derived_from : sequence of DatasetRef, optional
        The inputs the output was derived from.
    activity : Activity, optional
        The step that made it.

    Raises
    ------
    ValueError
        If ``derived_from`` holds a dataset that is not in ``inputs``.
    """
    if not inputs and not derived_from and activity is None:
        return None
    inputs = list(inputs or [])
    derived = list(derived_from or [])
    input_ids = {ref.id for ref in inputs}
    stray = [ref.id for ref in derived if ref.id not in input_ids]
    if stray:
        raise ValueError(f"derived_from must be a subset of inputs; not in inputs: {stray}")
    record: dict[str, Any] = {"inputs": _links(inputs), "derived_from": _links(derived)}
    if activity is not None:
        record["activity"] = activity.to_json()
    return record


def bounded_card(keyword: str, value: Any, comment: str) -> tuple[str, Any, str]:
    """``(keyword, value, comment)`` that fits one 80-character card: long strings and comments are cut."""
    from astropy.io import fits

    if isinstance(value, str):
        value = value[:68]
    room = 80 - len(fits.Card(keyword, value).image.rstrip()) - 3
    return keyword, value, comment[:room] if room > 0 else ""


def provenance_cards(record: Mapping[str, Any], max_inputs: int = MAX_HEADER_INPUTS) -> list[tuple[str, Any, str]]:
    """Bounded FITS cards summarizing a provenance record.

    ``PROVACT``/``PROVACID`` name the activity; ``PROVNIN`` and ``PROVNDER``
    count inputs and derived-from inputs; ``PROVIN<n>`` holds the id of input
    *n* (``n <= max_inputs``) with its type and data ID in the comment, and
    ``PROVDF<n>`` says whether the output was derived from it.

    Returns
    -------
    list of (keyword, value, comment)
    """
    cards: list[tuple[str, Any, str]] = []
    activity = record.get("activity")
    if activity:
        cards.append(("PROVACT", str(activity["name"]), "activity that produced this dataset"))
        cards.append(("PROVACID", str(activity["id"]), "activity id"))
    inputs = record.get("inputs") or []
    derived_ids = {link["id"] for link in record.get("derived_from") or []}
    cards.append(("PROVNIN", len(inputs), "number of inputs (full list in the registry)"))
    cards.append(("PROVNDER", len(derived_ids), "number of inputs derived from"))
    for n, link in enumerate(inputs[:max_inputs], start=1):
        described = ",".join(f"{k}={v}" for k, v in link["data_id"].items())
        cards.append((f"PROVIN{n}", str(link["id"]), f"{link['dataset_type']} {described}"))
        cards.append((f"PROVDF{n}", link["id"] in derived_ids, "derived from input"))
    return [bounded_card(*card) for card in cards]


def stamp_fits_cards(obj: Any, record: Mapping[str, Any] | None, fmt: str) -> Any:
    """Return ``obj`` with provenance cards added when it is an image going to FITS.

    The caller's object and header are not modified: the image is normalized
    (a new header) and returned as an :class:`~objbutler.formats._image.Image`. Other objects, formats, or a put
    without provenance get ``obj`` back unchanged. Provenance cards already in
    the header (from an image that was read back and put again) are replaced.
    """
    from objbutler.formats.dispatch import kind_of

    if record is None or fmt != "fits" or kind_of(obj) != "image":
        return obj
    from objbutler.formats import as_image

    try:
        image = as_image(obj)
    except FormatError:
        return obj  # encode_dataset reports it as a FormatError
    for key in [k for k in image.header if _CARD_PATTERN.match(k)]:
        del image.header[key]
    for key, value, comment in provenance_cards(record):
        image.header.append((key, value, comment), end=True)
    return image  # the normalized image itself: nothing else it carries (mask, scaling, HDUs) is dropped


@contextlib.contextmanager
def activity_scope(butler: Butler, activity: Activity) -> Iterator[Activity]:
    """Stamp ``activity`` on every put made through ``butler`` until the block closes.

    On exit the activity is finished and, if it produced datasets, its
    completion record is written to ``provenance/activities/<id>.json``.
    """
    stack: list[Activity] = butler._activities
    stack.append(activity)
    try:
        yield activity
    finally:
        stack.remove(activity)
        activity.finish()
        if activity.outputs:
            try:
                butler.store.put(f"{ACTIVITY_PREFIX}{activity.id}.json", json.dumps(activity.to_json()).encode())
            except ObjButlerError as exc:
                warnings.warn(f"activity {activity.name} ({activity.id}) finished but its end time could not be "
                              f"recorded in {butler.uri}: {exc}", ProvenanceWarning, stacklevel=3)


def current_activity(butler: Butler) -> Activity | None:
    """The innermost open ``butler.activity`` block's activity, if any."""
    stack: list[Activity] = butler._activities
    return stack[-1] if stack else None


# -- the graph -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LineageNode:
    """One dataset in a lineage graph.

    Parameters
    ----------
    id, dataset_type, data_id, run, repository
        Identify the dataset (from its ref, or from the link that named it).
    ref : DatasetRef or None
        The committed dataset, or None when it could not be resolved.
    problem : str or None
        Why it could not be resolved.
    """

    id: str
    dataset_type: str
    data_id: dict[str, Any]
    run: str
    repository: str
    ref: DatasetRef | None = None
    problem: str | None = None

    @property
    def resolved(self) -> bool:
        """Whether the dataset was found in its repository."""
        return self.ref is not None

    @property
    def activity_id(self) -> str | None:
        """The id of the activity that produced it, if recorded."""
        activity = ((self.ref.provenance if self.ref else None) or {}).get("activity")
        return str(activity["id"]) if activity else None

    @classmethod
    def from_ref(cls, ref: DatasetRef) -> LineageNode:
        """A resolved node."""
        return cls(ref.id, ref.dataset_type, ref.data_id, ref.run, ref.repository, ref)

    @classmethod
    def from_link(cls, link: Mapping[str, Any], problem: str) -> LineageNode:
        """An unresolved node, described by the link that named it."""
        return cls(str(link["id"]), str(link.get("dataset_type", "?")), dict(link.get("data_id") or {}),
                   str(link.get("run", "?")), str(link.get("repository", "")), None, problem)

    def label(self) -> str:
        """``calexp {"detector": 22, "visit": 1} run=run1``."""
        return f"{self.dataset_type} {json.dumps(self.data_id, sort_keys=True)} run={self.run}"


@dataclasses.dataclass(frozen=True, slots=True)
class LineageEdge:
    """``output`` was made from ``input``: ``wasDerivedFrom`` if in derived_from, else ``used``."""

    output: str
    input: str
    kind: EdgeKind


@dataclasses.dataclass(slots=True)
class LineageGraph:
    """Datasets, the edges between them and the activities that made them.

    Parameters
    ----------
    root : str
        Id of the dataset the walk started from.
    direction : {"upstream", "downstream"}
        Inputs of the root, or datasets made from it.
    nodes : dict
        Dataset id -> LineageNode.
    edges : list of LineageEdge
        In discovery order (each output's inputs in the order recorded).
    activities : dict
        Activity id -> Activity.
    """

    root: str
    direction: Literal["upstream", "downstream"]
    nodes: dict[str, LineageNode] = dataclasses.field(default_factory=dict)
    edges: list[LineageEdge] = dataclasses.field(default_factory=list)
    activities: dict[str, Activity] = dataclasses.field(default_factory=dict)

    def inputs_of(self, dataset_id: str) -> list[LineageEdge]:
        """Edges from ``dataset_id`` to its inputs."""
        return [e for e in self.edges if e.output == dataset_id]

    def outputs_of(self, dataset_id: str) -> list[LineageEdge]:
        """Edges from datasets made from ``dataset_id``."""
        return [e for e in self.edges if e.input == dataset_id]

    # -- rendering ---------------------------------------------------------------

    def to_tree_text(self) -> str:
        """An indented tree from the root (a dataset reached twice is expanded once)."""
        root = self.nodes[self.root]
        by_parent: dict[str, list[tuple[str, EdgeKind]]] = collections.defaultdict(list)
        for edge in self.edges:
            if self.direction == "upstream":
                by_parent[edge.output].append((edge.input, edge.kind))
            else:
                by_parent[edge.input].append((edge.output, edge.kind))
        title = "inputs of" if self.direction == "upstream" else "datasets made from"
        lines = [f"{title} {self._describe(root, root.repository)}"]
        expanded = {self.root}

        def visit(node_id: str, prefix: str) -> None:
            children = by_parent.get(node_id, [])
            for i, (child_id, kind) in enumerate(children):
                last = i == len(children) - 1
                child = self.nodes[child_id]
                seen = child_id in expanded
                tag = "derived" if kind == "wasDerivedFrom" else "used"
                suffix = "  (see above)" if seen and by_parent.get(child_id) else ""
                lines.append(f"{prefix}{'└── ' if last else '├── '}[{tag}] {self._describe(child, root.repository)}"
                             f"{suffix}")
                if not seen:
                    expanded.add(child_id)
                    visit(child_id, prefix + ("    " if last else "│   "))

        visit(self.root, "")
        return "\n".join(lines)

    def _describe(self, node: LineageNode, home: str) -> str:
        text = f"{node.label()} id={node.id[:8]}"
        activity = self.activities.get(node.activity_id or "")
        if activity is not None:
            text += f" <{activity.name}>"
        if node.repository and node.repository != home:
            text += f" @ {node.repository}"
        if not node.resolved:
            text += f"  (unresolved: {node.problem})"
        return text

    def to_prov_json(self) -> dict[str, Any]:
        """The graph as a W3C PROV-JSON document (a dict; ``json.dumps`` it to write).

        Datasets are ``entity`` records (``objbutler:dataset-<uuid>``),
        activities ``activity`` records (``objbutler:activity-<uuid>``) with
        start/end times. Each output has ``wasGeneratedBy`` its activity (at
        its commit time), that activity ``used`` every input, and the output
        ``wasDerivedFrom`` each derived-from input. An output whose put named
        inputs but no activity gets a placeholder activity
        (``objbutler:recorded = false``) so that its ``used`` relations exist.
        """
        doc: dict[str, Any] = {"prefix": {"objbutler": PROV_NAMESPACE}, "entity": {}, "activity": {},
                               "wasGeneratedBy": {}, "used": {}, "wasDerivedFrom": {}}
        for node in self.nodes.values():
            doc["entity"][_entity_qname(node.id)] = _entity_attributes(node)
        for activity in self.activities.values():
            doc["activity"][_activity_qname(activity.id)] = _activity_attributes(activity)
        outputs = list(dict.fromkeys(edge.output for edge in self.edges))
        generated_by: dict[str, str] = {}
        for node in self.nodes.values():
            if node.activity_id is not None:
                generated_by[node.id] = _activity_qname(node.activity_id)
        for output in outputs:
            if output not in generated_by:
                placeholder = f"objbutler:activity-put-{output}"
                doc["activity"][placeholder] = {"prov:label": "put (no activity recorded)", "objbutler:recorded": False}
                generated_by[output] = placeholder
        counter = 0
        for output, activity_qname in generated_by.items():
            counter += 1
            generation: dict[str, Any] = {"prov:entity": _entity_qname(output), "prov:activity": activity_qname}
            ref = self.nodes[output].ref
            if ref is not None:
                generation["prov:time"] = ref.created
            doc["wasGeneratedBy"][f"_:gen{counter}"] = generation
        used_pairs: set[tuple[str, str]] = set()
        for edge in self.edges:
            counter += 1
            activity_qname = generated_by[edge.output]
            pair = (activity_qname, edge.input)
            if pair not in used_pairs:  # one activity may have made several outputs from one input
                used_pairs.add(pair)
                doc["used"][f"_:use{counter}"] = {"prov:activity": activity_qname,
                                                  "prov:entity": _entity_qname(edge.input)}
            if edge.kind == "wasDerivedFrom":
                doc["wasDerivedFrom"][f"_:der{counter}"] = {
                    "prov:generatedEntity": _entity_qname(edge.output),
                    "prov:usedEntity": _entity_qname(edge.input),
                    "prov:activity": activity_qname,
                }
        return {key: value for key, value in doc.items() if value}


def _entity_qname(dataset_id: str) -> str:
    return f"objbutler:dataset-{dataset_id}"


def _activity_qname(activity_id: str) -> str:
    return f"objbutler:activity-{activity_id}"


def _entity_attributes(node: LineageNode) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "prov:label": node.label(),
        "objbutler:dataset_type": node.dataset_type,
        "objbutler:data_id": json.dumps(node.data_id, sort_keys=True),
        "objbutler:run": node.run,
        "objbutler:repository": node.repository,
        "objbutler:resolved": node.resolved,
    }
    if node.ref is not None:
        attributes.update({"objbutler:format": node.ref.format, "objbutler:checksum": node.ref.checksum,
                           "objbutler:created": node.ref.created})
    return attributes


def _activity_attributes(activity: Activity) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "prov:label": activity.name,
        "objbutler:config": json.dumps(activity.config, sort_keys=True),
        "objbutler:software": json.dumps(activity.software, sort_keys=True),
        "objbutler:host": activity.host,
    }
    if activity.started:
        attributes["prov:startTime"] = activity.started
    if activity.ended:
        attributes["prov:endTime"] = activity.ended
    return attributes


# -- walks ---------------------------------------------------------------------


class _Walk:
    """Per-walk state: Butlers and registry views by repository URI, completed activities."""

    def __init__(self, butler: Butler, others: Iterable[Butler], resolver: Callable[[str], Butler] | None) -> None:
        self.home = butler
        self.resolver = resolver
        self.butlers: dict[str, Butler | None] = {b.uri: b for b in others}
        self.butlers[butler.uri] = butler
        self.problems: dict[str, str] = {}
        self.states: dict[str, RegistryState] = {}
        self.graph_activities: dict[str, Activity] = {}

    def _butler(self, uri: str) -> Butler | None:
        if uri not in self.butlers:
            # Another repository is opened by the caller's resolver, or from the environment alone: never
            # with this repository's store options, whose keys are not the caller's to lend elsewhere.
            open_other = self.resolver or type(self.home)
            try:
                self.butlers[uri] = open_other(uri)
            except (ObjButlerError, OSError, ValueError) as exc:
                self.butlers[uri] = None
                self.problems[uri] = f"cannot open repository {uri}: {type(exc).__name__}: {exc}"
        return self.butlers[uri]

    def resolve(self, link: Mapping[str, Any]) -> LineageNode:
        uri = str(link.get("repository") or self.home.uri)
        butler = self._butler(uri)
        if butler is None:
            return LineageNode.from_link(link, self.problems[uri])
        if uri not in self.states:
            self.states[uri] = butler.registry.refresh()
        found = self.states[uri].query(dataset_id=str(link["id"]))
        if not found:
            return LineageNode.from_link(link, f"dataset {link['id']} is not in {uri}")
        return LineageNode.from_ref(found[0])

    def note_activity(self, node: LineageNode) -> None:
        raw = ((node.ref.provenance if node.ref else None) or {}).get("activity")
        if not raw or raw["id"] in self.graph_activities:
            return
        activity = Activity.from_json(raw)
        if activity.ended is None:
            activity.ended = self._completion_time(node.repository, activity.id)
        self.graph_activities[activity.id] = activity

    def _completion_time(self, uri: str, activity_id: str) -> str | None:
        butler = self._butler(uri or self.home.uri)
        if butler is None:
            return None
        try:
            raw = json.loads(butler.store.get(f"{ACTIVITY_PREFIX}{activity_id}.json"))
        except (NotFoundError, ValueError):
            return None
        ended = raw.get("ended") if isinstance(raw, dict) else None
        return str(ended) if ended else None


def _links_of(ref: DatasetRef | None) -> list[tuple[dict[str, Any], EdgeKind]]:
    record = (ref.provenance if ref else None) or {}
    derived = {link["id"] for link in record.get("derived_from") or []}
    return [(link, "wasDerivedFrom" if link["id"] in derived else "used") for link in record.get("inputs") or []]


def walk_upstream(butler: Butler, ref: DatasetRef, depth: int | None = None,
                  repositories: Iterable[Butler] = (), resolver: Callable[[str], Butler] | None = None
                  ) -> LineageGraph:
    """The lineage of ``ref``: its inputs, their inputs, ... across repositories.

    Parameters
    ----------
    butler : Butler
        The repository that holds ``ref``.
    ref : DatasetRef
        Where to start.
    depth : int, optional
        Generations to follow (1: direct inputs only); None: all.
    repositories : iterable of Butler
        Butlers to use for those repositories' URIs (e.g. with credentials).
    resolver : callable, optional
        ``uri -> Butler`` for any other repository a link names. Without it,
        another repository is opened from the environment alone
        (``Butler(uri)``): this Butler's store options (endpoint, keys) are
        never lent to a URI that a provenance record names.

    Returns
    -------
    LineageGraph
    """
    walk = _Walk(butler, repositories, resolver)
    root = LineageNode.from_ref(ref)
    graph = LineageGraph(ref.id, "upstream", {ref.id: root})
    walk.note_activity(root)
    queue = collections.deque([(root, 0)])
    while queue:
        node, level = queue.popleft()
        if depth is not None and level >= depth:
            continue
        for link, kind in _links_of(node.ref):
            graph.edges.append(LineageEdge(node.id, str(link["id"]), kind))
            if link["id"] in graph.nodes:
                continue
            parent = walk.resolve(link)
            graph.nodes[parent.id] = parent
            walk.note_activity(parent)
            queue.append((parent, level + 1))
    graph.activities = walk.graph_activities
    return graph


def walk_downstream(butler: Butler, ref: DatasetRef, depth: int | None = None) -> LineageGraph:
    """Datasets in ``butler``'s repository made from ``ref``, and datasets made from those, ...

    One pass over the registry builds the reverse links, then a breadth-first
    walk follows them: linear in the number of datasets.

    Parameters
    ----------
    butler : Butler
        The repository to search.
    ref : DatasetRef
        Where to start (may live in another repository).
    depth : int, optional
        Generations to follow; None: all.

    Returns
    -------
    LineageGraph
    """
    made_from: dict[str, list[tuple[DatasetRef, EdgeKind]]] = collections.defaultdict(list)
    for candidate in butler.registry.refresh().all_refs():
        for link, kind in _links_of(candidate):
            made_from[str(link["id"])].append((candidate, kind))
    walk = _Walk(butler, (), None)
    root = LineageNode.from_ref(ref)
    graph = LineageGraph(ref.id, "downstream", {ref.id: root})
    walk.note_activity(root)
    queue = collections.deque([(ref.id, 0)])
    while queue:
        node_id, level = queue.popleft()
        if depth is not None and level >= depth:
            continue
        for child, kind in made_from.get(node_id, []):
            graph.edges.append(LineageEdge(child.id, node_id, kind))
            if child.id in graph.nodes:
                continue
            node = LineageNode.from_ref(child)
            graph.nodes[child.id] = node
            walk.note_activity(node)
            queue.append((child.id, level + 1))
    graph.activities = walk.graph_activities
    return graph
