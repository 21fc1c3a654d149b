"""Views of tasks: text, HTML and live ipywidgets, and the one view updater thread.

``TaskResult``/``GroupResult._repr_mimebundle_`` import this package on first display (the
one upward edge of the import graph) and call ``mimebundle``; ``%tasks`` calls
``live_dashboard`` (in a kernel) or ``dashboard_text``. Importing the package loads no
ipywidgets: ``widgets.ipywidgets()`` imports it when the first widget is built.

The modules, in the order data flows through them:

- ``snapshot``: frozen ``Snapshot``s read from a handle or a store summary row;
- ``format``: snapshots as text and static HTML;
- ``widgets``: the ipywidgets toolkit and ``BaseView``; ``task``, ``group``, ``dashboard``:
  the three widget views;
- ``display``: ``display_live`` (an output the updater can replace), ``mimebundle`` and the view
  cache;
- ``timeline``: the live timeline chart (``app.timeline()``);
- ``updater``: the single thread that polls the live views and writes their traits.
"""

from __future__ import annotations

from .dashboard import Dashboard, dashboard_text, live_dashboard
from .display import display_live, live_displayer, mimebundle, view_for
from .format import html_bundle, summary_line
from .group import GroupView
from .snapshot import TERMINAL, UNFINISHED, Snapshot
from .task import TaskView
from .timeline import TimelineView, timeline_bundle
from .updater import updater_stats

# Not re-exported: ``snapshot.snapshot()`` and ``updater.updater()``, whose names would hide
# their modules (``views.snapshot`` is the module).
__all__ = [
    "TERMINAL",
    "UNFINISHED",
    "Dashboard",
    "GroupView",
    "Snapshot",
    "TaskView",
    "TimelineView",
    "dashboard_text",
    "display_live",
    "html_bundle",
    "live_dashboard",
    "live_displayer",
    "mimebundle",
    "summary_line",
    "timeline_bundle",
    "updater_stats",
    "view_for",
]
