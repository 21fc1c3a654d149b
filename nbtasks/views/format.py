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

from .. import _kernel
from .._errors import shown_traceback
from .._model import TaskStatus
from .._text import STATUS_COLORS, format_duration, format_usage, short_id
from .snapshot import (
    TERMINAL,
    Snapshot,
    group_counts,
    is_group,
    reused_count,
    snapshot,
)

__all__ = [
    "ERROR_COLOR",
    "STATUS_COLORS",
    "TRACK_COLOR",
    "badge",
    "counts_html",
    "counts_text",
    "elapsed",
    "error_line",
    "errors_html",
    "filter_bundle",
    "fmt_number",
    "fmt_rate",
    "fmt_when",
    "group_html",
    "group_line",
    "header_html",
    "hidden_lines_html",
    "html_bar",
    "html_bundle",
    "info_html",
    "members_html",
    "metadata_html",
    "now",
    "progress_text",
    "shows_bar",
    "stacked_bar_html",
    "sub_bars_html",
    "summary_line",
    "task_html",
    "task_line",
    "timing_text",
]

# Theme colours: JupyterLab's CSS variables (light and dark themes alike), with the light
# theme's value as the fallback where they are not defined (nbconvert's HTML, GitHub).
# --jp-error-color1 is 4.98:1 on the light theme's white and 5.1:1 on the dark theme's #111.
ERROR_COLOR = "var(--jp-error-color1, #c62828)"
TRACK_COLOR = "var(--jp-border-color2, #e0e0e0)"  # an empty bar's track
MESSAGE_CHARS = 300  # of an error's message on its line (the traceback has all of it)
# Segments of a group's stacked bar, left to right; READY members are the empty track.
BAR_ORDER = (
    TaskStatus.SUCCESSFUL,
    TaskStatus.FAILED,
    TaskStatus.INTERRUPTED,
    TaskStatus.CANCELLED,
    TaskStatus.RUNNING,
)
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
    """Name, short id, status badge (and the retries of an unfinished task) on one line.

    A long name is cut with an ellipsis (the whole name is its tooltip) rather than pushing
    the Cancel button beside it down to an unlabelled square: the name is the only item that
    shrinks. A finished task's attempts are a plain note, not the orange "retry" of a task
    that is still being retried.
    """
    retries = ""
    if snap.attempts > 1 and not snap.is_finished:
        retries = (
            f'<span class="nbtasks-retries" title="attempts: {snap.attempts}" '
            f'style="color:var(--jp-warn-color0, #e65100);flex:none">'
            f"retry {snap.attempts - 1}</span>"
        )
    elif snap.attempts > 1:
        retries = (
            f'<span class="nbtasks-attempts" style="opacity:0.75;flex:none">'
            f"{snap.attempts} attempts</span>"
        )
    name = html.escape(snap.name)
    return (
        # width 0 + min-width 100%: the line takes the width it is given, never its
        # content's (the HTML widget around it would otherwise grow to the whole name)
        '<div class="nbtasks-title" style="display:flex;align-items:baseline;gap:0.4em;'
        'width:0;min-width:100%;white-space:nowrap">'
        f'<b class="nbtasks-name" title="{name}" style="overflow:hidden;'
        f'text-overflow:ellipsis;min-width:0">{name}</b>'
        f'<code class="nbtasks-id" title="{html.escape(snap.id)}" style="opacity:0.7;flex:none">'
        f'{html.escape(snap.short_id)}</code><span style="flex:none">{badge(snap.status)}</span>'
        f"{retries}</div>"
    )


def info_html(snap: Snapshot, at: _dt.datetime | None = None) -> str:
    progress = html.escape(progress_text(snap))
    timing = html.escape(timing_text(snap, at))
    sep = " · " if progress and timing else ""
    value = ""
    if snap.value is not None and snap.status == TaskStatus.SUCCESSFUL:
        value = (
            f'<div class="nbtasks-value" title="the return value (result.result has it)">'
            f"→ <code>{html.escape(snap.value)}</code></div>"
        )
    usage = html.escape(format_usage(snap.usage))  # recorded when an attempt ends
    if usage:
        usage = f'{" · " if progress or timing else ""}<span class="nbtasks-usage">{usage}</span>'
    return (
        f'<span class="nbtasks-progress-text">{progress}</span>{sep}'
        f'<span class="nbtasks-timing" style="opacity:0.75">{timing}{usage}</span>'
        f"{sub_bars_html(snap)}{value}"
    )


def sub_bars_html(snap: Snapshot) -> str:
    """A running task's open inner tqdm bars, each a small bar under the task's own (whose
    progress is the outermost bar's): ``batch 30/100`` and its bar."""
    if snap.status != TaskStatus.RUNNING or not snap.bars:
        return ""
    rows = []
    for desc, n, total in snap.bars:
        count = f"{n:g}" if total is None else f"{n:g}/{total:g}"
        fraction = n / total if total else None
        label = html.escape(f"{desc} {count}" if desc else count)
        rows.append(
            f'<div class="nbtasks-subbar" style="display:flex;gap:6px;align-items:center;'
            f'font-size:0.9em">{html_bar(fraction, TaskStatus.RUNNING, "12em")}'
            f"<span>{label}</span></div>"
        )
    return "".join(rows)


def error_line(path: str, message: str) -> str:
    """``ValueError: bad input`` for an error as IPython shows one: the class's name (its
    module only as a tooltip, and not for builtins) and the first line of its message."""
    name = path.rsplit(".", 1)[-1] or "error"
    first = message.strip().splitlines()[0] if message.strip() else ""
    if len(first) > MESSAGE_CHARS:
        first = first[: MESSAGE_CHARS - 1] + "…"
    text = f"{name}: {first}" if first else name
    return f'<code title="{html.escape(path)}">{html.escape(text)}</code>'


def errors_html(snap: Snapshot) -> str:
    """Each attempt's error on a line, and the last one's traceback, as a user reads it:
    nbtasks' own frames left out (``TaskResult.errors`` keeps them), a notebook cell named as
    IPython names it (``Cell In[7]``)."""
    if not snap.errors:
        return ""
    rows = []
    for number, (path, _tb) in enumerate(snap.errors, 1):
        message = snap.messages[number - 1] if number <= len(snap.messages) else ""
        line = error_line(path, message)
        rows.append(f"attempt {number}: {line}" if len(snap.errors) > 1 else line)
    last_tb, hidden = shown_traceback(snap.errors[-1][1], _kernel.cell_label)
    if len(last_tb) > TRACEBACK_CHARS:
        last_tb = "…" + last_tb[-TRACEBACK_CHARS:]
    note = ""
    if hidden:
        note = (
            f'<div class="nbtasks-hidden-frames" style="opacity:0.75">{hidden} nbtasks frame'
            f"{'s' if hidden != 1 else ''} not shown (result.errors[-1].traceback has them)</div>"
        )
    opened = " open" if snap.status == TaskStatus.FAILED else ""
    return (
        f'<div class="nbtasks-error" style="color:{ERROR_COLOR}">{"<br>".join(rows)}</div>'
        f"<details{opened}><summary>traceback</summary>"
        f'<pre class="nbtasks-traceback" style="font-size:0.85em;white-space:pre-wrap">'
        f"{html.escape(last_tb)}</pre>{note}</details>"
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
        f'<div style="display:inline-block;width:{width};height:0.8em;background:{TRACK_COLOR};'
        f'border-radius:2px;vertical-align:middle"><div style="width:{pct:.1f}%;height:100%;'
        f'background:{color};border-radius:2px"></div></div>'
    )


def shows_bar(snap: Snapshot) -> bool:
    """Whether a task's bar says anything: not for a task that ended without a value and
    without reporting progress (an empty grey bar beside FAILED tells nothing)."""
    return not (snap.is_finished and snap.status != TaskStatus.SUCCESSFUL and snap.fraction is None)


def stacked_bar_html(counts: Mapping[str, int], total: int, width: str = "100%") -> str:
    """A group's bar: one segment per status, as wide as its share of the members (21
    failures in 2,000 are a thin red sliver beside the green, not a red bar); READY members
    are the empty track. A status with any member gets at least 2 px so it stays visible."""
    segments = []
    for status in BAR_ORDER:
        n = counts.get(status, 0)
        if not n or not total:
            continue
        segments.append(
            f'<div class="nbtasks-segment" data-status="{status}" title="{n} {status}" '
            f'style="width:{100.0 * n / total:.3f}%;min-width:2px;height:100%;'
            f'background:{STATUS_COLORS[status]}"></div>'
        )
    return (
        f'<div class="nbtasks-stacked" style="display:inline-flex;width:{width};height:0.8em;'
        f'background:{TRACK_COLOR};border-radius:2px;overflow:hidden;vertical-align:middle">'
        f"{''.join(segments)}</div>"
    )


def hidden_lines_html(hidden: int) -> str:
    """The note above an output box that shows only the end of a task's output."""
    if hidden <= 0:
        return ""
    return (
        f'<div class="nbtasks-output-note" style="opacity:0.75;font-size:0.85em">… {hidden:,} '
        f"earlier line{'s' if hidden != 1 else ''} not shown; <code>result.output</code> has "
        "them</div>"
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
    bar = f"{html_bar(snap.fraction, snap.status, '20em')} " if shows_bar(snap) else ""
    body = [f"<div>{header_html(snap)}</div>", f"<div>{bar}{info_html(snap, at)}</div>"]
    if snap.errors:
        body.append(errors_html(snap))
    if snap.output:
        tail = snap.output[-2000:]
        cut = tail.find("\n") + 1 if len(tail) < len(snap.output) else 0
        tail = tail[cut:] if 0 < cut < len(tail) else tail
        hidden = snap.output[: len(snap.output) - len(tail)].count("\n")
        body.append(
            f"{hidden_lines_html(hidden)}"
            f'<pre style="font-size:0.85em;max-height:12em;overflow:auto">{html.escape(tail)}</pre>'
        )
    return f'<div class="nbtasks-task-static">{"".join(body)}</div>'


def group_html(group_id: str, snaps: Sequence[Snapshot]) -> str:
    """A static HTML rendering of a group: its bar and counts."""
    counts, total, _ = group_counts(snaps)
    return (
        f'<div class="nbtasks-group-static"><b>group</b> <code>'
        f"{html.escape(short_id(group_id))}</code> "
        f"{stacked_bar_html(counts, total, '20em')} "
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
