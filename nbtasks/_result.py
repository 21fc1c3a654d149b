"""``TaskResult`` and ``GroupResult``: handles made of (store, id) plus the last snapshot read.

A handle never holds threads, locks or widgets (DESIGN principle 5), so it pickles, and
``AsyncResult(id)`` in a new kernel builds the same object. For a task this process runs, the
snapshot comes from memory (seen at once, and waits are woken by a notification); otherwise
from the store (waits poll it, backing off from 5 ms to 0.1 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from . import _ports as ports
from ._errors import (
    StoreError,
    TaskError,
    damaged,
)
from ._model import (
    FINISHED,
    MISSING,
    Progress,
    TaskRecord,
    TaskStatus,
    aggregate_progress,
    check_id,
    to_datetime,
)
from ._outcome import failed_error, not_returned_error, restored_exception
from ._text import format_duration, short_id

if TYPE_CHECKING:
    import asyncio

    from ._ports import LiveTask, Results
    from ._task import Task


class _When:
    """A time of the record, as an aware datetime (None until it is set). ``listed``: the
    listing's row has it (else the whole record is read)."""

    def __init__(self, *, listed: bool = True) -> None:
        self.listed = listed
        self.field = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = name

    @overload
    def __get__(self, obj: None, owner: type) -> _When: ...

    @overload
    def __get__(self, obj: TaskResult, owner: type) -> datetime | None: ...

    def __get__(self, obj: TaskResult | None, owner: type) -> _When | datetime | None:
        if obj is None:
            return self
        rec = obj._rec if self.listed else obj._full
        return to_datetime(cast("float | None", rec.get(self.field)))


class Displayed(list[dict[str, Any]]):
    """``TaskResult.displayed``: the kept bundles, with how many were displayed in all
    (``total``) and how many the bound left out (``dropped``, the oldest)."""

    def __init__(self, bundles: Any = (), *, total: int = 0, dropped: int = 0) -> None:
        super().__init__(bundles)
        self.total = max(total, len(self))
        self.dropped = dropped

    def by_type(self) -> dict[str, int]:
        """The bundles counted by their richest type (an image before HTML before Markdown
        before JSON; text/plain when that is all), most first: ``{"image/png": 2, ...}``."""
        counts: dict[str, int] = {}
        for bundle in self:
            mime = next((m for m in _RICHEST if m in bundle), "text/plain")
            counts[mime] = counts.get(mime, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


_RICHEST = ("image/png", "image/svg+xml", "text/html", "text/markdown", "application/json")


def _count(value: Any) -> int:
    """A count the store holds (a record is data: anything else reads as 0)."""
    return value if type(value) is int and value >= 0 else 0


class TaskResult:
    """The state and outcome of one task (django-tasks' TaskResult, with Celery's extras).

    ``nbtasks.AsyncResult`` is this class, as in Celery: every handle ``delay()`` returns is
    one, and ``AsyncResult(task_id, app=None)`` builds the stored handle of any task.

    ``status``, ``state``, ``result``, ``progress``, ``metadata`` and ``output`` are current on
    every read (SPEC 5): this process's live record for a task it owns, else one indexed row of
    the store (a finished task's are final, and read once). The other fields are the snapshot
    that ``refresh()``, ``wait()`` and ``get()`` reload.
    """

    def __init__(
        self,
        task_id: str,
        app: Results | None = None,
        *,
        live: LiveTask | None = None,
        rec: TaskRecord | None = None,
        cached: bool = False,
        parent: TaskResult | GroupResult | None = None,
    ) -> None:
        if app is None:
            app = ports.app_for_store(None)  # the default app
        if rec is None:
            check_id(task_id, "task_id")  # a str that UTF-8 can hold: the store's keys are
            live = live or app.live(task_id)
            if live is None:  # a short id (as views show it) or the start of one: a full id
                full = app.resolve_id(task_id)  # is returned as it is, without a query
                if full != task_id:
                    task_id, live = full, app.live(full)
            if live is not None:
                rec = live.rec
        self._app = app
        self.id = task_id
        self._live = live
        self.cached = cached
        self._parent = parent
        self._rec: TaskRecord = rec.copy() if rec is not None else cast(TaskRecord, {})
        self._partial = False  # _rec holds only a listing's fields (see from_summary, refresh)
        if rec is None:
            self.refresh()  # UnknownTaskId if the store has no such task

    @classmethod
    def from_summary(cls, app: Results, fields: TaskRecord) -> TaskResult:
        """A handle made from a listing's fields (status, name, the times, progress: see
        ``Store.listing()``; a damaged record's row holds ``damaged``, the error to raise when
        its status is read). The first read of any other field loads the whole record, as
        ``refresh()`` would (100,000 rows: ~0.2 s, against ~1 s to parse every record)."""
        self = cls.__new__(cls)
        self._app = app
        self.id = fields["id"]
        self._rec = fields
        self._partial = True
        return self

    # Defaults until set: a listed handle sets none of these, __init__ only the first three.
    _live: LiveTask | None = None
    _text: str | None = None  # a finished record's text, not parsed yet (see refresh)
    _final: TaskRecord | None = None  # the record once a current read saw it finished
    cached: bool = False
    _parent: TaskResult | GroupResult | None = None
    _value: Any = MISSING
    _mapped: Any = MISSING  # the return value, its arrays mapped from the store (get(mmap=True))
    _args: Any = MISSING
    _kwargs: Any = MISSING

    # ------------------------------------------------------------------ loading

    def _source(self) -> LiveTask | None:
        live = self._live
        if live is None:
            live = self._app.live(self.id)
        return live

    def refresh(self) -> TaskResult:
        """Reload every field (from memory for this process's tasks, else from the store)."""
        live = self._source()
        if live is not None:
            self._live = live
            self._rec = live.rec.copy()
            self._text, self._partial = None, False
            return self
        fields, text = self._app.read_listed(self.id)
        if fields["status"] in FINISHED:
            # The listing fields now; the record's text is parsed when it is wanted.
            self._rec, self._text, self._partial = fields, text, True
            return self
        self._rec = self._app.read_record(self.id, text)
        self._text, self._partial = None, False
        return self

    @property
    def _full(self) -> TaskRecord:
        """The whole snapshot record: parsed now from the text read with the listing fields,
        or read now if this handle came from a listing."""
        if self._partial:
            if self._text is None:
                self.refresh()
            if self._text is not None:
                rec = self._app.read_record(self.id, self._text)
                self._rec, self._text, self._partial = rec, None, False
        return self._rec

    def _now(self, full: bool = True) -> TaskRecord:
        """The record as it is now, for the fields that are current on every read (``full``:
        more than the listing's status and progress are wanted)."""
        live = self._source()
        if live is not None:
            self._live = live
            return live.rec
        if self._rec.get("status") in FINISHED:
            # A finished task's record never changes again.
            return self._full if full else self._rec
        if "damaged" in self._rec:
            return self._rec  # a listing's damaged row: status says why, for this record only
        final = self._final
        if final is not None:
            return final
        rec = self._app.read_record(self.id)
        if rec["status"] in FINISHED:
            self._final = rec
        return rec

    async def arefresh(self) -> TaskResult:
        import asyncio  # here: a worker process imports this module without asyncio (~30 ms)

        return await asyncio.to_thread(self.refresh)

    # ------------------------------------------------------------------ fields

    @property
    def app(self) -> Results:
        """The App this handle reads through (Celery's ``AsyncResult.app``)."""
        return self._app

    @property
    def task_name(self) -> str:
        return self._rec["task_name"]

    @property
    def task(self) -> Task | None:
        """The Task registered under ``task_name`` on this App, else None."""
        return self._app.registered(self.task_name)

    @property
    def status(self) -> TaskStatus:
        rec = self._now(full=False)
        try:
            return _STATUS[rec["status"]]
        except KeyError:  # a listing's DAMAGED row: say why, for this record only
            raise damaged("t:" + self.id, self._app.store_path, rec["damaged"]) from None

    enqueued_at = _When()
    started_at = _When()
    finished_at = _When()
    last_attempted_at = _When(listed=False)

    @property
    def args(self) -> list[Any]:
        if self._args is MISSING:
            self._args = list(self._argument("args") or ())
        return self._args  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        if self._kwargs is MISSING:
            self._kwargs = dict(self._argument("kwargs") or {})
        return self._kwargs  # type: ignore[no-any-return]

    def _argument(self, what: Literal["args", "kwargs"]) -> Any:
        """The call's arguments: as their owner keeps them in memory, else decoded."""
        live = self._live
        kept = MISSING if live is None else live.args if what == "args" else live.kwargs
        return self._decode(what, self._full) if kept is MISSING else kept

    @property
    def backend(self) -> str:
        return self._full.get("backend", "")

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
    def parent_id(self) -> str | None:
        """The task that submitted this one, or the previous link of its chain (Celery)."""
        return self._full.get("parent_id")

    @property
    def root_id(self) -> str:
        """The first task of this one's line: its own id if nothing submitted it (Celery)."""
        return self._full.get("root_id") or self.id

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._now().get("metadata") or {})

    meta = metadata

    @property
    def state(self) -> str:
        rec = self._now()
        return rec.get("state") or rec["status"]

    @property
    def result(self) -> Any:
        """While running: the ``meta`` of the last ``update_state``; when finished: the return
        value (None if the task did not succeed)."""
        rec = self._now()
        if rec["status"] == TaskStatus.SUCCESSFUL:
            return self._return_value(rec)
        return rec.get("result")

    @property
    def progress(self) -> Progress | None:
        return Progress.from_json(self._now(full=False).get("progress"))

    @property
    def output(self) -> str:
        return self._now().get("output") or ""

    @property
    def usage(self) -> dict[str, Any] | None:
        """The last attempt's resource usage, recorded when it ended: ``{"cpu_time": seconds,
        "max_rss": bytes or None}``. ``cpu_time`` is the CPU time of the task's thread (thread,
        ``async def`` and Dask tasks: for ``async def`` the event loop's thread while the attempt
        ran) or of its worker process (process tasks); ``max_rss`` the worker process's peak
        resident memory, None for a thread (it shares its process). None until an attempt ends,
        and for an attempt whose worker died (``WorkerLost`` says the peak memory it saw)."""
        usage = self._now().get("usage")
        return dict(usage) if isinstance(usage, dict) else None

    @property
    def inner_bars(self) -> list[tuple[str, float, float | None]]:
        """The task's open inner tqdm bars while it runs (a loop over batches inside a loop
        over epochs): ``(description, n, total or None)``, outermost first. The outermost bar
        is the task's own progress; these are drawn as sub-bars under it. A record is data:
        an entry that is not such a triple is left out."""
        bars = self._now().get("bars")
        out: list[tuple[str, float, float | None]] = []
        for bar in bars if isinstance(bars, list) else []:
            if (
                isinstance(bar, list)
                and len(bar) == 3
                and isinstance(bar[0], str)
                and type(bar[1]) in (int, float)
                and (bar[2] is None or type(bar[2]) in (int, float))
            ):
                out.append((bar[0], float(bar[1]), None if bar[2] is None else float(bar[2])))
        return out

    @property
    def displayed(self) -> Displayed:
        """The MIME bundles the task displayed (``display(...)``, matplotlib figures), in
        order: a list of ``{mime type: data}`` dicts, binary data as base64 text (nbformat's
        form). Bounded: the newest are kept; ``.dropped`` counts those left out, ``.total``
        all it displayed (a ``clear_output()`` in the task empties the list). A bundle whose
        signature does not verify (a store is data, SPEC 10) comes as its text/plain alone."""
        rec = self._now()
        bundles = rec.get("displayed")
        bundles = bundles if isinstance(bundles, list) else []
        if self._app is not None:
            shown = self._app.trusted_displays(bundles, rec.get("displayed_sigs"))
        else:  # no store to verify against: text only
            shown = [
                {"text/plain": str(b.get("text/plain", ""))} for b in bundles if isinstance(b, dict)
            ]
        return Displayed(
            shown,
            total=_count(rec.get("displayed_total")),
            dropped=_count(rec.get("displayed_dropped")),
        )

    @property
    def reason(self) -> str | None:
        """Why the task was cancelled or interrupted, if it was."""
        return self._full.get("reason")

    @property
    def is_finished(self) -> bool:
        return self._now(full=False)["status"] in FINISHED

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
        """The return value if SUCCESSFUL; else raises ResultNotReady, TaskFailed (the task's
        own exception as its ``__cause__`` where it can be restored), TaskCancelled or
        TaskInterrupted (django-tasks). For a task declared with ``cache_mmap=True``, its
        arrays are mapped read-only from the store, as ``get(mmap=True)`` gives them."""
        rec = self._now()
        if rec["status"] == TaskStatus.SUCCESSFUL:
            return self._return_value(rec)
        if rec["status"] == TaskStatus.FAILED:
            raise failed_error(self._label, rec) from self._exception(rec)
        raise not_returned_error(self._label, rec)

    def _return_value(self, rec: TaskRecord, mmap: bool | None = None) -> Any:
        if mmap is None:
            task = self.task
            mmap = task is not None and task.cache_mmap is True
        if mmap:
            # From the store even when this process holds the value: a mapping is of the file.
            if self._mapped is MISSING:
                self._mapped = self._decode("rv", rec, mmap=True)
            return self._mapped
        if self._value is MISSING:
            live = self._live
            if live is not None and live.value is not MISSING:
                self._value = live.value
            else:
                self._value = self._decode("rv", rec)
        return self._value

    @property
    def _label(self) -> str:
        return f"task {self.task_name}[{self.id}]"

    def _decode(
        self, field: Literal["args", "kwargs", "rv", "exc"], rec: TaskRecord, mmap: bool = False
    ) -> Any:
        enc = rec.get(field)
        if enc is None:
            return None
        if "u" in enc:
            raise StoreError(
                f"the {field} of task {self.task_name}[{self.id}] could not be pickled "
                f"({enc['u']}), so only the process that ran it had it"
            )
        return self._app.decode(enc, f"the {field} of task {self.id}", mmap)

    def _exception(self, rec: TaskRecord) -> BaseException | None:
        return restored_exception(self._app, self.id, rec)

    def _outcome(self, propagate: bool, mmap: bool | None = None) -> Any:
        """A finished task's return value, or what it raised (raised, or returned if not
        ``propagate``)."""
        rec = self._now()
        if rec["status"] == TaskStatus.SUCCESSFUL:
            return self._return_value(rec, mmap)
        error: BaseException
        if rec["status"] == TaskStatus.FAILED:
            restored = self._exception(rec)
            error = restored if restored is not None else failed_error(self._label, rec)
        else:
            error = not_returned_error(self._label, rec)
        if not propagate:
            return error
        raise error

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
            if self.refresh()._rec["status"] in FINISHED:  # the snapshot just read
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.task_name}[{self.id}] did not finish in {timeout}s")
            live = self._app.live(self.id)
            if live is not None:  # it became ours (e.g. adopted): wait on the event
                return self.wait(None if deadline is None else deadline - time.monotonic())
            time.sleep(
                delay if deadline is None else min(delay, max(0, deadline - time.monotonic()))
            )
            delay = min(delay * 2, 0.1)

    def get(
        self, timeout: float | None = None, propagate: bool = True, mmap: bool | None = None
    ) -> Any:
        """``wait()``, then the return value. A failed task raises what it raised (restored,
        its traceback text as ``__cause__``), or ``TaskFailed`` where that cannot be restored;
        CANCELLED / INTERRUPTED raise ``TaskCancelled`` / ``TaskInterrupted``.
        ``propagate=False`` returns the exception instead of raising it (Celery).

        ``mmap=True``: the value's arrays (numpy's, and what holds them) are read-only
        memory maps of the store's value file, as joblib's ``mmap_mode="r"`` gives them: no
        read, no copy (a value without large arrays reads as usual). ``None``: as the task's
        ``cache_mmap`` option says; ``False``: read into memory."""
        if mmap is not None and not isinstance(mmap, bool):
            raise TypeError(f"mmap must be True, False or None, got {mmap!r}")
        return self.wait(timeout)._outcome(propagate, mmap)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await().__await__()

    async def _await(self) -> Any:
        """``await result``: as ``get()``, without blocking the event loop."""
        import asyncio

        live = self._source()
        if live is None:
            while self.refresh()._rec["status"] not in FINISHED:
                await asyncio.sleep(0.02)
            return self._outcome(True)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake(_: LiveTask) -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        live.callbacks.append(wake)
        if not live.finished:
            await fut
        return self.refresh()._outcome(True)

    async def aget_metadata(self) -> dict[str, Any]:
        import asyncio

        return await asyncio.to_thread(self.get_metadata)

    def get_metadata(self) -> dict[str, Any]:
        """The stored metadata, fresh from the store (Mognet)."""
        live = self._app.live(self.id)
        rec = live.rec if live is not None else self._app.read_record(self.id)
        return dict(rec.get("metadata") or {})

    def cancel(self) -> bool:
        """READY: it never runs. RUNNING: threads stop at their next progress() or
        check_cancelled(); processes are terminated. False once finished."""
        done = self._app.cancel(self.id)
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

    @property
    def _ipython_display_(self) -> Callable[[], None] | None:
        """IPython's display (preferred to ``_repr_mimebundle_``), in a kernel only: the widget
        as an output the view updater can replace, so a saved notebook shows how the task
        ended. None elsewhere, so that IPython falls back to ``_repr_mimebundle_``."""
        from . import views

        return views.live_displayer(self)

    def __reduce__(self) -> Any:
        """(app, id): the app pickles as a reference to its store (see ``_ports``)."""
        return (_restore_result, (self._app, self.id))

    def __copy__(self) -> TaskResult:
        """A handle on the same task in the same App (no store is opened)."""
        new = TaskResult.__new__(TaskResult)
        new.__dict__.update(self.__dict__)
        new._rec = self._rec.copy()
        return new


#: Celery's name for the handle class: ``nbtasks.AsyncResult(task_id, app=None)``.
AsyncResult = TaskResult

_STATUS = {s.value: s for s in TaskStatus}


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _restore_result(app: Results, task_id: str) -> TaskResult:
    return app.result(task_id)


def _restore_group(app: Results, group_id: str) -> GroupResult:
    return app.group_result(group_id)


class GroupResult:
    """The results of a group, map, starmap, chunks or a chord's header, in order."""

    def __init__(self, app: Results, group_id: str, results: list[TaskResult]) -> None:
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

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """The return values in order; raises what the first failed member raised (as
        ``TaskResult.get``); ``propagate=False``: that member's exception in its place."""
        self.wait(timeout)
        return [r._outcome(propagate) for r in self.results]

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

    def __reduce__(self) -> Any:
        return (_restore_group, (self._app, self.id))

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts().items()))
        return f"<GroupResult {short_id(self.id)} {len(self.results)} tasks {counts}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any] | None:
        from . import views

        return views.mimebundle(self, include, exclude)

    @property
    def _ipython_display_(self) -> Callable[[], None] | None:
        """IPython's display in a kernel: the group's widget as an output the updater can
        replace (None elsewhere: ``_repr_mimebundle_``)."""
        from . import views

        return views.live_displayer(self)
