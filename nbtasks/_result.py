"""``TaskResult`` and ``GroupResult``: handles made of (store, id) plus the last snapshot read.

A handle never holds threads, locks or widgets (DESIGN principle 5), so it pickles, and
``AsyncResult(id)`` in a new kernel builds the same object. For a task this process runs, the
snapshot comes from memory (seen at once, and waits are woken by a notification); otherwise
from the store (waits poll it, backing off from 5 ms to 0.1 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._errors import (
    ResultNotReady,
    StoreError,
    TaskCancelled,
    TaskFailed,
    TaskInterrupted,
)
from ._model import (
    FINISHED,
    MISSING,
    Progress,
    TaskError,
    TaskStatus,
    aggregate_progress,
    to_datetime,
)
from ._text import format_duration, short_id
from .store import Live, damaged, owner_alive, parse_record, summary

if TYPE_CHECKING:
    from ._app import App
    from ._task import Task


class TaskResult:
    """The state and outcome of one task (django-tasks' TaskResult, with Celery's extras)."""

    def __init__(
        self,
        app: App,
        task_id: str,
        *,
        live: Live | None = None,
        rec: dict[str, Any] | None = None,
        cached: bool = False,
        parent: TaskResult | GroupResult | None = None,
    ) -> None:
        self._app = app
        self.id = task_id
        self._live = live
        self.cached = cached
        self._parent = parent
        self._rec: dict[str, Any] = dict(rec) if rec is not None else {}
        self._partial = False  # _rec holds only a listing's fields (see _listed, refresh)
        if rec is None:
            self.refresh()

    @classmethod
    def _listed(cls, app: App, row: tuple[Any, ...]) -> TaskResult:
        """A handle made from a ``Store.listing()`` row: it holds the listing's fields (status,
        name, the times, progress); the first read of any other field loads the whole record,
        as ``refresh()`` would (100,000 rows: ~0.2 s, against ~1 s to parse every record)."""
        self = cls.__new__(cls)
        rec = summary(row)
        self._app = app
        self.id = rec["id"]
        self._rec = rec
        self._partial = True
        return self

    # Defaults until set: a listed handle sets none of these, __init__ only the first three.
    _live: Live | None = None
    _text: str | None = None  # a finished record's text, not parsed yet (see refresh)
    cached: bool = False
    _parent: TaskResult | GroupResult | None = None
    _value: Any = MISSING
    _args: Any = MISSING
    _kwargs: Any = MISSING

    # ------------------------------------------------------------------ loading

    def _source(self) -> Live | None:
        live = self._live
        if live is None:
            live = self._app._store.live.get(self.id)
        return live

    def refresh(self) -> TaskResult:
        """Reload every field (from memory for this process's tasks, else from the store)."""
        live = self._source()
        if live is not None:
            self._live = live
            self._rec = dict(live.rec)
            self._text, self._partial = None, False
        else:
            store = self._app._store
            fields, text = store.read_listed(self.id)
            if fields["status"] in _FINISHED_NAMES:
                # The listing fields now; the record's text is parsed when it is wanted.
                self._rec, self._text, self._partial = fields, text, True
                return self
            rec = parse_record(text, "t:" + self.id, store.path)
            if not owner_alive(rec.get("owner")):
                store.sweep()
                rec = store.read_record(self.id)
            self._rec, self._text, self._partial = rec, None, False
        return self

    @property
    def _full(self) -> dict[str, Any]:
        """The whole record: parsed now from the text read with the listing fields, or read
        now if this handle came from a listing."""
        if self._partial:
            if self._text is None:
                self.refresh()
            if self._text is not None:
                rec = parse_record(self._text, "t:" + self.id, self._app._store.path)
                self._rec, self._text, self._partial = rec, None, False
        return self._rec

    async def arefresh(self) -> TaskResult:
        return await asyncio.to_thread(self.refresh)

    # ------------------------------------------------------------------ fields

    @property
    def task_name(self) -> str:
        return self._rec["task_name"]  # type: ignore[no-any-return]

    @property
    def task(self) -> Task | None:
        """The Task registered under ``task_name`` on this App, else None."""
        return self._app._registry.get(self.task_name)

    @property
    def status(self) -> TaskStatus:
        try:
            return _STATUS[self._rec["status"]]
        except KeyError:  # a listing's DAMAGED row: say why, for this record only
            raise damaged("t:" + self.id, self._app._store.path, self._rec["damaged"]) from None

    @property
    def enqueued_at(self) -> datetime | None:
        return to_datetime(self._rec.get("enqueued_at"))

    @property
    def started_at(self) -> datetime | None:
        return to_datetime(self._rec.get("started_at"))

    @property
    def finished_at(self) -> datetime | None:
        return to_datetime(self._rec.get("finished_at"))

    @property
    def last_attempted_at(self) -> datetime | None:
        return to_datetime(self._full.get("last_attempted_at"))

    @property
    def args(self) -> list[Any]:
        if self._args is MISSING:
            live = self._live
            if live is not None and live.args is not MISSING:
                self._args = list(live.args)
            else:
                self._args = self._decode("args")
        return self._args  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        if self._kwargs is MISSING:
            live = self._live
            if live is not None and live.kwargs is not MISSING:
                self._kwargs = dict(live.kwargs)
            else:
                self._kwargs = self._decode("kwargs")
        return self._kwargs  # type: ignore[no-any-return]

    @property
    def backend(self) -> str:
        return self._full.get("backend", "")  # type: ignore[no-any-return]

    @property
    def errors(self) -> list[TaskError]:
        return [TaskError.from_json(e) for e in self._full.get("errors") or []]

    @property
    def hook_errors(self) -> list[TaskError]:
        """Errors raised by this task's hooks and links (recorded, never lost)."""
        return [TaskError.from_json(e) for e in self._full.get("hook_errors") or []]

    @property
    def worker_ids(self) -> list[str]:
        return list(self._full.get("worker_ids") or [])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._full.get("metadata") or {})

    meta = metadata

    @property
    def state(self) -> str:
        return self._full.get("state") or self._rec["status"]  # type: ignore[no-any-return]

    @property
    def result(self) -> Any:
        """While running: the ``meta`` of the last ``update_state``; when finished: the return
        value (None if the task did not succeed)."""
        if self._rec["status"] == "SUCCESSFUL":
            return self.return_value
        return self._full.get("result")

    @property
    def progress(self) -> Progress | None:
        return Progress.from_json(self._rec.get("progress"))

    @property
    def output(self) -> str:
        return self._full.get("output") or ""  # type: ignore[no-any-return]

    @property
    def reason(self) -> str | None:
        """Why the task was cancelled or interrupted, if it was."""
        return self._full.get("reason")

    @property
    def is_finished(self) -> bool:
        return self._rec["status"] in _FINISHED_NAMES

    @property
    def attempts(self) -> int:
        return len(self._full.get("worker_ids") or [])

    @property
    def parent(self) -> TaskResult | GroupResult | None:
        """The previous task of a chain, or a chord callback's header group."""
        if self._parent is None:
            if self._full.get("parent_group"):
                self._parent = self._app.group_result(self._full["parent_group"])
            elif self._full.get("parent_id"):
                self._parent = self._app.result(self._full["parent_id"])
        return self._parent

    # ------------------------------------------------------------------ the outcome

    @property
    def return_value(self) -> Any:
        """The return value if SUCCESSFUL; else raises ResultNotReady, TaskFailed,
        TaskCancelled or TaskInterrupted."""
        status = self._rec["status"]
        if status == "SUCCESSFUL":
            if self._value is MISSING:
                live = self._live
                if live is not None and live.value is not MISSING:
                    self._value = live.value
                else:
                    self._value = self._decode("rv")
            return self._value
        name = f"task {self.task_name}[{self.id}]"
        if status == "FAILED":
            err = self.errors[-1] if self.errors else None
            what = f"{err.exception_class_path}: {err.message}" if err else "unknown error"
            cause = self._exception()
            raise TaskFailed(f"{name} failed: {what}") from cause
        if status == "CANCELLED":
            raise TaskCancelled(f"{name} was cancelled: {self.reason or 'cancelled'}")
        if status == "INTERRUPTED":
            raise TaskInterrupted(
                f"{name} was interrupted: {self.reason or 'its process ended'}; submit it again"
            )
        raise ResultNotReady(f"{name} is {status}; wait() for it or check is_finished")

    def _decode(self, field: str) -> Any:
        enc = self._full.get(field)
        if enc is None:
            return None
        if "u" in enc:
            raise StoreError(
                f"the {field} of task {self.task_name}[{self.id}] could not be pickled "
                f"({enc['u']}), so only the process that ran it had it"
            )
        return self._app._store.decode_value(enc, f"the {field} of task {self.id}")

    def _exception(self) -> BaseException | None:
        enc = self._full.get("exc")
        if not enc:
            return None
        try:
            exc = self._app._store.decode_value(enc, f"the exception of task {self.id}")
        except Exception:
            return None
        return exc if isinstance(exc, BaseException) else None

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: float | None = None) -> TaskResult:
        """Block until finished (woken by a notification for this process's tasks)."""
        live = self._source()
        if live is not None:
            if not live.wait(timeout):
                raise TimeoutError(f"task {self.task_name}[{self.id}] did not finish in {timeout}s")
            return self.refresh()
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            self.refresh()
            if self.is_finished:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.task_name}[{self.id}] did not finish in {timeout}s")
            live = self._app._store.live.get(self.id)
            if live is not None:  # it became ours (e.g. adopted): wait on the event
                return self.wait(None if deadline is None else deadline - time.monotonic())
            time.sleep(
                delay if deadline is None else min(delay, max(0, deadline - time.monotonic()))
            )
            delay = min(delay * 2, 0.1)

    def get(self, timeout: float | None = None) -> Any:
        """``wait()`` then ``return_value``."""
        return self.wait(timeout).return_value

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await().__await__()

    async def _await(self) -> Any:
        live = self._source()
        if live is None:
            while not self.refresh().is_finished:
                await asyncio.sleep(0.02)
            return self.return_value
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake(_: Live) -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        live.callbacks.append(wake)
        if not live.finished:
            await fut
        return self.refresh().return_value

    async def aget_metadata(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.get_metadata)

    def get_metadata(self) -> dict[str, Any]:
        """The stored metadata, fresh from the store (Mognet)."""
        return dict(self._app._store.get_record(self.id).get("metadata") or {})

    def cancel(self) -> bool:
        """READY: it never runs. RUNNING: threads stop at their next progress() or
        check_cancelled(); processes are terminated. False once finished."""
        done = self._app._runtime.cancel(self.id)
        self.refresh()
        return done

    # ------------------------------------------------------------------ display

    def __repr__(self) -> str:
        parts = [f"{self.task_name}[{short_id(self.id)}]", self.status.value]
        prog = self.progress
        if prog is not None and not self.is_finished:
            parts.append(str(prog))
        start, end = self._rec.get("started_at"), self._rec.get("finished_at")
        if start is not None and end is not None:
            parts.append(f"in {format_duration(end - start, precise=True)}")
        if self.cached:
            parts.append("(cached)")
        if self.status is TaskStatus.FAILED and self.errors:
            err = self.errors[-1]
            first = err.message.strip().splitlines()[0] if err.message.strip() else ""
            parts.append(f"{err.exception_class_path}: {first}")
        if self.reason and self.status in (TaskStatus.CANCELLED, TaskStatus.INTERRUPTED):
            parts.append(self.reason)
        return f"<TaskResult {' '.join(parts)}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any] | None:
        from . import views  # the one upward edge: widgets load on first display

        return views.mimebundle(self, include, exclude)

    def __reduce__(self) -> Any:
        return (_restore_result, (self._app._store.path, self.id))

    def __copy__(self) -> TaskResult:
        """A handle on the same task in the same App (no store is opened)."""
        new = TaskResult.__new__(TaskResult)
        new.__dict__.update(self.__dict__)
        new._rec = dict(self._rec)
        return new


_FINISHED_NAMES = frozenset(s.value for s in FINISHED)
_STATUS = {s.value: s for s in TaskStatus}


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


#: Set by ``_app`` at import: the App to use for a store path when a TaskResult is unpickled
#: (injected, so that this module does not import the App).
app_for_store: Any = None


def _restore_result(store: Any, task_id: str) -> TaskResult:
    result: TaskResult = app_for_store(store).result(task_id)
    return result


class GroupResult:
    """The results of a group, map, starmap, chunks or a chord's header, in order."""

    def __init__(self, app: App, group_id: str, results: list[TaskResult]) -> None:
        self._app = app
        self.id = group_id
        self.results = results

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[TaskResult]:
        return iter(self.results)

    def __getitem__(self, i: int) -> TaskResult:
        return self.results[i]

    def refresh(self) -> GroupResult:
        for r in self.results:
            r.refresh()
        return self

    def wait(self, timeout: float | None = None) -> GroupResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r.wait(left)
        return self

    def get(self, timeout: float | None = None) -> list[Any]:
        """The return values in order; raises the first failure's TaskFailed."""
        self.wait(timeout)
        return [r.return_value for r in self.results]

    def __await__(self) -> Generator[Any, None, list[Any]]:
        async def _all() -> list[Any]:
            return [await r for r in self.results]

        return _all().__await__()

    def completed_count(self) -> int:
        """How many members finished SUCCESSFUL (Celery's meaning)."""
        return sum(1 for r in self.refresh().results if r.status is TaskStatus.SUCCESSFUL)

    def counts(self) -> dict[str, int]:
        """How many members are in each status (from the last refresh)."""
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status.value] = out.get(r.status.value, 0) + 1
        return out

    @property
    def is_finished(self) -> bool:
        return all(r.is_finished for r in self.results)

    @property
    def progress(self) -> Progress:
        """Aggregate progress: finished members count 1, running ones their fraction."""
        self.refresh()
        finished = sum(1 for r in self.results if r.is_finished)
        running = [r.progress for r in self.results if not r.is_finished]
        return aggregate_progress(running, finished, len(self.results))

    def cancel(self) -> bool:
        return any([r.cancel() for r in self.results])

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts().items()))
        return f"<GroupResult {short_id(self.id)} {len(self.results)} tasks {counts}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any] | None:
        from . import views

        return views.mimebundle(self, include, exclude)
