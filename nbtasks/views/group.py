"""The live widget of a group: one bar split by status (a segment per status, as wide as its
share of the members) with counts per status, expanding to a table of its members."""

from __future__ import annotations

import copy
import html
import time
from collections.abc import Mapping
from typing import Any

from .. import _kernel
from .._text import short_id
from . import widgets as ui
from .format import (
    badge,
    counts_html,
    fmt_when,
    group_html,
    group_line,
    members_html,
    now,
    stacked_bar_html,
)
from .snapshot import UNFINISHED, group_counts, group_status, reused_count, snapshot
from .widgets import BaseView, html_widget, set_traits

__all__ = ["GroupView"]

TABLE_PERIOD = 0.5  # seconds between renderings of the members' table while it is open


class GroupView(BaseView):
    """One bar split by status, with counts per status; expands to a table of its members."""

    def __init__(self, obj: Any) -> None:
        super().__init__()
        w = ui.ipywidgets()
        _kernel.warn_if_unsupported()
        self._group = obj
        self.group_id = str(getattr(obj, "id", "?"))
        # private copies of the members' handles: refreshing them leaves the user's alone
        self._members = [copy.copy(r) for r in obj.results]
        self._snaps = [snapshot(m) for m in self._members]
        counts, total, _ = group_counts(self._snaps)
        status = group_status(counts, total)
        self._title = html_widget(self._title_html(status), ui.shared("grow"))
        self._cancel = ui.cancel_button("Cancel all", status in UNFINISHED, self._on_cancel)
        self._bar = html_widget(stacked_bar_html(counts, total), ui.shared("bar"))
        self._bar.add_class("nbtasks-bar")
        reused = reused_count(self._snaps)
        self._counts = html_widget(counts_html(counts, total, reused), ui.shared("info"))
        self._counts.add_class("nbtasks-counts")
        self._table = html_widget("", ui.shared("scroll"))
        self._table.add_class("nbtasks-members-box")
        self._expand = w.Accordion(
            children=[self._table], titles=(f"members ({total})",), selected_index=None
        )
        self._expand.observe(self._on_expand, names="selected_index")
        self._problem = html_widget("", w.Layout(display="none"))
        self.root = ui.card(
            "group",
            [self._title, self._cancel],
            [self._bar, self._counts],
            self._expand,
            self._problem,
        )
        self.live = status in UNFINISHED
        self._final_shown = not self.live  # the displayed fallback shows the end already
        self._stopped = ""
        self._table_due = 0.0
        _kernel.route_comm_to_helper_subshell(self._cancel.comm)

    def static_bundle(self) -> dict[str, Any]:
        """text/plain and text/html of the last snapshots, to go beside the widget."""
        snaps = list(self._snaps)
        text, page = group_line(self.group_id, snaps), group_html(self.group_id, snaps)
        if self._stopped:
            text += f" ({self._stopped})"
            page += f'<div class="nbtasks-stopped" style="opacity:0.75">{self._stopped}</div>'
        return {"text/plain": text, "text/html": page}

    def stopped(self) -> None:
        """The kernel is shutting down: say the counts are as of now; no live Cancel."""
        self._stopped = f"kernel stopped: state as of {fmt_when(now())}"
        counts, total, _ = group_counts(self._snaps)
        set_traits(
            self._counts,
            value=counts_html(counts, total, reused_count(self._snaps))
            + f' · <span class="nbtasks-stopped" style="opacity:0.75">{self._stopped}</span>',
        )
        set_traits(self._cancel, disabled=True, tooltip="the kernel stopped")
        self.update_fallback()

    def _title_html(self, status: str) -> str:
        return (
            f"<b>group</b> <code class='nbtasks-id' title='{html.escape(self.group_id)}' "
            f"style='opacity:0.7'>{html.escape(short_id(self.group_id))}</code> {badge(status)}"
        )

    def _on_cancel(self, _button: Any = None) -> None:
        try:
            self._group.cancel()
        finally:
            self.wake()

    def _on_expand(self, change: Mapping[str, Any]) -> None:
        if change.get("new") is not None:  # render the table even if the group is finished
            self._table_due = 0.0
            self.wake()

    def poll(self) -> bool:
        for i, member in enumerate(self._members):
            if not self._snaps[i].is_finished:  # a finished member never changes again
                member.refresh()
                self._snaps[i] = snapshot(member)
        counts, total, fraction = group_counts(self._snaps)
        status = group_status(counts, total)
        set_traits(self._title, value=self._title_html(status))
        set_traits(self._bar, value=stacked_bar_html(counts, total))
        set_traits(self._counts, value=counts_html(counts, total, reused_count(self._snaps)))
        finished = status not in UNFINISHED
        if finished:
            ui.show(self._cancel, False)
        moment = time.monotonic()
        if self._expand.selected_index is not None and (finished or moment >= self._table_due):
            set_traits(self._table, value=members_html(self._snaps, now()))
            self._table_due = moment + TABLE_PERIOD
        if finished and not self._final_shown:
            self._final_shown = True
            self.update_fallback()  # what a saved notebook shows: the end, not the start
        self._ok()
        self._note((tuple(counts.values()), round(fraction, 3)))
        self.live = not finished
        return self.live
