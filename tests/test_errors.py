"""Lock the exception tree: the drawing in errors.py must match the classes."""

from __future__ import annotations

import builtins
import re

import objbutler.errors as errors


def _drawn_tree() -> dict[str, tuple[str, str | None]]:
    """Map each drawn class to (drawn parent, drawn builtin base)."""
    doc = errors.__doc__ or ""
    parents: dict[int, str] = {}
    drawn: dict[str, tuple[str, str | None]] = {}
    for line in doc.splitlines():
        match = re.match(r"^(\s*)(?:[│ ]*)(?:├── |└── )?(\w+Error)(?: \((\w+)\))?", line)
        if not match or "Error" not in line:
            continue
        prefix = line[: line.index(match.group(2))]
        depth = len(prefix) // 4
        parents[depth] = match.group(2)
        builtin = match.group(3) if match.group(3) != "Exception" else None
        drawn[match.group(2)] = (parents.get(depth - 1, "Exception"), builtin)
    return drawn


def test_tree_matches_docstring() -> None:
    drawn = _drawn_tree()
    assert set(drawn) == set(errors.__all__)
    for name, (parent, builtin) in drawn.items():
        cls = getattr(errors, name)
        assert issubclass(cls, getattr(errors, parent) if parent != "Exception" else Exception), name
        if builtin:
            assert issubclass(cls, getattr(builtins, builtin)), name


def test_every_error_derives_from_root() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.ObjButlerError)


def test_builtin_compatibility() -> None:
    assert issubclass(errors.NotFoundError, FileNotFoundError)
    assert issubclass(errors.AlreadyExistsError, FileExistsError)
    assert issubclass(errors.NotSupportedError, NotImplementedError)
    assert issubclass(errors.FormatError, ValueError)
