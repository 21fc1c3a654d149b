"""nbtasks: background tasks for notebooks, with live progress and a persistent store.

>>> import nbtasks
>>> @nbtasks.task
... def add(x, y):
...     return x + y
>>> add.delay(1, 2).get()
3
"""

from __future__ import annotations

import atexit
from typing import Any

from . import _errors
from ._app import App, configure, default_app, task
from ._canvas import Signature, chain, chord, group
from ._context import Context, current
from ._errors import (
    MaxRetriesExceededError,
    NbtasksError,
    RemoteTraceback,
    ResultNotReady,
    Retry,
    SoftTimeLimitExceeded,
    StoreError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskInterrupted,
    TaskTimeout,
    UnknownTaskId,
    UntrustedValue,
    WorkerLost,
)
from ._model import Progress, Request, TaskStatus
from ._result import AsyncResult, GroupResult, TaskResult
from ._task import Task
from .store import flush_all as _flush_all

__version__ = "0.1.0"

atexit.register(_flush_all)

# Errors are recorded by class path: make it the public one (``nbtasks.TaskTimeout``).
for _cls in vars(_errors).values():
    if (
        isinstance(_cls, type)
        and issubclass(_cls, Exception)
        and _cls.__module__ == _errors.__name__
    ):
        _cls.__module__ = "nbtasks"
del _cls


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbtasks``: the ``%%task`` and ``%tasks`` magics (IPython loads lazily)."""
    from ._magics import load_ipython_extension as load

    load(ipython)


__all__ = [
    "App",
    "AsyncResult",
    "Context",
    "GroupResult",
    "MaxRetriesExceededError",
    "NbtasksError",
    "Progress",
    "RemoteTraceback",
    "Request",
    "ResultNotReady",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "StoreError",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskInterrupted",
    "TaskResult",
    "TaskStatus",
    "TaskTimeout",
    "UnknownTaskId",
    "UntrustedValue",
    "WorkerLost",
    "chain",
    "chord",
    "configure",
    "current",
    "default_app",
    "group",
    "load_ipython_extension",
    "task",
]
