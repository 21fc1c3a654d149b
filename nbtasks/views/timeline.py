"""The live timeline (``app.timeline()``, ``%tasks --timeline``): an HTML widget holding the SVG
chart, which the view updater redraws at most twice a second while any of its tasks runs.

The chart is drawn by the timeline object itself (``_timeline.Timeline``, passed in: views do
not import it); this module only holds the widget, so a redraw is one store query, one SVG
string and one trait set on the updater's thread. The view goes quiet when no attempt runs,
and is re-armed (``Updater.watch``) when another view registers, such as a task displayed in a
later cell; a finished chart is not redrawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from .. import _kernel
from .format import filter_bundle
from .updater import updater
from .widgets import BaseView, html_widget, ipywidgets, set_traits

__all__ = ["REDRAW_PERIOD", "TimelineSource", "TimelineView", "timeline_bundle"]

REDRAW_PERIOD = 0.5  # seconds between redraws at least: "at most twice a second"


class TimelineSource(Protocol):
    """What the view draws (an ``_timeline.Timeline``)."""

    running: bool

    def svg(self) -> str: ...

    def __repr__(self) -> str: ...


class TimelineView(BaseView):
    """The chart in an HTML widget, redrawn by the updater while a task of it runs."""

    def __init__(self, timeline: TimelineSource) -> None:
        super().__init__()
        w = ipywidgets()
        self._timeline = timeline
        self.min_period = REDRAW_PERIOD
        self.last_svg = timeline.svg()  # drawn in the cell thread, before it is displayed
        self._chart = html_widget(self.last_svg, w.Layout(overflow="auto"))
        self._chart.add_class("nbtasks-timeline-chart")
        self._problem = html_widget("", w.Layout(display="none"))
        self.root = w.VBox([self._chart, self._problem])
        self.root.add_class("nbtasks-timeline")
        self.live = timeline.running

    def poll(self) -> bool:
        self.last_svg = self._timeline.svg()
        set_traits(self._chart, value=self.last_svg)
        self._ok()
        self.min_period = REDRAW_PERIOD  # BaseView._note never slows it further: it stops
        self.live = self._timeline.running
        return self.live

    def static_bundle(self) -> dict[str, Any]:
        """The last chart, for nbconvert and frontends without the widget manager."""
        return {
            "image/svg+xml": self.last_svg,
            "text/html": f'<div class="nbtasks-timeline-static">{self.last_svg}</div>',
            "text/plain": repr(self._timeline),
        }


def timeline_bundle(
    timeline: TimelineSource,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> dict[str, Any]:
    """``Timeline._repr_mimebundle_``: the live widget in a kernel, the SVG elsewhere."""
    if _kernel.in_kernel():
        try:
            view = TimelineView(timeline)
        except ImportError:
            pass  # no ipywidgets in this kernel: the SVG alone
        else:
            bundle = dict(view.root._repr_mimebundle_() or {})
            bundle.update(view.static_bundle())
            up = updater()
            up.watch(view)
            if view.live:
                up.register(view)
            return filter_bundle(bundle, include, exclude)
    svg = timeline.svg()
    return filter_bundle(
        {
            "image/svg+xml": svg,
            "text/html": f'<div class="nbtasks-timeline-static">{svg}</div>',
            "text/plain": repr(timeline),
        },
        include,
        exclude,
    )
