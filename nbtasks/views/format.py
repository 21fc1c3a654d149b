"""Snapshots as text and static HTML: the one-line summaries, the pieces of the widgets' HTML,
and the text/HTML bundle shown where there is no live widget (terminal IPython, nbconvert).

Everything user-controlled (names, messages, tracebacks, output, metadata) is HTML-escaped
here, once.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._model import TaskStatus
from .._text import format_duration, short_id
from .snapshot import (
    TERMINAL,
    Snapshot,
    group_counts,
    group_status,
    is_group,
    reused_count,
    snapshot,
)

__all__ = [
    "STATUS_COLORS",
    "badge",
    "counts_html",
    "counts_text",
    "elapsed",
    "errors_html",
    "filter_bundle",
    "fmt_number",
    "fmt_rate",
    "fmt_when",
    "group_html",
    "group_line",
    "header_html",
    "html_bar",
    "html_bundle",
    "info_html",
    "members_html",
    "metadata_html",
    "now",
    "progress_text",
    "summary_line",
    "task_html",
    "task_line",
    "timing_text",
]

STATUS_COLORS: dict[str, str] = {
    TaskStatus.READY: "#757575",
    TaskStatus.RUNNING: "#1565c0",
    TaskStatus.SUCCESSFUL: "#2e7d32",
    TaskStatus.FAILED: "#c62828",
    TaskStatus.CANCELLED: "#e65100",
    TaskStatus.INTERRUPTED: "#6a1b9a",
}
METADATA_CHARS = 8_000
TRACEBACK_CHARS = 20_000
GROUP_TABLE_ROWS = 200


# ----------------------------------------------------------------------------- numbers and times
def fmt_rate(rate: float | None) -> str:
    if rate is None or rate <= 0:
        return ""
    return f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s/it"


def fmt_number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def fmt_when(when: _dt.datetime | None, now: _dt.datetime | None = None) -> str:
    """Local time of day for today, else the day and time ("Dec 5 14:03"), with the year for
    another year: the store keeps tasks for days, and a bare time of day would read as today."""
    if when is None:
        return ""
    local = when.astimezone()
    now = (now or _dt.datetime.now(_dt.UTC)).astimezone()
    if local.date() == now.date():
        return local.strftime("%H:%M:%S")
    day = f"{local.strftime('%b')} {local.day}"  # no %-d: it is not portable (Windows)
    if local.year == now.year:
        return f"{day} {local.strftime('%H:%M')}"
    return f"{day} {local.year}"


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def elapsed(snap: Snapshot, at: _dt.datetime | None = None) -> float | None:
    """Seconds running (or run, once finished); None before the task started."""
    if snap.started_at is None:
        return None
    end = snap.finished_at or at or now()
    return (end - snap.started_at).total_seconds()


# ----------------------------------------------------------------------------- text
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


def timing_text(snap: Snapshot, at: _dt.datetime | None = None) -> str:
    """'elapsed 3.2 s · 12.3/s · ETA 8.1 s', 'waiting 2.0 s', 'took 5.3 s'."""
    at = at or now()
    if snap.status == TaskStatus.READY:
        if snap.enqueued_at is None:
            return "waiting"
        return f"waiting {format_duration((at - snap.enqueued_at).total_seconds())}"
    spent = elapsed(snap, at)
    if snap.is_finished:
        took = f"took {format_duration(spent)}" if spent is not None else ""
        if (
            snap.reason
            and snap.status in (TaskStatus.CANCELLED, TaskStatus.INTERRUPTED)
            and (snap.reason.lower() not in ("cancelled", "interrupted"))
        ):
            return f"{snap.status.lower()}: {snap.reason}" + (f" · {took}" if took else "")
        return took
    parts = [f"elapsed {format_duration(spent)}"] if spent is not None else []
    if rate := fmt_rate(snap.rate):
        parts.append(rate)
    if snap.eta is not None:
        parts.append(f"ETA {format_duration(snap.eta)}")
    return " · ".join(parts)


def summary_line(obj: Any) -> str:
    """One line of text for a TaskResult or GroupResult (terminal IPython, logs)."""
    if is_group(obj):
        return group_line(str(getattr(obj, "id", "?")), [snapshot(r) for r in obj.results])
    return task_line(snapshot(obj))


def task_line(snap: Snapshot) -> str:
    parts = [f"<TaskResult {snap.name} {snap.short_id} {snap.status}"]
    if text := progress_text(snap):
        parts.append(text)
    if snap.errors and snap.status == TaskStatus.FAILED:
        parts.append(snap.errors[-1][0].rsplit(".", 1)[-1])
    return " ".join(parts) + ">"


def group_line(group_id: str, snaps: Sequence[Snapshot]) -> str:
    counts, total, fraction = group_counts(snaps)
    done = sum(counts.get(s, 0) for s in TERMINAL)
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    reused = reused_count(snaps)
    return (
        f"<GroupResult {short_id(group_id)} {done}/{total} finished"
        f" ({100 * fraction:.0f}%){': ' + tally if tally else ''}"
        f"{f' · {reused} reused' if reused else ''}>"
    )


def counts_text(counts: Mapping[str, int], total: int, reused: int = 0) -> str:
    """``12/12 finished · 12 SUCCESSFUL · 9 reused``: ``reused`` members were cache hits."""
    done = sum(counts.get(s, 0) for s in TERMINAL)
    parts = [f"{done}/{total} finished", *(f"{n} {s}" for s, n in counts.items() if n)]
    if reused:
        parts.append(f"{reused} reused")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- HTML pieces
def badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#757575")
    return (
        f'<span class="nbtasks-status" data-status="{html.escape(status)}" '
        f'style="background:{color};color:#fff;border-radius:3px;padding:0 6px;'
        f'font-size:0.85em;font-weight:600;letter-spacing:0.03em">{html.escape(status)}</span>'
    )


def header_html(snap: Snapshot) -> str:
    retries = ""
    if snap.attempts > 1:
        retries = (
            f' <span class="nbtasks-retries" title="attempts: {snap.attempts}" '
            f'style="color:#e65100">retry {snap.attempts - 1}</span>'
        )
    return (
        f'<b class="nbtasks-name">{html.escape(snap.name)}</b> '
        f'<code class="nbtasks-id" title="{html.escape(snap.id)}" style="opacity:0.7">'
        f"{html.escape(snap.short_id)}</code> {badge(snap.status)}{retries}"
    )


def info_html(snap: Snapshot, at: _dt.datetime | None = None) -> str:
    progress = html.escape(progress_text(snap))
    timing = html.escape(timing_text(snap, at))
    sep = " · " if progress and timing else ""
    return (
        f'<span class="nbtasks-progress-text">{progress}</span>{sep}'
        f'<span class="nbtasks-timing" style="opacity:0.75">{timing}</span>'
    )


def errors_html(snap: Snapshot) -> str:
    if not snap.errors:
        return ""
    rows = []
    for number, (path, _tb) in enumerate(snap.errors, 1):
        rows.append(f"attempt {number}: <code>{html.escape(path)}</code>")
    last_tb = snap.errors[-1][1]
    if len(last_tb) > TRACEBACK_CHARS:
        last_tb = "…" + last_tb[-TRACEBACK_CHARS:]
    opened = " open" if snap.status == TaskStatus.FAILED else ""
    return (
        f'<div class="nbtasks-error" style="color:#c62828">{"<br>".join(rows)}</div>'
        f"<details{opened}><summary>traceback</summary>"
        f'<pre class="nbtasks-traceback" style="font-size:0.85em;white-space:pre-wrap">'
        f"{html.escape(last_tb)}</pre></details>"
    )


def metadata_html(metadata: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(metadata, indent=1, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(metadata)
    if len(text) > METADATA_CHARS:
        text = text[:METADATA_CHARS] + "\n…"
    return f'<pre class="nbtasks-metadata" style="font-size:0.85em">{html.escape(text)}</pre>'


def html_bar(fraction: float | None, status: str, width: str = "100%") -> str:
    pct = 100.0 if status == TaskStatus.SUCCESSFUL else 100.0 * (fraction or 0.0)
    color = STATUS_COLORS.get(status, "#1565c0")
    return (
        f'<div style="display:inline-block;width:{width};height:0.8em;background:#e0e0e0;'
        f'border-radius:2px;vertical-align:middle"><div style="width:{pct:.1f}%;height:100%;'
        f'background:{color};border-radius:2px"></div></div>'
    )


def counts_html(counts: Mapping[str, int], total: int, reused: int = 0) -> str:
    done = sum(counts.get(s, 0) for s in TERMINAL)
    chips = " ".join(
        f'<span class="nbtasks-count" data-status="{s}">{badge(s)} {n}</span>'
        for s, n in counts.items()
        if n
    )
    if reused:
        chips += f' <span class="nbtasks-reused">· {reused} reused</span>'
    return f"<b>{done}/{total}</b> finished {chips}"


def members_html(snaps: Sequence[Snapshot], at: _dt.datetime) -> str:
    """A group's members as a table: the running and failed ones first if there are many."""
    order: dict[str, int] = {
        TaskStatus.RUNNING: 0,
        TaskStatus.FAILED: 1,
        TaskStatus.READY: 2,
        TaskStatus.INTERRUPTED: 3,
        TaskStatus.CANCELLED: 4,
    }
    ranked = sorted(range(len(snaps)), key=lambda i: (order.get(snaps[i].status, 5), i))
    rows = []
    for i in sorted(ranked[:GROUP_TABLE_ROWS]):
        snap = snaps[i]
        rows.append(
            f"<tr><td>{i}</td><td>{html.escape(snap.name)}</td>"
            f"<td><code>{html.escape(snap.short_id)}</code></td><td>{badge(snap.status)}</td>"
            f"<td>{html_bar(snap.fraction, snap.status, '6em')} "
            f"{html.escape(progress_text(snap))}</td>"
            f"<td>{html.escape(timing_text(snap, at))}</td></tr>"
        )
    more = len(snaps) - len(rows)
    tail = f"<div>… and {more} more</div>" if more > 0 else ""
    return (
        '<table class="nbtasks-members" style="font-size:0.9em"><tr><th>#</th><th>task</th>'
        f"<th>id</th><th>status</th><th>progress</th><th>time</th></tr>{''.join(rows)}</table>"
        f"{tail}"
    )


# ----------------------------------------------------------------------------- static views
def task_html(snap: Snapshot, at: _dt.datetime | None = None) -> str:
    """A static HTML rendering of a task (nbconvert, frontends without widgets)."""
    body = [
        f"<div>{header_html(snap)}</div>",
        f"<div>{html_bar(snap.fraction, snap.status, '20em')} {info_html(snap, at)}</div>",
    ]
    if snap.errors:
        body.append(errors_html(snap))
    if snap.output:
        tail = snap.output[-2000:]
        body.append(
            f'<pre style="font-size:0.85em;max-height:12em;overflow:auto">{html.escape(tail)}</pre>'
        )
    return f'<div class="nbtasks-task-static">{"".join(body)}</div>'


def group_html(group_id: str, snaps: Sequence[Snapshot]) -> str:
    """A static HTML rendering of a group: its bar and counts."""
    counts, total, fraction = group_counts(snaps)
    return (
        f'<div class="nbtasks-group-static"><b>group</b> <code>'
        f"{html.escape(short_id(group_id))}</code> "
        f"{html_bar(fraction, group_status(counts, total), '20em')} "
        f"{html.escape(counts_text(counts, total, reused_count(snaps)))}</div>"
    )


def html_bundle(obj: Any) -> dict[str, Any]:
    """text/plain + text/html for anything but a live kernel."""
    if is_group(obj):
        snaps = [snapshot(r) for r in obj.results]
        group_id = str(getattr(obj, "id", "?"))
        return {
            "text/plain": group_line(group_id, snaps),
            "text/html": group_html(group_id, snaps),
        }
    snap = snapshot(obj)
    return {"text/plain": task_line(snap), "text/html": task_html(snap)}


def filter_bundle(
    bundle: dict[str, Any], include: Iterable[str] | None, exclude: Iterable[str] | None
) -> dict[str, Any]:
    """``_repr_mimebundle_``'s include/exclude applied to ``bundle``."""
    if include:
        wanted = set(include)
        bundle = {k: v for k, v in bundle.items() if k in wanted}
    if exclude:
        unwanted = set(exclude)
        bundle = {k: v for k, v in bundle.items() if k not in unwanted}
    return bundle
