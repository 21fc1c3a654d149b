"""The task and group widgets as a user sees them in JupyterLab (real chromium): layout and
colour measured in the page, not only text. Helpers are test_browser.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_browser import (
    kernel_status_is,
    open_notebook,
    run_cell,
    setup_cell,
    shut_down_kernels,
    write_notebook,
)

pytestmark = pytest.mark.browser

LONG = "preprocess_" + "and_then_some_more_" * 12

# The WCAG contrast ratio of an element's text against the first opaque background behind it.
CONTRAST_JS = """(selector) => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((acc, v, i) => acc + v * [0.2126, 0.7152, 0.0722][i], 0);
  const el = document.querySelector(selector);
  let bg = el, back = null;
  while (bg) {
    const c = rgb(getComputedStyle(bg).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] === 1)) { back = c; break; }
    bg = bg.parentElement;
  }
  back = back || [255, 255, 255];
  const fore = rgb(getComputedStyle(el).color);
  const [a, b] = [lum(fore) + 0.05, lum(back) + 0.05];
  return {ratio: Math.max(a, b) / Math.min(a, b), color: fore, background: back};
}"""


@pytest.mark.timeout(120)
def test_a_long_name_is_cut_and_the_cancel_button_keeps_its_label(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    name = write_notebook(
        lab_server,
        "longname.ipynb",
        [
            setup_cell(tmp_path / "store")
            + f"\nlong = nbtasks.task(name={LONG!r})(lambda n: time.sleep(n))\n",
            "r = long.delay(60)\nr",
        ],
    )
    try:
        open_notebook(page, lab_server, name)
        run_cell(page, 0)
        kernel_status_is(page, "Idle")
        run_cell(page, 1)
        page.wait_for_selector(".nbtasks-task .nbtasks-cancel", timeout=30_000)
        page.screenshot(path=str(tmp_path / "longname.png"))
        got = page.evaluate(
            """() => {
              const task = document.querySelector('.nbtasks-task');
              const button = task.querySelector('.nbtasks-cancel');
              const name = task.querySelector('.nbtasks-name');
              const b = button.getBoundingClientRect(), n = name.getBoundingClientRect();
              return {button: b.width, label: button.scrollWidth, text: button.innerText,
                      nameRight: n.right, buttonLeft: b.left,
                      cut: name.scrollWidth > name.clientWidth,
                      overflow: getComputedStyle(name).textOverflow, title: name.title};
            }"""
        )
        assert got["text"].strip() == "Cancel"
        assert got["button"] >= got["label"] and got["button"] > 40, got
        assert got["cut"] and got["overflow"] == "ellipsis", got
        assert got["nameRight"] <= got["buttonLeft"] + 1, got
        assert got["title"] == LONG
    finally:
        shut_down_kernels(lab_server)


@pytest.mark.timeout(150)
def test_dark_theme_error_text_contrast_and_a_bar_split_by_status(
    lab_server: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    themes = lab_server["root"] / ".settings" / "@jupyterlab" / "apputils-extension"
    settings = themes / "themes.jupyterlab-settings"
    settings.write_text(json.dumps({"theme": "JupyterLab Dark"}))
    name = write_notebook(
        lab_server,
        "dark.ipynb",
        [
            setup_cell(tmp_path / "store")
            + "\n@nbtasks.task\ndef check(x):\n    if x < 3:\n"
            + "        raise ValueError(f'bad item {x}')\n    return x\n",
            "g = check.map(range(20))\ng.wait(60)\ng",
            "r = g.results[0]\nr",
        ],
    )
    try:
        open_notebook(page, lab_server, name)
        page.wait_for_function(
            "() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000
        )
        for index in range(3):
            run_cell(page, index)
            kernel_status_is(page, "Idle")
        page.wait_for_selector(".nbtasks-task .nbtasks-error", timeout=30_000)
        page.wait_for_selector(".nbtasks-group .nbtasks-segment", timeout=30_000)
        page.screenshot(path=str(tmp_path / "dark.png"))
        error = page.evaluate(CONTRAST_JS, ".nbtasks-task .nbtasks-error")
        assert max(error["background"]) < 60, error  # the dark theme's background
        assert error["ratio"] >= 4.5, error
        assert "ValueError: bad item 0" in page.locator(".nbtasks-task .nbtasks-error").inner_text()
        bar = page.evaluate(
            """() => {
              const track = document.querySelector('.nbtasks-group .nbtasks-stacked');
              const width = track.getBoundingClientRect().width;
              const parts = {};
              for (const s of track.querySelectorAll('.nbtasks-segment'))
                parts[s.dataset.status] = s.getBoundingClientRect().width / width;
              return {parts, track: getComputedStyle(track).backgroundColor};
            }"""
        )
        assert bar["parts"]["FAILED"] == pytest.approx(3 / 20, abs=0.01), bar
        assert bar["parts"]["SUCCESSFUL"] == pytest.approx(17 / 20, abs=0.01), bar
        track = [int(v) for v in bar["track"][4:-1].split(",")[:3]]
        assert max(track) < 100, bar  # a dark track in the dark theme, not a light one
    finally:
        settings.unlink(missing_ok=True)
        shut_down_kernels(lab_server)
