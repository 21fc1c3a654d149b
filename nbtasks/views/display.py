"""Showing a TaskResult or GroupResult: the entry point of ``_repr_mimebundle_`` and the view
cache (one widget view per task id and kernel).

In a kernel, ``mimebundle()`` builds (or reuses) the live widget in the cell thread, registers
it with the updater and returns the widget's bundle, which also carries text/plain and a static
text/html rendering for nbconvert and for frontends without the widget manager. Outside a
kernel (terminal IPython, plain Python) it returns text and HTML and never imports ipywidgets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from .. import _kernel
from .format import filter_bundle, html_bundle
from .group import GroupView
from .snapshot import is_group
from .task import TaskView
from .updater import updater

__all__ = ["mimebundle", "view_for"]

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
