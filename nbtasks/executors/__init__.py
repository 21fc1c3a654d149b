"""Executors decide where an attempt runs; everything else lives in ``_attempt``.

The protocol is small on purpose, so that process and Dask executors slot in without changing
the core: ``submit(job)`` runs a job when a worker is free (higher priority first, equal
priorities in submit order), ``cancel_running(job)`` stops a running one if the executor can
(processes are terminated; threads cannot be, they stop at their next ``progress()``), and
``shutdown()`` stops the workers and returns the jobs that never started.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._model import check_executor

if TYPE_CHECKING:
    from .._attempt import Job, Runtime


class Executor(Protocol):
    name: str

    def submit(self, job: Job) -> None: ...

    def cancel_running(self, job: Job) -> bool: ...

    def timed_out(self, job: Job) -> None: ...

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> list[Job]: ...


#: name -> "module:class", imported on first use (the process and Dask ones are heavy).
EXECUTORS: Final[dict[str, str]] = {
    "thread": "nbtasks.executors.thread:ThreadExecutor",
    "inline": "nbtasks.executors.inline:InlineExecutor",
    "aio": "nbtasks.executors.aio:AsyncioExecutor",
    "process": "nbtasks.executors.process.pool:ProcessExecutor",
    "dask": "nbtasks.executors.dask.executor:DaskExecutor",
}


check_name = check_executor  # validation lives with the option types, in _model


def create(name: str, runtime: Runtime, **settings: Any) -> Executor:
    module_name, _, cls_name = EXECUTORS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("nbtasks"):
            raise ImportError(
                f"the {name!r} executor needs {exc.name}: pip install 'nbtasks[{name}]'"
            ) from exc
        raise NotImplementedError(
            f"the {name!r} executor is not available in this version"
        ) from exc
    executor: Executor = getattr(module, cls_name)(runtime, **settings)
    return executor
