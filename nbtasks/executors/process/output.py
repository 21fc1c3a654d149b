"""A worker's file descriptors 1 and 2, captured into the running task's output.

fds 1 and 2 go to a pipe that a reader thread routes into the running task (``ctx``), or to the
kept stderr between tasks. Before a task's outcome is recorded, ``drain()`` moves what it wrote
so far into it. Two ways to know the pipe is drained:

- where ``select.poll`` exists (POSIX) the read end is non-blocking: ``drain`` reads what it
  holds;
- elsewhere (Windows: ``select`` takes sockets only, and ``os.set_blocking`` on a pipe needs
  Python 3.12) the reader thread does blocking reads, and ``drain`` writes a marker into the pipe
  and waits until the reader has routed everything up to it (a pipe keeps its order).
"""

from __future__ import annotations

import codecs
import itertools
import os
import select
import sys
import threading
from typing import Any, Final

_MARK: Final = b"\x00nbtasks-drain-"
_DRAIN_WAIT: Final = 5.0  # seconds drain waits for the reader (it is stuck only if fd 1 is)


def redirect_stdio(detached: bool) -> tuple[int, int, int | None]:
    """fds 1 and 2 go to a pipe; stdin is the null device. A pool worker keeps a copy of the old
    stderr for what it writes between tasks; a detached one does not (it must not hold the
    kernel's stderr open). Returns (read end, a write end kept for markers, kept stderr)."""
    keep_err = None if detached else os.dup(2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    r, w = os.pipe()
    os.dup2(w, 1)
    os.dup2(w, 2)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    return r, w, keep_err


class Output:
    """The reader of the output pipe. ``ctx`` is the running task's Context (or None)."""

    def __init__(self, r: int, w: int, keep_err: int | None, blocking: bool | None = None) -> None:
        self._r = r
        self._w = w
        self._keep_err = keep_err
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._fflush = _c_fflush()
        self.ctx: Any = None
        self.blocking = not hasattr(select, "poll") if blocking is None else blocking
        self._marks = itertools.count()
        self._seen = threading.Condition()
        self._last_seen = -1
        if self.blocking:
            self._pending = b""
        else:
            os.close(w)  # fds 1 and 2 keep the pipe open
            os.set_blocking(r, False)

    def start(self) -> None:
        target = self._read_blocking if self.blocking else self._read_polling
        threading.Thread(target=target, name="nbtasks-worker-output", daemon=True).start()

    def drain(self) -> None:
        """Before a task's outcome is recorded: move what it wrote to fds 1 and 2 into it."""
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
        self._fflush()
        if not self.blocking:
            with self._lock:  # the reader thread holds it while it routes what it read
                self._read_available()
            return
        n = next(self._marks)
        os.write(self._w, _MARK + str(n).encode() + b"\x00")
        with self._seen:
            self._seen.wait_for(lambda: self._last_seen >= n, _DRAIN_WAIT)

    # ------------------------------------------------------------------ POSIX: poll

    def _read_polling(self) -> None:
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        while True:
            poller.poll()
            with self._lock:
                if not self._read_available():
                    return

    def _read_available(self) -> bool:
        """Route what the pipe holds now (with _lock held); False at end of file."""
        while True:
            try:
                data = os.read(self._r, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            self._route(data)

    # ------------------------------------------------------------------ elsewhere: markers

    def _read_blocking(self) -> None:
        while True:
            data = os.read(self._r, 65536)
            if not data:
                return
            with self._lock:
                self._split(self._pending + data)

    def _split(self, data: bytes) -> None:
        """Route ``data`` up to each drain marker, then say the marker was seen; keep a tail
        that may be the start of a marker for the next read."""
        while True:
            i = data.find(_MARK)
            if i < 0:
                keep = _partial_mark(data)
                self._route(data[: len(data) - keep])
                self._pending = data[len(data) - keep :]
                return
            end = data.find(b"\x00", i + len(_MARK))
            if end < 0:
                self._route(data[:i])
                self._pending = data[i:]
                return
            number = data[i + len(_MARK) : end]
            if not number.isdigit():  # the task wrote something like a marker: its text
                self._route(data[: i + len(_MARK)])
                data = data[i + len(_MARK) :]
                continue
            self._route(data[:i])
            n = int(number)
            data = data[end + 1 :]
            with self._seen:
                self._last_seen = n
                self._seen.notify_all()

    def _route(self, data: bytes) -> None:
        if not data:
            return
        text = self._decoder.decode(data)
        ctx = self.ctx
        if ctx is not None:
            ctx.write_output(text)
        elif self._keep_err is not None:
            os.write(self._keep_err, text.encode(errors="replace"))


def _partial_mark(data: bytes) -> int:
    """How many bytes at the end of ``data`` could begin a marker."""
    for k in range(min(len(_MARK) - 1, len(data)), 0, -1):
        if data.endswith(_MARK[:k]):
            return k
    return 0


def _c_fflush() -> Any:
    """``fflush(NULL)`` from libc (C stdio buffers), or a no-op where it is not available."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None)  # keeps the GIL: no thread switch for a ~1 µs call
        fflush = libc.fflush
        fflush.argtypes = [ctypes.c_void_p]
        return lambda: fflush(None)
    except (OSError, AttributeError, TypeError):
        return lambda: None
