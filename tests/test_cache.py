"""Caching (SPEC 6): ``cache=True`` and ``cache_ttl``, in memory, in the store, across processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python, stored_count, wait_until

import nbtasks
from nbtasks import TaskStatus

AppFactory = Callable[..., nbtasks.App]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


def test_hit_returns_the_same_result_with_cached_true(app: nbtasks.App, store_path: Path) -> None:
    runs: list[int] = []

    @app.task(cache=True)
    def sq(x: int) -> int:
        runs.append(x)
        return x * x

    first = sq.delay(3)
    assert first.get(10) == 9
    assert first.cached is False
    again = sq.delay(3)
    assert again.id == first.id
    assert again.cached is True
    assert again.status is TaskStatus.SUCCESSFUL  # at once
    assert again.return_value == 9
    assert "(cached)" in repr(again)
    other = sq.delay(4)
    assert other.id != first.id and other.get(10) == 16
    assert runs == [3, 4]
    app.shutdown()
    assert stored_count(store_path) == 2  # the hit stored nothing new


def test_kwargs_order_does_not_matter(app: nbtasks.App) -> None:
    @app.task(cache=True)
    def f(a: int = 0, b: int = 0) -> int:
        return a - b

    first = f.delay(a=1, b=2)
    first.wait(10)
    again = f.delay(b=2, a=1)
    assert again.id == first.id and again.cached


def test_cache_per_call(app: nbtasks.App) -> None:
    runs: list[int] = []

    @app.task
    def f(x: int) -> int:
        runs.append(x)
        return x

    a = f.apply_async((1,), cache=True)
    a.wait(10)
    b = f.apply_async((1,), cache=True)
    assert b.id == a.id and b.cached
    c = f.delay(1)  # not asked to use the cache
    c.wait(10)
    assert c.id != a.id and runs == [1, 1]


def test_in_flight_dedupe(app: nbtasks.App, gate: threading.Event) -> None:
    runs: list[int] = []

    @app.task(cache=True)
    def slow(x: int) -> int:
        runs.append(x)
        gate.wait(10)
        return x

    first = slow.delay(1)
    second = slow.delay(1)
    assert second.id == first.id
    assert second.cached is True
    assert second.status in (TaskStatus.READY, TaskStatus.RUNNING)
    gate.set()
    assert second.get(10) == 1
    assert runs == [1]
    assert len(app.results()) == 1


def test_in_flight_dedupe_across_apps_on_one_store(
    make_app: AppFactory, gate: threading.Event
) -> None:
    a, b = make_app(), make_app()
    runs: list[str] = []

    def declare(app: nbtasks.App) -> nbtasks.Task:
        # The same code in both apps (a closure over "a" or "b" would be other code: SPEC §6).
        @app.task(name="cache.shared", cache=True)
        def shared(x: int) -> int:
            runs.append(nbtasks.current().request.id)
            gate.wait(10)
            return x

        return shared

    first = declare(a).delay(5)
    wait_until(lambda: b.result(first.id).status is TaskStatus.RUNNING)
    second = declare(b).delay(5)
    assert second.id == first.id and second.cached
    gate.set()
    assert second.get(10) == 5
    assert runs == [first.id]  # one run: the one app a started


def test_failed_results_are_not_reused(app: nbtasks.App) -> None:
    runs: list[int] = []

    @app.task(cache=True)
    def flaky(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            raise ValueError("first time")
        return x

    first = flaky.delay(1)
    first.wait(10)
    assert first.status is TaskStatus.FAILED
    again = flaky.delay(1)
    assert again.id != first.id and again.cached is False
    assert again.get(10) == 1
    third = flaky.delay(1)
    assert third.id == again.id and third.cached  # the successful one is reused
    assert runs == [1, 1]


def test_cancelled_results_are_not_reused(app: nbtasks.App) -> None:
    @app.task(cache=True)
    def f(x: int) -> int:
        return x

    first = f.apply_async((1,), countdown=60)
    assert first.cancel()
    again = f.delay(1)
    assert again.id != first.id and not again.cached
    assert again.get(10) == 1


def test_cache_ttl_bounds_the_age_of_a_reused_result(app: nbtasks.App) -> None:
    @app.task(cache=True, cache_ttl=0.1)
    def f(x: int) -> int:
        return x

    first = f.delay(1)
    first.wait(10)
    assert f.delay(1).id == first.id
    aged = first.finished_at.timestamp() + 0.1  # type: ignore[union-attr]
    wait_until(lambda: time.time() > aged)  # the clock has passed the ttl
    fresh = f.delay(1)
    assert fresh.id != first.id and not fresh.cached
    fresh.wait(10)
    # Per call: a longer ttl accepts the first one again, a short one does not.
    assert f.apply_async((1,), cache_ttl=3600).id == fresh.id
    aged = fresh.finished_at.timestamp() + 0.01  # type: ignore[union-attr]
    wait_until(lambda: time.time() > aged)
    assert f.apply_async((1,), cache_ttl=0.01).id != fresh.id


def test_purged_results_are_not_reused(app: nbtasks.App) -> None:
    @app.task(cache=True)
    def f(x: int) -> int:
        return x

    first = f.delay(1)
    first.wait(10)
    assert app.purge() == 1
    again = f.delay(1)
    assert again.id != first.id and again.get(10) == 1


# --------------------------------------------------------------------------- across processes

_MODULE = """
import os
import nbtasks

app = nbtasks.App(store=os.environ["NBTASKS_TEST_CACHE_STORE"])
RUNS = []
{padding}

@app.task(name="cache.sq", cache=True)
def sq(x):
    RUNS.append(x)
    return {body}


@app.task(name="cache.hang", cache=True)
def hang(x):
    import threading
    threading.Event().wait()  # until its process is killed
"""

_SUBMIT = """
import json, os, signal, sys
sys.path.insert(0, {dir!r})
import {module} as m
r = m.{task}.delay(3)
if {kill}:
    while m.app.store.read_record(r.id)["status"] != "RUNNING":
        pass
    print(json.dumps({{"id": r.id, "pid": os.getpid()}}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
print(json.dumps({{"id": r.id, "cached": r.cached, "value": r.get(10), "runs": m.RUNS}}))
m.app.shutdown()
"""


def _module(tmp_path: Path, name: str, body: str = "x * x", padding: str = "") -> None:
    (tmp_path / f"{name}.py").write_text(_MODULE.format(body=body, padding=padding))


def _submit(
    tmp_path: Path, store: Path, module: str, task: str = "sq", kill: bool = False
) -> dict[str, Any]:
    env = {**os.environ, "NBTASKS_TEST_CACHE_STORE": str(store)}
    code = _SUBMIT.format(dir=str(tmp_path), module=module, task=task, kill=kill)
    proc = run_python(code, env=env)
    if kill:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_cached_result_survives_a_new_process(tmp_path: Path, store_path: Path) -> None:
    _module(tmp_path, "cachemod_a")
    first = _submit(tmp_path, store_path, "cachemod_a")
    assert first == {"id": first["id"], "cached": False, "value": 9, "runs": [3]}
    second = _submit(tmp_path, store_path, "cachemod_a")
    assert second == {"id": first["id"], "cached": True, "value": 9, "runs": []}
    # Same source elsewhere (another file, other lines): the same key (never a path or line).
    _module(tmp_path, "cachemod_b", padding="\n\nUNRELATED = 1\n\n\n")
    third = _submit(tmp_path, store_path, "cachemod_b")
    assert third["id"] == first["id"] and third["cached"] is True and third["runs"] == []


def test_changing_the_source_changes_the_key(tmp_path: Path, store_path: Path) -> None:
    _module(tmp_path, "cachemod_c")
    first = _submit(tmp_path, store_path, "cachemod_c")
    _module(tmp_path, "cachemod_d", body="x ** 2  # edited")
    edited = _submit(tmp_path, store_path, "cachemod_d")
    assert edited["id"] != first["id"]
    assert edited["cached"] is False and edited["runs"] == [3] and edited["value"] == 9


def test_interrupted_results_are_not_reused(tmp_path: Path, store_path: Path) -> None:
    _module(tmp_path, "cachemod_e")
    dead = _submit(tmp_path, store_path, "cachemod_e", task="hang", kill=True)
    reader = nbtasks.App(store=store_path)
    try:
        assert reader.result(dead["id"]).status is TaskStatus.INTERRUPTED
    finally:
        reader.shutdown()
    code = f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import cachemod_e as m
        r = m.hang.apply_async((3,), countdown=600)
        print(json.dumps({{"id": r.id, "cached": r.cached}}))
        r.cancel()
        m.app.shutdown()
    """
    proc = run_python(code, env={**os.environ, "NBTASKS_TEST_CACHE_STORE": str(store_path)})
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["id"] != dead["id"] and again["cached"] is False
