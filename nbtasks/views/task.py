"""The live widget of one task: header, bar, timing, errors, output tail, metadata, cancel."""

from __future__ import annotations

import copy
import datetime as _dt
import time
from typing import Any

from .. import _kernel
from .._model import TaskStatus
from .format import (
    errors_html,
    header_html,
    info_html,
    metadata_html,
    now,
    task_html,
    task_line,
)
from .rich import DisplayArea
from .snapshot import Snapshot, snapshot
from .updater import updater_stats
from .widgets import (
    BaseView,
    cancel_button,
    card,
    html_widget,
    ipywidgets,
    set_bar,
    set_traits,
    shared,
    show,
    status_bar,
)

__all__ = ["OUTPUT_MAX_APPENDS", "OUTPUT_WIDGET_CHARS", "TaskView"]

OUTPUT_WIDGET_CHARS = 16_000  # tail kept in an Output widget before it is compacted
OUTPUT_MAX_APPENDS = 200  # appends before compacting the Output widget's outputs


class TaskView(BaseView):
    """The live widget of one task: header, bar, timing, error, output tail, metadata, cancel.

    It polls a private copy of the handle (``copy.copy``: the same task in the same App, no
    store opened), so refreshing it never changes the snapshot the user's handle holds.
    """

    def __init__(self, obj: Any) -> None:
        super().__init__()
        w = ipywidgets()
        _kernel.warn_if_unsupported()
        self._handle = copy.copy(obj)
        snap = snapshot(obj)
        at = now()
        self.task_id = snap.id
        self.last = snap
        self._header = html_widget(header_html(snap), shared("grow"))
        self._header.add_class("nbtasks-header")
        self._cancel = cancel_button(
            "Cancel",
            not snap.is_finished,
            self._on_cancel,
            tooltip="Cancel this task",
            disabled=snap.is_finished,
        )
        self._bar = status_bar(self._bar_value(snap), snap.status)
        self._info = html_widget(info_html(snap, at), shared("info"))
        self._info.add_class("nbtasks-info")
        self._error = html_widget(
            errors_html(snap), w.Layout(display=None if snap.errors else "none")
        )
        self._error.add_class("nbtasks-errors")
        self._out = w.Output(
            layout=w.Layout(
                display=None if snap.output else "none",
                max_height="14em",
                overflow="auto",
                border="1px solid #ddd",
            )
        )
        self._out.add_class("nbtasks-output")
        self._shown_output = ""
        self._appends = 0
        self._widget_chars = 0
        self._last_reset = 0.0
        self._write_output(snap.output, initial=True)
        self._displayed: DisplayArea | None = None  # made at the task's first display
        self._meta_html = html_widget(metadata_html(snap.metadata))
        self._meta = w.Accordion(
            children=[self._meta_html],
            titles=(self._meta_title(snap),),
            selected_index=None,
            layout=w.Layout(display=None if snap.metadata else "none"),
        )
        self._meta.add_class("nbtasks-metadata")
        self._problem = html_widget("", w.Layout(display="none"))
        self.root = card(
            "task",
            [self._header, self._cancel],
            [self._bar, self._info],
            self._error,
            self._out,
            self._meta,
            self._problem,
        )
        self._render_displayed(snap)
        self.live = not snap.is_finished
        self._cancel_routed = _kernel.route_comm_to_helper_subshell(self._cancel.comm)

    def static_bundle(self) -> dict[str, Any]:
        """text/plain and text/html of the last snapshot, to go beside the widget."""
        return {"text/plain": task_line(self.last), "text/html": task_html(self.last)}

    @staticmethod
    def _meta_title(snap: Snapshot) -> str:
        n = len(snap.metadata)
        return f"metadata ({n} key{'s' if n != 1 else ''})"

    @staticmethod
    def _bar_value(snap: Snapshot) -> float:
        if snap.status == TaskStatus.SUCCESSFUL:
            return 1.0
        return float(snap.fraction or 0.0)

    # -- handlers (run in the comm's thread: a helper subshell or the main shell) --------------
    def _on_cancel(self, _button: Any = None) -> None:
        try:
            self._handle.cancel()
        finally:
            self.wake()

    # -- updater thread only ----------------------------------------------------------------
    def poll(self) -> bool:
        self._handle.refresh()
        snap = snapshot(self._handle)
        self.last = snap
        self.render(snap)
        self._ok()
        self._note(
            (
                (snap.status, snap.current, snap.message, len(snap.output), snap.attempts),
                (snap.displayed_total, len(snap.displayed)),
            )
        )
        self.live = not snap.is_finished
        return self.live

    def render(self, snap: Snapshot, at: _dt.datetime | None = None) -> None:
        at = at or now()
        set_traits(self._header, value=header_html(snap))
        set_bar(self._bar, self._bar_value(snap), snap.status)
        set_traits(self._info, value=info_html(snap, at))
        if snap.errors:
            set_traits(self._error, value=errors_html(snap))
        show(self._error, bool(snap.errors))
        self._write_output(snap.output)
        self._render_displayed(snap)
        if snap.metadata or self._meta.layout.display != "none":
            set_traits(self._meta_html, value=metadata_html(snap.metadata))
            set_traits(self._meta, titles=(self._meta_title(snap),))
            show(self._meta, bool(snap.metadata))
        if snap.is_finished:
            set_traits(self._cancel, disabled=True)
            show(self._cancel, False)

    def _render_displayed(self, snap: Snapshot) -> None:
        """What the task displayed, in an area after its output: made (and put in the card) at
        its first display, so that a task that displays nothing costs no more comms."""
        area = self._displayed
        if area is None:
            if not snap.displayed_total:
                return
            area = self._displayed = DisplayArea(snap)
            children = list(self.root.children)
            children.insert(children.index(self._out) + 1, area.root)
            set_traits(self.root, children=tuple(children))
        else:
            area.render(snap)

    def _write_output(self, text: str, initial: bool = False) -> None:
        """Append what is new in the task's output tail with ``Output.append_stdout``."""
        if text == self._shown_output:
            return
        delta = text[len(self._shown_output) :] if text.startswith(self._shown_output) else None
        if (
            delta is not None
            and self._appends < OUTPUT_MAX_APPENDS
            and self._widget_chars + len(delta) <= OUTPUT_WIDGET_CHARS
        ):
            self._out.append_stdout(delta)
            self._appends += 1
            self._widget_chars += len(delta)
        else:
            # The task's tail rolled over, or the widget holds too much: start over with the
            # last part, at most once a second, so that a chatty task does not resend its
            # whole tail ten times a second.
            moment = time.monotonic()
            if not initial and moment - self._last_reset < 1.0:
                return
            self._last_reset = moment
            tail = text[-(OUTPUT_WIDGET_CHARS // 2) :]
            self._out.outputs = ()
            if tail:
                self._out.append_stdout(tail)
            self._appends = 1
            self._widget_chars = len(tail)
        self._shown_output = text
        updater_stats().messages += 1
        if not initial:
            show(self._out, bool(text))
