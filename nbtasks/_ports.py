"""The seams between the task model, the handles and whoever runs the tasks.

``Task``, ``Signature`` and the canvas classes submit through a ``Submitter``; ``TaskResult`` and
``GroupResult`` read, wait and cancel through a ``Results``. The ``App`` implements both; so does
the worker-side app of a process task (``executors.process.child_app``), which forwards the
submits to the App that owns its worker (the RPC carries exactly ``SUBMIT_METHODS``) and reads
the store. So ``_task`` and ``_result`` never import ``_app``, and nothing reaches into
another's privates.

**How a handle finds its App** when it is unpickled, or built as ``AsyncResult(id)`` without
one: a handle pickles as its app and its id, and an app (the App, the worker-side app) pickles
as ``app_for_store(its store path)``. That gives the newest app of the unpickling process that
``register``-ed itself for that store (each App does when it is made; in a worker process, its
worker-side app), else asks the opener that ``nbtasks._app`` set with ``set_opener``: the default
app if it uses that store, else a new App on it. So a handle a process task returns reads
through the notebook's App, and one passed to a process task through the worker's app.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from ._canvas import Signature, group
    from ._model import TaskRecord
    from ._result import GroupResult, TaskResult
    from ._task import Task

#: (parent_id, root_id) of a task submitted from inside another: the submitting task's id, and
#: the first task of its line (Celery's ``parent_id`` / ``root_id``).
Lineage = tuple[str, str]
#: A submit's lineage: given, or None (then the task running in this thread, if any).
Parent = Lineage | None
#: The arguments of one call, as a submit takes them.
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Calls = Sequence[tuple[Args, Kwargs]]
#: ``apply_async``'s options as given (the submitter checks them).
Opts = dict[str, Any]


class LiveTask(Protocol):
    """A task in its owner's memory (``store.Live``), as a handle reads it: the record this
    process changes in place, the values it keeps unencoded, and a wait for the end."""

    rec: TaskRecord
    args: Any
    kwargs: Any
    value: Any
    callbacks: list[Callable[[Any], None]]

    @property
    def finished(self) -> bool: ...

    def wait(self, timeout: float | None) -> bool: ...


class Submitter(Protocol):
    """What ``Task``, ``Signature`` and the canvas submit through. Each call returns once the
    READY records are committed. ``lineage``: the task submitting these, if it runs somewhere
    the submitter cannot see (a worker process); by default, the task running in this thread."""

    name: str

    def submit_call(
        self, task: Task, args: Args, kwargs: Kwargs, options: Opts, *, lineage: Parent = None
    ) -> TaskResult: ...

    def submit_many(
        self, task: Task, calls: Calls, options: Opts, *, chunk: bool, lineage: Parent = None
    ) -> GroupResult: ...

    def submit_canvas(
        self, items: Sequence[Signature | group], options: Opts, *, lineage: Parent = None
    ) -> TaskResult | GroupResult: ...

    def submit(self, request: Any, *, lineage: Parent = None) -> TaskResult: ...


#: The Submitter's methods: all that a task in a worker process may have its parent's App run.
SUBMIT_METHODS: Final = frozenset({"submit_call", "submit_many", "submit_canvas", "submit"})


class Results(Protocol):
    """What ``TaskResult`` and ``GroupResult`` read, wait on and cancel through."""

    name: str

    @property
    def store_path(self) -> Path: ...

    def live(self, task_id: str) -> LiveTask | None:
        """The task in this process's memory if this process owns it (read it at once)."""
        ...

    def read_listed(self, task_id: str) -> tuple[TaskRecord, str]:
        """The committed record's listing fields (status, name, times, progress: one indexed
        row) and its text, parsed only when another field is wanted (``read_record``)."""
        ...

    def read_record(self, task_id: str, text: str | None = None) -> TaskRecord:
        """The whole committed record (parsed from ``text`` if given: what ``read_listed``
        read). Where the app may sweep, an unfinished task whose owner is gone reads as the
        sweep makes it (INTERRUPTED)."""
        ...

    def decode(self, enc: dict[str, Any], what: str, mmap: bool = False) -> Any:
        """A pickled or JSON value of a record (arguments, return value, exception); with
        ``mmap``, its out-of-band arrays mapped read-only from the store."""
        ...

    def trusted_displays(self, bundles: list[Any], signatures: Any) -> list[dict[str, Any]]:
        """The bundles a record says its task displayed, as they may be shown: each whose
        signature verifies as it is; any other as its text/plain alone (its HTML, SVG or
        script would reach the page: SPEC 10)."""
        ...

    def cancel(self, task_id: str) -> bool: ...

    def registered(self, name: str) -> Task | None:
        """The Task registered under ``name``, if any."""
        ...

    def result(self, task_id: str) -> TaskResult: ...

    def resolve_id(self, text: str) -> str:
        """The full id of the one task ``text`` names (a full id, its start or its end)."""
        ...

    def group_result(self, group_id: str) -> GroupResult: ...


class AppPort(Submitter, Results, Protocol):
    """Both seams: what ``task.app`` is (the App, or the worker-side app)."""


_apps: dict[str, list[weakref.ref[Any]]] = {}
_apps_lock = threading.Lock()
_opener: Callable[[str | None], Any] | None = None
_default: weakref.ref[Any] | None = None


def register(app: Results, *, default: bool = False) -> None:
    """Make ``app`` the one that handles unpickled in this process use for its store (the
    newest wins): every App, and the worker-side app of a process task, register themselves.
    ``default``: also the app of ``AsyncResult(id)`` without one (the worker-side app: in a
    worker process, the App is the one that owns the worker)."""
    global _default
    path = str(app.store_path)
    with _apps_lock:
        refs = [r for r in _apps.get(path, ()) if r() is not None]
        refs.append(weakref.ref(app))
        _apps[path] = refs
        if default:
            _default = weakref.ref(app)


def unregister(app: Results) -> None:
    """``app`` is shut down: handles unpickled from now on use another one."""
    path = str(app.store_path)
    with _apps_lock:
        _apps[path] = [r for r in _apps.get(path, ()) if r() not in (None, app)]


def set_opener(opener: Callable[[str | None], Any]) -> None:
    """How to get an App when none is registered for a store: ``opener(None)`` is the default
    app, ``opener(path)`` one on that store. ``nbtasks._app`` sets it once, when imported
    (this module cannot import the App: the App imports what imports this)."""
    global _opener
    _opener = opener


def app_for_store(path: str | Path | None) -> Any:
    """The app this process uses for the store at ``path`` (None: the default app): the newest
    registered one on that store, else what the opener gives (see the module's docstring)."""
    with _apps_lock:
        refs = _apps.get(str(path), ()) if path is not None else [_default] if _default else ()
        for ref in reversed(refs):
            app = ref()
            if app is not None:
                return app
    if _opener is None:
        raise LookupError(
            f"no App of this process uses the store {path}: import nbtasks and open one "
            f"(nbtasks.App(store={str(path)!r}))"
        )
    return _opener(None if path is None else str(path))
