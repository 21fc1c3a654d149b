"""What a view renders: frozen ``Snapshot``s read from a handle or a store summary row.

Views only render snapshots (DESIGN principle 8): everything else in ``views`` takes a
``Snapshot`` (or a list of them for a group), never a handle. Statuses are kept as their names
(``str``): a listing may hold a ``DAMAGED`` row, which no ``TaskStatus`` names.
"""

from __future__ import annotations

import copy
import datetime as _dt
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import StoreError, UntrustedValue
from .._model import FINISHED, TaskStatus
from .._text import short_id

__all__ = [
    "STATUSES",
    "TERMINAL",
    "UNFINISHED",
    "Snapshot",
    "group_counts",
    "group_status",
    "is_group",
    "snapshot",
    "summary_snapshot",
    "value_text",
]

STATUSES = tuple(s.value for s in TaskStatus)
TERMINAL = frozenset(s.value for s in FINISHED)
UNFINISHED = tuple(s for s in STATUSES if s not in TERMINAL)
VALUE_CHARS = 80  # of a successful task's value repr, in its widget
_VALUE_REPR = reprlib.Repr()  # Python 3.11's takes no arguments
_VALUE_REPR.maxstring = _VALUE_REPR.maxother = VALUE_CHARS
_VALUE_REPR.maxlevel = 2


@dataclass(frozen=True)
class Snapshot:
    """What a view renders of one task: plain data, read once from a TaskResult."""

    id: str
    name: str
    status: str
    enqueued_at: _dt.datetime | None = None
    started_at: _dt.datetime | None = None
    finished_at: _dt.datetime | None = None
    current: float | None = None
    total: float | None = None
    fraction: float | None = None
    message: str | None = None
    rate: float | None = None
    eta: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    output: str = ""
    errors: tuple[tuple[str, str], ...] = ()
    attempts: int = 0
    state: str | None = None
    reason: str | None = None  # why it was cancelled or interrupted
    cached: bool = False  # a cache hit: an earlier run's result, reused (SPEC 6)
    messages: tuple[str, ...] = ()  # each error's message (str(exc)), beside ``errors``
    value: str | None = None  # a short repr of a SUCCESSFUL task's value (``value_text``)
    usage: Mapping[str, Any] | None = None  # the last attempt's CPU and peak memory (SPEC 4)
    displayed: tuple[Mapping[str, Any], ...] = ()  # the kept bundles it displayed (SPEC 4)
    bars: tuple[tuple[str, float, float | None], ...] = ()  # open inner tqdm bars (sub-bars)
    displayed_total: int = 0  # bundles displayed in all (the kept ones are the last)
    displayed_dropped: int = 0  # left out by the bound

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def short_id(self) -> str:
        return short_id(self.id)


def _status_name(value: Any) -> str:
    # TaskStatus is a StrEnum: str() is its name. A handle always has a status; READY is what
    # a view shows for one that has none yet.
    return TaskStatus.READY if value is None else str(value)


def _to_datetime(value: Any) -> _dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(float(value), tz=_dt.UTC)
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)
    return None


def _num(value: Any) -> float | None:
    """A finite float, or None: a view must not fail on a NaN a task reported."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _progress_fields(progress: Any) -> dict[str, Any]:
    """The progress fields of a Snapshot from a ``Progress`` or the store's JSON list."""
    if progress is None:
        return {}
    if isinstance(progress, list | tuple):  # a summary row: [current, total, message, rate]
        got = dict(zip(("current", "total", "message", "rate"), progress, strict=False))
    else:
        names = ("current", "total", "message", "rate", "fraction", "eta")
        got = {name: getattr(progress, name, None) for name in names}
    current, total = _num(got.get("current")), _num(got.get("total"))
    fraction = _num(got.get("fraction"))
    if fraction is None and current is not None and total:
        fraction = current / total
    if fraction is not None:
        fraction = min(max(fraction, 0.0), 1.0)
    message = got.get("message")
    rate, eta = _num(got.get("rate")), _num(got.get("eta"))
    if eta is None and rate and total is not None and current is not None:
        eta = max(0.0, (total - current) / rate)
    return {
        "current": current,
        "total": total,
        "fraction": fraction,
        "message": None if message is None else str(message),
        "rate": rate,
        "eta": eta,
    }


def snapshot(obj: Any) -> Snapshot:
    """Read a TaskResult's fields (as they are now: no refresh) into a Snapshot."""
    errors = tuple(
        (
            str(getattr(err, "exception_class_path", "") or ""),
            str(getattr(err, "traceback", "") or ""),
        )
        for err in getattr(obj, "errors", None) or ()
    )
    messages = tuple(
        str(getattr(err, "message", "") or "") for err in getattr(obj, "errors", None) or ()
    )
    metadata = getattr(obj, "metadata", None)
    attempts = getattr(obj, "attempts", 0)
    state = getattr(obj, "state", None)
    reason = getattr(obj, "reason", None)
    displayed = getattr(obj, "displayed", None) or []
    return Snapshot(
        id=str(getattr(obj, "id", "?")),
        name=str(getattr(obj, "task_name", None) or "?"),
        status=_status_name(getattr(obj, "status", None)),
        enqueued_at=_to_datetime(getattr(obj, "enqueued_at", None)),
        started_at=_to_datetime(getattr(obj, "started_at", None)),
        finished_at=_to_datetime(getattr(obj, "finished_at", None)),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        output=str(getattr(obj, "output", None) or ""),
        errors=errors,
        messages=messages,
        attempts=attempts if isinstance(attempts, int) else 0,
        state=None if state is None else str(state),
        reason=None if reason is None else str(reason),
        cached=getattr(obj, "cached", False) is True,
        usage=_usage(getattr(obj, "usage", None)),
        displayed=tuple(displayed),
        bars=tuple(getattr(obj, "inner_bars", None) or ()),
        displayed_total=getattr(displayed, "total", len(displayed)),
        displayed_dropped=getattr(displayed, "dropped", 0),
        **_progress_fields(getattr(obj, "progress", None)),
    )


def value_text(obj: Any) -> str:
    """A short repr (at most ``VALUE_CHARS``) of a SUCCESSFUL task's return value, for its
    widget.

    Read once per view: from memory for this kernel's tasks, else decoded from the store
    through the handle, which verifies the value's signature first (an unsigned or forged value
    is never unpickled, SPEC 10). It reads through a copy of ``obj`` so that the view does not
    keep a second reference to a big value.
    """
    handle = copy.copy(obj)
    try:
        value = handle.result
    except UntrustedValue:
        return "(value not shown: its signature does not verify)"
    except StoreError as exc:
        if "could not be pickled" in str(exc):  # a {"u": ...} record: only its process had it
            return "(value not picklable)"
        return "(value unavailable)"
    except Exception as exc:  # its class is gone, a damaged entry: the widget says so
        return f"(value unavailable: {type(exc).__name__})"
    try:
        text = _VALUE_REPR.repr(value)
    except Exception as exc:
        text = f"(repr failed: {type(exc).__name__})"
    text = " ".join(text.split())  # one line
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _usage(value: Any) -> Mapping[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


def summary_snapshot(row: Mapping[str, Any]) -> Snapshot:
    """A Snapshot from one row of ``Store.summaries()`` (nothing loaded or unpickled)."""
    return Snapshot(
        id=str(row.get("id", "?")),
        name=str(row.get("task_name") or "?"),
        status=_status_name(row.get("status")),
        enqueued_at=_to_datetime(row.get("enqueued_at")),
        started_at=_to_datetime(row.get("started_at")),
        finished_at=_to_datetime(row.get("finished_at")),
        usage=_usage(row.get("usage")),
        **_progress_fields(row.get("progress")),
    )


def is_group(obj: Any) -> bool:
    """A GroupResult (or anything shaped like one): shown as one aggregate view."""
    return hasattr(obj, "results") and hasattr(obj, "completed_count")


# ----------------------------------------------------------------------------- groups
def group_counts(snaps: Sequence[Snapshot]) -> tuple[dict[str, int], int, float]:
    """Members per status (every status, in ``STATUSES`` order), how many, and the fraction
    done (a finished member counts 1, a running one its progress)."""
    counts = {s: 0 for s in STATUSES}
    progress = 0.0
    for snap in snaps:
        counts[snap.status] = counts.get(snap.status, 0) + 1
        if snap.is_finished:
            progress += 1.0
        elif snap.fraction is not None:
            progress += snap.fraction
    total = len(snaps)
    return counts, total, (progress / total if total else 1.0)


def reused_count(snaps: Sequence[Snapshot]) -> int:
    """How many members are cache hits (reused, not run for this group)."""
    return sum(1 for snap in snaps if snap.cached)


def group_status(counts: Mapping[str, int], total: int) -> str:
    """RUNNING while anything runs (or some ran and some wait), else the worst outcome."""
    running, ready = counts.get(TaskStatus.RUNNING, 0), counts.get(TaskStatus.READY, 0)
    if running or (ready and ready != total):
        return TaskStatus.RUNNING
    if ready:
        return TaskStatus.READY
    for status in (TaskStatus.FAILED, TaskStatus.INTERRUPTED, TaskStatus.CANCELLED):
        if counts.get(status):
            return status
    return TaskStatus.SUCCESSFUL
