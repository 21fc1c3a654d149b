"""Pure data: statuses and their transition table, requests, errors, progress, the clock."""

from __future__ import annotations

import contextvars
import enum
import importlib
import math
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from ._errors import NbtasksError


class _Missing:
    """The sentinel for "no value" where ``None`` is a value (a task may return None)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class TaskStatus(enum.StrEnum):
    """The status of a task; the values are the names (django-tasks' four plus two)."""

    READY = "READY"
    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED: Final = frozenset(
    {TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED}
)

#: The one table of legal transitions (DESIGN principle 2). RUNNING -> READY is a retry.
TRANSITIONS: Final[Mapping[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.READY: frozenset(
        {TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED, TaskStatus.FAILED}
    ),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.READY,
            TaskStatus.SUCCESSFUL,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.INTERRUPTED,
        }
    ),
    TaskStatus.SUCCESSFUL: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.INTERRUPTED: frozenset(),
}


class IllegalTransition(NbtasksError):
    """An internal error: a status change the transition table forbids."""


def check_transition(task_id: str, old: TaskStatus, new: TaskStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(
            f"internal error: task {task_id} cannot go from {old.value} to {new.value}; "
            "please report this with the traceback"
        )


# --------------------------------------------------------------------------- JSON metadata

_JSON_SCALARS: Final = (str, int, float, bool, type(None))


def check_json(value: Any, where: str) -> None:
    """Raise TypeError naming ``where`` unless ``value`` is JSON (a tuple becomes a list)."""
    if isinstance(value, _JSON_SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"{where} = {value!r} is not JSON: use a finite number or a str")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has the key {k!r}: JSON object keys must be strings")
            check_json(item, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} = {value!r} ({type(value).__name__}) cannot be stored as JSON; "
        "use str, int, float, bool, None, or lists and dicts of them"
    )


class Metadata(dict[str, Any]):
    """A dict that refuses values JSON cannot hold, naming the key (Mognet's metadata)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if args or kwargs:
            self.update(*args, **kwargs)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"metadata key {key!r} must be a str")
        check_json(value, f"metadata[{key!r}]")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    @classmethod
    def trusted(cls, values: Mapping[str, Any]) -> Metadata:
        """A copy of values already checked (no second check on the submit path)."""
        m = cls()
        dict.update(m, values)
        return m

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


def as_metadata(value: Any, argument: str = "metadata") -> Metadata:
    if value is None:
        return Metadata()
    if not isinstance(value, Mapping):
        raise TypeError(f"{argument} must be a dict of JSON values, got {type(value).__name__}")
    try:
        return Metadata(value)
    except TypeError as exc:
        raise TypeError(f"{argument}: {exc}") from None


# --------------------------------------------------------------------------- options

#: The executors a task may name (``aio`` is internal: ``async def`` tasks on an event loop).
EXECUTOR_NAMES: Final = ("thread", "inline", "process", "dask")


def check_executor(name: Any, argument: str = "executor") -> str:
    if name not in EXECUTOR_NAMES:
        valid = ", ".join(repr(n) for n in EXECUTOR_NAMES)
        raise ValueError(f"{argument}={name!r} is not an executor; use one of {valid}")
    return str(name)


@dataclass
class Options:
    """A task's options resolved for one submit (task defaults overridden per call).
    Never changed after it is made: one instance may serve many submits of a task."""

    executor: str = "thread"
    retries: int = 0
    retry_backoff: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    soft_timeout: float | None = None
    priority: int = 0
    cache: bool = False
    cache_ttl: float | None = None
    detach: bool = False
    expires: float | None = None  # epoch seconds
    eta: float | None = None  # epoch seconds
    link: list[Any] = field(default_factory=list)
    link_error: list[Any] = field(default_factory=list)


#: The running task's Context in this thread or coroutine (``nbtasks.current()``).
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("nbtasks_context", default=None)


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    """What was asked: a task name with its arguments and options (Mognet's Request).

    Inside a task, ``ctx.request`` is the running attempt's Request. ``metadata`` (alias
    ``meta``) is merged into the stored metadata at ``update_state`` and at the end.
    """

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    id: str | None = None
    metadata: Metadata = None  # type: ignore[assignment]
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    priority: int = 0
    parent_id: str | None = None
    worker_id: str | None = None
    options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if type(self.metadata) is not Metadata:
            self.metadata = as_metadata(self.metadata)

    @property
    def meta(self) -> Metadata:
        return self.metadata

    @meta.setter
    def meta(self, value: Mapping[str, Any]) -> None:
        # Celery's `request.meta = {...}`: adds its keys; keys set with set_metadata stay.
        self.metadata.update(as_metadata(value, "request.meta"))

    def get(self, key: str, default: Any = None) -> Any:
        """Celery's ``Context.get``."""
        return getattr(self, key, default)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class TaskError:
    """One failed attempt (django-tasks' TaskError)."""

    exception_class_path: str
    traceback: str
    message: str = ""

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
    def from_json(cls, data: Mapping[str, str]) -> TaskError:
        return cls(data["cls"], data.get("tb", ""), data.get("msg", ""))


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    """A task's reported progress: ``current`` of ``total``, with a rate and ETA in seconds."""

    current: float
    total: float | None = None
    message: str | None = None
    rate: float | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.current / self.total))

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or None."""
        if self.total is None or not self.rate:
            return None
        return max(0.0, (self.total - self.current) / self.rate)

    def to_json(self) -> list[Any]:
        return [self.current, self.total, self.message, self.rate]

    @classmethod
    def from_json(cls, data: list[Any] | None) -> Progress | None:
        if data is None:
            return None
        return cls(*data)

    def __str__(self) -> str:
        text = f"{self.current:g}" if self.total is None else f"{self.current:g}/{self.total:g}"
        return f"{text} {self.message}" if self.message else text


def aggregate_progress(items: Iterable[Progress | None], finished: int, count: int) -> Progress:
    """A group's progress: the sum of its members' fractions (a finished member counts 1)."""
    done = 0.0
    for p in items:
        if p is not None and p.fraction is not None:
            done += p.fraction
    return Progress(current=min(float(count), done + finished), total=float(count))


# --------------------------------------------------------------------------- time


class Clock(Protocol):
    """Injected time (DESIGN principle 15): wall time for records, monotonic for intervals."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)
    sleep = staticmethod(_time.sleep)


SYSTEM_CLOCK: Final = SystemClock()


def to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_timestamp(value: datetime, argument: str) -> float:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{argument}={value!r} is a naive datetime; give it a timezone, "
            "e.g. datetime.now(timezone.utc) + timedelta(seconds=10)"
        )
    return value.timestamp()
