"""``app.timeline()``: what ran when, as an SVG Gantt chart (SPEC §8), with no dependency.

One lane per worker (a thread's or a process's id as ``worker_ids`` records it, one per
attempt), one bar per attempt, coloured by how it ended (an attempt that was retried counts as
FAILED; a running one reaches "now"), each task named in a ``<title>`` tooltip and, when the bar
is wide enough, in a label. The x axis is time since the first start, with ticks at 1-2-5 steps.

It stays light with many tasks: past ``MAX_BARS`` attempts in all, a lane with more attempts
than it has pixel columns is drawn as a **density bar** instead: one rect per run of
``COLUMN``-pixel columns, coloured by the status that covered most of that time and as opaque
as the worker was busy, whose tooltip counts the attempts. So the SVG's size depends on the
number of lanes and the chart's width, not on the number of tasks. At most ``MAX_LANES`` lanes
are drawn; the workers past them share one last lane.

The data comes from ``Store.attempt_records`` (read by SQLite, nothing unpickled), through a
function the App gives; rendering is pure. In a notebook ``_repr_mimebundle_`` shows a live
widget (``views.timeline``) that the view updater redraws at most twice a second while any of
its tasks runs.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._model import FINISHED, TaskRecord, TaskStatus
from ._text import STATUS_COLORS, format_duration, short_id

__all__ = ["COLORS", "Span", "Timeline", "render_svg", "spans_of"]

#: A status's colour (the widgets' badges use the same ones).
COLORS: Final = STATUS_COLORS
WIDTH: Final = 900  # px, the whole chart
LABELS: Final = 170  # px, the lanes' names on the left
LANE: Final = 18  # px per lane
AXIS: Final = 22  # px under the lanes
TOP: Final = 22  # px above: the caption and the legend
MAX_LANES: Final = 60
MAX_BARS: Final = 2000  # attempts drawn one by one, in all, before lanes are aggregated
COLUMN: Final = 3  # px per column of a density bar
_FINISHED: Final = frozenset(s.value for s in FINISHED)


@dataclass(frozen=True, slots=True)
class Span:
    """One attempt: where it ran, when, how it ended."""

    lane: str  # the worker id
    start: float  # seconds since the epoch
    end: float | None  # None: still running
    status: str
    name: str
    task_id: str
    attempt: int  # 1 for the first


def spans_of(records: Iterable[TaskRecord]) -> list[Span]:
    """The attempts of these records (``Store.attempt_records``). An attempt's times are in
    ``attempt_times`` once it ended; the last one's also in ``last_attempted_at`` and
    ``finished_at`` (it runs, or it was interrupted). Earlier attempts of a record written
    before ``attempt_times`` existed are left out."""
    out: list[Span] = []
    for rec in records:
        wids = rec.get("worker_ids") or []
        if not isinstance(wids, list) or not wids:
            continue  # never started
        times = rec.get("attempt_times") or []
        status = str(rec.get("status"))
        last = len(wids) - 1
        for i, wid in enumerate(wids):
            start: Any
            end: Any
            if i < len(times) and isinstance(times[i], list) and len(times[i]) == 2:
                start, end = times[i]
            elif i == last:
                start = rec.get("last_attempted_at") or rec.get("started_at")
                end = rec.get("finished_at") if status in _FINISHED else None
            else:
                continue
            if not _number(start) or not (end is None or _number(end)):
                continue
            out.append(
                Span(
                    lane=str(wid),
                    start=float(start),
                    end=None if end is None else max(float(end), float(start)),
                    status=status if i == last else TaskStatus.FAILED.value,
                    name=str(rec.get("task_name") or "?"),
                    task_id=str(rec.get("id") or "?"),
                    attempt=i + 1,
                )
            )
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- rendering


def _ticks(span: float, pixels: float) -> list[float]:
    """Tick offsets (seconds) every 1, 2 or 5 x 10^k, about one per 90 px."""
    want = max(span / max(pixels / 90.0, 1.0), 1e-6)
    power = 10 ** math.floor(math.log10(want))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= want)
    return [i * step for i in range(int(span / step) + 1)]


def _lane_names(lanes: Sequence[str]) -> dict[str, str]:
    """Worker ids without the host they all share (``host:pid:thread`` -> ``pid:thread``)."""
    hosts = {lane.split(":", 1)[0] for lane in lanes}
    if len(hosts) == 1 and all(":" in lane for lane in lanes):
        return {lane: lane.split(":", 1)[1] for lane in lanes}
    return {lane: lane for lane in lanes}


def _clip(text: str, pixels: float) -> str:
    """``text`` cut to about ``pixels`` at 6.5 px per character (11 px sans-serif)."""
    room = int(pixels / 6.5)
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


def render_svg(spans: Sequence[Span], now: float | None = None) -> str:
    """The chart of ``spans`` as SVG text (``now``: where running attempts end)."""
    now = time.time() if now is None else now
    if not spans:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="nbtasks-timeline" width="{WIDTH}"'
            ' height="30"><text x="4" y="20" font-family="sans-serif" font-size="12" '
            'fill="#757575">no task has started yet</text></svg>'
        )
    t0 = min(s.start for s in spans)
    t1 = max(max((s.end if s.end is not None else now) for s in spans), t0 + 1e-3)
    first: dict[str, float] = {}
    for s in spans:
        first[s.lane] = min(first.get(s.lane, s.start), s.start)
    order = sorted(first, key=lambda lane: (first[lane], lane))
    lanes: dict[str, list[Span]] = {lane: [] for lane in order[:MAX_LANES]}
    names = _lane_names(order[:MAX_LANES])
    rest = order[MAX_LANES:]
    if rest:
        other = f"{len(rest)} more workers"
        lanes[other], names[other] = [], other
    for s in spans:
        lanes[s.lane if s.lane in names else other].append(s)
    plot = WIDTH - LABELS - 8
    scale = plot / (t1 - t0)
    height = TOP + LANE * len(lanes) + AXIS
    aggregate = len(spans) > MAX_BARS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="nbtasks-timeline" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" '
        'font-size="11">',
        _caption(spans, lanes, t0, t1, aggregate),
    ]
    for row, (lane, members) in enumerate(lanes.items()):
        y = TOP + row * LANE
        label = html.escape(_clip(names[lane], LABELS - 6))
        parts.append(
            f'<text class="nbtasks-lane" x="{LABELS - 6}" y="{y + 13}" text-anchor="end" '
            f'fill="#616161">{label}<title>{html.escape(lane)}</title></text>'
            f'<rect x="{LABELS}" y="{y + 1}" width="{plot}" height="{LANE - 2}" '
            'fill="#9e9e9e" fill-opacity="0.08"/>'
        )
        if aggregate and len(members) > plot / COLUMN:
            parts.extend(_density(members, y, t0, scale, plot, now))
        else:
            parts.extend(_bar(s, y, t0, scale, now) for s in members)
    parts.append(_axis(TOP + LANE * len(lanes), t1 - t0, scale, plot))
    parts.append("</svg>")
    return "".join(parts)


def _caption(
    spans: Sequence[Span], lanes: dict[str, list[Span]], t0: float, t1: float, aggregate: bool
) -> str:
    when = _dt.datetime.fromtimestamp(t0).strftime("%Y-%m-%d %H:%M:%S")
    tasks = len({s.task_id for s in spans})
    text = (
        f"{tasks} task{'s' if tasks != 1 else ''}, {len(spans)} attempt"
        f"{'s' if len(spans) != 1 else ''} on {len(lanes)} worker"
        f"{'s' if len(lanes) != 1 else ''} from {when} ({format_duration(t1 - t0)})"
    )
    if aggregate:
        text += " · busy lanes drawn as density"
    legend = []
    x = WIDTH - 8
    for status in reversed([s for s in COLORS if any(sp.status == s for sp in spans)]):
        x -= 7 * len(status) + 22
        legend.append(
            f'<rect x="{x}" y="5" width="10" height="10" fill="{COLORS[status]}"/>'
            f'<text x="{x + 13}" y="14" fill="#616161">{status}</text>'
        )
    return f'<text x="4" y="14" fill="#616161">{html.escape(text)}</text>{"".join(legend)}'


def _bar(s: Span, y: int, t0: float, scale: float, now: float) -> str:
    x = LABELS + (s.start - t0) * scale
    end = s.end if s.end is not None else now
    width = max((end - s.start) * scale - 0.5, 1.0)  # a hairline between adjacent bars
    took = format_duration(end - s.start, precise=True)
    retry = f" · attempt {s.attempt}" if s.attempt > 1 else ""
    tip = f"{s.name} {short_id(s.task_id)} · {s.status}{retry} · {took}"
    label = ""
    if width >= 40:
        label = (
            f'<text x="{x + 3:.1f}" y="{y + 13}" fill="#fff" pointer-events="none">'
            f"{html.escape(_clip(s.name, width - 6))}</text>"
        )
    return (
        f'<rect class="nbtasks-bar" data-task-id="{html.escape(s.task_id)}" '
        f'data-status="{html.escape(s.status)}" x="{x:.1f}" y="{y + 2}" width="{width:.1f}" '
        f'height="{LANE - 4}" fill="{COLORS.get(s.status, "#757575")}">'
        f"<title>{html.escape(tip)}</title></rect>{label}"
    )


def _density(
    members: Sequence[Span], y: int, t0: float, scale: float, plot: int, now: float
) -> list[str]:
    """A lane with more attempts than columns: per ``COLUMN`` px, how busy the worker was and
    with what, as runs of equal columns."""
    columns = plot // COLUMN
    per = COLUMN / scale  # seconds per column
    busy: list[dict[str, float]] = [{} for _ in range(columns)]
    counts = [0] * columns
    for s in members:
        start = s.start - t0
        end = (s.end if s.end is not None else now) - t0
        first = min(int(start / per), columns - 1)
        last = min(int(end / per), columns - 1)
        counts[first] += 1
        for c in range(first, last + 1):
            overlap = min(end, (c + 1) * per) - max(start, c * per)
            busy[c][s.status] = busy[c].get(s.status, 0.0) + max(overlap, per * 1e-3)
    out: list[str] = []
    c = 0
    while c < columns:
        if not busy[c]:
            c += 1
            continue
        key = _column_key(busy[c], per)
        run = c
        while run + 1 < columns and busy[run + 1] and _column_key(busy[run + 1], per) == key:
            run += 1
        status, shade = key
        n = sum(counts[c : run + 1])
        statuses: dict[str, float] = {}
        for col in busy[c : run + 1]:
            for k, v in col.items():
                statuses[k] = statuses.get(k, 0.0) + v
        mix = ", ".join(f"{k}" for k in sorted(statuses, key=lambda k: -statuses[k]))
        tip = f"{n} attempt{'s' if n != 1 else ''} started here ({mix})"
        out.append(
            f'<rect class="nbtasks-density" data-count="{n}" x="{LABELS + c * COLUMN}" '
            f'y="{y + 2}" width="{(run - c + 1) * COLUMN}" height="{LANE - 4}" '
            f'fill="{COLORS.get(status, "#757575")}" fill-opacity="{shade}">'
            f"<title>{tip}</title></rect>"
        )
        c = run + 1
    return out


def _column_key(column: dict[str, float], per: float) -> tuple[str, float]:
    """A column's dominant status and its opacity (how busy, in four steps)."""
    status = max(column, key=lambda k: column[k])
    shade = min(sum(column.values()) / per, 1.0)
    return status, round(0.25 + 0.75 * math.ceil(shade * 4) / 4, 2)


def _axis(y: int, span: float, scale: float, plot: int) -> str:
    parts = [
        f'<line x1="{LABELS}" y1="{y + 1}" x2="{LABELS + plot}" y2="{y + 1}" stroke="#9e9e9e"/>'
    ]
    for t in _ticks(span, plot):
        x = LABELS + t * scale
        parts.append(
            f'<line class="nbtasks-tick" x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + 5}" '
            f'stroke="#9e9e9e"/><text x="{x:.1f}" y="{y + 16}" text-anchor="middle" '
            f'fill="#616161">{html.escape(format_duration(t, precise=True) if t else "0")}</text>'
        )
    return "".join(parts)


# --------------------------------------------------------------------------- the object


class Timeline:
    """What ``app.timeline()`` returns: the chart of the tasks it selects, drawn from the store
    each time it is shown (``svg()``); in a notebook, a live widget."""

    def __init__(self, fetch: Callable[[], list[TaskRecord]], title: str = "") -> None:
        self._fetch = fetch
        self.title = title
        self.running = False  # some attempt ran when the chart was last drawn

    def spans(self) -> list[Span]:
        """The attempts, read from the store now."""
        spans = spans_of(self._fetch())
        self.running = any(s.end is None for s in spans)
        return spans

    def svg(self) -> str:
        """The chart as SVG text, drawn now."""
        return render_svg(self.spans())

    def __repr__(self) -> str:
        spans = self.spans()
        lanes = len({s.lane for s in spans})
        title = f"{self.title} " if self.title else ""
        return f"<Timeline {title}{len(spans)} attempts, {lanes} workers>"

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_html_(self) -> str:
        return f'<div class="nbtasks-timeline-static">{self.svg()}</div>'

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> dict[str, Any] | None:
        """A live widget in a kernel, SVG and HTML elsewhere (the views load here, as for a
        TaskResult's first display)."""
        from . import views

        return views.timeline_bundle(self, include, exclude)
