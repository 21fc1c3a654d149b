"""Inline: the attempt runs in the thread that hands it over (at submit, or when a countdown
ends, on a thread of its own). Useful in tests and to debug a task with pdb."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._attempt import Attempt, Job

if TYPE_CHECKING:
    from .._attempt import Runtime


class InlineExecutor:
    name = "inline"

    def __init__(self, runtime: Runtime, **_: object) -> None:
        self.runtime = runtime

    def submit(self, job: Job) -> None:
        Attempt(job, self.runtime).run()

    def cancel_running(self, job: Job) -> bool:
        return False

    def timed_out(self, job: Job) -> None:
        pass

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> list[Job]:
        return []
