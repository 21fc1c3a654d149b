"""A Linux interpreter made to lack what Windows lacks (tests/integration/test_platforms.py).

Loaded by putting this directory first on ``PYTHONPATH``: it applies in that interpreter and in
every interpreter it starts (worker processes inherit the environment).

Simulated (taken away before any other module is imported):
- ``fcntl``: ``import fcntl`` raises ImportError;
- ``os.fork``, ``os.forkpty``, ``os.register_at_fork``, ``os.setsid``, ``os.getuid``,
  ``os.pread``, ``os.pwrite`` are gone;
- ``socket.AF_UNIX``, ``socket.SOCK_SEQPACKET``, ``socket.send_fds``, ``socket.recv_fds``,
  ``socket.MSG_DONTWAIT`` are gone, and ``socket.socketpair()`` is Windows' own: a connected
  pair of TCP sockets over the loopback (CPython's fallback on Windows);
- ``signal.SIGALRM``, ``signal.setitimer``, ``signal.ITIMER_REAL`` are gone;
- ``msvcrt`` exists with ``locking`` and its ``LK_*`` modes (a byte range from the file's
  position, non-blocking modes raise OSError at once), made of POSIX record locks: the store's
  lock takes its Windows path (``subprocess`` is imported first: it takes the presence of
  ``msvcrt`` for Windows).

Not simulated: ``sys.platform`` and ``os.name`` stay Linux's (the standard library branches on
them: subprocess, multiprocessing, asyncio would try to load Windows modules), so what nbtasks
chooses by platform name (the Windows ACL check, ``OpenProcess`` for liveness, ``GetProcessTimes``)
is not run here; ``/proc`` is still there; ``select`` still works on pipes; ``os.kill`` still
signals (on Windows it terminates); ``signal.SIGKILL`` and the rest stay (CPython's subprocess
uses them on Linux); a second handle in the same process does not contend for an ``msvcrt`` lock
(POSIX record locks belong to the process, Windows' to the handle).
"""

from __future__ import annotations

import errno
import fcntl as _fcntl  # kept for the fake msvcrt, before it is taken away
import os
import signal
import socket
import subprocess  # noqa: F401 - before msvcrt exists: its presence means Windows to it
import sys
import types

SIMULATED = "windows"

sys.modules["fcntl"] = None  # type: ignore[assignment]
for _name in ("fork", "forkpty", "register_at_fork", "setsid", "getuid", "pread", "pwrite"):
    if hasattr(os, _name):
        delattr(os, _name)
for _name in ("AF_UNIX", "SOCK_SEQPACKET", "send_fds", "recv_fds", "MSG_DONTWAIT"):
    if hasattr(socket, _name):
        delattr(socket, _name)
for _name in ("SIGALRM", "setitimer", "ITIMER_REAL"):
    if hasattr(signal, _name):
        delattr(signal, _name)


def _socketpair(
    family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> tuple[socket.socket, socket.socket]:
    """Windows' socketpair: a listening socket on the loopback, connected to itself."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, type, proto) as lsock:
        lsock.bind((host, 0))
        lsock.listen()
        a = socket.socket(family, type, proto)
        try:
            a.connect(lsock.getsockname())
            b, _ = lsock.accept()
        except BaseException:
            a.close()
            raise
    return a, b


socket.socketpair = _socketpair  # type: ignore[assignment]

_msvcrt = types.ModuleType("msvcrt", "simulated by tests/platforms/windows/sitecustomize.py")
_msvcrt.LK_UNLCK = 0  # type: ignore[attr-defined]
_msvcrt.LK_LOCK = 1  # type: ignore[attr-defined]
_msvcrt.LK_NBLCK = 2  # type: ignore[attr-defined]
_msvcrt.LK_RLCK = 3  # type: ignore[attr-defined]
_msvcrt.LK_NBRLCK = 4  # type: ignore[attr-defined]


def _locking(fd: int, mode: int, nbytes: int) -> None:
    if mode == 0:
        _fcntl.lockf(fd, _fcntl.LOCK_UN, nbytes, 0, os.SEEK_CUR)
        return
    flags = _fcntl.LOCK_EX | (_fcntl.LOCK_NB if mode in (2, 4) else 0)
    try:
        _fcntl.lockf(fd, flags, nbytes, 0, os.SEEK_CUR)
    except OSError:
        raise OSError(errno.EDEADLK, "Resource deadlock avoided") from None


_msvcrt.locking = _locking  # type: ignore[attr-defined]
sys.modules["msvcrt"] = _msvcrt
