"""Executors decide where an attempt runs; everything else lives in ``_attempt``.

The protocol is small on purpose, so that process and Dask executors slot in without changing
the core: ``submit(job)`` runs a job when a worker is free (higher priority first, equal
priorities in submit order), ``cancel_running(job)`` stops a running one if the executor can
(processes are terminated; threads cannot be, they stop at their next ``progress()``), and
``shutdown()`` stops the workers and returns the jobs that never started.
"""

from __future__ import annotations

import importlib
import os
import sys
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

#: How the process executor starts its workers (``App(process_start=...)``).
PROCESS_STARTS: Final = ("auto", "fork", "spawn")
PROCESS_START_ENV: Final = "NBTASKS_PROCESS_START"


def fork_unavailable() -> str | None:
    """Why worker processes cannot be forked here (by the zygote), or None if they can: it
    needs ``os.fork``, AF_UNIX SOCK_SEQPACKET sockets and ``socket.send_fds``, and Linux
    (CPython spawns by default on macOS: forking after system frameworks are loaded is unsafe)."""
    import socket

    needed = {
        "os.fork": hasattr(os, "fork"),
        "socket.AF_UNIX": hasattr(socket, "AF_UNIX"),
        "socket.SOCK_SEQPACKET": hasattr(socket, "SOCK_SEQPACKET"),
        "socket.send_fds": hasattr(socket, "send_fds"),
    }
    missing = [name for name, ok in needed.items() if not ok]
    if missing:
        return f"this Python has no {', '.join(missing)}"
    if not sys.platform.startswith("linux"):
        return f"forking worker processes is unsafe on {sys.platform} (system frameworks)"
    return None


def resolve_process_start(value: Any) -> str:
    """ "fork" or "spawn": what ``process_start`` (or ``$NBTASKS_PROCESS_START``) means here."""
    where = "process_start"
    if value is None:
        value = os.environ.get(PROCESS_START_ENV) or "auto"
        where = f"${PROCESS_START_ENV}"
    if value not in PROCESS_STARTS:
        raise ValueError(
            f"{where} must be one of {', '.join(map(repr, PROCESS_STARTS))}, got {value!r}"
        )
    why = fork_unavailable()
    if value == "auto":
        return "spawn" if why else "fork"
    if value == "fork" and why:
        raise ValueError(
            f"{where}='fork' is not possible here: {why}; use process_start='spawn' "
            "(or 'auto', which picks it)"
        )
    return str(value)


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
