"""The guides' Python examples (provenance, several repositories, EFD) run, in page order, on local repositories.

They use temporary local directories, so they need no server (``tests/test_docs.py`` runs the
server-backed pages).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_docs import python_blocks


@pytest.mark.parametrize("page", ["provenance.md", "multi-repo.md", "efd.md"])
def test_guide_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python example"
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"docs/{page} (python block {number})", "exec"), namespace)
