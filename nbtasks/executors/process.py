"""Worker processes (SPEC §7): a supervised pool, crash isolation, hard timeouts, cancel, and
detached tasks that outlive the kernel.

Not ``concurrent.futures.ProcessPoolExecutor``: one dead worker breaks its whole pool
(``BrokenProcessPool``); here a dead worker fails only its own task and is replaced (DESIGN
principle 10). The pieces:

- a **zygote** (``_worker.zygote``): a new interpreter started with ``subprocess`` (a threaded
  kernel is never forked) that preloads nbtasks, diskcache and cloudpickle, ignores SIGINT, forks
  the workers and reports their exit status;
- **workers**: each owns the record of the task it runs (DESIGN principle 2). It claims it,
  writes progress, output, heartbeats and the result to the store itself (group-committed by its
  own writer, as the core does), and reports the final record here at once, so waiters wake
  without a store round trip. This process mirrors what it is told (``Store.observe``) and never
  writes the record while the worker lives; if the worker dies, this process owns the record
  again: it writes the outcome, and persists any final record the worker reported but may not
  have committed yet;
- one **supervisor thread** here: it reads the workers' reports, keeps every worker fed (one job
  running and one queued in its socket, as ``ProcessPoolExecutor`` does, so a worker never waits
  for a round trip to this process), mirrors running tasks' records from the store ~10 times a
  second (this process's ``TaskResult``s and widgets see them live), enforces hard timeouts and
  cancels (SIGTERM, then SIGKILL after a grace period) and turns a worker's death into its task's
  outcome (``WorkerLost`` naming the signal or exit code, ``TaskTimeout``, ``CANCELLED``), retries
  included, through the core's ``Attempt.end``.

A submit hands the job to a worker from the submitting thread (no thread hop). Its payload (the
task and its options, pickled with cloudpickle) was made at submit by ``Runtime.build``, so what
cannot be pickled fails there and nothing is stored.

A **detached** task (``detach=True``) gets a worker of its own, forked in a new session: a kernel
restart, the kernel dying or Interrupt do not reach it. Its record names that worker as its owner
before it starts, so a new kernel's sweep leaves it RUNNING; once its parent is gone it acts on
cancel requests and its hard timeout by itself.

A task running in a pool worker **submits other tasks** through this process (``_serve_call``):
its App builds, commits and runs them as if they were submitted here, in a thread of their own
(never the supervisor's: a submit may wait for the store or run an ``apply()``). While such a task
runs, nothing is queued behind it in its worker: it may be waiting for what it submitted.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._attempt import Attempt, Job, Options
from .._codec import by_value_refs, dumps, find_unpicklable, loads
from .._errors import NbtasksError, TaskCancelled, TaskTimeout, WorkerLost
from .._model import FINISHED, MISSING
from .._store import HOST, _start_time
from .._worker import BOOT, CALLS, Channel

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._attempt import Runtime
    from .._task import Task

GRACE: Final = 2.0  # seconds between SIGTERM and SIGKILL
EXIT_WAIT: Final = 1.0  # after a worker's socket closes: how long its exit status may take
POLL: Final = 0.1  # seconds between reads of running tasks' records (live progress)
RETAIN: Final = 2.0  # seconds a reported final record stays in memory (the worker commits it)
STOP_WAIT: Final = 5.0  # shutdown: how long workers get to exit before SIGKILL
DEPTH: Final = 2  # jobs a pool worker holds: the running one and the next
PREFETCH_MAX: Final = 64 * 1024  # bytes of payload past which a job goes to idle workers only
_FINISHED_NAMES: Final = frozenset(s.value for s in FINISHED)
#: Final statuses a worker records itself (INTERRUPTED in the store is another process's sweep).
_BY_WORKER: Final = frozenset({"SUCCESSFUL", "FAILED", "CANCELLED"})
#: Imported once by the zygote, before it forks: every payload unpickles into a Task.
PRELOAD: Final = ["nbtasks._task"]


class _Proc:
    """A worker process as the parent sees it."""

    def __init__(self, n: int, conn: Channel, detached: bool) -> None:
        self.n = n
        self.conn = conn
        self.detached = detached
        self.pid: int | None = None
        self.start: str | None = None  # its start time (/proc), so a reused pid is not signalled
        self.owner: str | None = None
        self.ready = False
        self.jobs: collections.deque[Job] = collections.deque()  # sent, in order; [0] runs
        self.undelivered: set[str] = set()  # jobs whose send failed (it was dying)
        self.waiting: Job | None = None  # a detached worker's job, sent once it is ready
        self.head_since = 0.0
        self.deadline: float | None = None  # the running job's hard timeout
        self.polled = 0.0
        self.recent: collections.deque[tuple[float, Job]] = collections.deque()
        self.stop: BaseException | None = None  # why we terminate it (timeout, cancel)
        self.signalled: str | None = None
        self.kill_at: float | None = None
        self.eof_at: float | None = None
        self.code: int | None = None
        self.code_known = False
        self.nested = False  # its running task submitted tasks: queue nothing behind it

    @property
    def capacity(self) -> int:
        return 1 if self.detached else DEPTH

    def __repr__(self) -> str:
        kind = "detached " if self.detached else ""
        return f"<worker {self.pid} {kind}jobs={[j.id for j in self.jobs]}>"


class ProcessExecutor:
    name = "process"

    def __init__(
        self,
        runtime: Runtime,
        workers: int = 2,
        grace: float = GRACE,
        app: Callable[[], Any] | None = None,
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
        self._procs: dict[int, _Proc] = {}  # request number -> process
        self._by_pid: dict[int, _Proc] = {}
        self._running: dict[str, _Proc] = {}  # task id -> the process it was sent to
        self._register: list[_Proc] = []  # new processes for the supervisor's selector
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._faults = Path(tempfile.mkdtemp(prefix="nbtasks-workers-"))
        self._zygote: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._ctrl_registered: socket.socket | None = None
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
        refs = None if task._fn is None else by_value_refs(task._fn)
        if refs is None:  # a class-based task, a builtin, a partial: pickled each time
            return self._encode(task, options)
        kept = self._payloads.get(task)
        if kept is not None and kept[0] is options and _same(kept[1], refs):
            return kept[2]
        payload = self._encode(task, options)
        self._payloads[task] = (options, refs, payload)
        return payload

    def _encode(self, task: Task, options: Options) -> bytes:
        opts = options
        if options.link or options.link_error:
            opts = dataclasses.replace(options, link=[], link_error=[])
        try:
            return dumps((task, opts))  # Task.__reduce__ leaves the App behind
        except TypeError as exc:
            raise TypeError(_unpicklable_task(task, exc)) from None

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
        # The pool cannot start workers: recorded on the task (it is stored already).
        Attempt(job, self.runtime).end(MISSING, WorkerLost(str(error)))

    def _least_busy(self, job: Job) -> _Proc | None:
        """An idle worker, else one whose queue has room (for a job that queues cheaply)."""
        best = None
        room = DEPTH if _small(job) else 1
        for p in self._procs.values():
            if p.detached or not p.ready or p.signalled or p.eof_at is not None:
                continue
            if len(p.jobs) < (1 if p.nested else room) and (
                best is None or len(p.jobs) < len(best.jobs)
            ):
                best = p
                if not p.jobs:
                    break
        return best

    def _send(self, proc: _Proc, job: Job) -> bool:
        """Hand a job's record over to a worker and send it (with _lock held, so a worker gets
        its jobs in the order of ``proc.jobs``). False if it was cancelled meanwhile."""
        live, store = job.live, self.store
        if proc.detached:
            # The record names the detached process as its owner before it starts: a new
            # kernel's sweep must not take it for an orphan of this one.
            store.change(live, owner=proc.owner)
        store.release(live)
        with self.runtime.lock:
            if live.rec["status"] != "READY" or job.cancel_reason is not None:
                return False
            rec = dict(live.rec)
            store.observe(live, {"status": "RUNNING"})
        proc.jobs.append(job)
        self._running[job.id] = proc
        if len(proc.jobs) == 1:
            self._started(proc)
        try:
            proc.conn.send(("run", rec, job.payload))
        except OSError:  # it is dying: its death puts the job back in the queue
            proc.undelivered.add(job.id)
        return True

    def _started(self, proc: _Proc) -> None:
        """proc.jobs[0] is running now (as far as this process can tell)."""
        now = time.monotonic()
        proc.head_since = proc.polled = now
        timeout = proc.jobs[0].options.timeout if proc.jobs else None
        proc.deadline = None if timeout is None else now + timeout
        if proc.deadline is not None:
            self._check_soon(proc.deadline)

    def _fill(self, proc: _Proc) -> None:
        """Give a worker queued jobs up to its depth (with _lock held). A large payload waits
        for an idle worker: sending it to a busy one would block until that one's task ends."""
        while (
            self._queue
            and len(proc.jobs) < proc.capacity
            and (not proc.jobs or (_small(self._queue[0][2]) and not proc.nested))
            and not proc.signalled
            and proc.eof_at is None
        ):
            self._send(proc, heapq.heappop(self._queue)[2])

    def cancel_running(self, job: Job) -> bool:
        with self._lock:
            proc = self._running.get(job.id)
            if proc is None or job not in proc.jobs:
                return False
            if proc.jobs[0] is not job:  # queued in the worker: it records CANCELLED itself
                try:
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

    def _start_zygote(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {
            "store": str(self.store.path),
            "trust": self.store.trust,
            "owner": self.store.owner,
            "path": sys.path,
            "faults": str(self._faults),
            "preload": PRELOAD,
            "app_name": getattr(self.runtime, "app_name", None),
        }
        try:
            self._zygote = subprocess.Popen(
                [sys.executable, "-c", BOOT, json.dumps(config), str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self._ctrl = parent

    def _fork(self, detached: bool) -> _Proc:
        """Ask the zygote for a worker (with _lock held); the worker reports ``ready``."""
        if self._ctrl is None:
            self._start_zygote()
        assert self._ctrl is not None
        mine, theirs = socket.socketpair()
        proc = _Proc(next(self._nums), Channel(mine), detached)
        self._procs[proc.n] = proc
        self._register.append(proc)
        request = json.dumps({"n": proc.n, "detached": detached}).encode()
        try:
            try:
                socket.send_fds(self._ctrl, [request], [theirs.fileno()])
            except OSError:  # the zygote is gone: start another one
                self._zygote_gone()
                self._start_zygote()
                socket.send_fds(self._ctrl, [request], [theirs.fileno()])
        finally:
            theirs.close()
        self._wakeup()
        return proc

    def _zygote_gone(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self._zygote is not None:
            try:
                self._zygote.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait()
            self._zygote = None

    def _terminate(self, proc: _Proc) -> None:
        """SIGTERM now, SIGKILL after the grace period (the supervisor's timers)."""
        with self._lock:
            if proc.signalled is None:
                proc.kill_at = time.monotonic() + self.grace
                proc.signalled = "SIGTERM"
                self._check_soon(proc.kill_at)
            self._signal(proc, signal.SIGTERM)
        self._wakeup()

    def _signal(self, proc: _Proc, sig: signal.Signals) -> None:
        pid = proc.pid
        if pid is None or proc.code_known:
            return  # not started yet: signalled when it reports ready
        if proc.start is not None and _start_time(pid) != proc.start:
            return  # gone, and its pid reused
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wakeup(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------ the supervisor

    def _supervise(self) -> None:
        try:
            while not (self._stopping and self._finished()):
                self._update_selector()
                timeout = max(0.0, self._check_at - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    if key.data is None:
                        os.read(self._wake_r, 4096)
                    elif key.data == "ctrl":
                        self._zygote_message()
                    else:
                        self._readable(key.data)
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

    def _update_selector(self) -> None:
        if not self._register and self._ctrl is self._ctrl_registered:
            return
        with self._lock:
            new, self._register = self._register, []
            ctrl = self._ctrl
        for proc in new:
            if proc.eof_at is None:
                self._selector.register(proc.conn, selectors.EVENT_READ, proc)
        if ctrl is not self._ctrl_registered:
            if self._ctrl_registered is not None:
                self._selector.unregister(self._ctrl_registered)
            if ctrl is not None:
                self._selector.register(ctrl, selectors.EVENT_READ, "ctrl")
            self._ctrl_registered = ctrl

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

    def _zygote_message(self) -> None:
        assert self._ctrl is not None
        try:
            data = self._ctrl.recv(65536)
        except OSError:
            data = b""
        if not data:  # the zygote died: the next fork starts a new one
            with self._lock:
                self._zygote_gone()
            return
        message = json.loads(data)
        with self._lock:
            if "forked" in message:
                proc = self._procs.get(message["forked"])
                if proc is not None:
                    proc.pid = message["pid"]
                    self._by_pid[message["pid"]] = proc
                return
            proc = self._by_pid.get(message["exit"])
            if proc is None:
                return
            proc.code, proc.code_known = message["code"], True
        self._maybe_dead(proc)

    def _readable(self, proc: _Proc) -> None:
        """Take every message that has arrived from a worker, then notice if it has gone."""
        try:
            proc.conn.fill()
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

    def _message(self, proc: _Proc, message: tuple[Any, ...]) -> None:
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
        if kind == "ready":
            with self._lock:
                proc.pid, proc.start, proc.owner = message[1], message[2], message[3]
                self._by_pid[message[1]] = proc
                proc.ready = True
                self._start_failures = 0
                if proc.signalled:
                    self._signal(proc, signal.SIGTERM)
                elif proc.detached:
                    job, proc.waiting = proc.waiting, None
                    if job is None or not self._send(proc, job):
                        self._stop_one(proc)
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
            self._done(job, message[2])
        else:
            self._retry(job, message[3], message[2])

    def _serve_call(self, proc: _Proc, n: int, payload: bytes) -> None:
        """A task running in ``proc`` submits tasks (``_worker._ChildApp``): this process's App
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
                proc.conn.send(reply)
            except OSError:
                pass  # the worker is gone; the tasks it submitted run all the same

    def _done(self, job: Job, rec: dict[str, Any]) -> None:
        live = job.live
        enc = rec.get("rv")
        if rec["status"] == "SUCCESSFUL" and enc is not None:
            waiting = getattr(self.runtime, "waiting", {})
            if "j" in enc or job.options.link or job.id in waiting:
                try:
                    live.value = self.store.decode_value(enc, f"the value of task {job.id}")
                except Exception:
                    live.value = MISSING  # TaskResult decodes it again and shows the error
        self.store.observe(live, rec)
        self.runtime.finished(job)

    def _retry(self, job: Job, rec: dict[str, Any], delay: float) -> None:
        self.store.observe(job.live, rec)
        job.request.retries = rec.get("retries") or 0
        self.runtime.schedule(job, delay)

    def _maybe_dead(self, proc: _Proc) -> None:
        if proc.eof_at is not None and (
            proc.code_known or time.monotonic() - proc.eof_at >= EXIT_WAIT
        ):
            self._dead(proc)

    def _dead(self, proc: _Proc) -> None:
        """A worker is gone (its socket closed and its exit status is known, or overdue)."""
        with self._lock:
            if self._procs.pop(proc.n, None) is None:
                return
            if proc.pid is not None:
                self._by_pid.pop(proc.pid, None)
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
                        f"worker processes die before they start ({_how(proc)}); check that "
                        f"`{sys.executable} -c 'import nbtasks._worker'` works"
                    )
            if not proc.detached and not self._stopping and self.error is None:
                self._fork(detached=False)
            failed = [e[2] for e in self._queue] if self.error is not None else []
            if failed:
                self._queue.clear()
            for p in self._procs.values():  # queued jobs may go to the other workers now
                if p.ready and not p.detached:
                    self._fill(p)
        proc.conn.close()
        self._persist_reported(proc)
        fault = self._fault_text(proc)
        for i, job in enumerate(jobs):
            if i == 0 and proc.ready and job.id not in proc.undelivered:
                self._lost(proc, job, fault)
            else:
                self._requeue(job)
        for job in failed:
            Attempt(job, self.runtime).end(MISSING, WorkerLost(str(self.error)))

    def _persist_reported(self, proc: _Proc) -> None:
        """Final records the dead worker reported but may not have committed: write them.
        Its writer commits at every tick (0.1 s), so only the last half second is read back."""
        store = self.store
        recent = time.monotonic() - 5 * POLL
        for reported, job in proc.recent:
            live = job.live
            stored: str | None = "SUCCESSFUL"  # (any final status) committed long ago
            if reported >= recent:
                try:
                    stored = store.read_record(job.id)["status"]
                except Exception:
                    stored = None
            if stored not in _FINISHED_NAMES:
                live.rec["owner"] = store.owner
                store.adopt(live)
                store.mark(live)  # committed by this process's writer, then let go
            elif store.live.get(live.id) is live:
                del store.live[live.id]  # committed by the worker: read from the store now
        proc.recent.clear()

    def _requeue(self, job: Job) -> None:
        """A job the dead worker never started: back to READY and to another worker."""
        live = job.live
        with self.runtime.lock:
            status = live.rec["status"]
            cancelled = status == "RUNNING" and job.cancel_reason is not None
            if status == "RUNNING" and not cancelled:
                self.store.observe(live, {"status": "READY"})
        if cancelled:
            Attempt(job, self.runtime).end(MISSING, TaskCancelled(str(job.cancel_reason)))
        elif status in ("READY", "RUNNING"):
            if self.error is not None:
                Attempt(job, self.runtime).end(MISSING, WorkerLost(str(self.error)))
            else:
                self.runtime.schedule(job, 0.0)

    def _fault_text(self, proc: _Proc) -> str:
        """What faulthandler wrote when the worker crashed (a Python traceback), if anything."""
        if proc.pid is None:
            return ""
        path = self._faults / f"{proc.pid}.txt"
        try:
            text = path.read_text(errors="replace").strip()
            path.unlink()
        except OSError:
            return ""
        return text[-4000:]

    def _lost(self, proc: _Proc, job: Job, fault: str) -> None:
        """A worker died running a job: its outcome, from what the worker last committed."""
        live, store = job.live, self.store
        try:
            rec: dict[str, Any] | None = store.read_record(job.id)
        except Exception:
            rec = None
        if rec is not None:
            status = rec["status"]
            if status in _BY_WORKER:  # it finished just before it died
                self._done(job, rec)
                return
            n = rec.get("retries") or 0
            if status == "READY" and n > (live.rec.get("retries") or 0):  # it asked for a retry
                backoff = job.options.retry_backoff
                self._retry(job, rec, backoff * 2 ** (n - 1) if backoff else 0.0)
                return
            store.observe(live, {k: v for k, v in rec.items() if k != "status"})
        if rec is None or rec["status"] == "READY":  # it died before committing its claim
            now = time.time()
            store.observe(
                live,
                {
                    "worker_ids": [
                        *live.rec.get("worker_ids", []),
                        f"{HOST}:{proc.pid}:MainThread",
                    ],
                    "started_at": live.rec.get("started_at") or now,
                    "last_attempted_at": now,
                },
            )
        store.observe(live, {"owner": store.owner})  # this process owns the record again
        store.adopt(live)
        # A large return value the worker committed before its record said so (it died in
        # between) belongs to no record: delete it with the outcome (a retry writes its own).
        store.put_extra(f"v:{job.id}:rv", None)
        job.request.retries = live.rec.get("retries") or 0
        error = proc.stop or WorkerLost(_death(proc, job, fault))
        if isinstance(error, TaskTimeout | TaskCancelled) and proc.signalled == "SIGKILL":
            error = type(error)(
                f"{error}; its worker process {proc.pid} did not stop on SIGTERM and was "
                f"killed after the {self.grace:g}s grace period"
            )
        Attempt(job, self.runtime).end(MISSING, error)

    def _stop_one(self, proc: _Proc) -> None:
        try:
            proc.conn.send(("stop",))
        except OSError:
            pass

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
                p.stop = TaskTimeout(f"{_limit(job)}; its worker process {p.pid} was terminated")
                self._terminate(p)
            if p.kill_at is not None and now >= p.kill_at and p.eof_at is None:
                p.kill_at = None
                p.signalled = "SIGKILL"
                self._signal(p, signal.SIGKILL)
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
            if p.jobs and p.jobs[0] is job and rec["status"] == "RUNNING":
                self.store.observe(job.live, {k: v for k, v in rec.items() if k != "status"})

    def _stop_workers(self) -> None:
        """Shutdown: the pool workers are idle now; stop them, wait, and let the zygote go."""
        with self._lock:
            detached = [p for p in self._procs.values() if p.detached]
            pool = [p for p in self._procs.values() if not p.detached]
            self._procs = {p.n: p for p in pool}
        for p in detached:  # keeps running on its own; this process stops listening
            try:
                self._selector.unregister(p.conn)
            except (KeyError, ValueError):
                pass
            p.conn.close()
        for p in pool:
            self._stop_one(p)
        deadline = time.monotonic() + STOP_WAIT
        while self._procs and time.monotonic() < deadline:
            self._update_selector()
            for key, _ in self._selector.select(0.05):
                if key.data == "ctrl":
                    self._zygote_message()
                elif key.data is not None:
                    self._readable(key.data)
                else:
                    os.read(self._wake_r, 4096)
            for p in list(self._procs.values()):
                self._maybe_dead(p)
        for p in list(self._procs.values()):
            self._signal(p, signal.SIGKILL)
        with self._lock:
            self._zygote_gone()  # it exits when its socket closes; detached workers stay

    def _close(self) -> None:
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._faults, ignore_errors=True)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


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


def _small(job: Job) -> bool:
    """A job whose message fits in a socket's buffer, so it can wait in a busy worker's."""
    return len(job.payload or b"") < PREFETCH_MAX


def _limit(job: Job) -> str:
    return (
        f"task {job.request.task_name}[{job.id}] ran past its timeout of {job.options.timeout:g}s"
    )


def _how(proc: _Proc) -> str:
    code = proc.code
    if not proc.code_known:
        return "ended (its exit status is unknown)"
    if code is not None and code < 0:
        sig = signal.Signals(-code)
        return f"was killed by {sig.name} ({signal.strsignal(sig) or sig.name})"
    return f"exited with code {code}"


def _death(proc: _Proc, job: Job, fault: str) -> str:
    """The WorkerLost message: which process, how it ended, and what faulthandler saw."""
    name = f"{job.request.task_name}[{job.id}]"
    text = f"the worker process {proc.pid} running task {name} {_how(proc)}"
    return f"{text}\n{fault}" if fault else text


def _unpicklable_task(task: Task, exc: Exception) -> str:
    """Name what in a task's function cannot be pickled: a global, a closure variable, a default."""
    fn = getattr(task, "_fn", None) or type(task)
    named: list[tuple[str, Any]] = []
    code = getattr(fn, "__code__", None)
    if code is not None:
        globs = getattr(fn, "__globals__", {})
        named += [(f"global {n!r}", globs[n]) for n in code.co_names if n in globs]
        cells = getattr(fn, "__closure__", None) or ()
        named += [
            (f"closure variable {n!r}", c.cell_contents)
            for n, c in zip(code.co_freevars, cells, strict=False)
            if _has_contents(c)
        ]
        named += [(f"default {i}", d) for i, d in enumerate(getattr(fn, "__defaults__", ()) or ())]
    found = find_unpicklable(named)
    detail = (
        f"its {found[0]} is a {found[1]}, which cannot be pickled ({found[2]})"
        if found is not None
        else str(exc.__cause__ or exc)
    )
    return (
        f"task {task.name} cannot run in a worker process: {detail}. A process task is "
        "pickled with cloudpickle at submit; pass what it needs as picklable arguments, or "
        "create it inside the task"
    )


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True
