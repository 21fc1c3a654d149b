"""What a task's and a group's output says where no live widget is left: in a notebook saved
after a run (nbclient, then nbconvert), and in a kernel that shuts down (its widgets keep
showing their last state, so the last state must say so). Real kernels, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kernel

CELLS = [
    """\
import time
import nbtasks

@nbtasks.task
def train(n):
    for i in range(n):
        nbtasks.current().progress(i + 1, n)
        time.sleep(0.1)
    return {"loss": 0.25}

@nbtasks.task
def square(x):
    time.sleep(0.05 * x)
    return x * x
""",
    "r = train.delay(8)\nr",  # finishes after this cell ends
    "g = square.map(range(8))\ng",
    "r.wait(60)\ng.wait(60)\nprint(r.status, g.completed_count())",
]


def run_notebook(tmp_path: Path) -> tuple[Any, Path]:
    """Run CELLS with nbclient (as ``jupyter nbconvert --execute`` does) and save them."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4), path


def shown(cell: Any) -> list[dict[str, Any]]:
    """The data of a saved cell's display outputs."""
    return [
        out["data"]
        for out in cell.outputs
        if out["output_type"] in ("display_data", "execute_result")
    ]


def test_a_saved_notebook_shows_how_tasks_and_groups_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_STORE", str(tmp_path / "store"))
    nb, path = run_notebook(tmp_path)
    assert "SUCCESSFUL 8" in "".join(o.get("text", "") for o in nb.cells[3].outputs)

    (task,) = shown(nb.cells[1])
    assert "application/vnd.jupyter.widget-view+json" in task  # the live widget, still
    assert "SUCCESSFUL" in task["text/plain"] and "8/8" in task["text/plain"]
    assert 'data-status="SUCCESSFUL"' in task["text/html"]
    assert "READY" not in task["text/html"] and "waiting" not in task["text/html"]
    assert "{&#x27;loss&#x27;: 0.25}" in task["text/html"]  # its value

    (group,) = shown(nb.cells[2])
    assert "8/8 finished" in group["text/plain"] and "8 SUCCESSFUL" in group["text/plain"]
    assert "8/8 finished · 8 SUCCESSFUL" in group["text/html"]
    assert (
        'data-status="SUCCESSFUL" title="8 SUCCESSFUL" style="width:100.000%'
        in (group["text/html"])
    )

    # nbconvert's HTML: with the widgets' saved state (their views, rendered from it) and
    # without it (the static fallback, as GitHub and a frontend without widgets show it)
    nbformat = pytest.importorskip("nbformat")
    bare = tmp_path / "bare.ipynb"
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, bare)
    for notebook in (path, bare):
        subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(notebook)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    with_state = path.with_suffix(".html").read_text()
    assert "application/vnd.jupyter.widget-state+json" in with_state
    assert 'data-status=\\"SUCCESSFUL' in with_state  # in the widgets' JSON state
    page = bare.with_suffix(".html").read_text()
    assert "8/8 finished · 8 SUCCESSFUL" in page
    assert 'class="nbtasks-task-static"' in page  # the task's static view, with its badge
    assert 'class="nbtasks-status" data-status="SUCCESSFUL"' in page
    for html_page in (with_state, page):
        assert "READY" not in html_page and "RUNNING" not in html_page


def widget_text(kernel: Any, dom_class: str, which: int = -1) -> str:
    """The HTML value of the newest widget model with CSS class ``dom_class``, unescaped."""
    import html

    return html.unescape(str(kernel.models[kernel.find(dom_class=dom_class)[which]]["value"]))


def test_a_failed_task_shows_its_error_as_ipython_would(kernel: Any) -> None:
    """The message beside the class, the user's frames only, cells named ``Cell In[N]``."""
    kernel.run(
        "import nbtasks\n\n@nbtasks.task\ndef boom(x):\n    raise ValueError(f'bad input {x}')\n"
    )
    defined_in = kernel.value("get_ipython().execution_count") - 2  # this cell counts too
    kernel.run("r = boom.delay(42)\nr.wait(30)\nr")
    errors = widget_text(kernel, "nbtasks-errors")
    assert "ValueError: bad input 42" in errors
    traceback = errors.split("<pre", 1)[1]
    assert f"Cell In[{defined_in}], line 5, in boom" in traceback
    assert "nbtasks/" not in traceback and "ipykernel_" not in traceback
    assert "nbtasks frames not shown" in traceback
    header = widget_text(kernel, "nbtasks-header")
    assert "FAILED" in header and "retry" not in header
    bar = kernel.part(kernel.find(dom_class="nbtasks-task")[-1], "nbtasks-bar")
    layout = kernel.models[kernel.models[bar]["layout"].removeprefix("IPY_MODEL_")]
    assert layout["display"] == "none"  # no empty grey bar
    # the stored record keeps every frame
    assert "nbtasks" in kernel.value("r.errors[-1].traceback")

    kernel.run("%load_ext nbtasks")
    cell = kernel.run("%%task -o t\nx = 1\nraise KeyError('from a cell')")
    kernel.run("t.wait(30)\nt")
    errors = widget_text(kernel, "nbtasks-errors")
    assert "KeyError: 'from a cell'" in errors
    traceback = errors.split("<pre", 1)[1]
    assert "nbtasks/" not in traceback and "line 2" in traceback
    assert cell.reply["status"] == "ok"


def test_widgets_say_the_kernel_stopped_when_it_does(kernel: Any) -> None:
    """A widget outlives its kernel in the page: its last message says so and disables
    Cancel, and the saved output (the static fallback) says it too."""
    kernel.run(
        "import time, nbtasks\n\n@nbtasks.task\ndef slow():\n"
        "    for i in range(600):\n        nbtasks.current().progress(i, 600)\n"
        "        time.sleep(0.1)\n"
    )
    cell = kernel.run("s = slow.delay()\ns")
    (shown_data,) = cell.displays
    kernel.drain(0.5)
    button = kernel.find(dom_class="nbtasks-cancel")[-1]
    assert kernel.models[button]["disabled"] is False
    kernel.km.restart_kernel(now=False)
    kernel.drain(2.0)
    assert kernel.models[button]["disabled"] is True
    assert "kernel stopped: state as of" in widget_text(kernel, "nbtasks-info")
    updates = [msg["content"] for _, msg in kernel.msgs if msg["msg_type"] == "update_display_data"]
    assert updates, "no update_display_data before the kernel stopped"
    last = updates[-1]
    assert "kernel stopped: state as of" in last["data"]["text/plain"]
    assert "RUNNING" in last["data"]["text/plain"]  # what it was doing, as of then
    widget_view = "application/vnd.jupyter.widget-view+json"
    assert last["data"][widget_view] == shown_data[widget_view]
