"""The one view updater thread per kernel (DESIGN.md principle 9) and its counters.

About ten times a second the updater asks every registered view to ``poll()``: the view
refreshes its private handle, builds snapshots and sets only the widget traits that changed.
A view that is no longer live (its task finished) is dropped; when none is left the thread
ends, and the next registration starts a new one. A view whose poll is expensive (a big group,
a dashboard over a big store) is polled less often (``COST_FACTOR``), and all views together
share a budget of ``MAX_POLLS_PER_SECOND`` (up to 20 live widgets get 10 updates a second each;
50 get ~3.4), so the updater's CPU stays bounded: measured with 50 live task widgets, ~330
widget updates a second for ~6-7 % of one core.

When the kernel shuts down (``atexit``, which runs before ipykernel closes its sockets), the
updater says goodbye: each view still live renders once more as of that moment, with its Cancel
disabled (``View.stopped``), since a widget whose kernel is gone keeps showing its last
state. ``flush()`` lets the end of a cell wait for one pass (``display.flush_at_cell_end``).

It knows views only by the ``View`` protocol, so it imports no widget module.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MAX_POLLS_PER_SECOND",
    "PERIOD",
    "Updater",
    "UpdaterStats",
    "View",
    "updater",
    "updater_stats",
]

PERIOD = 0.1  # seconds between updater passes: at most ~10 updates a second per widget
COST_FACTOR = 10.0  # a view costing c seconds per poll is polled at most every c*10 s
# All live views together are polled at most this often per second: with up to 20 widgets each
# one updates 10 times a second; with more, each one less often.  One poll sends ~2 messages,
# ~100 µs of kernel CPU each (measured: tests/integration/test_kernel.py, 50 live widgets).
MAX_POLLS_PER_SECOND = 200.0


class View(Protocol):
    """What the updater needs of a view."""

    live: bool  # False once polling it again would change nothing
    next_due: float  # time.monotonic() of its next poll
    min_period: float  # seconds between polls at least

    def poll(self) -> bool:
        """Render the current state; return whether the view is still live."""
        ...

    def failed(self, exc: BaseException) -> bool:
        """Show that ``poll()`` raised ``exc``; return whether to keep polling."""
        ...

    def stopped(self) -> None:
        """The kernel is shutting down: render the last state as such, disable Cancel."""
        ...


@dataclass
class UpdaterStats:
    passes: int = 0
    polls: int = 0
    messages: int = 0  # widgets whose traits changed (one comm message each)
    errors: int = 0
    cpu_seconds: float = 0.0  # CPU time of the updater thread itself
    threads_started: int = 0
    last_error: str = ""


_stats = UpdaterStats()


def updater_stats() -> UpdaterStats:
    """Counters of the view updater (for tests and for measuring its overhead); the widgets
    add to ``messages``."""
    return _stats


class Updater:
    """The single thread that writes widget traits (DESIGN.md principle 9)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: list[View] = []
        self._watchers: weakref.WeakSet[View] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._passes_begun = 0  # passes of this updater that started / ended (flush())
        self._passes_ended = 0
        self._ended = threading.Condition(self._lock)
        self._farewell: list[View] = []

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def live_views(self) -> int:
        with self._lock:
            return len(self._views)

    def watch(self, view: View) -> None:
        """Re-arm ``view`` whenever another view registers: a dashboard goes quiet when the
        store holds no unfinished task, and a newly displayed task may change what it shows."""
        self._watchers.add(view)

    def register(self, view: View, now: bool = False) -> None:
        """Poll ``view`` until it is no longer live; start the thread if needed."""
        if now:
            view.next_due = 0.0
        with self._lock:
            if self._stopping:
                return
            if not any(v is view for v in self._views):
                self._views.append(view)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="nbtasks-view-updater", daemon=True
                )
                _stats.threads_started += 1
                self._thread.start()
            else:
                self._wake.set()
        if view not in self._watchers:
            for watcher in list(self._watchers):
                if not watcher.live:
                    watcher.live = True
                    self.register(watcher)

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every live view has been polled once after
        this call; returns whether that happened. At once when no view is live."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._thread is None or self._thread is threading.current_thread():
                return True
            for view in self._views:
                view.next_due = 0.0
            target = self._passes_begun + 1  # the next pass to begin sees next_due = 0
            self._wake.set()
            while self._passes_ended < target and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ended.wait(left)
        return True

    def stop(self, farewell: bool = True) -> None:
        """Stop polling for good (at exit): each live view renders its last state as such
        (``View.stopped``, in the updater thread) unless ``farewell`` is False."""
        with self._lock:
            self._stopping = True
            self._farewell = list(self._views) if farewell else []
            self._views.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            while True:
                start = time.monotonic()
                with self._lock:
                    views = list(self._views)
                    if self._stopping:
                        farewell, self._farewell = self._farewell, []
                        break
                    if not views:
                        self._thread = None
                        return
                    self._passes_begun += 1
                done = []
                share = len(views) / MAX_POLLS_PER_SECOND  # the budget's period per view
                for view in views:
                    if view.next_due > start:
                        continue
                    t0 = time.perf_counter()
                    try:
                        live = view.poll()
                    except Exception as exc:  # principle 12: shown in the widget, counted
                        _stats.errors += 1
                        _stats.last_error = repr(exc)
                        live = view.failed(exc)
                        if not live:
                            view.live = False
                    _stats.polls += 1
                    cost = time.perf_counter() - t0
                    period = max(view.min_period, share, cost * COST_FACTOR)
                    view.next_due = start + period - 0.005
                    if not live:
                        done.append(view)
                _stats.passes += 1
                _stats.cpu_seconds += time.thread_time() - cpu0
                cpu0 = time.thread_time()
                with self._lock:
                    self._passes_ended += 1
                    self._ended.notify_all()
                    for view in done:
                        if not view.live:  # not re-armed by a handler meanwhile
                            self._views = [v for v in self._views if v is not view]
                    if not self._views:  # nothing displayed is live: stop now
                        self._thread = None
                        return
                    self._wake.clear()
                delay = start + PERIOD - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
            for view in farewell:  # the kernel is going: the last thing each view says
                try:
                    view.stopped()
                except Exception as exc:
                    _stats.errors += 1
                    _stats.last_error = repr(exc)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._ended.notify_all()


_updater: Updater | None = None
_updater_lock = threading.Lock()


def updater() -> Updater:
    """The per-kernel view updater (created on first use)."""
    global _updater
    with _updater_lock:
        if _updater is None:
            _updater = Updater()
            # no widget messages while the interpreter shuts down
            atexit.register(_updater.stop)
        return _updater
