"""Removing a repository (``remove_repository``, ``objbutler rm-repo``) and ``Butler.create(exist_ok=True)``.

On a local directory, LocalStack and Swift: everything under the prefix goes, the config last; nothing
outside it (not even a sibling whose name starts the same); a non-repository is refused untouched; an
interrupted removal leaves a recognisable repository that a second run finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Backend

from objbutler import Butler
from objbutler.cli import main
from objbutler.config import CONFIG_KEY
from objbutler.errors import AlreadyExistsError, ConfigError, NotFoundError, StoreError
from objbutler.maintenance import remove_repository
from objbutler.registry import finish_folds
from objbutler.stores import Store, open_store


def _fill(butler: Butler) -> None:
    for visit in range(3):
        butler.put(np.full((16, 16), visit, "float32"), "calexp", {"visit": visit}, run="r")
    butler.put(np.zeros((32, 32), "float32"), "coadd", {"tract": 1}, run="r", format="zarr",
               format_options={"chunks": (16, 16)})
    with butler.activity("measure"):
        butler.put({"n": 3}, "metric", {"visit": 0}, run="m")


def _keys(store: Store, prefix: str = "") -> list[str]:
    return [meta.key for meta in store.list(prefix)]


def _neighbours(backend: Backend, uri: str) -> tuple[Store, list[str]]:
    """Objects right next to the repository: a sibling whose name starts like it, and a file beside it."""
    parent = open_store(backend.base, **backend.options)
    name = uri.rsplit("/", 1)[1]
    outside = [f"{name}2/{CONFIG_KEY}", f"{name}2/data/x.fits", f"{name}.txt"]
    for key in outside:
        parent.put(key, b"not yours")
    return parent, outside


def test_remove_everything_and_nothing_else(backend: Backend) -> None:
    uri = backend.new_uri()
    butler = Butler.create(uri, checkpoint_interval=2, **backend.options)
    _fill(butler)
    assert finish_folds(timeout=60)  # the puts' background folds write checkpoints: count them in
    parent, outside = _neighbours(backend, uri)
    before = _keys(butler.store)
    if butler.config.commit_protocol == "sequenced":  # timestamped checkpoints wait a minute
        assert any(k.startswith("manifest/checkpoints/") for k in before)
    assert any(k.startswith("provenance/") for k in before)

    preview = remove_repository(uri, dry_run=True, **backend.options)
    assert not preview.removed and preview.datasets == 5 and preview.total == len(before)
    assert preview.objects["config"] == 1 and preview.objects["data"] >= 5 and preview.objects["log"] >= 5
    assert "would delete" in preview.summary() and "5 datasets" in preview.summary()
    assert _keys(butler.store) == before                        # a dry run deletes nothing

    report = remove_repository(butler)                          # a Butler works as well as a URI
    assert report.removed and report.total == len(before) and "deleted" in report.summary()
    assert _keys(butler.store) == []
    name = uri.rsplit("/", 1)[1]
    assert sorted(k for k in _keys(parent) if k.startswith(name)) == sorted(outside)
    if backend.name == "local":
        assert not Path(uri).exists()                           # the emptied directory goes too
    with pytest.raises(NotFoundError):
        Butler(uri, **backend.options)
    again = Butler.create(uri, **backend.options)               # the URI is free again
    assert again.query() == []


def test_refuses_what_is_not_a_repository(backend: Backend) -> None:
    uri = backend.new_uri()
    with pytest.raises(NotFoundError, match="not an objbutler repository"):
        remove_repository(uri, **backend.options)
    assert remove_repository(uri, missing_ok=True, **backend.options).total == 0
    store = open_store(uri, **backend.options)
    store.put("data/precious.fits", b"someone else's")
    with pytest.raises(NotFoundError, match=f"no {CONFIG_KEY}"):
        remove_repository(uri, **backend.options)
    store.put(CONFIG_KEY, b'{"format": "something-else"}')
    with pytest.raises(ConfigError, match="not an objbutler repository config"):
        remove_repository(uri, **backend.options)
    assert _keys(store) == ["data/precious.fits", CONFIG_KEY]


class _InterruptedError(Exception):
    pass


class _DiesAfterDeletes:
    """Forwards to a store, and raises after ``budget`` deletes, as a crash or Ctrl-C would."""

    def __init__(self, inner: Store, budget: int) -> None:
        self.inner = inner
        self.budget = budget

    def delete(self, key: str) -> None:
        if self.budget <= 0:
            raise _InterruptedError(key)
        self.budget -= 1
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("budget", [3, 12])
def test_interrupted_removal_is_recognisable_and_finishes(backend: Backend, budget: int) -> None:
    uri = backend.new_uri()
    butler = Butler.create(uri, checkpoint_interval=2, **backend.options)
    _fill(butler)
    with pytest.raises(_InterruptedError):
        remove_repository(uri, store=_DiesAfterDeletes(butler.store, budget), jobs=1)  # type: ignore[arg-type]
    left = _keys(butler.store)
    assert CONFIG_KEY in left and len(left) > 1                  # the config goes last
    if budget == 3:
        assert any(k.startswith("manifest/log/") for k in left)  # data first, registry after
    with pytest.raises(AlreadyExistsError):
        Butler.create(uri, **backend.options)                   # no new repository on top of the old log
    assert remove_repository(uri, **backend.options).removed    # a second run finishes it
    assert _keys(butler.store) == []


def test_stops_before_the_config_while_objects_keep_appearing(tmp_path: Path) -> None:
    uri = str(tmp_path / "busy")
    butler = Butler.create(uri)
    butler.put(np.zeros((4, 4), "float32"), "calexp", {"visit": 1}, run="r")

    class Busy:
        """A writer that adds an object after every delete."""

        def __init__(self, inner: Store) -> None:
            self.inner = inner
            self.n = 0

        def delete(self, key: str) -> None:
            self.inner.delete(key)
            self.n += 1
            self.inner.put(f"data/new-{self.n}.fits", b"x")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    with pytest.raises(StoreError, match="keep appearing"):
        remove_repository(uri, store=Busy(butler.store), jobs=1)  # type: ignore[arg-type]
    assert CONFIG_KEY in _keys(butler.store)


def test_cli_rm_repo(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    _fill(Butler.create(uri))
    runner = CliRunner()
    done = runner.invoke(main, ["rm-repo", uri])
    assert done.exit_code == 1
    assert "refusing without --yes" in done.output and "5 datasets" in done.output and "--yes" in done.output
    assert (tmp_path / "repo" / CONFIG_KEY).is_file()
    done = runner.invoke(main, ["rm-repo", uri, "--yes"])
    assert done.exit_code == 0 and done.output.startswith("deleted ")
    assert not (tmp_path / "repo").exists()
    done = runner.invoke(main, ["rm-repo", uri, "--yes"])
    assert done.exit_code == 3 and "not an objbutler repository" in done.output  # 3: not found
    assert not (tmp_path / "repo").exists()                     # refusing created nothing
    done = runner.invoke(main, ["rm-repo", uri, "--yes", "--missing-ok"])
    assert done.exit_code == 0 and "nothing to remove" in done.output


def test_create_exist_ok(backend: Backend) -> None:
    uri = backend.new_uri()
    first = Butler.create(uri, default_format="zarr", checkpoint_interval=7, **backend.options)
    ref = first.put(np.ones((8, 8), "float32"), "calexp", {"visit": 1}, run="r")
    with pytest.raises(AlreadyExistsError, match="exist_ok=True"):
        Butler.create(uri, **backend.options)
    config = first.store.get(CONFIG_KEY)
    same = Butler.create(uri, exist_ok=True, **backend.options)            # options not given: not checked
    assert same.query() == [ref] and same.config == first.config
    assert Butler.create(uri, exist_ok=True, default_format="zarr", checkpoint_interval=7,
                         **backend.options).config == first.config
    with pytest.raises(AlreadyExistsError, match=r"default_format='zarr' \(asked for 'fits'\)"):
        Butler.create(uri, exist_ok=True, default_format="fits", **backend.options)
    with pytest.raises(AlreadyExistsError, match=r"checkpoint_interval=7 \(asked for 100\)"):
        Butler.create(uri, exist_ok=True, checkpoint_interval=100, **backend.options)
    assert first.store.get(CONFIG_KEY) == config              # never rewritten (Swift has no atomic create)
    fresh = Butler.create(backend.new_uri(), exist_ok=True, **backend.options)
    assert fresh.config.default_format == "fits" and fresh.config.checkpoint_interval == 100
