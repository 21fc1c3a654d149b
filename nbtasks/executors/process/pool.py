"""The process pool: the supervised workers of ``ProcessExecutor`` (see the package's docstring).

Submitting threads hand jobs to workers directly (no thread hop); one supervisor thread reads
the workers' reports, keeps every worker fed, mirrors running tasks' records, runs the timers
(hard timeouts, SIGTERM then SIGKILL, overdue exit statuses) and notices deaths, whose outcome
``outcomes.Outcomes`` records.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..._attempt import Job, Options, limit_text
from ..._codec import by_value_refs
from ..._errors import TaskCancelled, TaskTimeout
from ..._model import TaskStatus
from .. import resolve_process_start
from ..payload import task_payload
from .calls import SubmitServer
from .launch import Launcher, make_launcher, socket_pair
from .outcomes import Outcomes
from .procs import DEPTH, PREFETCH_AGE, WorkerProcess, small

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..._attempt import Runtime
    from ..._task import Task

GRACE: Final = 2.0  # seconds between SIGTERM and SIGKILL
EXIT_WAIT: Final = 1.0  # after a worker's socket closes: how long its exit status may take
POLL: Final = 0.1  # seconds between reads of running tasks' records (live progress)
RETAIN: Final = 2.0  # seconds a reported final record stays in memory (the worker commits it)
STOP_WAIT: Final = 5.0  # shutdown: how long workers get to exit before SIGKILL
#: Imported once by the zygote, before it forks: every payload unpickles into a Task.
PRELOAD: Final = ["nbtasks._task"]


class ProcessExecutor(SubmitServer):
    name = "process"

    def __init__(
        self,
        runtime: Runtime,
        workers: int = 2,
        grace: float = GRACE,
        app: Callable[[], Any] | None = None,
        start: str | None = None,
    ) -> None:
        self.runtime = runtime
        self._app = app  # a weak reference to the App: its workers' tasks submit through it
        self.store = runtime.store
        self.size = workers
        self.grace = grace
        self.error: BaseException | None = None  # workers cannot start (or a bug)
        self._start_failures = 0
        self._lock = threading.Lock()
        self._queue: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._nums = itertools.count()
        self._procs: dict[int, WorkerProcess] = {}  # request number -> process
        self._running: dict[str, WorkerProcess] = {}  # task id -> the process it was sent to
        self._register: list[WorkerProcess] = []  # new processes for the supervisor's selector
        self._stopping = False
        # The supervisor's wake-up: a socket pair (AF_INET on Windows), so that the selector
        # only ever sees sockets (Windows' select takes nothing else).
        self._wake_r, self._wake_w = socket_pair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._faults = Path(tempfile.mkdtemp(prefix="nbtasks-workers-"))
        self._outcomes = Outcomes(runtime, grace, self._faults)
        self.start_method = resolve_process_start(start)
        self._launcher: Launcher = make_launcher(
            self.start_method,
            {
                "store": str(self.store.path),
                "trust": self.store.trust,
                "owner": self.store.owner,
                "path": sys.path,
                "faults": str(self._faults),
                "preload": PRELOAD,
                "app_name": getattr(runtime, "app_name", None),
            },
            self._wakeup,
        )
        self._selector = selectors.DefaultSelector()
        self._launch_registered: set[socket.socket] = set()
        self._check_at = 0.0  # monotonic time of the next run of the supervisor's timers
        # task -> (options, by_value_refs, payload) of its last payload (see encode)
        self._payloads: weakref.WeakKeyDictionary[Task, tuple[Options, tuple[Any, ...], bytes]]
        self._payloads = weakref.WeakKeyDictionary()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        with self._lock:
            for _ in range(workers):
                self._fork(detached=False)
        self._thread = threading.Thread(
            target=self._supervise, name="nbtasks-process-supervisor", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ submit side

    def encode(self, task: Task, options: Options) -> bytes:
        """The payload a worker runs: the task without its App, and its options (no links: the
        parent runs those). A TypeError names what in the task cannot be pickled.

        A function task's payload is kept and sent again while the same options come with it
        and what cloudpickle copies by value is the same objects (``by_value_refs``): pickling
        a ``__main__`` function is most of what a ``delay()`` of a process task costs. So a
        rebound global or a redefined function is pickled again; a global changed in place
        is not (docs/design.md; Dask keeps pickled functions by identity alone)."""
        refs = None if task.function is None else by_value_refs(task.function)
        if refs is None:  # a class-based task, a builtin, a partial: pickled each time
            return task_payload(task, options)
        kept = self._payloads.get(task)
        if kept is not None and kept[0] is options and _same(kept[1], refs):
            return kept[2]
        payload = task_payload(task, options)
        self._payloads[task] = (options, refs, payload)
        return payload

    def submit(self, job: Job) -> None:
        if job.payload is None:
            job.payload = self.encode(job.task, job.options)
        with self._lock:
            if self._stopping:
                raise RuntimeError("this App has been shut down; create a new one")
            error = self.error
            if error is None:
                if job.options.detach:
                    self._fork(detached=True).waiting = job
                    return
                proc = self._least_busy(job)
                if proc is None:
                    heapq.heappush(self._queue, (-job.options.priority, next(self._seq), job))
                else:
                    self._send(proc, job)
                return
        self._outcomes.unsent(job, error)

    def _least_busy(self, job: Job) -> WorkerProcess | None:
        """An idle worker; else a busy one that ``_takes`` the job, the least busy; else None
        (the job waits in the pool's queue for the first worker to free up)."""
        best = None
        for p in self._procs.values():
            if p.ready and not p.jobs and not p.detached and not p.signalled and p.eof_at is None:
                return p
            if self._takes(p, job) and (best is None or len(p.jobs) < len(best.jobs)):
                best = p
        return best

    def _takes(self, proc: WorkerProcess, job: Job) -> bool:
        """Whether ``job`` may be sent to ``proc`` now (with _lock held). An idle worker takes
        any job. A busy one takes a job that queues cheaply (``small``), while there is room
        behind its running task, that task began less than PREFETCH_AGE ago (so it is likely
        to end soon), has submitted nothing (``nested``), and no other worker is starting (that
        one will take it)."""
        if not proc.ready or proc.detached or proc.signalled or proc.eof_at is not None:
            return False
        if not proc.jobs:
            return True
        return (
            len(proc.jobs) < DEPTH
            and small(job)
            and not proc.nested
            and time.monotonic() - proc.head_since < PREFETCH_AGE
            and all(p.ready or p.detached for p in self._procs.values())
        )

    def _send(self, proc: WorkerProcess, job: Job) -> bool:
        """Hand a job's record over to a worker and send it (with _lock held, so a worker gets
        its jobs in the order of ``proc.jobs``). False if it was cancelled meanwhile."""
        live, store = job.live, self.store
        if proc.detached:
            # The record names the detached process as its owner before it starts: a new
            # kernel's sweep must not take it for an orphan of this one.
            store.change(live, owner=proc.owner)
        store.release(live)
        with self.runtime.lock:
            if live.rec["status"] != TaskStatus.READY or job.cancel_reason is not None:
                return False
            rec = dict(live.rec)
            store.observe(live, {"status": TaskStatus.RUNNING.value})
        proc.jobs.append(job)
        self._running[job.id] = proc
        if len(proc.jobs) == 1:
            self._started(proc)
        try:
            assert proc.conn is not None  # it is ready
            proc.conn.send(("run", rec, job.payload))
        except OSError:  # it is dying: its death puts the job back in the queue
            proc.undelivered.add(job.id)
        return True

    def _started(self, proc: WorkerProcess) -> None:
        """proc.jobs[0] is running now (as far as this process can tell)."""
        now = time.monotonic()
        proc.head_since = proc.polled = now
        timeout = proc.jobs[0].options.timeout if proc.jobs else None
        proc.deadline = None if timeout is None else now + timeout
        if proc.deadline is not None:
            self._check_soon(proc.deadline)

    def _fill(self, proc: WorkerProcess) -> None:
        """Give a worker the queued jobs it ``_takes`` (with _lock held)."""
        while self._queue and self._takes(proc, self._queue[0][2]):
            self._send(proc, heapq.heappop(self._queue)[2])

    def cancel_running(self, job: Job) -> bool:
        with self._lock:
            proc = self._running.get(job.id)
            if proc is None or job not in proc.jobs:
                return False
            if proc.jobs[0] is not job:  # queued in the worker: it records CANCELLED itself
                try:
                    assert proc.conn is not None  # it ran a job
                    proc.conn.send(("cancel", job.id))
                except OSError:
                    pass
                return True
            if proc.stop is None:
                proc.stop = TaskCancelled(f"task {job.id} was {job.cancel_reason or 'cancelled'}")
        self._terminate(proc)
        return True

    def timed_out(self, job: Job) -> None:
        pass  # the supervisor keeps each process task's deadline itself

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> list[Job]:
        """Stop the pool's workers once the queue is done (its jobs returned if
        ``cancel_pending``); detached tasks keep running."""
        with self._lock:
            self._stopping = True
            pending: list[Job] = []
            if cancel_pending:
                pending = [entry[2] for entry in self._queue]
                self._queue.clear()
                for p in self._procs.values():
                    if p.waiting is not None:
                        pending.append(p.waiting)
                        p.waiting = None
        self._wakeup()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()
        return pending

    # ------------------------------------------------------------------ processes

    def _fork(self, detached: bool) -> WorkerProcess:
        """Start a worker (with _lock held): forked by the zygote, or spawned (``launch.py``);
        once connected, it reports ``ready``."""
        proc = WorkerProcess(next(self._nums), self._launcher, detached)
        self._procs[proc.n] = proc
        conn, proc.pid = self._launcher.start(proc.n, detached)
        if conn is not None:
            proc.conn = conn
            self._register.append(proc)
        self._wakeup()
        return proc

    def _terminate(self, proc: WorkerProcess) -> None:
        """SIGTERM now, SIGKILL after the grace period (the supervisor's timers)."""
        with self._lock:
            if proc.signalled is None:
                proc.kill_at = time.monotonic() + self.grace
                proc.signalled = "SIGTERM"
                self._check_soon(proc.kill_at)
            proc.terminate()
        self._wakeup()

    def _wakeup(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    # ------------------------------------------------------------------ the supervisor

    def _supervise(self) -> None:
        try:
            while not (self._stopping and self._finished()):
                self._update_selector()
                timeout = max(0.0, self._check_at - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    self._selected(key)
                if time.monotonic() >= self._check_at:  # timers and live records, not per message
                    self._timers()
                    self._poll()
                    self._check_at = self._next_check()
            self._stop_workers()
        except BaseException as exc:  # pragma: no cover - a bug: shown on the next submit
            self.error = exc
            raise
        finally:
            self._close()

    def _selected(self, key: selectors.SelectorKey) -> None:
        if key.data is None:  # woken: maybe by a launcher's exit waiter
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
            self._launch_events(self._launcher.events())
        elif key.data == "launch":
            assert isinstance(key.fileobj, socket.socket)
            self._launch_events(self._launcher.readable(key.fileobj))
        else:
            self._readable(key.data)

    def _update_selector(self) -> None:
        launch = set(self._launcher.sockets())
        if not self._register and launch == self._launch_registered:
            return
        with self._lock:
            new, self._register = self._register, []
        for sock in self._launch_registered - launch:  # first: a handshake's socket is
            try:  # the channel of the worker it connected
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        for proc in new:
            if proc.eof_at is None and proc.conn is not None:
                self._selector.register(proc.conn, selectors.EVENT_READ, proc)
        for sock in launch - self._launch_registered:
            self._selector.register(sock, selectors.EVENT_READ, "launch")
        self._launch_registered = launch

    def _check_soon(self, when: float) -> None:
        """Have the supervisor run its timers by ``when`` (a deadline, a kill, an exit)."""
        if when < self._check_at:
            self._check_at = when
            if threading.current_thread() is not self._thread:
                self._wakeup()

    def _finished(self) -> bool:
        """Shutting down and nothing left to wait for: no queued job, no pool worker busy, no
        detached task still starting (a running one is left to itself)."""
        with self._lock:
            if not self._stopping or self._queue:
                return False
            return not any(
                p.waiting is not None or (p.jobs and not p.detached) for p in self._procs.values()
            )

    def _next_check(self) -> float:
        """When the timers must run next: a deadline, a SIGKILL, an overdue exit status, or
        the next read of running tasks' records."""
        due = [time.monotonic() + POLL]
        with self._lock:
            for p in self._procs.values():
                if p.deadline is not None and p.stop is None:
                    due.append(p.deadline)
                if p.kill_at is not None:
                    due.append(p.kill_at)
                if p.eof_at is not None:
                    due.append(p.eof_at + EXIT_WAIT)
        return min(due)

    def _launch_events(self, events: list[tuple[str, int, Any]]) -> None:
        """What the launcher says: a worker's pid, its channel (spawn), or how it exited."""
        for kind, n, value in events:
            with self._lock:
                proc = self._procs.get(n)
                if proc is None:
                    if kind == "conn":
                        value.close()
                    continue
                if kind == "pid":
                    proc.pid = value
                    continue
                if kind == "conn":
                    proc.conn = value
                    self._register.append(proc)
                    continue
                proc.code, proc.code_known = value, True
                if proc.conn is None:  # it died before it connected
                    proc.eof_at = time.monotonic()
            self._maybe_dead(proc)

    def _readable(self, proc: WorkerProcess) -> None:
        """Take every message that has arrived from a worker, then notice if it has gone."""
        assert proc.conn is not None
        try:
            proc.conn.fill(block=True)  # readable: one read takes what has arrived
            eof = False
        except (EOFError, OSError):
            eof = True
        while (taken := proc.conn.take()) is not None:
            self._message(proc, taken[0])
        if eof:
            proc.eof_at = time.monotonic()
            self._check_soon(proc.eof_at + EXIT_WAIT)
            try:
                self._selector.unregister(proc.conn)
            except (KeyError, ValueError):
                pass
            self._maybe_dead(proc)

    def _message(self, proc: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "call":  # its task submits tasks: served in a thread, never this one
            with self._lock:
                proc.nested = True
            threading.Thread(
                target=self._serve_call,
                args=(proc, message[1], message[2]),
                name="nbtasks-process-submit",
                daemon=True,
            ).start()
            return
        if kind == "rss":  # the running task's peak memory (usage.oom_hint, if it dies)
            proc.peak_rss = message[1]
            return
        if kind == "ready":
            with self._lock:
                proc.pid, proc.start, proc.owner = message[1], message[2], message[3]
                proc.ready = True
                self._start_failures = 0
                if proc.signalled:
                    proc.terminate()
                elif self._stopping and not proc.detached and not self._queue:
                    proc.send_stop()  # connected as the pool stops (spawn: after it was told)
                elif proc.detached:
                    job, proc.waiting = proc.waiting, None
                    if job is None or not self._send(proc, job):
                        proc.send_stop()
                else:
                    self._fill(proc)
            return
        # "done" or "retry": the head job, always (a worker runs its jobs in order)
        cancel_next = False
        with self._lock:
            job = proc.jobs.popleft() if proc.jobs else None
            if job is not None and self._running.get(job.id) is proc:
                del self._running[job.id]
            proc.nested = False
            proc.peak_rss = None  # the next task's own
            if proc.jobs:
                self._started(proc)
                # Cancelled while queued: the worker may have started it before it read the
                # cancel message, so it is terminated like any running task.
                head = proc.jobs[0]
                if head.cancel_reason is not None and proc.stop is None:
                    proc.stop = TaskCancelled(f"task {head.id} was {head.cancel_reason}")
                    cancel_next = True
            else:
                proc.deadline = None
            if not proc.detached:
                self._fill(proc)
        if cancel_next:
            self._terminate(proc)
        if job is None or job.id != message[1]:  # pragma: no cover - a protocol bug
            raise RuntimeError(f"worker {proc.pid} reported {message[:2]} for {job}")
        if kind == "done":
            proc.recent.append((time.monotonic(), job))
            self._outcomes.done(job, message[2])
        else:
            self._outcomes.retry(job, message[3], message[2])

    def _maybe_dead(self, proc: WorkerProcess) -> None:
        if proc.eof_at is not None and (
            proc.code_known or time.monotonic() - proc.eof_at >= EXIT_WAIT
        ):
            self._dead(proc)

    def _dead(self, proc: WorkerProcess) -> None:
        """A worker is gone (its socket closed and its exit status is known, or overdue)."""
        with self._lock:
            if self._procs.pop(proc.n, None) is None:
                return
            jobs = list(proc.jobs)
            proc.jobs.clear()
            for job in jobs:
                if self._running.get(job.id) is proc:
                    del self._running[job.id]
            if proc.waiting is not None:
                jobs.append(proc.waiting)  # a detached worker that never started
                proc.waiting = None
            if not proc.ready:
                self._start_failures += 1
                if self._start_failures >= 3 and self.error is None:
                    self.error = RuntimeError(
                        f"worker processes die before they start ({proc.how()}); check that "
                        f"`{sys.executable} -c 'import nbtasks.executors.process.zygote'` works"
                    )
            if not proc.detached and not self._stopping and self.error is None:
                self._fork(detached=False)
            failed = [e[2] for e in self._queue] if self.error is not None else []
            if failed:
                self._queue.clear()
            for p in self._procs.values():  # queued jobs may go to the other workers now
                if p.ready and not p.detached:
                    self._fill(p)
        if proc.conn is not None:
            proc.conn.close()
        outcomes = self._outcomes
        outcomes.persist_reported(proc)
        fault = outcomes.fault_text(proc)
        for i, job in enumerate(jobs):
            if i == 0 and proc.ready and job.id not in proc.undelivered:
                outcomes.lost(proc, job, fault)
            else:
                outcomes.requeue(job, self.error)
        for job in failed:
            assert self.error is not None
            outcomes.unsent(job, self.error)

    def _timers(self) -> None:
        now = time.monotonic()
        store = self.store
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            job = p.jobs[0] if p.jobs else None
            deadline = p.deadline
            due = deadline is not None and now >= deadline
            if due and job is not None and p.stop is None:
                p.stop = TaskTimeout(
                    f"{limit_text(job, 'timeout')}; its worker process {p.pid} was terminated"
                )
                self._terminate(p)
            if p.kill_at is not None and now >= p.kill_at and p.eof_at is None:
                p.kill_at = None
                p.signalled = "SIGKILL"
                p.terminate(kill=True)
            if p.eof_at is not None:
                self._maybe_dead(p)
            # Reported final records stay readable from memory while the worker commits them.
            while p.recent and now - p.recent[0][0] >= RETAIN:
                live = p.recent.popleft()[1].live
                if store.live.get(live.id) is live and live.finished:
                    del store.live[live.id]

    def _poll(self) -> None:
        """Mirror running tasks' records from the store, so this process sees them live."""
        now = time.monotonic()
        with self._lock:
            heads = [
                (p, p.jobs[0])
                for p in self._procs.values()
                if p.jobs and now - p.polled >= POLL and p.jobs[0].id not in p.undelivered
            ]
        for p, job in heads:
            p.polled = now
            try:
                rec = self.store.read_record(job.id)
            except Exception:
                continue
            if p.jobs and p.jobs[0] is job and rec["status"] == TaskStatus.RUNNING:
                self.store.observe(job.live, {k: v for k, v in rec.items() if k != "status"})

    def _stop_workers(self) -> None:
        """Shutdown: the pool workers are idle now; stop them, wait, and let the zygote go."""
        with self._lock:
            detached = [p for p in self._procs.values() if p.detached]
            pool = [p for p in self._procs.values() if not p.detached]
            self._procs = {p.n: p for p in pool}
        for p in detached:  # keeps running on its own; this process stops listening
            if p.conn is None:
                continue
            try:
                self._selector.unregister(p.conn)
            except (KeyError, ValueError):
                pass
            p.conn.close()
        for p in pool:
            p.send_stop()
        deadline = time.monotonic() + STOP_WAIT
        while self._procs and time.monotonic() < deadline:
            self._update_selector()
            for key, _ in self._selector.select(0.05):
                self._selected(key)
            for p in list(self._procs.values()):
                self._maybe_dead(p)
        for p in list(self._procs.values()):
            p.terminate(kill=True)
        with self._lock:
            self._launcher.close()

    def _close(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self._faults, ignore_errors=True)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
