"""Background threads: a priority queue served by up to ``workers`` daemon threads.

An idle worker parks on a lock of its own, and a submit releases it: cheaper than a
``Condition`` (whose notify is Python code) on the submit path.
"""

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
        self._lock = threading.Lock()
        self._parked: list[threading.Lock] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError("this App has been shut down; create a new one")
            heapq.heappush(self._queue, (-job.options.priority, next(self._seq), job))
            waker = self._parked.pop() if self._parked else None
            if waker is None and len(self._threads) < self.max_workers:
                self._spawn()
        if waker is not None:
            waker.release()

    def _spawn(self) -> None:
        t = threading.Thread(
            target=self._work, name=f"nbtasks-worker-{len(self._threads)}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        queue = self._queue
        while True:
            with self._lock:
                if queue:
                    job = heapq.heappop(queue)[2]
                    park = None
                elif self._stopping:
                    return
                else:
                    park = threading.Lock()
                    park.acquire()
                    self._parked.append(park)
            if park is not None:
                park.acquire()  # until a submit (or shutdown) releases it
                continue
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
        with self._lock:
            self._stopping = True
            pending = [entry[2] for entry in self._queue] if cancel_pending else []
            if cancel_pending:
                self._queue.clear()
            parked, self._parked = self._parked, []
        for lock in parked:
            lock.release()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
        return pending
