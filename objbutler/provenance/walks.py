"""Lineage walks: upstream across repositories (through a resolver), downstream over one registry."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from objbutler.errors import NotFoundError, ObjButlerError
from objbutler.provenance.activity import ACTIVITY_PREFIX, Activity
from objbutler.provenance.graph import EdgeKind, LineageEdge, LineageGraph, LineageNode, repository_key
from objbutler.registry.records import DatasetRef

if TYPE_CHECKING:
    from objbutler.butler import Butler
    from objbutler.registry.state import RegistryState

__all__ = ["walk_downstream", "walk_upstream"]


class _Walk:
    """Per-walk state: Butlers and registry views by repository URI, completed activities."""

    def __init__(self, butler: Butler, others: Iterable[Butler], resolver: Callable[[str], Butler] | None) -> None:
        self.home = butler
        self.resolver = resolver
        self.butlers: dict[str, Butler | None] = {repository_key(b.uri): b for b in others}
        self.butlers[repository_key(butler.uri)] = butler
        self.problems: dict[str, str] = {}
        self.states: dict[str, RegistryState] = {}
        self.graph_activities: dict[str, Activity] = {}

    def _butler(self, uri: str) -> Butler | None:
        key = repository_key(uri)
        if key not in self.butlers:
            # Another repository is opened by the caller's resolver, or from the environment alone: never
            # with this repository's store options, whose keys are not the caller's to lend elsewhere.
            open_other = self.resolver or type(self.home)
            try:
                self.butlers[key] = open_other(uri)
            except (ObjButlerError, OSError, ValueError) as exc:
                self.butlers[key] = None
                self.problems[key] = f"cannot open repository {uri}: {type(exc).__name__}: {exc}"
        return self.butlers[key]

    def resolve(self, link: Mapping[str, Any]) -> LineageNode:
        uri = str(link.get("repository") or self.home.uri)
        butler = self._butler(uri)
        if butler is None:
            return LineageNode.from_link(link, self.problems[repository_key(uri)])
        key = repository_key(uri)
        if key not in self.states:
            self.states[key] = butler.registry.refresh()
        found = self.states[key].query(dataset_id=str(link["id"]))
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
