"""A worker process of the process executor (SPEC §7): its main loop.

A **worker** owns the task it runs for the attempt (DESIGN principle 2): it opens the store itself
and runs the core's attempt lifecycle (``attempt.WorkerAttempt``: claim, call, record, hooks), so
progress, metadata, state, output, heartbeats and the result go from the child to the store and
survive the parent. It commits a
task's record before it reports the task finished or retried, so what the parent is told is
durable, and it hands the record back to the parent then. Everything the worker writes to its
file descriptors 1 and 2 (C code, subprocesses) is captured into the running task's output.

While the parent lives, it enforces hard timeouts and cancels by terminating the worker. A worker
whose parent is gone (a detached task after a kernel restart) enforces them itself: it records the
outcome and exits. It also acts on cancel requests (``x:<id>`` keys) written by any process.

A task running in a pool worker **submits other tasks** through its parent (``child_app``,
whose App is ``task.app`` here): the call goes over the worker's socket, the parent's App builds,
commits and runs the new tasks as if they were submitted there (it owns them), and replies with
their records (or the exception, raised here). The handles returned here read the store; they
never write it.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from ... import _codec, _rich
from ..._attempt import Attempt, Job, Options, limit_text, record_interrupted
from ..._errors import NbtasksError, SoftTimeLimitExceeded, TaskCancelled, TaskTimeout
from ..._model import MISSING, Request, TaskRecord
from ...store import Live, Store, describe_owner, owner_alive, process_start_time
from ..payload import load_task
from .attempt import ChildRuntime, WorkerAttempt
from .calls import CALLS
from .channel import Channel
from .child_app import _ChildApp
from .output import Output, redirect_stdio
from .usage import REPORT_STEP, peak_rss

HEARTBEAT: Final = 5.0  # seconds between heartbeats written to a running task's record
MONITOR: Final = 0.2  # seconds between the monitor thread's checks
_LOADED_MAX: Final = 64  # unpickled (task, options) payloads kept per worker
#: A test hook (tests/integration/test_process.py), off unless set: ``claim`` or ``result``,
#: optionally followed by ``:<task name>``. A worker started with it set exits with CRASH_EXIT
#: at that step of the first attempt of each task (of that name): right after it claims the
#: task (the claim not committed yet), or right after it encoded the return value and committed
#: it (a large value sits in its own entry) but before the record says so. Read once, when a
#: worker starts; when unset, each task costs one attribute test at each step.
CRASH_ENV: Final = "NBTASKS_TEST_CRASH_AT"
CRASH_EXIT: Final = 86
#: A test hook: ``watchdog`` has soft time limits raised by the watchdog thread even where
#: SIGALRM exists (tests/integration/test_process.py). Read once, when a worker starts.
SOFT_ENV: Final = "NBTASKS_TEST_SOFT_LIMIT"
HAS_ALARM: Final = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


def worker_main(sock: socket.socket, config: dict[str, Any], detached: bool) -> None:
    """Serve the pool over ``sock`` (a detached worker is in a session of its own already)."""
    out_r, out_w, keep_err = redirect_stdio(detached)
    # Before any payload is unpickled: a task that refers to IPython's display gets the one
    # that keeps its bundles (a module imported by the unpickling is patched as it loads).
    _rich.install_display_capture()
    Worker(Channel(sock), config, detached, Output(out_r, out_w, keep_err)).serve()


class _Reply:
    """A call this worker sent to its parent, and the reply once it is read."""

    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: tuple[Any, ...] = ()


class _Unrunnable:
    """Stands in for a task whose payload or arguments could not be loaded in the worker, so
    the failure is recorded like any other (with its traceback). It has no hooks."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self._error = error
        self.hooks: frozenset[str] = frozenset()
        self.is_async = False

    def invoke(self, ctx: Any, args: Any, kwargs: Any) -> Any:
        raise self._error


class Worker:
    def __init__(
        self,
        conn: Channel,
        config: dict[str, Any],
        detached: bool,
        output: Output,
    ) -> None:
        self.conn = conn
        self.detached = detached
        self.parent_owner: str = config["owner"]
        self.store = Store(config["store"], trust=bool(config["trust"]), sweep=False)
        self.store.commit_at_tick = True  # the parent hears of each task over the pipe
        self.runtime = ChildRuntime(self)
        self.pid = os.getpid()
        self._send_lock = threading.Lock()
        self.end_lock = threading.RLock()  # _terminate ends the attempt while holding it
        self.attempt: WorkerAttempt | None = None
        self.retry_delay: float | None = None
        self.orphaned = False
        self._cancel: str | None = None
        self._wake = threading.Event()
        self._loaded: dict[bytes, tuple[Any, Options]] = {}  # payload -> (task, options)
        self.output = output
        self.crash_at = _crash_point(os.environ.get(CRASH_ENV))
        self.app = _ChildApp(self, str(config.get("app_name") or "worker"))
        # Reading the socket: the serve loop between tasks, a task's submit (any of its
        # threads) while it runs. Whoever holds _read_lock reads, and hands each message over:
        # a reply to the call waiting for it, anything else to the serve loop (_inbox).
        self._read_lock = threading.Lock()
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._replies: dict[int, _Reply] = {}
        self._call_numbers = itertools.count()
        self.quiet_depth = 0  # > 0: the main thread is sending or reading a message
        self.soft_pending = False  # a soft time limit that fired meanwhile
        fault_dir = config.get("faults")
        if fault_dir:
            import faulthandler

            path = Path(fault_dir) / f"{self.pid}.txt"
            self._fault_file = open(path, "w")  # noqa: SIM115  (open for the process's life)
            faulthandler.enable(self._fault_file, all_threads=False)  # the task's thread
        # Soft time limits: SIGALRM where it exists (it interrupts a blocking call), else a
        # watchdog thread (attempt.WorkerAttempt); SOFT_ENV forces the watchdog (tests).
        self.soft_by_signal = HAS_ALARM and os.environ.get(SOFT_ENV) != "watchdog"
        if self.soft_by_signal:
            signal.signal(signal.SIGALRM, self._soft_timeout)
        output.start()
        threading.Thread(target=self._monitor, name="nbtasks-worker-monitor", daemon=True).start()

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Run the jobs the parent sends, in order. It sends the next one before this one ends
        (so no round trip is waited for), and "cancel" for one still queued here."""
        self.send(("ready", self.pid, process_start_time(self.pid), self.store.owner))
        queue: collections.deque[tuple[TaskRecord, bytes]] = collections.deque()
        cancelled: set[str] = set()
        stop = False
        while True:
            try:
                while not stop and (not queue or self._pending()):
                    message = self._next()
                    if message[0] == "run":
                        queue.append((message[1], message[2]))
                    elif message[0] == "cancel":
                        cancelled.add(message[1])
                    elif message[0] == "stop":
                        stop = True
            except (EOFError, OSError):
                stop = self.orphaned = True  # the parent is gone
            if not queue or (stop and self.orphaned and not self.detached):
                break
            rec, payload = queue.popleft()
            self.run(rec, payload, rec["id"] in cancelled)
            cancelled.discard(rec["id"])
            if self.detached:
                break
        self.store.close()
        fault = getattr(self, "_fault_file", None)
        if fault is not None:
            fault.close()
            with contextlib.suppress(OSError):  # a detached worker's folder may be gone
                os.unlink(fault.name)

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except OSError:
                self.orphaned = True

    def _pending(self) -> bool:
        """A message for the serve loop has arrived (or the socket is at its end)."""
        with self._read_lock:
            while not self._inbox and self.conn.poll():
                self._dispatch(self.conn.recv())  # EOFError at the end: the parent is gone
            return bool(self._inbox)

    def _next(self) -> tuple[Any, ...]:
        """The serve loop's next message (blocks until one arrives)."""
        with self._read_lock:
            while not self._inbox:
                self._dispatch(self.conn.recv())
            return self._inbox.popleft()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        if message[0] == "called":
            reply = self._replies.get(message[1])
            if reply is not None:  # else its caller gave up (a soft time limit)
                reply.message = message
                reply.event.set()
        else:
            self._inbox.append(message)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Have the App that owns this worker run ``App.<method>(*args, **kwargs)`` (a submit,
        see _ChildApp) and return its reply, or raise what it raised. Any thread may call."""
        if self.detached:
            raise NbtasksError(_detached_submit(self.attempt))
        if method not in CALLS:
            raise AttributeError(f"App.{method} is not available in a worker process")
        payload = _pickle_call(method, args, kwargs)
        n = next(self._call_numbers)
        reply = self._replies[n] = _Reply()
        try:
            with self._quiet():
                self.send(("call", n, payload))
            while not reply.event.is_set():
                if self.orphaned:
                    raise NbtasksError(_parent_gone(self.parent_owner))
                with self._quiet():  # the lock is taken and let go with no soft limit between
                    idle = self._read_for(reply)
                if idle:  # wait here, where a soft time limit may land
                    select.select([self.conn], [], [], 0.1)
        finally:
            self._replies.pop(n, None)
        _, _, ok, value = reply.message
        if ok:
            return value
        data, text = value
        try:
            error = _codec.loads(data)
        except Exception:
            error = NbtasksError(text)
        raise error

    def _read_for(self, reply: _Reply) -> bool:
        """One step of a call's wait: read a message if one has arrived and no other thread is
        reading (that one hands our reply over). True if there was nothing to read yet."""
        if not self._read_lock.acquire(timeout=0.05):
            return False
        try:
            if reply.event.is_set():
                return False
            if not self.conn.poll():
                return True
            self._dispatch(self.conn.recv())
            return False
        except (EOFError, OSError):
            self.orphaned = True
            raise NbtasksError(_parent_gone(self.parent_owner)) from None
        finally:
            self._read_lock.release()

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """The main thread sends or reads a message, or holds the read lock: a soft time limit
        must not land halfway (the rest of a message would be taken for the next one; the lock
        would stay taken). It is raised at the end instead."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers run in the main thread only; so do watchdog limits
            return
        attempt = self.attempt
        if attempt is not None and not self.soft_by_signal:
            attempt.enter_quiet()  # the watchdog's limit: withdrawn if posted, raised later
        else:
            self.quiet_depth += 1
        try:
            yield
        finally:
            self.quiet_depth -= 1
        if self.soft_pending and not self.quiet_depth:
            self.soft_pending = False
            self._soft_timeout(0, None)

    def run(self, rec: TaskRecord, payload: bytes, cancelled: bool = False) -> None:
        tid = rec["id"]
        store = self.store
        task: Any
        try:
            task, options = self._load(payload)
            args = tuple(store.decode_value(rec["args"], f"the args of task {tid}"))
            kwargs = store.decode_value(rec["kwargs"], f"the kwargs of task {tid}")
        except Exception as exc:  # e.g. a module the worker cannot import
            task, options, args, kwargs = _Unrunnable(rec["task_name"], exc), Options(), (), {}
        rec["owner"] = store.owner  # this process owns the record for the attempt
        live = Live(rec, args, kwargs)
        store.adopt(live)
        request = Request.from_record(rec, args, kwargs)
        job = Job(live, task, args, kwargs, request, options, chunk=bool(rec.get("chunk")))
        if cancelled:
            job.cancel_reason = "cancelled"  # the claim records it CANCELLED; it never runs
        while (delay := self._run_once(job)) is not None:
            time.sleep(delay)  # a detached task retries in its own process

    def _run_once(self, job: Job) -> float | None:
        """Run one attempt of ``job``; the delay before its next one if it is to retry here
        (a detached worker's runtime sets ``retry_delay`` as the attempt records the retry)."""
        self.retry_delay = None
        attempt = WorkerAttempt(job, self.runtime, self)
        self.output.ctx = attempt.ctx
        self.attempt = attempt
        try:
            attempt.run()
        except SoftTimeLimitExceeded:
            pass  # raised asynchronously just as the task returned: recorded already
        finally:
            self.attempt = None
            self.output.ctx = None
        return self.retry_delay

    def _load(self, payload: bytes) -> tuple[Any, Options]:
        hit = self._loaded.get(payload)
        if hit is None:
            task, options = load_task(payload)
            # A Task unpickled here (this one, and any in its closure or arguments) has no App:
            # Task.__reduce__ leaves it behind. The class attribute stands in for it.
            sys.modules["nbtasks._task"].Task.app = self.app
            if len(self._loaded) >= _LOADED_MAX:
                self._loaded.clear()
            hit = self._loaded[payload] = (task, options)
        return hit

    def crash(self, step: str, job: Job) -> None:
        """The test hook (CRASH_ENV): exit here if it names this step (and this task)."""
        assert self.crash_at is not None
        at, name = self.crash_at
        if at != step or (name is not None and name != job.request.task_name):
            return
        if job.request.retries:
            return  # the first attempt only: a retried task then shows what follows
        if step == "result":
            self.store.flush()  # the value is in the store; the record still says RUNNING
        os._exit(CRASH_EXIT)

    # ------------------------------------------------------------------ output capture

    def drain_output(self) -> None:
        """Before a task's outcome is recorded: move what it wrote to fds 1 and 2 into it."""
        self.output.drain()

    def _soft_timeout(self, signum: int, frame: Any) -> None:
        attempt = self.attempt
        if attempt is not None and attempt.in_user_code and not attempt.ended:
            if self.quiet_depth:
                self.soft_pending = True  # raised once the message is through (_quiet)
                return
            attempt.ctx.soft_fired = True
            raise SoftTimeLimitExceeded(limit_text(attempt.job, "soft_timeout"))

    # ------------------------------------------------------------------ the monitor

    def cancel_requested(self, task_id: str) -> None:
        """The supervisor saw a cancel request (``x:<id>``) for our task."""
        self._cancel = task_id
        self._wake.set()

    def _monitor(self) -> None:
        """Heartbeats; and for a worker whose parent is gone (or a detached one): cancel
        requests and the hard timeout, enforced by recording the outcome and exiting."""
        last_beat = time.monotonic()
        reported: tuple[WorkerAttempt | None, int] = (None, 0)  # the peak sent, per attempt
        while True:
            self._wake.wait(MONITOR)
            self._wake.clear()
            attempt = self.attempt
            if attempt is None or attempt.ended:
                continue
            # Its peak memory, to the parent (one getrusage, a message only when it grew): a
            # worker killed by SIGKILL cannot say it afterwards (usage.oom_hint).
            peak = peak_rss()
            if peak is not None and (
                reported[0] is not attempt or peak >= reported[1] + REPORT_STEP
            ):
                reported = (attempt, peak)
                self.send(("rss", peak))
            now = time.monotonic()
            if not self.orphaned and self._parent_gone():
                self.orphaned = True
            on_its_own = self.orphaned or self.detached
            if self.orphaned and not self.detached:
                # A pool worker dies with its parent (as on a kernel restart); its task is
                # recorded INTERRUPTED, as the store's sweep would do.
                self._terminate(attempt, None)
            elif self._cancel == attempt.job.id and on_its_own:
                self._terminate(attempt, TaskCancelled(f"task {attempt.job.id} was cancelled"))
            elif self.orphaned and attempt.deadline is not None and now >= attempt.deadline:
                self._terminate(attempt, TaskTimeout(limit_text(attempt.job, "timeout")))
            elif now - last_beat >= HEARTBEAT:
                last_beat = now
                with self.end_lock:
                    if not attempt.ended:
                        self.store.change(attempt.job.live, heartbeat=time.time())

    def _parent_gone(self) -> bool:
        """The parent process is dead (its pid and start time), or it closed its end of the
        socket (shutdown; seen when nothing is left unread)."""
        if not owner_alive(self.parent_owner):
            return True
        if not self._read_lock.acquire(blocking=False):
            return False  # someone reads the socket: it would see its end
        try:
            return self.conn.at_eof()
        except OSError:
            return True
        finally:
            self._read_lock.release()

    def _terminate(self, attempt: WorkerAttempt, error: BaseException | None) -> None:
        """End the attempt from here (no retry: the process ends; None: INTERRUPTED, its
        parent is gone) and exit."""
        job = attempt.job
        with self.end_lock:
            if attempt.ended:
                return
            if error is None:
                attempt.ended = True
                self.drain_output()
                parent = describe_owner(self.parent_owner)
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
                why = f"its parent process {parent} died (noticed at {when})"
                record_interrupted(job, self.runtime, why)
            else:
                if isinstance(error, TaskCancelled):
                    job.cancel_reason = "cancelled"
                    self.store.put_extra("x:" + job.id, None)
                attempt.no_more_retries = True
                attempt.end(MISSING, error)
        self.store.close()
        os._exit(0)


def _pickle_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A submit's tasks, arguments and options, pickled (cloudpickle) for the parent; a
    TypeError names what cannot be pickled."""
    try:
        return _codec.dumps((method, args, kwargs))
    except TypeError as exc:
        if isinstance(exc.__cause__, SoftTimeLimitExceeded):
            raise exc.__cause__ from None  # it landed while pickling (dumps wraps errors)
        error = exc
    what = "tasks"
    named: list[tuple[str, Any]] = []
    if method in ("submit_call", "submit_many"):
        # submit_call(task, args, kwargs, options); submit_many(task, [(args, kwargs)...], options)
        task, options = args[0], args[-1]
        calls = [(args[1], args[2])] if method == "submit_call" else args[1]
        what = f"task {getattr(task, 'name', task)}"
        for a, kw in calls:
            named += [(f"argument {i}", v) for i, v in enumerate(a)]
            named += [(f"argument {k!r}", v) for k, v in kw.items()]
        named += [(f"option {k!r}", v) for k, v in options.items()]
        named.append(("task itself", task))
    else:
        named += [(f"argument {i}", v) for i, v in enumerate(args)]
    found = _codec.find_unpicklable(named)
    detail = (
        f"its {found[0]} is a {found[1]}, which cannot be pickled ({found[2]})"
        if found is not None
        else str(error.__cause__ or error)
    )
    raise TypeError(
        f"cannot submit {what} from a worker process: {detail}. A task in a worker process "
        "submits others through the notebook's process, so the tasks, their arguments and "
        "options must pickle (cloudpickle)"
    ) from None


def _detached_submit(attempt: Attempt | None) -> str:
    name = f"task {attempt.request.task_name}" if attempt is not None else "a detached task"
    return (
        f"{name} runs detached (detach=True), so it cannot submit other tasks: it may outlive "
        "the notebook's process, which would own them. Submit them from the notebook (a "
        "chain runs them after it: detached_task.s() | next_task.s()), or run this task "
        "without detach=True"
    )


def _parent_gone(owner: str) -> str:
    return (
        f"the notebook's process {describe_owner(owner)}, which owns this worker, "
        "is gone: a task cannot submit others without it"
    )


def _crash_point(value: str | None) -> tuple[str, str | None] | None:
    """CRASH_ENV's value as (step, task name or None)."""
    if not value:
        return None
    step, _, name = value.partition(":")
    if step not in ("claim", "result"):
        raise ValueError(f"{CRASH_ENV}={value!r}: the step must be 'claim' or 'result'")
    return step, name or None
