"""Tasks a worker's task submits, run by the App that owns the worker (SPEC §7).

A task running in a pool worker submits other tasks through its parent (``child_app``): the call
arrives here, this process's App builds, commits and runs the new tasks as if they were
submitted here (it owns them), and the worker gets their records back, or the exception to
raise. Served in a thread of its own, never the supervisor's: a submit may wait for the store or
run an ``apply()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ... import _ports as ports
from ..._codec import dumps, loads
from ..._errors import NbtasksError

if TYPE_CHECKING:
    from ...store import Store
    from .procs import WorkerProcess

#: The App methods a task in a worker may have its parent run: the Submitter seam's (child_app).
CALLS: Final = ports.SUBMIT_METHODS


class SubmitServer:
    """The process executor's side of a worker's submits."""

    _app: Callable[[], Any] | None
    _lock: threading.Lock
    store: Store

    def _serve_call(self, proc: WorkerProcess, n: int, payload: bytes) -> None:
        """A task running in ``proc`` submits tasks (``child_app._ChildApp``): this process's App
        builds, commits and runs them, as if they were submitted here, and the worker gets
        their records back, or the exception to raise. The tasks are the App's own when it has
        one of that name (as a Celery worker submits by name), else the pickled ones."""
        try:
            app = self._app() if self._app is not None else None
            if app is None:
                raise NbtasksError("the App that runs this worker process has been deleted")
            method, args, kwargs = loads(payload)
            if method not in CALLS:  # pragma: no cover - the worker checks it first
                raise NbtasksError(f"a worker process may not call App.{method}")
            result = getattr(app, method)(*_owned(app, method, args), **kwargs)
            self.store.flush()  # what the handles there read is committed (an apply() ran)
            reply: tuple[Any, ...] = ("called", n, True, _describe(result))
        except Exception as exc:
            reply = ("called", n, False, _pickled_error(exc))
        with self._lock:
            try:
                assert proc.conn is not None  # it sent the call
                proc.conn.send(reply)
            except OSError:
                pass  # the worker is gone; the tasks it submitted run all the same


def _owned(app: Any, method: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A worker's submit, its tasks made the App's (in the Task, its Signatures, its groups'
    and its links' Signatures): see _own."""
    if method == "submit":  # a Request: the App finds its task by name
        return args
    if method == "submit_canvas":
        items, options = args
        for item in items:  # Signatures and groups (chains arrive flattened)
            for sig in getattr(item, "tasks", None) or [item]:
                _own_signature(app, sig)
        _own_links(app, options)
        return args
    task, *rest = args  # submit_call(task, args, kwargs, options), submit_many(task, calls, ...)
    _own_links(app, rest[-1])
    return (_own(app, task), *rest)


def _own(app: Any, task: Any) -> Any:
    """The App's task of that name, else the pickled one given the App that Task.__reduce__
    left behind (and its signature, which checks the arguments)."""
    registered = app.registered(task.name)
    if registered is not None:
        return registered
    task.adopt(app)
    return task


def _own_signature(app: Any, sig: Any) -> None:
    sig.task = _own(app, sig.task)
    _own_links(app, sig.options)


def _own_links(app: Any, options: dict[str, Any]) -> None:
    for key in ("link", "link_error"):
        links = options.get(key)
        for sig in links if isinstance(links, list | tuple) else [links]:
            if hasattr(sig, "task"):
                _own_signature(app, sig)


def _describe(result: Any) -> tuple[Any, ...]:
    """A TaskResult as ("r", id, record, cached), a GroupResult as ("g", id, [members])."""
    members = getattr(result, "results", None)
    if members is not None:
        return ("g", result.id, [_describe(r) for r in members])
    live = result.app.live(result.id)  # submitted just now: this App owns it
    rec = live.rec if live is not None else result.app.read_record(result.id)
    return ("r", result.id, dict(rec), result.cached)


def _pickled_error(exc: Exception) -> tuple[bytes, str]:
    """An exception for the worker to raise: pickled (cloudpickle), with its text in case it
    cannot be unpickled there."""
    text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        return dumps(exc), text
    except TypeError:
        return dumps(NbtasksError(text)), text
