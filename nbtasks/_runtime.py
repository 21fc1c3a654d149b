"""The machinery behind an App: submission, scheduling, cancellation and what follows a task.

``Runtime`` is what an ``Attempt`` talks to (the ``_attempt.Runtime`` protocol): it owns the
lock that orders claims against cancels, the executors (created on first use), the supervisor,
and the canvas: tasks that wait for others (chains, chords) are committed READY at submit and
dispatched when what they wait for succeeds, or CANCELLED with a reason naming the task that did
not.

Supervision (timers, time limits, progress samples, cancel requests) is the ``Supervisor``'s
(``_supervisor.py``), on the injected clock; the runtime owns one and acts on what it reports.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from . import executors
from ._attempt import Job, Options
from ._codec import args_repr, cache_key, unpicklable_argument
from ._errors import NbtasksError, StoreError, TaskCancelled, UnknownTaskId
from ._model import FINISHED, Clock, Metadata, Request, TaskRecord, TaskStatus, to_datetime
from ._supervisor import Supervisor
from .store import Live, Store, new_id

if TYPE_CHECKING:
    from ._task import Task


@dataclass(eq=False)
class Done:
    """A dependency that had succeeded when its dependents were submitted: a cache hit,
    whose stored return value feeds the next link as a computed one would."""

    id: str
    value: Any


#: What a cached submit reuses: a job in flight here, or a stored record (live or listed).
Hit = Job | TaskRecord


@dataclass(eq=False)
class Waiting:
    """A job that runs when its dependencies succeed (a chain link or a chord callback)."""

    job: Job
    deps: list[Job | Done]
    all_results: bool  # chord: the list of every dependency's value; chain: the one value
    immutable: bool
    remaining: set[str] = field(default_factory=set)


class Runtime:
    def __init__(self, store: Store, clock: Clock, app_name: str, settings: dict[str, Any]) -> None:
        self.store = store
        self.clock = clock
        self.app_name = app_name
        self.settings = settings
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.waiting: dict[str, list[Waiting]] = {}  # dependency id -> jobs waiting on it
        self.inflight: dict[str, Job] = {}  # cache key -> job in flight in this process
        self._executors: dict[str, executors.Executor] = {}
        self._executors_lock = threading.Lock()
        self.supervisor = Supervisor(store, clock, self._cancel_requested, self._due)
        self.closed = False

    # ------------------------------------------------------------------ executors

    def executor(self, name: str) -> executors.Executor:
        ex = self._executors.get(name)
        if ex is None:
            with self._executors_lock:
                ex = self._executors.get(name)
                if ex is None:
                    if self.closed:
                        raise RuntimeError("this App has been shut down; create a new one")
                    ex = self._executors[name] = executors.create(
                        name, self, **self.settings.get(name, {})
                    )
        return ex

    # ------------------------------------------------------------------ building jobs

    def build(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
        metadata: Metadata,
        task_id: str | None,
        *,
        chunk: bool = False,
        check: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Job:
        """Validate the arguments and encode the READY record (nothing is stored yet)."""
        if check and not chunk:
            task.check_args(args, kwargs)
        tid = task_id or new_id()
        store = self.store
        try:
            enc_args = store.encode_value(tid, "args", list(args))
            enc_kwargs = store.encode_value(tid, "kwargs", kwargs)
        except TypeError as exc:
            if opts.executor in ("process", "dask"):
                raise TypeError(
                    _unpicklable_argument(task, args, kwargs, opts.executor, exc)
                ) from None
            enc_args = enc_kwargs = {"u": str(exc)}  # thread tasks keep them in memory only
        now = self.clock.time()
        # Fields that are None, empty or zero are left out (readers use .get): a smaller
        # record is cheaper to encode on every commit.
        rec: TaskRecord = {
            "id": tid,
            "task_name": task.name or "",
            "status": TaskStatus.READY.value,
            "enqueued_at": now,
            "args_repr": args_repr(args, kwargs),
            "args": enc_args,
            "kwargs": enc_kwargs,
            "backend": self.app_name,
            "errors": [],
            "worker_ids": [],
            "metadata": json.loads(json.dumps(metadata)) if metadata else {},
            "owner": store.owner,
            "executor": opts.executor,
        }
        if opts.priority:
            rec["priority"] = opts.priority
        if opts.eta is not None:
            rec["eta"] = opts.eta
        if opts.expires is not None:
            rec["expires"] = opts.expires
        if opts.retries:
            rec["max_retries"] = opts.retries
        if chunk:
            rec["chunk"] = True
        if extra:
            rec.update(cast(TaskRecord, {k: v for k, v in extra.items() if v is not None}))
        live = Live(rec, args, kwargs)
        request = Request(
            task_name=task.name or "",
            args=list(args),
            kwargs=kwargs,
            id=tid,
            metadata=Metadata.trusted(metadata),
            priority=opts.priority,
            eta=to_datetime(opts.eta),
            expires=to_datetime(opts.expires),
            parent_id=rec.get("parent_id"),
            root_id=rec.get("root_id") or tid,
        )
        job = Job(live, task, args, kwargs, request, opts, chunk=chunk)
        if opts.executor == "process":  # the task itself must pickle too: fail before storing
            job.payload = self.executor("process").encode(task, opts)  # type: ignore[attr-defined]
        return job

    # ------------------------------------------------------------------ submitting

    def key(
        self,
        task: Task,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: Options,
        *,
        chunk: bool = False,
    ) -> str | None:
        """The cache key of a call: the task's name and code, and its arguments less those in
        ``cache_ignore``. A chunk's key is its whole list of calls (a chunk of other items, or
        of another size, is another key). None when the arguments cannot be hashed (they do
        not pickle): such a call is not cached (a process task's submit then fails on them,
        with the message that names the argument). Arguments that do not fit the signature
        raise its TypeError (only checked here with ``cache_ignore``, which binds them)."""
        ignore = opts.cache_ignore
        if chunk and ignore:
            args = ([dict(task.cache_arguments(tuple(i), {}, ignore)[1]) for i in args[0]],)
        elif not chunk:
            args, kwargs = task.cache_arguments(args, kwargs, ignore)
        try:
            return cache_key(task.name or "", task.code_hash, args, kwargs)
        except TypeError:
            return None

    def lookup(self, keys: Sequence[str | None], ttls: Sequence[float | None]) -> list[Hit | None]:
        """What each of these cache keys reuses (None: nothing, compute): a job in flight in
        this process, else the task its ``k:`` entry names if it is SUCCESSFUL (and finished
        within its ``cache_ttl``) or READY/RUNNING with a live owner. The store is read in
        bulk: a few queries for all the keys, a few for the records of the hits."""
        hits: list[Hit | None] = [None] * len(keys)
        ask: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key is None:
                continue
            job = self.inflight.get(key)
            if job is not None and not job.live.finished:
                hits[i] = job
            else:
                ask.setdefault(key, []).append(i)
        if not ask:
            return hits
        found = self.store.find_cached(list(ask))
        reusable = self.store.reusable(found.values())
        now = self.clock.time()
        for key, tid in found.items():
            rec = reusable.get(tid)
            if rec is None:
                continue
            for i in ask[key]:
                ttl = ttls[i]
                if (
                    ttl is None
                    or rec["status"] != TaskStatus.SUCCESSFUL
                    or now - (rec.get("finished_at") or 0) <= ttl
                ):
                    hits[i] = rec
        return hits

    def forget(self, keys: Iterable[str], name: str) -> None:
        """After ``cache_clear``: later submits no longer join this task's jobs in flight."""
        for key in keys:
            self.inflight.pop(key, None)
        for key, job in list(self.inflight.items()):
            if job.request.task_name == name:
                self.inflight.pop(key, None)

    def submit(
        self,
        jobs: Sequence[Job],
        groups: Sequence[dict[str, Any]] = (),
        waiting: Sequence[Waiting] = (),
        cache_keys: Sequence[tuple[str, Job]] = (),
        *,
        fresh_ids: bool = False,
    ) -> None:
        """Commit every READY record in one transaction, then hand the jobs over.
        ``fresh_ids``: the ids were given by the caller, and must not be in the store yet."""
        if self.closed:
            raise RuntimeError("this App has been shut down; create a new one")
        # The executors exist before anything is stored: one that cannot be made (dask not
        # installed, no cluster to reach) fails the submit with nothing half-written.
        for name in {job.options.executor for job in jobs}:
            self.executor(name)
        for key, job in cache_keys:
            job.live.rec["cache_key"] = key
        self.store.create(
            [j.live for j in jobs],
            groups,
            [(key, job.id) for key, job in cache_keys],
            fresh_ids=fresh_ids,
        )
        for key, job in cache_keys:
            self.inflight[key] = job
        self.supervisor.start()  # cancel requests from other processes, from now on
        waiting_ids = {w.job.id for w in waiting}
        ready: list[Waiting] = []
        broken: list[tuple[Waiting, Job]] = []
        with self.lock:
            for job in jobs:
                self.jobs[job.id] = job
            for w in waiting:
                # A dependency may be a cache hit: stored (Done), or a job in flight here
                # that may have ended meanwhile (then its finished() ran, or will find no
                # waiter: it is judged here, under the lock that finished() takes).
                w.remaining = set()
                for dep in w.deps:
                    if isinstance(dep, Done):
                        continue
                    status = dep.live.rec["status"]
                    if status not in FINISHED:
                        w.remaining.add(dep.id)
                        self.waiting.setdefault(dep.id, []).append(w)
                    elif status != TaskStatus.SUCCESSFUL:
                        broken.append((w, dep))
                if not w.remaining and not any(b[0] is w for b in broken):
                    ready.append(w)
        for job in jobs:
            if job.id not in waiting_ids:
                self.dispatch(job)
        for w, dep in broken:
            w.job.chain_cause = f"task {dep.id} ({dep.request.task_name}) did not succeed"
            self.cancel_job(w.job, w.job.chain_cause)
        for w in ready:
            self._release(w)

    def dispatch(self, job: Job) -> None:
        """Run the job now, or when its ETA comes."""
        eta = job.options.eta
        if eta is not None and not job.timer_done:
            delay = eta - self.clock.time()
            job.timer_done = True
            if delay > 0:
                self.schedule(job, delay)
                return
        try:
            self.executor(job.options.executor).submit(job)
        except RuntimeError:  # shut down meanwhile
            self.cancel_job(job, "the App was shut down before the task started")

    # ------------------------------------------------------------------ the timer

    def schedule(self, job: Job, delay: float) -> None:
        if delay <= 0 or not self.supervisor.schedule(job, delay):
            self.dispatch(job)  # at once; after a shutdown, dispatch records it CANCELLED

    def _due(self, job: Job) -> None:
        """A countdown, ETA or retry backoff has run out (on the supervisor's thread)."""
        if job.live.rec["status"] != TaskStatus.READY:
            return
        if job.options.executor == "inline":
            # An inline task runs in the thread that hands it over: not this one, which goes
            # on supervising (the task's own time limits too).
            threading.Thread(
                target=self._hand_over, args=(job,), name="nbtasks-inline", daemon=True
            ).start()
        else:
            self._hand_over(job)

    def _hand_over(self, job: Job) -> None:
        try:
            self.executor(job.options.executor).submit(job)
        except RuntimeError:
            self.cancel_job(job, "the App was shut down before the task started")

    # ------------------------------------------------------------------ cancelling

    def cancel(self, task_id: str) -> bool:
        job = self.jobs.get(task_id)
        if job is not None:
            return self.cancel_job(job, "cancelled")
        try:
            rec = self.store.get_record(task_id)
        except UnknownTaskId:
            raise
        if rec["status"] in FINISHED:
            return False
        self.store.request_cancel(task_id)  # its owner acts on it within ~0.1 s
        return True

    def cancel_job(self, job: Job, reason: str) -> bool:
        live = job.live
        with self.lock:
            status = live.rec["status"]
            if status in FINISHED:
                return False
            job.cancel_reason = reason
            if status == TaskStatus.READY:
                self.store.cancel(live, reason, self.clock.time())
                running = False
            else:
                running = True
        if running:
            if job.attempt is not None:
                job.attempt.ctx.request_stop(TaskCancelled(f"task {job.id} was {reason}"))
            self.executor(job.options.executor).cancel_running(job)
        else:
            self.finished(job)
        return True

    def _cancel_requested(self, task_id: str) -> None:
        """A cancel request from another process, seen by the supervisor."""
        if (job := self.jobs.get(task_id)) is not None:
            self.cancel_job(job, "cancelled")
        self.store.put_extra("x:" + task_id, None)

    def timed_out(self, job: Job) -> None:
        self.executor(job.options.executor).timed_out(job)

    # ------------------------------------------------------------------ after a task

    def finished(self, job: Job) -> None:
        """A job reached its final status: links, waiting jobs, bookkeeping."""
        live = job.live
        status = live.rec["status"]
        with self.lock:
            self.jobs.pop(job.id, None)
            dependents = self.waiting.pop(job.id, [])
        key = live.rec.get("cache_key")
        if key and self.inflight.get(key) is job:
            del self.inflight[key]
        if status == TaskStatus.SUCCESSFUL:
            for sig in job.options.link:
                self._link(job, sig, (live.value,))
        elif status == TaskStatus.FAILED:
            for sig in job.options.link_error:
                self._link(job, sig, (job.id,))
        for w in dependents:
            if status == TaskStatus.SUCCESSFUL:
                w.remaining.discard(job.id)
                if not w.remaining:
                    self._release(w)
            else:
                # Name the task that broke the chain, also further down it.
                cause = job.chain_cause
                if cause is None:
                    verbs: dict[str, str] = {
                        TaskStatus.FAILED: "failed",
                        TaskStatus.CANCELLED: "was cancelled",
                    }
                    verb = verbs.get(status, "was interrupted")
                    cause = f"task {job.id} ({job.request.task_name}) {verb}"
                w.job.chain_cause = cause
                self.cancel_job(w.job, cause)

    def _release(self, w: Waiting) -> None:
        job = w.job
        if not w.immutable:
            values = [d.value if isinstance(d, Done) else d.live.value for d in w.deps]
            first = values if w.all_results else values[0]
            job.args = (first, *job.args)
            job.request.args = list(job.args)
            try:
                enc = self.store.encode_value(job.id, "args", list(job.args))
            except TypeError as exc:
                enc = {"u": str(exc)}
            self.store.change(job.live, args=enc, args_repr=args_repr(job.args, job.kwargs))
            job.live.args = job.args
            if job.options.cache and self._reuse(job):
                return
        self.dispatch(job)

    def _reuse(self, job: Job) -> bool:
        """A cached link whose arguments came from its parent (known only now): if the call
        has a SUCCESSFUL result (within ``cache_ttl``), the link ends SUCCESSFUL with that
        value at once, without running (its handle, given at submit, keeps its own id; its
        metadata names the task it reused as ``cached_from``). Otherwise its key goes in the
        store, so later submits of the same call reuse it, and it runs (False)."""
        key = self.key(job.task, job.args, job.kwargs, job.options)
        if key is None:
            return False
        hit = self.lookup([key], [job.options.cache_ttl])[0]
        if isinstance(hit, dict) and hit["status"] == TaskStatus.SUCCESSFUL:
            try:
                rv = self.store.get_record(hit["id"]).get("rv")
                value = self.store.decode_value(rv, "a cached return value") if rv else None
                enc = self.store.encode_value(job.id, "rv", value)
            except (NbtasksError, TypeError, KeyError):
                pass  # unreadable, untrusted or unpicklable here: compute it again
            else:
                live, now = job.live, self.clock.time()
                metadata = {**live.rec.get("metadata", {}), "cached_from": hit["id"]}
                with self.lock:
                    if live.rec["status"] != TaskStatus.READY or job.cancel_reason is not None:
                        return False  # cancelled meanwhile: dispatch ends it as usual
                    state = TaskStatus.RUNNING.value
                    self.store.change(live, TaskStatus.RUNNING, started_at=now, state=state)
                    live.value = value
                    self.store.change(
                        live,
                        TaskStatus.SUCCESSFUL,
                        finished_at=now,
                        state=TaskStatus.SUCCESSFUL.value,
                        rv=enc,
                        metadata=metadata,
                    )
                self.finished(job)
                return True
        self.store.change(job.live, cache_key=key)
        self.store.put_extra("k:" + key, job.id)
        self.inflight[key] = job
        return False

    def _link(self, job: Job, sig: Any, args: tuple[Any, ...]) -> None:
        try:
            sig.apply_async(args)
        except Exception as exc:
            if job.attempt is not None:
                job.attempt.record_hook_error(f"link {sig!r}", exc)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool, cancel_pending: bool) -> None:
        self.closed = True
        timed = self.supervisor.close()
        pending: list[Job] = []
        for ex in list(self._executors.values()):
            pending += ex.shutdown(wait=wait, cancel_pending=cancel_pending)
        for job in [*timed, *pending]:
            self.cancel_job(job, "the App was shut down before the task started")
        if cancel_pending:
            for job in list(self.jobs.values()):
                if job.live.rec["status"] == TaskStatus.READY:
                    self.cancel_job(job, "the App was shut down before the task started")
        try:
            self.store.flush()
        except StoreError:
            pass


def _unpicklable_argument(
    task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], executor: str, exc: Exception
) -> str:
    """A TypeError message naming the argument that cannot be pickled, and its type."""
    found = unpicklable_argument(task, args, kwargs)
    what = (
        f"argument {found[0]!r} of task {task.name} is a {found[1]}, which "
        f"cannot be pickled ({found[2]})"
        if found is not None
        else f"an argument of task {task.name} {exc}"
    )
    return (
        f"{what}; a {executor} task's arguments must pickle: pass a path or a picklable value "
        "instead"
    )
