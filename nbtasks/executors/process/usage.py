"""A worker process's resource usage (SPEC §4, ``TaskResult.usage``) and what its death by
SIGKILL says about memory.

A worker runs one task at a time, so the process's own counters are the attempt's: its CPU time
is the process's (user + system, every thread of the worker: the task's and nbtasks' few
helpers) between the attempt's start and end, and its peak resident memory is the process's
high-water mark, reset when the attempt starts where Linux allows it (``/proc/self/clear_refs``),
else the worker's peak so far (a reused worker may report an earlier task's peak, never less
than this one's). Where ``resource`` is missing (Windows) psutil is used when it is installed (it
is no dependency of nbtasks); without it the CPU time is ``time.process_time()`` and the peak
memory unknown (None).

The worker also reports its peak to the parent while a task runs (``Worker._monitor``, at most
every 0.2 s and only when it grew by ``REPORT_STEP``), so that a worker killed by SIGKILL
(often the out-of-memory killer) fails with a ``WorkerLost`` that says how much memory it held:
``oom_hint``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Final

from ..._text import format_bytes

resource: Any
try:
    import resource
except ImportError:  # Windows
    resource = None

__all__ = [
    "OOM_SHARE",
    "REPORT_STEP",
    "memory_limit",
    "oom_hint",
    "peak_rss",
    "process_cpu",
    "reset_peak",
]

#: A worker killed by SIGKILL whose peak memory reached this share of the memory it could use
#: (the machine's RAM, or its cgroup's limit when lower) was likely ended by the out-of-memory
#: killer. A module constant so that a test can lower it.
OOM_SHARE: Final[float] = 0.5
#: The worker reports its peak memory to the parent when it grew by at least this many bytes.
REPORT_STEP: Final = 1 << 20
# ru_maxrss is in KiB on Linux and the BSDs, in bytes on macOS.
_MAXRSS_UNIT: Final = 1 if sys.platform == "darwin" else 1024


def _psutil_process() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process()


def process_cpu() -> float:
    """Seconds of CPU (user + system) this process has used so far."""
    if resource is not None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return float(ru.ru_utime + ru.ru_stime)
    proc = _psutil_process()
    if proc is not None:
        times = proc.cpu_times()
        return float(times.user + times.system)
    return time.process_time()


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (since ``reset_peak``), None if unknown."""
    if resource is not None:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _MAXRSS_UNIT
    proc = _psutil_process()
    if proc is not None:
        peak = getattr(proc.memory_info(), "peak_wset", None)  # Windows' peak working set
        return None if peak is None else int(peak)
    return None


def reset_peak() -> None:
    """Start this process's peak memory over (Linux: ``5`` into ``/proc/self/clear_refs``
    resets the high-water mark that ``ru_maxrss`` reads, in constant time); elsewhere a no-op."""
    with contextlib.suppress(OSError):
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)


def memory_limit() -> int | None:
    """The memory a process here may use, in bytes: the machine's RAM, or its cgroup's limit
    (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) when lower; None if unknown."""
    limits: list[int] = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                text = f.read().strip()
            if text != "max" and 0 < int(text) < 1 << 60:  # v1 says "no limit" as a huge int
                limits.append(int(text))
    limits = [n for n in limits if n > 0]
    return min(limits) if limits else None


def oom_hint(peak: int | None, limit: int | None = None, share: float | None = None) -> str:
    """What a ``WorkerLost`` after SIGKILL adds about memory: the peak the worker reported,
    and the out-of-memory killer as the likely cause when it reached ``share`` (``OOM_SHARE``)
    of ``limit`` (``memory_limit()``). Empty when the worker reported no peak."""
    if not peak:
        return ""
    text = f"; it was using {format_bytes(peak)} (peak) when it died"
    limit = memory_limit() if limit is None else limit
    share = OOM_SHARE if share is None else share
    if limit and peak >= share * limit:
        text += ": the system's out-of-memory killer likely ended it"
    return text
