"""Resource usage (SPEC §4: ``TaskResult.usage``) and the timeline (SPEC §8: ``app.timeline()``),
on real stores, real worker processes and the real widgets (outside a kernel ipywidgets use a
dummy comm, as in test_views.py).

Usage: a busy thread task's CPU time, a process task's peak memory against an array it filled,
both in the widget's timing line, ``%tasks``' text table and ``nbtasks show``; a worker that
filled memory and was SIGKILLed fails with a ``WorkerLost`` that says its peak, and names the
out-of-memory killer once the threshold is lowered. Timeline: the SVG parses, one ``<rect>``
per attempt in one lane per worker, coloured by status, titled by task; 10,000 tasks draw a
bounded, aggregated chart.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import POSIX_ONLY, wait_until

import nbtasks
from nbtasks import _cli, _timeline, views
from nbtasks._text import format_bytes, format_usage
from nbtasks.executors.process import usage as process_usage
from nbtasks.views import format as fmt
from nbtasks.views.snapshot import snapshot

SVG = "{http://www.w3.org/2000/svg}"
ARRAY = 150_000_000  # bytes a process task fills (every page touched)


def spin(seconds: float) -> int:
    """Burn this thread's CPU for ``seconds`` of CPU time."""
    t0 = time.thread_time()
    n = 0
    while time.thread_time() - t0 < seconds:
        n += 1
    return n


def nap(seconds: float) -> None:
    time.sleep(seconds)


def same(n: int) -> int:
    return n


def fill(n: int) -> int:
    block = bytearray(b"\x01") * n  # written, so resident (bytearray(n) may stay unmapped)
    return len(block)


def cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _cli.main(list(argv)) == 0
    return out.getvalue()


# ----------------------------------------------------------------------------- usage


def test_a_thread_task_records_its_cpu_time_and_no_peak_memory(
    app: nbtasks.App, store_path: Path
) -> None:
    busy = app.task(spin, name="usage.spin")
    idle = app.task(nap, name="usage.sleep")
    r, s = busy.delay(0.3), idle.delay(0.3)
    r.get(timeout=20), s.get(timeout=20)
    assert r.usage is not None and s.usage is not None
    assert 0.25 <= r.usage["cpu_time"] < 5 and r.usage["max_rss"] is None
    assert s.usage["cpu_time"] < 0.1  # sleeping costs no CPU: it is the task thread's own
    app.shutdown(wait=True)
    # Another process reads it from the store; nbtasks show and the widget say it.
    again = nbtasks.App(store=store_path, read_only=True).result(r.id)
    assert again.usage == r.usage
    shown = cli("show", r.id, "--store", str(store_path))
    assert f"usage: CPU {r.usage['cpu_time']:.1f} s" in shown and "peak" not in shown
    view = views.TaskView(r)
    assert "CPU 0.3 s" in view._info.value and "nbtasks-usage" in view._info.value


def test_usage_is_none_until_an_attempt_ends_and_for_the_last_attempt_only(
    app: nbtasks.App,
) -> None:
    @app.task(bind=True, retries=1)
    def second_try(self: nbtasks.Task, seconds: float) -> int:
        if self.request.retries == 0:
            raise RuntimeError("first attempt fails at once")
        return spin(seconds)

    r = second_try.delay(0.2)
    r.get(timeout=20)
    assert r.attempts == 2 and r.usage is not None and r.usage["cpu_time"] >= 0.15
    app.store.flush()
    rec = app.store.read_record(r.id)  # as committed
    [first, last] = rec["attempt_times"]  # one pair per attempt, as worker_ids
    assert first[0] <= first[1] <= last[0] <= last[1]
    assert last[1] == rec["finished_at"]
    waiting = app.task(spin).apply_async((0.0,), countdown=30)
    assert waiting.usage is None
    waiting.cancel()


@pytest.mark.timeout(90)
def test_a_process_task_records_its_cpu_and_peak_memory(app: nbtasks.App, store_path: Path) -> None:
    filler = app.task(fill, name="usage.fill", executor="process")
    burner = app.task(spin, name="usage.spin", executor="process")
    r = filler.delay(ARRAY)
    assert r.get(timeout=60) == ARRAY
    assert r.usage is not None and r.usage["max_rss"] >= ARRAY
    b = burner.delay(0.3)
    b.get(timeout=60)
    assert b.usage is not None and b.usage["cpu_time"] >= 0.25
    if sys.platform == "linux":  # the peak starts over with each attempt (clear_refs)
        assert b.usage["max_rss"] < ARRAY
    app.shutdown(wait=True)
    peak = format_bytes(r.usage["max_rss"])
    assert peak.endswith("MB") and f"peak {peak}" in cli("show", r.id, "--store", str(store_path))
    reader = nbtasks.App(store=store_path, read_only=True)
    table = views.dashboard_text(reader)
    assert f"peak {peak}" in table and "usage" in table.splitlines()[0]
    row = fmt.info_html(snapshot(reader.result(r.id)))
    assert f"peak {peak}" in row


@POSIX_ONLY
@pytest.mark.timeout(90)
@pytest.mark.parametrize("lowered", [False, True])
def test_a_worker_killed_by_sigkill_says_its_peak_memory(
    app: nbtasks.App, monkeypatch: pytest.MonkeyPatch, lowered: bool
) -> None:
    """The real OOM killer cannot be triggered here: the worker fills memory, and the test
    kills it with SIGKILL as the OOM killer would. The hint needs the peak to be "high": with
    the threshold lowered below it, the message names the OOM killer."""

    @app.task(name="usage.hog", executor="process", bind=True)
    def hog(self: nbtasks.Task, n: int) -> None:
        block = bytearray(b"\x01") * n
        self.progress(1, 1, message=f"holding {len(block)} bytes")
        time.sleep(60)

    if lowered:
        limit = process_usage.memory_limit()
        assert limit is not None
        monkeypatch.setattr(process_usage, "OOM_SHARE", ARRAY / 2 / limit)
    r = hog.delay(ARRAY)
    wait_until(lambda: r.progress is not None, timeout=60)
    ex = app._runtime._executors["process"]
    [proc] = wait_until(
        lambda: [p for p in ex._procs.values() if p.jobs and (p.peak_rss or 0) >= ARRAY],
        timeout=10,
    )
    os.kill(proc.pid, signal.SIGKILL)
    r.wait(30)
    assert r.status is nbtasks.TaskStatus.FAILED
    message = r.errors[-1].message
    assert r.errors[-1].exception_class_path == "nbtasks.WorkerLost"
    assert "was killed by SIGKILL" in message
    assert f"it was using {format_bytes(proc.peak_rss)} (peak) when it died" in message
    oom = "the system's out-of-memory killer likely ended it"
    assert (oom in message) is lowered
    assert r.usage is None  # the attempt never said how it ended


def test_the_oom_hint_and_the_usage_text() -> None:
    gb = 1_900_000_000
    assert process_usage.oom_hint(gb, limit=2 * gb, share=0.5) == (
        "; it was using 1.9 GB (peak) when it died: "
        "the system's out-of-memory killer likely ended it"
    )
    assert process_usage.oom_hint(gb, limit=8 * gb, share=0.5) == (
        "; it was using 1.9 GB (peak) when it died"
    )
    assert process_usage.oom_hint(None, limit=gb) == ""
    assert format_usage({"cpu_time": 1.234, "max_rss": 230_000_000}) == "CPU 1.2 s · peak 230 MB"
    assert format_usage({"cpu_time": 0.01, "max_rss": None}) == "CPU 0.0 s"
    # A store is data: whatever a record holds there, the text never fails.
    assert format_usage({"cpu_time": "x", "max_rss": [1]}) == ""
    assert format_usage(None) == format_usage("CPU") == ""


# ----------------------------------------------------------------------------- timeline


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_the_timeline_draws_one_bar_per_attempt_in_one_lane_per_worker(
    app: nbtasks.App,
) -> None:
    @app.task(name="tl.step", bind=True, retries=1)
    def step(self: nbtasks.Task, n: int) -> int:
        time.sleep(0.02)
        if n == 3 and self.request.retries == 0:
            raise ValueError("retried once")
        if n == 5:
            raise ValueError("fails")
        return n

    g = step.map(range(8))
    g.wait(timeout=20)
    timeline = app.timeline()
    root = _parse(timeline.svg())
    bars = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "nbtasks-bar"]
    results = g.results
    assert len(bars) == sum(r.attempts for r in results) == 10  # 3 and 5 ran twice
    # One lane per worker: the bars' rows are the workers the records name.
    workers = {w for r in results for w in r.worker_ids}
    lanes = [e for e in root.iter(f"{SVG}text") if e.get("class") == "nbtasks-lane"]
    assert len(lanes) == len(workers) == len({b.get("y") for b in bars})
    assert {lane.find(f"{SVG}title").text for lane in lanes} == workers  # type: ignore[union-attr]
    by_task: dict[str, list[ET.Element]] = {}
    for bar in bars:
        by_task.setdefault(bar.get("data-task-id") or "", []).append(bar)
    colors = _timeline.COLORS
    for r in results:
        # In time order (the SVG lists bars lane by lane: a retry may run in an earlier lane).
        [*earlier, last] = sorted(by_task[r.id], key=lambda b: float(b.get("x") or 0))
        assert last.get("fill") == colors[r.status.value]
        assert all(b.get("fill") == colors["FAILED"] for b in earlier)  # the retried attempt
        title = last.find(f"{SVG}title")
        assert title is not None and title.text is not None
        assert title.text.startswith(f"tl.step {r.id[-8:]}")
    assert {b.get("fill") for b in bars} == {colors["SUCCESSFUL"], colors["FAILED"]}
    # The selection: by name and status, newest first with a limit.
    assert len(list(_parse(app.timeline(status="FAILED").svg()).iter(f"{SVG}rect"))) < len(
        list(root.iter(f"{SVG}rect"))
    )
    assert repr(app.timeline(task_name="nothing")) == (
        "<Timeline task_name=nothing 0 attempts, 0 workers>"
    )
    assert "no task has started yet" in app.timeline(task_name="nothing").svg()
    bundle = timeline._repr_mimebundle_()
    assert bundle is not None and set(bundle) == {"image/svg+xml", "text/html", "text/plain"}
    with pytest.raises(ValueError, match="limit"):
        app.timeline(limit=-1)
    with pytest.raises(ValueError, match="status"):
        app.timeline(status="DONE")


def test_a_running_attempt_reaches_now_and_the_live_view_stops_when_none_runs(
    app: nbtasks.App,
) -> None:
    gate = __import__("threading").Event()

    @app.task(name="tl.wait")
    def wait_gate() -> None:
        gate.wait(20)

    r = wait_gate.delay()
    wait_until(lambda: r.status is nbtasks.TaskStatus.RUNNING)
    wait_until(lambda: app.store.read_record(r.id)["status"] == "RUNNING")  # committed
    view = views.TimelineView(app.timeline())
    assert view.live and view.min_period >= 0.5  # redrawn at most twice a second
    [bar] = [e for e in _parse(view.last_svg).iter(f"{SVG}rect") if e.get("class") == "nbtasks-bar"]
    assert bar.get("fill") == _timeline.COLORS["RUNNING"]
    gate.set()
    r.get(timeout=20)
    assert view.poll() is False  # nothing runs: the updater drops it
    assert view._chart.value == view.last_svg and _timeline.COLORS["SUCCESSFUL"] in view.last_svg
    assert view.static_bundle()["image/svg+xml"] == view.last_svg


@pytest.mark.timeout(120)
def test_ten_thousand_tasks_draw_a_bounded_aggregated_chart(app: nbtasks.App) -> None:
    noop = app.task(same, name="tl.noop")
    g = noop.map(range(10_000))
    g.wait(timeout=100)
    svg = app.timeline().svg()
    assert len(svg.encode()) < 300_000  # bounded by lanes and width, not by tasks
    root = _parse(svg)
    density = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "nbtasks-density"]
    bars = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "nbtasks-bar"]
    assert density and len(bars) + len(density) < 2_000
    # Every attempt is counted once, in the lane of its worker.
    assert sum(int(e.get("data-count") or 0) for e in density) + len(bars) == 10_000
    assert "busy lanes drawn as density" in svg
    # The same chart from spans in memory: many workers share a last lane past MAX_LANES.
    spans = [
        _timeline.Span(f"host:{i}:w", float(i), i + 0.5, "SUCCESSFUL", "t", f"id{i}", 1)
        for i in range(_timeline.MAX_LANES + 40)
    ]
    many = _parse(_timeline.render_svg(spans, now=1e3))
    lanes = [e.text for e in many.iter(f"{SVG}text") if e.get("class") == "nbtasks-lane"]
    assert len(lanes) == _timeline.MAX_LANES + 1 and lanes[-1] == "40 more workers"
