"""The display area of a task's widget: the bundles the task displayed (SPEC §4 rich output).

Each kept bundle is shown by an ``ipywidgets.Output`` of its own, made by the view updater
with the bundle as its one ``display_data`` output, so the frontend renders it as it renders a
cell's output (an ``<img>`` for a PNG, HTML, Markdown, JSON). A new bundle takes over the widget
of a bundle that left (a live plot's ``clear_output(wait=True)`` then ``display``: one message
with the new figure), or costs one new small widget (its data sent once) and the area's list of
children; nothing already shown is sent again, so a task that displays a figure a second costs
the kernel one figure a second. The
bundles were encoded in the task's thread or process (``_rich``): the updater only wraps them.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

from .snapshot import Snapshot
from .updater import updater_stats
from .widgets import html_widget, ipywidgets, set_traits, shared, show

__all__ = ["RETIRE_AFTER", "DisplayArea", "dropped_note"]

#: Seconds a bundle's widget stays open after it left the area (cleared, dropped). A page that
#: reloads lists the kernel's widgets, then fetches each one: a widget closed in between fails
#: to load and takes its parent's view with it (an error box in place of the area), so a live
#: plot that replaces its figure several times a second must not close them at once.
RETIRE_AFTER = 10.0


def dropped_note(dropped: int) -> str:
    """The line that says how many of a task's displays the bound left out."""
    s = "" if dropped == 1 else "s"
    return f"{dropped} earlier display{s} not kept (the newest are)"


class DisplayArea:
    """A VBox of the task's displayed bundles; ``render`` is called by the updater only."""

    def __init__(self, snap: Snapshot) -> None:
        w = ipywidgets()
        self._note = html_widget("", w.Layout(display="none"))
        self._note.add_class("nbtasks-displayed-note")
        self.root = w.VBox(
            [self._note],
            layout=w.Layout(
                display="none", max_height="40em", overflow="auto", border="1px solid #ddd"
            ),
        )
        self.root.add_class("nbtasks-displayed")
        self._shown: dict[int, Any] = {}  # the bundle's number (0 = the task's first) -> widget
        self._key: tuple[int, int, int] = (0, 0, 0)
        self._retired: list[tuple[float, Any]] = []  # (when it left, widget), oldest first
        self.render(snap)

    def render(self, snap: Snapshot) -> int:
        """Show the snapshot's bundles. A bundle still kept keeps its widget; a new one takes
        the widget of one that left if there is one (its ``outputs`` replaced: one message, as
        a live plot that clears and redraws needs), else a new widget; widgets left over are
        closed RETIRE_AFTER later."""
        bundles = snap.displayed
        key = (snap.displayed_total, len(bundles), snap.displayed_dropped)
        if key == self._key:
            return 0
        self._key = key
        first = snap.displayed_total - len(bundles)  # the number of the first one kept
        kept = {first + k for k in range(len(bundles))}
        free = [widget for number, widget in self._shown.items() if number not in kept]
        shown: dict[int, Any] = {}
        for k, bundle in enumerate(bundles):
            number = first + k
            widget = self._shown.get(number)
            if widget is None and free:
                widget = free.pop(0)
                set_traits(widget, outputs=(_output(bundle),))
            shown[number] = widget if widget is not None else _bundle_widget(bundle)
        moment = time.monotonic()
        self._retired.extend((moment, widget) for widget in free)
        while self._retired and moment - self._retired[0][0] > RETIRE_AFTER:
            self._retired.pop(0)[1].close()
        before = tuple(self._shown.values())
        self._shown = shown
        if snap.displayed_dropped:
            set_traits(
                self._note, value=f"<i>{html.escape(dropped_note(snap.displayed_dropped))}</i>"
            )
        show(self._note, bool(snap.displayed_dropped))
        if tuple(shown.values()) != before:
            set_traits(self.root, children=(self._note, *shown.values()))
        show(self.root, bool(bundles))
        updater_stats().messages += 1
        return 1


def _output(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """A bundle as an Output widget's one output (a cell's display_data)."""
    return {"output_type": "display_data", "data": bundle, "metadata": {}}


def _bundle_widget(bundle: Mapping[str, Any]) -> Any:
    w = ipywidgets()
    # the shared layout: a widget of its own per bundle would be a second comm to open (and
    # one left behind when the bundle's widget is closed)
    out = w.Output(outputs=(_output(bundle),), layout=shared("plain"))
    out.add_class("nbtasks-display")
    return out
