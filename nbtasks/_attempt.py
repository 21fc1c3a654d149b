"""The one attempt lifecycle: the only place user code runs.

``AttemptCore`` is what every attempt does wherever it runs (a thread, an event loop, a worker
process, a Dask worker): call the task with its Context current, enforce its time limits, and
build what ``ctx.retry()`` raises. Two seams tell the kinds apart:

- **where the outcome is recorded**: ``Attempt`` claims its task in this process's store (like
  ``Future.set_running_or_notify_cancel``: it fails if the task was cancelled or has expired,
  and then the task does not run), classifies the outcome (success, failure, retry, cancel,
  timeout), records it, runs the hooks and tells the runtime (links, chains, chords). A process
  worker's attempt is an ``Attempt`` on the worker's own store whose runtime reports to the
  parent (``executors/process/child.py``); a Dask worker's attempt sends what it would record to
  the client, whose ``Attempt`` records it (``executors/dask/worker.py``);
- **how a time limit lands**: ``enforce_limits`` (from a tick) asks the task to stop and posts
  a soft limit into its thread; a process worker raises the soft limit from SIGALRM instead, and
  its parent terminates it at the hard one (``timed_out``).

``record_outcome`` and ``record_interrupted`` record how an attempt ended that never had a claim
here: its worker died, or it could not be sent. Executors only decide *where* an attempt runs.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._codec import args_repr
from ._context import (
    Context,
    _current,
    clear_async_exc,
    install_capture,
    install_tqdm_bridge,
    raise_in_thread,
)
from ._errors import (
    Retry,
    SoftTimeLimitExceeded,
    TaskCancelled,
    TaskError,
    TaskTimeout,
    UnknownTaskId,
)
from ._model import MISSING, Clock, Options, Request, RetryCall, TaskStatus
from ._retry import build_retry, retry_delay
from .store import HOST, Live, Store

if TYPE_CHECKING:
    from ._supervisor import Supervisor


@dataclass(eq=False)
class Job:
    """A submitted task in memory: what to call, with what, and how."""

    live: Live
    task: Any  # nbtasks.Task: has invoke(ctx, args, kwargs), hooks and is_async
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    request: Request
    options: Options
    chunk: bool = False  # a chunks() member: args is (a list of argument tuples,)
    cancel_reason: str | None = None
    attempt: Attempt | None = None
    timer_done: bool = False  # its countdown/ETA has been waited for
    chain_cause: str | None = None  # why the chain before it broke, if it did
    payload: bytes | None = None  # a process task's pickled (task, options), made at submit

    @property
    def id(self) -> str:
        return self.live.id


class Runtime(Protocol):
    """What an attempt needs from the App that owns the task."""

    store: Store
    clock: Clock
    lock: threading.Lock
    supervisor: Supervisor  # time limits and progress samples of the running attempts

    def schedule(self, job: Job, delay: float) -> None: ...

    def finished(self, job: Job) -> None: ...

    def timed_out(self, job: Job) -> None: ...


_worker_ids: dict[tuple[int, int], str] = {}


def worker_id(host: str = HOST) -> str:
    """``host:pid:thread name`` of the calling thread (cached per thread for this host); a Dask
    worker passes its address as the host."""
    key = (os.getpid(), threading.get_ident())
    if host != HOST:
        return format_worker_id(host, key[0], threading.current_thread().name)
    wid = _worker_ids.get(key)
    if wid is None:
        wid = _worker_ids[key] = format_worker_id(HOST, key[0], threading.current_thread().name)
    return wid


def format_worker_id(host: str, pid: int | None, thread: str) -> str:
    """The one worker-id format, also for an attempt whose worker died before it said."""
    return f"{host}:{pid}:{thread}"


def limit_text(job: Job, option: str) -> str:
    """What a time limit's exception says: ``option`` is "timeout" or "soft_timeout"."""
    seconds = getattr(job.options, option)
    return f"task {job.request.task_name}[{job.id}] ran past its {option} of {seconds:g}s"


class AttemptCore:
    """One attempt of a job, wherever it runs: the call, its time limits and its retries.
    Subclasses record the outcome (``Attempt``: the store) or send it (a Dask worker)."""

    #: Run an ``async def`` task's coroutine on an event loop of its own (worker processes;
    #: in the notebook's process such tasks go to the asyncio executor instead).
    runs_coroutines = False
    #: Measure the attempt's CPU time here (``usage``): False where the attempt runs elsewhere
    #: and its worker reports its usage (the Dask client's attempts).
    measures_usage = True
    #: The CPU clock of an attempt: the calling thread's (a thread task shares its process with
    #: others); a worker process counts the whole process instead.
    cpu_clock = staticmethod(time.thread_time)

    def __init__(self, job: Job) -> None:
        self.job = job
        self.ctx = self.new_context()
        self.deadline: float | None = None
        self.soft_deadline: float | None = None
        self.in_user_code = False
        self._async_lock = threading.Lock()
        self.no_more_retries = False
        self.cpu_start: float | None = None  # cpu_clock() when the attempt started
        self.reported_usage: dict[str, Any] | None = None  # from the worker that ran it

    def new_context(self) -> Context:
        return Context(self)  # type: ignore[arg-type]

    @property
    def request(self) -> Request:
        return self.job.request

    def start(self, monotonic: float) -> None:
        """The task starts now: its time limits count from here; capture its output."""
        opts = self.job.options
        if opts.timeout is not None:
            self.deadline = monotonic + opts.timeout
        if opts.soft_timeout is not None:
            self.soft_deadline = monotonic + opts.soft_timeout
        install_capture()
        install_tqdm_bridge()
        if self.measures_usage:
            self.cpu_start = self.cpu_clock()

    def usage(self) -> dict[str, Any] | None:
        """``TaskResult.usage`` of this attempt: its CPU seconds and peak resident memory
        (None where unknown), read when it ends; None for an attempt that never started here
        (its worker died, or it was never sent) unless its worker reported it. Two clock reads:
        no store write of its own, it rides on the attempt's final record."""
        if self.reported_usage is not None:
            return self.reported_usage
        if self.cpu_start is None:
            return None
        cpu = max(self.cpu_clock() - self.cpu_start, 0.0)
        return {"cpu_time": round(cpu, 6), "max_rss": self.peak_rss()}

    def peak_rss(self) -> int | None:
        """The attempt's peak resident memory in bytes: unknown for a thread (its process's
        memory is every thread's); a worker process knows its own."""
        return None

    # ------------------------------------------------------------------ the call

    def call(self) -> tuple[Any, BaseException | None]:
        """Call the task in this thread with its Context current: (value, None) or (MISSING,
        what it raised). A stop it was asked for but never checked wins over its value."""
        self.ctx.thread_id = threading.get_ident()
        token = _current.set(self.ctx)
        value: Any = MISSING
        error: BaseException | None = None
        self.in_user_code = True
        try:
            value = self._call()
        except BaseException as exc:
            error = exc
        finally:
            self._leave_user_code()
            _current.reset(token)
        try:
            return self.unchecked_stop(value, error)
        finally:
            del error  # its traceback holds this frame: no reference cycle through it

    def unchecked_stop(
        self, value: Any, error: BaseException | None
    ) -> tuple[Any, BaseException | None]:
        """Asked to stop (timeout, cancel) but never checked: the value is discarded."""
        stop = self.ctx.stop_error
        if error is None and stop is not None and not isinstance(stop, SoftTimeLimitExceeded):
            return MISSING, stop
        return value, error

    def _call(self) -> Any:
        job = self.job
        if job.chunk:
            return [job.task.invoke(self.ctx, tuple(item), {}) for item in job.args[0]]
        value = job.task.invoke(self.ctx, job.args, job.kwargs)
        if self.runs_coroutines and job.task.is_async and inspect.iscoroutine(value):
            import asyncio  # an ``async def`` task: its own event loop in this process

            value = asyncio.run(value)
        return value

    def _leave_user_code(self) -> None:
        """Stop soft time limits from landing here: under the lock the tick posts them with,
        mark the user code done and withdraw one that was posted but has not fired yet. If it
        fires meanwhile (at any bytecode), it is caught and the step is done again."""
        while True:
            try:
                with self._async_lock:
                    self.in_user_code = False
                    if self.ctx.soft_fired and self.ctx.thread_id is not None:
                        clear_async_exc(self.ctx.thread_id)
                return
            except SoftTimeLimitExceeded:
                continue

    # ------------------------------------------------------------------ time limits

    def enforce_limits(self, monotonic: float) -> None:
        """From a tick: past the soft limit, ask the task to stop and raise it in its thread
        (best effort); past the hard one, ask it to stop and call ``timed_out``."""
        ctx = self.ctx
        soft = self.soft_deadline
        if soft is not None and not ctx.soft_fired and monotonic >= soft:
            ctx.soft_fired = True
            ctx.request_stop(SoftTimeLimitExceeded(limit_text(self.job, "soft_timeout")))
            with self._async_lock:
                if ctx.thread_id is not None and self.in_user_code:
                    raise_in_thread(ctx.thread_id, SoftTimeLimitExceeded)
        if (
            self.deadline is not None
            and monotonic >= self.deadline
            and not isinstance(ctx.stop_error, TaskTimeout)
        ):
            ctx.request_stop(TaskTimeout(limit_text(self.job, "timeout")))
            self.timed_out()

    def timed_out(self) -> None:
        """The hard limit passed and the task was asked to stop: who else must act."""

    def update_other_state(self, task_id: str, state: str | None, meta: Any) -> None:
        """``update_state(task_id=other)``, from where no store is open (a Dask worker)."""
        raise ValueError(
            f"update_state(task_id={task_id!r}): a task running on a Dask worker can update "
            "only its own state (the worker has no store to send the request through); "
            "call update_state from that task, or leave task_id out"
        )

    # ------------------------------------------------------------------ retries

    def make_retry(self, call: RetryCall) -> BaseException:
        """What ``ctx.retry()`` raises (``_retry.build_retry``)."""
        error = build_retry(self.job, call)
        if not isinstance(error, Retry):
            self.no_more_retries = True  # max_retries overrides the task's retries (Celery)
        return error


class Attempt(AttemptCore):
    """An attempt whose outcome this process records in its store (it owns the task)."""

    def __init__(self, job: Job, runtime: Runtime) -> None:
        super().__init__(job)
        self.runtime = runtime
        self.store = runtime.store
        self._meta0 = dict(job.request.metadata)
        job.attempt = self

    # ------------------------------------------------------------------ claim

    def claim(self) -> bool:
        """READY -> RUNNING, unless the task was cancelled or has expired."""
        job, live, clock = self.job, self.job.live, self.runtime.clock
        now = clock.time()
        with self.runtime.lock:
            if live.rec["status"] != TaskStatus.READY:
                return False
            if job.cancel_reason is not None or (
                job.options.expires is not None and now >= job.options.expires
            ):
                reason = job.cancel_reason or "expired"
                self.store.cancel(live, reason, now)
                claimed = False
            else:
                wid = worker_id()
                self.request.worker_id = wid
                fields: dict[str, Any] = {
                    "state": TaskStatus.RUNNING.value,
                    "last_attempted_at": now,
                    "worker_ids": [*live.rec["worker_ids"], wid],
                }
                if live.rec.get("started_at") is None:
                    fields["started_at"] = now
                # Committed at the next tick: the writer is not woken as the task starts.
                self.store.change(live, TaskStatus.RUNNING, soon=False, **fields)
                claimed = True
        if not claimed:
            self.runtime.finished(job)
            self.release()
            return False
        self.runtime.supervisor.add(self)
        self.start(clock.monotonic())
        return True

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        """Run the attempt in the calling thread (thread and inline executors, workers)."""
        if not self.claim():
            return
        value, error = self.call()
        self.end(value, error)
        del error  # its traceback holds this frame: no reference cycle through it

    async def arun(self) -> None:
        """Run the attempt as a coroutine on the running loop (``async def`` tasks)."""
        import asyncio

        if not self.claim():
            return
        self.ctx.loop = asyncio.get_running_loop()
        token = _current.set(self.ctx)
        value: Any = MISSING
        error: BaseException | None = None
        try:
            value = await self._call()
        except BaseException as exc:
            error = exc
        finally:
            _current.reset(token)
        self.end(value, error)
        del error  # its traceback holds this frame: no reference cycle through it

    # ------------------------------------------------------------------ end

    def end(self, value: Any, error: BaseException | None) -> None:
        """Record the outcome, run the hooks, tell the runtime."""
        job, live, ctx, store = self.job, self.job.live, self.ctx, self.store
        self.runtime.supervisor.discard(self)
        now = self.runtime.clock.time()
        value, error = self.unchecked_stop(value, error)
        fields = ctx.snapshot(now) or {}
        fields["metadata"] = self._merged_metadata()
        self._attempt_fields(live.rec, fields, now)
        einfo: TaskError | None = None
        if error is None:
            status = TaskStatus.SUCCESSFUL
            live.value = value
            fields.update(finished_at=now, state=status.value, result=None)
            fields["rv"] = self._encode_rv(value)
        elif isinstance(error, TaskCancelled):
            status = TaskStatus.CANCELLED
            fields.update(
                finished_at=now,
                state=status.value,
                reason=job.cancel_reason or str(error) or "cancelled",
            )
        else:
            einfo = store.codec.encode_exception(error)
            errors = [*live.rec["errors"], einfo.to_json()]
            if self._should_retry(error):
                self._retry(error, errors, fields)
                return
            status = TaskStatus.FAILED
            fields.update(finished_at=now, state=status.value, errors=errors)
            fields["exc"] = store.codec.encode_exception_value(_root(error) or error)
        with self.runtime.lock:
            store.change(live, status, **fields)
        self._hooks(status, value, error, einfo)
        self.runtime.finished(job)
        self.release()

    def _attempt_fields(self, rec: Any, fields: dict[str, Any], now: float) -> None:
        """What the attempt's end adds to its final record, in the same write: its usage
        (``TaskResult.usage``) and its start and end times (``attempt_times``, one pair per
        entry of ``worker_ids``, which the timeline draws; the record's other times are the
        first start and the last end only)."""
        usage = self.usage()
        if usage is not None or rec.get("usage") is not None:
            fields["usage"] = usage
        times = list(rec.get("attempt_times") or ())
        if len(times) < len(rec.get("worker_ids") or ()):  # else it never claimed a worker
            start = rec.get("last_attempted_at") or rec.get("started_at") or now
            fields["attempt_times"] = [*times, [start, now]]

    def release(self) -> None:
        """The attempt is over: break its reference cycles (job <-> attempt <-> context) so
        that reference counting frees a finished task's objects at once. Left to the cyclic
        collector, every finished task of a big ``map`` stayed alive until a full collection,
        and those collections walked all of them again and again."""
        if self.job.attempt is self:
            self.job.attempt = None
        self.ctx.detach()

    def _encode_rv(self, value: Any) -> dict[str, Any]:
        try:
            return self.store.encode_value(self.job.id, "rv", value)
        except TypeError as exc:
            # A thread task may return what cannot be pickled: this process keeps it in
            # memory; other processes get a clear error (docs/design.md, "return values").
            return {"u": f"{type(value).__name__} value that {exc}"}

    def _merged_metadata(self) -> dict[str, Any]:
        """The stored metadata plus what the task changed in ``request.metadata`` (Celery's
        ``request.meta``); a key set with ``set_metadata`` is not put back to its old value."""
        merged = dict(self.job.live.rec.get("metadata") or {})
        before = self._meta0
        for key, value in self.request.metadata.items():
            if key not in before or before[key] != value:
                merged[key] = value
        return merged

    # ------------------------------------------------------------------ retries

    def _should_retry(self, error: BaseException) -> bool:
        if self.no_more_retries:
            return False
        if isinstance(error, Retry):
            return True
        opts = self.job.options
        return self.request.retries < opts.retries and isinstance(error, opts.retry_on)

    def _retry(
        self, error: BaseException, errors: list[dict[str, str]], fields: dict[str, Any]
    ) -> None:
        job, live = self.job, self.job.live
        n = self.request.retries
        retry = error if isinstance(error, Retry) else None
        delay = retry_delay(error, job.options, n, self.runtime.clock.time())
        cause = retry.exc if retry is not None and retry.exc is not None else error
        einfo = self.store.codec.encode_exception(cause)
        if retry is not None:
            errors[-1] = einfo.to_json()
        # on_retry is told the arguments of the attempt that failed, as in Celery.
        args, kwargs = list(job.args), job.kwargs
        if retry is not None and (retry.retry_args is not None or retry.retry_kwargs is not None):
            new_args = job.args if retry.retry_args is None else retry.retry_args
            new_kwargs = job.kwargs if retry.retry_kwargs is None else retry.retry_kwargs
            fields.update(self._argument_fields(new_args, new_kwargs))
            replace_arguments(job, new_args, new_kwargs)
        fields.update(errors=errors, state="RETRY", retries=n + 1)
        with self.runtime.lock:
            self.store.change(live, TaskStatus.READY, **fields)
        self.request.retries = n + 1
        self._hook("on_retry", cause, job.id, args, kwargs, einfo)
        self.runtime.schedule(job, delay)
        self.release()

    def _argument_fields(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The record's fields for the next attempt's arguments (``retry(args=, kwargs=)``)."""
        store, tid = self.store, self.job.id
        try:
            enc_args = store.encode_value(tid, "args", list(args))
            enc_kwargs = store.encode_value(tid, "kwargs", kwargs)
        except TypeError as exc:
            # Only a thread task's can fail here (make_retry checked the others'): this
            # process keeps them in memory, as at submit.
            enc_args = enc_kwargs = {"u": str(exc)}
        return {"args": enc_args, "kwargs": enc_kwargs, "args_repr": args_repr(args, kwargs)}

    # ------------------------------------------------------------------ hooks

    def _hooks(
        self, status: TaskStatus, value: Any, error: BaseException | None, einfo: TaskError | None
    ) -> None:
        job = self.job
        if not job.task.hooks:  # the base class's hooks do nothing
            return
        args, kwargs = list(job.args), job.kwargs
        if status is TaskStatus.SUCCESSFUL:
            self._hook("on_success", value, job.id, args, kwargs)
        elif status is TaskStatus.FAILED:
            self._hook("on_failure", _root(error), job.id, args, kwargs, einfo)
        retval = value if status is TaskStatus.SUCCESSFUL else error
        self._hook("after_return", status.value, retval, job.id, args, kwargs, einfo)

    def _hook(self, name: str, *args: Any) -> None:
        if name not in self.job.task.hooks:
            return  # the base class's hooks do nothing
        hook: Callable[..., Any] = getattr(self.job.task, name)
        # With the task's context current, what the hook prints or logs goes to the task's
        # output (as in the task itself), added to the record once the hook returns.
        token = _current.set(self.ctx)
        try:
            hook(*args)
        except Exception as exc:
            self.record_hook_error(name, exc)
        finally:
            self._hook_returned()
            _current.reset(token)
        fields = self.ctx.snapshot(self.runtime.clock.time())
        if fields:
            self.store.change(self.job.live, **fields)

    def _hook_returned(self) -> None:
        """After each hook: a worker process moves what the hook wrote to fds 1 and 2 into the
        output here, so that it comes before what the next hook prints."""

    def record_hook_error(self, where: str, exc: BaseException) -> None:
        """A failing hook or link is recorded on its task, never lost (DESIGN principle 12)."""
        err = self.store.codec.encode_exception(exc).to_json()
        err["where"] = where
        live = self.job.live
        self.store.change(live, hook_errors=[*(live.rec.get("hook_errors") or []), err])

    # ------------------------------------------------------------------ called by the context

    def sample(self, now: float) -> None:
        """Every tick of the supervisor (``now``: the clock's wall time): persist what the
        task's progress and output changed."""
        install_tqdm_bridge()  # tqdm may have been imported by the task itself
        fields = self.ctx.snapshot(now)
        if fields:
            self.store.change(self.job.live, **fields)

    def timed_out(self) -> None:
        self.runtime.timed_out(self.job)

    def merge_metadata(self, values: dict[str, Any], flush: bool) -> None:
        live = self.job.live
        merged = dict(live.rec.get("metadata") or {})
        merged.update(values)
        self.store.change(live, metadata=merged)
        if flush:
            self.store.flush()

    def update_state(self, state: str | None, meta: Any) -> None:
        fields: dict[str, Any] = {"result": meta, "metadata": self._merged_metadata()}
        if state is not None:
            fields["state"] = state
        self.store.change(self.job.live, **fields)

    def update_other_state(self, task_id: str, state: str | None, meta: Any) -> None:
        """``update_state(task_id=other)``: only the owner of a task writes its record
        (DESIGN principle 2). Running in this process, it is updated at once; elsewhere, a
        request goes to the store, which its owner's supervisor applies at its next tick."""
        other = self.runtime.supervisor.get(task_id)
        if other is not None:
            other.update_state(state, meta)
            return
        try:
            rec = self.store.get_record(task_id)
        except UnknownTaskId as exc:
            raise UnknownTaskId(f"update_state(task_id={task_id!r}): {exc}") from None
        status = rec["status"]
        if status != TaskStatus.RUNNING:
            why = (
                "it has not started yet, or waits for a retry"
                if status == TaskStatus.READY
                else "it has finished, and its final state is its status"
            )
            raise ValueError(
                f"update_state(task_id={task_id!r}): task {rec['task_name']}[{task_id}] "
                f"is {status}, not RUNNING ({why}); the state of a task can be updated only "
                "while it runs"
            )
        self.store.request_state(task_id, state, meta)


def replace_arguments(job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The next attempt of ``job`` runs with these arguments (``retry(args=, kwargs=)``):
    the job, its Request and the in-memory values its TaskResult reads."""
    job.args, job.kwargs = args, kwargs
    job.request.args, job.request.kwargs = list(args), dict(kwargs)
    job.live.args, job.live.kwargs = args, kwargs


def _root(error: BaseException | None) -> BaseException | None:
    """The exception a Retry carries, else the error itself."""
    if isinstance(error, Retry) and error.exc is not None:
        return error.exc
    return error


def record_outcome(job: Job, runtime: Runtime, error: BaseException) -> None:
    """Record how an attempt ended that had no claim in this process: its worker died (or was
    terminated) running it, or it could not be handed to a worker. As for any attempt, the
    task's retry policy applies, then the hooks run and the runtime is told."""
    Attempt(job, runtime).end(MISSING, error)


def record_interrupted(job: Job, runtime: Runtime, reason: str) -> None:
    """Record that an attempt's fate is unknown (INTERRUPTED): the process or cluster that ran
    it went away. No retry, no hooks; what its Context held last is kept."""
    live, store = job.live, runtime.store
    attempt = job.attempt
    now = runtime.clock.time()
    with runtime.lock:
        if live.finished:
            return
        if attempt is not None:
            runtime.supervisor.discard(attempt)
        fields = (attempt.ctx.snapshot(now) if attempt is not None else None) or {}
        store.interrupt(live, reason, now, **fields)
    runtime.finished(job)
    if attempt is not None:
        attempt.release()
