"""The exception tree of nbtasks.

Every message says what went wrong, why, and how to fix it::

    NbtasksError
    ├── StoreError              the store cannot be opened, read or written
    ├── UntrustedValue          a pickled value whose signature does not verify
    ├── UnknownTaskId           (also a KeyError) no such task in the store
    ├── ResultNotReady          return_value of a task that has not finished
    ├── TaskError               one failed attempt, as recorded (TaskResult.errors)
    │   └── TaskFailed          return_value of a FAILED task (original as __cause__); get()
    │                           when the task's own exception cannot be restored
    ├── TaskCancelled           a cancelled (or expired) task; raised inside it by progress()
    ├── TaskInterrupted         its owner process died before it finished
    ├── TaskTimeout             an attempt ran past its hard `timeout`
    ├── SoftTimeLimitExceeded   raised inside a task past its `soft_timeout`
    ├── WorkerLost              a worker process died while running the task
    ├── MaxRetriesExceededError ctx.retry() past max_retries without an exc
    └── Retry                   control flow: raised by ctx.retry(), caught by the runner

    RemoteTraceback             (an Exception) a failed task's own traceback text, chained as
                                the __cause__ of the exception get() re-raises
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from typing import Any


class NbtasksError(Exception):
    """Base class of every error nbtasks raises on purpose."""


class StoreError(NbtasksError):
    """The store cannot be opened, read or written safely."""


def damaged(key: str, store: object, why: str) -> StoreError:
    """The error for one damaged entry of a store: that entry only, the others read as before."""
    return StoreError(
        f"the record {key} in the store {store} is damaged ({why}): it cannot be read, and "
        "lists as DAMAGED; the store's other records read as before. If you did not expect "
        "this, move the store aside and check it (mv STORE STORE.broken)"
    )


class UntrustedValue(NbtasksError):
    """A pickled value whose HMAC signature does not verify was not unpickled."""


class UnknownTaskId(NbtasksError, KeyError):
    """The store holds no task (or group) with this id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class ResultNotReady(NbtasksError):
    """The task has not finished yet."""


class TaskError(NbtasksError):
    """One failed attempt of a task, as recorded (django-tasks' TaskError): the exception's
    class path, its traceback text and its message. ``TaskResult.errors`` lists them.

    It is an exception class so that ``except nbtasks.TaskError:`` means what a django-tasks
    user reads into it: it catches ``TaskFailed``, which carries the same fields (those of the
    last failed attempt). nbtasks never raises a plain ``TaskError``.
    """

    def __init__(self, exception_class_path: str, traceback: str = "", message: str = "") -> None:
        super().__init__(exception_class_path, traceback, message)
        # The record's fields are frozen (as django-tasks' dataclass); raising it still sets
        # __traceback__, __cause__ and __context__.
        object.__setattr__(self, "exception_class_path", exception_class_path)
        object.__setattr__(self, "traceback", traceback)
        object.__setattr__(self, "message", message)

    exception_class_path: str
    traceback: str
    message: str

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _TASK_ERROR_FIELDS:
            raise AttributeError(f"TaskError.{name} is read-only: a TaskError is a record")
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args)  # the fields are in args (and cannot be set later)

    @property
    def exception_class(self) -> type[BaseException]:
        """The exception class, imported by its path."""
        module_name, _, qualname = self.exception_class_path.rpartition(".")
        obj: Any = importlib.import_module(module_name or "builtins")
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, str]:
        return {"cls": self.exception_class_path, "tb": self.traceback, "msg": self.message}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> TaskError:
        return cls(data["cls"], data.get("tb", ""), data.get("msg", ""))

    def _fields(self) -> tuple[str, str, str]:
        return (self.exception_class_path, self.traceback, self.message)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, TaskError)
        return self._fields() == other._fields() and self.args == other.args

    def __hash__(self) -> int:
        return hash(self._fields())

    def __str__(self) -> str:
        if self.message:
            return f"{self.exception_class_path}: {self.message}"
        return self.exception_class_path

    def __repr__(self) -> str:
        return f"TaskError({self.exception_class_path!r}, message={self.message!r})"


_TASK_ERROR_FIELDS = frozenset({"exception_class_path", "traceback", "message"})


class TaskFailed(TaskError):
    """The task failed. Its fields are the last failed attempt's (``exception_class_path``,
    ``traceback``, ``message``); the original exception is ``__cause__`` where it could be
    restored."""

    def __init__(
        self, text: str, exception_class_path: str = "", traceback: str = "", message: str = ""
    ) -> None:
        super().__init__(exception_class_path, traceback, message)
        self.args = (text, exception_class_path, traceback, message)  # pickles with its fields

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        return f"TaskFailed({self.args[0]!r})"


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
    """Raised by ``ctx.retry()``; tells the runner to schedule another attempt: after
    ``countdown`` seconds, or at ``eta`` (epoch seconds), else after the task's backoff; with
    ``retry_args``/``retry_kwargs`` as the next attempt's arguments when they are not None
    (``args`` is taken: it is the exception's own)."""

    def __init__(
        self,
        message: str = "retry",
        *,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: float | None = None,
        retry_args: tuple[Any, ...] | None = None,
        retry_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.exc = exc
        self.countdown = countdown
        self.eta = eta
        self.retry_args = retry_args
        self.retry_kwargs = retry_kwargs


class RemoteTraceback(Exception):
    """The traceback text of a task that failed elsewhere (a thread, a worker process, a Dask
    worker, an earlier kernel): ``get()`` re-raises the task's exception with this as its
    ``__cause__``, so the report shows where it was raised (``concurrent.futures.process``
    chains its ``_RemoteTraceback`` the same way)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


# ----------------------------------------------------------------------------- shown tracebacks
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_FRAME_LINE = re.compile(r'^  File "(?P<file>[^"]*)", line (?P<line>\d+)(?P<rest>.*)$')


def shown_traceback(
    tb: str, cell_label: Callable[[str], str | None] | None = None
) -> tuple[str, int]:
    """A recorded traceback as a widget shows it, and how many frames were left out.

    nbtasks' own frames (the runner that called the task, a worker's loop, the ``%%task``
    cell's wrapper) come before the user's code in every traceback and say nothing about the
    failure, so they are left out here; the stored record (``TaskResult.errors``) keeps them.
    ``cell_label`` maps a filename to IPython's name for it (``Cell In[7]``), as IPython's own
    tracebacks show a notebook cell instead of ipykernel's temporary file. A traceback whose
    frames are all nbtasks' (a bug in nbtasks itself) is shown whole.
    """
    out: list[str] = []
    skipping = False
    hidden = kept = 0
    for line in tb.splitlines(keepends=True):
        frame = _FRAME_LINE.match(line.rstrip("\n"))
        if frame is not None:
            skipping = frame["file"].startswith(_PACKAGE_DIR)
            if skipping:
                hidden += 1
                continue
            kept += 1
            label = cell_label(frame["file"]) if cell_label is not None else None
            if label:
                line = f"  {label}, line {frame['line']}{frame['rest']}\n"
        elif skipping and line.startswith("    "):
            continue  # the hidden frame's source line and its ^^^ markers
        else:
            skipping = False
        out.append(line)
    if hidden and not kept:
        return tb, 0
    return "".join(out), hidden
