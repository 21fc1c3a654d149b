"""The timeline (``%tasks --timeline``, SPEC §8) in a REAL browser: JupyterLab and Notebook 7
with chromium.

A ``map`` is submitted and its timeline shown in the same cell while it runs: the page must show
an inline SVG chart with one bar per task, laid out in lanes inside the chart, and the view
updater must redraw it until every bar is coloured as SUCCESSFUL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_browser import setup_cell, shut_down_kernels, write_notebook
from test_dashboard_browser import open_in, run_and_wait, server_for

pytestmark = pytest.mark.browser

CHART = ".nbtasks-timeline svg.nbtasks-timeline"
BARS = f"{CHART} rect.nbtasks-bar"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("frontend", ["lab", "notebook"])
def test_the_timeline_renders_as_svg_with_one_bar_per_task_and_redraws_live(
    request: pytest.FixtureRequest, page: Any, tmp_path: Path, frontend: str
) -> None:
    server = server_for(request, frontend)
    store = tmp_path / "store"
    name = write_notebook(
        server,
        f"timeline-{frontend}.ipynb",
        [setup_cell(store), "g = steps.starmap([(10, 0.1)] * 6)\n%tasks --timeline"],
    )
    try:
        open_in(page, server, name)
        run_and_wait(page, 0)
        run_and_wait(page, 1)
        page.wait_for_selector(CHART, timeout=30_000)
        # Drawn while the map runs: some bars are RUNNING at first ...
        page.wait_for_function(
            "(sel) => [...document.querySelectorAll(sel)]"
            ".some(r => r.dataset.status === 'RUNNING')",
            arg=BARS,
            timeout=30_000,
        )
        # ... and the updater redraws it until all six have ended.
        page.wait_for_function(
            "(sel) => { const bars = [...document.querySelectorAll(sel)];"
            " return bars.length === 6 && bars.every(r => r.dataset.status === 'SUCCESSFUL'); }",
            arg=BARS,
            timeout=30_000,
        )
        page.screenshot(path=str(tmp_path / "timeline.png"))
        chart = page.locator(CHART).first.bounding_box()
        assert chart is not None and chart["width"] >= 600 and chart["height"] > 40
        bars = page.locator(BARS)
        boxes = [bars.nth(i).bounding_box() for i in range(bars.count())]
        assert len(boxes) == 6
        for box in boxes:  # visible bars, inside the chart
            assert box is not None and box["width"] >= 1 and box["height"] >= 8
            assert (
                chart["x"] <= box["x"]
                and box["x"] + box["width"] <= chart["x"] + chart["width"] + 1
            )
            assert (
                chart["y"] <= box["y"] and box["y"] + box["height"] <= chart["y"] + chart["height"]
            )
        # One lane per worker: bars in as many rows as the chart names workers.
        lanes = page.locator(f"{CHART} text.nbtasks-lane").count()
        assert 1 <= lanes <= 6 and len({round(b["y"]) for b in boxes if b}) == lanes
        fills = {bars.nth(i).evaluate("r => getComputedStyle(r).fill") for i in range(6)}
        assert fills == {"rgb(46, 125, 50)"}  # SUCCESSFUL's green
        titles = [bars.nth(i).locator("title").text_content() for i in range(6)]
        assert all(t and t.startswith("steps ") and "SUCCESSFUL" in t for t in titles)
    finally:
        shut_down_kernels(server)
