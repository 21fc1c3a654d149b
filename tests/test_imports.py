"""DESIGN.md's import table, walked with ``ast`` over nbtasks/*.py, and a lean ``import nbtasks``.

Rules read from the table ("may import (inside nbtasks)"):
- each module imports only the nbtasks modules of its row; ``_errors`` (the exception tree,
  which imports nothing) is allowed everywhere;
- imports under ``if TYPE_CHECKING:`` are annotations only and are not counted;
- the one upward edge: ``_result`` may import ``_view`` inside a function (first display);
  ``__init__`` loads ``_magics`` lazily in ``load_ipython_extension``;
- ``_runtime`` is not in the table: it is the App's machinery (executors, timer, canvas) and
  gets the executors' row plus ``executors``; ``_worker`` (the process child) is part of
  ``executors/``, as the table says.
Third-party homes: diskcache only in ``_store``; cloudpickle only in ``_codec``, lazily (and
pickle only there: "no other module imports pickle"); ipywidgets only in ``_view``;
IPython/ipykernel only in ``_kernel`` and ``_magics``; dask only in ``executors/dask.py``, lazily.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, run_python

PACKAGE = REPO / "nbtasks"

_LOW = {"_errors"}
_EXECUTORS_ROW = {"_attempt", "_store", "_codec", "_model", "_errors", "executors", "_worker"}
ROWS: dict[str, set[str]] = {
    "__init__": {"_app", "_context", "_errors", "_model", "_result", "_store", "_task"},
    "_errors": set(),
    "_model": {"_errors"},
    "_codec": {"_model", "_errors", "_key"},
    "_key": {"_errors"},
    "_store": {"_codec", "_model", "_errors", "_storefiles"},
    "_storefiles": {"_errors"},  # the store's files and lock: no diskcache
    "_context": {"_store", "_codec", "_model", "_errors"},
    "_attempt": {"_context", "_store", "_codec", "_model", "_errors"},
    "executors": _EXECUTORS_ROW,
    # The worker-side app implements both seams for real: its handles are the usual ones.
    "_worker": _EXECUTORS_ROW | {"_ports", "_result"},
    "_ports": set(),  # the seams: Protocols (their types only under TYPE_CHECKING)
    "_runtime": _EXECUTORS_ROW | {"_context"},
    "_task": {"_codec", "_model", "_errors"},
    "_result": {"_ports", "_store", "_codec", "_model", "_errors"},
    "_app": {
        "_ports",
        "_errors",
        "_model",
        "_codec",
        "_store",
        "_context",
        "_attempt",
        "executors",
        "_task",
        "_result",
        "_runtime",
    },
    "_kernel": {"_errors"},
    "_view": {"_result", "_store", "_model", "_kernel", "_errors"},
    "_magics": {"_app", "_task", "_result", "_view", "_kernel"},
    "_cli": {"_app", "_store", "_result", "_model"},
    "__main__": {"_cli"},  # `python -m nbtasks`
}
LAZY_ALLOWED = {("_result", "_view"), ("__init__", "_magics")}
NEVER_FROM_APP = {"_view", "_kernel", "_magics"}

THIRD_PARTY_HOMES: dict[str, set[str]] = {
    "diskcache": {"_store"},
    "cloudpickle": {"_codec"},
    "pickle": {"_codec"},
    "ipywidgets": {"_view"},
    "IPython": {"_kernel", "_magics"},
    "ipykernel": {"_kernel", "_magics"},
    "dask": {"executors.dask"},
    "distributed": {"executors.dask"},
}
#: The Dask executor may be split over several files of executors/ (e.g. a worker-side helper).
DASK_FILES = ("executors.dask", "executors._dask")
MUST_BE_LAZY = {"cloudpickle", "dask", "distributed"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "_task" or "executors.thread"
    target: str  # an nbtasks module ("_model", "executors") or a top-level package
    internal: bool
    lazy: bool  # inside a function
    line: int


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _row(module: str) -> str:
    return "executors" if module.split(".")[0] == "executors" else module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The nbtasks modules a relative (or absolute nbtasks) ``from`` import names."""
    parts = module.split(".")
    package = parts[:-1]  # the importing module's package, relative to nbtasks
    if parts[-1] == "__init__":
        package = parts[:-1]
    if node.level:
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    elif node.module and node.module.split(".")[0] == "nbtasks":
        base = []
        node = ast.ImportFrom(
            module=".".join(node.module.split(".")[1:]) or None, names=node.names, level=1
        )
    else:
        return []
    if node.module:
        target = [*base, *node.module.split(".")]
        return [_top(target)]
    return [_top([*base, alias.name]) for alias in node.names]


def _top(parts: list[str]) -> str:
    """'executors.thread' counts as 'executors'; everything else by its first part."""
    parts = [p for p in parts if p]
    if not parts:
        return "__init__"
    return parts[0]


def collect(path: Path) -> list[Import]:
    module = _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    top = alias.name.split(".")[0]
                    if top == "nbtasks":
                        rest = alias.name.split(".")[1:]
                        found.append(Import(module, _top(rest), True, lazy, child.lineno))
                    else:
                        found.append(Import(module, top, False, lazy, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level or (child.module or "").split(".")[0] == "nbtasks":
                    for target in _resolve(module, child):
                        found.append(Import(module, target, True, lazy, child.lineno))
                elif child.module and child.module != "__future__":
                    found.append(
                        Import(module, child.module.split(".")[0], False, lazy, child.lineno)
                    )
            visit(child, lazy)

    visit(tree, False)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))
ALL_IMPORTS = [imp for path in SOURCES for imp in collect(path)]
MODULES = sorted({_module_name(p) for p in SOURCES})


def _violations(module: str) -> list[str]:
    row = ROWS[_row(module)] | _LOW
    out = []
    for imp in ALL_IMPORTS:
        if imp.module != module or not imp.internal:
            continue
        target = imp.target
        if target == _row(module) or (target == "executors" and _row(module) == "executors"):
            continue  # inside its own package
        if target in row:
            continue
        if imp.lazy and (_row(module), target) in LAZY_ALLOWED:
            continue
        out.append(f"{module}:{imp.line} imports {target}{' (lazily)' if imp.lazy else ''}")
    return out


# Deviations from DESIGN's table found by this test (to fix in nbtasks, then drop the mark).
KNOWN: dict[str, str] = {}  # modules that break their row, with the reason (none now)


def _params() -> list[object]:
    out: list[object] = []
    for m in MODULES:
        marks = [pytest.mark.xfail(reason=KNOWN[m], strict=True)] if m in KNOWN else []
        out.append(pytest.param(m, marks=marks, id=m))
    return out


def test_every_module_has_a_row() -> None:
    missing = [m for m in MODULES if _row(m) not in ROWS]
    assert missing == [], f"add these modules to DESIGN.md's table and to ROWS: {missing}"
    assert {"_app", "_store", "_codec", "_task", "_result", "_context", "_attempt"} <= set(MODULES)


@pytest.mark.parametrize("module", _params())
def test_module_imports_only_what_its_row_allows(module: str) -> None:
    assert _violations(module) == []


def test_app_never_imports_the_notebook_modules() -> None:
    bad = [
        i for i in ALL_IMPORTS if i.module == "_app" and i.internal and i.target in NEVER_FROM_APP
    ]
    assert bad == []


def test_the_walker_sees_relative_lazy_and_type_checking_imports() -> None:
    """The walker itself: known edges of the current code are found, typed ones skipped."""
    edges = {(i.module, i.target, i.lazy) for i in ALL_IMPORTS if i.internal}
    assert ("_store", "_codec", False) in edges
    assert ("_result", "_view", True) in edges
    assert ("executors.thread", "_attempt", False) in edges
    # `if TYPE_CHECKING: from ._app import App` in _result is not an import edge at run time.
    assert ("_result", "_app", False) not in edges


def _third_party_params() -> list[object]:
    out: list[object] = []
    for pkg in THIRD_PARTY_HOMES:
        out.append(pytest.param(pkg, id=pkg))
    return out


@pytest.mark.parametrize("package", _third_party_params())
def test_third_party_package_has_one_home(package: str) -> None:
    homes = THIRD_PARTY_HOMES[package]

    def at_home(module: str) -> bool:
        if package in ("dask", "distributed"):
            return module.startswith(DASK_FILES)
        return module in homes

    users = sorted(
        f"{i.module}:{i.line}"
        for i in ALL_IMPORTS
        if not i.internal and i.target == package and not at_home(i.module)
    )
    assert users == [], f"{package} may be imported only in {sorted(homes)}"
    if package in MUST_BE_LAZY:
        eager = [f"{i.module}:{i.line}" for i in ALL_IMPORTS if i.target == package and not i.lazy]
        assert eager == [], f"{package} must be imported lazily (inside a function)"


def test_import_nbtasks_is_lean() -> None:
    """`import nbtasks` (and running a thread task) loads none of the heavy packages."""
    heavy = ["ipywidgets", "IPython", "ipykernel", "dask", "distributed", "cloudpickle"]
    proc = run_python(
        f"""
        import json, sys, tempfile
        import nbtasks
        after_import = [m for m in {heavy!r} if m in sys.modules]
        with nbtasks.App(store=tempfile.mkdtemp() + "/s") as app:
            @app.task
            def add(x, y):
                return x + y
            r = add.delay(1, 2)
            assert r.get(10) == 3
            repr(r)
        after_task = [m for m in {heavy!r} if m in sys.modules]
        internal = sorted(m for m in sys.modules if m.startswith("nbtasks."))
        print(json.dumps([after_import, after_task, internal]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    after_import, after_task, internal = json.loads(proc.stdout)
    assert after_import == []
    assert after_task == []
    assert "nbtasks._view" not in internal and "nbtasks._magics" not in internal
    assert "nbtasks._kernel" not in internal
