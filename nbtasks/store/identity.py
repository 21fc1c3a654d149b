"""Process identity on every platform: is a pid alive, and when did its process start (so a
pid that the system has given to a new process is not taken for the old one).

Each platform has its own mechanism, chosen by what the system offers (docs/platforms.md):

- liveness: ``os.kill(pid, 0)`` on POSIX (it sends nothing); on Windows, where ``os.kill``
  TERMINATES the process, ``OpenProcess`` + ``GetExitCodeProcess`` (``STILL_ACTIVE``);
- start time: ``/proc/<pid>/stat`` where it exists (Linux: clock ticks since boot, the format
  stores written by earlier versions hold); ``GetProcessTimes`` on Windows (``w`` + the creation
  time in 100 ns units); elsewhere (macOS, BSDs) ``ps -o lstart= -p PID`` (``s`` + epoch
  seconds), which costs a process start (a few ms), so it is asked at most once per owner per
  sweep and once per worker start, and this process's own is kept.

"Cannot tell the start time" (no ``ps``, a token written by another method) means "trust the
pid": the process is alive while its pid is, never "dead".
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import time
from typing import Any, Final

_WINDOWS: Final = sys.platform == "win32"
_STILL_ACTIVE: Final = 259
_QUERY_LIMITED: Final = 0x1000  # PROCESS_QUERY_LIMITED_INFORMATION
_ACCESS_DENIED: Final = 5
_MAX_PID: Final = 2**31  # os.kill(0 or -1, ...) would signal a whole process group

#: ctypes with its Windows-only names (WinDLL, get_last_error), which mypy knows only on Windows.
_CTYPES: Any = ctypes

_own: tuple[int, str | None] | None = None  # (pid, start): this process's start time


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists (and, where /proc says so, is not a zombie: it has
    ended, only not been reaped yet)."""
    if not 0 < pid < _MAX_PID:
        return False
    if _WINDOWS:  # pragma: no cover - Windows
        return _win_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    except OSError:
        return False
    stat = _proc_stat(pid)
    return stat is None or stat[0] != b"Z"


def process_start_time(pid: int) -> str | None:
    """The start time of the process, as text to compare with an earlier reading of the same
    pid; None if there is no such process (or only its zombie) or the system cannot tell."""
    global _own
    me = os.getpid()
    if pid == me and _own is not None and _own[0] == me:
        return _own[1]
    start = _start_time(pid)
    if pid == me:
        _own = (me, start)
    return start


def _start_time(pid: int) -> str | None:
    if not 0 < pid < _MAX_PID:
        return None
    if _WINDOWS:  # pragma: no cover - Windows
        return _win_start_time(pid)
    if has_proc():
        stat = _proc_stat(pid)
        return None if stat is None or stat[0] == b"Z" else stat[1]
    return ps_start_time(pid)


def start_time_like(pid: int, start: str) -> str | None:
    """The process's start time read the way ``start`` was (a token may come from a store
    written where another way was taken: /proc hidden, or ps), or None if this system cannot
    read it that way (then the caller cannot tell)."""
    clock = _clock(start)
    if clock == _clock(process_start_time(os.getpid()) or ""):
        return process_start_time(pid)
    if clock == "" and not _WINDOWS and has_proc():
        return _start_time(pid)
    if clock == "s" and not _WINDOWS:
        return ps_start_time(pid)
    return None


def _clock(start: str) -> str:
    """``""``: /proc's ticks; ``s``: ps's seconds; ``w``: Windows' creation time."""
    return "" if start[:1].isdigit() else start[:1] or "?"


# --------------------------------------------------------------------------- Linux: /proc


@functools.cache
def has_proc() -> bool:
    return os.path.exists("/proc/self/stat")


def _proc_stat(pid: int) -> tuple[bytes, str] | None:
    """(state, start time in clock ticks since boot) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    with contextlib.suppress(ValueError, IndexError):
        fields = stat[stat.rindex(b")") + 2 :].split()
        return fields[0], fields[19].decode()
    return None


# --------------------------------------------------------------------------- POSIX: ps


def ps_start_time(pid: int) -> str | None:
    """``ps -o lstart= -p PID`` (macOS, BSDs; Linux has it too) as ``s<epoch seconds>``; None
    if there is no such process or no ``ps``. One second's resolution: a pid reused within the
    same second passes for the old process (the system hands pids out in turn, so it is rare)."""
    import subprocess  # not at import: a worker's cold start does not need it

    try:
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    text = " ".join(out.split())
    if not text:
        return None
    try:
        return f"s{int(time.mktime(time.strptime(text, '%a %b %d %H:%M:%S %Y')))}"
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- Windows


def _kernel32() -> Any:  # pragma: no cover - Windows
    return _CTYPES.WinDLL("kernel32", use_last_error=True)


def _win_alive(pid: int) -> bool:  # pragma: no cover - Windows
    k32 = _kernel32()
    handle = k32.OpenProcess(_QUERY_LIMITED, False, pid)
    if not handle:
        # Access denied: the process exists (another user's, or a protected one).
        return bool(_CTYPES.get_last_error() == _ACCESS_DENIED)
    try:
        code = ctypes.c_ulong(0)
        if not k32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == _STILL_ACTIVE
    finally:
        k32.CloseHandle(handle)


def _win_start_time(pid: int) -> str | None:  # pragma: no cover - Windows
    k32 = _kernel32()
    handle = k32.OpenProcess(_QUERY_LIMITED, False, pid)
    if not handle:
        return None
    try:
        code = ctypes.c_ulong(0)
        if k32.GetExitCodeProcess(handle, ctypes.byref(code)) and code.value != _STILL_ACTIVE:
            return None  # it has ended; its handle is still held somewhere
        times = [ctypes.c_ulonglong(0) for _ in range(4)]  # FILETIMEs: creation, exit, ...
        if not k32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return None
        return f"w{times[0].value}"
    finally:
        k32.CloseHandle(handle)
