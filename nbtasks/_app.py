"""``App``, the composition root, and the default app.

Each method is a few lines that hand over to a collaborator: the store (``store``), the
runtime (``_runtime``: executors, timer, canvas, cancellation) and the task model (``_task``).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

from . import _ports as ports
from . import executors
from ._attempt import Job
from ._canvas import Signature, group
from ._errors import NbtasksError, UnknownTaskId
from ._model import (
    CURRENT,
    FINISHED,
    MISSING,
    SYSTEM_CLOCK,
    Clock,
    Request,
    TaskRecord,
    TaskStatus,
    check_id,
)
from ._options import check_task_options
from ._reader import StoreReader
from ._result import GroupResult, TaskResult
from ._runtime import Done, Hit, Runtime, Waiting
from ._task import Task, resolve_options
from ._timeline import Timeline
from .store import (
    LOCK_TIMEOUT,
    Store,
    new_id,
    no_gc,
    owner_alive,
    parse_task_record,
    summary,
)

if TYPE_CHECKING:
    import diskcache

    from ._ports import Args, Calls, Kwargs, Lineage, Opts, Parent

_STATUS_NAMES = [s.value for s in TaskStatus]


class App(StoreReader):
    """A store, the tasks registered on it, and the executors that run them.

    ``store``: a directory or an open ``diskcache.Cache`` (default: ``$NBTASKS_STORE``, else
    ``./.nbtasks``). ``workers``: threads for thread tasks; ``process_workers``: worker
    processes (default: the number of cores). ``trust=True`` accepts a store written by
    someone else (its pickles are not verified). ``lock_timeout``: seconds a call waits for
    the store's lock (another process creating it, or writing) before ``StoreError`` says it is
    locked. ``read_only=True`` opens the store for reading only (as ``nbtasks list`` does):
    nothing is created, locked or written, so a store you can read but not write opens;
    submitting, cancelling and purging raise ``StoreError``. ``process_start``: how worker
    processes start: ``"fork"`` (forked by a zygote interpreter: the fastest; Linux only),
    ``"spawn"`` (each a new interpreter, connected over loopback TCP: macOS, Windows, anywhere)
    or ``"auto"`` (fork where it is possible, else spawn); default ``$NBTASKS_PROCESS_START``,
    else ``"auto"``.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | diskcache.Cache | None = None,
        name: str = "default",
        workers: int = 4,
        process_workers: int | None = None,
        *,
        trust: bool = False,
        dask: Any = None,
        clock: Clock | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        read_only: bool = False,
        process_start: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        for arg, value in (("workers", workers), ("process_workers", process_workers)):
            if value is None and arg == "process_workers":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        if not isinstance(trust, bool):
            raise TypeError(f"trust must be True or False, got {trust!r}")
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be True or False, got {read_only!r}")
        if (
            isinstance(lock_timeout, bool)
            or not isinstance(lock_timeout, int | float)
            or not 0 < lock_timeout < math.inf
        ):
            raise ValueError(f"lock_timeout must be a number of seconds > 0, got {lock_timeout!r}")
        start = executors.resolve_process_start(process_start)  # "fork" or "spawn"
        if store is None:
            store = os.environ.get("NBTASKS_STORE") or ".nbtasks"
        self.name = name
        self._store = Store(store, trust=trust, lock_timeout=lock_timeout, read_only=read_only)
        settings = {
            "thread": {"workers": workers},
            # app: the tasks that process tasks submit are this App's (a weak reference)
            "process": {
                "workers": process_workers or os.cpu_count() or 2,
                "app": weakref.ref(self),
                "start": start,
            },
            "dask": {"client": dask},
        }
        self._runtime = Runtime(self._store, clock or SYSTEM_CLOCK, name, settings)
        self._registry: dict[str, Task] = {}
        self._cache_lock = threading.Lock()
        ports.register(self)  # handles unpickled in this process read through it

    def __repr__(self) -> str:
        return f"<nbtasks.App {self.name!r} store={str(self._store.path)!r}>"

    def __reduce__(self) -> Any:
        """An App pickles as a reference to its store (how a pickled handle finds its App in
        the process that unpickles it: see ``_ports``)."""
        return (ports.app_for_store, (str(self._store.path),))

    @property
    def store(self) -> Store:
        return self._store

    # ------------------------------------------------------------------ declaring

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(
        self, fn: None = None, /, *, base: type[Task] | None = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        base: type[Task] | None = None,
        **options: Any,
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Declare a task: ``@app.task`` or ``@app.task(name=..., retries=3, ...)``."""
        opts = check_task_options(options)
        if base is not None and not (isinstance(base, type) and issubclass(base, Task)):
            raise TypeError(f"base must be a subclass of nbtasks.Task, got {base!r}")

        def decorate(f: Callable[..., Any]) -> Task:
            if not callable(f):
                raise TypeError(f"@task decorates a function, got {f!r}")
            from ._codec import task_name_of

            cls = base or Task
            t = cls()
            name = opts.get("name") or task_name_of(f)
            t.attach(self, f, {**opts, "name": name})
            t.__doc__ = f.__doc__
            t.__name__ = getattr(f, "__name__", name)
            t.__wrapped__ = f
            self._registry[name] = t  # re-running a cell replaces it (DESIGN principle 6)
            return t

        return decorate(fn) if fn is not None else decorate

    def register(self, cls: type[Task]) -> Task:
        """Register a class-based task (Celery style); returns its instance."""
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register() takes a subclass of nbtasks.Task, got {cls!r}")
        from ._codec import task_name_of

        t = cls()
        name = cls.name or task_name_of(cls)
        t.attach(self, None, {"name": name})
        self._registry[name] = t
        return t

    # ------------------------------------------------------------------ submitting

    # The Submitter seam (_ports): what Task, Signature and the canvas classes call.

    def submit_call(
        self, task: Task, args: Args, kwargs: Kwargs, options: Opts, *, lineage: Parent = None
    ) -> TaskResult:
        """One task (``delay``, ``apply_async``, ``apply``, a Signature's)."""
        rt = self._runtime
        opts, extras = resolve_options(task, options, rt.clock.time())
        task_id = extras["task_id"]
        if task_id is not None:
            self._check_new_id(task_id)
        job = rt.build(
            task, args, kwargs, opts, extras["metadata"], task_id, extra=_lineage(lineage)
        )
        fresh = task_id is not None  # checked again, atomically, as the record is written
        if not opts.cache:
            rt.submit([job], fresh_ids=fresh)
            return TaskResult(job.id, self, live=job.live, rec=job.live.rec)
        with self._cache_lock:
            key = rt.key(task, args, kwargs, opts)
            hit = rt.lookup([key], [opts.cache_ttl])[0]
            if hit is not None:
                return self._reused(hit)
            rt.submit([job], cache_keys=[(key, job)] if key else [], fresh_ids=fresh)
        return TaskResult(job.id, self, live=job.live, rec=job.live.rec)

    def _reused(self, hit: Hit, parent: TaskResult | GroupResult | None = None) -> TaskResult:
        """The handle of a cache hit (``cached`` True): of a job in flight here, of a task this
        process owns, or made from the listing row the lookup read (no further read)."""
        if isinstance(hit, Job):
            return TaskResult(hit.id, self, live=hit.live, cached=True, parent=parent)
        live = self._store.live.get(hit["id"])
        if live is not None or parent is not None:
            return TaskResult(hit["id"], self, live=live, cached=True, parent=parent)
        result = TaskResult.from_summary(self, hit)
        result.cached = True
        return result

    def _check_new_id(self, task_id: str) -> None:
        try:
            self._store.get_record(task_id)
        except UnknownTaskId:
            return
        raise ValueError(f"task_id={task_id!r} is already used in this store; pick a new id")

    def submit_many(
        self, task: Task, calls: Calls, options: Opts, *, chunk: bool, lineage: Parent = None
    ) -> GroupResult:
        """map / starmap / chunks: every record, the group's included, in one transaction."""
        rt = self._runtime
        opts, extras = resolve_options(task, options, rt.clock.time())
        if extras["task_id"] is not None:
            raise ValueError("task_id cannot be given for a group of tasks")
        gid = new_id()
        extra = {"group_id": gid, **_lineage(lineage)}
        # Some 20 objects per task, none of them garbage: the collector's full passes would
        # walk them all again each time their number grew by a quarter (a 20k map: 112-129
        # µs/task with it running, 99-116 paused; docs/design.md, "no garbage cycles").
        meta = extras["metadata"]
        with no_gc():
            if not opts.cache:
                jobs = [
                    rt.build(task, a, kw, opts, meta, None, chunk=chunk, extra=extra)
                    for a, kw in calls
                ]
                members = [TaskResult(j.id, self, live=j.live, rec=j.live.rec) for j in jobs]
                rt.submit(jobs, [_group_record(gid, members, task.name)])
                return GroupResult(self, gid, members)
            # Member by member (SPEC 6): a hit is reused, the rest computed; the same call
            # twice in one map runs once, both members being that one task (as two delays).
            keys = [rt.key(task, a, kw, opts, chunk=chunk) for a, kw in calls]
            with self._cache_lock:
                hits = rt.lookup(keys, [opts.cache_ttl] * len(keys))
                jobs, members, cache_keys = [], [], []
                new: dict[str, Job] = {}
                for (a, kw), key, hit in zip(calls, keys, hits, strict=True):
                    if hit is None and key is not None and key in new:
                        hit = new[key]
                    if hit is not None:
                        members.append(self._reused(hit))
                        continue
                    job = rt.build(task, a, kw, opts, meta, None, chunk=chunk, extra=extra)
                    jobs.append(job)
                    members.append(TaskResult(job.id, self, live=job.live, rec=job.live.rec))
                    if key is not None:
                        new[key] = job
                        cache_keys.append((key, job))
                rt.submit(jobs, [_group_record(gid, members, task.name)], cache_keys=cache_keys)
            return GroupResult(self, gid, members)

    def submit_canvas(
        self, items: Sequence[Signature | group], options: Opts, *, lineage: Parent = None
    ) -> TaskResult | GroupResult:
        """Chains, groups and chords: stages committed together; later stages wait. Each link's
        parent is the link before it; the root of every link is the submitting task's root,
        else the first link."""
        first = _lineage(lineage)
        root = first.get("root_id")
        rt = self._runtime
        now = rt.clock.time()
        jobs, waiting, groups, cache_keys = [], [], [], []
        prev: list[Job | Done] = []
        prev_result: TaskResult | GroupResult | None = None
        prev_group: str | None = None
        result: TaskResult | GroupResult | None = None
        for stage_no, item in enumerate(items):
            sigs = item.tasks if isinstance(item, group) else [item]
            gid = new_id() if isinstance(item, group) else None
            stage: list[Job | Done] = []
            members: list[TaskResult] = []
            last = stage_no == len(items) - 1
            for sig in sigs:
                call = {**sig.options, **(options if stage_no == 0 else {})}
                opts, extras = resolve_options(sig.task, call, now)
                args = sig.args
                if prev and not sig.immutable:
                    sig.task.check_args((None, *args), sig.kwargs)  # the parent's value first
                else:
                    sig.task.check_args(args, sig.kwargs)
                if prev and not sig.immutable and all(isinstance(d, Done) for d in prev):
                    # Every parent was a cache hit: the parent's value is known now.
                    values = [d.value for d in prev if isinstance(d, Done)]
                    args = (values if prev_group is not None else values[0], *args)
                known = not prev or sig.immutable or args is not sig.args
                key = None
                if opts.cache and known and extras["task_id"] is None:
                    key = rt.key(sig.task, args, sig.kwargs, opts)
                    hit = self._canvas_hit(key, opts.cache_ttl, last)
                    if hit is not None:
                        members.append(self._reused(hit, prev_result))
                        stage.append(self._as_dependency(hit))
                        continue
                extra: dict[str, Any] = {"group_id": gid, "root_id": root}
                if prev_group is not None:
                    extra["parent_group"] = prev_group
                elif prev:
                    extra["parent_id"] = prev[0].id
                else:
                    extra["parent_id"] = first.get("parent_id")
                job = rt.build(
                    sig.task,
                    args,
                    dict(sig.kwargs),
                    opts,
                    extras["metadata"],
                    extras["task_id"],
                    check=False,
                    extra=extra,
                )
                if prev and not known:
                    waiting.append(Waiting(job, list(prev), prev_group is not None, sig.immutable))
                elif prev:  # its arguments are known: it waits for its parents only to start
                    waiting.append(Waiting(job, list(prev), prev_group is not None, True))
                if key is not None:
                    cache_keys.append((key, job))
                stage.append(job)
                jobs.append(job)
                members.append(
                    TaskResult(job.id, self, live=job.live, rec=job.live.rec, parent=prev_result)
                )
            root = root or stage[0].id
            if gid is not None:
                groups.append(_group_record(gid, members, None))
                result = GroupResult(self, gid, members)
            else:
                result = members[0]
            prev, prev_result, prev_group = stage, result, gid
        with self._cache_lock:
            rt.submit(jobs, groups, waiting, cache_keys)
        assert result is not None
        return result

    def _canvas_hit(self, key: str | None, ttl: float | None, last: bool) -> Hit | None:
        """A canvas member's cache hit. One that later links wait for must give them its
        value: a SUCCESSFUL result, or a job in flight in this process (whose end wakes
        them); a task running in another process is not waited on here, so it is computed."""
        if key is None:
            return None
        hit = self._runtime.lookup([key], [ttl])[0]
        if hit is None or last or isinstance(hit, Job):
            return hit
        return hit if hit["status"] == TaskStatus.SUCCESSFUL else None

    def _as_dependency(self, hit: Hit) -> Job | Done:
        """A cache hit as what the next link waits for: the job, or its stored value."""
        if isinstance(hit, Job):
            return hit
        if hit["status"] != TaskStatus.SUCCESSFUL:  # the last stage: nothing waits for it
            return Done(hit["id"], MISSING)
        return Done(hit["id"], TaskResult(hit["id"], self).return_value)

    def submit(self, request: Request, *, lineage: Parent = None) -> TaskResult:
        """Mognet: submit a Request made by ``task.create_request(...)``."""
        if not isinstance(request, Request):
            raise TypeError(f"submit() takes a Request (task.create_request(...)), got {request!r}")
        task = self._registry.get(request.task_name)
        if task is None:
            raise ValueError(
                f"no task named {request.task_name!r} is registered on {self!r}; "
                f"registered: {', '.join(sorted(self._registry)) or 'none'}"
            )
        options: dict[str, Any] = {"metadata": dict(request.metadata), "priority": request.priority}
        if request.id is not None:
            options["task_id"] = request.id
        result = self.submit_call(
            task, tuple(request.args), dict(request.kwargs), options, lineage=lineage
        )
        request.id = result.id
        return result

    async def run(self, request: Request) -> Any:
        """Mognet: submit the Request and await its return value."""
        return await self.submit(request)

    # ------------------------------------------------------------------ reading

    # The Results seam (_ports): what TaskResult and GroupResult read and cancel through;
    # result, group_result, live, read_listed and decode are StoreReader's.

    def read_record(self, task_id: str, text: str | None = None) -> TaskRecord:
        """The committed record (parsed from ``text`` if given). An unfinished one whose owner
        process is gone is swept first (INTERRUPTED), as opening the store would."""
        store = self._store
        if text is None:
            rec = store.read_record(task_id)
        else:
            rec = parse_task_record(text, "t:" + task_id, store.path)
        if rec["status"] not in FINISHED and not owner_alive(rec.get("owner")):
            store.sweep()
            rec = store.read_record(task_id)
        return rec

    def cancel(self, task_id: str) -> bool:
        """Cancel a task (see ``TaskResult.cancel``); False once it has finished."""
        return self._runtime.cancel(task_id)

    def registered(self, name: str) -> Task | None:
        return self._registry.get(name)

    def results(
        self,
        status: str | TaskStatus | None = None,
        task_name: str | None = None,
        limit: int | None = None,
    ) -> list[TaskResult]:
        """Stored results, newest first (read as JSON: nothing is unpickled)."""
        status = _listing_filters(status, task_name, limit)
        rows = self._store.listing(status=status, name=task_name, limit=limit)
        with no_gc():  # 100k handles: the collector would walk them over and over (2.4x)
            return [TaskResult.from_summary(self, summary(row)) for row in rows]

    def timeline(
        self,
        limit: int | None = None,
        status: str | TaskStatus | None = None,
        task_name: str | None = None,
    ) -> Timeline:
        """What ran when: a Gantt chart of the newest ``limit`` tasks (by ``status`` and
        ``task_name`` as ``results()`` selects them), one lane per worker and one bar per
        attempt (``_timeline``). Drawn from the store each time it is shown; in a notebook a
        live widget redrawn while its tasks run. Nothing is unpickled."""
        status = _listing_filters(status, task_name, limit)
        store = self._store
        title = " ".join(
            f"{k}={v}" for k, v in (("task_name", task_name), ("status", status)) if v is not None
        )
        return Timeline(lambda: store.attempt_records(status, task_name, limit), title)

    def purge(
        self,
        older_than: float | timedelta | None = None,
        status: str | TaskStatus | Iterable[str | TaskStatus] | None = None,
        task_name: str | None = None,
        *,
        vacuum: bool = False,
    ) -> int:
        """Delete finished results (older_than: against finished_at; status: one finished
        status or several; task_name: that task's only), with their values and cache keys;
        returns how many. ``vacuum=True`` then gives the space back to the file system
        (``Store.vacuum()``: it rewrites the database, so it takes a moment)."""
        if not isinstance(vacuum, bool):
            raise TypeError(f"vacuum must be True or False, got {vacuum!r}")
        if task_name is not None and (not isinstance(task_name, str) or not task_name):
            raise TypeError(
                f"task_name must be a task's name (a non-empty str, e.g. task.name), "
                f"got {task_name!r}"
            )
        cutoff = None
        if older_than is not None:
            seconds = (
                older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
            )
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not seconds >= 0  # NaN too: it would purge everything
            ):
                raise ValueError(
                    f"older_than must be seconds >= 0 or a timedelta, got {older_than!r}"
                )
            cutoff = self._runtime.clock.time() - seconds
        statuses = None
        if status is not None:
            if isinstance(status, str) or not isinstance(status, Iterable):
                statuses = [_status(status, "status")]
            else:
                statuses = [_status(s, "status") for s in status]
            if not statuses:
                raise ValueError("purge(status=[]): name at least one finished status, or None")
            for name in statuses:
                if TaskStatus(name) not in FINISHED:
                    raise ValueError(f"purge(status={name!r}): only finished tasks can be purged")
        n = self._store.purge(cutoff, statuses, task_name)
        if vacuum:
            self._store.vacuum()
        return n

    def cache_clear(self, task: Task) -> int:
        """``task.cache_clear()``: forget the task's reusable results (every code version) in
        one transaction, and its runs in flight here; returns how many were forgotten."""
        name = task.name or ""
        with self._cache_lock:
            keys = self._store.cache_clear(name)
            self._runtime.forget(keys, name)
        return len(keys)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop the executors (waiting for running tasks if ``wait``) and flush the store."""
        ports.unregister(self)
        self._runtime.shutdown(wait, cancel_pending)
        if wait:
            self._store.close()
        else:
            self._store.flush()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


def _group_record(gid: str, members: list[TaskResult], name: str | None) -> dict[str, Any]:
    """A group's stored record: its members' ids in order, reused ones (cache hits, which may
    belong to an earlier group too) included, so ``app.group_result(id)`` finds them all, and
    which of them were reused, so its view says so after a restart too."""
    rec: dict[str, Any] = {"id": gid, "members": [m.id for m in members], "task_name": name}
    reused = [m.id for m in members if m.cached]
    if reused:
        rec["reused"] = reused
    return rec


def _status(value: Any, argument: str) -> str:
    name = value.value if isinstance(value, TaskStatus) else value
    if name not in _STATUS_NAMES:
        raise ValueError(
            f"{argument}={value!r} is not a status; use one of {', '.join(_STATUS_NAMES)}"
        )
    return str(name)


def _listing_filters(status: Any, task_name: str | None, limit: int | None) -> str | None:
    """``results()``'s and ``timeline()``'s selection checked: the status's name, or None."""
    if task_name is not None:
        check_id(task_name, "task_name")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")
    return None if status is None else _status(status, "status")


# --------------------------------------------------------------------------- the default app

_default: App | None = None
_default_lock = threading.Lock()


def default_app() -> App:
    """The default App, created on first use from the settings of ``configure()``."""
    global _default
    app = _default
    if app is None:
        with _default_lock:
            if _default is None:
                _default = App(**_default_settings)
            app = _default
    return app


_default_settings: dict[str, Any] = {}


def configure(**settings: Any) -> App:
    """Settings of the default app (store, name, workers, process_workers, trust, dask).
    Replaces it; tasks declared on the old default app move to the new one."""
    global _default
    new = App(**settings)
    with _default_lock:
        old, _default = _default, new
        _default_settings.clear()
        _default_settings.update(settings)
    if old is not None:
        for name, t in old._registry.items():
            t.app = new
            new._registry[name] = t
        old.shutdown(wait=False)
    return new


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """``@nbtasks.task``: declare a task on the default app."""
    return default_app().task(fn, **options) if fn is not None else default_app().task(**options)


def _open(path: str | None) -> App:
    """``_ports``' opener: the default app for None or its own store, else a new App."""
    app = default_app()
    if path is None or str(app.store_path) == path:
        return app
    return App(store=path)


ports.set_opener(_open)


def _lineage(given: Lineage | None) -> dict[str, Any]:
    """parent_id and root_id of what is submitted now: ``given`` (a worker process's task),
    else the task running in this thread, if any (Celery's meaning of both)."""
    if given is not None:
        return {"parent_id": given[0], "root_id": given[1]}
    ctx = CURRENT.get()
    if ctx is None:
        return {}
    request = ctx.request
    return {"parent_id": request.id, "root_id": request.root_id or request.id}


__all__ = ["App", "NbtasksError", "configure", "default_app", "task"]
