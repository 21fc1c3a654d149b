"""The exception tree of nbtasks.

Every message says what went wrong, why, and how to fix it::

    NbtasksError
    ├── StoreError              the store cannot be opened, read or written
    ├── UntrustedValue          a pickled value whose signature does not verify
    ├── UnknownTaskId           (also a KeyError) no such task in the store
    ├── ResultNotReady          return_value of a task that has not finished
    ├── TaskFailed              return_value of a FAILED task (original as __cause__)
    ├── TaskCancelled           a cancelled (or expired) task; raised inside it by progress()
    ├── TaskInterrupted         its owner process died before it finished
    ├── TaskTimeout             an attempt ran past its hard `timeout`
    ├── SoftTimeLimitExceeded   raised inside a task past its `soft_timeout`
    ├── WorkerLost              a worker process died while running the task
    ├── MaxRetriesExceededError ctx.retry() past max_retries without an exc
    └── Retry                   control flow: raised by ctx.retry(), caught by the runner
"""

from __future__ import annotations


class NbtasksError(Exception):
    """Base class of every error nbtasks raises on purpose."""


class StoreError(NbtasksError):
    """The store cannot be opened, read or written safely."""


class UntrustedValue(NbtasksError):
    """A pickled value whose HMAC signature does not verify was not unpickled."""


class UnknownTaskId(NbtasksError, KeyError):
    """The store holds no task (or group) with this id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class ResultNotReady(NbtasksError):
    """The task has not finished yet."""


class TaskFailed(NbtasksError):
    """The task failed; the original exception is ``__cause__`` where it could be restored."""


class TaskCancelled(NbtasksError):
    """The task was cancelled (or expired) and will not return a value."""


class TaskInterrupted(NbtasksError):
    """The task's owner process died, or the kernel restarted, before it finished."""


class TaskTimeout(NbtasksError):
    """An attempt ran past its hard ``timeout``."""


class SoftTimeLimitExceeded(NbtasksError):
    """Raised inside a task that ran past its ``soft_timeout``; it may clean up and return."""


class WorkerLost(NbtasksError):
    """A worker process died (signal or exit code) while it ran the task."""


class MaxRetriesExceededError(NbtasksError):
    """``ctx.retry()`` was called after the last allowed retry."""


class Retry(NbtasksError):
    """Raised by ``ctx.retry()``; tells the runner to schedule another attempt."""

    def __init__(
        self, message: str, exc: BaseException | None = None, countdown: float | None = None
    ) -> None:
        super().__init__(message)
        self.exc = exc
        self.countdown = countdown
