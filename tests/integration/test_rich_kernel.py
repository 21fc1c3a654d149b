"""Rich output of tasks in a REAL ipykernel (SPEC §4): figures and objects displayed by a thread
task and a process task while another cell is busy reach the tasks' records and widgets, and
never the running cell (every iopub message is looked at, by its parent msg_id)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from test_kernel import last_task_widget, wait_for

if TYPE_CHECKING:
    from conftest import KernelDriver

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext nbtasks
import time
import nbtasks
from IPython.display import display, HTML

def plots(n, dt):
    from matplotlib.figure import Figure
    for i in range(n):
        time.sleep(dt)
        fig = Figure(figsize=(2, 1.5), dpi=40)
        fig.add_subplot().plot([i, 1, 2])
        display(fig)
        display({"epoch": i, "marker": "rich-json"})
    display(HTML("<b>rich-html</b>"))
    return n

thread_plots = nbtasks.task(name="rich.thread_plots")(plots)
process_plots = nbtasks.task(name="rich.process_plots", executor="process")(plots)
"""

MARKERS = ("rich-json", "rich-html", "image/png")


def leaked(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Display messages (any cell) that carry what the tasks displayed."""
    return [
        m
        for m in msgs
        if m["msg_type"] in ("display_data", "update_display_data", "execute_result")
        and any(marker in str(m["content"].get("data", {})) for marker in MARKERS)
    ]


def shown_bundles(kernel: KernelDriver, root: str) -> list[dict[str, Any]]:
    """The bundles the task widget's display area holds, as the frontend sees its models."""
    area = kernel.part(root, "nbtasks-displayed")
    bundles = []
    for cid in kernel.children(area):
        for output in kernel.models.get(cid, {}).get("outputs", []):
            bundles.append(output["data"])
    return bundles


@pytest.mark.timeout(120)
def test_displays_of_tasks_reach_their_widgets_never_the_busy_cell(kernel: KernelDriver) -> None:
    kernel.run(SETUP)
    kernel.run("t = thread_plots.delay(6, 0.25)\nt")
    thread_root = last_task_widget(kernel)
    kernel.run("p = process_plots.delay(6, 0.25)\np")
    process_root = last_task_widget(kernel)
    assert thread_root != process_root
    busy = kernel.run("time.sleep(2.5)\nprint('busy cell')")
    assert busy.stdout == "busy cell\n"
    assert busy.displays == []  # nothing the tasks displayed landed in the running cell
    kernel.run("t.wait(30); p.wait(30)")
    for root in (thread_root, process_root):
        wait_for(kernel, lambda root=root: len(shown_bundles(kernel, root)) == 13, timeout=30)
        shown = shown_bundles(kernel, root)
        assert all("image/png" in b for b in shown[0:12:2])
        assert [b["application/json"]["epoch"] for b in shown[1:12:2]] == list(range(6))
        assert shown[12]["text/html"] == "<b>rich-html</b>"
    stored = kernel.value("[[sorted(b) for b in r.displayed] for r in (t, p)]")
    for bundles in stored:
        assert len(bundles) == 13
        assert bundles[0] == ["image/png", "text/plain"]
        assert bundles[1] == ["application/json", "text/plain"]
    assert not leaked([m for _, m in kernel.msgs]), "a task's display reached a cell"
