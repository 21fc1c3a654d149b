"""Unit tests of nbtasks.views: text/HTML rendering, widgets and the view updater, no kernel.

ipywidgets work outside a kernel (their comm is a ``comm.DummyComm``), so the widgets are
built and their traits checked here; what reaches a frontend is checked in
``tests/integration``.  Fakes stand in for TaskResult/GroupResult (duck typing, as the views
read them) except in the tests at the end, which use a real App and store.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import wait_until

from nbtasks import views
from nbtasks.views import display, snapshot, task, updater
from nbtasks.views import format as fmt

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class FakeResult:
    """Duck-typed TaskResult: ``refresh()`` copies the fields of ``source`` (the 'store')."""

    def __init__(self, **fields: Any) -> None:
        self.source: dict[str, Any] = {
            "id": "0190a1b2-c3d4-7e5f-8a9b-0123456789ab",
            "task_name": "demo.train",
            "status": "RUNNING",
            "enqueued_at": T0,
            "started_at": T0,
            "finished_at": None,
            "progress": None,
            "metadata": {},
            "output": "",
            "errors": [],
            "worker_ids": ["w1"],
            "state": None,
        }
        self.source.update(fields)
        self.cancelled = False
        self.refreshes = 0
        self.refresh()

    def refresh(self) -> FakeResult:
        self.refreshes += 1
        for key, value in self.source.items():
            setattr(self, key, value)
        self.attempts = len(self.worker_ids)
        return self

    def cancel(self) -> bool:
        self.cancelled = True
        self.source["status"] = "CANCELLED"
        return True


def progress(current: float, total: float | None, message: str | None = None) -> Any:
    fraction = None if not total else current / total
    return SimpleNamespace(
        current=current, total=total, fraction=fraction, message=message, rate=2.0, eta=4.0
    )


class FakeGroup:
    def __init__(self, members: list[FakeResult]) -> None:
        self.id = "0190a1b2-c3d4-7e5f-8a9b-ffffffffffff"
        self.results = members

    def completed_count(self) -> int:
        return sum(r.status in views.TERMINAL for r in self.results)

    def cancel(self) -> None:
        for r in self.results:
            r.cancel()


@pytest.fixture(autouse=True)
def fresh_updater() -> Iterator[None]:
    """Each test gets its own updater and view cache."""
    updater._updater = None
    display._views.clear()
    yield
    if updater._updater is not None:
        updater._updater.stop()
    updater._updater = None
    display._views.clear()


# ----------------------------------------------------------------------------- text and HTML
def test_summary_line_is_one_line_with_name_short_id_status_and_progress() -> None:
    r = FakeResult(progress=progress(42, 100, "loading"))
    line = views.summary_line(r)
    assert line == "<TaskResult demo.train 456789ab RUNNING 42/100 (42%) · loading>"
    assert "\n" not in line


def test_summary_line_of_a_failed_task_names_the_exception() -> None:
    err = SimpleNamespace(exception_class_path="builtins.ZeroDivisionError", traceback="tb")
    r = FakeResult(status="FAILED", errors=[err], finished_at=T0)
    assert views.summary_line(r).endswith("FAILED ZeroDivisionError>")


def test_group_summary_counts_statuses() -> None:
    members = [FakeResult(status=s) for s in ("SUCCESSFUL", "SUCCESSFUL", "RUNNING", "FAILED")]
    line = views.summary_line(FakeGroup(members))
    assert "3/4 finished" in line
    assert "2 SUCCESSFUL" in line and "1 RUNNING" in line and "1 FAILED" in line


def test_html_escapes_everything_user_controlled() -> None:
    err = SimpleNamespace(exception_class_path="x.<E>", traceback="<script>alert(1)</script>")
    r = FakeResult(
        task_name="<b>name</b>",
        status="FAILED",
        finished_at=T0,
        errors=[err],
        progress=progress(1, 2, "<img src=x>"),
        output="<i>out</i>",
    )
    page = views.html_bundle(r)["text/html"]
    for raw in ("<b>name</b>", "<script>", "<img src=x>", "<i>out</i>", "x.<E>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_mimebundle_outside_a_kernel_is_text_and_html_and_honours_include_exclude() -> None:
    r = FakeResult()
    bundle = views.mimebundle(r)
    assert bundle is not None and set(bundle) == {"text/plain", "text/html"}
    assert views.mimebundle(r, include=["text/plain"]) == {"text/plain": bundle["text/plain"]}
    assert set(views.mimebundle(r, exclude=["text/html"]) or {}) == {"text/plain"}


def test_text_path_never_imports_ipywidgets_or_ipython() -> None:
    code = (
        "import sys, types\n"
        "from nbtasks import views\n"
        "r = types.SimpleNamespace(id='i', task_name='t', status='RUNNING', progress=None)\n"
        "b = views.mimebundle(r)\n"
        "assert set(b) == {'text/plain', 'text/html'}, b\n"
        "bad = [m for m in ('ipywidgets', 'IPython', 'ipykernel') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_progress_and_timing_text() -> None:
    now = T0 + dt.timedelta(seconds=5)
    snap = snapshot.snapshot(FakeResult(progress=progress(3, 10, "step")))
    assert fmt.progress_text(snap) == "3/10 (30%) · step"
    assert fmt.timing_text(snap, now) == "elapsed 5.0 s · 2/s · ETA 4.0 s"
    unknown_total = snapshot.snapshot(FakeResult(progress=progress(7, None)))
    assert fmt.progress_text(unknown_total) == "7 done"
    ready = snapshot.snapshot(FakeResult(status="READY", started_at=None))
    assert fmt.timing_text(ready, now) == "waiting 5.0 s"
    done = snapshot.snapshot(FakeResult(status="SUCCESSFUL", finished_at=now))
    assert fmt.timing_text(done, now) == "took 5.0 s"


def test_store_summary_rows_are_read_without_loading_results() -> None:
    row = {
        "id": "abc-123",
        "task_name": "t",
        "status": "RUNNING",
        "progress": [5, 20, "m", 2.5],
        "enqueued_at": T0.timestamp(),
        "started_at": T0.isoformat(),
        "finished_at": None,
    }
    snap = snapshot.summary_snapshot(row)
    assert (snap.current, snap.total, snap.fraction, snap.message) == (5, 20, 0.25, "m")
    assert snap.eta == 6.0
    assert snap.enqueued_at == T0 and snap.started_at == T0


# ----------------------------------------------------------------------------- widgets
def test_task_widget_shows_state_and_sets_only_changed_traits() -> None:
    r = FakeResult(progress=progress(1, 4, "one"), metadata={"user": "dkl"})
    view = views.TaskView(r)
    assert view.live
    assert view._bar.value == 0.25 and view._bar.max == 1.0
    assert "RUNNING" in view._header.value and "demo.train" in view._header.value
    assert "1/4 (25%) · one" in view._info.value
    assert view._meta.selected_index is None  # metadata collapsed
    assert view._meta.titles == ("metadata (1 key)",)
    assert view._cancel.layout.display is None

    view._handle.source["progress"] = progress(3, 4, "three")
    before = views.updater_stats().messages
    assert view.poll() is True
    assert view._bar.value == 0.75
    sent = views.updater_stats().messages - before
    assert 1 <= sent <= 3  # bar, info (elapsed changes too); nothing else
    before = views.updater_stats().messages
    view.poll()
    assert views.updater_stats().messages - before <= 1  # only the elapsed time may change


def test_task_widget_final_states() -> None:
    r = FakeResult(progress=progress(1, 4))
    view = views.TaskView(r)
    err = SimpleNamespace(exception_class_path="builtins.ValueError", traceback="Traceback: boom")
    r.source.update(status="FAILED", errors=[err], finished_at=T0 + dt.timedelta(seconds=2))
    assert view.poll() is False
    assert view._bar.bar_style == "danger"
    assert "FAILED" in view._header.value
    assert "builtins.ValueError" in view._error.value and "Traceback: boom" in view._error.value
    assert view._error.layout.display is None
    assert view._cancel.disabled and view._cancel.layout.display == "none"

    ok = FakeResult(status="SUCCESSFUL", finished_at=T0, progress=None)
    assert views.TaskView(ok)._bar.value == 1.0  # full bar without progress reports
    assert not views.TaskView(ok).live


def test_task_widget_retry_count() -> None:
    r = FakeResult(worker_ids=["w1", "w2", "w3"])
    view = views.TaskView(r)
    assert "retry 2" in view._header.value


def test_output_tail_is_appended_with_append_stdout() -> None:
    r = FakeResult(output="a\n")
    view = views.TaskView(r)
    assert [o["text"] for o in view._out.outputs] == ["a\n"]
    r.source["output"] = "a\nb\n"
    view.poll()
    r.source["output"] = "a\nb\nc\n"
    view.poll()
    assert "".join(o["text"] for o in view._out.outputs) == "a\nb\nc\n"
    assert len(view._out.outputs) == 3  # one append per new piece
    # the task's bounded tail rolled over: the widget starts over with the tail
    r.source["output"] = "b\nc\nd\n"
    view._last_reset = 0.0
    view.poll()
    assert "".join(o["text"] for o in view._out.outputs) == "b\nc\nd\n"


def test_output_widget_is_compacted() -> None:
    r = FakeResult(output="")
    view = views.TaskView(r)
    text = ""
    for i in range(task.OUTPUT_MAX_APPENDS + 5):
        text += f"line {i}\n"
        r.source["output"] = text
        view._last_reset = 0.0
        view.poll()
    assert len(view._out.outputs) < task.OUTPUT_MAX_APPENDS
    assert "".join(o["text"] for o in view._out.outputs).endswith(text[-50:])


def test_cancel_button_cancels_and_nudges_the_updater() -> None:
    r = FakeResult(progress=progress(1, 4))
    view = views.TaskView(r)
    view._cancel.click()
    assert view._handle.cancelled
    wait_until(lambda: not view.live, timeout=5)
    assert "CANCELLED" in view._header.value
    assert view._cancel.layout.display == "none"


def test_updater_error_is_shown_in_the_widget() -> None:
    r = FakeResult()
    view = views.TaskView(r)

    def broken() -> None:
        raise OSError("store unreachable")

    view._handle.refresh = broken  # type: ignore[method-assign]
    assert view.failed(OSError("store unreachable")) is True
    assert "store unreachable" in view._problem.value
    assert view._problem.layout.display is None


def segments(page: str) -> dict[str, float]:
    """The stacked bar's segments in ``page``: status -> width in percent."""
    found = re.findall(
        r'class="nbtasks-segment" data-status="(\w+)"[^>]*style="width:([\d.]+)%', page
    )
    return {status: float(width) for status, width in found}


def test_group_widget_aggregates_and_expands() -> None:
    members = [FakeResult(status="READY", started_at=None) for _ in range(4)]
    group = FakeGroup(members)
    view = views.GroupView(group)
    assert segments(view._bar.value) == {} and view.live  # all READY: the empty track
    assert "0/4</b> finished" in view._counts.value
    view._members[0].source.update(status="SUCCESSFUL", finished_at=T0)
    view._members[1].source.update(status="RUNNING", progress=progress(1, 2))
    view.poll()
    assert segments(view._bar.value) == {"SUCCESSFUL": 25.0, "RUNNING": 25.0}
    assert 'data-status="SUCCESSFUL"' in view._counts.value
    assert view._table.value == ""  # collapsed: members not rendered
    view._expand.selected_index = 0
    view.poll()
    assert view._table.value.count("<tr>") == 5  # header + 4 members
    for m in view._members:
        m.source.update(status="SUCCESSFUL", finished_at=T0)
    assert view.poll() is False
    assert segments(view._bar.value) == {"SUCCESSFUL": 100.0}


def test_group_bar_is_split_by_status_in_the_widget_and_the_static_fallback() -> None:
    """21 failures in 2,000: a thin red segment beside the green, not a red bar."""
    members = [
        FakeResult(status="FAILED" if i < 21 else "SUCCESSFUL", finished_at=T0) for i in range(2000)
    ]
    view = views.GroupView(FakeGroup(members))
    expected = {"SUCCESSFUL": 100 * 1979 / 2000, "FAILED": 100 * 21 / 2000}
    for page in (view._bar.value, view.static_bundle()["text/html"]):
        assert segments(page) == pytest.approx(expected, abs=0.001)
        assert 'title="21 FAILED"' in page and "min-width:2px" in page
    assert "21 FAILED" in view.static_bundle()["text/plain"]


def test_expanded_metadata_and_members_get_a_max_height_and_a_scroll() -> None:
    """Issue 17: 40 metadata keys made a cell 12,400 px tall, 200 members 6,800 px. The
    browser test measures the rendered height; here, the layout that bounds it."""
    from nbtasks.views.widgets import SCROLL_HEIGHT

    view = views.TaskView(FakeResult(metadata={f"key{i}": i for i in range(40)}))
    assert view._meta_html.layout.max_height == SCROLL_HEIGHT
    assert view._meta_html.layout.overflow == "auto"
    members = [FakeResult(id=f"0190a1b2-c3d4-7e5f-8a9b-{i:012x}") for i in range(200)]
    group = views.GroupView(FakeGroup(members))
    assert group._table.layout.max_height == SCROLL_HEIGHT
    assert group._table.layout.overflow == "auto"


# ----------------------------------------------------------------------------- updater
class CountingView:
    def __init__(self, polls_until_done: int) -> None:
        self.left = polls_until_done
        self.live = True
        self.next_due = 0.0
        self.min_period = updater.PERIOD
        self.times: list[float] = []

    def poll(self) -> bool:
        self.times.append(time.monotonic())
        self.left -= 1
        self.live = self.left > 0
        return self.live

    def failed(self, exc: BaseException) -> bool:
        return False


def test_updater_polls_at_most_ten_times_a_second_stops_and_restarts() -> None:
    up = updater.updater()
    view = CountingView(8)
    up.register(view)
    wait_until(lambda: not up.running, timeout=5)
    assert not up.running, "the updater must stop when nothing displayed is live"
    assert len(view.times) == 8
    gaps = [b - a for a, b in zip(view.times, view.times[1:], strict=False)]
    assert min(gaps) >= 0.09, gaps
    started = views.updater_stats().threads_started
    again = CountingView(2)
    up.register(again)
    wait_until(lambda: not again.live, timeout=5)
    assert len(again.times) == 2
    assert views.updater_stats().threads_started == started + 1


def test_only_one_updater_thread_for_many_views() -> None:
    up = updater.updater()
    views = [CountingView(5) for _ in range(30)]
    for v in views:
        up.register(v)
    names = [t.name for t in threading.enumerate() if t.name == "nbtasks-view-updater"]
    assert len(names) == 1
    wait_until(lambda: not any(v.live for v in views), timeout=5)
    assert all(len(v.times) == 5 for v in views)


def test_a_failing_view_does_not_stop_the_others() -> None:
    class Boom(CountingView):
        def poll(self) -> bool:
            raise RuntimeError("boom")

    up = updater.updater()
    bad, good = Boom(1), CountingView(3)
    up.register(bad)
    up.register(good)
    wait_until(lambda: not up.running, timeout=5)
    assert len(good.times) == 3
    assert "boom" in views.updater_stats().last_error


# ----------------------------------------------------------------------------- dashboard
class FakeStore:
    def __init__(self, n: int) -> None:
        base = T0.timestamp()
        self.rows = [
            {
                "id": f"{i:08x}-0000-7000-8000-{i:012x}",
                "task_name": "even" if i % 2 == 0 else "odd",
                "status": "RUNNING" if i % 10 == 0 else "SUCCESSFUL",
                "progress": [i % 7, 7, None, None],
                "enqueued_at": base + i,
                "started_at": base + i,
                "finished_at": None if i % 10 == 0 else base + i + 1,
            }
            for i in range(n)
        ][::-1]
        self.queries = 0
        self.limits: list[int | None] = []  # the limit of every summaries() call

    def usages(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The finished tasks' usage, as ``Store.usages`` reads it from their records."""
        return {tid: {"cpu_time": 0.5, "max_rss": None} for tid in ids}

    def _match(self, status: Any, name: str | None, part: str | None) -> list[dict[str, Any]]:
        statuses = (
            None if status is None else ({status} if isinstance(status, str) else set(status))
        )
        return [
            r
            for r in self.rows
            if (statuses is None or r["status"] in statuses)
            and (name is None or r["task_name"] == name)
            and (part is None or part.lower() in r["task_name"].lower())
        ]

    def summaries(
        self,
        status: Any = None,
        name: str | None = None,
        offset: int = 0,
        limit: int | None = 50,
        *,
        name_part: str | None = None,
    ) -> list[dict[str, Any]]:
        self.queries += 1
        self.limits.append(limit)
        rows = self._match(status, name, name_part)[offset:]
        return rows if limit is None else rows[:limit]

    def count(
        self, status: Any = None, name: str | None = None, *, name_part: str | None = None
    ) -> int:
        return len(self._match(status, name, name_part))


class FakeApp:
    def __init__(self, n: int) -> None:
        self.store = FakeStore(n)
        self.cancelled: list[str] = []

    def result(self, task_id: str) -> Any:
        app = self

        class R:
            def cancel(self) -> bool:
                app.cancelled.append(task_id)
                return True

        return R()


def _row_texts(board: views.Dashboard) -> list[str]:
    return [
        c.value
        for c, r in zip(board._cells, board._rows, strict=True)
        if r.layout.display != "none"
    ]


def test_dashboard_pages_filters_and_cancels() -> None:
    app = FakeApp(45)
    board = views.Dashboard(app, page_size=20)
    rows = _row_texts(board)
    assert len(rows) == 20
    assert "tasks 1-20 of 45" in board._page.value
    bundle = board._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].endswith("(20 of 45 tasks)")
    assert bundle["text/html"].count("data-task-id") == 20
    assert board._prev.disabled and not board._next.disabled
    assert app.store.rows[0]["id"] in rows[0]  # newest first
    # a cancel button only on unfinished rows
    visible = [b.layout.visibility for b in board._buttons]
    assert visible[0] == "hidden" and "visible" in visible
    board._move(+1)
    board.poll()
    assert "tasks 21-40 of 45" in board._page.value
    board._move(+1)
    board.poll()
    assert "tasks 41-45 of 45" in board._page.value and board._next.disabled
    assert len(_row_texts(board)) == 5
    board._status.value = "RUNNING"
    board.poll()
    assert "of 5" in board._page.value and board.offset == 0
    assert all('data-status="RUNNING"' in t for t in _row_texts(board))
    board._name.value = "odd"
    board.poll()
    assert "tasks 0-0 of 0" in board._page.value
    board._name.value = ""
    board.poll()
    first_running = board._row_ids[0]
    board._buttons[0].click()
    assert app.cancelled == [first_running]


def test_a_quiet_dashboard_wakes_when_another_view_registers() -> None:
    app = FakeApp(3)
    for row in app.store.rows:
        row["status"] = "SUCCESSFUL"
    board = views.live_dashboard(app, page_size=5)
    wait_until(lambda: not updater.updater().running)  # nothing unfinished: it went quiet
    assert not board.live
    app.store.rows[0]["status"] = "RUNNING"  # a task another kernel started
    updater.updater().register(CountingView(1))  # e.g. a task widget displayed here
    assert board.live
    wait_until(lambda: 'data-status="RUNNING"' in _row_texts(board)[0], timeout=5)


def test_dashboard_on_a_big_store_reads_one_page_at_a_time() -> None:
    """Opening and paging read a page of rows, never the whole store (how fast that is:
    benchmarks/store.py; tests assert no timings)."""
    app = FakeApp(100_000)
    board = views.Dashboard(app, page_size=20)
    assert "of 100000" in board._page.value
    board._move(+1)
    board.poll()
    assert "tasks 21-40 of 100000" in board._page.value
    assert app.store.limits and all(limit is not None and limit <= 20 for limit in app.store.limits)


def test_dashboard_filters_as_you_type_by_part_of_the_name_in_any_case(tmp_path: Path) -> None:
    """Issue 17: "qui" and "Quick" found nothing among "quick" tasks, and an empty page was a
    blank area. A real store: the filter is its query (``name_part``)."""
    import nbtasks

    with nbtasks.App(store=tmp_path / "store", workers=2) as app:

        @app.task(name="quick")
        def quick(x: int) -> int:
            return x

        @app.task(name="Slow.Step")
        def slow(x: int) -> int:
            return x

        quick.map(range(25)).wait(30)
        slow.map(range(3)).wait(30)
        board = views.Dashboard(app, page_size=20)
        assert board._name.continuous_update  # each keystroke reaches the kernel
        assert board._empty.layout.display == "none"
        for typed, total in (("qui", 25), ("Quick", 25), ("UICK", 25), ("step", 3), ("", 28)):
            board._name.value = typed  # what a keystroke does; the updater runs the query
            wait_until(lambda total=total: f"of {total}" in board._page.value, timeout=5)
            assert board._empty.layout.display == "none"
        board._name.value = "quick"
        wait_until(lambda: "tasks 1-20 of 25" in board._page.value, timeout=5)
        assert all(">quick<" in text for text in _row_texts(board))
        board._name.value = "nothing-like-it"
        wait_until(lambda: "of 0" in board._page.value, timeout=5)
        assert _row_texts(board) == []
        assert board._empty.layout.display != "none"
        assert "no matching tasks" in board._empty.value
        assert "no matching tasks" in board._repr_mimebundle_()["text/plain"]
        assert "of 3" in views.dashboard_text(app, name="STEP")


def test_dashboard_header_is_not_stretched_by_the_rows_flex_basis() -> None:
    """The header once shared the rows' cell layout (``flex: 0 1 54em``): in the dashboard's
    vertical box that basis is a height, ~700 px of blank space (the browser test measures
    it). No direct child of the VBox may carry a flex basis."""
    board = views.Dashboard(FakeApp(3), page_size=5)
    for child in board.root.children:
        assert not child.layout.flex, child


def test_started_column_has_the_date_when_not_today() -> None:
    at = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
    assert fmt.fmt_when(at, at) == at.astimezone().strftime("%H:%M:%S")
    earlier = dt.datetime(2026, 3, 5, 12, 3, tzinfo=dt.UTC)
    local = earlier.astimezone()
    assert fmt.fmt_when(earlier, at) == f"Mar {local.day} {local:%H:%M}"
    last_year = dt.datetime(2025, 6, 15, 12, 0, tzinfo=dt.UTC)
    assert fmt.fmt_when(last_year, at) == "Jun 15 2025"


# ----------------------------------------------------------------------------- real core
TERMINAL_SCRIPT = """
import sys
from IPython.core.interactiveshell import InteractiveShell
import nbtasks

shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "nbtasks")

@nbtasks.task
def add(x, y):
    nbtasks.current().progress(1, 1, "added")
    return x + y

r = add.delay(1, 2)
r.wait(10)
data, _ = shell.display_formatter.format(r)
assert set(data) == {"text/plain", "text/html"}, data
assert data["text/plain"].startswith("<TaskResult add ") and "SUCCESSFUL" in data["text/plain"]
result = shell.run_cell("%%task -o t --name sum\\nx = 20\\nx + 22")
assert result.success, result
t = shell.user_ns["t"]
assert t.wait(10).return_value == 42 and shell.user_ns["x"] == 20
tasks = shell.run_cell("%tasks")   # outside a kernel: a text table, not a widget
assert tasks.success, tasks
bad = [m for m in ("ipywidgets", "ipykernel") if m in sys.modules]
assert not bad, bad
print("OK")
"""


@pytest.mark.timeout(60)
def test_terminal_ipython_gets_text_and_no_widget_machinery(tmp_path: Path) -> None:
    """Terminal IPython: text/HTML reprs, working magics, and ipywidgets never imported."""
    env = {**os.environ, "NBTASKS_STORE": str(tmp_path / "store")}
    proc = subprocess.run(
        [sys.executable, "-c", TERMINAL_SCRIPT],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr
    assert "(2 of 2 tasks)" in proc.stdout and "SUCCESSFUL" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dashboard_pages_through_a_store_of_100k_tasks(tmp_path: Path) -> None:
    """The dashboard counts and pages 100,000 tasks (its speed is measured by
    benchmarks/store.py's summary, which is what it reads; tests assert no timings)."""
    import nbtasks

    with nbtasks.App(store=tmp_path / "store", workers=2) as app:

        @app.task
        def noop(x: int) -> int:
            return x

        noop.map(range(100_000)).wait(90)
    app = nbtasks.App(store=tmp_path / "store")
    try:
        board = views.Dashboard(app, page_size=20)
        assert "tasks 1-20 of 100000" in board._page.value
        board._move(+1)
        board.poll()
        assert "tasks 21-40 of 100000" in board._page.value
    finally:
        app.shutdown()


# ----------------------------------------------------------------------------- what a task shows
def test_a_failed_task_widget_reads_like_ipython(tmp_path: Path) -> None:
    """ "ValueError: message", no nbtasks frames, no orange retry, no empty bar (real App)."""
    import nbtasks

    with nbtasks.App(store=tmp_path / "store", workers=1) as app:

        @app.task(retries=2, retry_backoff=0)
        def parse(text: str) -> int:
            return int(text)

        r = parse.delay("forty-two")
        r.wait(30)
        view = views.TaskView(r)
    errors = view._error.value
    assert "attempt 3: <code" in errors and "ValueError: invalid literal for int()" in errors
    assert "builtins" not in errors.split("<pre", 1)[0].replace('title="builtins.', "")
    shown_tb = errors.split("<pre", 1)[1]
    assert "test_views.py" in shown_tb and "return int(text)" in shown_tb
    assert "/nbtasks/" not in shown_tb and "nbtasks frames not shown" in shown_tb
    assert "/nbtasks/" in r.errors[-1].traceback  # the record keeps them
    assert "retry" not in view._header.value and "3 attempts" in view._header.value
    assert view._bar.layout.display == "none"  # FAILED without progress: no empty grey bar
    assert "var(--jp-error-color1" in errors  # the theme's error colour (dark theme too)
    assert "retry" not in view.static_bundle()["text/html"]


def test_shown_traceback_names_cells_and_keeps_a_traceback_of_nbtasks_itself() -> None:
    from nbtasks import _errors

    pkg = str(Path(_errors.__file__).parent)
    tb = (
        "Traceback (most recent call last):\n"
        f'  File "{pkg}/_attempt.py", line 10, in run\n    value = fn()\n            ^^^^\n'
        '  File "/tmp/ipykernel_77/123.py", line 3, in f\n    raise ValueError("x")\n'
        "ValueError: x\n"
    )
    labels = {"/tmp/ipykernel_77/123.py": "Cell In[7]"}
    shown, hidden = _errors.shown_traceback(tb, labels.get)
    assert hidden == 1
    assert shown == (
        "Traceback (most recent call last):\n"
        '  Cell In[7], line 3, in f\n    raise ValueError("x")\nValueError: x\n'
    )
    only_ours = f'Traceback:\n  File "{pkg}/_app.py", line 1, in x\n    y\nKeyError: 1\n'
    assert _errors.shown_traceback(only_ours) == (only_ours, 0)


def test_a_successful_task_shows_a_short_repr_of_its_value(tmp_path: Path) -> None:
    import nbtasks

    with nbtasks.App(store=tmp_path / "store", workers=1) as app:

        @app.task
        def fit() -> dict[str, Any]:
            return {"loss": 0.25, "weights": list(range(1000))}

        @app.task
        def make_lock() -> Any:
            return threading.Lock()  # not picklable: only this process has it

        r, u = fit.delay(), make_lock.delay()
        r.wait(30), u.wait(30)
        info = views.TaskView(r)._info.value
        value = info.split("<code>", 1)[1].split("</code>", 1)[0]
        assert value.startswith("{&#x27;loss&#x27;: 0.25, &#x27;weights&#x27;: [0, 1, 2")
        assert len(html_unescape(value)) <= 80
        assert "_thread.lock object" in views.TaskView(u)._info.value  # in memory: its repr
    later = nbtasks.App(store=tmp_path / "store")  # another process's view: from the store
    try:
        assert "(value not picklable)" in views.TaskView(later.result(u.id))._info.value
        assert "&#x27;loss&#x27;: 0.25" in views.TaskView(later.result(r.id))._info.value
    finally:
        later.shutdown()


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_the_output_box_follows_the_end_and_says_what_it_does_not_show() -> None:
    text = "".join(f"line {i}\n" for i in range(10_000))[-64 * 1024 :]  # the stored tail
    r = FakeResult(output="")
    view = views.TaskView(r)
    r.source["output"] = text
    view._last_reset = 0.0
    view.poll()
    shown = "".join(o["text"] for o in view._out.outputs)
    assert shown.endswith("line 9999\n") and shown.startswith("line ")  # whole lines
    hidden = text.count("\n") - shown.count("\n")
    assert hidden > 0
    assert f"… {hidden:,} earlier lines not shown" in view._out_note.value
    assert view._out_note.layout.display is None
    layout = view._out.layout
    assert (layout.display, layout.flex_flow) == ("flex", "column-reverse")  # follows the end
    page = view.static_bundle()["text/html"]  # what a saved notebook keeps
    assert "earlier lines not shown" in page and page.rstrip().endswith("line 9999\n</pre></div>")


def test_a_long_name_is_cut_with_an_ellipsis_not_the_cancel_button() -> None:
    r = FakeResult(task_name="x" * 300)
    view = views.TaskView(r)
    assert f'title="{"x" * 300}"' in view._header.value
    assert "text-overflow:ellipsis" in view._header.value
    assert view._header.layout.min_width == "0"
    assert view._cancel.layout.flex == "0 0 auto"


def test_live_views_say_the_kernel_stopped_when_the_updater_stops() -> None:
    r = FakeResult(progress=progress(1, 4))
    view = views.TaskView(r)
    group = views.GroupView(FakeGroup([FakeResult()]))
    updater.updater().register(view)
    updater.updater().register(group)
    assert updater.updater().flush(5.0)  # both polled once: the updater is running
    updater.updater().stop()
    for shown in (view._info.value, group._counts.value):
        assert "kernel stopped: state as of" in shown
    assert view._cancel.disabled and group._cancel.disabled
    assert "kernel stopped" in view.static_bundle()["text/plain"]
    assert "kernel stopped" in group.static_bundle()["text/html"]
