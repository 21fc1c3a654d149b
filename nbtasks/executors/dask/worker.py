"""The worker side of the Dask executor: what runs inside a ``dask.distributed`` worker.

The client process owns the task's record (DESIGN principle 2); a worker never opens the store.
``run()`` runs the core's attempt lifecycle (``_attempt.AttemptCore``: the call with its Context
current, the time limits, ``ctx.retry()``) as a ``RemoteAttempt``, whose seam sends what the
core would record: ``progress()`` costs what it costs in the core (a few attribute stores), and
what the task reports travels back through Dask itself, with no shared filesystem:

* one thread per worker process ticks every 0.1 s, and for each running task sends what changed
  (progress, output, ``update_state``) as one ``Worker.log_event`` on the executor's own topic;
  the client subscribed to it (``Client.subscribe_topic``) and writes the store;
* ``set_metadata`` is sent at once (it is a commit in the core too);
* a "started" event is sent when the task starts, so the record is RUNNING while it runs and a
  worker lost mid-task can be told from one lost before the task started;
* a final event carries the outcome and the last values (nothing is lost to throttling), and the
  return value when its pickle is small; a larger one is gathered by the client from the worker.

The same tick enforces ``soft_timeout`` and a hard ``timeout`` (the core's ``enforce_limits``, as
for threads), and notices when Dask cancelled the task's key (the client cancelled the future,
or dropped out): the next ``progress()``/``check_cancelled()`` then raises, as for thread tasks.

Nothing here is imported by ``import nbtasks``; ``distributed`` is imported on first use.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any, Final

# The core's Context, reached through _attempt (the executors' row of DESIGN's table).
from ... import _rich
from ..._attempt import AttemptCore, Context, Job, Options, worker_id
from ..._codec import dumps, loads
from ..._errors import TaskCancelled
from ..._model import Request
from ...store import Live
from ..payload import load_task
from .errors import encode_error

TICK: Final = 0.1  # seconds between sends per task: <= 10 events per second per task
#: A return value whose pickle is at most this long travels in the final event (no gather);
#: a larger one stays on the worker until the client gathers it.
EVENT_VALUE_LIMIT: Final = 16 * 1024
OUTPUT_TAIL: Final = 64 * 1024  # characters of output sent at most per event (the core keeps
#                                 the same tail, _context.OUTPUT_LIMIT)

_tasks: OrderedDict[bytes, tuple[Any, Options]] = OrderedDict()  # payload -> task (an LRU)
_TASK_CACHE: Final = 64
_active: dict[str, RemoteAttempt] = {}  # Dask key -> running attempt in this process
_lock = threading.Lock()  # guards _active and every send (ticks against the final snapshot)
_wake = threading.Condition(_lock)
_ticker: threading.Thread | None = None
_ticker_pid = 0


def _load_task(blob: bytes) -> tuple[Any, Options]:
    hit = _tasks.get(blob)
    if hit is not None:
        _tasks.move_to_end(blob)
        return hit
    hit = _tasks[blob] = load_task(blob)
    if len(_tasks) > _TASK_CACHE:
        _tasks.popitem(last=False)
    return hit


# --------------------------------------------------------------------------- the attempt


class RemoteContext(Context):
    """The core's Context, but output goes to an outbox that each send drains: the worker
    keeps no tail of its own, and a print racing with a tick is never lost or sent twice."""

    def __init__(self, attempt: Any) -> None:
        super().__init__(attempt)
        self._outbox: list[str] = []
        self._outlock = threading.Lock()
        # displays, sent as they came: ["a", bundle] or ["c", wait] (clear_output); the
        # client's Context keeps and bounds them as a local task's does
        self.display_ops: list[list[Any]] = []

    def add_display(self, bundle: dict[str, Any]) -> None:
        with self._outlock:
            self.display_ops.append(["a", bundle])

    def clear_display(self, wait: bool = False) -> None:
        with self._outlock:
            self.display_ops.append(["c", wait])

    def drain_displays(self) -> list[list[Any]]:
        with self._outlock:
            ops, self.display_ops = self.display_ops, []
        return ops

    def write_output(self, text: str, total: int | None = None) -> None:
        with self._outlock:
            self._outbox.append(text)

    def _drain(self) -> str:
        with self._outlock:
            box, self._outbox = self._outbox, []
        return "".join(box)


class RemoteAttempt(AttemptCore):
    """The core's attempt on a Dask worker; its seam: it sends what the core would record."""

    runs_coroutines = True  # an ``async def`` task runs on an event loop of its own here

    def __init__(self, job: Job, key: str, topic: str, worker: Any) -> None:
        super().__init__(job)
        self.key = key
        self.topic = topic
        self.worker = worker
        self.started_at = time.time()
        self.wid = worker_id(worker.address)
        self.request.worker_id = self.wid
        self.pending: dict[str, Any] = {}
        self.sent: tuple[Any, ...] = (None, None, None)  # the progress sent last
        self.out_total = 0  # characters of output written so far
        self.released = False  # Dask released its key (the client cancelled it, or left)
        self.start(time.monotonic())

    def new_context(self) -> Context:
        return RemoteContext(self)

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

    def tick(self, ctx: Context) -> None:  # the core's writer never calls it on a worker
        pass

    # ------------------------------------------------------------------ sending (under _lock)

    def _fields(self) -> dict[str, Any]:
        """What changed since the last send (progress as ``[current, total, message]``, the
        output written since with the running total), plus whatever is pending."""
        ctx = self.ctx
        cur, total, msg = ctx.reported
        out: dict[str, Any] = {}
        if cur is not None and (cur, total, msg) != self.sent:
            out["p"] = [cur, total, msg]
            self.sent = (cur, total, msg)
        ops = ctx.drain_displays()
        if ops:
            out["d"] = ops
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
        return bool(self.pending or ctx._outbox or ctx.display_ops) or ctx.reported != self.sent

    def _send(self) -> None:
        msg = self._fields()
        msg["k"] = self.key
        try:
            self.worker.log_event(self.topic, msg)
        except Exception:  # pragma: no cover - the worker is closing: the result carries it all
            pass

    def _tick(self, mono: float) -> None:
        ctx = self.ctx
        self.enforce_limits(mono)
        ts = self.worker.state.tasks.get(self.key)
        if ts is None or ts.state == "cancelled":
            # The client cancelled the future (cancel, timeout, a lost connection): stop at
            # the next progress()/check_cancelled(), as thread tasks do.
            self.released = True
            ctx.request_stop(
                TaskCancelled(f"task {self.request.id}: its Dask future was cancelled")
            )
        if self._changed():
            self._send()


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
    """The function Dask runs, with ``(task payload, head, args, kwargs)`` pickled: run the
    attempt, send the outcome as the final event (the value too, when its pickle is small), and
    return ``(ok, value or error, info)`` as well, which the client gathers when the event could
    not carry it (or went missing)."""
    from distributed.worker import get_worker, thread_state

    _rich.install_display_capture()  # before the task is unpickled (see process/child.py)
    blob, head, args, kwargs = loads(payload)

    worker = get_worker()
    key = thread_state.key
    topic = head["topic"]
    task, options = _load_task(blob)
    if options.expires is not None and time.time() >= options.expires:
        _send_final(worker, topic, {"k": key, "x": 1})
        return (False, None, {"expired": True})
    request = Request.from_record(head, args, kwargs)
    job = Job(
        Live(head), task, tuple(args), kwargs, request, options, chunk=bool(head.get("chunk"))
    )
    attempt = RemoteAttempt(job, key, topic, worker)
    info: dict[str, Any] = {"t": attempt.started_at, "w": attempt.wid, "a": worker.address}
    # "started": sent at once, so the record turns RUNNING and a lost worker is told apart
    # from one that had not started the task yet.
    worker.log_event(topic, {"k": key, **info})
    with _lock:
        _active[key] = attempt
        _ensure_ticker()
        _wake.notify()
    try:
        value, error = attempt.call()
    finally:
        with _lock:
            _active.pop(key, None)
            info.update(attempt._fields())
    info["u"] = attempt.usage()  # the task thread's CPU time (SPEC §4 usage)
    value, error = attempt.unchecked_stop(value, error)  # a stop the last tick asked for
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
