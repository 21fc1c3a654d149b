"""A worker process's attempt: the core ``Attempt`` on the worker's own store, with a runtime
that reports to the parent instead of scheduling (DESIGN principle 2: the worker owns the task
it runs). Its seams: the soft time limit comes from SIGALRM (or, where there is none, a watchdog
thread), the output pipe is drained into the task before each record, and the attempt ends once
(the monitor thread of an orphan may end it).

The watchdog raises the soft limit in the task's thread as the thread executor does
(``raise_in_thread``), never while the worker sends or reads a message (``Worker._quiet``): it
is then raised when that ends. A limit posted just before such a section begins is withdrawn
there and raised at its end too (``enter_quiet``); one already delivered (the task caught it) is
not raised again: the exception it posts marks its own delivery (``_WatchdogLimit``).
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any, Final

from ..._attempt import Attempt, Job, clear_async_exc, limit_text, raise_in_thread
from ..._errors import SoftTimeLimitExceeded
from ..._model import SYSTEM_CLOCK, Clock
from ..._supervisor import Supervisor
from .usage import peak_rss, process_cpu, reset_peak

if TYPE_CHECKING:
    from .child import Worker


#: Record fields fixed at submit: the parent has them, so a final record is reported without.
_SENT: Final = frozenset(
    {"id", "task_name", "enqueued_at", "args_repr", "args", "kwargs", "backend", "executor"}
)
_ARGUMENTS: Final = frozenset({"args_repr", "args", "kwargs"})


class ChildRuntime:
    """The ``_attempt.Runtime`` of a worker: reports to the parent instead of scheduling."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.store = worker.store
        self.clock: Clock = SYSTEM_CLOCK
        self.lock = threading.Lock()
        # Progress samples, the hard time limit and cancel requests, as in the parent (SIGALRM
        # raises the soft limit: see WorkerAttempt).
        self.supervisor = Supervisor(self.store, self.clock, worker.cancel_requested)

    def schedule(self, job: Job, delay: float) -> None:
        """A retry. A pool worker commits the READY record and hands it back to the parent (it
        may go to another worker); a detached one runs the next attempt itself."""
        w = self.worker
        self._hook_output(job)
        if w.detached:
            w.retry_delay = delay
            self.store.flush()
            return
        self.store.change(job.live, owner=w.parent_owner)
        self.store.flush()
        self.store.live.pop(job.id, None)
        w.send(("retry", job.id, delay, dict(job.live.rec)))

    def finished(self, job: Job) -> None:
        """Report the final record at once; this process's writer commits it at its next
        tick. Should this process die first, the parent writes what it was told. A large value
        lives in an entry of its own, which the parent can only read once committed: then the
        record is committed first."""
        self._hook_output(job)
        rec = job.live.rec
        if any(isinstance(rec.get(f), dict) and "k" in rec[f] for f in ("rv", "exc")):
            self.store.flush()
        fixed = _SENT
        if self.worker.detached and job.request.retries:
            # Its retries ran here, maybe with new arguments (retry(args=, kwargs=)), which
            # the parent has not heard of: they go with the final record.
            fixed = _SENT - _ARGUMENTS
        self.worker.send(("done", job.id, {k: v for k, v in rec.items() if k not in fixed}))

    def _hook_output(self, job: Job) -> None:
        """The hooks (on_success, on_failure, on_retry, after_return) ran after the outcome was
        recorded, outside the task's context: what they wrote reached the task's output
        through fds 1 and 2 (see _read_available). Add it to the record before it is reported,
        as the task's own output is. Only for a task that has hooks."""
        attempt = job.attempt
        if attempt is None or not job.task.hooks:
            return
        self.worker.drain_output()
        fields = attempt.ctx.snapshot(self.clock.time())
        if fields:
            self.store.change(job.live, **fields)

    def timed_out(self, job: Job) -> None:
        pass  # the parent terminates this process; an orphan's monitor thread records it


class _WatchdogLimit(SoftTimeLimitExceeded):
    """What the watchdog posts into the task's thread. CPython makes the instance in that thread
    when the exception is delivered, so ``__init__`` tells the attempt it was; it is recorded
    as a plain ``SoftTimeLimitExceeded`` (``WorkerAttempt._call``)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        attempt = _watched
        if attempt is not None:
            attempt.posted = False


#: The attempt the watchdog may post into (one at a time: a worker runs one task at a time).
_watched: WorkerAttempt | None = None


class WorkerAttempt(Attempt):
    """An attempt that ends once: the main thread and the monitor thread (which terminates an
    orphan's task) may both try, and the output pipe is drained into the task first."""

    def __init__(self, job: Job, runtime: ChildRuntime, worker: Worker) -> None:
        super().__init__(job, runtime)
        self.worker = worker
        self.ended = False
        self.started = runtime.clock.monotonic()
        self.posted = False  # the watchdog posted the soft limit; not delivered yet

    runs_coroutines = True
    #: The worker runs one task at a time: the process's CPU time is the attempt's (usage.py).
    cpu_clock = staticmethod(process_cpu)

    def peak_rss(self) -> int | None:
        return peak_rss()

    def claim(self) -> bool:
        if not super().claim():
            return False
        if self.worker.crash_at is not None:
            self.worker.crash("claim", self.job)
        return True

    def start(self, monotonic: float) -> None:
        reset_peak()  # the attempt's own peak memory, where the system allows it
        super().start(monotonic)
        self.soft_deadline = None  # SIGALRM raises it here (see _call), not a tick

    def _call(self) -> Any:
        """A signal interrupts a blocking call (time.sleep, I/O), which an exception posted
        from another thread cannot: SIGALRM raises SoftTimeLimitExceeded in this thread (as
        billiard does for Celery). The timer runs only inside this call, so it never fires
        outside the user's code. Where there is no SIGALRM, a watchdog thread posts it."""
        soft = self.job.options.soft_timeout
        if soft is None:
            return super()._call()
        remaining = max(soft - self._elapsed(), 1e-6)
        if self.worker.soft_by_signal:
            signal.setitimer(signal.ITIMER_REAL, remaining)
            try:
                return super()._call()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        global _watched
        _watched = self
        watchdog = threading.Timer(remaining, self._watchdog)
        watchdog.name = "nbtasks-worker-watchdog"
        watchdog.daemon = True
        watchdog.start()
        try:
            return super()._call()
        except _WatchdogLimit as exc:  # recorded as what it is, with what it says
            error = SoftTimeLimitExceeded(limit_text(self.job, "soft_timeout"))
            raise error.with_traceback(exc.__traceback__) from None
        finally:
            watchdog.cancel()

    def _watchdog(self) -> None:
        """The soft limit is due: post it into the task's thread, unless the worker is sending
        or reading a message (then it is raised when that ends)."""
        with self._async_lock:
            ctx = self.ctx
            if not self.in_user_code or self.ended or ctx.soft_fired or ctx.thread_id is None:
                return
            ctx.soft_fired = True
            if self.worker.quiet_depth:
                self.worker.soft_pending = True
                return
            self.posted = True
            raise_in_thread(ctx.thread_id, _WatchdogLimit)

    def enter_quiet(self) -> None:
        """In the task's thread, as a quiet section begins (``Worker._quiet``): a limit posted
        but not delivered yet is withdrawn and raised when the section ends. If it is delivered
        here instead, it propagates before the section began: that is fine too."""
        worker = self.worker
        worker.quiet_depth += 1
        try:
            with self._async_lock:
                if self.posted and self.ctx.thread_id is not None:
                    clear_async_exc(self.ctx.thread_id)
                    self.posted = False
                    worker.soft_pending = True
        except BaseException:
            worker.quiet_depth -= 1
            raise

    def _encode_rv(self, value: Any) -> dict[str, Any]:
        encoded = super()._encode_rv(value)
        if self.worker.crash_at is not None:
            self.worker.crash("result", self.job)
        return encoded

    def _hook_returned(self) -> None:
        self.worker.drain_output()

    def _elapsed(self) -> float:
        return self.runtime.clock.monotonic() - self.started

    def end(self, value: Any, error: BaseException | None) -> None:
        with self.worker.end_lock:
            if self.ended:
                return
            self.ended = True
            self.worker.drain_output()
            super().end(value, error)
