"""``%tasks``: a page of the store's tasks, as a live widget (filters, paging, cancel buttons)
or, outside a kernel, as a text table.

Both read ``Store.summaries()`` and ``Store.count()``: one indexed query per page, never
loading or unpickling a result, so a store of 100,000 tasks opens in ~0.1 s.
"""

from __future__ import annotations

import datetime as _dt
import html
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .. import _kernel
from .._model import Statuses, TaskStatus
from .._text import format_duration, format_usage
from .format import badge, elapsed, filter_bundle, fmt_when, html_bar, now
from .snapshot import STATUSES, UNFINISHED, Snapshot, summary_snapshot
from .updater import updater
from .widgets import BaseView, html_widget, ipywidgets, set_traits, shared, show

__all__ = ["Dashboard", "TaskSource", "dashboard_text", "live_dashboard", "row_html", "table_text"]


class _Summaries(Protocol):
    def summaries(
        self,
        status: Statuses,
        name: str | None,
        offset: int,
        limit: int | None,
        *,
        name_part: str | None = None,
    ) -> list[dict[str, Any]]: ...

    def count(self, status: Statuses, name: str | None, *, name_part: str | None = None) -> int: ...

    def usages(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


class TaskSource(Protocol):
    """What the dashboard reads and cancels through (an ``App``; views never import it)."""

    @property
    def store(self) -> _Summaries: ...

    def result(self, task_id: str) -> _Cancellable: ...


class Dashboard(BaseView):
    """``%tasks``: a page of the store's tasks with filters, paging and cancel buttons.

    It refreshes about once a second while the store holds unfinished tasks and goes quiet
    when none is left; a filter, a page button, the refresh button or a newly displayed task
    wakes it again. The name filter applies as the user types (``continuous_update``: each
    keystroke only marks the view dirty; the updater runs the query) and finds the names that
    contain the text, in any case.
    """

    def __init__(
        self,
        app: TaskSource,
        status: str | None = None,
        name: str | None = None,
        page_size: int = 20,
    ) -> None:
        super().__init__()
        w = ipywidgets()
        self._app = app
        self.page_size = page_size
        self.offset = 0
        self.min_period = 1.0
        self._dirty = False
        # _dirty and live change together under it: a keystroke handled while a poll runs
        # must not be lost to that poll's "nothing unfinished: quiet" (the updater would drop
        # the view with the new filter never applied)
        self._live_lock = threading.Lock()
        self._last: tuple[list[Snapshot], int] = ([], 0)
        self._row_ids: list[str | None] = [None] * page_size
        self._requested: set[str] = set()  # tasks whose Cancel was clicked (until they end)
        self._status = w.Dropdown(
            options=[("all", "")] + [(s, s) for s in STATUSES],
            value=(status or "").upper(),
            description="status",
            layout=w.Layout(width="14em"),
        )
        self._name = w.Text(
            value=name or "",
            placeholder="task name",
            continuous_update=True,
            layout=w.Layout(width="16em"),
        )
        self._prev = w.Button(description="◀", tooltip="newer", layout=w.Layout(width="3em"))
        self._next = w.Button(description="▶", tooltip="older", layout=w.Layout(width="3em"))
        self._refresh_btn = w.Button(
            icon="refresh", tooltip="refresh", layout=w.Layout(width="3em")
        )
        self._page = w.HTML(value="")
        self._page.add_class("nbtasks-page")
        self._status.observe(self._on_filter, names="value")
        self._name.observe(self._on_filter, names="value")
        self._prev.on_click(lambda _b: self._move(-1))
        self._next.on_click(lambda _b: self._move(+1))
        self._refresh_btn.on_click(lambda _b: self._rearm())
        # Not the rows' "cell" layout: its flex basis (54em) is a width in a row's HBox but a
        # height in the dashboard's VBox, which left ~700 px between the header and the rows.
        header = html_widget(row_html(None))
        header.add_class("nbtasks-dashboard-head")
        self._cells: list[Any] = []
        self._buttons: list[Any] = []
        self._rows: list[Any] = []
        for i in range(page_size):
            cell = html_widget("", shared("cell"))
            button = w.Button(
                description="Cancel",
                button_style="warning",
                style=shared("button"),
                layout=w.Layout(width="7em", visibility="hidden"),
            )
            button.add_class("nbtasks-row-cancel")
            button.on_click(lambda _b, i=i: self._cancel_row(i))
            row = w.HBox([cell, button], layout=w.Layout(display="none", align_items="center"))
            row.add_class("nbtasks-row")
            self._cells.append(cell)
            self._buttons.append(button)
            self._rows.append(row)
        self._empty = html_widget(
            '<i style="opacity:0.7">no matching tasks</i>', w.Layout(display="none")
        )
        self._empty.add_class("nbtasks-empty")
        self._problem = html_widget("", w.Layout(display="none"))
        controls = w.HBox(
            [self._status, self._name, self._prev, self._next, self._refresh_btn, self._page],
            layout=w.Layout(align_items="center"),
        )
        self.root = w.VBox([controls, header, *self._rows, self._empty, self._problem])
        self.root.add_class("nbtasks-dashboard")
        for control in (self._status, self._name, self._prev, self._next, self._refresh_btn):
            _kernel.route_comm_to_helper_subshell(control.comm)
        for button in self._buttons:
            _kernel.route_comm_to_helper_subshell(button.comm)
        self.poll()  # first page, in the cell thread, before the widget is displayed
        updater().watch(self)

    # -- store queries ------------------------------------------------------------------------
    def _query(self) -> tuple[list[Snapshot], int]:
        status = self._status.value or None
        part = (self._name.value or "").strip() or None
        store = self._app.store
        rows = store.summaries(
            status=status, name=None, offset=self.offset, limit=self.page_size, name_part=part
        )
        return _with_usage(store, rows), store.count(status=status, name=None, name_part=part)

    # -- handlers (comm threads) ----------------------------------------------------------------
    def _on_filter(self, _change: Any = None) -> None:
        self.offset = 0
        self._rearm()

    def _move(self, step: int) -> None:
        self.offset = max(0, self.offset + step * self.page_size)
        self._rearm()

    def _rearm(self) -> None:
        with self._live_lock:
            self._dirty = True
            self.live = True
        self.wake()

    def _cancel_row(self, i: int) -> None:
        task_id = self._row_ids[i]
        if task_id is None:
            return
        try:
            if self._app.result(task_id).cancel():
                self._requested.add(task_id)  # the updater renders it on the row's button
        finally:
            self._rearm()

    # -- rendering (the cell thread once, then the updater thread) --------------------------
    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The widget, plus a text table and a static HTML table (nbconvert)."""
        bundle = dict(self.root._repr_mimebundle_() or {})
        snaps, total = self._last
        bundle["text/plain"] = table_text(snaps, total)
        rows = "".join(row_html(snap) for snap in snaps)
        bundle["text/html"] = f'<div class="nbtasks-dashboard-static">{row_html(None)}{rows}</div>'
        return filter_bundle(bundle, include, exclude)

    def poll(self) -> bool:
        self._dirty = False
        snaps, total = self._query()
        self._last = (snaps, total)
        at = now()
        for i in range(self.page_size):
            snap = snaps[i] if i < len(snaps) else None
            self._row_ids[i] = snap.id if snap else None
            if snap is None:
                show(self._rows[i], False)
                continue
            set_traits(self._cells[i], value=row_html(snap, at))
            can_cancel = snap.status in UNFINISHED
            if not can_cancel:
                self._requested.discard(snap.id)
            requested = snap.id in self._requested
            set_traits(
                self._buttons[i],
                disabled=requested,
                description="requested" if requested else "Cancel",
            )
            set_traits(self._buttons[i].layout, visibility="visible" if can_cancel else "hidden")
            show(self._rows[i], True)
        first = self.offset + 1 if snaps else self.offset
        last = self.offset + len(snaps)
        set_traits(self._page, value=f"tasks {first}-{last} of {total}")
        show(self._empty, not snaps)
        set_traits(self._prev, disabled=self.offset == 0)
        set_traits(self._next, disabled=last >= total)
        self._ok()
        page_live = any(s.status in UNFINISHED for s in snaps)
        busy = page_live or bool(self._app.store.count(status=list(UNFINISHED), name=None))
        with self._live_lock:
            self.live = self._dirty or busy
        return self.live


def row_html(snap: Snapshot | None, at: _dt.datetime | None = None) -> str:
    """One row of the dashboard's grid (the header row for None)."""
    cols = "grid-template-columns:minmax(6em,14em) 6em 8em 11em 7em 5em 11em"
    style = f'style="display:grid;{cols};gap:0 8px;align-items:center;max-width:67em"'
    if snap is None:
        heads = ("task", "id", "status", "progress", "started", "duration", "usage")
        cells = "".join(f"<b>{h}</b>" for h in heads)
        return f'<div class="nbtasks-row-head" {style}>{cells}</div>'
    at = at or now()
    spent = elapsed(snap, at)
    pct = "" if snap.fraction is None else f" {100 * snap.fraction:.0f}%"
    if snap.status == TaskStatus.SUCCESSFUL:
        pct = " 100%"
    return (
        f'<div {style} data-task-id="{html.escape(snap.id)}">'
        f'<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap" '
        f'title="{html.escape(snap.name)}">{html.escape(snap.name)}</span>'
        f"<code>{html.escape(snap.short_id)}</code>"
        f"<span>{badge(snap.status)}</span>"
        f"<span>{html_bar(snap.fraction, snap.status, '7em')}{pct}</span>"
        f"<span>{html.escape(fmt_when(snap.started_at, at))}</span>"
        f"<span>{html.escape(format_duration(spent))}</span>"
        f'<span class="nbtasks-usage">{html.escape(format_usage(snap.usage))}</span></div>'
    )


def table_text(rows: Sequence[Snapshot], total: int) -> str:
    """The dashboard's page as a text table."""
    at = now()
    lines = [
        f"{'task':24} {'id':8}  {'status':11} {'progress':>8}  {'started':12} {'duration':8} usage"
    ]
    for snap in rows:
        pct = "" if snap.fraction is None else f"{100 * snap.fraction:.0f}%"
        if snap.status == TaskStatus.SUCCESSFUL:
            pct = "100%"
        lines.append(
            f"{snap.name[:24]:24} {snap.short_id:8}  {snap.status:11} {pct:>8}  "
            f"{fmt_when(snap.started_at, at):12} {format_duration(elapsed(snap, at)):8} "
            f"{format_usage(snap.usage)}".rstrip()
        )
    if not rows:
        lines.append("no matching tasks")
    lines.append(f"({len(rows)} of {total} tasks)")
    return "\n".join(lines)


def dashboard_text(
    app: TaskSource, status: str | None = None, name: str | None = None, limit: int = 20
) -> str:
    """``%tasks`` outside a kernel: the newest ``limit`` tasks as a text table (``name``: the
    names containing it, in any case, as the widget's filter)."""
    part = (name or "").strip() or None
    store = app.store
    rows = store.summaries(status=status, name=None, offset=0, limit=limit, name_part=part)
    return table_text(
        _with_usage(store, rows), store.count(status=status, name=None, name_part=part)
    )


def _with_usage(store: _Summaries, rows: Sequence[dict[str, Any]]) -> list[Snapshot]:
    """A page's snapshots with the finished tasks' usage (the usage column): their records
    read in one bulk query, as the listing's columns do not hold it."""
    ids = [str(r["id"]) for r in rows if r.get("finished_at") is not None]
    usages = store.usages(ids) if ids else {}
    return [summary_snapshot({**r, "usage": usages.get(str(r["id"]))}) for r in rows]


def live_dashboard(
    app: TaskSource, status: str | None = None, name: str | None = None, page_size: int = 20
) -> Dashboard:
    """Build the ``%tasks`` dashboard (in the cell thread); ``display()`` shows it."""
    view = Dashboard(app, status=status, name=name, page_size=page_size)
    updater().register(view)
    return view
