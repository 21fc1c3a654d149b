"""The code identity of a cached task (SPEC §6, issue 16): what ``Task.code_hash`` follows.

Functions are made the way a notebook makes them: each cell's source is ``exec``-ed into one
dict acting as ``__main__``'s globals, under a file name of its own that is registered in
``linecache`` (what ipykernel does, so ``inspect.getsource`` finds cell code).
"""

from __future__ import annotations

import builtins
import importlib.util
import itertools
import linecache
import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import nbtasks
from nbtasks import _codec, _codeid
from nbtasks._codeid import CodeIdentity, code_identity, is_user_module
from nbtasks._magics import cell_reads

_cell_numbers = itertools.count(1)


class Notebook:
    """A ``__main__`` namespace that runs cells: each under a new fake file name, as a kernel
    names cells (a temp file per cell: never part of the identity)."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.files: list[str] = []

    def run(self, source: str) -> None:
        source = textwrap.dedent(source)
        filename = f"/tmp/ipykernel_0/cell-{next(_cell_numbers)}.py"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        self.files.append(filename)
        exec(compile(source, filename, "exec"), self.ns)

    def __getitem__(self, name: str) -> Any:
        return self.ns[name]

    def identity(self, name: str) -> str:
        return code_identity(self.ns[name])

    def keep(self, name: str) -> tuple[CodeIdentity, str]:
        """A ``CodeIdentity`` of ``name`` (as a Task keeps one) and its identity now."""
        kept = CodeIdentity(self.ns[name])
        return kept, kept.current()


@pytest.fixture
def nb() -> Iterator[Notebook]:
    notebook = Notebook()
    yield notebook
    for filename in notebook.files:
        linecache.cache.pop(filename, None)


HELPER_1 = "def helper(x):\n    return x + 1\n"
HELPER_100 = "def helper(x):\n    return x + 100\n"
TASK = "def f(x):\n    return helper(x)\n"


def test_a_redefined_helper_changes_the_identity_and_the_first_one_comes_back(
    nb: Notebook,
) -> None:
    nb.run(HELPER_1)
    nb.run(TASK)
    kept, first = nb.keep("f")
    assert first == nb.identity("f")  # the kept identity is the one computed afresh
    nb.run(HELPER_100)
    second = kept.current()
    assert second != first and second == nb.identity("f")
    nb.run(HELPER_1)  # another cell, another file, another line: the same content
    assert kept.current() == first


def test_nothing_changed_keeps_the_walk(nb: Notebook) -> None:
    nb.run(HELPER_1)
    nb.run(TASK)
    kept = CodeIdentity(nb["f"])
    kept.current()
    state = kept._state
    kept.current()
    assert kept._state is state  # checked, not computed again


def test_the_same_cells_in_another_notebook_give_the_same_identity(nb: Notebook) -> None:
    other = Notebook()
    for notebook in (nb, other):
        notebook.run("C = [1, 2]\n" + HELPER_1)
        notebook.run("\n\n" + TASK.replace("helper(x)", "helper(x) + C[0]") + "\n\n")
    assert nb.identity("f") == other.identity("f")
    assert nb["f"] is not other["f"]


def test_a_constant_the_task_reads(nb: Notebook) -> None:
    nb.run("SCALE = 3\ndef f(x):\n    return x * SCALE\n")
    kept, first = nb.keep("f")
    nb.run("SCALE = 4")
    assert kept.current() != first
    nb.run("SCALE = 3")
    assert kept.current() == first


def test_a_small_list_edited_in_place_is_seen(nb: Notebook) -> None:
    nb.run("WEIGHTS = [1, 2, 3]\ndef f(x):\n    return sum(w * x for w in WEIGHTS)\n")
    kept, first = nb.keep("f")
    nb["WEIGHTS"].append(4)
    assert kept.current() != first
    nb["WEIGHTS"].pop()
    assert kept.current() == first


def test_a_container_the_task_writes_into_is_its_output(nb: Notebook) -> None:
    nb.run("LOG = []\nSEEN = {}\ndef f(x):\n    LOG.append(x)\n    SEEN[x] = True\n    return x\n")
    kept, first = nb.keep("f")
    nb["f"](1)
    assert nb["LOG"] == [1] and kept.current() == first  # its own writes: no new identity
    nb.run("LOG = []")
    assert kept.current() == first  # rebound: checked again, still a list by type


def test_a_closure_variable(nb: Notebook) -> None:
    nb.run(
        """
        def make():
            k = 1
            def f(x):
                return x + k
            def set_k(value):
                nonlocal k
                k = value
            return f, set_k
        """
    )
    f, set_k = nb["make"]()
    kept = CodeIdentity(f)
    first = kept.current()
    set_k(2)
    assert kept.current() != first
    set_k(1)
    assert kept.current() == first
    other_f, _ = nb["make"]()
    assert code_identity(other_f) == first


def test_a_default_argument(nb: Notebook) -> None:
    nb.run("LIMIT = 10\ndef f(x, limit=LIMIT):\n    return min(x, limit)\n")
    kept, first = nb.keep("f")
    nb["f"].__defaults__ = (11,)
    assert kept.current() != first
    nb["f"].__defaults__ = (10,)
    assert kept.current() == first
    nb.run("LIMIT = 12\ndef f(x, limit=LIMIT):\n    return min(x, limit)\n")
    assert nb.identity("f") != first  # the same source, another default value


def test_a_class_the_task_uses(nb: Notebook) -> None:
    model_2 = "class Model:\n    factor = 2\n    def predict(self, x):\n        return x * 2\n"
    nb.run(model_2)
    nb.run("def f(x):\n    return Model().predict(x)\n")
    kept, first = nb.keep("f")
    nb.run(model_2.replace("return x * 2", "return x * 3"))  # a method's body
    assert kept.current() != first
    nb.run(model_2)
    assert kept.current() == first
    nb.run("def predict(self, x):\n    return -x\n")
    nb["Model"].predict = nb["predict"]  # a method replaced on the class itself
    assert kept.current() != first


def test_what_a_method_reads_counts(nb: Notebook) -> None:
    nb.run("OFFSET = 1\nclass Model:\n    def predict(self, x):\n        return x + OFFSET\n")
    nb.run("def f(x):\n    return Model().predict(x)\n")
    kept, first = nb.keep("f")
    nb.run("OFFSET = 2")
    assert kept.current() != first


def test_mutually_recursive_helpers_terminate(nb: Notebook) -> None:
    nb.run(
        """
        def is_even(n):
            return True if n == 0 else is_odd(n - 1)
        def is_odd(n):
            return False if n == 0 else is_even(n - 1)
        def f(n):
            return is_even(n)
        """
    )
    kept, first = nb.keep("f")
    assert first == nb.identity("f")
    nb.run("def is_odd(n):\n    return n % 2 == 1\n")
    assert kept.current() != first
    assert code_identity(nb["is_even"]) != code_identity(nb["is_odd"])


def test_a_recursive_value_terminates(nb: Notebook) -> None:
    nb.run("LOOP = [1]\nLOOP.append(LOOP)\ndef f():\n    return len(LOOP)\n")
    assert nb.identity("f") == nb.identity("f")


def test_stdlib_and_installed_modules_count_by_name_and_version(nb: Notebook) -> None:
    cell = "import json, diskcache\ndef f(x):\n    return json.dumps(x), diskcache.Cache\n"
    nb.run(cell)
    kept, first = nb.keep("f")
    walk = kept._state[1]  # type: ignore[index]
    # Library modules are not walked: no check reaches into json's or diskcache's globals.
    assert all(m is nb.ns for m, _, _ in walk.bound)
    assert kept.current() == first
    other = Notebook()
    other.run(cell)
    assert other.identity("f") == first
    assert _codeid._library_name("diskcache") == f"diskcache@{metadata.version('diskcache')}"
    assert _codeid._library_name("json") == "json"  # the standard library: no version
    nb.run("import pickle as json")  # another module under the name read
    assert kept.current() != first


def load_module(path: Path, text: str, register: bool = True) -> ModuleType:
    """A module written to ``path`` and imported from there (in ``sys.modules`` if
    ``register``: the caller removes it)."""
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[ModuleType]:
    """``my_helpers``: a module of the user's, from a file outside the installed packages."""
    yield load_module(tmp_path / "my_helpers.py", HELPER_1)
    del sys.modules["my_helpers"]


def test_where_code_lives(user_module: ModuleType) -> None:
    assert is_user_module("my_helpers")
    assert is_user_module("__main__")
    assert not is_user_module("json")
    assert not is_user_module("diskcache")
    assert not is_user_module("nbtasks._app")  # the library itself


def test_a_user_module_attribute_follows_the_function(
    nb: Notebook, user_module: ModuleType
) -> None:
    nb.run("import my_helpers\ndef f(x):\n    return my_helpers.helper(x)\n")
    kept, first = nb.keep("f")
    nb.run(HELPER_100)
    user_module.helper = nb["helper"]
    assert kept.current() != first
    nb.run(HELPER_1)
    user_module.helper = nb["helper"]
    assert kept.current() == first


def test_a_rebound_array_changes_the_identity_an_edit_in_place_does_not(nb: Notebook) -> None:
    pytest.importorskip("numpy")
    nb.run("import numpy as np\nW = np.arange(6.0).reshape(2, 3)\ndef f(x):\n    return W @ x\n")
    kept, first = nb.keep("f")
    nb.run("W = np.arange(6.0).reshape(2, 3) + 1")
    second = kept.current()
    assert second != first
    nb.run("W = np.arange(6.0).reshape(2, 3)")
    assert kept.current() == first  # by content: dtype, shape and bytes
    nb.run("W = np.arange(6.0).reshape(3, 2)")
    assert kept.current() != first  # the same bytes, another shape
    nb.run("W = np.arange(6.0).reshape(2, 3).T.copy().T")  # not C-contiguous, same values
    assert kept.current() == first
    nb["W"][0, 0] = 99.0  # the documented limit: in place, by identity only
    assert kept.current() == first
    assert nb.identity("f") != first  # ...until the identity is computed afresh


# --------------------------------------------------------------------------- normalised source


def test_the_source_is_normalised(tmp_path: Path) -> None:
    def load(name: str, text: str) -> Any:
        return load_module(tmp_path / f"{name}.py", text, register=False).f

    a = load("mod_a", "def f(x):\n    return x + 1\n")
    b = load("mod_b", "\n\n\ndef f(x):   \n\n    return x + 1\n")  # other place, blank lines
    c = load("mod_c", "def f(x):\n    return x + 2\n")
    # Comments are not code; a "#" in a string is.
    d = load("mod_d", "def f(x):  # add one\n    # the answer\n    return x + 1  # here\n")
    e = load("mod_e", "def f(x):\n    return x + 1, '# here'\n")
    f = load("mod_f", "def f(x):\n    return x + 1, '# there'\n")
    assert code_identity(a) == code_identity(b)  # not the file path or the line number
    assert code_identity(a) == code_identity(d)
    assert code_identity(a) != code_identity(c)
    assert code_identity(e) != code_identity(f)
    assert len(code_identity(a)) == 32


def test_without_source_the_bytecode_counts() -> None:
    def make(source: str) -> Any:
        ns: dict[str, Any] = {"__name__": "__main__"}
        exec(compile(source, "<no-source>", "exec"), ns)
        return ns["f"]

    f1 = make("def f(x):\n    return [y + 1 for y in x]\n")
    f2 = make("\n\ndef f(x):\n    return [y + 1 for y in x]\n")
    f3 = make("def f(x):\n    return [y * 7 for y in x]\n")
    assert code_identity(f1) == code_identity(f2)
    assert code_identity(f1) != code_identity(f3)


# --------------------------------------------------------------------------- %%task --cache


def test_cell_reads_are_the_names_loaded_before_assigned() -> None:
    source = textwrap.dedent(
        """
        y = x + 1
        for i in range(3):
            y += i
        z = [k * w for k in data]
        def g(a):
            b = a
            return b + q
        import os
        os.path
        with open(path) as fh:
            fh.read()
        """
    )
    assert cell_reads(source) == ["x", "range", "data", "w", "q", "open", "path"]


def test_cell_identity_follows_the_values_read(nb: Notebook) -> None:
    source = "total = helper(N)\ntotal"
    reads = cell_reads(source)
    nb.run(HELPER_1 + "N = 5\n")
    first = _codeid.cell_identity(source, nb.ns, reads)
    nb.run("N = 6")
    assert _codeid.cell_identity(source, nb.ns, reads) != first
    nb.run("N = 5\n" + HELPER_100)
    assert _codeid.cell_identity(source, nb.ns, reads) != first
    nb.run(HELPER_1)
    assert _codeid.cell_identity(source, nb.ns, reads) == first
    nb.run("unrelated = 1")
    assert _codeid.cell_identity("\n" + source + "   \n", nb.ns, reads) == first


# --------------------------------------------------------------------------- with an App


def test_a_cached_task_follows_its_helper(nb: Notebook, app: nbtasks.App) -> None:
    nb.ns["app"] = app
    nb.run(HELPER_1)
    nb.run("@app.task(cache=True)\n" + TASK)
    f = nb["f"]
    first = f.delay(1)
    assert first.get(10) == 2 and first.cached is False
    nb.run(HELPER_100)
    second = f.delay(1)
    assert second.get(10) == 101 and second.cached is False and second.id != first.id
    nb.run(HELPER_1)
    again = f.delay(1)
    assert again.cached is True and again.id == first.id and again.get(10) == 2
    nb.run("@app.task(cache=True)\n" + TASK)  # the task's cell run again: same key
    assert nb["f"].delay(1).id == first.id


def test_a_class_based_task_follows_what_run_reads(nb: Notebook, app: nbtasks.App) -> None:
    nb.ns["app"] = app
    nb.run(HELPER_1)
    nb.run(
        """
        import nbtasks
        class Add(nbtasks.Task):
            name = "add"
            cache = True
            def run(self, x):
                return helper(x)
        add = app.register(Add)
        """
    )
    first = nb["add"].delay(1)
    assert first.get(10) == 2
    nb.run(HELPER_100)
    assert nb["add"].delay(1).get(10) == 101
    nb.run(HELPER_1)
    assert nb["add"].delay(1).id == first.id


def test_a_task_still_pickles_after_its_identity_was_computed(
    nb: Notebook, app: nbtasks.App
) -> None:
    nb.ns["app"] = app
    nb.run(HELPER_1)
    nb.run("@app.task(cache=True)\n" + TASK)
    task = nb["f"]
    assert task.code_hash == task.code_hash
    copy = _codec.loads(_codec.dumps(task))  # as a process task goes to its worker
    assert copy(1) == 2
    assert "_code_identity" not in vars(copy)  # the walk's checks stay behind
