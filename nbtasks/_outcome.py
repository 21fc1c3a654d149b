"""What a finished record means to whoever asks for its result: the exception the task raised,
restored, or the error that says why there is no value (SPEC §5, ``get()`` and
``return_value``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import (
    RemoteTraceback,
    ResultNotReady,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskInterrupted,
)
from ._model import TaskStatus

if TYPE_CHECKING:
    from ._model import TaskRecord
    from ._ports import Results


def failed_error(label: str, rec: TaskRecord) -> TaskFailed:
    """A failed task's ``TaskFailed`` (``label``: "task NAME[ID]"), from its last error."""
    errors = rec.get("errors") or []
    err = TaskError.from_json(errors[-1]) if errors else TaskError("", "", "unknown error")
    what = f"{err.exception_class_path}: {err.message}" if errors else "unknown error"
    text = f"{label} failed: {what}"
    return TaskFailed(text, err.exception_class_path, err.traceback, err.message)


def not_returned_error(label: str, rec: TaskRecord) -> Exception:
    """ResultNotReady, TaskCancelled or TaskInterrupted for a task that did not finish with a
    value or an exception."""
    status, reason = rec["status"], rec.get("reason")
    if status == TaskStatus.CANCELLED:
        return TaskCancelled(f"{label} was cancelled: {reason or 'cancelled'}")
    if status == TaskStatus.INTERRUPTED:
        return TaskInterrupted(
            f"{label} was interrupted: {reason or 'its process ended'}; submit it again"
        )
    return ResultNotReady(f"{label} is {status}; wait() for it or check is_finished")


def restored_exception(app: Results, task_id: str, rec: TaskRecord) -> BaseException | None:
    """What the task raised, restored (a new object each time), with its own traceback text
    chained as ``__cause__`` (as ``concurrent.futures.process`` does); None where it cannot be
    restored (not pickled, class not importable, signature not trusted)."""
    enc = rec.get("exc")
    if not enc:
        return None
    try:
        exc = app.decode(enc, f"the exception of task {task_id}")
    except Exception:
        return None
    if not isinstance(exc, BaseException):
        return None
    errors = rec.get("errors") or []
    if errors and errors[-1].get("tb"):
        exc.__cause__ = RemoteTraceback(errors[-1]["tb"])
    return exc
