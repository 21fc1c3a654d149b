"""The options of a task and of a submit: their names, and their validation.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a bad value,
naming the argument (SPEC 3).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ._model import check_executor, check_text, to_timestamp

#: The options a submit takes from the task unless the call gives them.
INHERITED = (
    "executor",
    "retries",
    "retry_backoff",
    "retry_on",
    "timeout",
    "soft_timeout",
    "priority",
    "cache",
    "cache_ttl",
    "cache_ignore",
    "detach",
)
#: The options a task takes at declaration and (all of them) per call.
#: ``cache_mmap`` (how a handle reads the task's value: ``TaskResult.return_value``) is the
#: task's only; per call, ``get(mmap=True)`` says it.
TASK_OPTIONS = frozenset(
    {*INHERITED, "name", "bind", "max_retries", "expires", "shadow_name", "cache_mmap"}
)
CALL_OPTIONS = frozenset(
    TASK_OPTIONS - {"name", "bind", "cache_mmap"}
    | {"countdown", "eta", "link", "link_error", "metadata", "task_id"}
)


# --------------------------------------------------------------------------- validation


_MAX_SECONDS = 100 * 365.25 * 86400  # longer countdowns overflow datetimes and thread waits


def seconds(value: Any, argument: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument} must be a number of seconds, got {value!r}")
    secs = float(value)
    if not math.isfinite(secs):
        raise ValueError(f"{argument}={secs!r} must be a finite number of seconds")
    if secs < 0 or (positive and secs == 0):
        raise ValueError(f"{argument}={secs!r} must be {'> 0' if positive else '>= 0'} seconds")
    if secs > _MAX_SECONDS:
        raise ValueError(f"{argument}={secs!r} is more than 100 years; give a shorter time")
    return secs


def integer(value: Any, argument: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{argument}={value!r} must be >= {minimum}")
    return value


def _bool(value: Any, argument: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{argument} must be True or False, got {value!r}")
    return value


def _exc_classes(value: Any, argument: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{argument} must be exception classes, got {item!r}")
    return tuple(items)


def names(value: Any, argument: str) -> tuple[str, ...]:
    """Argument names (``cache_ignore``): one str or a tuple/list of them -> a tuple. Whether
    each names a parameter is the task's to check (it knows its signature)."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, tuple | list | frozenset | set) or not all(
        isinstance(item, str) and item for item in items
    ):
        raise TypeError(
            f"{argument} must be argument names (a str or a tuple of str), got {value!r}"
        )
    return tuple(sorted(set(items)))


def when(value: Any, argument: str, now: float) -> float:
    """``expires``: seconds from now or an aware datetime -> an epoch time."""
    if isinstance(value, datetime):
        return to_timestamp(value, argument)
    if isinstance(value, timedelta):
        return now + seconds(value.total_seconds(), argument)
    return now + seconds(value, argument)


def check_name(value: Any) -> str:
    """A task name: a non-empty str (TypeError) that UTF-8 can hold (ValueError: it is a column
    of the store, and SQLite takes UTF-8 only)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"name must be a non-empty str, got {value!r}")
    return check_text(value, "name")


def check_task_options(options: Mapping[str, Any], where: str = "task") -> dict[str, Any]:
    """Validate declaration options; returns them normalised (``max_retries`` -> ``retries``)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in TASK_OPTIONS:
            raise TypeError(
                f"{where}() got an unknown option {key!r}; the options are "
                f"{', '.join(sorted(TASK_OPTIONS))}"
            )
        if value is None and key not in ("name", "timeout", "soft_timeout", "cache_ttl"):
            continue
        if key == "name":
            if value is not None:
                check_name(value)
        elif key in ("bind", "cache", "detach", "cache_mmap"):
            _bool(value, key)
        elif key == "executor":
            check_executor(value)
        elif key in ("retries", "max_retries"):
            key = "retries"
            integer(value, "retries", minimum=0)
        elif key == "retry_backoff":
            value = seconds(value, key)
        elif key == "retry_on":
            value = _exc_classes(value, key)
        elif key in ("timeout", "soft_timeout", "cache_ttl"):
            if value is not None:
                value = seconds(value, key, positive=key != "cache_ttl")
        elif key == "priority":
            integer(value, key)
        elif key == "expires":
            if not isinstance(value, datetime | timedelta):
                seconds(value, key)
        elif key == "cache_ignore":
            value = names(value, key)
        elif key == "shadow_name" and not isinstance(value, str):
            raise TypeError(f"shadow_name must be a str, got {value!r}")
        out[key] = value
    return out
