"""What becomes of a worker's tasks, as the parent learns it (SPEC §7, DESIGN principle 10).

While a worker lives it owns the record of the task it runs: it reports each final record (or
retry) here, and this process only mirrors it. When a worker dies, this process owns its tasks'
records again: it persists final records the worker reported but may not have committed, puts
the jobs it never started back in the queue, and records the outcome of the one it was running
(``WorkerLost`` naming the signal or exit code, with what faulthandler saw; or why it was
terminated: ``TaskTimeout``, ``TaskCancelled``), retries included.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..._attempt import Job, Runtime, format_worker_id, record_outcome, replace_arguments
from ..._errors import TaskCancelled, TaskTimeout, WorkerLost
from ..._model import FINISHED, MISSING, TaskRecord, TaskStatus
from ...store import HOST
from . import usage

if TYPE_CHECKING:
    from .procs import WorkerProcess

#: Final statuses a worker records itself (INTERRUPTED in the store is another process's sweep).
_BY_WORKER: Final = frozenset({TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED})
#: Seconds after which a reported final record is surely committed by the worker's writer (it
#: commits at every tick, 0.1 s): older ones are not read back when the worker dies.
COMMITTED_AFTER: Final = 0.5
#: The exit code of a worker killed by SIGKILL (none on Windows).
_KILLED: Final = -int(getattr(signal, "SIGKILL", 9))


class Outcomes:
    """Turns what the parent learns of a worker's tasks into their records."""

    def __init__(self, runtime: Runtime, grace: float, faults: Path) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.grace = grace
        self.faults = faults  # where each worker's faulthandler writes, one file per pid

    # ------------------------------------------------------------------ reported by the worker

    def done(self, job: Job, rec: TaskRecord) -> None:
        live = job.live
        moved = "args" in rec and any(rec.get(f) != live.rec.get(f) for f in ("args", "kwargs"))
        enc = rec.get("rv")
        if rec["status"] == TaskStatus.SUCCESSFUL and enc is not None:
            waiting = getattr(self.runtime, "waiting", {})
            if "j" in enc or job.options.link or job.id in waiting:
                try:
                    live.value = self.store.decode_value(enc, f"the value of task {job.id}")
                except Exception:
                    live.value = MISSING  # TaskResult decodes it again and shows the error
        self.store.observe(live, rec)
        if moved:
            self._new_arguments(job)
        self.runtime.finished(job)

    def retry(self, job: Job, rec: TaskRecord, delay: float) -> None:
        live = job.live
        moved = any(rec.get(f) != live.rec.get(f) for f in ("args", "kwargs"))
        self.store.observe(live, rec)
        job.request.retries = rec.get("retries") or 0
        if moved:
            self._new_arguments(job)
        self.runtime.schedule(job, delay)

    def _new_arguments(self, job: Job) -> None:
        """The task asked for a retry with new arguments (``retry(args=, kwargs=)``): the
        worker stored them; this process's job follows (hooks run here if a worker dies)."""
        rec = job.live.rec
        try:
            args = tuple(self.store.decode_value(rec["args"], f"the args of task {job.id}"))
            kwargs = self.store.decode_value(rec["kwargs"], f"the kwargs of task {job.id}")
        except Exception:
            # Unreadable here (a class this process cannot import): the next worker decodes
            # them from the record, and TaskResult.args reads the record and says why.
            job.live.args = job.live.kwargs = MISSING
            return
        replace_arguments(job, args, kwargs)

    # ------------------------------------------------------------------ the worker died

    def persist_reported(self, proc: WorkerProcess) -> None:
        """Final records the dead worker reported but may not have committed: write them."""
        store = self.store
        recent = time.monotonic() - COMMITTED_AFTER
        for reported, job in proc.recent:
            live = job.live
            stored: str | None = TaskStatus.SUCCESSFUL  # (any final status) committed long ago
            if reported >= recent:
                try:
                    stored = store.read_record(job.id)["status"]
                except Exception:
                    stored = None
            if stored not in FINISHED:
                live.rec["owner"] = store.owner
                store.adopt(live)
                store.mark(live)  # committed by this process's writer, then let go
            elif store.live.get(live.id) is live:
                del store.live[live.id]  # committed by the worker: read from the store now
        proc.recent.clear()

    def requeue(self, job: Job, pool_error: BaseException | None) -> None:
        """A job the dead worker never started: back to READY and to another worker (or failed,
        when the pool cannot start workers)."""
        live = job.live
        with self.runtime.lock:
            status = live.rec["status"]
            cancelled = status == TaskStatus.RUNNING and job.cancel_reason is not None
            if status == TaskStatus.RUNNING and not cancelled:
                self.store.observe(live, {"status": TaskStatus.READY.value})
        if cancelled:
            record_outcome(job, self.runtime, TaskCancelled(str(job.cancel_reason)))
        elif status in (TaskStatus.READY, TaskStatus.RUNNING):
            if pool_error is not None:
                self.unsent(job, pool_error)
            else:
                self.runtime.schedule(job, 0.0)

    def unsent(self, job: Job, pool_error: BaseException) -> None:
        """The pool cannot start workers: the job fails with why (it is stored already)."""
        record_outcome(job, self.runtime, WorkerLost(str(pool_error)))

    def fault_text(self, proc: WorkerProcess) -> str:
        """What faulthandler wrote when the worker crashed (a Python traceback), if anything."""
        if proc.pid is None:
            return ""
        path = self.faults / f"{proc.pid}.txt"
        try:
            text = path.read_text(errors="replace").strip()
            path.unlink()
        except OSError:
            return ""
        return text[-4000:]

    def lost(self, proc: WorkerProcess, job: Job, fault: str) -> None:
        """A worker died running a job: its outcome, from what the worker last committed."""
        live, store = job.live, self.store
        try:
            rec: TaskRecord | None = store.read_record(job.id)
        except Exception:
            rec = None
        if rec is not None:
            status = rec["status"]
            if status in _BY_WORKER:  # it finished just before it died
                self.done(job, rec)
                return
            n = rec.get("retries") or 0
            if status == TaskStatus.READY and n > (
                live.rec.get("retries") or 0
            ):  # it asked for a retry
                backoff = job.options.retry_backoff
                self.retry(job, rec, backoff * 2 ** (n - 1) if backoff else 0.0)
                return
            store.observe(live, {k: v for k, v in rec.items() if k != "status"})
        if rec is None or rec["status"] == TaskStatus.READY:  # it died before committing its claim
            now = time.time()
            store.observe(
                live,
                {
                    "worker_ids": [
                        *live.rec.get("worker_ids", []),
                        format_worker_id(HOST, proc.pid, "MainThread"),
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
        record_outcome(job, self.runtime, error)


def _death(proc: WorkerProcess, job: Job, fault: str) -> str:
    """The WorkerLost message: which process, how it ended, and what faulthandler saw."""
    name = f"{job.request.task_name}[{job.id}]"
    text = f"the worker process {proc.pid} running task {name} {proc.how()}"
    if proc.code == _KILLED and proc.signalled is None:  # not by us: maybe the OOM killer
        text += usage.oom_hint(proc.peak_rss)
    return f"{text}\n{fault}" if fault else text
