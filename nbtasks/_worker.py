"""The child side of the process executor (SPEC §7): the zygote that forks workers, and the worker.

The parent (``executors/process.py``) starts one **zygote** per pool as a new interpreter
(``subprocess``: a threaded kernel is never forked). The zygote imports what a worker needs once,
ignores SIGINT (the notebook's Interrupt button signals the kernel's whole process group), then
forks a worker for each request it gets on its control socket: forking a single-threaded process
is safe, and a warm fork costs a few milliseconds where a new interpreter costs ~80 ms. It reaps
its children and reports each exit status, so the parent can say "killed by SIGSEGV". A worker
forked with ``detached`` starts its own session: it outlives the kernel.

A **worker** owns the task it runs for the attempt (DESIGN principle 2): it opens the store itself
and runs the core's ``Attempt`` (claim, call, record, hooks), so progress, metadata, state, output,
heartbeats and the result go from the child to the store and survive the parent. It commits a
task's record before it reports the task finished or retried, so what the parent is told is
durable, and it hands the record back to the parent then. Everything the worker writes to its
file descriptors 1 and 2 (C code, subprocesses) is captured into the running task's output.

While the parent lives, it enforces hard timeouts and cancels by terminating the worker. A worker
whose parent is gone (a detached task after a kernel restart) enforces them itself: it records the
outcome and exits. It also acts on cancel requests (``x:<id>`` keys) written by any process.

A task running in a pool worker **submits other tasks** through its parent (``_ChildApp``, which
is ``task.app`` here): the call goes over the worker's socket, the parent's App builds, commits and
runs the new tasks as if they were submitted there (it owns them), and replies with their records
(or the exception, raised here). The handles returned here read the store; they never write it.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import inspect
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from . import _codec
from . import _ports as ports
from ._attempt import Attempt, Job, Options, _limit_text
from ._errors import NbtasksError, SoftTimeLimitExceeded, TaskCancelled, TaskTimeout
from ._model import (
    CURRENT,
    FINISHED,
    MISSING,
    SYSTEM_CLOCK,
    Metadata,
    Request,
    TaskStatus,
    check_id,
    to_datetime,
)
from ._result import GroupResult, TaskResult
from ._store import Live, Store, _start_time, describe_owner, owner_alive, parse_record

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
#: The App methods a task in a worker may have its parent run: the Submitter seam's (_ChildApp).
CALLS: Final = ports.SUBMIT_METHODS
_FINISHED_NAMES: Final = frozenset(s.value for s in FINISHED)

# The bootstrap the parent runs as ``python -c BOOT CONFIG FD``: the parent's sys.path first, so
# the worker imports nbtasks (and the user's modules) from where the parent does. The package's
# __init__ (the App, results, views: half of nbtasks' import time) is not run here; it runs on
# first use of a name from ``nbtasks`` (see _lazy_package), which keeps a cold start short.
BOOT: Final = (
    "import sys, json, importlib.util as u; c = json.loads(sys.argv[1]); sys.path[:] = c['path']; "
    "s = u.find_spec('nbtasks'); sys.modules['nbtasks'] = u.module_from_spec(s); "
    "from nbtasks._worker import zygote; zygote(int(sys.argv[2]), c)"
)


# --------------------------------------------------------------------------- messages


class Channel:
    """Pickled messages, each prefixed by its length, over a connected stream socket (what
    ``multiprocessing.connection`` does, without importing ``multiprocessing``: a cold start is
    ~10 ms shorter). Reads are buffered: one system call takes every message that has arrived.
    One sender and one receiver at a time (the callers hold locks)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.set_inheritable(False)  # not for a task's subprocesses
        self.sock = sock
        self._buf = bytearray()
        self._eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> None:
        data = _codec.dumps_message(message)
        self.sock.sendall(len(data).to_bytes(4, "big") + data)

    def recv(self) -> Any:
        """The next message (blocks until it is complete); EOFError at the end of the stream."""
        while True:
            message = self.take()
            if message is not None:
                return message[0]
            self.fill(block=True)

    def take(self) -> tuple[Any] | None:
        """The next message if it is buffered already, as a 1-tuple; else None."""
        buf = self._buf
        if len(buf) < 4:
            return None
        end = 4 + int.from_bytes(buf[:4], "big")
        if len(buf) < end:
            return None
        data = bytes(buf[4:end])
        del buf[:end]
        return (_codec.loads(data),)

    def fill(self, block: bool = False) -> bool:
        """Read what has arrived (waiting for something if ``block``); False if nothing had.
        EOFError once the other end has closed and every message was taken."""
        if self._eof:
            raise EOFError("the other process closed the channel")
        try:
            data = self.sock.recv(1 << 16, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not data:
            self._eof = True
            raise EOFError("the other process closed the channel")
        self._buf += data
        return True

    def poll(self) -> bool:
        """True if ``recv()`` has something to return (or to raise) without waiting long."""
        if len(self._buf) >= 4 or self._eof:
            return True
        try:
            return self.fill()
        except EOFError:
            return True

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- the zygote


def zygote(ctrl_fd: int, config: dict[str, Any]) -> None:
    """Fork a worker per request on the control socket; report exits; end with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the workers
    _lazy_package()
    _codec.cloudpickle()  # preload: every worker unpickles
    import ctypes  # noqa: F401  (the workers flush C stdio through it)
    import importlib

    for name in config.get("preload", ()):  # as multiprocessing's set_forkserver_preload
        importlib.import_module(name)

    ctrl = socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ctrl_fd = ctrl.fileno()
    while True:
        ready, _, _ = select.select([ctrl_fd, wake_r], [], [])
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        _reap(ctrl)
        if ctrl_fd not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctrl, 65536, 1)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
        if not data:
            break  # the parent is gone: pool workers see their own socket close and exit
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ctrl.close()
                signal.set_wakeup_fd(-1)
                os.close(wake_r)
                os.close(wake_w)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                worker_main(fds[0], config, bool(request.get("detached")))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        _send(ctrl, {"forked": request["n"], "pid": pid})
    os._exit(0)


def _lazy_package() -> None:
    """The ``nbtasks`` package was created without running its __init__ (BOOT): give it the
    public error classes now (their class path is ``nbtasks.X``, also in what a worker records),
    and run __init__ on first use of any other name (``nbtasks.current()`` in a task)."""
    pkg = sys.modules["nbtasks"]
    if hasattr(pkg, "App"):
        return  # imported the usual way
    from . import _errors

    for name, value in vars(_errors).items():
        error = isinstance(value, type) and issubclass(value, BaseException)
        if error and value.__module__ == _errors.__name__:
            value.__module__ = "nbtasks"
            setattr(pkg, name, value)
    lock = threading.Lock()

    def complete(name: str) -> Any:
        if name.startswith("_") or name == "executors":
            raise AttributeError(name)  # a submodule being imported (`from . import _task`)
        with lock:
            if "__getattr__" in vars(pkg):
                del pkg.__getattr__  # type: ignore[attr-defined,method-assign]
                pkg.__spec__.loader.exec_module(pkg)  # type: ignore[union-attr]
        return getattr(pkg, name)

    pkg.__getattr__ = complete  # type: ignore[attr-defined,method-assign]


def _reap(ctrl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctrl, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(ctrl: socket.socket, message: dict[str, Any]) -> None:
    try:
        ctrl.send(json.dumps(message).encode())
    except OSError:
        pass  # the parent is gone; the loop ends at the next read


# --------------------------------------------------------------------------- the worker


def worker_main(fd: int, config: dict[str, Any], detached: bool) -> None:
    if detached:
        os.setsid()  # its own session: kernel restarts and Interrupt do not reach it
    out_r, keep_err = _redirect_stdio(detached)
    Worker(Channel(socket.socket(fileno=fd)), config, detached, out_r, keep_err).serve()


def _redirect_stdio(detached: bool) -> tuple[int, int | None]:
    """fds 1 and 2 go to a pipe read into the running task's output; stdin is /dev/null. A pool
    worker keeps a copy of the old stderr for what it writes between tasks; a detached one does
    not (it must not hold the kernel's stderr open)."""
    keep_err = None if detached else os.dup(2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    r, w = os.pipe()
    os.dup2(w, 1)
    os.dup2(w, 2)
    os.close(w)
    os.close(null)
    os.set_blocking(r, False)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    return r, keep_err


class _ChildApp:
    """``task.app`` in a worker process: the App that owns this worker, seen from here. It
    implements both seams of ``_ports`` for real.

    **Submitter.** A task running here submits others as it would in the notebook (``delay``,
    ``apply_async``, ``apply``, ``map``/``starmap``/``chunks``, chains, groups, chords,
    ``app.submit``). Each submit goes to the parent process, with the running task as the new
    tasks' parent (``lineage``); the parent's App builds and commits the tasks through its usual
    path and runs them in its executors: it owns them (DESIGN principle 2), as if they had been
    submitted there. The call returns once their READY records are committed, or raises what
    the parent raised (a bad argument or option: the same TypeError or ValueError, nothing
    stored).

    **Results.** The handles it returns are the usual ``TaskResult``/``GroupResult`` over this
    process's store: they read the records (``wait()``/``get()`` poll the store) and never write
    them, nor sweep them: the tasks' owner is the App that runs this worker (it also owns a dead
    worker's task until it records the outcome), so a record whose owner looks gone from here
    is not this process's to mark. ``cancel()`` writes a cancel request, which the owner acts
    on. No task is registered here: ``TaskResult.task`` is None.
    """

    def __init__(self, worker: Worker, name: str) -> None:
        self._worker = worker
        self.name = name
        self._store = worker.store
        # A handle unpickled here (a task's argument), or built by AsyncResult(id), reads
        # through it: no App is made in a worker.
        ports.register(self, default=True)

    def __repr__(self) -> str:
        return f"<nbtasks.App {self.name!r} seen from worker process {os.getpid()}>"

    def __reduce__(self) -> Any:
        """As the App: a reference to the store (the notebook's App, where it is unpickled)."""
        return (ports.app_for_store, (str(self._store.path),))

    @property
    def store_path(self) -> Path:
        return self._store.path

    # ------------------------------------------------------------------ the Submitter seam

    def submit_call(
        self,
        task: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        lineage: ports.Lineage | None = None,
    ) -> TaskResult:
        call = (task, args, kwargs, options)
        return self._call("submit_call", call, {"lineage": lineage or self._lineage()})

    def submit_many(
        self,
        task: Any,
        calls: Any,
        options: dict[str, Any],
        *,
        chunk: bool = False,
        lineage: ports.Lineage | None = None,
    ) -> GroupResult:
        extra = {"chunk": chunk, "lineage": lineage or self._lineage()}
        return self._call("submit_many", (task, calls, options), extra)

    def submit_canvas(
        self, items: Any, options: dict[str, Any], *, lineage: ports.Lineage | None = None
    ) -> TaskResult | GroupResult:
        return self._call(
            "submit_canvas", (items, options), {"lineage": lineage or self._lineage()}
        )

    def submit(self, request: Request, *, lineage: ports.Lineage | None = None) -> TaskResult:
        """Mognet: submit a Request; the parent's App finds its task by name."""
        result: TaskResult = self._call(
            "submit", (request,), {"lineage": lineage or self._lineage()}
        )
        request.id = result.id
        return result

    async def run(self, request: Request) -> Any:
        return await self.submit(request)

    def _lineage(self) -> ports.Lineage | None:
        """The task running here (``nbtasks.current()``, else the worker's attempt: a thread
        the task started has no current context): the parent of what it submits."""
        ctx = CURRENT.get()
        attempt = self._worker.attempt
        request = ctx.request if ctx is not None else attempt.request if attempt else None
        if request is None or request.id is None:
            return None
        return (request.id, request.root_id or request.id)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._handles(self._worker.call(method, args, kwargs))

    def _handles(self, described: tuple[Any, ...]) -> Any:
        """The parent's reply (ids and records) as handles: ("r", id, record, cached) or
        ("g", id, [members])."""
        if described[0] == "g":
            members = [self._handles(m) for m in described[2]]
            return GroupResult(self, described[1], members)
        _, task_id, rec, cached = described
        return TaskResult(task_id, self, rec=rec, cached=cached)

    # ------------------------------------------------------------------ the Results seam

    def result(self, task_id: str) -> TaskResult:
        """The stored TaskResult of any task (read from the store)."""
        return TaskResult(task_id, self)

    def group_result(self, group_id: str) -> GroupResult:
        check_id(group_id, "group_id")
        rec = self._store.get_group(group_id)
        return GroupResult(self, group_id, [self.result(tid) for tid in rec["members"]])

    def live(self, task_id: str) -> Live | None:
        return self._store.live.get(task_id)

    def read_listed(self, task_id: str) -> tuple[dict[str, Any], str]:
        return self._store.read_listed(task_id)

    def read_record(self, task_id: str, text: str | None = None) -> dict[str, Any]:
        if text is None:
            return self._store.read_record(task_id)
        return parse_record(text, "t:" + task_id, self._store.path)

    def decode(self, enc: dict[str, Any], what: str) -> Any:
        return self._store.decode_value(enc, what)

    def cancel(self, task_id: str) -> bool:
        """``TaskResult.cancel()`` here: a cancel request, acted on by the task's owner."""
        if self._store.get_record(task_id)["status"] in _FINISHED_NAMES:
            return False
        self._store.request_cancel(task_id)
        return True

    def registered(self, name: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"App.{name} is not available to a task running in a worker process: there, the "
            "App submits tasks (delay, apply_async, apply, map, chains, groups, chords, "
            "app.submit) and reads their results (app.result(id)); do the rest from the notebook"
        )


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
        self._hooks: frozenset[str] = frozenset()

    def _invoke(self, ctx: Any, args: Any, kwargs: Any) -> Any:
        raise self._error


#: Record fields fixed at submit: the parent has them, so a final record is reported without.
_SENT: Final = frozenset(
    {"id", "task_name", "enqueued_at", "args_repr", "args", "kwargs", "backend", "executor"}
)


class _ChildRuntime:
    """The ``_attempt.Runtime`` of a worker: reports to the parent instead of scheduling."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.store = worker.store
        self.clock = SYSTEM_CLOCK
        self.lock = threading.Lock()

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
        self.worker.send(("done", job.id, {k: v for k, v in rec.items() if k not in _SENT}))

    def _hook_output(self, job: Job) -> None:
        """The hooks (on_success, on_failure, on_retry, after_return) ran after the outcome was
        recorded, outside the task's context: what they wrote reached the task's output
        through fds 1 and 2 (see _read_available). Add it to the record before it is reported,
        as the task's own output is. Only for a task that has hooks."""
        attempt = job.attempt
        if attempt is None or not getattr(job.task, "_hooks", None):
            return
        self.worker.drain_output()
        fields = attempt.ctx._snapshot(self.clock.time())
        if fields:
            self.store.change(job.live, **fields)

    def timed_out(self, job: Job) -> None:
        pass  # the parent terminates this process; an orphan's monitor thread records it


class _WorkerAttempt(Attempt):
    """An attempt that ends once: the main thread and the monitor thread (which terminates an
    orphan's task) may both try, and the output pipe is drained into the task first."""

    def __init__(self, job: Job, runtime: _ChildRuntime, worker: Worker) -> None:
        super().__init__(job, runtime)  # type: ignore[arg-type]
        self.worker = worker
        self.ended = False
        self.started = runtime.clock.monotonic()

    def claim(self) -> bool:
        if not super().claim():
            return False
        if self.worker.crash_at is not None:
            self.worker.crash("claim", self.job)
        if self.job.options.soft_timeout is not None:
            self.soft_deadline = None  # SIGALRM raises it here (see _call), not the tick
        return True

    def _call(self) -> Any:
        """A signal interrupts a blocking call (time.sleep, I/O), which an exception posted
        from another thread cannot: SIGALRM raises SoftTimeLimitExceeded in this thread (as
        billiard does for Celery). The timer runs only inside this call, so it never fires
        outside the user's code."""
        soft = self.job.options.soft_timeout
        if soft is None:
            return self._user_code()
        signal.setitimer(signal.ITIMER_REAL, max(soft - self._elapsed(), 1e-6))
        try:
            return self._user_code()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _user_code(self) -> Any:
        value = super()._call()
        if getattr(self.job.task, "_is_async", False) and inspect.iscoroutine(value):
            import asyncio  # an ``async def`` task: its own event loop in this process

            value = asyncio.run(value)
        return value

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


class Worker:
    def __init__(
        self,
        conn: Channel,
        config: dict[str, Any],
        detached: bool,
        out_r: int,
        keep_err: int | None,
    ) -> None:
        self.conn = conn
        self.detached = detached
        self.parent_owner: str = config["owner"]
        self.store = Store(config["store"], trust=bool(config["trust"]), sweep=False)
        self.store.commit_at_tick = True  # the parent hears of each task over the pipe
        self.store.on_cancel_request = self._cancel_requested
        self.runtime = _ChildRuntime(self)
        self.pid = os.getpid()
        self._send_lock = threading.Lock()
        self.end_lock = threading.Lock()
        self.attempt: _WorkerAttempt | None = None
        self.retry_delay: float | None = None
        self.orphaned = False
        self._cancel: str | None = None
        self._wake = threading.Event()
        self._loaded: dict[bytes, tuple[Any, Options]] = {}  # payload -> (task, options)
        self._out_r = out_r
        self._out_lock = threading.Lock()
        self._out_ctx: Any = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._keep_err = keep_err
        self._fflush = _c_fflush()
        self.crash_at = _crash_point(os.environ.get(CRASH_ENV))
        self.app = _ChildApp(self, str(config.get("app_name") or "worker"))
        # Reading the socket: the serve loop between tasks, a task's submit (any of its
        # threads) while it runs. Whoever holds _read_lock reads, and hands each message over:
        # a reply to the call waiting for it, anything else to the serve loop (_inbox).
        self._read_lock = threading.Lock()
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._replies: dict[int, _Reply] = {}
        self._call_numbers = itertools.count()
        self._quiet_depth = 0  # > 0: the main thread is sending or reading a message
        self._soft_pending = False  # a soft time limit that fired meanwhile
        fault_dir = config.get("faults")
        if fault_dir:
            import faulthandler

            path = Path(fault_dir) / f"{self.pid}.txt"
            self._fault_file = open(path, "w")  # noqa: SIM115  (open for the process's life)
            faulthandler.enable(self._fault_file, all_threads=False)  # the task's thread
        signal.signal(signal.SIGALRM, self._soft_timeout)
        for target, name in ((self._read_output, "output"), (self._monitor, "monitor")):
            threading.Thread(target=target, name=f"nbtasks-worker-{name}", daemon=True).start()

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Run the jobs the parent sends, in order. It sends the next one before this one ends
        (so no round trip is waited for), and "cancel" for one still queued here."""
        self.send(("ready", self.pid, _start_time(self.pid), self.store.owner))
        queue: collections.deque[tuple[dict[str, Any], bytes]] = collections.deque()
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
            yield  # signal handlers run in the main thread only
            return
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1
        if self._soft_pending and not self._quiet_depth:
            self._soft_pending = False
            self._soft_timeout(signal.SIGALRM, None)

    def run(self, rec: dict[str, Any], payload: bytes, cancelled: bool = False) -> None:
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
        request = Request(
            task_name=rec["task_name"],
            args=list(args),
            kwargs=kwargs,
            id=tid,
            metadata=Metadata(rec.get("metadata") or {}),
            retries=rec.get("retries") or 0,
            priority=rec.get("priority") or 0,
            eta=to_datetime(rec.get("eta")),
            expires=to_datetime(rec.get("expires")),
            parent_id=rec.get("parent_id"),
            root_id=rec.get("root_id") or tid,
        )
        job = Job(live, task, args, kwargs, request, options, chunk=bool(rec.get("chunk")))
        if cancelled:
            job.cancel_reason = "cancelled"  # the claim records it CANCELLED; it never runs
        while True:
            self.retry_delay = None
            attempt = _WorkerAttempt(job, self.runtime, self)
            self._out_ctx = attempt.ctx
            self.attempt = attempt
            try:
                attempt.run()
            except SoftTimeLimitExceeded:
                pass  # raised asynchronously just as the task returned: recorded already
            finally:
                self.attempt = None
                self._out_ctx = None
            if self.retry_delay is None:
                return
            time.sleep(self.retry_delay)  # a detached task retries in its own process

    def _load(self, payload: bytes) -> tuple[Any, Options]:
        hit = self._loaded.get(payload)
        if hit is None:
            task, options = _codec.loads(payload)
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

    def _read_output(self) -> None:
        poller = select.poll()
        poller.register(self._out_r, select.POLLIN)
        while True:
            poller.poll()
            with self._out_lock:
                if not self._read_available():
                    return

    def _read_available(self) -> bool:
        """Route what the pipe holds now (call with _out_lock held); False at end of file."""
        while True:
            try:
                data = os.read(self._out_r, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            text = self._decoder.decode(data)
            ctx = self._out_ctx
            if ctx is not None:
                ctx._write(text)
            elif self._keep_err is not None:
                os.write(self._keep_err, text.encode(errors="replace"))

    def drain_output(self) -> None:
        """Before a task's outcome is recorded: move what it wrote to fds 1 and 2 into it."""
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
        self._fflush()
        with self._out_lock:  # the reader thread holds it while it routes what it read
            self._read_available()

    def _soft_timeout(self, signum: int, frame: Any) -> None:
        attempt = self.attempt
        if attempt is not None and attempt.in_user_code and not attempt.ended:
            if self._quiet_depth:
                self._soft_pending = True  # raised once the message is through (_quiet)
                return
            attempt.ctx._soft_fired = True
            raise SoftTimeLimitExceeded(_limit_text(attempt, "soft_timeout"))

    # ------------------------------------------------------------------ the monitor

    def _cancel_requested(self, task_id: str) -> None:
        """The store's writer saw a cancel request (``x:<id>``) for our task."""
        self._cancel = task_id
        self._wake.set()

    def _monitor(self) -> None:
        """Heartbeats; and for a worker whose parent is gone (or a detached one): cancel
        requests and the hard timeout, enforced by recording the outcome and exiting."""
        last_beat = time.monotonic()
        while True:
            self._wake.wait(MONITOR)
            self._wake.clear()
            attempt = self.attempt
            if attempt is None or attempt.ended:
                continue
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
                self._terminate(attempt, TaskTimeout(_limit_text(attempt, "timeout")))
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
        try:
            return self.conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _terminate(self, attempt: _WorkerAttempt, error: BaseException | None) -> None:
        """Record the attempt's outcome (no retry: the process ends; None: INTERRUPTED, its
        parent is gone) and exit."""
        job = attempt.job
        with self.end_lock:
            if attempt.ended:
                return
            attempt.ended = True
            self.drain_output()
            if error is None:
                self.store.active.pop(job.id, None)
                now = time.time()
                parent = describe_owner({"owner": self.parent_owner})
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
                fields = attempt.ctx._snapshot(now) or {}
                self.store.change(
                    job.live,
                    TaskStatus.INTERRUPTED,
                    **fields,
                    finished_at=now,
                    state="INTERRUPTED",
                    reason=f"its parent process {parent} died (noticed at {when})",
                )
            else:
                if isinstance(error, TaskCancelled):
                    job.cancel_reason = "cancelled"
                    self.store.put_extra("x:" + job.id, None)
                job.options = dataclasses.replace(job.options, retries=job.request.retries)
                Attempt.end(attempt, MISSING, error)
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
        f"the notebook's process {describe_owner({'owner': owner})}, which owns this worker, "
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


def _c_fflush() -> Any:
    """``fflush(NULL)`` from libc (C stdio buffers), or a no-op where it is not available."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None)  # keeps the GIL: no thread switch for a ~1 µs call
        fflush = libc.fflush
        fflush.argtypes = [ctypes.c_void_p]
        return lambda: fflush(None)
    except (OSError, AttributeError):
        return lambda: None
