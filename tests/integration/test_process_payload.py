"""A process task's pickled payload is kept between submits, and made again when what it
captures by value changes (executors/process.py, ``ProcessExecutor.encode``): real worker
processes run each payload, so a stale one would show in the results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nbtasks
from nbtasks._task import resolve_options

OFFSET = 100


@pytest.fixture
def app(tmp_path: Path) -> Iterator[nbtasks.App]:
    a = nbtasks.App(store=tmp_path / "store", process_workers=2)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


def test_payload_is_kept_for_the_same_task_and_made_again_when_a_global_is_rebound(
    app: nbtasks.App,
) -> None:
    global OFFSET

    def shifted(x: int) -> int:  # nested: cloudpickle copies it, and OFFSET, by value
        return x + OFFSET

    t = app.task(shifted, executor="process")
    assert [r.get(timeout=30) for r in [t.delay(1), t.delay(2)]] == [101, 102]
    ex = app._runtime._executors["process"]
    opts, _ = resolve_options(t, {}, 0.0)
    first = ex.encode(t, opts)
    assert ex.encode(t, opts) is first  # kept: no second pickle
    OFFSET = 1000  # a notebook cell rebinding a global the task uses
    try:
        assert t.delay(1).get(timeout=30) == 1001  # the worker ran a new payload
        assert ex.encode(t, opts) is not first
        # Per-call options make their own payload, and the stored result stays right.
        assert t.apply_async((5,), priority=3).get(timeout=30) == 1005
    finally:
        OFFSET = 100


def test_a_redefined_task_function_is_pickled_again(app: nbtasks.App) -> None:
    def version() -> int:
        return 1

    t1 = app.task(version, executor="process", name="version")
    assert t1.delay().get(timeout=30) == 1

    def version() -> int:  # redefined, as a re-run cell does
        return 2

    t2 = app.task(version, executor="process", name="version")
    assert t2.delay().get(timeout=30) == 2
