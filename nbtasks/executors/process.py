"""Worker processes (SPEC §7): a supervised pool, crash isolation, hard timeouts, cancel, and
detached tasks that outlive the kernel.

Not ``concurrent.futures.ProcessPoolExecutor``: one dead worker breaks its whole pool
(``BrokenProcessPool``); here a dead worker fails only its own task and is replaced (DESIGN
principle 10). The pieces:

- a **zygote** (``_worker.zygote``): a new interpreter started with ``subprocess`` (a threaded
  kernel is never forked) that preloads nbtasks, diskcache and cloudpickle, ignores SIGINT, forks
  the workers and reports their exit status;
- **workers**: each runs one task at a time and owns its record while it runs it; it writes
  progress, output, heartbeats and the result to the store itself and commits before it reports
  ``done``, so the parent only mirrors what is already durable (``Store.observe``);
- one **supervisor thread** here: it reads the workers' reports, gives the next job to a worker
  that became free, mirrors running tasks' records from the store (~10 times a second) so this
  process's ``TaskResult`` and widgets see them live, enforces hard timeouts and cancels
  (SIGTERM, then SIGKILL after a grace period) and turns a worker's death into the task's outcome
  (``WorkerLost`` with the signal or exit code, ``TaskTimeout``, ``CANCELLED``), retries
  included, through the core's ``Attempt.end``.

A submit hands the job to an idle worker from the submitting thread (no thread hop); the job's
payload, the task and its options pickled with cloudpickle, was made at submit
(``Runtime.build``), so what cannot be pickled fails there and nothing is stored.

A **detached** task (``detach=True``) gets a worker of its own, forked in a new session: a
kernel restart, the kernel dying or Interrupt do not reach it. Its record names it as owner
before it starts, so a new kernel's store sweep leaves it RUNNING; it keeps writing progress and
its result, and acts on cancel requests and its hard timeout by itself once the parent is gone.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._attempt import Attempt, Job, Options, _limit_text
from .._codec import dumps, find_unpicklable
from .._errors import TaskCancelled, TaskTimeout, UnknownTaskId, WorkerLost
from .._model import FINISHED, MISSING
from .._store import _start_time
from .._worker import BOOT

if TYPE_CHECKING:
    from .._attempt import Runtime
    from .._task import Task

GRACE: Final = 2.0  # seconds between SIGTERM and SIGKILL
EXIT_WAIT: Final = 1.0  # after a worker's socket closes: how long its exit status may take
POLL: Final = 0.1  # seconds between reads of running tasks' records (live progress)
STOP_WAIT: Final = 5.0  # shutdown: how long workers get to exit before SIGKILL
_FINISHED_NAMES: Final = frozenset(s.value for s in FINISHED)
#: Task attributes that only make sense in this process (the App and what derives from it).
_PARENT_ONLY: Final = frozenset({"app", "_target", "_signature", "_default_options"})


class _Proc:
    """A worker process as the parent sees it."""

    def __init__(self, n: int, conn: Connection, detached: bool) -> None:
        self.n = n
        self.conn = conn
        self.detached = detached
        self.pid: int | None = None
        self.start: str | None = None  # its start time (/proc), so a reused pid is not signalled
        self.owner: str | None = None
        self.ready = False
        self.job: Job | None = None
        self.delivered = False
        self.handed_at = 0.0
        self.deadline: float | None = None
        self.stop: BaseException | None = None  # why we terminate it (timeout, cancel)
        self.signalled: str | None = None
        self.kill_at: float | None = None
        self.eof_at: float | None = None
        self.code: int | None = None
        self.code_known = False
        self.polled = 0.0

    def __repr__(self) -> str:
        return f"<worker {self.pid} {'detached ' if self.detached else ''}job={self.job}>"


class ProcessExecutor:
    name = "process"

    def __init__(self, runtime: Runtime, workers: int = 2, grace: float = GRACE) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.size = workers
        self.grace = grace
        self.error: BaseException | None = None  # the pool cannot start workers (or a bug)
        self._start_failures = 0
        self._lock = threading.Lock()
        self._queue: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._nums = itertools.count()
        self._idle: list[_Proc] = []
        self._procs: dict[int, _Proc] = {}  # request number -> process
        self._by_pid: dict[int, _Proc] = {}
        self._by_conn: dict[Connection, _Proc] = {}
        self._running: dict[str, _Proc] = {}  # task id -> the process it was handed to
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._faults = Path(tempfile.mkdtemp(prefix="nbtasks-workers-"))
        self._zygote: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
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
        parent runs those). A TypeError names what in the task cannot be pickled."""
        clone = object.__new__(type(task))
        clone.__dict__.update({k: v for k, v in vars(task).items() if k not in _PARENT_ONLY})
        opts = dataclasses.replace(options, link=[], link_error=[])
        try:
            return dumps((clone, opts))
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
                    self._fork(detached=True, job=job)
                    return
                if not self._idle:
                    heapq.heappush(self._queue, (-job.options.priority, next(self._seq), job))
                    return
                proc = self._idle.pop()
                self._reserve(proc, job)
        if error is not None:  # recorded on the task, not raised after it was stored
            Attempt(job, self.runtime).end(MISSING, WorkerLost(str(error)))
        elif not self._hand(proc, job):
            self._give(proc)

    def _reserve(self, proc: _Proc, job: Job) -> None:
        proc.job = job
        proc.delivered = False
        self._running[job.id] = proc

    def _hand(self, proc: _Proc, job: Job) -> bool:
        """Hand a reserved job's record to its worker and send the job; False (and the worker
        is free again) if it was cancelled meanwhile."""
        live, store = job.live, self.store
        if proc.detached:
            # The record names the detached process as owner before it starts: a new kernel's
            # sweep must not take it for an orphan of this one.
            store.change(live, owner=proc.owner)
        store.release(live)
        with self.runtime.lock:
            if live.rec["status"] != "READY" or job.cancel_reason is not None:
                with self._lock:
                    self._unreserve(proc, job)
                return False
            rec = dict(live.rec)
            store.observe(live, {"status": "RUNNING"})
        timeout = job.options.timeout
        proc.handed_at = time.monotonic()
        proc.polled = proc.handed_at
        proc.deadline = None if timeout is None else proc.handed_at + timeout
        try:
            proc.conn.send(("run", rec, job.payload))
        except OSError:
            return True  # it died: its death puts the job back in the queue
        proc.delivered = True
        return True

    def _unreserve(self, proc: _Proc, job: Job) -> None:
        if proc.job is job:
            proc.job = None
        if self._running.get(job.id) is proc:
            del self._running[job.id]

    def _give(self, proc: _Proc) -> None:
        """A pool worker is free: give it the next job that is still READY, or make it idle."""
        while True:
            with self._lock:
                if proc.signalled or proc.eof_at is not None:
                    return  # it is going away; a replacement takes its place
                if not self._queue:
                    self._idle.append(proc)
                    return
                job = heapq.heappop(self._queue)[2]
                self._reserve(proc, job)
            if self._hand(proc, job):
                return

    def cancel_running(self, job: Job) -> bool:
        with self._lock:
            proc = self._running.get(job.id)
            if proc is None:
                return False
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

    def _fork(self, detached: bool, job: Job | None = None) -> _Proc:
        """Ask the zygote for a worker (call with _lock held); it reports ``ready`` itself."""
        if self._ctrl is None:
            self._start_zygote()
        assert self._ctrl is not None
        mine, theirs = socket.socketpair()
        proc = _Proc(next(self._nums), Connection(mine.detach()), detached)
        self._procs[proc.n] = proc
        self._by_conn[proc.conn] = proc
        if job is not None:
            self._reserve(proc, job)
        request = json.dumps({"n": proc.n, "detached": detached}).encode()
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
                if proc in self._idle:
                    self._idle.remove(proc)
            self._signal(proc, signal.SIGTERM)
        self._wakeup()

    def _signal(self, proc: _Proc, sig: signal.Signals) -> None:
        pid = proc.pid
        if pid is None or proc.code_known:
            return  # not started yet: signalled when it reports (see _on_forked)
        if proc.start is not None and _start_time(pid) != proc.start:
            return  # gone, and its pid reused
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wakeup(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # ------------------------------------------------------------------ the supervisor

    def _supervise(self) -> None:
        try:
            while not self._finished():
                with self._lock:
                    conns = [p.conn for p in self._procs.values() if p.eof_at is None]
                    ctrl = self._ctrl
                objects: list[Any] = [self._wake_r, *conns]
                if ctrl is not None:
                    objects.append(ctrl)
                for obj in wait(objects, self._next_timer()):
                    if obj == self._wake_r:
                        os.read(self._wake_r, 4096)
                    elif obj is ctrl:
                        self._zygote_message()
                    else:
                        self._message(self._by_conn[obj])  # type: ignore[index]
                self._timers()
                self._poll()
            self._stop_workers()
        except BaseException as exc:  # pragma: no cover - a bug: show it on the next submit
            self.error = exc
            raise
        finally:
            self._close()

    def _finished(self) -> bool:
        """Shutting down, and nothing left to wait for: no queued job, no pool worker busy, no
        detached task still starting (one that runs is left to itself)."""
        with self._lock:
            if not self._stopping or self._queue:
                return False
            return not any(
                p.job is not None and (not p.detached or not p.delivered)
                for p in self._procs.values()
            )

    def _next_timer(self) -> float:
        now = time.monotonic()
        due = [now + POLL]
        with self._lock:
            for p in self._procs.values():
                if p.deadline is not None and p.stop is None:
                    due.append(p.deadline)
                if p.kill_at is not None:
                    due.append(p.kill_at)
                if p.eof_at is not None:
                    due.append(p.eof_at + EXIT_WAIT)
        return max(0.0, min(due) - now)

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
                if proc is None:
                    return
                proc.pid = message["pid"]
                self._by_pid[proc.pid] = proc
            else:
                proc = self._by_pid.get(message["exit"])
                if proc is None:
                    return
                proc.code, proc.code_known = message["code"], True
        if "exit" in message:
            self._maybe_dead(proc)

    def _message(self, proc: _Proc) -> None:
        try:
            message = proc.conn.recv()
        except (EOFError, OSError):
            proc.eof_at = time.monotonic()
            self._maybe_dead(proc)
            return
        kind = message[0]
        if kind == "ready":
            proc.pid, proc.start, proc.owner = message[1], message[2], message[3]
            with self._lock:
                self._by_pid[proc.pid] = proc
                self._start_failures = 0
            proc.ready = True
            if proc.signalled:
                self._signal(proc, signal.SIGTERM)
            elif proc.detached:
                job = proc.job
                if job is not None and not self._hand(proc, job):
                    self._stop_one(proc)
            else:
                self._give(proc)
        elif kind in ("done", "retry"):
            job = proc.job
            with self._lock:
                if job is not None:
                    self._unreserve(proc, job)
                proc.deadline = None
            if not proc.detached:
                self._give(proc)
            if job is None or job.id != message[1]:
                return  # pragma: no cover - a report for a job we no longer track
            if kind == "done":
                self._done(job, message[2])
            else:
                self._retry(job, message[3], message[2])

    def _done(self, job: Job, rec: dict[str, Any]) -> None:
        live = job.live
        if rec["status"] == "SUCCESSFUL" and rec.get("rv") is not None:
            enc = rec["rv"]
            if "j" in enc or job.options.link or job.id in getattr(self.runtime, "waiting", {}):
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
        with self._lock:
            if self._procs.pop(proc.n, None) is None:
                return
            self._by_conn.pop(proc.conn, None)
            if proc.pid is not None:
                self._by_pid.pop(proc.pid, None)
            if proc in self._idle:
                self._idle.remove(proc)
            job = proc.job
            if job is not None:
                self._unreserve(proc, job)
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
        proc.conn.close()
        fault = self._fault_text(proc)
        if job is not None:
            self._lost(proc, job, fault)
        for queued in failed:
            Attempt(queued, self.runtime).end(MISSING, WorkerLost(str(self.error)))

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
        """A worker died with a job: the job's outcome, from what the worker last committed."""
        live, store = job.live, self.store
        if not proc.delivered:  # it never reached the worker: run it elsewhere
            with self.runtime.lock:
                status = live.rec["status"]
                cancelled = status == "RUNNING" and job.cancel_reason is not None
                if status == "RUNNING" and not cancelled:
                    store.observe(live, {"status": "READY"})
            if cancelled:
                Attempt(job, self.runtime).end(MISSING, TaskCancelled(str(job.cancel_reason)))
            elif status in ("READY", "RUNNING"):
                if self.error is not None:
                    Attempt(job, self.runtime).end(MISSING, WorkerLost(str(self.error)))
                else:
                    self.runtime.schedule(job, 0.0)
            return
        try:
            rec: dict[str, Any] | None = store.read_record(job.id)
        except (UnknownTaskId, Exception):
            rec = None
        retries = live.rec.get("retries") or 0
        if rec is not None:
            status = rec["status"]
            if status in _FINISHED_NAMES:  # it finished just before it died
                self._done(job, rec)
                return
            if status == "READY" and (rec.get("retries") or 0) > retries:  # asked for a retry
                n = rec.get("retries") or 0
                backoff = job.options.retry_backoff
                self._retry(job, rec, backoff * 2 ** (n - 1) if backoff else 0.0)
                return
            store.observe(live, {k: v for k, v in rec.items() if k != "status"})
        store.observe(live, {"owner": store.owner})  # this process owns the record again
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
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            job = p.job
            deadline = p.deadline
            due = deadline is not None and now >= deadline
            if due and job is not None and p.delivered and p.stop is None:
                p.stop = TaskTimeout(
                    f"{_limit_text_for(job)}; its worker process {p.pid} was terminated"
                )
                self._terminate(p)
            if p.kill_at is not None and now >= p.kill_at and p.eof_at is None:
                p.kill_at = None
                p.signalled = "SIGKILL"
                self._signal(p, signal.SIGKILL)
            if p.eof_at is not None:
                self._maybe_dead(p)

    def _poll(self) -> None:
        """Mirror running tasks' records from the store, so this process sees them live."""
        now = time.monotonic()
        with self._lock:
            busy = [p for p in self._procs.values() if p.delivered and p.job is not None]
        for p in busy:
            job = p.job
            if job is None or now - p.polled < POLL:
                continue
            p.polled = now
            try:
                rec = self.store.read_record(job.id)
            except Exception:
                continue
            if p.job is job and rec["status"] == "RUNNING":
                self.store.observe(job.live, {k: v for k, v in rec.items() if k != "status"})

    def _stop_workers(self) -> None:
        """Shutdown: every pool worker is idle now; stop them, wait, and let the zygote go."""
        with self._lock:
            pool = [p for p in self._procs.values() if not p.detached]
            for p in self._procs.values():
                if p.detached:  # keeps running on its own; we stop listening
                    p.conn.close()
            self._procs = {p.n: p for p in pool}
            self._idle.clear()
        for p in pool:
            self._stop_one(p)
        deadline = time.monotonic() + STOP_WAIT
        while self._procs and time.monotonic() < deadline:
            with self._lock:
                conns = [p.conn for p in self._procs.values() if p.eof_at is None]
                ctrl = self._ctrl
            objects: list[Any] = [*conns] + ([ctrl] if ctrl is not None else [])
            for obj in wait(objects, 0.05):
                if obj is ctrl:
                    self._zygote_message()
                else:
                    self._message(self._by_conn[obj])  # type: ignore[index]
            for p in list(self._procs.values()):
                self._maybe_dead(p)
        for p in list(self._procs.values()):
            self._signal(p, signal.SIGKILL)
        with self._lock:
            self._zygote_gone()  # it exits when its socket closes; detached ones stay

    def _close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._faults, ignore_errors=True)


def _limit_text_for(job: Job) -> str:
    attempt = job.attempt
    if attempt is not None:
        return _limit_text(attempt, "timeout")
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
