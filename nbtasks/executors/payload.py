"""How a task travels to a worker (a process of the pool, or a Dask worker): pickled once, with
the codec's cloudpickle (notebook functions travel by value), without its App (``Task.__reduce__``
leaves the store, threads and locks behind), with its options for this submit (links stay: the
owner runs them) and, for a task defined in a notebook cell, that cell's source, so a worker's
traceback shows its lines. What cannot be pickled fails at submit, naming what it is.
"""

from __future__ import annotations

import dataclasses
import linecache
from typing import Any

from .._codec import dumps, find_unpicklable, loads
from .._model import Options


def task_payload(task: Any, options: Options) -> bytes:
    """The bytes a worker runs (``load_task``); a TypeError names what cannot be pickled."""
    if options.link or options.link_error:
        options = dataclasses.replace(options, link=[], link_error=[])
    try:
        return dumps((task, options, _cell_source(task)))
    except TypeError as exc:
        raise TypeError(_unpicklable(task, exc)) from None


def load_task(payload: bytes) -> tuple[Any, Options]:
    """In the worker: the task (without an App) and its options."""
    task, options, source = loads(payload)
    for filename, entry in source.items():
        linecache.cache.setdefault(filename, entry)
    return task, options


def _cell_source(task: Any) -> dict[str, Any]:
    """The source of a task defined in a notebook cell, which only this kernel's linecache
    holds (IPython registers each cell there): with it, a worker's traceback shows the lines."""
    fn = vars(task).get("_fn") or getattr(type(task), "run", None)
    filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
    entry = linecache.cache.get(filename) if filename else None
    if not filename or entry is None or len(entry) != 4 or entry[1] is not None:
        return {}  # a real file (the worker reads it, if it has it), or nothing known
    return {filename: entry}


def _unpicklable(task: Any, exc: Exception) -> str:
    """Name what in a task's function cannot be pickled: a global, a closure variable, a default."""
    fn = getattr(task, "_fn", None) or type(task)
    named: list[tuple[str, Any]] = []
    code = getattr(fn, "__code__", None)
    if code is not None:
        globs = getattr(fn, "__globals__", {})
        named += [(f"global {n!r}", globs[n]) for n in code.co_names if n in globs]
        cells = getattr(fn, "__closure__", None) or ()
        named += [
            (f"closure variable {n!r}", c.cell_contents)
            for n, c in zip(code.co_freevars, cells, strict=False)
            if _has_contents(c)
        ]
        named += [(f"default {i}", d) for i, d in enumerate(getattr(fn, "__defaults__", ()) or ())]
    found = find_unpicklable(named)
    detail = (
        f"its {found[0]} is a {found[1]}, which cannot be pickled ({found[2]})"
        if found is not None
        else str(exc.__cause__ or exc)
    )
    return (
        f"task {task.name} cannot run in a worker process: {detail}. A process or Dask "
        "task is pickled with cloudpickle at submit; pass what it needs as picklable arguments, or "
        "create it inside the task"
    )


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True
