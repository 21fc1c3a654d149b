"""Background threads: a priority queue served by up to ``workers`` daemon threads."""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import TYPE_CHECKING

from .._attempt import Attempt, Job
from .._errors import SoftTimeLimitExceeded

if TYPE_CHECKING:
    from .._attempt import Runtime


class ThreadExecutor:
    name = "thread"

    def __init__(self, runtime: Runtime, workers: int = 4) -> None:
        self.runtime = runtime
        self.max_workers = workers
        self._queue: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopping = False

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("this App has been shut down; create a new one")
            heapq.heappush(self._queue, (-job.options.priority, next(self._seq), job))
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self.max_workers:
                self._spawn()

    def _spawn(self) -> None:
        t = threading.Thread(
            target=self._work, name=f"nbtasks-worker-{len(self._threads)}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                while not queue:
                    if self._stopping:
                        return
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                job = heapq.heappop(queue)[2]
            try:
                Attempt(job, self.runtime).run()
            except SoftTimeLimitExceeded:
                # A soft limit raised asynchronously just as the task returned: it is late,
                # and the attempt has already been recorded.
                pass

    def cancel_running(self, job: Job) -> bool:
        return False  # threads stop cooperatively, at their next progress()/check_cancelled()

    def timed_out(self, job: Job) -> None:
        pass  # the context raises TaskTimeout at the next progress()/check_cancelled()

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> list[Job]:
        with self._cond:
            self._stopping = True
            pending = [entry[2] for entry in self._queue] if cancel_pending else []
            if cancel_pending:
                self._queue.clear()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
        return pending
