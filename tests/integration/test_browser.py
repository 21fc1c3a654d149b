"""nbtasks widgets in a REAL browser: JupyterLab + Debian's chromium driven by Playwright.

Each test writes its own notebook (with its own store under the test's tmp dir), opens it in
JupyterLab, runs cells the way a user does (click a cell, Ctrl+Enter) and asserts on what the
page shows.  Screenshots are saved in the test's tmp dir.  Under ``CI=true`` these tests run;
they skip only on a machine without chromium outside CI (see conftest.py).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytestmark = pytest.mark.browser

WIDGET = ".nbtasks-task"
BAR = ".nbtasks-task .widget-hprogress .progress-bar"


def setup_cell(store: Path) -> str:
    return f"""
%load_ext nbtasks
import time
import nbtasks
nbtasks.configure(store={str(store)!r})

@nbtasks.task
def steps(n, dt=0.1):
    ctx = nbtasks.current()
    for i in range(n):
        time.sleep(dt)
        ctx.progress(i + 1, n, f"step {{i + 1}}")
    return n
"""


def write_notebook(lab: dict[str, Any], name: str, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, lab["root"] / name)
    return name


def kernel_status_is(page: Any, state: str, timeout: float = 60_000) -> None:
    page.wait_for_function(
        "(state) => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
        ".some(e => e.textContent.includes(state))",
        arg=state,
        timeout=timeout,
    )


def kernel_busy(page: Any) -> bool:
    return bool(
        page.evaluate(
            "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
            ".some(e => e.textContent.includes('Busy'))"
        )
    )


def cell_running(page: Any, index: int) -> bool:
    """The cell's prompt reads [*] while it runs (or waits to run)."""
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").nth(index).inner_text()
    return "*" in prompt


def open_notebook(page: Any, lab: dict[str, Any], name: str) -> None:
    # a workspace of its own: JupyterLab would otherwise reopen the other tests' notebooks
    workspace = name.removesuffix(".ipynb")
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{name}?token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
    kernel_status_is(page, "Idle")


def run_cell(page: Any, index: int) -> None:
    """Select cell ``index`` and run it in place (Ctrl+Enter), as a user does."""
    page.locator(".jp-Notebook .jp-Cell .cm-content").nth(index).click()
    page.keyboard.press("Control+Enter")


def bar_pct(page: Any, selector: str = BAR) -> float:
    style = page.locator(selector).first.get_attribute("style") or ""
    match = re.search(r"width:\s*([\d.]+)%", style)
    return float(match.group(1)) if match else 0.0


def badge(page: Any) -> str:
    return str(page.locator(f"{WIDGET} .nbtasks-status").first.inner_text()).strip()


def task_id(page: Any) -> str:
    return str(page.locator(f"{WIDGET} .nbtasks-id").first.get_attribute("title"))


def shut_down_kernels(lab: dict[str, Any]) -> None:
    """Stop this test's kernels through the REST API, so tests do not load each other."""
    url, token = lab["url"], lab["token"]
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10) as resp:
        sessions = json.load(resp)
    for session in sessions:
        req = urllib.request.Request(
            f"{url}/api/sessions/{session['id']}?token={token}", method="DELETE"
        )
        urllib.request.urlopen(req, timeout=10).close()


def store_status(store: Path, tid: str) -> str:
    import nbtasks

    with nbtasks.App(store=store) as app:
        return str(app.result(tid).status.value)


# ----------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_bar_grows_while_another_cell_runs(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    name = write_notebook(
        lab_server,
        "grows.ipynb",
        [setup_cell(tmp_path / "store"), "r = steps.delay(120, 0.1)\nr", "time.sleep(8)", "%tasks"],
    )
    try:
        open_notebook(page, lab_server, name)
        run_cell(page, 0)
        kernel_status_is(page, "Idle")
        run_cell(page, 1)
        page.wait_for_selector(BAR, timeout=30_000)
        run_cell(page, 2)  # the kernel is now busy for 8 s
        kernel_status_is(page, "Busy", timeout=5_000)
        page.wait_for_timeout(1_000)
        first = bar_pct(page)
        page.screenshot(path=str(tmp_path / "grows-1.png"))
        page.wait_for_timeout(2_500)
        second = bar_pct(page)
        still_busy = kernel_busy(page) and cell_running(page, 2)
        page.screenshot(path=str(tmp_path / "grows-2.png"))
        assert still_busy, "the second reading must be taken while the sleep cell runs"
        assert 0 < first < second, (first, second)
        assert page.locator("text=Loading widget").count() == 0
        assert badge(page) == "RUNNING"
        info = page.locator(f"{WIDGET} .nbtasks-info").first.inner_text()
        assert re.search(r"\d+/120 \(\d+%\) · step \d+", info), info
        assert "elapsed" in info and "ETA" in info
        # the dashboard renders too, once the kernel is free
        kernel_status_is(page, "Idle", timeout=15_000)
        run_cell(page, 3)
        page.wait_for_selector(".nbtasks-dashboard .nbtasks-row", timeout=30_000)
        row = page.locator(".nbtasks-dashboard .nbtasks-row").first
        assert row.locator(".nbtasks-status").inner_text() == "RUNNING"
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        assert page.locator("text=Loading widget").count() == 0
        # the row's cancel button cancels the task; the row and the task's widget show it
        row.locator(".nbtasks-row-cancel").click()
        row.locator('.nbtasks-status[data-status="CANCELLED"]').wait_for(timeout=5_000)
        page.wait_for_selector(f'{WIDGET} .nbtasks-status[data-status="CANCELLED"]', timeout=5_000)
        assert not row.locator(".nbtasks-row-cancel").is_visible()
        page.screenshot(path=str(tmp_path / "dashboard-cancelled.png"))
    finally:
        shut_down_kernels(lab_server)


@pytest.mark.timeout(90)
def test_cancel_button_cancels_a_running_task(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    name = write_notebook(
        lab_server,
        "cancel.ipynb",
        [setup_cell(store), "r = steps.delay(400, 0.05)\nr", "time.sleep(8)"],
    )
    try:
        open_notebook(page, lab_server, name)
        run_cell(page, 0)
        kernel_status_is(page, "Idle")
        run_cell(page, 1)
        page.wait_for_selector(BAR, timeout=30_000)
        run_cell(page, 2)
        kernel_status_is(page, "Busy", timeout=5_000)
        page.wait_for_timeout(500)
        assert badge(page) == "RUNNING"
        page.locator(f"{WIDGET} .nbtasks-cancel").first.click()
        page.wait_for_selector(f'{WIDGET} .nbtasks-status[data-status="CANCELLED"]', timeout=5_000)
        # The sleep cell still runs.  (JupyterLab's status bar may read Idle here: the click is
        # handled by a helper subshell, whose idle status the status bar shows.)
        running = cell_running(page, 2)
        page.screenshot(path=str(tmp_path / "cancelled.png"))
        assert running, "the cancel must take effect while the other cell still runs"
        assert not page.locator(f"{WIDGET} .nbtasks-cancel").first.is_visible()
        deadline = time.monotonic() + 5  # the store's writer commits within 0.2 s
        while store_status(store, task_id(page)) != "CANCELLED":
            assert time.monotonic() < deadline, "the cancel was not committed"
            page.wait_for_timeout(20)
    finally:
        shut_down_kernels(lab_server)


@pytest.mark.timeout(90)
def test_widget_shows_current_state_after_page_reload(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    name = write_notebook(
        lab_server, "reload.ipynb", [setup_cell(tmp_path / "store"), "r = steps.delay(50, 0.1)\nr"]
    )
    try:
        open_notebook(page, lab_server, name)
        run_cell(page, 0)
        kernel_status_is(page, "Idle")
        run_cell(page, 1)
        page.wait_for_selector(BAR, timeout=30_000)
        kernel_status_is(page, "Idle")
        page.keyboard.press("Control+s")  # keep the outputs (the widget's view) in the file
        page.wait_for_timeout(1_000)
        before = bar_pct(page)
        page.reload()
        page.wait_for_selector(BAR, timeout=60_000)
        page.wait_for_timeout(500)
        after = bar_pct(page)
        page.screenshot(path=str(tmp_path / "reloaded.png"))
        assert page.locator("text=Loading widget").count() == 0
        assert 0 < before < after, (before, after)
        # still live after the reload, up to the final state
        page.wait_for_selector(
            f'{WIDGET} .nbtasks-status[data-status="SUCCESSFUL"]', timeout=15_000
        )
        assert bar_pct(page) == 100.0
        page.screenshot(path=str(tmp_path / "finished.png"))
    finally:
        shut_down_kernels(lab_server)
