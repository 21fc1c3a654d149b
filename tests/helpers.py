"""Helpers shared by the core tests (plain functions; the fixtures are in conftest.py).

Not in conftest.py: tests/integration has a conftest of its own, and ``from conftest import``
would find whichever was imported first.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbtasks

#: A test of POSIX signals, file modes, links or /proc: Windows has its own mechanisms (ACLs,
#: TerminateProcess, no links by default), tested by their own tests (docs/platforms.md).
POSIX_ONLY = pytest.mark.skipif(
    os.name == "nt", reason="POSIX signals, modes or links (docs/platforms.md)"
)

REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.002) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class FakeClock:
    """A ``Clock`` (nbtasks._model) that moves only when the test calls ``advance``.

    ``time()`` starts at ``start`` (a wall time), ``monotonic()`` at 1000; both move together.
    A thread in ``wait`` wakes when its deadline passes on this clock (or when notified), and
    ``advance`` returns once every thread it woke has handled the new time: waits again, or
    has ended. So what the supervisor does at a time is done when ``advance`` returns, and what
    it has not done by then it will not do before the next ``advance``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._offset = start - 1000.0
        self._now = 1000.0
        self._lock = threading.Condition()
        self._waiting: dict[threading.Thread, tuple[float, threading.Condition]] = {}
        self._woken: set[threading.Thread] = set()

    def time(self) -> float:
        return self._now + self._offset

    def monotonic(self) -> float:
        return self._now

    def waiting(self) -> int:
        """How many threads wait on this clock now."""
        with self._lock:
            return len(self._waiting)

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        me = threading.current_thread()
        with self._lock:
            self._woken.discard(me)
            self._lock.notify_all()
            if deadline is not None and deadline <= self._now:
                return
            self._waiting[me] = (math.inf if deadline is None else deadline, condition)
        try:
            condition.wait()  # until advance() (or whoever else) notifies it
        finally:
            with self._lock:
                self._waiting.pop(me, None)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            due = [(t, c) for t, (d, c) in self._waiting.items() if d <= self._now]
            self._woken.update(t for t, _ in due)
        for thread, condition in due:
            with condition:  # taken once the thread waits in it: the notify reaches it
                if self._waiting.get(thread, (0.0, None))[1] is condition:
                    condition.notify_all()
        limit = time.monotonic() + 10
        with self._lock:
            while any(t.is_alive() for t in self._woken):
                if time.monotonic() > limit:
                    raise AssertionError(f"threads did not settle after advance(): {self._woken}")
                self._lock.wait(0.01)
            self._woken.clear()


def committed(app: nbtasks.App, task_id: str) -> dict[str, Any]:
    """The record as committed to disk (not this process's in-memory version)."""
    return app.store.read_record(task_id)


def stored_count(store: Path) -> int:
    """How many task records a store holds, read through a second, independent App."""
    other = nbtasks.App(store=store)
    try:
        return other.store.count()
    finally:
        other.shutdown()


def run_python(code: str, timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (same environment: the test key and store)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        check=False,
        **kwargs,
    )


def start_python(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter; stdout is a pipe of text lines."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
        **kwargs,
    )


class Gate:
    """Two events: the task says it reached a point (``pause``); the test lets it go on
    (``release``)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def pause(self) -> None:
        self.reached.set()
        assert self.go.wait(10)
        self.go.clear()

    def wait_reached(self) -> None:
        assert self.reached.wait(10)
        self.reached.clear()

    def release(self) -> None:
        self.go.set()


def ready_task_of_a_dead_process(store: Path) -> str:
    """A task left READY in ``store`` by a process that then died (``os._exit``): its id."""
    proc = run_python(
        f"""
        import os, nbtasks
        app = nbtasks.App(store={str(store)!r})
        @app.task
        def later():
            return 1
        print(later.apply_async(countdown=3600).id, flush=True)
        app.store.flush()
        os._exit(0)
        """
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]
