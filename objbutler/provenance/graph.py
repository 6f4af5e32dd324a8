"""The lineage graph (datasets, edges, activities), rendered as an indented tree or as W3C PROV-JSON."""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

from objbutler.errors import ObjButlerError
from objbutler.provenance.activity import Activity
from objbutler.registry.records import DatasetRef
from objbutler.stores.locations import parse_location

__all__ = ["PROV_NAMESPACE", "EdgeKind", "LineageEdge", "LineageGraph", "LineageNode", "repository_key",
           "same_repository"]

PROV_NAMESPACE = "urn:objbutler:"
EdgeKind = Literal["used", "wasDerivedFrom"]


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
        if node.repository and not same_repository(node.repository, home):
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


def repository_key(uri: str) -> str:
    """One spelling per repository: a local path made absolute (``camera`` and ``/home/me/camera`` agree)."""
    try:
        return parse_location(uri.rstrip("/") or uri).uri
    except ObjButlerError:  # not a location objbutler parses: compare as written
        return uri


def same_repository(a: str, b: str) -> bool:
    """True if two repository URIs name the same repository (see :func:`repository_key`)."""
    return a == b or repository_key(a) == repository_key(b)
