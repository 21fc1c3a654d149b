"""Rich output of tasks (SPEC §4): ``display(...)`` and matplotlib figures inside thread and
process tasks kept as MIME bundles in ``TaskResult.displayed``: in order, bounded (the count
of dropped ones said), persisted (a new App on the store reads them), listed by type in
``nbtasks show`` and shown by the task's widget (an Output per bundle, made by the updater)."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

import nbtasks
from nbtasks import _cli, _context, views

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8  # the signature is enough for a bundle


class Page:
    """An object with an HTML repr, as a DataFrame has."""

    def _repr_html_(self) -> str:
        return "<b>page</b>"

    def __repr__(self) -> str:
        return "Page()"


class Picture:
    """An object with a PNG repr (bytes, as IPython's image objects give it)."""

    def _repr_png_(self) -> bytes:
        return PNG


def show_four() -> str:
    """Display an HTML object, a PNG object, a dict (JSON) and a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(Page())
    display(Picture())
    display({"loss": 0.5, "epochs": [1, 2]})
    _fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([3, 1, 2])
    plt.show()  # Agg: nbtasks' show hook keeps the open figures and closes them
    print("shown")
    return "ok"


def check_four(displayed: list[dict[str, Any]]) -> None:
    assert [sorted(b) for b in displayed] == [
        ["text/html", "text/plain"],
        ["image/png", "text/plain"],
        ["application/json", "text/plain"],
        ["image/png", "text/plain"],
    ]
    page, picture, data, figure = displayed
    assert page == {"text/html": "<b>page</b>", "text/plain": "Page()"}
    assert base64.b64decode(picture["image/png"]) == PNG
    assert data["application/json"] == {"loss": 0.5, "epochs": [1, 2]}
    assert base64.b64decode(figure["image/png"]).startswith(b"\x89PNG")
    assert "Figure" in figure["text/plain"]


def cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _cli.main(list(argv)) == 0
    return out.getvalue()


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_displays_are_kept_in_order_persisted_and_listed(store_path: Path, executor: str) -> None:
    with nbtasks.App(store=store_path, workers=1) as app:
        task = app.task(name=f"rich.four_{executor}", executor=executor)(show_four)
        r = task.delay()
        assert r.get(timeout=60) == "ok"
        check_four(r.displayed)
        assert (r.displayed.total, r.displayed.dropped) == (4, 0)
        assert r.output == "shown\n"  # the displays are not in the text output
        task_id = r.id
    # a new App on the store reads them back (a new process would too: it is the record)
    with nbtasks.App(store=store_path) as again:
        check_four(again.result(task_id).displayed)
    out = cli("show", task_id, "--store", str(store_path))
    assert "displayed: 4 (image/png \N{MULTIPLICATION SIGN}2, application/json" in out


def many(n: int) -> None:
    from IPython.display import display

    for i in range(n):
        display({"i": i})


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_displays_are_bounded_newest_kept_and_the_dropped_counted(
    store_path: Path, executor: str
) -> None:
    n = _context.DISPLAY_LIMIT + 7
    with nbtasks.App(store=store_path, workers=1) as app:
        r = app.task(name=f"rich.many_{executor}", executor=executor)(many).delay(n)
        r.get(timeout=60)
        kept = r.displayed
        task_id = r.id
    assert len(kept) == _context.DISPLAY_LIMIT
    assert [b["application/json"]["i"] for b in kept] == list(range(7, n))
    assert (kept.total, kept.dropped) == (n, 7)
    out = cli("show", task_id, "--store", str(store_path))
    assert f"displayed: {_context.DISPLAY_LIMIT} (application/json" in out
    assert "7 earlier not kept" in out


def cleared() -> None:
    from IPython.display import clear_output, display

    display({"a": 1})
    clear_output()
    display({"b": 2})
    clear_output(wait=True)  # kept until the next display, which replaces it
    display({"c": 3})


def test_clear_output_in_a_task_clears_its_displays(app: nbtasks.App) -> None:
    r = app.task(name="rich.cleared")(cleared).delay()
    r.get(timeout=10)
    assert [b["application/json"] for b in r.displayed] == [{"c": 3}]
    assert r.displayed.total == 3 and r.displayed.dropped == 0


def test_display_outside_a_task_is_untouched(app: nbtasks.App, capsys: Any) -> None:
    app.task(name="rich.noop")(lambda: None).delay().get(timeout=10)  # capture installed
    from IPython.display import display

    display({"outside": True})  # no shell: IPython prints it, as without nbtasks
    assert "{'outside': True}" in capsys.readouterr().out


def stepped(gate: threading.Event, step: threading.Event) -> None:
    from IPython.display import display

    display(Picture())
    step.set()
    gate.wait(10)
    display(Page())


def test_the_widget_shows_each_bundle_once_as_an_output(app: nbtasks.App) -> None:
    gate, step = threading.Event(), threading.Event()
    r = app.task(name="rich.stepped")(stepped).delay(gate, step)
    assert step.wait(10)
    view = views.TaskView(r)
    assert view._displayed is None or view._displayed.root in view.root.children
    wait_until(lambda: view.poll() and view._displayed is not None, 5)  # made at the first
    assert view._displayed is not None
    area = view._displayed.root
    assert area in view.root.children
    assert len(area.children) == 2  # the (hidden) note, the picture
    first = area.children[1]
    assert area.layout.display is None  # shown
    assert first.outputs[0]["data"]["image/png"] == base64.b64encode(PNG).decode()
    gate.set()
    r.get(timeout=10)
    view.poll()
    assert area.children[1] is first  # kept, not sent again
    assert area.children[2].outputs[0]["data"]["text/html"] == "<b>page</b>"
    assert area.children[0].layout.display == "none"  # nothing dropped: no note


@pytest.mark.timeout(120)
def test_dask_task_displays_reach_its_record(store_path: Path) -> None:
    """A Dask worker process sends its task's bundles with its output events (SPEC §4)."""
    import logging

    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            processes=True,
            n_workers=1,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        nbtasks.App(store=store_path, dask=client) as app,
    ):
        r = app.task(name="rich.four_dask", executor="dask")(show_four).delay()
        assert r.get(timeout=60) == "ok"
        check_four(r.displayed)
        task_id = r.id
    with nbtasks.App(store=store_path) as again:
        check_four(again.result(task_id).displayed)


def show_page() -> str:
    from IPython.display import display

    display(Page())
    return "ok"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_display_changed_in_the_store_is_shown_as_text_only(
    store_path: Path, executor: str
) -> None:
    """A store is data (SPEC §10): a bundle's HTML reaches the notebook's page, so each bundle
    is signed where the task displayed it, and one whose signature does not verify (changed in
    the store by anyone but this user's nbtasks) comes back as its text/plain alone."""
    import json
    import sqlite3

    with nbtasks.App(store=store_path, workers=1) as app:
        task = app.task(name=f"rich.page_{executor}", executor=executor)(show_page)
        r = task.delay()
        assert r.get(timeout=60) == "ok"
        assert r.displayed[0]["text/html"] == "<b>page</b>"  # signed and verified
        task_id = r.id
    con = sqlite3.connect(store_path / "cache.db")
    try:
        with con:
            (text,) = con.execute(
                "SELECT value FROM Cache WHERE key = ?", ("t:" + task_id,)
            ).fetchone()
    finally:
        con.close()
    rec = json.loads(text)
    assert len(rec["displayed_sigs"]) == len(rec["displayed"]) == 1
    rec["displayed"][0]["text/html"] = "<script>alert('planted')</script>"
    con = sqlite3.connect(store_path / "cache.db")
    try:
        with con:
            con.execute(
                "UPDATE Cache SET value = ? WHERE key = ?", (json.dumps(rec), "t:" + task_id)
            )
    finally:
        con.close()
    with nbtasks.App(store=store_path) as again:
        shown = again.result(task_id).displayed
        seen_by_widget = views.snapshot.snapshot(again.result(task_id)).displayed
    assert shown == [{"text/plain": "Page()"}]
    assert seen_by_widget == ({"text/plain": "Page()"},)  # what the task's widget renders
