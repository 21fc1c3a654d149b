"""Pure data: statuses and their transition table, requests, errors, progress, the clock."""

from __future__ import annotations

import contextvars
import enum
import json
import math
import threading
import time as _time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, Required, TypedDict

from ._errors import NbtasksError

if TYPE_CHECKING:
    from ._context import Context


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


#: A listing's status filter: one status, several, or None (any).
Statuses = str | Iterable[str] | None
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


class TaskRecord(TypedDict, total=False):
    """A task's record: the JSON object the store keeps for it (``t:<id>``) and the owner's
    live copy in memory. Only ``id``, ``task_name`` and ``status`` are always there; a field
    that is None, empty or zero is left out (readers use ``.get``), which keeps the record
    cheap to encode on every commit. Its status changes only through the store
    (``Store.change``/``cancel``/``interrupt``), which checks each one against ``TRANSITIONS``."""

    # fixed at submit
    id: Required[str]
    task_name: Required[str]
    status: Required[str]  # a TaskStatus value
    enqueued_at: float | None  # timestamps: seconds since the epoch (UTC)
    args_repr: str  # a short repr for listings (never unpickled)
    args: dict[str, Any]  # encoded by the codec: signed pickle, inline or in a value file
    kwargs: dict[str, Any]
    backend: str  # the App's name
    owner: str  # host:pid:start time of the process that owns the task
    executor: str
    priority: int
    eta: float
    expires: float
    max_retries: int
    chunk: bool  # a ``chunks`` task: its one argument is a list of argument tuples
    group_id: str
    parent_id: str  # the task that submitted this one, or the previous link of a chain
    root_id: str  # the first task of that line (left out when it is the task itself)
    parent_group: str  # a chord callback: the header group it waits for
    cache_key: str
    # while it runs
    started_at: float | None
    last_attempted_at: float
    worker_ids: list[str]  # one per attempt
    retries: int
    state: str  # update_state's state, then the final status's name
    result: Any  # update_state's meta (JSON) while running
    progress: list[Any] | None  # Progress.to_json()
    output: str  # the bounded tail of what it printed or logged
    output_total: int  # characters written in all (the tail may hold fewer)
    displayed: list[dict[str, Any]]  # the newest MIME bundles it displayed (SPEC §4)
    bars: list[list[Any]]  # its open inner tqdm bars: [desc, n, total or None], outermost first
    displayed_sigs: list[str]  # each kept bundle's HMAC (Signer.bundle_digest)
    displayed_total: int  # bundles displayed in all
    displayed_dropped: int  # bundles the bound left out (the oldest)
    metadata: dict[str, Any]
    heartbeat: float  # a detached worker's last sign of life
    # at the end
    finished_at: float | None
    errors: list[dict[str, str]]  # TaskError.to_json(), one per failed attempt
    hook_errors: list[dict[str, str]]
    reason: str  # why it was CANCELLED or INTERRUPTED
    rv: dict[str, Any]  # the return value, encoded
    exc: dict[str, Any]  # the exception, encoded
    usage: dict[str, Any] | None  # the last attempt's {"cpu_time": s, "max_rss": bytes|None}
    attempt_times: list[list[float]]  # [start, end] of each ended attempt (worker_ids' order)
    # only in a listing's summary of a row that is not a record nbtasks wrote: why
    damaged: str


def check_transition(task_id: str, old: TaskStatus, new: TaskStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(
            f"internal error: task {task_id} cannot go from {old.value} to {new.value}; "
            "please report this with the traceback"
        )


# --------------------------------------------------------------------------- text and JSON

#: How deep a JSON value (metadata, ``update_state`` meta) may nest: containers inside
#: containers. SQLite's JSON functions stop at 1000 levels and a record wraps a value in a few
#: more; no sane metadata comes near 100, and a value past it is refused rather than costing a
#: RecursionError somewhere later (the encoder, a reader).
MAX_DEPTH: Final = 100


def _utf8_error(text: str) -> str | None:
    """None if ``text`` can be encoded as UTF-8, else what is wrong with it. ``isascii()`` is
    O(1) in CPython (a flag of the string), so the common case costs next to nothing."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"cannot be encoded as UTF-8 (it holds a lone surrogate, {text[exc.start]!r}, at "
            f"index {exc.start}), and the store keeps text as UTF-8; replace it, e.g. "
            "text.encode('utf-8', 'replace').decode()"
        )
    return None


# Text that nbtasks stores goes into SQLite columns and keys (ids, task names) or into JSON
# records that Jupyter, terminals and SQLite's JSON functions read as UTF-8. A lone surrogate
# ("\ud800") is a Python str but has no UTF-8 form: SQLite refuses it as a parameter
# (UnicodeEncodeError deep in the store), and in a record, escaped as JSON allows, it would
# break whoever prints or sends it later (the widget's comm message, ``nbtasks show``). So such
# text is refused where it comes in, before anything is stored: ids, task names, a state or a
# progress message with a ValueError (a bad value of a str argument, SPEC 3); metadata keys and
# strings inside metadata or an ``update_state`` meta with a TypeError, as everything else JSON
# cannot hold there (SPEC 4; RFC 8259 8.2 leaves lone surrogates "unpredictable", and I-JSON,
# RFC 7493, forbids them).


def check_text(value: str, argument: str, call: str | None = None) -> str:
    """Raise ValueError naming ``argument`` (of ``call``) unless the str ``value`` can be
    encoded as UTF-8."""
    why = _utf8_error(value)
    if why is not None:
        named = f"{argument}={_short(value)}"
        raise ValueError(f"{f'{call}({named})' if call else named} {why}")
    return value


def check_id(value: Any, argument: str, call: str | None = None) -> str:
    """A task or group id given by the user: a str (TypeError) that UTF-8 can hold (ValueError)."""
    if not isinstance(value, str):
        named = f"{call}({argument}=...)" if call else argument
        raise TypeError(f"{named} must be a str, got {_short(value)}")
    return check_text(value, argument, call)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_JSON_SCALARS: Final = (str, int, float, bool, type(None))
_LIST: Final = 1
_DICT: Final = 2


def _json_kind(value: Any) -> int | str:
    """0 for a scalar JSON holds, _LIST or _DICT for a container, else what is wrong (text)."""
    if isinstance(value, _JSON_SCALARS):
        if isinstance(value, str):
            why = _utf8_error(value)
            return 0 if why is None else f"= {_short(value)} {why}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"= {value!r} is not JSON: use a finite number or a str"
        return 0
    if isinstance(value, list | tuple):
        return _LIST
    if isinstance(value, dict):
        return _DICT
    return (
        f"= {_short(value)} ({type(value).__name__}) cannot be stored as JSON; "
        "use str, int, float, bool, None, or lists and dicts of them"
    )


def _path(where: str, keys: list[Any]) -> str:
    if len(keys) > 6:  # a value nested 100 deep: the start and the end of its path
        return where + "".join(f"[{k!r}]" for k in keys[:3]) + "[...]" + f"[{keys[-1]!r}]"
    return where + "".join(f"[{k!r}]" for k in keys)


def check_json(value: Any, where: str) -> None:
    """Raise TypeError naming ``where`` (and the path inside the value) unless ``value`` is JSON
    (a tuple becomes a list): no cycle, at most MAX_DEPTH containers deep, str keys, finite
    numbers, text UTF-8 can hold. Walked with a stack of its own, never by recursion: a value
    nested 10,000 deep or one that contains itself gets this TypeError, not a RecursionError."""
    kind = _json_kind(value)
    if kind == 0:
        return
    if type(kind) is str:
        raise TypeError(f"{where} {kind}")
    # The containers from ``value`` down to the one being walked, with the key of each in its
    # parent: a container met again on this path is a cycle (one reached twice by two paths,
    # {"a": x, "b": x}, is fine: JSON holds two copies).
    stack: list[tuple[Iterator[tuple[Any, Any]], bool]] = [_items(value, kind)]
    path: list[Any] = [value]
    keys: list[Any] = []
    while stack:
        items, is_dict = stack[-1]
        for key, item in items:
            if is_dict:
                if not isinstance(key, str):
                    raise TypeError(
                        f"{_path(where, keys)} has the key {_short(key)}: "
                        "JSON object keys must be strings"
                    )
                why = _utf8_error(key)
                if why is not None:
                    raise TypeError(f"{_path(where, keys)} has the key {_short(key)}, which {why}")
            kind = _json_kind(item)
            if kind == 0:
                continue
            if type(kind) is str:
                raise TypeError(f"{_path(where, [*keys, key])} {kind}")
            for level, outer in enumerate(path):
                if outer is item:
                    raise TypeError(
                        f"{_path(where, [*keys, key])} is {_path(where, keys[:level])} itself: "
                        "the value contains itself (a cycle), which JSON cannot hold; store a "
                        "copy without the reference back"
                    )
            if len(path) >= MAX_DEPTH:
                raise TypeError(
                    f"{where} is nested deeper than {MAX_DEPTH} levels (lists and dicts inside "
                    f"each other, at {_path(where, [*keys, key])}); metadata and state hold at "
                    f"most {MAX_DEPTH}: flatten it, or store it as a str (json.dumps)"
                )
            stack.append(_items(item, kind))
            path.append(item)
            keys.append(key)
            break
        else:
            stack.pop()
            path.pop()
            if keys:
                keys.pop()


def _items(value: Any, kind: int | str) -> tuple[Iterator[tuple[Any, Any]], bool]:
    if kind == _DICT:
        return iter(value.items()), True
    return enumerate(value), False


def as_json(value: Any) -> Any:
    """A checked JSON value as it reads back from the store (a tuple becomes a list), so that
    the process that set it reads what every other one does (SPEC 4)."""
    if isinstance(value, _JSON_SCALARS):
        return value
    return json.loads(json.dumps(value))


class Metadata(dict[str, Any]):
    """A dict that refuses values JSON cannot hold, naming the key (Mognet's metadata). A value
    is stored as JSON reads it back: ``m["k"] = (1, 2)`` reads ``[1, 2]`` at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if args or kwargs:
            self.update(*args, **kwargs)

    def __setitem__(self, key: str, value: Any) -> None:
        check_metadata_key(key, "metadata")
        check_json(value, f"metadata[{key!r}]")
        super().__setitem__(key, as_json(value))

    def update(self, *args: Any, **kwargs: Any) -> None:
        """All or nothing: every key and value is checked before any is set."""
        values = dict(*args, **kwargs)
        for k, v in values.items():
            check_metadata_key(k, "metadata")
            check_json(v, f"metadata[{k!r}]")
        super().update({k: as_json(v) for k, v in values.items()})

    def __ior__(self, other: Any) -> Metadata:  # type: ignore[override,misc]
        self.update(other)  # dict's |= would skip the checks
        return self

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


def check_metadata_key(key: Any, argument: str) -> None:
    """A metadata key is a str (JSON object keys are) that UTF-8 can hold: TypeError otherwise."""
    if not isinstance(key, str):
        raise TypeError(f"{argument} key {_short(key)} must be a str")
    why = _utf8_error(key)
    if why is not None:
        raise TypeError(f"{argument} key {_short(key)} {why}")


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
    cache_ignore: tuple[str, ...] = ()  # argument names left out of the cache key
    cache_mmap: bool = False  # a handle maps the value's arrays (TaskResult.return_value)
    detach: bool = False
    expires: float | None = None  # epoch seconds
    eta: float | None = None  # epoch seconds
    link: list[Any] = field(default_factory=list)
    link_error: list[Any] = field(default_factory=list)


#: The running task's Context in this thread or coroutine (``nbtasks.current()``).
CURRENT: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "nbtasks_context", default=None
)


# --------------------------------------------------------------------------- requests


class RetryCall(NamedTuple):
    """What ``ctx.retry()`` was called with, as given (``_retry.build_retry`` checks it)."""

    exc: BaseException | None
    countdown: float | None
    eta: datetime | None
    max_retries: int | None
    args: Sequence[Any] | None
    kwargs: Mapping[str, Any] | None


@dataclass
class Request:
    """What was asked: a task name with its arguments and options (Mognet's Request).

    Inside a task, ``ctx.request`` is the running attempt's Request. ``metadata`` (alias
    ``meta``) is merged into the stored metadata at ``update_state`` and at the end.
    ``parent_id``: the task that submitted this one (or the previous link of a chain);
    ``root_id``: the first task of that line (this task's own id if it has no parent).
    """

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    id: str | None = None
    metadata: Metadata = field(default_factory=Metadata)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    priority: int = 0
    parent_id: str | None = None
    root_id: str | None = None
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

    @classmethod
    def from_record(
        cls, rec: Mapping[str, Any], args: Iterable[Any], kwargs: Mapping[str, Any]
    ) -> Request:
        """The Request of a stored task (or of a record's fields shipped to a worker), with its
        arguments decoded by the caller. Fields a record leaves out read as their defaults."""
        return cls(
            task_name=rec["task_name"],
            args=list(args),
            kwargs=dict(kwargs),
            id=rec["id"],
            metadata=Metadata.trusted(rec.get("metadata") or {}),  # checked when stored
            retries=rec.get("retries") or 0,
            priority=rec.get("priority") or 0,
            eta=to_datetime(rec.get("eta")),
            expires=to_datetime(rec.get("expires")),
            parent_id=rec.get("parent_id"),
            root_id=rec.get("root_id") or rec["id"],
        )


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
    """Injected time (DESIGN principle 15): wall time for records and ETAs, monotonic for
    intervals, and the one way the runtime's supervisor waits, so that a test's fake clock
    can wake it when the test moves time on (tests/helpers.py: FakeClock)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait on ``condition`` (held by the caller) until it is notified or ``monotonic()``
        reaches ``deadline`` (None: until notified)."""
        ...


class SystemClock:
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    @staticmethod
    def wait(condition: threading.Condition, deadline: float | None) -> None:
        if deadline is None:
            condition.wait()
        else:
            # An ETA may be centuries away; a thread wait cannot be that long.
            condition.wait(min(deadline - _time.monotonic(), threading.TIMEOUT_MAX / 2))


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
