"""The Dask executor: submits attempts to the cluster and applies what its workers report
(see the package's docstring)."""

from __future__ import annotations

import functools
import json
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..._attempt import Attempt, Job, record_interrupted
from ..._codec import cloudpickle, dumps
from ..._errors import TaskCancelled, TaskTimeout, WorkerLost
from ..._model import MISSING
from ..payload import task_payload
from . import worker
from .client import Hub, connect, scheduler_address
from .errors import decode_error

if TYPE_CHECKING:
    from ..._attempt import Runtime

BATCH: Final = 2000  # queue items handled per round
WATCHDOG: Final = 1.0  # seconds between checks when nothing is in flight
POLL: Final = 0.2  # seconds between polls of the futures in flight
GATHER_EVERY: Final = 0.01  # seconds between two gathers, at least


class _Flight:
    """One attempt of a job on Dask: its key, future and how far it got."""

    __slots__ = (
        "addr",
        "attempt",
        "claimed",
        "ended",
        "final",
        "future",
        "gathering",
        "job",
        "key",
        "seen_done",
    )

    def __init__(self, job: Job, attempt: Attempt, key: str) -> None:
        self.job = job
        self.attempt = attempt
        self.key = key
        self.future: Any = None
        self.claimed = False  # READY -> RUNNING recorded (the worker said it started)
        self.ended = False  # its outcome is recorded (or it was dropped): ignore the rest
        self.final = False  # the final event was applied (a gather only fetches the value)
        self.gathering = False  # queued for the next gather
        self.seen_done = False  # the poll saw its future finished once already
        self.addr: str | None = None  # the worker running it


class DaskExecutor:
    name = "dask"

    def __init__(self, runtime: Runtime, client: Any = None) -> None:
        try:
            import distributed  # noqa: F401  (here, not at import: ``import nbtasks`` stays lean)
        except ModuleNotFoundError as exc:
            raise ImportError(
                f"the 'dask' executor needs {exc.name}: pip install 'nbtasks[dask]'"
            ) from exc
        self.runtime = runtime
        self.store = runtime.store
        self.client, self._own_client = connect(client)
        self.topic = f"nbtasks-{uuid.uuid4().hex}"
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._flights: dict[str, _Flight] = {}  # Dask key -> flight
        self._by_id: dict[str, _Flight] = {}  # task id -> its current flight
        self._to_gather: list[_Flight] = []  # finished, value still on the worker
        self._stopping = False
        self._closed = False
        self._hub = Hub.of(self.client)
        self._hub.listen(self.topic, self._on_event)
        # Each worker a task starts on is watched through its own topic, where the scheduler
        # logs its removal ("all" would do too, but a client subscribed to "all" makes the
        # scheduler log an error when it closes: it is sent its own remove-client event).
        self._watched: dict[str, Callable[[Any], None]] = {}
        self._thread = threading.Thread(target=self._dispatch, name="nbtasks-dask", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<DaskExecutor of scheduler {scheduler_address(self.client)}>"

    # ------------------------------------------------------------------ submitting

    def submit(self, job: Job) -> None:
        if self._stopping:
            raise RuntimeError("this App has been shut down; create a new one")
        if self.client.scheduler_comm is not self._hub.comm:
            self._hub.check()
        req, opts, live = job.request, job.options, job.live
        n = req.retries
        key = f"{req.task_name}-{job.id}" if n == 0 else f"{req.task_name}-{job.id}-{n}"
        # The record's fields a Request is built from (Request.from_record), and the topic.
        head: dict[str, Any] = {"id": job.id, "task_name": req.task_name, "topic": self.topic}
        if n:
            head["retries"] = n
        if req.metadata:
            head["metadata"] = dict(req.metadata)
        if opts.priority:
            head["priority"] = opts.priority
        if req.parent_id:
            head["parent_id"] = req.parent_id
            head["root_id"] = req.root_id
        if job.chunk:
            head["chunk"] = True
        try:
            # Pickled at every submit, as Dask does: a notebook global changed since is seen.
            # One bytes argument: Dask does not walk it looking for keys and futures (the
            # arguments were checked to pickle at submit).
            payload = dumps((task_payload(job.task, opts), head, job.args, job.kwargs))
        except TypeError as exc:
            self._fail_unsent(job, exc)
            return
        attempt = Attempt(job, self.runtime)
        attempt.measures_usage = False  # it runs on a worker, which reports its usage
        flight = _Flight(job, attempt, key)
        with self._lock:
            self._flights[key] = flight
            self._by_id[job.id] = flight
        if self._on_live_finished not in live.callbacks:
            live.callbacks.append(self._on_live_finished)
        try:
            flight.future = self.client.submit(
                worker.run, payload, key=key, priority=opts.priority, pure=False
            )
        except Exception as exc:
            with self._lock:
                self._forget(flight)
            if self.client.status not in ("running", "connecting"):
                self._interrupt_unsent(job, f"the Dask client is {self.client.status}: {exc}")
            else:
                self._fail_unsent(job, exc)

    def cancel_running(self, job: Job) -> bool:
        # The runtime has set the context's stop (TaskCancelled) already.
        self._queue.put(("stop", job.id))
        return True

    def timed_out(self, job: Job) -> None:
        # Called by the supervisor once the deadline passed (the context holds TaskTimeout).
        self._queue.put(("stop", job.id))

    # ------------------------------------------------------------------ shutting down

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> list[Job]:
        with self._lock:
            self._stopping = True
            unstarted = []
            if cancel_pending:
                unstarted = [f for f in self._flights.values() if not f.claimed and not f.ended]
                for flight in unstarted:
                    flight.ended = True
                    self._forget(flight)
        for flight in unstarted:
            self._cancel_future(flight)
        if wait:
            with self._lock:
                while self._flights and self._thread.is_alive():
                    self._idle.wait(WATCHDOG)
        self._queue.put(("close",))
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        return [f.job for f in unstarted]

    def _close(self) -> None:
        """The dispatcher's last act: stop listening, close the client if we made it."""
        if self._closed:
            return
        self._closed = True
        self._hub.unlisten(self.topic, self._on_event)
        for addr, fn in list(self._watched.items()):
            self._hub.unlisten(addr, fn)
        self._watched.clear()
        if self._own_client:
            try:
                self.client.close()
            except Exception:  # pragma: no cover - closing a client whose cluster is gone
                pass

    # ------------------------------------------------------------------ called by Dask (its loop)

    def _on_event(self, event: tuple[float, Any]) -> None:
        self._queue.put(("event", event[1]))

    def _on_worker_event(self, addr: str, event: tuple[float, Any]) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") == "remove-worker":
            self._queue.put(("lost", addr, msg))

    def _on_live_finished(self, live: Any) -> None:
        # The record ended outside the dispatcher (a READY task cancelled or expired):
        # drop the future. May run under the runtime's lock: only queue it.
        self._queue.put(("gone", live.id))

    # ------------------------------------------------------------------ the dispatcher thread

    def _dispatch(self) -> None:
        """Apply events in order; gather values in batches; poll the futures now and then.

        A task's outcome arrives as its final event, and its future is then released without
        a gather when the value came with it. No per-future done callback: the poll (every
        POLL seconds) catches what sends no event: futures that erred in Dask (a worker lost
        too often, a value Dask could not serialize), were cancelled behind our back (a lost
        scheduler connection, a closed client), or finished while their event went missing."""
        get = self._queue.get
        closing = False
        last_gather = 0.0
        next_poll = time.monotonic() + POLL
        while True:
            now = time.monotonic()
            timeout = min(WATCHDOG, max(0.0, next_poll - now)) if self._flights else WATCHDOG
            if self._to_gather:
                timeout = min(timeout, max(0.0, last_gather + GATHER_EVERY - now))
            try:
                items = [get(timeout=timeout)]
            except queue.Empty:
                items = []
            while len(items) < BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item[0] == "close":
                    closing = True
                else:
                    self._guard(self._handle, item)
            # One gather per GATHER_EVERY at most: a lone value is fetched at once, a stream of
            # them in batches (each gather is a round trip to the workers).
            now = time.monotonic()
            if self._to_gather and now - last_gather >= GATHER_EVERY:
                batch, self._to_gather = self._to_gather, []
                self._guard(self._gather, batch)
                last_gather = time.monotonic()
            if now >= next_poll:
                self._guard(self._poll)
                self._guard(self._watchdog)
                next_poll = time.monotonic() + POLL
            with self._lock:
                if not self._flights:
                    self._idle.notify_all()
                    if closing:
                        self._close()
                        return

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Background machinery never fails silently (DESIGN principle 12)."""
        try:
            fn(*args)
        except Exception:  # pragma: no cover - a bug: say so where someone will see it
            print(
                "nbtasks: internal error in the Dask executor's dispatcher:\n"
                + traceback.format_exc(),
                file=sys.__stderr__,
            )

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "event":
            msg = item[1]
            flight = self._flights.get(str(msg.get("k"))) if isinstance(msg, dict) else None
            if flight is None or flight.ended:
                return  # an attempt already recorded (or not ours)
            if "x" in msg:
                self._expired(flight)
                return
            if not flight.claimed:
                if not self._claim(flight, msg):
                    return
            elif "t" in msg and "f" not in msg and msg.get("a") != flight.addr:
                # Started again on another worker: Dask re-ran it after losing the first one
                # (its removal was missed). The attempt was lost; nbtasks' policy decides.
                self._cancel_future(flight)
                self._end(flight, MISSING, self._lost_error(flight, str(flight.addr), "rerun"))
                return
            self._apply(flight, msg)
            if "f" in msg:
                self._final(flight, msg)
        elif kind == "stop":
            flight = self._by_id.get(item[1])
            if flight is None or flight.ended or not flight.claimed:
                return
            self._cancel_future(flight)
            stop = flight.attempt.ctx.stop_error or TaskCancelled(
                f"task {flight.job.id} was cancelled"
            )
            self._end(flight, MISSING, stop)
        elif kind == "gone":
            flight = self._by_id.get(item[1])
            if flight is not None and not flight.ended and flight.job.live.finished:
                with self._lock:
                    flight.ended = True
                    self._forget(flight)
                self._cancel_future(flight)
        elif kind == "lost":
            self._worker_lost(item[1], item[2])

    # ------------------------------------------------------------------ claiming and updates

    def _claim(self, flight: _Flight, info: dict[str, Any]) -> bool:
        """READY -> RUNNING with the worker's start time and id (as ``Attempt.claim``)."""
        attempt, live = flight.attempt, flight.job.live
        first = live.rec.get("started_at") is None
        if not attempt.claim():  # cancelled or expired meanwhile: the record says so already
            with self._lock:
                flight.ended = True
                self._forget(flight)
            self._cancel_future(flight)
            return False
        flight.claimed = True
        addr = flight.addr = info.get("a")
        if addr:
            self._watch(addr)
        now = time.time()
        start = min(info.get("t") or now, now)  # never after "now": clocks may differ
        fields: dict[str, Any] = {"last_attempted_at": start}
        if first:
            fields["started_at"] = start
        wid = info.get("w")
        if wid:
            fields["worker_ids"] = [*live.rec["worker_ids"][:-1], wid]
            flight.job.request.worker_id = wid
        self.store.change(live, **fields)
        if attempt.deadline is not None:
            attempt.deadline -= min(now - start, flight.job.options.timeout or 0.0)
        return True

    def _apply(self, flight: _Flight, msg: dict[str, Any]) -> None:
        """What the worker sent, into the record. Progress and output go into this process's
        Context of the attempt, as a local task's ``progress()`` and ``print()`` would: the
        runtime's supervisor samples them (<= 10/s) and ``Attempt.end`` writes the last values."""
        live, request, ctx = flight.job.live, flight.job.request, flight.attempt.ctx
        rec = live.rec
        fields: dict[str, Any] = {}
        if "p" in msg:
            ctx.set_reported(*msg["p"])
        if msg.get("u") is not None:  # the final event: the attempt's usage on the worker
            flight.attempt.reported_usage = msg["u"]
        if "ot" in msg:
            ctx.write_output(msg["o"], total=msg["ot"])
        for op in msg.get("d") or ():  # displays, in order: added, or cleared
            if op[0] == "a":
                ctx.add_display(_json_bundle(op[1]))
            else:
                ctx.clear_display(bool(op[1]))
        flush = "m" in msg
        if flush or "rm" in msg:
            merged = dict(rec.get("metadata") or {})
            merged.update(msg.get("m") or {})
            if "rm" in msg:
                request.metadata.update(msg["rm"])
                merged.update(request.metadata)
            fields["metadata"] = merged
        if "r" in msg:
            fields["result"] = msg["r"]
        if "st" in msg:
            fields["state"] = msg["st"]
        if fields:
            self.store.change(live, **fields)
        if flush:
            self.store.flush()  # set_metadata commits at once, as in the core

    # ------------------------------------------------------------------ outcomes

    def _final(self, flight: _Flight, msg: dict[str, Any]) -> None:
        """The final event (already applied): record the outcome, or gather the value."""
        flight.final = True
        if "c" in msg and not isinstance(
            flight.attempt.ctx.stop_error, TaskCancelled | TaskTimeout
        ):
            # It stopped because Dask released its key, and not at our request: the future
            # was cancelled behind our back (a lost connection, a closed client).
            self._cancelled_elsewhere(flight, flight.future)
            return
        if "e" in msg:
            self._end(flight, MISSING, decode_error(msg["e"]))
            return
        data = msg.get("v")
        if data is not None:
            try:
                value = cloudpickle().loads(data)
            except Exception:
                data = None  # e.g. a class this process cannot import: Dask's gather says why
            else:
                self._end(flight, value, None)
                return
        self._want_gather(flight)

    def _want_gather(self, flight: _Flight) -> None:
        if not flight.gathering:
            flight.gathering = True
            self._to_gather.append(flight)

    def _gather(self, flights: list[_Flight]) -> None:
        flights = [f for f in flights if not f.ended and f.future is not None]
        if not flights:
            return
        futures = [f.future for f in flights]
        try:
            payloads = self.client.gather(futures)
        except Exception:
            payloads = [_result_or_error(f) for f in futures]
        for flight, future, payload in zip(flights, futures, payloads, strict=True):
            flight.gathering = False
            if flight.ended:
                continue
            if isinstance(payload, _Failure):
                if future.status == "cancelled":
                    self._cancelled_elsewhere(flight, future)
                else:
                    self._end_remote_error(flight, payload.exc, {})
                continue
            ok, value, info = payload
            if info.get("expired"):
                self._expired(flight)
                continue
            if not flight.claimed and not self._claim(flight, info):
                continue
            if not flight.final:  # its final event never came: the info stands in for it
                self._apply(flight, info)
            self._end(flight, value if ok else MISSING, None if ok else decode_error(value))

    def _poll(self) -> None:
        """Futures that finished without a final event, erred in Dask, or were cancelled."""
        for flight in list(self._flights.values()):
            future = flight.future
            if flight.ended or future is None or flight.gathering:
                continue
            status = future.status
            if status == "finished":
                if flight.seen_done:  # a poll ago already: its final event is not coming
                    self._want_gather(flight)
                flight.seen_done = True
            elif status == "error":
                self._errored(flight, future)
            elif status == "cancelled":
                self._cancelled_elsewhere(flight, future)

    def _expired(self, flight: _Flight) -> None:
        """The worker found the task past ``expires`` and did not run it."""
        if flight.claimed or self._claim(flight, {}):  # claim() records CANCELLED "expired"
            self._end(flight, MISSING, TaskCancelled("expired"))

    def _errored(self, flight: _Flight, future: Any) -> None:
        """The Dask task itself failed: a worker lost too often (KilledWorker), a value Dask
        could not serialize, or the wrapper could not run (nbtasks missing on the worker)."""
        try:
            exc = future.exception(timeout=5)
        except Exception as err:
            exc = err
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            exc = WorkerLost(
                f"task {flight.job.request.task_name}[{flight.job.id}] was running on Dask "
                f"workers that died ({exc})"
            )
        self._end_remote_error(flight, exc, {})

    def _end_remote_error(self, flight: _Flight, exc: BaseException, info: dict[str, Any]) -> None:
        if not flight.claimed and not self._claim(flight, info):
            return
        self._end(flight, MISSING, exc)

    def _watch(self, addr: str) -> None:
        if addr not in self._watched and not self._closed:
            fn = self._watched[addr] = functools.partial(self._on_worker_event, addr)
            self._hub.listen(addr, fn)

    def _worker_lost(self, addr: str, msg: dict[str, Any]) -> None:
        """The scheduler removed a worker: tasks that had started on it lost their attempt."""
        fn = self._watched.pop(addr, None)
        if fn is not None:
            self._hub.unlisten(addr, fn)
        why = msg.get("stimulus_id") or "unknown"
        for key in msg.get("processing-tasks") or ():
            flight = self._flights.get(key)
            if flight is None or flight.ended or not flight.claimed or flight.final:
                # Not started there (only queued on it): Dask runs it elsewhere.
                continue
            if flight.addr is not None and flight.addr != addr:
                continue
            self._cancel_future(flight)  # Dask would re-run it; nbtasks' retry policy decides
            self._end(flight, MISSING, self._lost_error(flight, addr, why))

    def _lost_error(self, flight: _Flight, addr: str, why: str) -> WorkerLost:
        req = flight.job.request
        return WorkerLost(
            f"task {req.task_name}[{flight.job.id}]: the Dask worker {addr} running it was lost "
            f"(its process died or stopped answering; scheduler stimulus {why!r})"
        )

    def _cancelled_elsewhere(self, flight: _Flight, future: Any) -> None:
        """A future cancelled behind our back: the client lost the scheduler or was closed."""
        exc = getattr(getattr(future, "_state", None), "exception", None)
        reason = getattr(exc, "reason", None)
        addr = scheduler_address(self.client)
        if reason == "scheduler-connection-lost":
            why = f"the Dask client lost its connection to the scheduler {addr}"
        elif self.client.status in ("closing", "closed"):
            why = f"the Dask client of scheduler {addr} was closed"
        else:
            why = f"its Dask future was cancelled outside nbtasks (reason: {reason or 'unknown'})"
        self._interrupt(flight, why)

    def _watchdog(self) -> None:
        """Nothing stays RUNNING forever: a closed client interrupts what it had in flight."""
        self._hub.check()
        if self.client.status in ("closing", "closed") and self._flights:
            addr = scheduler_address(self.client)
            for flight in list(self._flights.values()):
                if not flight.ended:
                    self._interrupt(flight, f"the Dask client of scheduler {addr} was closed")

    def _end(self, flight: _Flight, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if flight.ended:
                return
            flight.ended = True
            self._forget(flight)
        flight.future = None  # released: Dask forgets the key (and the worker its value)
        flight.attempt.end(value, error)

    def _interrupt(self, flight: _Flight, why: str) -> None:
        with self._lock:
            if flight.ended:
                return
            flight.ended = True
            self._forget(flight)
        flight.future = None
        record_interrupted(flight.job, self.runtime, f"{why}; it may not have finished")

    def _interrupt_unsent(self, job: Job, why: str) -> None:
        record_interrupted(job, self.runtime, f"it could not be sent to Dask: {why}")

    def _fail_unsent(self, job: Job, exc: BaseException) -> None:
        """It cannot be sent at all: the attempt fails (and may retry, like any failure)."""
        attempt = Attempt(job, self.runtime)
        attempt.measures_usage = False  # it never ran
        if attempt.claim():
            attempt.end(MISSING, exc)

    # ------------------------------------------------------------------ helpers

    def _forget(self, flight: _Flight) -> None:
        """Under ``self._lock``."""
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if self._by_id.get(flight.job.id) is flight:
            del self._by_id[flight.job.id]

    def _cancel_future(self, flight: _Flight) -> None:
        future = flight.future
        if future is not None and not future.done():
            try:
                future.cancel(reason="nbtasks", msg="cancelled by nbtasks")
            except Exception:  # pragma: no cover - the client is gone: nothing to cancel
                pass
        flight.future = None


# --------------------------------------------------------------------------- errors


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _result_or_error(future: Any) -> Any:
    try:
        return future.result(timeout=60)
    except BaseException as exc:
        return _Failure(exc)


def _json_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
    """A bundle as it left the task: Dask's events carry a JSON value's lists as tuples."""
    data = bundle.get("application/json")
    if data is None:
        return bundle
    return {**bundle, "application/json": json.loads(json.dumps(data))}
