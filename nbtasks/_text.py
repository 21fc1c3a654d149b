"""Text in and out for the front ends (views, ``%tasks``, the ``nbtasks`` command): one of each.

Pure functions, no I/O: durations and statuses parsed from what a user types, ids matched
from what a user copies, and durations and ids written the same way everywhere. A parser
raises ``ValueError`` saying what was wrong and what is accepted; each front end wraps it in
its own error type (``argparse.ArgumentTypeError``, IPython's ``UsageError``) without
rewording it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._model import TaskStatus

__all__ = [
    "STATUS_COLORS",
    "format_bytes",
    "format_duration",
    "format_usage",
    "match_ids",
    "parse_duration",
    "parse_status",
    "short_id",
]

#: A status's colour, the same in every view (badges, bars, the timeline).
STATUS_COLORS: dict[str, str] = {
    TaskStatus.READY: "#757575",
    TaskStatus.RUNNING: "#1565c0",
    TaskStatus.SUCCESSFUL: "#2e7d32",
    TaskStatus.FAILED: "#c62828",
    TaskStatus.CANCELLED: "#e65100",
    TaskStatus.INTERRUPTED: "#6a1b9a",
}

_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``90 sec``, ``15m``, ``15min``, ``2h``, ``7d``, ``1w`` -> seconds.

    Case is ignored; a number without a unit is seconds. ValueError otherwise.
    """
    match = _DURATION.fullmatch(text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(
            f"{text!r} is not a duration; write seconds or a number with a unit "
            "(s, sec, m, min, h, d, w), e.g. 90, 90s, 15m, 2h, 7d or 1w"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_status(value: Any, argument: str) -> TaskStatus:
    """A ``TaskStatus`` from a member or its name in any case (``running``, ``RUNNING``).

    ValueError naming ``argument`` and the valid names otherwise.
    """
    if isinstance(value, TaskStatus):
        return value
    if isinstance(value, str) and value.upper() in TaskStatus.__members__:
        return TaskStatus[value.upper()]
    raise ValueError(
        f"{argument}={value!r} is not a status; expected one of {', '.join(TaskStatus.__members__)}"
    )


def short_id(task_id: str) -> str:
    """Eight characters that tell tasks apart: ids start with a shared timestamp, so the
    short form is the end of the id."""
    compact = str(task_id).replace("-", "")
    return compact[-8:] if len(compact) > 8 else compact


def match_ids(ids: Iterable[str], text: str) -> list[str]:
    """The ids of ``ids`` (in their order) that ``text`` names.

    The rule: with dashes removed and case ignored, ``text`` is the start of the id (a full id
    or a prefix of one) or its end (the short id that widgets and reprs show is the id's last
    eight hex digits). Empty text names no id.
    """
    needle = text.replace("-", "").lower()
    if not needle:
        return []
    found = []
    for task_id in ids:
        compact = task_id.replace("-", "").lower()
        if compact.startswith(needle) or compact.endswith(needle):
            found.append(task_id)
    return found


def format_duration(seconds: float | None, *, precise: bool = False) -> str:
    """Seconds as text ('' for None; a negative value, from clock skew, counts as 0).

    The default is for a live display re-rendered every tick, which wants few, steady
    characters: '3.2 s', '42 s', '12:05', '1:02:03'. ``precise=True`` is for a run measured
    once (a finished task's repr, ``nbtasks list``), small values included: '850µs',
    '12.3ms', '3.21s', '2.5min'.
    """
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if precise:
        if seconds < 1e-3:
            return f"{seconds * 1e6:.0f}µs"
        if seconds < 1:
            return f"{seconds * 1e3:.1f}ms"
        if seconds < 120:
            return f"{seconds:.2f}s"
        return f"{seconds / 60:.1f}min"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(n: float) -> str:
    """``230 MB``, ``1.9 GB``: decimal units, three significant digits (memory as users read
    it; the exact number of bytes is in ``TaskResult.usage``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def format_usage(usage: Any) -> str:
    """``CPU 1.2 s · peak 230 MB`` for a ``TaskResult.usage`` (the widget's timing line,
    ``%tasks``, ``nbtasks show``); '' when there is none. Read from a record, so anything that
    is not a number is left out rather than trusted."""
    if not isinstance(usage, dict):
        return ""
    parts = []
    cpu, rss = usage.get("cpu_time"), usage.get("max_rss")
    if isinstance(cpu, int | float) and not isinstance(cpu, bool) and cpu >= 0:
        parts.append(f"CPU {format_duration(float(cpu))}")
    if isinstance(rss, int | float) and not isinstance(rss, bool) and rss > 0:
        parts.append(f"peak {format_bytes(rss)}")
    return " · ".join(parts)
