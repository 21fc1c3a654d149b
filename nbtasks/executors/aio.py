"""``async def`` tasks: one background event loop thread per App runs their coroutines."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from .._attempt import Attempt, Job

if TYPE_CHECKING:
    from .._attempt import Runtime


class AsyncioExecutor:
    name = "aio"

    def __init__(self, runtime: Runtime, **_: object) -> None:
        self.runtime = runtime
        self._loop = asyncio.new_event_loop()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nbtasks-asyncio", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._loop.call_soon_threadsafe(self._start, job)

    def _start(self, job: Job) -> None:
        task = self._loop.create_task(Attempt(job, self.runtime).arun())
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    def cancel_running(self, job: Job) -> bool:
        return False  # cooperative, as for threads: the next progress() raises TaskCancelled

    def timed_out(self, job: Job) -> None:
        pass

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> list[Job]:
        if wait and self._tasks:
            pending = list(self._tasks.values())

            async def _wait() -> None:
                await asyncio.gather(*pending, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(_wait(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=None if wait else 1.0)
        if not self._thread.is_alive():
            self._loop.close()
        return []
