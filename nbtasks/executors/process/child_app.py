"""``task.app`` in a worker process: submits go to the parent, handles read the store."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from ..._model import FINISHED, Request, check_id

if TYPE_CHECKING:
    from ...store import Store
    from .child import Worker


class _ChildApp:
    """``task.app`` in a worker process: the App that owns this worker, seen from here.

    A task running here submits others as it would in the notebook (``delay``, ``apply_async``,
    ``apply``, ``map``/``starmap``/``chunks``, chains, groups, chords, ``app.submit``). Each
    submit goes to the parent process, whose App builds and commits the tasks through its usual
    path and runs them in its executors: it owns them (DESIGN principle 2), as if they had been
    submitted there. The call returns once their READY records are committed, or raises what the
    parent raised (a bad argument or option: the same TypeError or ValueError, nothing stored).
    It returns the usual ``TaskResult``/``GroupResult``, over this process's store: they read
    the records (``wait()``/``get()`` poll the store) and never write them; ``cancel()`` writes a
    cancel request, which the owner acts on.
    """

    def __init__(self, worker: Worker, name: str) -> None:
        self._worker = worker
        self.name = name
        self._store = _ReadStore(worker.store)
        self._registry: dict[str, Any] = {}  # TaskResult.task is None here
        self._runtime = self  # TaskResult.cancel() calls app._runtime.cancel(id)

    def __repr__(self) -> str:
        return f"<nbtasks.App {self.name!r} seen from worker process {os.getpid()}>"

    # The App's submit methods, as Task, Signature and the canvas classes call them.

    def _submit(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        return self._call("_submit", (task, args, kwargs, options), {})

    def _submit_many(
        self, task: Any, calls: Any, options: dict[str, Any], *, chunk: bool = False
    ) -> Any:
        return self._call("_submit_many", (task, calls, options), {"chunk": chunk})

    def _submit_canvas(self, items: Any, options: dict[str, Any]) -> Any:
        return self._call("_submit_canvas", (items, options), {})

    def submit(self, request: Request) -> Any:
        """Mognet: submit a Request; the parent's App finds its task by name."""
        result = self._call("submit", (request,), {})
        request.id = result.id
        return result

    async def run(self, request: Request) -> Any:
        return await self.submit(request)

    def result(self, task_id: str) -> Any:
        """The stored TaskResult of any task (read from the store)."""
        check_id(task_id, "task_id")
        return _public("TaskResult")(self, task_id)

    def group_result(self, group_id: str) -> Any:
        check_id(group_id, "group_id")
        rec = self._store.get_group(group_id)
        members = [self.result(tid) for tid in rec["members"]]
        return _public("GroupResult")(self, group_id, members)

    def cancel(self, task_id: str) -> bool:
        """``TaskResult.cancel()`` here: a cancel request, acted on by the task's owner."""
        if self._store.get_record(task_id)["status"] in FINISHED:
            return False
        self._store.request_cancel(task_id)
        return True

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._handles(self._worker.call(method, args, kwargs))

    def _handles(self, described: tuple[Any, ...]) -> Any:
        """The parent's reply (ids and records) as handles: ("r", id, record, cached) or
        ("g", id, [members])."""
        if described[0] == "g":
            members = [self._handles(m) for m in described[2]]
            return _public("GroupResult")(self, described[1], members)
        _, task_id, rec, cached = described
        return _public("TaskResult")(self, task_id, rec=rec, cached=cached)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"App.{name} is not available to a task running in a worker process: there, the "
            "App submits tasks (delay, apply_async, apply, map, chains, groups, chords, "
            "app.submit) and reads their results (app.result(id)); do the rest from the notebook"
        )


class _ReadStore:
    """The store as the handles of a worker's submits see it: read, never swept. The tasks'
    owner is the App that runs this worker (it also owns a dead worker's task until it records
    the outcome), so a record whose owner looks gone from here is not this process's to mark."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def sweep(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _public(name: str) -> Any:
    """A public class of nbtasks (TaskResult, GroupResult): a task here gets the handles it
    gets in the notebook. Looked up on the package, not imported: this module belongs to the
    executors' layer (DESIGN's table); in a worker, the package's __init__ runs on first use
    (see _lazy_package)."""
    return getattr(sys.modules["nbtasks"], name)
