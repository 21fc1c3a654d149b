"""Showing a TaskResult or GroupResult: the entry point of ``_repr_mimebundle_`` and the view
cache (one widget view per task id and kernel).

In a kernel, ``mimebundle()`` builds (or reuses) the live widget in the cell thread, registers
it with the updater and returns the widget's bundle, which also carries text/plain and a static
text/html rendering for nbconvert and for frontends without the widget manager. Outside a
kernel (terminal IPython, plain Python) it returns text and HTML and never imports ipywidgets.

``display_live()`` (``TaskResult._ipython_display_``, which IPython prefers to
``_repr_mimebundle_``) publishes the same bundle as a display_data output tagged with the
view's ``display_id``: a saved notebook keeps that text/html and text/plain (the static
fallback), and nbconvert, GitHub or a notebook reopened without its kernel show nothing else.
So the updater replaces it with the final state when the task or group finishes
(``BaseView.update_fallback``), and at the end of every cell it catches up first
(``flush_at_cell_end``) so that the update reaches the cell nbclient is listening to.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .. import _kernel
from .format import filter_bundle, html_bundle
from .group import GroupView
from .snapshot import is_group
from .task import TaskView
from .updater import updater

__all__ = ["display_live", "live_displayer", "mimebundle", "view_for"]
CELL_END_FLUSH = 1.0  # seconds a cell's end waits at most for the updater to catch up

MAX_CACHED_VIEWS = 2000

_views_lock = threading.Lock()
_views: dict[str, TaskView | GroupView] = {}


def mimebundle(
    obj: Any, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
) -> dict[str, Any] | None:
    """``TaskResult._repr_mimebundle_`` / ``GroupResult._repr_mimebundle_``.

    In a kernel: build (or reuse) the live widget in this (the cell's) thread, register it with
    the view updater and return the widget's bundle.  Elsewhere: text and HTML, no ipywidgets.
    """
    if _kernel.in_kernel():
        try:
            view = view_for(obj)
        except ImportError:
            pass  # no ipywidgets in this kernel: fall back to HTML
        else:
            bundle = dict(view.root._repr_mimebundle_() or {})
            bundle.update(view.static_bundle())
            return filter_bundle(bundle, include, exclude)
    return filter_bundle(html_bundle(obj), include, exclude)


def live_displayer(obj: Any) -> Callable[[], None] | None:
    """``TaskResult._ipython_display_``: ``display_live`` for ``obj`` in a kernel; None
    elsewhere, where IPython then uses ``_repr_mimebundle_`` (text and HTML)."""
    return functools.partial(display_live, obj) if _kernel.in_kernel() else None


def display_live(obj: Any) -> None:
    """Show a TaskResult or GroupResult (``_ipython_display_``): in a kernel, its widget with
    the static fallback beside it, as an output the updater can replace (its
    ``display_id``); elsewhere its text and HTML."""
    if _kernel.in_kernel():
        try:
            view = view_for(obj)
        except ImportError:
            pass  # no ipywidgets in this kernel: the HTML below
        else:
            if view.display_id is None:
                view.display_id = f"nbtasks-{uuid.uuid4().hex}"
            _kernel.publish_display(view.bundle(), view.display_id)
            _kernel.on_cell_end(flush_at_cell_end)
            return
    _kernel.publish_display(html_bundle(obj), f"nbtasks-{uuid.uuid4().hex}")  # no ipywidgets


def flush_at_cell_end() -> None:
    """Have the updater render what changed before this cell ends (IPython's post_run_cell):
    a task that finished during the cell then updates its saved output while the cell is
    still current, which is the only time nbclient reads messages. Waits at most
    ``CELL_END_FLUSH`` seconds, and not at all when nothing displayed is live."""
    updater().flush(CELL_END_FLUSH)


def view_for(obj: Any) -> TaskView | GroupView:
    """The widget view of a TaskResult or GroupResult (one per task id and kernel)."""
    key = ("group:" if is_group(obj) else "task:") + str(getattr(obj, "id", id(obj)))
    with _views_lock:
        view = _views.get(key)
    if view is None:
        view = GroupView(obj) if is_group(obj) else TaskView(obj)
        with _views_lock:
            if len(_views) >= MAX_CACHED_VIEWS:  # forget the oldest finished views
                for old in [k for k, v in _views.items() if not v.live][: MAX_CACHED_VIEWS // 4]:
                    del _views[old]
            _views.setdefault(key, view)
            view = _views[key]
    updater().register(view)
    return view
