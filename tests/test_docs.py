"""The documentation's Python examples run, in page order, against real servers.

Every ```` ```python ```` block of a page in ``PAGES`` runs in one namespace per page, with the
page's example repository URI swapped for a fresh one on the test server, the AWS (or Swift)
variables pointing at that server, ``HOME`` and the working directory in a temporary folder.
Blocks tagged ``text``, ``bash`` or ``pycon`` are not run.
"""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import pytest
from conftest import Backend

DOCS = Path(__file__).resolve().parent.parent / "docs"
S3_REPO = "s3://objbutler-tutorial/repo"
SWIFT_REPO = "swift://objbutler-tutorial/repo"

#: page -> backend its examples need (None: none)
PAGES = {
    "index.md": None,
    "tutorial.md": "localstack",
    "contexts.md": "localstack",
    "howto/local.md": None,
    "howto/s3.md": "localstack",
    "howto/swift.md": "swift",
    "howto/offline.md": "localstack",
    "howto/ingest.md": "localstack",
    "howto/dask.md": None,
}

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(page: str) -> list[str]:
    """The Python code blocks of a page, in order."""
    return _BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))


def test_every_page_has_examples() -> None:
    for page in PAGES:
        assert python_blocks(page), f"{page} has no python example"


@pytest.mark.servers
@pytest.mark.parametrize("page", list(PAGES))
def test_page_examples_run(page: str, request: pytest.FixtureRequest, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    kind = PAGES[page]
    # Servers first: they install under the real HOME (~/.cache/objbutler/servers).
    backend: Backend | None = request.getfixturevalue(f"{kind}_backend") if kind else None
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("OBJBUTLER_CACHE", raising=False)
    monkeypatch.delenv("OBJBUTLER_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    replacements: dict[str, str] = {}
    if backend is not None:
        if kind == "localstack":
            options = backend.options
            monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["access_key"])
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret_key"])
            monkeypatch.setenv("AWS_DEFAULT_REGION", options["region"])
            replacements[S3_REPO] = backend.new_uri()
        else:
            monkeypatch.setenv("ST_AUTH", backend.options["auth_url"])
            monkeypatch.setenv("ST_USER", backend.options["user"])
            monkeypatch.setenv("ST_KEY", backend.options["key"])
            replacements[SWIFT_REPO] = backend.new_uri()
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page), start=1):
        for old, new in replacements.items():
            block = block.replace(old, new)
        filename = f"docs/{page} (python block {number})"
        linecache.cache[filename] = (len(block), None, block.splitlines(True), filename)  # readable tracebacks
        exec(compile(block, filename, "exec"), namespace)
