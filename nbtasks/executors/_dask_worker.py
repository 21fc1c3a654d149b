"""The worker side of the Dask executor: what runs inside a ``dask.distributed`` worker.

The client process owns the task's record (DESIGN principle 2); a worker never opens the store.
``run()`` calls the task with a real ``nbtasks.Context`` whose attempt is a ``RemoteAttempt``:
``progress()`` costs what it costs in the core (a few attribute stores), and what the task
reports travels back through Dask itself, with no shared filesystem:

* one thread per worker process ticks every 0.1 s, and for each running task sends what changed
  (progress, output, ``update_state``) as one ``Worker.log_event`` on the executor's own topic;
  the client subscribed to it (``Client.subscribe_topic``) and writes the store;
* ``set_metadata`` is sent at once (it is a commit in the core too);
* a "started" event is sent when the task starts, so the record is RUNNING while it runs and a
  worker lost mid-task can be told from one lost before the task started;
* a final event carries the outcome and the last values (nothing is lost to throttling), and the
  return value when its pickle is small; a larger one is gathered by the client from the worker.

The same tick enforces ``soft_timeout`` (as the core does for threads) and a hard ``timeout``,
and notices when Dask cancelled the task's key (the client cancelled the future, or dropped
out): the next ``progress()``/``check_cancelled()`` then raises, as for thread tasks.

Nothing here is imported by ``import nbtasks``; ``distributed`` is imported on first use.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Final

# The core's Context, reached through _attempt (the executors' row of DESIGN's table).
from .._attempt import (
    Context,
    _current,
    install_capture,
    install_tqdm_bridge,
    raise_in_thread,
    retry_request,
)
from .._codec import cloudpickle, dumps
from .._errors import (
    Retry,
    SoftTimeLimitExceeded,
    TaskCancelled,
    TaskTimeout,
)
from .._model import Metadata, Request

TICK: Final = 0.1  # seconds between sends per task: <= 10 events per second per task
#: A return value whose pickle is at most this long travels in the final event (no gather);
#: a larger one stays on the worker until the client gathers it.
EVENT_VALUE_LIMIT: Final = 16 * 1024
OUTPUT_TAIL: Final = 64 * 1024  # characters of output sent at most per event (the core keeps
#                                 the same tail, _context.OUTPUT_LIMIT)

_tasks: OrderedDict[bytes, Any] = OrderedDict()  # task blob -> task object (an LRU)
_TASK_CACHE: Final = 64
_active: dict[str, RemoteAttempt] = {}  # Dask key -> running attempt in this process
_lock = threading.Lock()  # guards _active and every send (ticks against the final snapshot)
_wake = threading.Condition(_lock)
_ticker: threading.Thread | None = None
_ticker_pid = 0


# --------------------------------------------------------------------------- the task object


_DROP: Final = frozenset(
    {"app", "_target", "_default_options", "_signature", "_fast_check", "__wrapped__"}
)


def task_blob(task: Any) -> bytes:
    """Pickle a Task for the workers (cloudpickle: notebook functions travel by value): its
    class and instance attributes, without the App (its store, threads and locks stay here)."""
    attrs = {k: v for k, v in vars(task).items() if k not in _DROP}
    try:
        return dumps((type(task), attrs, _cell_source(task)))
    except TypeError as exc:
        raise TypeError(
            f"task {task.name} cannot be sent to Dask workers: it cannot be pickled ({exc}). "
            "Define what it uses at module level, or pass it as an argument."
        ) from exc


def _cell_source(task: Any) -> dict[str, Any]:
    """The source of a task defined in a notebook cell, which only this kernel's linecache
    holds (IPython registers each cell there): with it, a worker's traceback shows the lines."""
    fn = vars(task).get("_fn") or getattr(type(task), "run", None)
    filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
    entry = linecache.cache.get(filename) if filename else None
    if not filename or entry is None or len(entry) != 4 or entry[1] is not None:
        return {}  # a real file (the worker reads it, if it has it), or nothing known
    return {filename: entry}


def _load_task(blob: bytes) -> Any:
    task = _tasks.get(blob)
    if task is not None:
        _tasks.move_to_end(blob)
        return task
    cls, attrs, source = cloudpickle().loads(blob)
    for filename, entry in source.items():
        linecache.cache.setdefault(filename, entry)
    task = cls.__new__(cls)
    vars(task).update(attrs)
    fn = attrs.get("_fn")
    task._target = fn if fn is not None else task.run
    _tasks[blob] = task
    if len(_tasks) > _TASK_CACHE:
        _tasks.popitem(last=False)
    return task


# --------------------------------------------------------------------------- the attempt


class RemoteContext(Context):
    """The core's Context, but output goes to an outbox that each send drains: the worker
    keeps no tail of its own, and a print racing with a tick is never lost or sent twice."""

    def __init__(self, attempt: Any) -> None:
        super().__init__(attempt)
        self._outbox: list[str] = []
        self._outlock = threading.Lock()

    def _write(self, text: str) -> None:
        with self._outlock:
            self._outbox.append(text)

    def _drain(self) -> str:
        with self._outlock:
            box, self._outbox = self._outbox, []
        return "".join(box)


class RemoteAttempt:
    """What a Context needs from its attempt, on a Dask worker: it sends instead of storing."""

    def __init__(self, head: dict[str, Any], args: Any, kwargs: Any, worker: Any) -> None:
        self.head = head
        self.key: str = head["key"]
        self.topic: str = head["topic"]
        self.worker = worker
        self.request = Request(
            task_name=head["name"],
            args=list(args),
            kwargs=dict(kwargs),
            id=head["id"],
            metadata=Metadata.trusted(head.get("meta") or {}),
            retries=head.get("retries", 0),
            priority=head.get("priority", 0),
            parent_id=head.get("parent_id"),
            root_id=head.get("root_id") or head["id"],
        )
        self.ctx = RemoteContext(self)
        self.start = time.time()
        self.wid = f"{worker.address}:{os.getpid()}:{threading.current_thread().name}"
        self.request.worker_id = self.wid
        mono = time.monotonic()
        timeout, soft = head.get("timeout"), head.get("soft_timeout")
        self.deadline = None if timeout is None else mono + timeout
        self.soft_deadline = None if soft is None else mono + soft
        self.pending: dict[str, Any] = {}
        self.sent: tuple[Any, ...] = (None, None, None)  # the progress sent last
        self.out_total = 0  # characters of output written so far
        self.in_user_code = False
        self.released = False  # Dask released its key (the client cancelled it, or left)

    # ------------------------------------------------------------------ what the Context calls

    def merge_metadata(self, values: dict[str, Any], flush: bool) -> None:
        with _lock:
            self.pending["m"] = {**self.pending.get("m", {}), **values}
            if flush:
                self._send()

    def update_state(self, state: str | None, meta: Any) -> None:
        with _lock:
            self.pending["r"] = meta
            self.pending["rm"] = dict(self.request.metadata)
            if state is not None:
                self.pending["st"] = state
            # sent with the next tick (<= 0.1 s), like the core's group-committed change

    def make_retry(
        self, exc: BaseException | None, countdown: float | None, max_retries: int | None
    ) -> BaseException:
        """``ctx.retry()``, as in ``_attempt.Attempt.make_retry`` (the client decides)."""
        limit = self.head.get("max_retries", 0) if max_retries is None else max_retries
        return retry_request(self.request, limit, exc, countdown)

    def tick(self, ctx: Context) -> None:  # the core's writer never calls it on a worker
        pass

    # ------------------------------------------------------------------ sending (under _lock)

    def _fields(self) -> dict[str, Any]:
        """What changed since the last send (progress as ``[current, total, message]``, the
        output written since with the running total), plus whatever is pending."""
        ctx = self.ctx
        cur, total, msg = ctx._cur, ctx._total, ctx._msg
        out: dict[str, Any] = {}
        if cur is not None and (cur, total, msg) != self.sent:
            out["p"] = [cur, total, msg]
            self.sent = (cur, total, msg)
        text = ctx._drain()
        if text:
            self.out_total += len(text)
            out["o"] = text[-OUTPUT_TAIL:]
            out["ot"] = self.out_total
        if self.pending:
            out.update(self.pending)
            self.pending = {}
        return out

    def _changed(self) -> bool:
        ctx = self.ctx
        return bool(self.pending or ctx._outbox) or (ctx._cur, ctx._total, ctx._msg) != self.sent

    def _send(self) -> None:
        msg = self._fields()
        msg["k"] = self.key
        try:
            self.worker.log_event(self.topic, msg)
        except Exception:  # pragma: no cover - the worker is closing: the result carries it all
            pass

    def _tick(self, mono: float) -> None:
        ctx = self.ctx
        if self.soft_deadline is not None and not ctx._soft_fired and mono >= self.soft_deadline:
            ctx._soft_fired = True
            ctx._request_stop(SoftTimeLimitExceeded(self._limit_text("soft_timeout")))
            if ctx.thread_id is not None and self.in_user_code:
                raise_in_thread(ctx.thread_id, SoftTimeLimitExceeded)
        if self.deadline is not None and mono >= self.deadline:
            ctx._request_stop(TaskTimeout(self._limit_text("timeout")))
        ts = self.worker.state.tasks.get(self.key)
        if ts is None or ts.state == "cancelled":
            # The client cancelled the future (cancel, timeout, a lost connection): stop at
            # the next progress()/check_cancelled(), as thread tasks do.
            self.released = True
            ctx._request_stop(
                TaskCancelled(f"task {self.request.id}: its Dask future was cancelled")
            )
        if self._changed():
            self._send()

    def _limit_text(self, option: str) -> str:
        return (
            f"task {self.request.task_name}[{self.request.id}] ran past its "
            f"{option} of {self.head[option]:g}s"
        )


# --------------------------------------------------------------------------- the ticker


def _ensure_ticker() -> None:
    global _ticker, _ticker_pid
    if _ticker is not None and _ticker_pid == os.getpid() and _ticker.is_alive():
        return
    _ticker_pid = os.getpid()
    _ticker = threading.Thread(target=_tick_loop, name="nbtasks-dask-ticker", daemon=True)
    _ticker.start()


def _tick_loop() -> None:
    while True:
        with _wake:
            while not _active:
                _wake.wait()
        time.sleep(TICK)
        with _lock:
            mono = time.monotonic()
            for attempt in list(_active.values()):
                try:
                    attempt._tick(mono)
                except Exception:  # pragma: no cover - never let the ticker die
                    pass


# --------------------------------------------------------------------------- running


def run(payload: bytes) -> Any:
    """The function Dask runs, with ``(task blob, head, args, kwargs)`` pickled: call the task,
    send the outcome as the final event (the value too, when its pickle is small), and return
    ``(ok, value or error, info)`` as well, which the client gathers when the event could not
    carry it (or went missing)."""
    from distributed.worker import get_worker, thread_state

    blob, head, args, kwargs = cloudpickle().loads(payload)

    worker = get_worker()
    key = thread_state.key
    topic = head["topic"]
    expires = head.get("expires")
    if expires is not None and time.time() >= expires:
        _send_final(worker, topic, {"k": key, "x": 1})
        return (False, None, {"expired": True})
    head["key"] = key
    task = _load_task(blob)
    attempt = RemoteAttempt(head, args, kwargs, worker)
    ctx = attempt.ctx
    ctx.thread_id = threading.get_ident()
    install_capture()
    install_tqdm_bridge()
    info: dict[str, Any] = {"t": attempt.start, "w": attempt.wid, "a": worker.address}
    # "started": sent at once, so the record turns RUNNING and a lost worker is told apart
    # from one that had not started the task yet.
    worker.log_event(topic, {"k": key, **info})
    with _lock:
        _active[key] = attempt
        _ensure_ticker()
        _wake.notify()
    token = _current.set(ctx)
    value: Any = None
    error: BaseException | None = None
    attempt.in_user_code = True
    try:
        if head.get("chunk"):
            value = [task._invoke(ctx, tuple(item), {}) for item in args[0]]
        elif task._is_async:
            value = asyncio.run(task._invoke(ctx, args, kwargs))
        else:
            value = task._invoke(ctx, args, kwargs)
    except BaseException as exc:
        error = exc
    finally:
        attempt.in_user_code = False
        _current.reset(token)
        with _lock:
            _active.pop(key, None)
            info.update(attempt._fields())
    if ctx._stop is not None and error is None and not isinstance(ctx._stop, SoftTimeLimitExceeded):
        error = ctx._stop  # asked to stop (timeout, cancel) but never checked
    meta = dict(attempt.request.metadata)
    if meta:
        info["rm"] = meta
    final = {"k": key, "f": 1, **info}
    if error is None:
        try:
            data = dumps(value)
        except TypeError:
            data = None  # Dask's own serialization will say why when it is gathered
        if data is not None and len(data) <= EVENT_VALUE_LIMIT:
            final["v"] = data
        _send_final(worker, topic, final)
        return (True, value, info)
    err = encode_error(error)
    final["e"] = err
    if attempt.released and isinstance(error, TaskCancelled):
        final["c"] = 1  # stopped because Dask released the key, not by the task itself
    _send_final(worker, topic, final)
    return (False, err, info)


def _send_final(worker: Any, topic: str, msg: dict[str, Any]) -> None:
    try:
        worker.log_event(topic, msg)
    except Exception:  # pragma: no cover - the client gathers the result instead
        pass


# --------------------------------------------------------------------------- errors


def encode_error(error: BaseException) -> dict[str, Any]:
    """An exception as class path + traceback text (+ the pickle when it round-trips), as
    ``concurrent.futures.process`` sends them; a ``Retry`` keeps its countdown."""
    out: dict[str, Any] = {}
    if isinstance(error, Retry):
        out["retry"] = {"msg": str(error), "countdown": error.countdown}
        if error.exc is None:
            return out
        error = error.exc
    cls = type(error)
    out["cls"] = f"{cls.__module__}.{cls.__qualname__}"
    out["msg"] = str(error)
    out["tb"] = "".join(traceback.format_exception(error))
    try:
        data = dumps(error)
        cloudpickle().loads(data)
        out["exc"] = data
    except Exception:
        pass
    return out
