"""The documentation, followed as a reader follows it: every page, in the order of the menu, every block.

``test_walkthrough`` runs each page of the ``nav`` in ``mkdocs.yml`` (less the optional pages that do
not exist, as ``docs/hooks.py`` drops them) in one process, one working directory and one ``HOME``,
with LocalStack and a Swift node started by the fixtures and their variables exported, as the pages
tell the reader to (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... and ``ST_AUTH``, ``ST_USER``,
``ST_KEY``). Per block, by its language:

* ``python``: run in the page's namespace (one per page, ``__name__ == "__main__"`` as in a Python
  session);
* ``bash``: run by ``bash -e`` in a subprocess with that environment; ``objbutler`` and ``python3``
  there are this checkout's command line and this interpreter;
* ``sql``: run by DuckDB (``duckdb.sql``) in the working directory;
* ``text``, ``json``, ``pycon`` and no language: shown, not run.

A block runs unless the line before its fence is a marker (an HTML comment, invisible on the site):

* ``<!-- walkthrough: skip (why) -->``: not run; the reason is required. For what cannot run here:
  installing, starting or stopping the servers the fixtures run, building the site.
* ``<!-- walkthrough: save NAME -->``: written to ``NAME`` in the working directory instead of run, as
  the reader saves a script that a later block runs (the Dask page: a script needs its ``__main__``
  guard, and only a real script run shows it).

Each page removes what it made (``objbutler rm-repo``) or uses temporary directories: at the end the
tutorial bucket and container are empty and no repository is left in the working directory or ``HOME``.
A page that starts a process from Python (the service page's ``objbutler serve``) stops it in its last
blocks; should a block fail before that, the walkthrough stops every ``subprocess.Popen`` the page's
namespace still holds running, and a variable a page sets in ``os.environ`` for its shell blocks is
dropped when the test ends.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import linecache
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from objbutler_servers import ServerInfo

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN = {"python", "bash", "sql"}
SHOWN = {"", "text", "json", "pycon"}
BUCKET = "objbutler-tutorial"  # the bucket (and Swift container) the pages use

_FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*walkthrough:\s*(\w+)\s*(.*?)\s*-->\s*\Z", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    number: int  # 1-based, among the page's blocks
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    action: str  # "run", "skip", "save" or "show"
    argument: str = ""  # the skip reason or the file name

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line} ({self.language or 'plain'} block {self.number})"


def nav_pages() -> list[str]:
    """The pages of the site in menu order, as ``docs/hooks.py`` leaves the nav of ``mkdocs.yml``."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[re.search(r"^nav:\s*$", text, re.MULTILINE).end():]  # type: ignore[union-attr]
    pages: list[str] = []
    for target in re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", nav, re.MULTILINE):
        if target == "benchmarks/index.md":
            pages += [entry for item in hooks._benchmark_pages(DOCS) for entry in _flatten(item)]
        elif (DOCS / target).is_file():
            pages.append(target)
        else:
            assert target in hooks.OPTIONAL, f"mkdocs.yml names {target}, which does not exist"
    return pages


def _flatten(item: Any) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, dict):
        return [page for value in item.values() for page in _flatten(value)]
    return [page for value in item for page in _flatten(value)]


def page_blocks(page: str) -> list[Block]:
    """The fenced blocks of a page, in order, with what the walkthrough does with each."""
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = []
    for number, match in enumerate(_FENCE.finditer(text), start=1):
        language = match.group(1)
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        where = f"docs/{page}:{line}"
        assert language in RUN | SHOWN, f"{where}: the walkthrough does not know ```{language} blocks"
        if marker:
            action, argument = marker.group(1), marker.group(2)
            assert action in ("skip", "save"), f"{where}: unknown walkthrough marker {action!r}"
            if action == "skip":
                assert re.fullmatch(r"\(.+\)", argument), f"{where}: a skip marker needs a (reason)"
                argument = argument[1:-1]
            else:
                assert re.fullmatch(r"[\w.-]+", argument), f"{where}: save needs a file name"
        else:
            action, argument = ("run" if language in RUN else "show"), ""
        blocks.append(Block(page, number, line, language, match.group(2), action, argument))
    return blocks


def test_markers_are_well_formed() -> None:
    """Every marker parses, names a reason, and is on a block; the pages the menu names exist."""
    pages = nav_pages()
    assert pages[:2] == ["index.md", "tutorial.md"]
    for page in pages:
        blocks = page_blocks(page)
        text = (DOCS / page).read_text(encoding="utf-8")
        markers = len(re.findall(r"^\s*<!--\s*walkthrough:", text, re.MULTILINE))
        assert markers == sum(b.action in ("skip", "save") for b in blocks), \
            f"docs/{page}: a walkthrough marker that is not right before a code block"


# -- running ------------------------------------------------------------------


@pytest.fixture
def reader_environment(localstack_server: ServerInfo, swift_server: ServerInfo, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """What a reader has after the tutorial's setup: the servers' variables, a home, a working directory."""
    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    for folder in (home, work, bin_dir):
        folder.mkdir()
    # `objbutler` and `python3` in the pages' shell blocks: this checkout and this interpreter.
    (bin_dir / "objbutler").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m objbutler.cli "$@"\n')
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name, value in {**localstack_server.env, **swift_server.env}.items():
        if name.startswith(("AWS_", "ST_")):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", localstack_server.env.get("AWS_DEFAULT_REGION", "us-east-1"))
    monkeypatch.setenv("HOME", str(home))
    for name in ("OBJBUTLER_CACHE", "OBJBUTLER_OFFLINE", "OBJBUTLER_CACHE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)
    environment = dict(os.environ)
    yield work
    os.environ.clear()  # what the pages exported for their shell blocks; monkeypatch then undoes the rest
    os.environ.update(environment)


def _run_python(block: Block, namespace: dict[str, Any]) -> None:
    filename = f"<{block.where}>"
    linecache.cache[filename] = (len(block.text), None, block.text.splitlines(True), filename)  # tracebacks
    exec(compile(block.text, filename, "exec"), namespace)


def _stop_processes(namespace: dict[str, Any]) -> list[str]:
    """Stop the processes a page started from Python and left running; the commands of those it stopped."""
    stopped = []
    for value in namespace.values():
        if isinstance(value, subprocess.Popen) and value.poll() is None:
            value.terminate()
            try:
                value.wait(timeout=30)
            except subprocess.TimeoutExpired:
                value.kill()
                value.wait()
            stopped.append(str(value.args))
    return stopped


def _run_bash(block: Block) -> str:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.where} exited with {done.returncode}:\n{block.text}\n{output}"
    return output


def _run_sql(block: Block) -> None:
    import duckdb

    duckdb.sql(block.text).fetchall()


def _leftovers(work: Path, home: Path) -> list[str]:
    """Repositories (``objbutler.json``) left in the working directory or HOME (the cache aside)."""
    found = []
    for base in (work, home):
        for config in base.rglob("objbutler.json"):
            if home / ".cache" not in config.parents:
                found.append(str(config.parent))
    return found


def _bucket_keys(localstack_server: ServerInfo, swift_server: ServerInfo) -> list[str]:
    from objbutler.stores.s3 import S3Store
    from objbutler.stores.swift import SwiftStore

    s3 = S3Store(BUCKET, create_bucket=True)  # options from the environment, as the pages use
    swift = SwiftStore(BUCKET, create_container=True)
    return [f"s3://{BUCKET}/{m.key}" for m in s3.list()] + [f"swift://{BUCKET}/{m.key}" for m in swift.list()]


@pytest.mark.servers
def test_walkthrough(reader_environment: Path, localstack_server: ServerInfo, swift_server: ServerInfo,
                     capsys: pytest.CaptureFixture[str]) -> None:
    """Every page in menu order, every block as the reader runs it."""
    timings = []
    for page in nav_pages():
        start = time.perf_counter()
        namespace: dict[str, Any] = {"__name__": "__main__"}
        try:
            for block in page_blocks(page):
                if block.action == "save":
                    (reader_environment / block.argument).write_text(block.text, encoding="utf-8")
                elif block.action == "run" and block.language == "python":
                    _run_python(block, namespace)
                elif block.action == "run" and block.language == "bash":
                    _run_bash(block)
                elif block.action == "run" and block.language == "sql":
                    _run_sql(block)
        finally:
            left_running = _stop_processes(namespace)
        assert not left_running, f"docs/{page} left processes running: {left_running}"
        timings.append((time.perf_counter() - start, page))
        with capsys.disabled():
            print(f"\nwalkthrough: {page} {timings[-1][0]:.1f} s", end="")
    assert _leftovers(reader_environment, Path(os.environ["HOME"])) == [], "a page left a repository behind"
    assert _bucket_keys(localstack_server, swift_server) == [], "a page left objects in the tutorial bucket"


# -- the registry page's DuckDB recipe, checked against objbutler's own answer -----------------------------------


@pytest.mark.parametrize("commits", [10, 30, 38, 57])  # at a checkpoint, three kept, a tail, older ones pruned
def test_registry_sql_recipe_counts_every_dataset_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       commits: int) -> None:
    duckdb = pytest.importorskip("duckdb")
    import numpy as np

    from objbutler import Butler

    recipe = next(b.text for b in page_blocks("registry.md") if b.language == "sql" and "WITH newest" in b.text)
    monkeypatch.chdir(tmp_path)
    repo = Butler.create("registry-example", checkpoint_interval=10, commit_protocol="sequenced")
    for n in range(commits):  # several types, formats and runs; some with provenance
        if n % 7 == 3:
            repo.put(np.zeros((4, 4), "float32"), "calexp", {"visit": n, "detector": 1}, run=f"run{n % 3}",
                     format="zarr", inputs=repo.query()[:1])
        else:
            repo.put({"n": n}, "metric", {"visit": n}, run=f"run{n % 3}")
    expected: dict[str, int] = {}
    for ref in repo.query():
        expected[ref.run] = expected.get(ref.run, 0) + 1
    assert len(list((tmp_path / "registry-example/manifest/checkpoints").iterdir())) == min(3, commits // 10)
    assert dict(duckdb.sql(recipe).fetchall()) == expected


def _claimed_recipe() -> str:
    return next(b.text for b in page_blocks("registry.md") if b.language == "sql" and "[0-9][0-9][0-9]" in b.text)


def _log_alone(recipe: str) -> str:
    """The recipe's ``tail`` without its ``WHERE``, counted per run: what the page says to run with no checkpoint."""
    tail = re.search(r"^tail AS \(.*?\n(.*?)^\s+WHERE ", recipe, re.MULTILINE | re.DOTALL)
    assert tail is not None, "the claimed recipe has no `tail AS (... WHERE` part"
    return f"SELECT run, count(*) FROM ({tail.group(1)}) GROUP BY run"


@pytest.mark.parametrize(("commits", "interval", "finish", "grace"), [
    (9, 20, "", None),               # no fold yet (one needs half an interval of commits): the empty checkpoint
    (12, 4, "checkpoint", None),     # exactly at a checkpoint: no tail
    (48, 4, "tail", None),           # several checkpoints (older ones pruned), a tail, folded commits still listed
    (48, 4, "tail", 0.0),            # the same with compaction deleting folded commits at once
])
def test_claimed_registry_sql_recipe_counts_every_dataset_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               commits: int, interval: int, finish: str,
                                                               grace: float | None) -> None:
    """The page's recipe for a claimed repository gives objbutler's own count, per run, whatever the log holds."""
    duckdb = pytest.importorskip("duckdb")
    import numpy as np

    from objbutler import Butler
    from objbutler.registry import finish_folds

    recipe = _claimed_recipe()
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "claimed-example"
    Butler.create("claimed-example", checkpoint_interval=interval, commit_protocol="claimed", log_shards=4)
    writers = [Butler("claimed-example") for _ in range(3)]  # random shards, phases: commits spread over shards
    if grace is not None:
        for writer in writers:
            writer.registry.compaction_grace = grace
    if finish == "tail":  # a last writer that never checks: the commits after the newest checkpoint stay a tail
        writers.append(Butler("claimed-example"))
        writers[-1].registry.checkpoint_interval = 10**9
    for n in range(commits + (5 if finish == "tail" else 0)):  # several types, formats and runs; some provenance
        if n == commits:
            assert finish_folds(timeout=60)  # no fold still in flight reaches the tail's commits
        repo = writers[-1] if n >= commits else writers[n % 3]
        if n % 7 == 3:
            repo.put(np.zeros((4, 4), "float32"), "calexp", {"visit": n, "detector": 1}, run=f"run{n % 3}",
                     format="zarr", inputs=repo.query()[:1])
        else:
            repo.put({"n": n}, "metric", {"visit": n}, run=f"run{n % 3}")
    if finish == "checkpoint":
        writers[0].registry.write_checkpoint()
    expected: dict[str, int] = {}
    for ref in Butler("claimed-example").query():
        expected[ref.run] = expected.get(ref.run, 0) + 1
    assert sum(expected.values()) == commits + (5 if finish == "tail" else 0)

    # The case is the one named: what the checkpoints, the tail and compaction left in the bucket.
    assert finish_folds(timeout=60)  # background folds: the bucket stops changing
    checkpoints = sorted((root / "manifest/checkpoints").glob("*.parquet"))
    listed = [(int(p.parent.name), int(p.stem)) for p in (root / "manifest/log").glob("[0-9][0-9][0-9]/*.json")]
    if commits < interval // 2:  # no fold yet: the recipe finds the empty checkpoint written at create
        assert [p.name for p in checkpoints] == [f"{0:020d}.parquet"]
        assert dict(duckdb.sql(recipe).fetchall()) == expected
        assert dict(duckdb.sql(_log_alone(recipe)).fetchall()) == expected
        return
    import pyarrow.parquet as pq

    position = json.loads(pq.read_schema(checkpoints[-1]).metadata[b"objbutler"])["position"]
    through = [int(n) for n in position.removeprefix("shards:").split(",")]
    tail = [seq for shard, seq in listed if seq > through[shard]]
    folded_listed = len(listed) - len(tail)
    if finish == "checkpoint":
        assert tail == [] and folded_listed == commits
    else:
        assert len(checkpoints) >= 2 and len(tail) >= 5
        assert sum(1 for n in through if n) > 1  # commits in several shards: the vector is indexed by shard
        markers = {int(p.stem) for p in (root / "manifest/log/~").glob("*.json")}
        assert markers <= {int(p.stem) for p in checkpoints}  # every live marker's checkpoint is there
        if grace is None:
            assert folded_listed == sum(through)  # nothing deleted within the grace period ...
            assert {int(p.stem) for p in checkpoints} == markers | {0}  # ... nor pruned: several to choose from
        else:
            assert 0 < len(listed) < sum(expected.values())  # folded commits deleted (not all: the newest fold)
            assert folded_listed > 0  # ... and some still listed, that the recipe must not count twice
    assert dict(duckdb.sql(recipe).fetchall()) == expected
