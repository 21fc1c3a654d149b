"""nbtasks._cli: ids, statuses and durations as the ``nbtasks`` command reads them."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import nbtasks
from nbtasks import _cli
from nbtasks._text import short_id


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _cli.main(list(argv))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def two_tasks(store_path: Path) -> list[str]:
    with nbtasks.App(store=store_path) as app:

        @app.task(name="cli.double")
        def double(x: int) -> int:
            return 2 * x

        results = [double.delay(1), double.delay(2)]
        for r in results:
            r.wait(10)
        return [r.id for r in results]


def test_show_finds_a_task_by_id_start_or_short_id(store_path: Path, two_tasks: list[str]) -> None:
    first = two_tasks[0]
    for text in (first, short_id(first), short_id(first).upper()):
        code, out, err = run("show", text, "--store", str(store_path))
        assert code == 0, err
        assert f"id: {first}" in out and "status: SUCCESSFUL" in out
        assert "arguments: 1\n" in out


def test_show_says_when_no_id_or_several_match(store_path: Path, two_tasks: list[str]) -> None:
    code, _out, err = run("show", "ffffffff-nope", "--store", str(store_path))
    assert code == 2
    assert "no task in" in err and "with an id that starts or ends with 'ffffffff-nope'" in err
    shared = two_tasks[0][:4]  # both ids start with the same timestamp
    code, _out, err = run("show", shared, "--store", str(store_path))
    assert code == 2 and "2 tasks in" in err


def test_list_takes_a_status_in_any_case(store_path: Path, two_tasks: list[str]) -> None:
    code, out, err = run("list", "--status", "successful", "--store", str(store_path))
    assert code == 0, err
    assert all(tid in out for tid in two_tasks) and "(2 of 2 task(s)" in out
    code, out, _err = run("list", "--status", "running", "--store", str(store_path))
    assert code == 0 and "(0 of 0 task(s)" in out


def test_bad_status_and_duration_are_said_in_the_words_of_the_parsers(store_path: Path) -> None:
    code, _out, err = run("list", "--status", "nope", "--store", str(store_path))
    assert code == 2
    assert "--status='nope' is not a status; expected one of READY, RUNNING" in err
    code, _out, err = run("purge", "--older-than", "soon", "--store", str(store_path))
    assert code == 2
    assert "argument --older-than: 'soon' is not a duration; write seconds" in err
    code, out, err = run("purge", "--older-than", "1min", "--store", str(store_path))
    assert code == 0 and out.startswith("purged 0 finished task(s)"), err
