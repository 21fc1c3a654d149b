"""The ipywidgets toolkit of the views (the only module that imports ipywidgets, on first use)
and ``BaseView``, the bookkeeping every widget view shares.

The rules every view follows (DESIGN.md principle 9):

- A view is built **in the cell thread** (``mimebundle()`` is called by IPython's display
  formatter there) and then registered with the updater, whose thread is the only writer of
  the traits it renders: ``set_traits`` sends only the traits whose value changed, in one comm
  message per widget (``hold_sync``).
- Task threads and worker processes never touch a widget; they only update the task's state.
  Task output reaches an Output widget through ``Output.append_stdout`` called by the updater,
  never through ``with out:`` (ipywidgets#4020).
- Frontend-edited traits (filters, accordions) are only read by the updater; button handlers
  only write cancel requests and nudge the updater. Buttons are routed to a helper subshell
  where the kernel allows it (``_kernel.route_comm_to_helper_subshell``), so they work while
  another cell runs.
"""

from __future__ import annotations

import html
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import _kernel
from .._model import TaskStatus
from .updater import PERIOD, updater, updater_stats

__all__ = [
    "BAR_STYLES",
    "SCROLL_HEIGHT",
    "BaseView",
    "cancel_button",
    "card",
    "html_widget",
    "ipywidgets",
    "set_bar",
    "set_traits",
    "shared",
    "show",
    "status_bar",
]

SLOW_PERIOD = 1.0  # for views whose snapshot has not changed for IDLE_AFTER seconds
IDLE_AFTER = 10.0
SCROLL_HEIGHT = "22em"  # the most an expanded table (metadata, members) takes before it scrolls
MAX_POLL_FAILURES = 20  # consecutive failed polls before a view gives up (the error is shown)
BAR_STYLES: dict[str, str] = {  # a FloatProgress's bar_style per status
    TaskStatus.READY: "info",
    TaskStatus.RUNNING: "",
    TaskStatus.SUCCESSFUL: "success",
    TaskStatus.FAILED: "danger",
    TaskStatus.CANCELLED: "warning",
    TaskStatus.INTERRUPTED: "warning",
}


def ipywidgets() -> Any:
    """ipywidgets, imported on first use (never at ``import nbtasks``)."""
    import ipywidgets

    return ipywidgets


_shared_widgets: dict[str, Any] = {}


def shared(name: str) -> Any:
    """A layout or style widget that never changes, shared by every view of this kernel.

    Each ipywidgets widget opens a comm (a ``comm_open`` message, a model in the frontend), and
    by default every widget gets a Layout and a Style of its own: ~30 comms for one task view.
    Sharing the ones that never change halves that, which matters when a cell shows 50 tasks
    at once (a burst of comm_opens can exceed the iopub socket's high-water mark).
    """
    widget = _shared_widgets.get(name)
    if widget is None or getattr(widget, "comm", None) is None:  # none yet, or closed
        w = ipywidgets()
        from ipywidgets.widgets.widget_button import ButtonStyle
        from ipywidgets.widgets.widget_int import ProgressStyle
        from ipywidgets.widgets.widget_string import HTMLStyle

        factories: dict[str, Callable[[], Any]] = {
            "html": HTMLStyle,
            "button": ButtonStyle,
            "progress": ProgressStyle,
            "row": lambda: w.Layout(align_items="center"),
            "box": lambda: w.Layout(border="1px solid #e0e0e0", padding="2px 6px", margin="2px 0"),
            "grow": lambda: w.Layout(flex="1 1 auto"),
            # a title that shrinks (its name cut with an ellipsis) before the button beside it
            "title": lambda: w.Layout(flex="1 1 auto", min_width="0", overflow="hidden"),
            "bar": lambda: w.Layout(width="auto", flex="1 1 40%", min_width="8em"),
            "info": lambda: w.Layout(flex="1 1 60%"),
            "plain": lambda: w.Layout(),
            "hidden": lambda: w.Layout(display="none"),
            "bar_hidden": lambda: w.Layout(display="none"),
            "cell": lambda: w.Layout(flex="0 1 67em"),
            # expanded metadata and a group's members: 40 keys made a cell 12,400 px tall,
            # 200 members 6,800 px; at most SCROLL_HEIGHT, then a scroll bar
            "scroll": lambda: w.Layout(max_height=SCROLL_HEIGHT, overflow="auto"),
        }
        widget = _shared_widgets[name] = factories[name]()
    return widget


def html_widget(value: str = "", layout: Any = None) -> Any:
    """An HTML widget with the shared style (and the shared plain layout unless given)."""
    return ipywidgets().HTML(
        value=value,
        style=shared("html"),
        layout=layout if layout is not None else shared("plain"),
    )


# The parts a task view and a group view share, so that the two look alike by construction.


def cancel_button(
    description: str, visible: bool, on_click: Callable[[Any], None], **traits: Any
) -> Any:
    """A view's cancel button (hidden once there is nothing left to cancel)."""
    w = ipywidgets()
    button = w.Button(
        description=description,
        icon="stop",
        button_style="warning",
        style=shared("button"),
        # flex none: a long title beside it never squeezes it below its label's width
        layout=w.Layout(width="auto", flex="0 0 auto", display=None if visible else "none"),
        **traits,
    )
    button.add_class("nbtasks-cancel")
    button.on_click(on_click)
    return button


def status_bar(value: float, status: str) -> Any:
    """A view's progress bar: the fraction done, coloured by the status."""
    bar = ipywidgets().FloatProgress(
        value=value,
        min=0.0,
        max=1.0,
        bar_style=BAR_STYLES.get(status, ""),
        layout=shared("bar"),
        style=shared("progress"),
    )
    bar.add_class("nbtasks-bar")
    return bar


def set_bar(bar: Any, value: float, status: str) -> int:
    """Render a new fraction and status on a ``status_bar``; returns messages sent."""
    return set_traits(bar, value=value, bar_style=BAR_STYLES.get(status, ""))


def card(kind: str, title: list[Any], progress: list[Any], *rest: Any) -> Any:
    """A view's box: the title row (with the cancel button), the bar row, then ``rest``."""
    w = ipywidgets()
    root = w.VBox(
        [
            w.HBox(title, layout=shared("row")),
            w.HBox(progress, layout=shared("row")),
            *rest,
        ],
        layout=shared("box"),
    )
    root.add_class(f"nbtasks-{kind}")
    return root


def set_traits(widget: Any, **traits: Any) -> int:
    """Set only the traits whose value changed, in one comm message; returns messages sent."""
    changed = {}
    for name, value in traits.items():
        if getattr(widget, name) != value:
            changed[name] = value
    if not changed:
        return 0
    if len(changed) == 1:
        ((name, value),) = changed.items()
        setattr(widget, name, value)
    else:
        with widget.hold_sync():
            for name, value in changed.items():
                setattr(widget, name, value)
    updater_stats().messages += 1
    return 1


def show(widget: Any, visible: bool) -> int:
    return set_traits(widget.layout, display=None if visible else "none")


class BaseView:
    """Shared bookkeeping: liveness, poll scheduling, error display (principle 12)."""

    root: Any
    _problem: Any  # an HTML widget, hidden until a poll fails
    display_id: str | None = None  # of the output showing it (``display.display_live``), if any

    def __init__(self) -> None:
        self.live = True
        self.next_due = 0.0
        self.min_period = PERIOD
        self._failures = 0
        self._last_change = time.monotonic()
        self._last_key: Any = None

    def poll(self) -> bool:
        """Render the current state; return whether the view is still live (each view's own)."""
        raise NotImplementedError

    def static_bundle(self) -> dict[str, Any]:
        """text/plain and text/html of what the view shows now, to go beside the widget."""
        raise NotImplementedError

    def bundle(self) -> dict[str, Any]:
        """The output that shows this view: the widget, and its static fallback beside it."""
        bundle = dict(self.root._repr_mimebundle_() or {})
        bundle.update(self.static_bundle())
        return bundle

    def update_fallback(self) -> None:
        """(Updater thread.) Replace the output showing this view with its current bundle,
        so that a saved notebook's static fallback shows how the task ended."""
        if self.display_id is not None:
            _kernel.publish_display(self.bundle(), self.display_id, update=True)

    def stopped(self) -> None:
        """(Updater thread, at kernel shutdown.) Each view says what it can."""
        self.update_fallback()

    def wake(self) -> None:
        """Poll again at once, even a finished view (a click, a filter, an opened table)."""
        self.live = True
        updater().register(self, now=True)

    def _note(self, key: Any) -> None:
        """Poll slower (SLOW_PERIOD) when nothing changed for IDLE_AFTER seconds."""
        now = time.monotonic()
        if key != self._last_key:
            self._last_key = key
            self._last_change = now
            self.min_period = PERIOD
        elif now - self._last_change > IDLE_AFTER:
            self.min_period = SLOW_PERIOD

    def failed(self, exc: BaseException) -> bool:
        """Show an updater error in the widget; give up after MAX_POLL_FAILURES in a row."""
        self._failures += 1
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        give_up = self._failures >= MAX_POLL_FAILURES
        note = "stopped updating" if give_up else "retrying"
        try:
            set_traits(
                self._problem,
                value=f'<span style="color:#c62828">nbtasks view updater error ({note}): '
                f"<code>{html.escape(text)}</code></span>",
            )
            show(self._problem, True)
        except Exception:
            pass  # the widget itself is broken: the error is still counted in updater_stats()
        self.live = not give_up
        return self.live

    def _ok(self) -> None:
        if self._failures:
            self._failures = 0
            show(self._problem, False)
