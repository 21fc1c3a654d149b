"""A task's displayed figure in a REAL browser (JupyterLab and Notebook 7 + chromium, SPEC §4
rich output): an ``<img>`` inside the task's widget while the task runs, and again after a page
reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_browser import WIDGET, setup_cell, shut_down_kernels, write_notebook
from test_dashboard_browser import open_in, run_and_wait, server_for

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
    """The figure as the user sees it: a decoded image, drawn inside the task's box. Measured in
    the page in one step: a live plot replaces its figure five times a second, so an image
    found by one call may be gone by the next."""
    seen = page.wait_for_function(
        """([imgSel, widgetSel]) => {
            const img = document.querySelector(imgSel);
            const widget = document.querySelector(widgetSel);
            if (!img || !widget || !(img.naturalWidth > 0)) return null;
            const b = img.getBoundingClientRect(), w = widget.getBoundingClientRect();
            if (b.width === 0) return null;
            return {box: [b.x, b.y, b.width, b.height], widget: [w.x, w.y, w.width, w.height],
                    src: img.getAttribute('src') || '',
                    count: document.querySelectorAll(imgSel).length};
        }""",
        arg=[IMG, WIDGET],
        timeout=30_000,
    ).json_value()
    (x, y, width, height), (wx, wy, wwidth, wheight) = seen["box"], seen["widget"]
    assert width > 50 and height > 30, seen
    assert wx <= x and x + width <= wx + wwidth, seen
    assert wy <= y and y + height <= wy + wheight, seen
    src = str(seen["src"])
    assert src.startswith("data:image/png;base64,") or src.startswith("blob:")
    return {"count": seen["count"], "status": status(page)}


def status(page: Any) -> str:
    return str(page.locator(f"{WIDGET} .nbtasks-status").first.get_attribute("data-status"))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("frontend", ["lab", "notebook"])
def test_a_displayed_figure_shows_in_the_widget_while_running_and_after_reload(
    request: pytest.FixtureRequest, page: Any, tmp_path: Path, frontend: str
) -> None:
    server = server_for(request, frontend)
    name = write_notebook(server, f"rich-{frontend}.ipynb", [setup_cell(tmp_path / "store"), PLOT])
    try:
        open_in(page, server, name)
        run_and_wait(page, 0)
        run_and_wait(page, 1)
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
        shut_down_kernels(server)
