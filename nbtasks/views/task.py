"""The live widget of one task: header, bar, timing, errors, output tail, metadata, cancel."""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import time
from typing import Any

from .. import _kernel
from .._model import TaskStatus
from .format import (
    errors_html,
    fmt_when,
    header_html,
    hidden_lines_html,
    info_html,
    metadata_html,
    now,
    shows_bar,
    task_html,
    task_line,
)
from .rich import DisplayArea
from .snapshot import Snapshot, snapshot, value_text
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

__all__ = ["CANCEL_REQUESTED", "OUTPUT_MAX_APPENDS", "OUTPUT_WIDGET_CHARS", "TaskView"]

CANCEL_REQUESTED = "cancel requested"  # a Cancel button's label once clicked, until the end

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
        self._value: str | None = None  # the value's repr, read once (``value_text``)
        self._stopped = ""  # "kernel stopped: state as of HH:MM:SS" once the kernel went
        snap = self._with_value(snapshot(obj))
        at = now()
        self.task_id = snap.id
        self.last = snap
        self._final_shown = snap.is_finished  # the displayed fallback shows the end already
        self._header = html_widget(header_html(snap), shared("title"))
        self._header.add_class("nbtasks-header")
        self._cancel = cancel_button(
            "Cancel",
            not snap.is_finished,
            self._on_cancel,
            tooltip="Cancel this task",
            disabled=snap.is_finished,
        )
        self._bar = status_bar(self._bar_value(snap), snap.status)
        if not shows_bar(snap):
            self._bar.layout = shared("bar_hidden")
        self._info = html_widget(info_html(snap, at), shared("info"))
        self._info.add_class("nbtasks-info")
        self._error = html_widget(
            errors_html(snap), w.Layout(display=None if snap.errors else "none")
        )
        self._error.add_class("nbtasks-errors")
        # column-reverse: the box starts scrolled to its end and follows new lines, as a
        # terminal does (its one child, the output area, is what scrolls)
        self._out = w.Output(
            layout=w.Layout(
                display="flex" if snap.output else "none",
                flex_flow="column-reverse",
                max_height="14em",
                overflow="auto",
                border="1px solid var(--jp-border-color2, #ddd)",
            )
        )
        self._out.add_class("nbtasks-output")
        self._out_note = html_widget("", shared("hidden"))
        self._out_note.add_class("nbtasks-output-note")
        self._shown_output = ""
        self._appends = 0
        self._widget_chars = 0
        self._last_reset = 0.0
        self._hidden_lines = 0  # lines of the output before what the Output widget holds
        self._write_output(snap.output, initial=True)
        self._displayed: DisplayArea | None = None  # made at the task's first display
        self._meta_html = html_widget(metadata_html(snap.metadata), shared("scroll"))
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
            self._out_note,
            self._out,
            self._meta,
            self._problem,
        )
        self._render_displayed(snap)
        self.live = not snap.is_finished
        self._cancel_routed = _kernel.route_comm_to_helper_subshell(self._cancel.comm)

    def static_bundle(self) -> dict[str, Any]:
        """text/plain and text/html of the last snapshot, to go beside the widget."""
        text, page = task_line(self.last), task_html(self.last)
        if self._stopped:
            text += f" ({self._stopped})"
            page += f'<div class="nbtasks-stopped" style="opacity:0.75">{self._stopped}</div>'
        return {"text/plain": text, "text/html": page}

    def _with_value(self, snap: Snapshot) -> Snapshot:
        """``snap`` with the short repr of its value, once the task succeeded (read once)."""
        if snap.status != TaskStatus.SUCCESSFUL:
            return snap
        if self._value is None:
            self._value = value_text(self._handle)
        return dataclasses.replace(snap, value=self._value)

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
        """Ask the task to stop and say so on the button at once: a thread task stops only at
        its next ``progress()``/``check_cancelled()``, and until then it stays RUNNING. The
        button's traits are set here, in the comm handler (never a task's thread), because a
        click must show it was taken even when the updater has nothing else to render."""
        try:
            if self._handle.cancel():
                set_traits(
                    self._cancel,
                    disabled=True,
                    description=CANCEL_REQUESTED,
                    tooltip="Cancel requested: the task stops at its next progress() or check",
                )
        finally:
            self.wake()

    # -- updater thread only ----------------------------------------------------------------
    def poll(self) -> bool:
        self._handle.refresh()
        snap = self._with_value(snapshot(self._handle))
        self.last = snap
        self.render(snap)
        if snap.is_finished and not self._final_shown:
            self._final_shown = True
            self.update_fallback()  # what a saved notebook shows: the end, not the start
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
        set_traits(self._bar, layout=shared("bar" if shows_bar(snap) else "bar_hidden"))
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

    def stopped(self) -> None:
        """The kernel is shutting down: the widget keeps showing this, so it says that this is
        the state as of now and that nothing will change it any more (no live Cancel)."""
        self._stopped = f"kernel stopped: state as of {fmt_when(now())}"
        snap = self.last
        set_traits(
            self._info,
            value=info_html(snap)
            + f' · <span class="nbtasks-stopped" style="opacity:0.75">{self._stopped}</span>',
        )
        set_traits(self._cancel, disabled=True, tooltip="the kernel stopped")
        self.update_fallback()

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
            if len(tail) < len(text):  # start at a line's beginning
                cut = tail.find("\n") + 1
                tail = tail[cut:] if 0 < cut < len(tail) else tail
            self._hidden_lines = text[: len(text) - len(tail)].count("\n")
            note = hidden_lines_html(self._hidden_lines)
            set_traits(self._out_note, value=note, layout=shared("plain" if note else "hidden"))
            self._out.outputs = ()
            if tail:
                self._out.append_stdout(tail)
            self._appends = 1
            self._widget_chars = len(tail)
        self._shown_output = text
        updater_stats().messages += 1
        if not initial:
            set_traits(self._out.layout, display="flex" if text else "none")
