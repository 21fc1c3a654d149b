"""DESIGN.md's import table, walked with ``ast`` over nbtasks/*.py, and a lean ``import nbtasks``.

Rules read from the table ("may import (inside nbtasks)"):
- each module imports only the nbtasks modules of its row; ``_errors`` (the exception tree,
  which imports nothing) is allowed everywhere;
- imports under ``if TYPE_CHECKING:`` are annotations only and are not counted;
- the one upward edge: ``_result`` may import ``views`` inside a function (first display);
  ``__init__`` loads ``_magics`` lazily in ``load_ipython_extension``;
- each module of ``views/`` has a row of its own, all the same: the package's, plus the
  package itself (its modules import each other);
- ``_runtime`` is not in the table: it is the App's machinery (executors, timer, canvas) and
  gets the executors' row plus ``executors``. Every module under ``executors/`` (the process
  pool and its child, the Dask executor and its worker side) has the executors' row.
- the ``store`` package has a row per module (``store.writer``, ...): they say which of its
  modules each may use; every other module imports only the package (``from .store import``),
  never one of its modules.
Third-party homes: diskcache only under ``store/``; cloudpickle only in ``_codec``, lazily (and
pickle only there: "no other module imports pickle"); ipywidgets only in ``views/widgets.py``;
IPython/ipykernel only in ``_kernel`` and ``_magics``; dask only under ``executors/dask/``, lazily.
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
_EXECUTORS_ROW = {
    "_attempt",
    "_supervisor",
    "store",
    "_codec",
    "_model",
    "_errors",
    "_text",  # text for the user (usage.oom_hint's memory sizes)
    "executors",
}
_EXECUTORS_ROW |= {"_rich"}  # workers route displays to their tasks before unpickling any
_VIEWS_ROW = {"_model", "_text", "_kernel", "_errors", "views"}
_VIEWS_MODULES = [
    "__init__",
    "snapshot",
    "format",
    "widgets",
    "task",
    "group",
    "dashboard",
    "display",
    "updater",
    "timeline",
    "rich",
]
ROWS: dict[str, set[str]] = {
    "__init__": {"_app", "_context", "_errors", "_model", "_result", "store", "_task", "_canvas"},
    "_errors": set(),
    "_model": {"_errors"},
    "_codec": {"_model", "_errors", "_key"},
    "_key": {"_errors"},
    "_codeid": {"_codec", "_errors"},  # the code identity of a cached task (what its key follows)
    # The store package, each module using only the ones before it.
    "store.files": set(),  # the store's files and lock: no diskcache
    "store.identity": set(),  # process identity (is a pid alive, its start time), per platform
    "store.winacl": set(),  # the owner-only check on Windows (owner SID and ACL)
    "store.disk": {"store.files"},
    "store.opening": {"_model", "store.files", "store.disk", "store.winacl"},
    "store.records": {"_model"},
    "store.queries": {"store.files", "store.disk", "store.opening", "store.records"},
    "store.writer": {"_model", "store.files", "store.disk", "store.records"},
    "store.owners": {
        "_model",
        "store.disk",
        "store.identity",
        "store.queries",
        "store.records",
        "store.writer",
    },
    "store.cleanup": {"store.files", "store.disk", "store.queries", "store.records"},
    "store": {
        "_codec",
        "_model",
        "store.cleanup",
        "store.disk",
        "store.files",  # a value file of parts: written by the writer, read or mapped here
        "store.identity",
        "store.opening",
        "store.owners",
        "store.queries",
        "store.records",
        "store.writer",
    },
    "_context": {"store", "_codec", "_model", "_errors", "_rich"},
    "_rich": {"_model", "_kernel", "_errors"},  # display() and figures of tasks, as bundles
    "_attempt": {"_context", "store", "_codec", "_model", "_errors", "_retry"},
    "_retry": {"_codec", "_model", "_errors"},  # what ctx.retry() asks for (checked, built)
    "_supervisor": set(),  # types only (TYPE_CHECKING): the clock, attempts and the store
    # The worker-side app (executors.process.child_app) implements both seams for real: its
    # handles are the usual ones.
    "executors": _EXECUTORS_ROW | {"_ports", "_result", "_reader"},
    "_ports": set(),  # the seams: Protocols (their types only under TYPE_CHECKING)
    "_runtime": _EXECUTORS_ROW | {"_context"},
    "_options": {"_model", "_errors"},  # option names and their validation
    "_task": {"_canvas", "_options", "_codec", "_codeid", "_model", "_errors"},
    "_canvas": {"_options"},  # Signature, chain, group, chord: described here, submitted by the app
    "_result": {"_ports", "_model", "_errors", "_text", "_outcome"},  # the store: the seam only
    "_outcome": {"_model", "_errors"},  # a finished record's exception or why it has no value
    "_reader": {"_ports", "_result"},  # the Results seam's reading half, over a store
    "_app": {
        "_ports",
        "_options",
        "_errors",
        "_model",
        "_codec",
        "store",
        "_context",
        "_attempt",
        "executors",
        "_task",
        "_canvas",
        "_result",
        "_reader",
        "_runtime",
        "_timeline",
    },
    "_kernel": {"_errors"},
    "_text": {"_model", "_errors"},  # pure text helpers of the front ends
    "_timeline": {"_model", "_text", "_errors"},  # app.timeline(): the SVG chart (pure)
    **{("views" if m == "__init__" else f"views.{m}"): _VIEWS_ROW for m in _VIEWS_MODULES},
    "_magics": {"_app", "_task", "_result", "views", "_kernel", "_text", "_codeid"},
    "_cli": {"_app", "store", "_result", "_model", "_text"},
    "__main__": {"_cli"},  # `python -m nbtasks`
}
LAZY_ALLOWED = {("_result", "views"), ("_timeline", "views"), ("__init__", "_magics")}
NEVER_FROM_APP = {"views", "_kernel", "_magics"}

THIRD_PARTY_HOMES: dict[str, set[str]] = {
    "diskcache": {"store"},
    "cloudpickle": {"_codec"},
    "pickle": {"_codec"},
    "ipywidgets": {"views.widgets"},
    "IPython": {"_kernel", "_magics"},
    "ipykernel": {"_kernel", "_magics"},
    "dask": {"executors.dask"},
    "distributed": {"executors.dask"},
}
#: The Dask executor's package: its modules (executor, worker side, client) may import dask.
DASK_FILES = ("executors.dask.",)
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
    return "executors" if module.split(".")[0] == "executors" else module.removesuffix(".__init__")


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
    """'executors.thread' counts as 'executors'; a module of the store package by its own name
    ('store.writer'); everything else by its first part."""
    parts = [p for p in parts if p]
    if not parts:
        return "__init__"
    if parts[0] == "store" and len(parts) > 1:
        return f"store.{parts[1]}"
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
    assert {
        "_app",
        "store.__init__",
        "_codec",
        "_task",
        "_result",
        "_context",
        "_attempt",
    } <= set(MODULES)


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
    assert ("store.__init__", "_codec", False) in edges
    assert ("store.writer", "store.records", False) in edges
    assert ("_result", "views", True) in edges
    assert ("views.task", "views", False) in edges  # inside its package
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
        if package == "diskcache":
            return _row(module).split(".")[0] == "store"
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
    assert not [m for m in internal if m.startswith("nbtasks.views")]
    assert "nbtasks._magics" not in internal
    assert "nbtasks._kernel" not in internal


# --------------------------------------------------------------------------- cycles


#: Function-level imports that may close a cycle, as DESIGN.md allows: the view loads on a
#: handle's first display (``TaskResult._repr_mimebundle_``, ``GroupResult``'s too), and the
#: magics when IPython loads the extension.
CYCLE_ALLOWED = {("_result", "views"), ("__init__", "_magics")}


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if not imp.internal:
            continue
        src, dst = _row(imp.module), imp.target
        if src == dst or (imp.lazy and (src, dst) in CYCLE_ALLOWED):
            continue
        graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycles() -> None:
    """Imports at any level (function-level ones too), but those under TYPE_CHECKING and the
    lazy view and magics imports: no module reaches itself again."""
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    edges = {(i.module, i.target) for i in ALL_IMPORTS if i.internal and i.lazy}
    assert ("_result", "views") in edges  # the allowed edge is really there


# --------------------------------------------------------------------------- private names

#: Third-party privates that nbtasks reads knowingly (each a documented workaround).
THIRD_PARTY_PRIVATES = {
    "_con",  # diskcache.Cache._con: the SQLite connection (queries diskcache has no API for)
    "_disk",  # diskcache.Cache._disk: how a value is stored in a file
    "_sql",  # diskcache.Cache._sql: its statement runner, under the store's own checks
    "_exit",  # os._exit: a forked worker ends without running the parent's atexit handlers
    "_shell_channel_io_loop",  # ipykernel's subshell manager (ipykernel 7: _kernel.py)
    "_create_subshell",
}


@dataclass(frozen=True)
class Reach:
    module: str
    name: str
    line: int
    text: str


def _defined_names(tree: ast.AST) -> set[str]:
    """The names a module defines itself: functions, classes, assigned names and attributes
    (``self._x = ...``, class attributes, annotations) and ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            names.update(
                c.value
                for c in ast.walk(node.value)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
    return names


def private_reaches(path: Path, module: str | None = None) -> list[Reach]:
    """Every ``x._name`` (x not ``self``/``cls``) whose ``_name`` the module does not define."""
    tree = ast.parse(path.read_text(), str(path))
    module = module or _module_name(path)
    own = _defined_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in own:
            continue
        if name.endswith("_"):
            continue  # a protocol name of IPython's (``_repr_mimebundle_``), not a private
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(Reach(module, name, node.lineno, ast.unparse(node)))
    return found


def test_no_module_touches_another_modules_private_names() -> None:
    bad = [
        f"{r.module}:{r.line} {r.text}"
        for path in SOURCES
        for r in private_reaches(path)
        if r.name not in THIRD_PARTY_PRIVATES
    ]
    assert bad == [], "use a public name (or a seam in _ports) instead"


def test_the_third_party_private_reaches_are_still_there() -> None:
    """Drop an entry of the list once its reach is gone."""
    seen = {(r.module, r.name) for path in SOURCES for r in private_reaches(path)}
    assert THIRD_PARTY_PRIVATES - {name for _, name in seen} == set()


def test_the_private_finder_sees_a_reach(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "class A:\n"
        "    _slot = 0\n"
        "    def f(self, other):\n"
        "        self._own = 1\n"
        "        return other._own, other._slot, other._theirs, self._x, cls_._y\n"
    )
    reaches = private_reaches(tmp_path / "m.py", "m")
    assert [(r.name, r.text) for r in reaches] == [("_theirs", "other._theirs"), ("_y", "cls_._y")]
