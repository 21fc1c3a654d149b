"""``%tasks`` and the task/group widgets' layout in a REAL browser: JupyterLab 4 and Notebook 7
(Debian's chromium through Playwright), in the light and the dark theme.

Issue 17: the dashboard left ~700 px of blank space between its header row and its first task
row (the header shared the rows' ``flex: 0 1 54em``, a height in a vertical box), and a text
check could not see it. These tests measure bounding boxes: what the user sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_browser import setup_cell as browser_setup
from test_browser import shut_down_kernels, write_notebook

pytestmark = pytest.mark.browser

DARK = "JupyterLab Dark"
LIGHT = "JupyterLab Light"


def setup_cell(store: Path) -> str:
    """test_browser's setup, then 5 tasks: 3 "quick" ones, a "slow" one and a "meta" one."""
    return (
        browser_setup(store)
        + """
@nbtasks.task(name="quick")
def quick(x):
    return x

@nbtasks.task(name="slow")
def slow(n):
    ctx = nbtasks.current()
    for i in range(n):
        time.sleep(0.1)
        ctx.progress(i + 1, n)

@nbtasks.task(name="meta")
def meta():
    nbtasks.current().set_metadata(**{f"key{i}": i for i in range(40)})

quick.map(range(3)).wait(30)
r = slow.delay(600)
m = meta.delay()
m.wait(30)
"""
    )


def server_for(request: pytest.FixtureRequest, frontend: str) -> dict[str, Any]:
    return dict(request.getfixturevalue("lab_server" if frontend == "lab" else "notebook_server"))


def open_in(page: Any, server: dict[str, Any], name: str) -> None:
    """Open a notebook in JupyterLab (its own workspace) or in Notebook 7."""
    stem = name.removesuffix(".ipynb")
    if server["app"] == "jupyterlab":
        path = f"/lab/workspaces/{stem}/tree/{name}"
    else:
        path = f"/notebooks/{name}"
    page.goto(f"{server['url']}{path}?token={server['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
    # the kernel is ready when a session exists and the app says so (both frontends)
    page.wait_for_function(
        "() => { const a = window.jupyterapp; if (!a) return false;"
        " const w = a.shell.currentWidget; const s = w && w.sessionContext;"
        " return !!(s && s.session && s.session.kernel && s.kernelDisplayStatus === 'idle'); }",
        timeout=60_000,
    )


def set_theme(page: Any, theme: str) -> None:
    page.evaluate(
        "(theme) => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", theme
    )
    light = "true" if theme == LIGHT else "false"
    page.wait_for_function(
        "(light) => document.body.dataset.jpThemeLight === light", arg=light, timeout=30_000
    )


def run_and_wait(page: Any, index: int, timeout: float = 60_000) -> None:
    """Run cell ``index`` (click, Ctrl+Enter) and wait until its prompt shows a number."""
    page.locator(".jp-Notebook .jp-Cell .cm-content").nth(index).click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "(i) => { const p = document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')[i];"
        " return p && /\\[\\d+\\]/.test(p.textContent); }",
        arg=index,
        timeout=timeout,
    )


def cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def box(locator: Any) -> dict[str, float]:
    found = locator.first.bounding_box()
    assert found is not None, f"{locator} is not rendered"
    return dict(found)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("theme", [LIGHT, DARK])
@pytest.mark.parametrize("frontend", ["lab", "notebook"])
def test_dashboard_rows_sit_directly_under_the_header(
    request: pytest.FixtureRequest, page: Any, tmp_path: Path, frontend: str, theme: str
) -> None:
    server = server_for(request, frontend)
    name = write_notebook(
        server,
        f"dash-{frontend}-{theme.split()[-1].lower()}.ipynb",
        [setup_cell(tmp_path / "store"), "%tasks", "%tasks --name QUI", "%tasks --name zzz"],
    )
    try:
        open_in(page, server, name)
        set_theme(page, theme)
        run_and_wait(page, 0)
        run_and_wait(page, 1)
        dash = cell(page, 1).locator(".nbtasks-dashboard")
        dash.locator(".nbtasks-row").first.wait_for(timeout=30_000)
        # the header row as the user sees it (its grid of titles), not its widget's box: that
        # box was what grew to 700 px, with the titles at its top
        head = box(dash.locator(".nbtasks-row-head"))
        row = box(dash.locator(".nbtasks-row"))
        page.screenshot(path=str(tmp_path / f"dashboard-{frontend}-{theme}.png"))
        gap = row["y"] - (head["y"] + head["height"])
        assert -1 <= gap <= row["height"], (head, row)
        # the rows follow one another too: 5 tasks, 5 rows stacked
        rows = dash.locator(".nbtasks-row:visible")
        assert rows.count() == 5
        last = box(rows.nth(4))
        assert last["y"] - row["y"] <= 5 * row["height"], (row, last)
        # the name filter: part of the name, any case ("QUI" finds the 3 "quick" tasks)
        run_and_wait(page, 2)
        part = cell(page, 2).locator(".nbtasks-dashboard")
        part.locator(".nbtasks-row").first.wait_for(timeout=30_000)
        assert part.locator(".nbtasks-row:visible").count() == 3
        # nothing matches: a note the user sees, right under the header
        run_and_wait(page, 3)
        empty = cell(page, 3).locator(".nbtasks-empty")
        empty.wait_for(state="visible", timeout=30_000)
        assert "no matching tasks" in empty.inner_text()
        note, top = box(empty), box(cell(page, 3).locator(".nbtasks-row-head"))
        assert note["y"] - (top["y"] + top["height"]) <= note["height"] + 1, (top, note)
        if theme == DARK:  # the theme took: the notebook's background is dark
            lum = page.evaluate(
                "() => { const c = getComputedStyle(document.querySelector('.jp-Notebook'))"
                ".backgroundColor.match(/\\d+/g).map(Number); return (c[0]+c[1]+c[2])/3; }"
            )
            assert lum < 100, lum
    finally:
        shut_down_kernels(server)


COLLAPSE = ".jupyter-widget-Collapse-header, .lm-Collapse-header, .p-Collapse-header"


@pytest.mark.timeout(150)
def test_expanded_metadata_and_members_scroll_instead_of_growing(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    """40 metadata keys and a group of 200 members, expanded: each stays within its max height
    (22em: ~310 px at JupyterLab's 14 px font) and scrolls."""
    name = write_notebook(
        lab_server,
        "heights.ipynb",
        [setup_cell(tmp_path / "store"), "m", "g = quick.map(range(200)); g.wait(60); g"],
    )
    try:
        open_in(page, lab_server, name)
        run_and_wait(page, 0)
        run_and_wait(page, 1)
        run_and_wait(page, 2, timeout=90_000)
        for index in (1, 2):
            header = cell(page, index).locator(COLLAPSE).first
            header.wait_for(timeout=30_000)
            header.click()
        meta = cell(page, 1).locator(".widget-html:has(pre.nbtasks-metadata)").first
        members = cell(page, 2).locator(".nbtasks-members-box").first
        meta.locator("pre").wait_for(state="visible", timeout=30_000)
        members.locator("table").wait_for(state="visible", timeout=30_000)
        page.screenshot(path=str(tmp_path / "heights.png"), full_page=True)
        for part in (meta, members):
            height, content, overflow = part.evaluate(
                "(e) => [e.getBoundingClientRect().height, e.scrollHeight,"
                " getComputedStyle(e).overflowY]"
            )
            assert height <= 400, (height, content)
            assert content > height and overflow == "auto", (height, content, overflow)
    finally:
        shut_down_kernels(lab_server)
