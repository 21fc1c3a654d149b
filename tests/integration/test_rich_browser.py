"""A task's displayed figure in a REAL browser (JupyterLab + chromium, SPEC §4 rich output):
an ``<img>`` inside the task's widget while the task runs, and again after a page reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_browser import (
    WIDGET,
    kernel_status_is,
    open_notebook,
    run_cell,
    setup_cell,
    shut_down_kernels,
    write_notebook,
)

pytestmark = pytest.mark.browser

IMG = f"{WIDGET} .nbtasks-displayed .nbtasks-display img"

PLOT = """
from IPython.display import clear_output, display
from matplotlib.figure import Figure

@nbtasks.task
def live_plot(n, dt):
    losses = []
    for i in range(n):
        time.sleep(dt)
        losses.append(1 / (i + 1))
        fig = Figure(figsize=(3, 2), dpi=60)
        fig.add_subplot().plot(losses)
        clear_output(wait=True)  # a live plot: each figure replaces the last
        display(fig)
    return losses[-1]

r = live_plot.delay(60, 0.2)
r
"""


def image_inside_widget(page: Any) -> dict[str, Any]:
    """The figure as the user sees it: a decoded image, drawn inside the task's box."""
    page.wait_for_function(
        "(sel) => { const i = document.querySelector(sel); return i && i.naturalWidth > 0; }",
        arg=IMG,
        timeout=30_000,
    )
    img = page.locator(IMG).first
    box, widget = img.bounding_box(), page.locator(WIDGET).first.bounding_box()
    assert box is not None and widget is not None
    assert box["width"] > 50 and box["height"] > 30
    assert widget["x"] <= box["x"] and box["x"] + box["width"] <= widget["x"] + widget["width"]
    assert widget["y"] <= box["y"] and box["y"] + box["height"] <= widget["y"] + widget["height"]
    src = str(img.get_attribute("src") or "")
    assert src.startswith("data:image/png;base64,") or src.startswith("blob:")
    return {"count": page.locator(IMG).count(), "status": status(page)}


def status(page: Any) -> str:
    return str(page.locator(f"{WIDGET} .nbtasks-status").first.get_attribute("data-status"))


@pytest.mark.timeout(120)
def test_a_displayed_figure_shows_in_the_widget_while_running_and_after_reload(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    name = write_notebook(lab_server, "rich.ipynb", [setup_cell(tmp_path / "store"), PLOT])
    try:
        open_notebook(page, lab_server, name)
        run_cell(page, 0)
        kernel_status_is(page, "Idle")
        run_cell(page, 1)
        running = image_inside_widget(page)
        assert running == {"count": 1, "status": "RUNNING"}  # one live figure, replaced
        page.screenshot(path=str(tmp_path / "running.png"))
        page.keyboard.press("Control+s")  # keep the outputs (the widget's view) in the file
        page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=10_000)
        page.reload()
        page.wait_for_selector(WIDGET, timeout=60_000)
        try:
            reloaded = image_inside_widget(page)
        except Exception:  # what the page showed instead, for whoever reads the failure
            page.locator(WIDGET).first.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "reload-failed.png"))
            raise
        assert reloaded["count"] == 1 and reloaded["status"] == "RUNNING"
        page.wait_for_selector(
            f'{WIDGET} .nbtasks-status[data-status="SUCCESSFUL"]', timeout=30_000
        )
        assert image_inside_widget(page)["count"] == 1
        page.screenshot(path=str(tmp_path / "finished.png"))
    finally:
        shut_down_kernels(lab_server)
