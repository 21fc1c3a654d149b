"""Views of tasks: text, HTML and live ipywidgets, and the one view updater thread.

How a widget stays live (DESIGN.md principle 9, SPEC §8):

- A ``TaskResult``/``GroupResult`` shown in a kernel builds its widget **in the cell thread**
  (``mimebundle()`` is called by IPython's display formatter there), registers it with the
  per-kernel ``_Updater`` and returns the widget's mimebundle.
- The updater is a single daemon thread.  About ten times a second it asks every live view to
  ``poll()``: the view reloads a private copy of its handle (``refresh()``: from memory for tasks
  this process runs, from the store otherwise), turns it into a frozen ``Snapshot`` and sets only
  the widget traits whose value changed (one comm message per changed widget, ``hold_sync``).
  The view of a finished task sends its final state and is dropped; when no view is live the
  thread ends, and the next registration starts a new one.  A view whose poll is expensive (a
  big group, a dashboard over a big store) is polled less often (``_COST_FACTOR``), and all
  views together share a budget of ``MAX_POLLS_PER_SECOND`` (up to 20 live widgets get 10
  updates a second each; 50 get ~3.4), so the updater's CPU stays bounded: measured with 50
  live task widgets, ~330 widget updates a second for ~6-7 % of one core.
- Task threads and worker processes never touch a widget; they only update the task's state.
  Task output reaches the Output widget through ``Output.append_stdout`` called by the updater,
  never through ``with out:`` (ipywidgets#4020).
- The updater thread is the only writer of the traits it renders.  Frontend-edited traits
  (filters, accordions) are only read by it; button handlers only write cancel requests and
  nudge the updater.  Cancel buttons are routed to a helper subshell where the kernel allows it
  (``_kernel.route_comm_to_helper_subshell``), so they work while another cell runs.

Outside a kernel (terminal IPython, plain Python) ``mimebundle()`` returns text and HTML and
never imports ipywidgets.  Inside one the widget bundle also carries text/plain and a static
text/html rendering, for nbconvert and for frontends without the widget manager.
"""

from __future__ import annotations

import atexit
import copy
import datetime as _dt
import html
import json
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import _kernel
from ._result import short_id

__all__ = [
    "Dashboard",
    "GroupView",
    "Snapshot",
    "TaskView",
    "dashboard",
    "html_bundle",
    "mimebundle",
    "snapshot",
    "summary_line",
    "updater_stats",
]

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
TERMINAL = frozenset({"SUCCESSFUL", "FAILED", "CANCELLED", "INTERRUPTED"})
UNFINISHED = ("RUNNING", "READY")
STATUSES = ("READY", "RUNNING", "SUCCESSFUL", "FAILED", "CANCELLED", "INTERRUPTED")
STATUS_COLORS = {
    "READY": "#757575",
    "RUNNING": "#1565c0",
    "SUCCESSFUL": "#2e7d32",
    "FAILED": "#c62828",
    "CANCELLED": "#e65100",
    "INTERRUPTED": "#6a1b9a",
}
BAR_STYLES = {
    "READY": "info",
    "RUNNING": "",
    "SUCCESSFUL": "success",
    "FAILED": "danger",
    "CANCELLED": "warning",
    "INTERRUPTED": "warning",
}

PERIOD = 0.1  # seconds between updater passes: at most ~10 updates a second per widget
SLOW_PERIOD = 1.0  # for views whose snapshot has not changed for IDLE_AFTER seconds
IDLE_AFTER = 10.0
_COST_FACTOR = 10.0  # a view costing c seconds per poll is polled at most every c*10 s
# All live views together are polled at most this often per second: with up to 20 widgets each
# one updates 10 times a second; with more, each one less often.  One poll sends ~2 messages,
# ~100 µs of kernel CPU each (measured: tests/integration/test_kernel.py, 50 live widgets).
MAX_POLLS_PER_SECOND = 200.0
OUTPUT_WIDGET_CHARS = 16_000  # tail kept in an Output widget before it is compacted
OUTPUT_MAX_APPENDS = 200  # appends before compacting the Output widget's outputs
METADATA_CHARS = 8_000
TRACEBACK_CHARS = 20_000
GROUP_TABLE_ROWS = 200
MAX_POLL_FAILURES = 20  # consecutive failed polls before a view gives up (the error is shown)


# ----------------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class Snapshot:
    """What a view renders of one task: plain data, read once from a TaskResult."""

    id: str
    name: str
    status: str
    enqueued_at: _dt.datetime | None = None
    started_at: _dt.datetime | None = None
    finished_at: _dt.datetime | None = None
    current: float | None = None
    total: float | None = None
    fraction: float | None = None
    message: str | None = None
    rate: float | None = None
    eta: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    output: str = ""
    errors: tuple[tuple[str, str], ...] = ()
    attempts: int = 0
    state: str | None = None
    reason: str | None = None  # why it was cancelled or interrupted

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def short_id(self) -> str:
        return short_id(self.id)


def _status_str(value: Any) -> str:
    raw = getattr(value, "value", value)
    return str(raw) if raw is not None else "READY"


def _to_datetime(value: Any) -> _dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(float(value), tz=_dt.UTC)
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)
    return None


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _progress_fields(progress: Any) -> dict[str, Any]:
    if progress is None:
        return {}
    if isinstance(progress, list | tuple):  # the store's JSON form: [current, total, msg, rate]
        progress = dict(zip(("current", "total", "message", "rate"), progress, strict=False))
    get: Callable[[str], Any]
    if isinstance(progress, Mapping):
        get = progress.get
    else:

        def get(key: str) -> Any:
            return getattr(progress, key, None)

    current, total = _num(get("current")), _num(get("total"))
    fraction = _num(get("fraction"))
    if fraction is None and current is not None and total:
        fraction = current / total
    if fraction is not None:
        fraction = min(max(fraction, 0.0), 1.0)
    message = get("message")
    rate, eta = _num(get("rate")), _num(get("eta"))
    if eta is None and rate and total is not None and current is not None:
        eta = max(0.0, (total - current) / rate)
    return {
        "current": current,
        "total": total,
        "fraction": fraction,
        "message": None if message is None else str(message),
        "rate": rate,
        "eta": eta,
    }


def snapshot(obj: Any) -> Snapshot:
    """Read a TaskResult's fields (as they are now: no refresh) into a Snapshot."""
    errors: list[tuple[str, str]] = []
    for err in getattr(obj, "errors", None) or ():
        if isinstance(err, Mapping):
            errors.append((str(err.get("exception_class_path", "")), str(err.get("traceback", ""))))
        else:
            errors.append(
                (
                    str(getattr(err, "exception_class_path", "") or ""),
                    str(getattr(err, "traceback", "") or ""),
                )
            )
    metadata = getattr(obj, "metadata", None)
    attempts = getattr(obj, "attempts", None)
    if not isinstance(attempts, int):
        attempts = len(getattr(obj, "worker_ids", None) or ())
    state = getattr(obj, "state", None)
    return Snapshot(
        id=str(getattr(obj, "id", "?")),
        name=str(getattr(obj, "task_name", None) or "?"),
        status=_status_str(getattr(obj, "status", None)),
        enqueued_at=_to_datetime(getattr(obj, "enqueued_at", None)),
        started_at=_to_datetime(getattr(obj, "started_at", None)),
        finished_at=_to_datetime(getattr(obj, "finished_at", None)),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        output=str(getattr(obj, "output", None) or ""),
        errors=tuple(errors),
        attempts=attempts,
        state=None if state is None else str(state),
        reason=_opt_str(getattr(obj, "reason", None)),
        **_progress_fields(getattr(obj, "progress", None)),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _summary_snapshot(row: Mapping[str, Any]) -> Snapshot:
    """A Snapshot from one row of ``Store.summaries()`` (or a TaskResult)."""
    if not isinstance(row, Mapping):
        return snapshot(row)
    return Snapshot(
        id=str(row.get("id", "?")),
        name=str(row.get("task_name") or row.get("name") or "?"),
        status=_status_str(row.get("status")),
        enqueued_at=_to_datetime(row.get("enqueued_at")),
        started_at=_to_datetime(row.get("started_at")),
        finished_at=_to_datetime(row.get("finished_at")),
        **_progress_fields(row.get("progress")),
    )


def _is_group(obj: Any) -> bool:
    return hasattr(obj, "results") and hasattr(obj, "completed_count")


# ----------------------------------------------------------------------------- formatting
def fmt_duration(seconds: float | None) -> str:
    """3.2 s, 42 s, 12:05, 1:02:03."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_rate(rate: float | None) -> str:
    if rate is None or rate <= 0:
        return ""
    return f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s/it"


def fmt_number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def fmt_when(when: _dt.datetime | None, now: _dt.datetime | None = None) -> str:
    """Local time of day for today, else the date and time."""
    if when is None:
        return ""
    local = when.astimezone()
    now = (now or _dt.datetime.now(_dt.UTC)).astimezone()
    return (
        local.strftime("%H:%M:%S")
        if local.date() == now.date()
        else local.strftime("%Y-%m-%d %H:%M")
    )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def elapsed(snap: Snapshot, now: _dt.datetime | None = None) -> float | None:
    """Seconds running (or run, once finished); None before the task started."""
    if snap.started_at is None:
        return None
    end = snap.finished_at or now or _now()
    return (end - snap.started_at).total_seconds()


def progress_text(snap: Snapshot) -> str:
    """'42/100 (42%) · message', or '' when the task reported no progress."""
    parts: list[str] = []
    if snap.current is not None:
        if snap.total:
            pct = f" ({100 * (snap.fraction or 0):.0f}%)"
            parts.append(f"{fmt_number(snap.current)}/{fmt_number(snap.total)}{pct}")
        else:
            parts.append(f"{fmt_number(snap.current)} done")
    elif snap.fraction is not None:
        parts.append(f"{100 * snap.fraction:.0f}%")
    if snap.message:
        parts.append(snap.message)
    return " · ".join(parts)


def timing_text(snap: Snapshot, now: _dt.datetime | None = None) -> str:
    """'elapsed 3.2 s · 12.3/s · ETA 8.1 s', 'waiting 2.0 s', 'took 5.3 s'."""
    now = now or _now()
    if snap.status == "READY":
        if snap.enqueued_at is None:
            return "waiting"
        return f"waiting {fmt_duration((now - snap.enqueued_at).total_seconds())}"
    spent = elapsed(snap, now)
    if snap.is_finished:
        took = f"took {fmt_duration(spent)}" if spent is not None else ""
        if (
            snap.reason
            and snap.status in ("CANCELLED", "INTERRUPTED")
            and (snap.reason.lower() not in ("cancelled", "interrupted"))
        ):
            return f"{snap.status.lower()}: {snap.reason}" + (f" · {took}" if took else "")
        return took
    parts = [f"elapsed {fmt_duration(spent)}"] if spent is not None else []
    if rate := fmt_rate(snap.rate):
        parts.append(rate)
    if snap.eta is not None:
        parts.append(f"ETA {fmt_duration(snap.eta)}")
    return " · ".join(parts)


def summary_line(obj: Any) -> str:
    """One line of text for a TaskResult or GroupResult (terminal IPython, logs)."""
    if _is_group(obj):
        return _group_line(str(getattr(obj, "id", "?")), [snapshot(r) for r in obj.results])
    return _task_line(snapshot(obj))


def _task_line(snap: Snapshot) -> str:
    parts = [f"<TaskResult {snap.name} {snap.short_id} {snap.status}"]
    if text := progress_text(snap):
        parts.append(text)
    if snap.errors and snap.status == "FAILED":
        parts.append(snap.errors[-1][0].rsplit(".", 1)[-1])
    return " ".join(parts) + ">"


def _group_line(group_id: str, snaps: Sequence[Snapshot]) -> str:
    counts, total, fraction = _group_counts(snaps)
    done = sum(counts.get(s, 0) for s in TERMINAL)
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (
        f"<GroupResult {short_id(group_id)} {done}/{total} finished"
        f" ({100 * fraction:.0f}%){': ' + tally if tally else ''}>"
    )


def _badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#757575")
    return (
        f'<span class="nbtasks-status" data-status="{html.escape(status)}" '
        f'style="background:{color};color:#fff;border-radius:3px;padding:0 6px;'
        f'font-size:0.85em;font-weight:600;letter-spacing:0.03em">{html.escape(status)}</span>'
    )


def _header_html(snap: Snapshot) -> str:
    retries = ""
    if snap.attempts > 1:
        retries = (
            f' <span class="nbtasks-retries" title="attempts: {snap.attempts}" '
            f'style="color:#e65100">retry {snap.attempts - 1}</span>'
        )
    return (
        f'<b class="nbtasks-name">{html.escape(snap.name)}</b> '
        f'<code class="nbtasks-id" title="{html.escape(snap.id)}" style="opacity:0.7">'
        f"{html.escape(snap.short_id)}</code> {_badge(snap.status)}{retries}"
    )


def _info_html(snap: Snapshot, now: _dt.datetime | None = None) -> str:
    progress = html.escape(progress_text(snap))
    timing = html.escape(timing_text(snap, now))
    sep = " · " if progress and timing else ""
    return (
        f'<span class="nbtasks-progress-text">{progress}</span>{sep}'
        f'<span class="nbtasks-timing" style="opacity:0.75">{timing}</span>'
    )


def _errors_html(snap: Snapshot) -> str:
    if not snap.errors:
        return ""
    rows = []
    for number, (path, _tb) in enumerate(snap.errors, 1):
        rows.append(f"attempt {number}: <code>{html.escape(path)}</code>")
    last_tb = snap.errors[-1][1]
    if len(last_tb) > TRACEBACK_CHARS:
        last_tb = "…" + last_tb[-TRACEBACK_CHARS:]
    opened = " open" if snap.status == "FAILED" else ""
    return (
        f'<div class="nbtasks-error" style="color:#c62828">{"<br>".join(rows)}</div>'
        f"<details{opened}><summary>traceback</summary>"
        f'<pre class="nbtasks-traceback" style="font-size:0.85em;white-space:pre-wrap">'
        f"{html.escape(last_tb)}</pre></details>"
    )


def _metadata_html(metadata: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(metadata, indent=1, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(metadata)
    if len(text) > METADATA_CHARS:
        text = text[:METADATA_CHARS] + "\n…"
    return f'<pre class="nbtasks-metadata" style="font-size:0.85em">{html.escape(text)}</pre>'


def _html_bar(fraction: float | None, status: str, width: str = "100%") -> str:
    pct = 100.0 if status == "SUCCESSFUL" else 100.0 * (fraction or 0.0)
    color = STATUS_COLORS.get(status, "#1565c0")
    return (
        f'<div style="display:inline-block;width:{width};height:0.8em;background:#e0e0e0;'
        f'border-radius:2px;vertical-align:middle"><div style="width:{pct:.1f}%;height:100%;'
        f'background:{color};border-radius:2px"></div></div>'
    )


def task_html(snap: Snapshot, now: _dt.datetime | None = None) -> str:
    """A static HTML rendering of a task (nbconvert, frontends without widgets)."""
    body = [
        f"<div>{_header_html(snap)}</div>",
        f"<div>{_html_bar(snap.fraction, snap.status, '20em')} {_info_html(snap, now)}</div>",
    ]
    if snap.errors:
        body.append(_errors_html(snap))
    if snap.output:
        tail = snap.output[-2000:]
        body.append(
            f'<pre style="font-size:0.85em;max-height:12em;overflow:auto">{html.escape(tail)}</pre>'
        )
    return f'<div class="nbtasks-task-static">{"".join(body)}</div>'


def group_html(obj: Any) -> str:
    return _group_html(str(getattr(obj, "id", "?")), [snapshot(r) for r in obj.results])


def _group_html(group_id: str, snaps: Sequence[Snapshot]) -> str:
    counts, total, fraction = _group_counts(snaps)
    return (
        f'<div class="nbtasks-group-static"><b>group</b> <code>'
        f"{html.escape(short_id(group_id))}</code> "
        f"{_html_bar(fraction, _group_status(counts, total), '20em')} "
        f"{html.escape(_counts_text(counts, total))}</div>"
    )


def html_bundle(obj: Any) -> dict[str, Any]:
    """text/plain + text/html for anything but a live kernel."""
    if _is_group(obj):
        snaps = [snapshot(r) for r in obj.results]
        group_id = str(getattr(obj, "id", "?"))
        return {
            "text/plain": _group_line(group_id, snaps),
            "text/html": _group_html(group_id, snaps),
        }
    snap = snapshot(obj)
    return {"text/plain": _task_line(snap), "text/html": task_html(snap)}


def _filter_bundle(
    bundle: dict[str, Any], include: Iterable[str] | None, exclude: Iterable[str] | None
) -> dict[str, Any]:
    if include:
        wanted = set(include)
        bundle = {k: v for k, v in bundle.items() if k in wanted}
    if exclude:
        unwanted = set(exclude)
        bundle = {k: v for k, v in bundle.items() if k not in unwanted}
    return bundle


# ----------------------------------------------------------------------------- entry point
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
            return _filter_bundle(bundle, include, exclude)
    return _filter_bundle(html_bundle(obj), include, exclude)


_views_lock = threading.Lock()
_views: dict[str, _View] = {}
_MAX_CACHED_VIEWS = 2000


def view_for(obj: Any) -> _View:
    """The widget view of a TaskResult or GroupResult (one per task id and kernel)."""
    key = ("group:" if _is_group(obj) else "task:") + str(getattr(obj, "id", id(obj)))
    with _views_lock:
        view = _views.get(key)
    if view is None:
        view = GroupView(obj) if _is_group(obj) else TaskView(obj)
        with _views_lock:
            if len(_views) >= _MAX_CACHED_VIEWS:  # forget the oldest finished views
                for old in [k for k, v in _views.items() if not v.live][: _MAX_CACHED_VIEWS // 4]:
                    del _views[old]
            _views.setdefault(key, view)
            view = _views[key]
    updater().register(view)
    return view


# ----------------------------------------------------------------------------- widgets
def _widgets() -> Any:
    """ipywidgets, imported on first use (never at ``import nbtasks``)."""
    import ipywidgets

    return ipywidgets


_shared_widgets: dict[str, Any] = {}


def _shared(name: str) -> Any:
    """A layout or style widget that never changes, shared by every view of this kernel.

    Each ipywidgets widget opens a comm (a ``comm_open`` message, a model in the frontend), and
    by default every widget gets a Layout and a Style of its own: ~30 comms for one task view.
    Sharing the ones that never change halves that, which matters when a cell shows 50 tasks
    at once (a burst of comm_opens can exceed the iopub socket's high-water mark).
    """
    widget = _shared_widgets.get(name)
    if widget is None or getattr(widget, "comm", None) is None:  # none yet, or closed
        w = _widgets()
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
            "bar": lambda: w.Layout(width="auto", flex="1 1 40%", min_width="8em"),
            "info": lambda: w.Layout(flex="1 1 60%"),
            "plain": lambda: w.Layout(),
            "cell": lambda: w.Layout(flex="0 1 54em"),
        }
        widget = _shared_widgets[name] = factories[name]()
    return widget


def _html(value: str = "", layout: Any = None) -> Any:
    """An HTML widget with the shared style (and the shared plain layout unless given)."""
    return _widgets().HTML(
        value=value,
        style=_shared("html"),
        layout=layout if layout is not None else _shared("plain"),
    )


def _set(widget: Any, **traits: Any) -> int:
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
    _stats.messages += 1
    return 1


def _show(widget: Any, visible: bool) -> int:
    return _set(widget.layout, display=None if visible else "none")


def _copy_handle(obj: Any) -> Any:
    """A private handle the updater may refresh without changing the user's snapshot.

    A shallow copy of the instance's fields: not ``copy.copy``, which goes through
    ``TaskResult.__reduce__`` (made for pickling) and would look the task up again, opening
    an App for a store other than the default app's.
    """
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        try:
            return copy.copy(obj)
        except Exception:
            return obj
    clone = object.__new__(type(obj))
    clone.__dict__.update(fields)
    return clone


def _refresh(handle: Any) -> None:
    refresh = getattr(handle, "refresh", None)
    if callable(refresh):
        refresh()


class _View(Protocol):
    root: Any
    live: bool
    next_due: float

    def poll(self) -> bool: ...

    def failed(self, exc: BaseException) -> bool: ...

    def static_bundle(self) -> dict[str, Any]: ...


class _BaseView:
    """Shared bookkeeping: liveness, poll scheduling, error display (principle 12)."""

    root: Any
    _problem: Any

    def __init__(self) -> None:
        self.live = True
        self.next_due = 0.0
        self.min_period = PERIOD
        self._failures = 0
        self._last_change = time.monotonic()
        self._last_key: Any = None

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
            _set(
                self._problem,
                value=f'<span style="color:#c62828">nbtasks view updater error ({note}): '
                f"<code>{html.escape(text)}</code></span>",
            )
            _show(self._problem, True)
        except Exception:
            pass
        self.live = not give_up
        return self.live

    def _ok(self) -> None:
        if self._failures:
            self._failures = 0
            _show(self._problem, False)


class TaskView(_BaseView):
    """The live widget of one task: header, bar, timing, error, output tail, metadata, cancel."""

    def __init__(self, obj: Any) -> None:
        super().__init__()
        w = _widgets()
        _kernel.warn_if_unsupported()
        self._handle = _copy_handle(obj)
        snap = snapshot(obj)
        now = _now()
        self.task_id = snap.id
        self.last = snap
        self._header = _html(_header_html(snap), _shared("grow"))
        self._header.add_class("nbtasks-header")
        self._cancel = w.Button(
            description="Cancel",
            icon="stop",
            button_style="warning",
            tooltip="Cancel this task",
            style=_shared("button"),
            disabled=snap.is_finished,
            layout=w.Layout(width="auto", display="none" if snap.is_finished else None),
        )
        self._cancel.add_class("nbtasks-cancel")
        self._cancel.on_click(self._on_cancel)
        self._bar = w.FloatProgress(
            value=self._bar_value(snap),
            min=0.0,
            max=1.0,
            bar_style=BAR_STYLES.get(snap.status, ""),
            layout=_shared("bar"),
            style=_shared("progress"),
        )
        self._bar.add_class("nbtasks-bar")
        self._info = _html(_info_html(snap, now), _shared("info"))
        self._info.add_class("nbtasks-info")
        self._error = _html(_errors_html(snap), w.Layout(display=None if snap.errors else "none"))
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
        self._meta_html = _html(_metadata_html(snap.metadata))
        self._meta = w.Accordion(
            children=[self._meta_html],
            titles=(self._meta_title(snap),),
            selected_index=None,
            layout=w.Layout(display=None if snap.metadata else "none"),
        )
        self._meta.add_class("nbtasks-metadata")
        self._problem = _html("", w.Layout(display="none"))
        self.root = w.VBox(
            [
                w.HBox([self._header, self._cancel], layout=_shared("row")),
                w.HBox([self._bar, self._info], layout=_shared("row")),
                self._error,
                self._out,
                self._meta,
                self._problem,
            ],
            layout=_shared("box"),
        )
        self.root.add_class("nbtasks-task")
        self.live = not snap.is_finished
        self._cancel_routed = _kernel.route_comm_to_helper_subshell(self._cancel.comm)

    def static_bundle(self) -> dict[str, Any]:
        """text/plain and text/html of the last snapshot, to go beside the widget."""
        return {"text/plain": _task_line(self.last), "text/html": task_html(self.last)}

    @staticmethod
    def _meta_title(snap: Snapshot) -> str:
        n = len(snap.metadata)
        return f"metadata ({n} key{'s' if n != 1 else ''})"

    @staticmethod
    def _bar_value(snap: Snapshot) -> float:
        if snap.status == "SUCCESSFUL":
            return 1.0
        return float(snap.fraction or 0.0)

    # -- handlers (run in the comm's thread: a helper subshell or the main shell) --------------
    def _on_cancel(self, _button: Any = None) -> None:
        try:
            self._handle.cancel()
        finally:
            self.live = True
            updater().register(self, now=True)

    # -- updater thread only ----------------------------------------------------------------
    def poll(self) -> bool:
        _refresh(self._handle)
        snap = snapshot(self._handle)
        self.last = snap
        self.render(snap)
        self._ok()
        self._note((snap.status, snap.current, snap.message, len(snap.output), snap.attempts))
        self.live = not snap.is_finished
        return self.live

    def render(self, snap: Snapshot, now: _dt.datetime | None = None) -> None:
        now = now or _now()
        _set(self._header, value=_header_html(snap))
        _set(self._bar, value=self._bar_value(snap), bar_style=BAR_STYLES.get(snap.status, ""))
        _set(self._info, value=_info_html(snap, now))
        if snap.errors:
            _set(self._error, value=_errors_html(snap))
        _show(self._error, bool(snap.errors))
        self._write_output(snap.output)
        if snap.metadata or self._meta.layout.display != "none":
            _set(self._meta_html, value=_metadata_html(snap.metadata))
            _set(self._meta, titles=(self._meta_title(snap),))
            _show(self._meta, bool(snap.metadata))
        if snap.is_finished:
            _set(self._cancel, disabled=True)
            _show(self._cancel, False)

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
            now = time.monotonic()
            if not initial and now - self._last_reset < 1.0:
                return
            self._last_reset = now
            tail = text[-(OUTPUT_WIDGET_CHARS // 2) :]
            self._out.outputs = ()
            if tail:
                self._out.append_stdout(tail)
            self._appends = 1
            self._widget_chars = len(tail)
        self._shown_output = text
        _stats.messages += 1
        if not initial:
            _show(self._out, bool(text))


def _group_counts(snaps: Sequence[Snapshot]) -> tuple[dict[str, int], int, float]:
    counts = {s: 0 for s in STATUSES}
    progress = 0.0
    for snap in snaps:
        counts[snap.status] = counts.get(snap.status, 0) + 1
        if snap.is_finished:
            progress += 1.0
        elif snap.fraction is not None:
            progress += snap.fraction
    total = len(snaps)
    return counts, total, (progress / total if total else 1.0)


def _group_status(counts: Mapping[str, int], total: int) -> str:
    """RUNNING while anything runs (or some ran and some wait), else the worst outcome."""
    running, ready = counts.get("RUNNING", 0), counts.get("READY", 0)
    if running or (ready and ready != total):
        return "RUNNING"
    if ready:
        return "READY"
    for status in ("FAILED", "INTERRUPTED", "CANCELLED"):
        if counts.get(status):
            return status
    return "SUCCESSFUL"


def _counts_text(counts: Mapping[str, int], total: int) -> str:
    done = sum(counts.get(s, 0) for s in TERMINAL)
    tally = " · ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"{done}/{total} finished" + (f" · {tally}" if tally else "")


def _counts_html(counts: Mapping[str, int], total: int) -> str:
    done = sum(counts.get(s, 0) for s in TERMINAL)
    chips = " ".join(
        f'<span class="nbtasks-count" data-status="{s}">{_badge(s)} {n}</span>'
        for s, n in counts.items()
        if n
    )
    return f"<b>{done}/{total}</b> finished {chips}"


def _members_html(snaps: Sequence[Snapshot], now: _dt.datetime) -> str:
    order = {"RUNNING": 0, "FAILED": 1, "READY": 2, "INTERRUPTED": 3, "CANCELLED": 4}
    ranked = sorted(range(len(snaps)), key=lambda i: (order.get(snaps[i].status, 5), i))
    rows = []
    for i in sorted(ranked[:GROUP_TABLE_ROWS]):
        snap = snaps[i]
        rows.append(
            f"<tr><td>{i}</td><td>{html.escape(snap.name)}</td>"
            f"<td><code>{html.escape(snap.short_id)}</code></td><td>{_badge(snap.status)}</td>"
            f"<td>{_html_bar(snap.fraction, snap.status, '6em')} "
            f"{html.escape(progress_text(snap))}</td>"
            f"<td>{html.escape(timing_text(snap, now))}</td></tr>"
        )
    more = len(snaps) - len(rows)
    tail = f"<div>… and {more} more</div>" if more > 0 else ""
    return (
        '<table class="nbtasks-members" style="font-size:0.9em"><tr><th>#</th><th>task</th>'
        f"<th>id</th><th>status</th><th>progress</th><th>time</th></tr>{''.join(rows)}</table>"
        f"{tail}"
    )


class GroupView(_BaseView):
    """One aggregate bar with counts per status; expands to a table of its members."""

    def __init__(self, obj: Any) -> None:
        super().__init__()
        w = _widgets()
        _kernel.warn_if_unsupported()
        self._group = obj
        self.group_id = str(getattr(obj, "id", "?"))
        self._members = [_copy_handle(r) for r in obj.results]
        self._snaps = [snapshot(m) for m in self._members]
        counts, total, fraction = _group_counts(self._snaps)
        status = _group_status(counts, total)
        self._title = _html(self._title_html(status), _shared("grow"))
        self._cancel = w.Button(
            description="Cancel all",
            icon="stop",
            button_style="warning",
            style=_shared("button"),
            layout=w.Layout(width="auto", display=None if status in UNFINISHED else "none"),
        )
        self._cancel.add_class("nbtasks-cancel")
        self._cancel.on_click(self._on_cancel)
        self._bar = w.FloatProgress(
            value=fraction,
            min=0.0,
            max=1.0,
            bar_style=BAR_STYLES.get(status, ""),
            layout=_shared("bar"),
            style=_shared("progress"),
        )
        self._bar.add_class("nbtasks-bar")
        self._counts = _html(_counts_html(counts, total), _shared("info"))
        self._counts.add_class("nbtasks-counts")
        self._table = _html("")
        self._expand = w.Accordion(
            children=[self._table], titles=(f"members ({total})",), selected_index=None
        )
        self._expand.observe(self._on_expand, names="selected_index")
        self._problem = _html("", w.Layout(display="none"))
        self.root = w.VBox(
            [
                w.HBox([self._title, self._cancel], layout=_shared("row")),
                w.HBox([self._bar, self._counts], layout=_shared("row")),
                self._expand,
                self._problem,
            ],
            layout=_shared("box"),
        )
        self.root.add_class("nbtasks-group")
        self.live = status in UNFINISHED
        self._table_due = 0.0
        _kernel.route_comm_to_helper_subshell(self._cancel.comm)

    def static_bundle(self) -> dict[str, Any]:
        """text/plain and text/html of the last snapshots, to go beside the widget."""
        snaps = list(self._snaps)
        return {
            "text/plain": _group_line(self.group_id, snaps),
            "text/html": _group_html(self.group_id, snaps),
        }

    def _title_html(self, status: str) -> str:
        return (
            f"<b>group</b> <code class='nbtasks-id' title='{html.escape(self.group_id)}' "
            f"style='opacity:0.7'>{html.escape(short_id(self.group_id))}</code> {_badge(status)}"
        )

    def _on_cancel(self, _button: Any = None) -> None:
        try:
            self._group.cancel()
        finally:
            self.live = True
            updater().register(self, now=True)

    def _on_expand(self, change: Mapping[str, Any]) -> None:
        if change.get("new") is not None:  # render the table even if the group is finished
            self._table_due = 0.0
            self.live = True
            updater().register(self, now=True)

    def poll(self) -> bool:
        for i, member in enumerate(self._members):
            if not self._snaps[i].is_finished:  # a finished member never changes again
                _refresh(member)
                self._snaps[i] = snapshot(member)
        counts, total, fraction = _group_counts(self._snaps)
        status = _group_status(counts, total)
        _set(self._title, value=self._title_html(status))
        _set(self._bar, value=fraction, bar_style=BAR_STYLES.get(status, ""))
        _set(self._counts, value=_counts_html(counts, total))
        finished = status not in UNFINISHED
        if finished:
            _show(self._cancel, False)
        now_m = time.monotonic()
        if self._expand.selected_index is not None and (finished or now_m >= self._table_due):
            _set(self._table, value=_members_html(self._snaps, _now()))
            self._table_due = now_m + 0.5
        self._ok()
        self._note((tuple(counts.values()), round(fraction, 3)))
        self.live = not finished
        return self.live


# ----------------------------------------------------------------------------- dashboard
class Dashboard(_BaseView):
    """``%tasks``: a page of the store's tasks with filters, paging and cancel buttons.

    It reads ``app._store.summaries()``/``count()`` (one indexed query per page: never loads
    or unpickles a result), so a store of 100,000 tasks opens in ~0.1 s.  It refreshes about
    once a second while the store holds unfinished tasks and goes quiet when none is left; a
    filter, a page button, the refresh button or a newly displayed task wakes it again.
    """

    def __init__(
        self,
        app: Any,
        status: str | None = None,
        name: str | None = None,
        page_size: int = 20,
    ) -> None:
        super().__init__()
        w = _widgets()
        self._app = app
        self.page_size = page_size
        self.offset = 0
        self.min_period = 1.0
        self._dirty = False
        self._last: tuple[list[Snapshot], int | None] = ([], None)
        self._row_ids: list[str | None] = [None] * page_size
        self._status = w.Dropdown(
            options=[("all", "")] + [(s, s) for s in STATUSES],
            value=(status or "").upper(),
            description="status",
            layout=w.Layout(width="14em"),
        )
        self._name = w.Text(
            value=name or "",
            placeholder="task name",
            continuous_update=False,
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
        header = _html(self._row_html(None), _shared("cell"))
        self._cells: list[Any] = []
        self._buttons: list[Any] = []
        self._rows: list[Any] = []
        for i in range(page_size):
            cell = _html("", _shared("cell"))
            button = w.Button(
                description="Cancel",
                button_style="warning",
                style=_shared("button"),
                layout=w.Layout(width="6em", visibility="hidden"),
            )
            button.add_class("nbtasks-row-cancel")
            button.on_click(lambda _b, i=i: self._cancel_row(i))
            row = w.HBox([cell, button], layout=w.Layout(display="none", align_items="center"))
            row.add_class("nbtasks-row")
            self._cells.append(cell)
            self._buttons.append(button)
            self._rows.append(row)
        self._problem = _html("", w.Layout(display="none"))
        controls = w.HBox(
            [self._status, self._name, self._prev, self._next, self._refresh_btn, self._page],
            layout=w.Layout(align_items="center"),
        )
        self.root = w.VBox([controls, header, *self._rows, self._problem])
        self.root.add_class("nbtasks-dashboard")
        for control in (self._status, self._name, self._prev, self._next, self._refresh_btn):
            _kernel.route_comm_to_helper_subshell(control.comm)
        for button in self._buttons:
            _kernel.route_comm_to_helper_subshell(button.comm)
        self.poll()  # first page, in the cell thread, before the widget is displayed
        _dashboards.add(self)

    # -- store queries ------------------------------------------------------------------------
    def _query(self) -> tuple[list[Snapshot], int | None]:
        status = self._status.value or None
        name = (self._name.value or "").strip() or None
        store = getattr(self._app, "_store", None)
        summaries = getattr(store, "summaries", None)
        if callable(summaries):
            rows = summaries(status=status, name=name, offset=self.offset, limit=self.page_size)
            total: int | None = None
            count = getattr(store, "count", None)
            if callable(count):
                total = int(count(status=status, name=name))
        else:  # older core: results() loads whole records; fine for small stores
            results = self._app.results(
                status=status, task_name=name, limit=self.offset + self.page_size
            )
            rows = list(results)[self.offset :]
            total = None
        return [_summary_snapshot(r) for r in rows], total

    def _unfinished_anywhere(self) -> bool:
        store = getattr(self._app, "_store", None)
        count = getattr(store, "count", None)
        if not callable(count):
            return True
        return any(int(count(status=s)) for s in UNFINISHED)

    # -- handlers (comm threads) ----------------------------------------------------------------
    def _on_filter(self, _change: Any = None) -> None:
        self.offset = 0
        self._rearm()

    def _move(self, step: int) -> None:
        self.offset = max(0, self.offset + step * self.page_size)
        self._rearm()

    def _rearm(self) -> None:
        self._dirty = True
        self.live = True
        updater().register(self, now=True)

    def _cancel_row(self, i: int) -> None:
        task_id = self._row_ids[i]
        if task_id is None:
            return
        try:
            self._app.result(task_id).cancel()
        finally:
            self._rearm()

    # -- rendering (the cell thread once, then the updater thread) --------------------------
    @staticmethod
    def _row_html(snap: Snapshot | None, now: _dt.datetime | None = None) -> str:
        cols = "grid-template-columns:minmax(6em,14em) 6em 8em 11em 6em 5em"
        style = f'style="display:grid;{cols};gap:0 8px;align-items:center;max-width:54em"'
        if snap is None:
            heads = ("task", "id", "status", "progress", "started", "duration")
            cells = "".join(f"<b>{h}</b>" for h in heads)
            return f'<div class="nbtasks-row-head" {style}>{cells}</div>'
        now = now or _now()
        spent = elapsed(snap, now)
        pct = "" if snap.fraction is None else f" {100 * snap.fraction:.0f}%"
        if snap.status == "SUCCESSFUL":
            pct = " 100%"
        return (
            f'<div {style} data-task-id="{html.escape(snap.id)}">'
            f'<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap" '
            f'title="{html.escape(snap.name)}">{html.escape(snap.name)}</span>'
            f"<code>{html.escape(snap.short_id)}</code>"
            f"<span>{_badge(snap.status)}</span>"
            f"<span>{_html_bar(snap.fraction, snap.status, '7em')}{pct}</span>"
            f"<span>{html.escape(fmt_when(snap.started_at, now))}</span>"
            f"<span>{html.escape(fmt_duration(spent))}</span></div>"
        )

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The widget, plus a text table and a static HTML table (nbconvert)."""
        bundle = dict(self.root._repr_mimebundle_() or {})
        snaps, total = self._last
        bundle["text/plain"] = _table_text(snaps, total)
        rows = "".join(self._row_html(snap) for snap in snaps)
        bundle["text/html"] = (
            f'<div class="nbtasks-dashboard-static">{self._row_html(None)}{rows}</div>'
        )
        return _filter_bundle(bundle, include, exclude)

    def poll(self) -> bool:
        self._dirty = False
        snaps, total = self._query()
        self._last = (snaps, total)
        now = _now()
        for i in range(self.page_size):
            snap = snaps[i] if i < len(snaps) else None
            self._row_ids[i] = snap.id if snap else None
            if snap is None:
                _show(self._rows[i], False)
                continue
            _set(self._cells[i], value=self._row_html(snap, now))
            can_cancel = snap.status in UNFINISHED
            _set(self._buttons[i].layout, visibility="visible" if can_cancel else "hidden")
            _show(self._rows[i], True)
        first = self.offset + 1 if snaps else self.offset
        last = self.offset + len(snaps)
        of = f" of {total}" if total is not None else ""
        _set(self._page, value=f"tasks {first}-{last}{of}")
        _set(self._prev, disabled=self.offset == 0)
        more = (last < total) if total is not None else len(snaps) == self.page_size
        _set(self._next, disabled=not more)
        self._ok()
        page_live = any(s.status in UNFINISHED for s in snaps)
        self.live = self._dirty or page_live or self._unfinished_anywhere()
        return self.live


_dashboards: weakref.WeakSet[Dashboard] = weakref.WeakSet()


def _table_text(rows: Sequence[Snapshot], total: int | None) -> str:
    now = _now()
    lines = [f"{'task':24} {'id':8}  {'status':11} {'progress':>8}  {'started':16} duration"]
    for snap in rows:
        pct = "" if snap.fraction is None else f"{100 * snap.fraction:.0f}%"
        if snap.status == "SUCCESSFUL":
            pct = "100%"
        lines.append(
            f"{snap.name[:24]:24} {snap.short_id:8}  {snap.status:11} {pct:>8}  "
            f"{fmt_when(snap.started_at, now):16} {fmt_duration(elapsed(snap, now))}"
        )
    lines.append(f"({len(rows)} of {total if total is not None else '?'} tasks)")
    return "\n".join(lines)


def dashboard_text(
    app: Any, status: str | None = None, name: str | None = None, limit: int = 20
) -> str:
    """``%tasks`` outside a kernel: the newest ``limit`` tasks as a text table."""
    store = getattr(app, "_store", None)
    summaries = getattr(store, "summaries", None)
    if callable(summaries):
        rows = [_summary_snapshot(r) for r in summaries(status=status, name=name, limit=limit)]
        count = getattr(store, "count", None)
        total = int(count(status=status, name=name)) if callable(count) else len(rows)
    else:
        rows = [snapshot(r) for r in app.results(status=status, task_name=name, limit=limit)]
        total = len(rows)
    return _table_text(rows, total)


def dashboard(
    app: Any, status: str | None = None, name: str | None = None, page_size: int = 20
) -> Dashboard:
    """Build the ``%tasks`` dashboard (in the cell thread); ``display()`` shows it."""
    view = Dashboard(app, status=status, name=name, page_size=page_size)
    updater().register(view)
    return view


# ----------------------------------------------------------------------------- the updater
@dataclass
class UpdaterStats:
    passes: int = 0
    polls: int = 0
    messages: int = 0  # widgets whose traits changed (one comm message each)
    errors: int = 0
    cpu_seconds: float = 0.0  # CPU time of the updater thread itself
    threads_started: int = 0
    last_error: str = ""


_stats = UpdaterStats()


def updater_stats() -> UpdaterStats:
    """Counters of the view updater (for tests and for measuring its overhead)."""
    return _stats


class _Updater:
    """The single thread that writes widget traits (DESIGN.md principle 9)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: list[Any] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def live_views(self) -> int:
        with self._lock:
            return len(self._views)

    def register(self, view: Any, now: bool = False) -> None:
        """Poll ``view`` until it is no longer live; start the thread if needed."""
        if now:
            view.next_due = 0.0
        with self._lock:
            if self._stopping:
                return
            if not any(v is view for v in self._views):
                self._views.append(view)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="nbtasks-view-updater", daemon=True
                )
                _stats.threads_started += 1
                self._thread.start()
            else:
                self._wake.set()
        if view.__class__ is not Dashboard:  # a new task may change what dashboards show
            for board in list(_dashboards):
                if not board.live:
                    board.live = True
                    self.register(board)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._views.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            while True:
                start = time.monotonic()
                with self._lock:
                    views = list(self._views)
                    if not views or self._stopping:
                        self._thread = None
                        return
                done = []
                share = len(views) / MAX_POLLS_PER_SECOND  # the budget's period per view
                for view in views:
                    if view.next_due > start:
                        continue
                    t0 = time.perf_counter()
                    try:
                        live = view.poll()
                    except Exception as exc:  # principle 12: shown in the widget, counted
                        _stats.errors += 1
                        _stats.last_error = repr(exc)
                        live = view.failed(exc)
                        if not live:
                            view.live = False
                    _stats.polls += 1
                    cost = time.perf_counter() - t0
                    period = max(view.min_period, share, cost * _COST_FACTOR)
                    view.next_due = start + period - 0.005
                    if not live:
                        done.append(view)
                _stats.passes += 1
                _stats.cpu_seconds += time.thread_time() - cpu0
                cpu0 = time.thread_time()
                with self._lock:
                    for view in done:
                        if not view.live:  # not re-armed by a handler meanwhile
                            self._views = [v for v in self._views if v is not view]
                    if not self._views:  # nothing displayed is live: stop now
                        self._thread = None
                        return
                    self._wake.clear()
                delay = start + PERIOD - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None


_updater: _Updater | None = None
_updater_lock = threading.Lock()


def updater() -> _Updater:
    """The per-kernel view updater (created on first use)."""
    global _updater
    with _updater_lock:
        if _updater is None:
            _updater = _Updater()
            # no widget messages while the interpreter shuts down
            atexit.register(_updater.stop)
        return _updater
