"""The code identity of a cached task (SPEC §6): what its cache key follows.

A task's **code** is its function's source plus, transitively, what it reads by global name,
closure cell or default argument that lives in user code: a notebook's ``__main__`` or any
module outside the standard library and the installed packages. Functions count by their
normalised source (joblib's lesson: never a cell number, a temp file name or a line number),
classes by their methods and attributes, other values by their content. Modules, builtins and
installed code count by name only, with the package version where one is installed. So
redefining a helper in another cell, or changing a constant the task reads, changes the
identity, and changing it back gives the first identity again: a cache hit on the earlier
result, also after a kernel restart.

``delay()`` stays off the slow path: a ``CodeIdentity`` computes the digest once and keeps the
list of what the walk read (which dict, which name, which object was bound there); each submit
checks only that every name is still bound to the same object (a dict lookup and an ``is``
each), plus an ``==`` against a snapshot for small mutable containers of plain values, where
in-place edits are common. A large object changed in place (a numpy array edited by index) is
not hashed again on every submit: only a rebinding of its name is seen (docs/caching.md).

``cell_identity`` does the same for a ``%%task --cache`` cell: its source and the values of the
names it reads from the user namespace.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dis
import functools
import hashlib
import inspect
import io
import os
import site
import sys
import textwrap
import tokenize
from collections.abc import Iterator, Mapping
from types import BuiltinFunctionType, CellType, CodeType, FunctionType, MethodType, ModuleType
from typing import Any, Final

from ._codec import dumps_message

__all__ = [
    "FIXED_IDENTITY",
    "CodeIdentity",
    "cell_identity",
    "code_identity",
    "is_user_module",
]

_ABSENT: Final = object()
#: Small mutable containers of plain values (lists, dicts, sets) up to this many items in all
#: are compared with a snapshot on every submit; larger ones count by identity only.
RECHECK_LIMIT: Final = 1000
#: How deep a walk of nested values goes before it counts the rest by type only.
MAX_DEPTH: Final = 60
#: The attribute that gives a function its identity outright: ``%%task --cache`` sets it to the
#: cell's ``cell_identity`` (the function that runs a cell is the same code for every cell).
FIXED_IDENTITY: Final = "__nbtasks_code__"
_SCALARS: Final = (type(None), bool, int, float, complex, str, bytes)
#: Methods that change a container in place: a task calling one on a name it reads writes
#: into that container (a log, a memo), so its content is the task's output, not an input.
MUTATORS: Final = frozenset(
    {
        "append",
        "extend",
        "insert",
        "pop",
        "popitem",
        "remove",
        "clear",
        "update",
        "add",
        "discard",
        "setdefault",
        "sort",
        "reverse",
        "appendleft",
        "extendleft",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
    }
)
_GLOBAL_LOADS: Final = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_NAME_LOADS: Final = _GLOBAL_LOADS | {"LOAD_DEREF", "LOAD_CLOSURE", "LOAD_FAST"}
_ATTR_LOADS: Final = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
#: Class attributes Python makes itself: they say nothing the methods do not.
_CLASS_NOISE: Final = frozenset(
    {
        "__module__",
        "__qualname__",
        "__dict__",
        "__weakref__",
        "__firstlineno__",
        "__static_attributes__",
        "__annotations__",
        "__orig_bases__",
        "__parameters__",
        "__match_args__",
    }
)


# --------------------------------------------------------------------------- where code lives


@functools.cache
def _library_roots() -> tuple[str, ...]:
    """The folders of the standard library and installed packages (and the interpreter's
    prefixes: a virtual environment's own files are installed code too)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    # The standard library's folder, found from ``os`` (``sysconfig.get_paths()`` names it and
    # lib-dynload too, at ~1 ms on a process's first submit: it builds every install scheme;
    # lib-dynload lies under the base prefix in every layout).
    paths.add(os.path.dirname(os.__file__))
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # an old virtualenv's site module has none
        pass
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        paths.add(user_site)
    return tuple(sorted({_norm(p) + os.sep for p in paths if p}))


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


@functools.lru_cache(maxsize=4096)
def _is_user_file(path: str) -> bool:
    return not _norm(path).startswith(_library_roots())


def is_user_module(name: str | None) -> bool:
    """True if the module ``name`` is user code: ``__main__``, a module not imported (code
    ``exec``-ed into a namespace of its own), or one whose file is outside the standard library
    and installed packages (an editable install of the user's own package counts: editing it
    recomputes). nbtasks itself is a library; a module without a file is a builtin one."""
    if not name or name == "__main__":
        return True
    if name == "nbtasks" or name.startswith("nbtasks."):
        return False
    module = sys.modules.get(name)
    if module is None:
        return True
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and _is_user_file(path)


@functools.lru_cache(maxsize=1024)
def _library_name(module: str) -> str:
    """``module`` with its package's version (``numpy@2.1.0``), or the name alone (the
    standard library, a builtin module, a package with no version to find). The version is the
    package's ``__version__``, else that of the installed distribution of the same name: both
    cheap. (``importlib.metadata.packages_distributions()``, which maps every package to its
    distribution, reads every installed distribution's files: 135 ms in the test
    environment, on the first submit of a task that reads an installed package.)"""
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return module
    version = getattr(sys.modules.get(top), "__version__", None)
    if not isinstance(version, str):
        from importlib import metadata

        try:
            version = metadata.version(top)
        except (metadata.PackageNotFoundError, ValueError):
            version = None
    return f"{module}@{version}" if version else module


# --------------------------------------------------------------------------- reading code


def _source_text(obj: Any) -> str | None:
    """The normalised source of a function (``normalised``)."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    return normalised(source)


def normalised(source: str) -> str:
    """Source as the key sees it: dedented, comments, trailing spaces and blank lines gone, so
    that editing a comment or the layout of blank lines does not make a task compute again (a
    docstring is code: it counts)."""
    lines = textwrap.dedent(source).splitlines()
    tokens: list[tokenize.TokenInfo] = []
    if "#" in source:  # else there is no comment to find (tokenizing costs ~10 µs a line)
        try:
            text = "\n".join(lines) + "\n"
            tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (tokenize.TokenError, SyntaxError):
            pass  # not whole Python (a cell with magics left in): keep the comments
    for tok in reversed(tokens):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def _code_text(code: CodeType) -> str:
    """The bytecode of a function that has no source, without file name or line numbers."""
    consts = tuple(_code_text(c) if isinstance(c, CodeType) else repr(c) for c in code.co_consts)
    return repr((code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_freevars))


@functools.lru_cache(maxsize=4096)
def global_reads(code: CodeType) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The global names a code object and the code nested in it (comprehensions, lambdas,
    inner functions) load, each with the attribute chain read from it right after
    (``np.linalg.norm`` -> ``("np", ("linalg", "norm"))``), in order of first appearance."""
    found: dict[tuple[str, tuple[str, ...]], None] = {}
    for c in _codes(code):
        name: str | None = None
        chain: list[str] = []
        for ins in dis.get_instructions(c):
            if name is not None and ins.opname in _ATTR_LOADS:
                chain.append(ins.argval)
                continue
            if name is not None:
                found[(name, tuple(chain))] = None
                name = None
            if ins.opname in _GLOBAL_LOADS:
                name, chain = ins.argval, []
        if name is not None:
            found[(name, tuple(chain))] = None
    return tuple(found)


def _codes(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def written_names(fn: FunctionType) -> frozenset[str]:
    """The names whose container ``fn`` writes into: ``log.append(x)``, ``seen[k] = v``,
    ``del memo[k]``, ``state.count += 1``. Read from the source (``ast``); without source,
    from the bytecode (a load of the name then a mutating method)."""
    source = _source_text(fn)
    if source is None:
        return _written_in_code(fn.__code__)
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a lambda's line cut mid-expression
        return _written_in_code(fn.__code__)
    names: set[str] = set()
    for node in ast.walk(tree):
        target: ast.AST | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in MUTATORS:
                target = node.func.value
        elif isinstance(node, (ast.Subscript, ast.Attribute)) and not isinstance(
            node.ctx, ast.Load
        ):
            target = node.value
        if isinstance(target, ast.Name):
            names.add(target.id)
    return frozenset(names)


@functools.lru_cache(maxsize=1024)
def _written_in_code(code: CodeType) -> frozenset[str]:
    names: set[str] = set()
    for c in _codes(code):
        last: str | None = None
        for ins in dis.get_instructions(c):
            if last is not None and ins.opname in _ATTR_LOADS and ins.argval in MUTATORS:
                names.add(last)
            last = ins.argval if ins.opname in _NAME_LOADS else None
    return frozenset(names)


# --------------------------------------------------------------------------- the walk


class _Walk:
    """One computation of an identity: a running hash and the checks that keep it current."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.bound: list[tuple[Mapping[str, Any], str, Any]] = []  # mapping, name, object
        self.cells: list[tuple[CellType, Any]] = []  # a closure cell and its contents
        self.attrs: list[tuple[Any, str, Any]] = []  # owner, attribute, object
        self.contents: list[tuple[Any, Any]] = []  # a small mutable container, its snapshot
        self.seen: dict[int, int] = {}  # id -> order of first visit (cycles, shared values)
        self.keep: list[Any] = []  # what `seen` names stays alive: no id is reused meanwhile

    def token(self, *parts: str) -> None:
        for part in parts:
            data = part.encode("utf-8", "surrogatepass")
            self.h.update(len(data).to_bytes(8, "little"))
            self.h.update(data)

    def again(self, obj: Any) -> bool:
        """True (and a back reference hashed) if ``obj`` was met before in this walk."""
        order = self.seen.get(id(obj))
        if order is not None:
            self.token("ref", str(order))
            return True
        self.seen[id(obj)] = len(self.seen)
        self.keep.append(obj)
        return False

    # ---------------------------------------------------------------- code

    def known(self, obj: FunctionType | type) -> bool:
        """True (and hashed) for installed code, by name and version, or for a function or
        class met before in this walk (a back reference): nothing more to walk."""
        if not is_user_module(obj.__module__):
            self.token("lib", _library_name(obj.__module__), obj.__qualname__)
            return True
        return self.again(obj)

    def function(self, fn: FunctionType, depth: int) -> None:
        if self.known(fn):
            return
        code = fn.__code__
        self.attrs.append((fn, "__code__", code))
        self.token("fn", _source_text(fn) or _code_text(code))
        written = written_names(fn)
        self.names(fn.__globals__, global_reads(code), depth, written)
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: a name assigned later in the outer function
                value = _ABSENT
            self.cells.append((cell, value))
            self.token("closure", name)
            if name in written:
                self.token("written", _type_name(type(value)))
            else:
                self.value(value, depth + 1)
        for attr in ("__defaults__", "__kwdefaults__"):
            value = getattr(fn, attr)
            self.attrs.append((fn, attr, value))
            self.token(attr)
            self.value(value, depth + 1)

    def names(
        self,
        namespace: Mapping[str, Any],
        reads: tuple[tuple[str, tuple[str, ...]], ...],
        depth: int,
        written: frozenset[str] = frozenset(),
    ) -> None:
        """Each name read in ``namespace`` (a function's globals, the user namespace); a
        container the code writes into counts by its type (and its binding) only."""
        for name, chain in reads:
            obj = namespace.get(name, _ABSENT)
            self.bound.append((namespace, name, obj))
            if obj is _ABSENT:
                self.token("builtin" if hasattr(builtins, name) else "absent", name)
                continue
            self.token("name", name)
            if name in written and not isinstance(obj, ModuleType):
                self.token("written", _type_name(type(obj)))
            elif isinstance(obj, ModuleType) and chain and is_user_module(obj.__name__):
                self.attribute_chain(obj, chain, depth)
            else:
                self.value(obj, depth + 1)

    def attribute_chain(self, module: ModuleType, chain: tuple[str, ...], depth: int) -> None:
        """``mymod.helper`` in user code follows ``helper`` itself (and ``mymod.sub.f`` on)."""
        obj: Any = module
        for attr in chain:
            if not (isinstance(obj, ModuleType) and is_user_module(obj.__name__)):
                break
            owner = vars(obj)
            obj = owner.get(attr, _ABSENT)
            self.bound.append((owner, attr, obj))
            self.token("attr", attr)
        self.value(obj, depth + 1)

    def cls(self, c: type, depth: int) -> None:
        if self.known(c):
            return
        self.token("class", c.__qualname__)
        for base in c.__bases__:
            self.value(base, depth + 1)
        namespace = vars(c)
        for name in sorted(namespace):
            if name in _CLASS_NOISE:
                continue
            obj = namespace[name]
            self.bound.append((namespace, name, obj))  # a method replaced later is seen
            self.token("member", name)
            self.value(obj, depth + 1)

    def module(self, m: ModuleType) -> None:
        """A module passed as a value: by name, or a user module by the text of its file."""
        path = getattr(m, "__file__", None)
        if not is_user_module(m.__name__) or not isinstance(path, str):
            self.token("module", _library_name(m.__name__))
            return
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError:
            text = m.__name__.encode()
        self.token("usermodule", m.__name__, hashlib.sha256(text).hexdigest())

    # ---------------------------------------------------------------- values

    def value(self, obj: Any, depth: int) -> None:
        """A value by its content: scalars by repr, containers item by item, functions and
        classes by code, arrays by dtype, shape and bytes, anything else by a plain pickle."""
        t = type(obj)
        if obj is _ABSENT:
            self.token("empty")
        elif t in _SCALARS:
            self.token(t.__name__, repr(obj))
        elif depth > MAX_DEPTH:
            self.token("deep", _type_name(t))
        elif t is FunctionType:
            self.function(obj, depth)
        elif isinstance(obj, type):
            self.cls(obj, depth)
        elif t is ModuleType:
            self.module(obj)
        elif t in (list, tuple, dict, set, frozenset):
            self.container(obj, depth)
        elif t is BuiltinFunctionType:
            self.token("builtin", str(getattr(obj, "__module__", None)), obj.__qualname__)
        elif t in (MethodType, staticmethod, classmethod):
            self.token(t.__name__)
            self.value(obj.__func__, depth + 1)
            if t is MethodType:  # the object of a library method (a shell, a client): its type
                fn = obj.__func__
                own = type(fn) is FunctionType and is_user_module(fn.__module__)
                self.value(obj.__self__ if own else type(obj.__self__), depth + 1)
        elif t is property:
            self.token("property")
            for part in (obj.fget, obj.fset, obj.fdel):
                self.value(part, depth + 1)
        elif t is functools.partial:
            self.token("partial")
            for part in (obj.func, obj.args, obj.keywords):
                self.value(part, depth + 1)
        elif _is_array(obj):
            self.array(obj)
        elif callable(getattr(obj, "__wrapped__", None)):  # a Task, an lru_cache, a wrapper
            self.token("wrapped", _type_name(t))
            self.value(obj.__wrapped__, depth + 1)
        elif is_user_module(t.__module__) and hasattr(obj, "__dict__"):
            if not self.again(obj):  # an instance of a user class: its class and its fields
                self.cls(t, depth + 1)
                self.value(vars(obj), depth + 1)
        else:
            self.pickled(obj)

    def container(self, obj: Any, depth: int) -> None:
        t = type(obj)
        if self.again(obj):
            return
        if t is not tuple and t is not frozenset and _plain_size(obj, RECHECK_LIMIT) >= 0:
            self.contents.append((obj, copy.deepcopy(obj)))
        self.token(t.__name__, str(len(obj)))
        if t is dict:
            items = list(obj.items())
            if all(type(k) is str for k in obj):
                items.sort(key=lambda kv: kv[0])  # dict equality ignores order; so does the key
            for k, v in items:
                self.value(k, depth + 1)
                self.value(v, depth + 1)
        elif t is set or t is frozenset:
            # Iteration order follows str hashes, which change between processes.
            if all(type(v) in _SCALARS for v in obj):
                for v in sorted(obj, key=lambda v: (type(v).__name__, repr(v))):
                    self.value(v, depth + 1)
            else:
                self.pickled(sorted(map(repr, obj)))
        else:
            for v in obj:
                self.value(v, depth + 1)

    def array(self, arr: Any) -> None:
        """A numpy array: dtype, shape and its bytes, hashed in place when contiguous."""
        self.token("ndarray", str(arr.dtype), repr(arr.shape))
        if arr.dtype.hasobject:
            self.pickled(arr)
            return
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        try:
            self.h.update(memoryview(arr).cast("B"))
        except (TypeError, ValueError):  # a dtype the buffer protocol does not export
            self.h.update(arr.tobytes())

    def pickled(self, obj: Any) -> None:
        try:
            data = dumps_message(obj)
        except Exception:  # a lock, a connection: it has no content to key on
            self.token("opaque", _type_name(type(obj)))
            return
        self.token("pickle", _type_name(type(obj)), hashlib.sha256(data).hexdigest())

    def digest(self) -> str:
        return self.h.hexdigest()[:32]


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _is_array(obj: Any) -> bool:
    t = type(obj)
    return t.__name__ == "ndarray" and t.__module__.partition(".")[0] == "numpy"


def _plain_size(obj: Any, budget: int) -> int:
    """The budget left after counting the items of a container of plain values (scalars,
    lists, dicts, sets, tuples), or -1 if it holds something else or is too big."""
    t = type(obj)
    if t in _SCALARS:
        return budget - 1
    if t not in (list, tuple, dict, set, frozenset):
        return -1
    budget -= 1
    for item in obj.items() if t is dict else obj:
        budget = _plain_size(item, budget)
        if budget < 0:
            return -1
    return budget


# --------------------------------------------------------------------------- identities


class CodeIdentity:
    """The identity of one task function (or class-based task's class), kept current.

    ``current()`` recomputes only when something the last walk read has changed: a name bound
    to another object, a closure cell or default replaced, a small plain container edited.
    The checks hold the objects they compare with, so no id is reused while they stand.
    """

    __slots__ = ("_state", "target")

    def __init__(self, target: Any) -> None:
        self.target = target
        self._state: tuple[str, _Walk] | None = None
        fixed = getattr(target, FIXED_IDENTITY, None)
        if isinstance(fixed, str):  # a %%task cell: keyed on its source when it was run
            self._state = (fixed, _Walk())

    def current(self) -> str:
        """The identity now: the cached digest if every check passes, else a new walk."""
        state = self._state
        if state is not None and _still(state[1]):
            return state[0]
        walk = _Walk()
        walk.value(self.target, 0)
        self._state = (walk.digest(), walk)  # one assignment: another thread sees old or new
        return self._state[0]


def _still(walk: _Walk) -> bool:
    """True if everything ``walk`` read is still what it read (the per-submit cost)."""
    absent = _ABSENT
    for mapping, name, obj in walk.bound:
        if mapping.get(name, absent) is not obj:
            return False
    for cell, obj in walk.cells:
        try:
            if cell.cell_contents is not obj:
                return False
        except ValueError:
            if obj is not absent:
                return False
    for owner, attr, obj in walk.attrs:
        if getattr(owner, attr) is not obj:
            return False
    for container, snapshot in walk.contents:
        if type(container) is not type(snapshot) or container != snapshot:
            return False
    return True


def code_identity(target: Any) -> str:
    """The identity of a function, class or value, computed once (no memo)."""
    walk = _Walk()
    walk.value(target, 0)
    return walk.digest()


def cell_identity(source: str, namespace: Mapping[str, Any], reads: list[str]) -> str:
    """The identity of a ``%%task --cache`` cell: its normalised source and the values of the
    names it ``reads`` from ``namespace`` (functions by code identity, values by content)."""
    walk = _Walk()
    walk.token("cell", normalised(source))
    walk.names(namespace, tuple((name, ()) for name in reads), 0)
    return walk.digest()
