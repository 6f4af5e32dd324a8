"""MkDocs hooks: leave out nav entries of optional pages that do not exist (yet).

Pages owned by other parts of the project (guides, benchmark reports) are
listed in ``mkdocs.yml`` ahead of time. A strict build fails on a nav entry
whose file is missing, so this hook drops such entries, but only for the
pages named in ``OPTIONAL``: a typo anywhere else still fails the build.
A ``benchmarks/`` folder contributes every Markdown page it holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.optional_pages")

OPTIONAL = {"provenance.md", "multi-repo.md", "efd.md", "dask.md", "design.md", "registry.md",
            "benchmarks/index.md"}


def _prune(items: list[Any], docs: Path) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        title, target = next(iter(item.items())) if isinstance(item, dict) else (None, item)
        if isinstance(target, list):
            children = _prune(target, docs)
            if children:
                kept.append({title: children})
            continue
        if target == "benchmarks/index.md":
            kept.extend(_benchmark_pages(docs))
            continue
        if target in OPTIONAL and not (docs / target).is_file():
            log.info("nav: %s does not exist yet, left out", target)
            continue
        kept.append(item)
    return kept


def _benchmark_pages(docs: Path) -> list[Any]:
    folder = docs / "benchmarks"
    pages = sorted(folder.glob("*.md")) if folder.is_dir() else []
    pages.sort(key=lambda p: (p.name not in ("index.md", "README.md"), p.name))
    entries = [p.relative_to(docs).as_posix() for p in pages]
    if not entries:
        return []
    return [{"Benchmarks": entries if len(entries) > 1 else entries[0]}]


def on_config(config: Any, **kwargs: Any) -> Any:
    """Drop nav entries of optional pages that are missing."""
    if config.get("nav"):
        config["nav"] = _prune(config["nav"], Path(config["docs_dir"]))
    return config
