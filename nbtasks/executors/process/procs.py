"""A worker process as the parent sees it: its jobs, its deadline, how it is stopped and how it
ended."""

from __future__ import annotations

import collections
import signal
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..._attempt import Job
    from .channel import Channel
    from .launch import Launcher

DEPTH: Final = 2  # jobs a pool worker holds: the running one and the next
PREFETCH_MAX: Final = 64 * 1024  # bytes of payload past which a job goes to idle workers only
# A job waits in a busy worker only while that worker's running task is younger than this:
# behind a task that has run longer it could wait for as long while another worker frees up.
PREFETCH_AGE: Final = 0.010


class WorkerProcess:
    """One worker: the parent's supervisor thread and submitting threads share it under the
    executor's lock."""

    def __init__(self, n: int, launcher: Launcher, detached: bool) -> None:
        self.n = n
        self.launcher = launcher
        self.conn: Channel | None = None  # once it is connected (spawn: after its handshake)
        self.detached = detached
        self.pid: int | None = None
        self.start: str | None = None  # its start time (/proc), so a reused pid is not signalled
        self.owner: str | None = None
        self.ready = False
        self.jobs: collections.deque[Job] = collections.deque()  # sent, in order; [0] runs
        self.undelivered: set[str] = set()  # jobs whose send failed (it was dying)
        self.waiting: Job | None = None  # a detached worker's job, sent once it is ready
        self.head_since = 0.0
        self.deadline: float | None = None  # the running job's hard timeout
        self.polled = 0.0
        self.recent: collections.deque[tuple[float, Job]] = collections.deque()
        self.stop: BaseException | None = None  # why we terminate it (timeout, cancel)
        self.signalled: str | None = None
        self.kill_at: float | None = None
        self.eof_at: float | None = None
        self.code: int | None = None
        self.code_known = False
        self.nested = False  # its running task submitted tasks: queue nothing behind it
        self.peak_rss: int | None = None  # the running task's peak memory, as it reported

    def __repr__(self) -> str:
        kind = "detached " if self.detached else ""
        return f"<worker {self.pid} {kind}jobs={[j.id for j in self.jobs]}>"

    def terminate(self, kill: bool = False) -> None:
        """SIGTERM it (SIGKILL if ``kill``), or what the platform has instead."""
        if self.pid is None or self.code_known:
            return  # not started yet: stopped when it reports ready
        self.launcher.stop(self.n, self.pid, self.start, kill)

    def send_stop(self) -> None:
        """Ask it to exit once its jobs are done."""
        if self.conn is None:
            return
        try:
            self.conn.send(("stop",))
        except OSError:
            pass

    def how(self) -> str:
        """How it ended: the signal that killed it, or its exit code."""
        code = self.code
        if not self.code_known:
            return "ended (its exit status is unknown)"
        if code is not None and code < 0:
            sig = signal.Signals(-code)
            return f"was killed by {sig.name} ({signal.strsignal(sig) or sig.name})"
        return f"exited with code {code}"


def small(job: Job) -> bool:
    """A job whose message fits in a socket's buffer, so it can wait in a busy worker's."""
    return len(job.payload or b"") < PREFETCH_MAX
