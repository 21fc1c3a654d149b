"""``task.app`` in a worker process: submits go to the parent, handles read the store."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ... import _ports as ports
from ..._model import CURRENT, FINISHED, Request, TaskRecord
from ..._reader import StoreReader
from ..._result import GroupResult, TaskResult
from ...store import parse_task_record

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..._canvas import Signature, group
    from ..._ports import Args, Calls, Kwargs, Opts, Parent
    from ..._task import Task
    from .child import Worker


class _ChildApp(StoreReader):
    """``task.app`` in a worker process: the App that owns this worker, seen from here. It
    implements both seams of ``_ports`` for real.

    **Submitter.** A task running here submits others as it would in the notebook (``delay``,
    ``apply_async``, ``apply``, ``map``/``starmap``/``chunks``, chains, groups, chords,
    ``app.submit``). Each submit goes to the parent process, with the running task as the new
    tasks' parent (``lineage``); the parent's App builds and commits the tasks through its usual
    path and runs them in its executors: it owns them (DESIGN principle 2), as if they had been
    submitted there. The call returns once their READY records are committed, or raises what
    the parent raised (a bad argument or option: the same TypeError or ValueError, nothing
    stored).

    **Results.** The handles it returns are the usual ``TaskResult``/``GroupResult`` over this
    process's store: they read the records (``wait()``/``get()`` poll the store) and never write
    them, nor sweep them: the tasks' owner is the App that runs this worker (it also owns a dead
    worker's task until it records the outcome), so a record whose owner looks gone from here
    is not this process's to mark. ``cancel()`` writes a cancel request, which the owner acts
    on. No task is registered here: ``TaskResult.task`` is None.
    """

    def __init__(self, worker: Worker, name: str) -> None:
        self._worker = worker
        self.name = name
        self._store = worker.store
        # A handle unpickled here (a task's argument), or built by AsyncResult(id), reads
        # through it: no App is made in a worker.
        ports.register(self, default=True)

    def __repr__(self) -> str:
        return f"<nbtasks.App {self.name!r} seen from worker process {os.getpid()}>"

    def __reduce__(self) -> Any:
        """As the App: a reference to the store (the notebook's App, where it is unpickled)."""
        return (ports.app_for_store, (str(self._store.path),))

    # ------------------------------------------------------------------ the Submitter seam

    def submit_call(
        self, task: Task, args: Args, kwargs: Kwargs, options: Opts, *, lineage: Parent = None
    ) -> TaskResult:
        call = (task, args, kwargs, options)
        result: TaskResult = self._call(
            "submit_call", call, {"lineage": lineage or self._lineage()}
        )
        return result

    def submit_many(
        self, task: Task, calls: Calls, options: Opts, *, chunk: bool, lineage: Parent = None
    ) -> GroupResult:
        extra = {"chunk": chunk, "lineage": lineage or self._lineage()}
        results: GroupResult = self._call("submit_many", (task, calls, options), extra)
        return results

    def submit_canvas(
        self, items: Sequence[Signature | group], options: Opts, *, lineage: Parent = None
    ) -> TaskResult | GroupResult:
        result: TaskResult | GroupResult = self._call(
            "submit_canvas", (items, options), {"lineage": lineage or self._lineage()}
        )
        return result

    def submit(self, request: Request, *, lineage: Parent = None) -> TaskResult:
        """Mognet: submit a Request; the parent's App finds its task by name."""
        result: TaskResult = self._call(
            "submit", (request,), {"lineage": lineage or self._lineage()}
        )
        request.id = result.id
        return result

    async def run(self, request: Request) -> Any:
        return await self.submit(request)

    def _lineage(self) -> ports.Lineage | None:
        """The task running here (``nbtasks.current()``, else the worker's attempt: a thread
        the task started has no current context): the parent of what it submits."""
        ctx = CURRENT.get()
        attempt = self._worker.attempt
        request = ctx.request if ctx is not None else attempt.request if attempt else None
        if request is None or request.id is None:
            return None
        return (request.id, request.root_id or request.id)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._handles(self._worker.call(method, args, kwargs))

    def _handles(self, described: tuple[Any, ...]) -> Any:
        """The parent's reply (ids and records) as handles: ("r", id, record, cached) or
        ("g", id, [members])."""
        if described[0] == "g":
            members = [self._handles(m) for m in described[2]]
            return GroupResult(self, described[1], members)
        _, task_id, rec, cached = described
        return TaskResult(task_id, self, rec=rec, cached=cached)

    # ------------------------------------------------------------------ the Results seam
    # (result, group_result, live, read_listed and decode are StoreReader's)

    def read_record(self, task_id: str, text: str | None = None) -> TaskRecord:
        if text is None:
            return self._store.read_record(task_id)
        return parse_task_record(text, "t:" + task_id, self._store.path)

    def cancel(self, task_id: str) -> bool:
        """``TaskResult.cancel()`` here: a cancel request, acted on by the task's owner."""
        if self._store.get_record(task_id)["status"] in FINISHED:
            return False
        self._store.request_cancel(task_id)
        return True

    def registered(self, name: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"App.{name} is not available to a task running in a worker process: there, the "
            "App submits tasks (delay, apply_async, apply, map, chains, groups, chords, "
            "app.submit) and reads their results (app.result(id)); do the rest from the notebook"
        )
