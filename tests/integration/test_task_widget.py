"""What a task's and a group's output says where no live widget is left: in a notebook saved
after a run (nbclient, then nbconvert), and in a kernel that shuts down (its widgets keep
showing their last state, so the last state must say so). Real kernels, real files."""

from __future__ import annotations

import json
import os
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
    assert 'data-status="SUCCESSFUL" title="8 SUCCESSFUL" style="width:100.000%' in (
        group["text/html"]
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
    for page in (with_state, page):
        assert "READY" not in page and "RUNNING" not in page
