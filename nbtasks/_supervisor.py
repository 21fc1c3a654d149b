"""The supervisor: one thread per runtime (the App's, or a worker process's) that keeps the
timers (countdown, eta, retry backoff), enforces running attempts' time limits, samples their
progress and output into the store about every ``TICK``, and acts on the cancel and
``update_state`` requests that other processes wrote to the store. It runs on the injected
``Clock``, so tests drive it with a fake one; the store's writer only commits.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._attempt import Attempt, Job
    from ._model import Clock
    from .store import Store

_log = logging.getLogger("nbtasks")

TICK: Final = 0.1  # seconds of the clock between two samples of a running attempt
#: Seconds of the clock an idle supervisor keeps its thread for the next task before it ends.
IDLE_EXIT: Final = 2.0


class Supervisor:
    """Timers, time limits, progress samples and requests, on one thread and the clock.

    Its thread is started on need, looks at least every ``TICK`` (so a claim never has to wake
    it), and ends once there has been nothing to supervise (no timer, no unfinished task in this
    process) for ``IDLE_EXIT``, so an idle or forgotten App holds no thread. What it calls runs
    on that thread, without its lock: a callback may schedule again."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        on_cancel_request: Callable[[str], None],
        on_due: Callable[[Job], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_cancel_request = on_cancel_request
        self.on_due = on_due
        self.running: dict[str, Attempt] = {}  # task id -> its running attempt in this process
        self._timers: list[tuple[float, int, Job]] = []  # (monotonic due time, seq, job)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: BaseException | None = None  # the last tick's failure (a bug), also logged

    def start(self) -> None:
        """Something to supervise may have come: start the thread if there is none. A live
        thread needs no wake-up: it looks at least every ``TICK``."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="nbtasks-supervisor", daemon=True
                )
                self._thread.start()

    def add(self, attempt: Attempt) -> None:
        """A claimed attempt: supervised until ``discard``."""
        self.running[attempt.job.id] = attempt
        self.start()

    def discard(self, attempt: Attempt) -> None:
        tid = attempt.job.id
        if self.running.get(tid) is attempt:
            del self.running[tid]

    def get(self, task_id: str) -> Attempt | None:
        """The attempt of ``task_id`` running in this process, if there is one."""
        return self.running.get(task_id)

    def schedule(self, job: Job, delay: float) -> bool:
        """Call ``on_due(job)`` once ``delay`` seconds of the clock have passed; False (and
        nothing scheduled) once closed."""
        with self._cond:
            if self._closed:
                return False
            due = self.clock.monotonic() + delay
            heapq.heappush(self._timers, (due, next(self._seq), job))
            self._cond.notify()
        self.start()
        return True

    def due(self, task_id: str) -> float | None:
        """When (``clock.monotonic()``) the timer of ``task_id`` runs out; None: it has none."""
        with self._cond:
            return min((d for d, _, job in self._timers if job.id == task_id), default=None)

    def close(self) -> list[Job]:
        """Stop the timers (their jobs are returned, never started); attempts that still run
        stay supervised until they end."""
        with self._cond:
            self._closed = True
            timed = [entry[2] for entry in self._timers]
            self._timers.clear()
            self._cond.notify_all()
        return timed

    def _run(self) -> None:
        clock, cond = self.clock, self._cond
        next_tick: float | None = None
        idle_since: float | None = None
        while True:
            with cond:
                while True:
                    now = clock.monotonic()
                    due: list[Job] = []
                    while self._timers and self._timers[0][0] <= now:
                        due.append(heapq.heappop(self._timers)[2])
                    # Once closed, only what still runs: the store may be closed too.
                    if self.running or (self.store.live and not self._closed):
                        idle_since = None
                        if next_tick is None:
                            next_tick = now  # it became busy since the last look: tick now
                    else:
                        next_tick = None
                        if not self._timers:
                            # Idle: the thread stays a moment for the next task, so that a
                            # claim costs no thread start (a task at a time, as in a notebook).
                            if idle_since is None:
                                idle_since = now
                            if self._closed or now - idle_since >= IDLE_EXIT:
                                self._thread = None
                                return
                    tick = next_tick is not None and now >= next_tick
                    if due or tick:
                        break
                    # At least every TICK while the thread lives: a claim does not wake it.
                    deadline = now + TICK if next_tick is None else next_tick
                    if self._timers and self._timers[0][0] < deadline:
                        deadline = self._timers[0][0]
                    clock.wait(cond, deadline)
            if tick:
                next_tick = now + TICK
            for job in due:
                if self.on_due is not None:
                    self.on_due(job)
            if tick:
                try:
                    self._tick(now)
                except Exception as exc:  # pragma: no cover - a bug: show it, don't stop
                    self.error = exc
                    _log.exception("nbtasks: the supervisor's tick failed")

    def _tick(self, now: float) -> None:
        wall = self.clock.time()
        for attempt in list(self.running.values()):
            attempt.enforce_limits(now)  # each limit acts once (its stop is then recorded)
            attempt.sample(wall)
        if self.store.live and not self._closed:
            for tid in self.store.cancel_requests():
                live = self.store.live.get(tid)
                if live is not None and not live.finished:
                    self.on_cancel_request(tid)
            self._apply_state_requests()

    def _apply_state_requests(self) -> None:
        """``update_state(task_id=...)`` requests other processes wrote: applied to the
        attempts running here (their owner), then deleted; one for a task that runs in
        another process is left to that process."""
        for request in self.store.state_requests():
            attempt = self.running.get(request.task_id)
            if attempt is not None:
                attempt.update_state(request.state, request.meta)
                self.store.drop_state_request(request.task_id, request.raw)
