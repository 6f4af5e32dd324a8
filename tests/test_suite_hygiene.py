"""The suite's own hygiene: no wall-clock assertions, no assertions that cannot fail (issue 18).

Every ``tests/*.py`` is parsed with :mod:`ast` (nothing is imported) and searched for:

* **timing assertions**: an ``assert`` comparing a clock difference (``time.monotonic() - t0``, or a
  name assigned from one), or a name such as ``elapsed``/``seconds`` compared with ``<``, ``>``...
  On a machine shared with other jobs a wall-clock bound fails for reasons that are not bugs, and
  a generous one proves little: count requests, bytes, attempts or threads instead;
* **assertions that cannot fail**: ``assert`` of a constant or of a non-empty tuple (``assert (x,
  "message")`` is always true), ``x == x``, ``len(...) >= 0``, ``... is not None`` on what a
  function that never returns None returned (``Butler.get``, ``put``, ``find``, ``get_cutouts``, a
  store's ``get``, ...), ``pytest.raises(Exception)``/``(BaseException)`` where a narrow class is
  meant, and a ``try`` around an ``assert`` whose handler catches ``AssertionError`` (or anything
  broader) without raising again.

A finding names its file, line and function. :data:`ALLOWED` lists the few deliberate exceptions,
each with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CLOCKS = {"time", "perf_counter", "monotonic", "monotonic_ns", "perf_counter_ns", "time_ns"}
TIME_NAMES = {"elapsed", "seconds", "duration", "took", "wall", "wall_time", "runtime"}
# Functions and methods that never return None: asserting their result ``is not None`` tests nothing.
NEVER_NONE = {"get_cutouts", "get_cutouts_many", "get_many", "get_ranges", "provenance", "descendants", "put_many",
              "find_images", "cutouts_at", "open_store", "Butler"}
# Method names that never return None on a Butler or a store (``dict.get`` may: only these receivers count).
NEVER_NONE_METHODS = {"get", "put", "find", "query", "head", "create"}
REPOSITORY_RECEIVERS = ("butler", "store", "repo", "offline", "online", "source", "reader", "writer")
BROAD = {"Exception", "BaseException"}

#: (file, function) -> why the finding is deliberate.
ALLOWED: dict[tuple[str, str], str] = {
    ("test_sky.py", "test_proxy_adds_latency"): (
        "the benchmark proxy's job is to add latency: a lower bound on an injected sleep (a loaded machine "
        "only makes it longer, so it cannot fail spuriously)"),
    ("test_bench.py", "test_proxy_caps_bandwidth_per_connection"): (
        "a bandwidth cap is a lower bound on transfer time (N bytes at C bytes/s take at least N/C): a loaded "
        "machine only makes it longer, so it cannot fail spuriously; the pacing schedule itself is tested "
        "with a fake clock in test_pacer_schedule_spends_n_over_rate_seconds"),
}


def _is_clock_call(node: ast.AST) -> bool:
    """``time.monotonic()``, ``perf_counter()``, ..."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else "time"
    return name in CLOCKS and owner == "time"


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _has_clock(node: ast.AST, clock_vars: set[str]) -> bool:
    return any(_is_clock_call(n) for n in ast.walk(node)) or bool(_names(node) & clock_vars)


def _clock_difference(node: ast.AST, clock_vars: set[str]) -> bool:
    """A subtraction involving a clock reading or a name holding one."""
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and _has_clock(n, clock_vars)
               for n in ast.walk(node))


def _assigned(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(name, value) of every plain assignment in a function body."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Assign):
            for target in sub.targets:
                if isinstance(target, ast.Name):
                    yield target.id, sub.value
        elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name) and sub.value is not None:
            yield sub.target.id, sub.value


def _never_none_call(node: ast.AST) -> bool:
    """A call of a function that never returns None (a Butler's or store's ``get``, ``get_cutouts``, ...)."""
    name = _called_name(node)
    if name in NEVER_NONE:
        return True
    if name not in NEVER_NONE_METHODS or not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    receiver = node.func.value
    text = receiver.attr if isinstance(receiver, ast.Attribute) else receiver.id if isinstance(receiver, ast.Name) \
        else ""
    return any(word in text.lower() for word in REPOSITORY_RECEIVERS)


def _called_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return None


def _findings_in_function(func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[int, str]]:
    assigned = list(_assigned(func))
    clock_vars = {name for name, value in assigned if _is_clock_call(value)}
    elapsed_vars = {name for name, value in assigned if _clock_difference(value, clock_vars)}
    never_none_vars = {name for name, value in assigned if _never_none_call(value)}
    for node in ast.walk(func):
        if isinstance(node, ast.Assert):
            yield from _assert_findings(node, clock_vars, elapsed_vars, never_none_vars)
        elif isinstance(node, ast.Call) and _called_name(node) == "raises" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id in BROAD:
                yield node.lineno, f"pytest.raises({first.id}): name the narrow class meant"
        elif isinstance(node, ast.Try):
            yield from _swallowing_try(node)


def _assert_findings(node: ast.Assert, clock_vars: set[str], elapsed_vars: set[str],
                     never_none_vars: set[str]) -> Iterator[tuple[int, str]]:
    test = node.test
    if isinstance(test, ast.Constant) and test.value:
        yield node.lineno, f"assert {test.value!r} cannot fail"
    if isinstance(test, ast.Tuple) and test.elts:
        yield node.lineno, "assert of a non-empty tuple is always true (a misplaced message?)"
    for compare in (n for n in ast.walk(test) if isinstance(n, ast.Compare)):
        operands = [compare.left, *compare.comparators]
        ordering = any(isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE) for op in compare.ops)
        if ordering and any(_clock_difference(o, clock_vars) or _names(o) & elapsed_vars for o in operands):
            yield node.lineno, "wall-clock assertion: count requests, bytes, attempts or threads instead"
        elif ordering and any(isinstance(o, ast.Name) and o.id in TIME_NAMES for o in operands):
            yield node.lineno, "assertion on a duration: count requests, bytes, attempts or threads instead"
        if len(operands) == 2 and isinstance(compare.ops[0], ast.Eq | ast.Is | ast.LtE | ast.GtE) and \
                ast.dump(operands[0]) == ast.dump(operands[1]) and not isinstance(operands[0], ast.Constant) and \
                not any(isinstance(n, ast.Call) for n in ast.walk(operands[0])):  # f() == f(): reproducibility
            yield node.lineno, "a comparison of a value with itself cannot fail"
        if (len(operands) == 2 and isinstance(compare.ops[0], ast.GtE) and _called_name(operands[0]) == "len"
                and isinstance(operands[1], ast.Constant) and operands[1].value == 0):
            yield node.lineno, "len(...) >= 0 cannot fail"
        if len(operands) == 2 and isinstance(compare.ops[0], ast.IsNot) and \
                isinstance(operands[1], ast.Constant) and operands[1].value is None:
            subject = operands[0]
            if _never_none_call(subject) or (isinstance(subject, ast.Name) and
                                                       subject.id in never_none_vars):
                yield node.lineno, "`is not None` on what a never-None function returned cannot fail"


def _swallowing_try(node: ast.Try) -> Iterator[tuple[int, str]]:
    if not any(isinstance(n, ast.Assert) for stmt in node.body for n in ast.walk(stmt)):
        return
    for handler in node.handlers:
        caught = handler.type
        names = ({caught.id} if isinstance(caught, ast.Name) else
                 {e.id for e in caught.elts if isinstance(e, ast.Name)} if isinstance(caught, ast.Tuple) else set())
        broad = caught is None or bool(names & (BROAD | {"AssertionError"}))
        reraises = any(isinstance(n, ast.Raise) for stmt in handler.body for n in ast.walk(stmt))
        if broad and not reraises:
            yield handler.lineno, "an except that catches AssertionError swallows the assertions of its try"


def findings(path: Path) -> list[str]:
    """Every finding in one test module, as ``file:line (function): what``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        if (path.name, func.name) in ALLOWED:
            continue
        for line, what in _findings_in_function(func):
            out.append(f"{path.name}:{line} ({func.name}): {what}")
    return sorted(set(out))


MODULES = sorted(TESTS.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_no_wall_clock_or_unfailable_assertions(path: Path) -> None:
    found = findings(path)
    assert not found, "\n".join(found)


# -- the scanner itself ----------------------------------------------------------------------------

BAD = '''
import time
import pytest

def test_a(butler):
    started = time.monotonic()
    butler.get(ref)
    assert time.monotonic() - started < 5

def test_b(butler):
    t0 = time.perf_counter()
    elapsed = time.perf_counter() - t0
    assert elapsed <= 1.0

def test_c(butler, seconds):
    assert seconds < 5

def test_d(butler):
    assert True
    assert (butler.uri, "the uri")
    assert butler.get(ref) is not None
    stamps = butler.get_cutouts(ref, boxes)
    assert stamps is not None
    assert len(stamps) >= 0
    assert stamps == stamps

def test_e(butler):
    with pytest.raises(Exception):
        butler.get(ref)
    try:
        assert butler.query() == []
    except AssertionError:
        pass
'''

GOOD = '''
import time
import pytest

def test_a(butler, proxy):
    started = time.monotonic()
    butler.get(ref)
    print(f"took {time.monotonic() - started:.1f} s")
    assert proxy.requests <= 3
    assert butler.get_wcs(ref) is not None
    assert config.get("k") is not None
    held = view.get("k")
    assert held is not None
    assert run(7) == run(7)
    with pytest.raises(NotFoundError):
        butler.get(ref)
    try:
        assert butler.query() == []
    except AssertionError:
        raise
'''


def test_the_scanner_finds_each_kind(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text(BAD)
    (tmp_path / "test_good.py").write_text(GOOD)
    found = findings(tmp_path / "test_bad.py")
    text = "\n".join(found)
    assert sum("wall-clock" in f for f in found) == 2, text
    assert sum("duration" in f for f in found) == 1, text
    for what in ("assert True cannot fail", "non-empty tuple", "`is not None`", "len(...) >= 0",
                 "with itself", "pytest.raises(Exception)", "swallows"):
        assert what in text, what
    assert sum("`is not None`" in f for f in found) == 2, text
    assert findings(tmp_path / "test_good.py") == []


def test_every_allowance_names_a_function_that_exists() -> None:
    for (file, function), reason in ALLOWED.items():
        tree = ast.parse((TESTS / file).read_text(encoding="utf-8"))
        assert function in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, (file, function)
        assert reason
