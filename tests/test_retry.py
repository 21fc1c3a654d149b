"""Celery's ``retry()`` and ``update_state(task_id=...)`` mean what they mean (SPEC §4).

``retry(exc=, countdown=, eta=, max_retries=, args=, kwargs=)`` honours each argument, checks
them all before the retry count, and refuses any other; ``update_state(task_id=other)``
updates that task wherever it runs, through a request its owner applies (DESIGN principle 2).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, Gate, committed, wait_until

import nbtasks
from nbtasks import Context, TaskStatus

AppFactory = Callable[..., nbtasks.App]


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.go.set()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked(store_path: Path, clock: FakeClock) -> Iterator[nbtasks.App]:
    a = nbtasks.App(store=store_path, clock=clock)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


# --------------------------------------------------------------------------- new arguments


def test_retry_with_new_args_and_kwargs_runs_the_next_attempt_with_them(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    seen: list[tuple[int, int, str]] = []
    hooked: list[tuple[list[Any], dict[str, Any]]] = []

    class Fetch(nbtasks.Task):
        retries = 3

        def run(self, n: int, unit: str = "s") -> str:
            req = self.request
            seen.append((req.retries, n, unit))
            assert (req.args, req.kwargs) == ([n], {"unit": unit} if req.retries else {})
            if req.retries == 0:
                raise self.retry(args=(n + 1,), kwargs={"unit": "ms"})
            if req.retries == 1:
                raise self.retry(args=[n * 10])  # kwargs stay as they were
            return f"{n}{unit}"

        def on_retry(
            self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            hooked.append((args, kwargs))

    fetch = app.register(Fetch)
    r = fetch.delay(1)
    assert r.get(10) == "20ms"
    assert seen == [(0, 1, "s"), (1, 2, "ms"), (2, 20, "ms")]
    assert hooked == [([1], {}), ([2], {"unit": "ms"})]  # the failed attempt's, as in Celery
    assert (r.args, r.kwargs) == ([20], {"unit": "ms"})
    app.store.flush()
    rec = committed(app, r.id)
    assert rec["args_repr"] == "20, unit='ms'"
    other = make_app().result(r.id)
    assert (other.args, other.kwargs) == ([20], {"unit": "ms"})


def test_retry_arguments_must_fit_the_signature_and_leave_no_trace(app: nbtasks.App) -> None:
    refused: dict[str, str] = {}

    @app.task(retries=1)
    def add(ctx: Context, x: int, y: int = 0) -> int:
        if ctx.retries == 0:
            for name, call in {
                "extra": lambda: ctx.retry(args=(1, 2, 3)),
                "unknown-kwarg": lambda: ctx.retry(kwargs={"z": 1}),
                "args-str": lambda: ctx.retry(args="12"),  # type: ignore[arg-type]
                "kwargs-list": lambda: ctx.retry(kwargs=[("y", 1)]),  # type: ignore[arg-type]
            }.items():
                try:
                    call()
                except TypeError as exc:
                    refused[name] = str(exc)
            raise ctx.retry(kwargs={"y": 5})
        return x + y

    r = add.delay(1)
    assert r.get(10) == 6
    prefix = f"retry(args=..., kwargs=...): arguments for task {add.name}"
    assert refused["extra"].startswith(prefix)
    assert "too many positional arguments" in refused["extra"]
    assert "'z'" in refused["unknown-kwarg"] and add.name in refused["unknown-kwarg"]
    assert refused["args-str"].startswith("retry(args='12') must be a tuple or list")
    assert refused["kwargs-list"].startswith("retry(kwargs=[('y', 1)]) must be a dict")
    assert r.attempts == 2 and r.args == [1] and r.kwargs == {"y": 5}


def test_retry_refuses_new_arguments_for_a_chunks_member(app: nbtasks.App) -> None:
    errors: list[str] = []

    @app.task
    def double(x: int) -> int:
        ctx = nbtasks.current()
        assert ctx is not None
        try:
            ctx.retry(args=(x,))
        except ValueError as exc:
            errors.append(str(exc))
        return 2 * x

    assert double.chunks([(1,), (2,)], 2).get(10) == [[2, 4]]
    assert len(errors) == 2 and "is a chunks() member" in errors[0]


# --------------------------------------------------------------------------- eta and countdown


def test_retry_at_an_eta_waits_for_it_on_the_clock(clocked: nbtasks.App, clock: FakeClock) -> None:
    attempts: list[int] = []
    when = datetime.fromtimestamp(clock.time(), UTC) + timedelta(seconds=30)

    @clocked.task(retries=1)
    def later(ctx: Context) -> str:
        attempts.append(ctx.retries)
        if ctx.retries == 0:
            raise ctx.retry(eta=when)
        return "at the eta"

    r = later.delay()
    supervisor = clocked._runtime.supervisor
    due = wait_until(lambda: supervisor.due(r.id))
    assert due == clock.monotonic() + 30
    clock.advance(29.9)
    assert attempts == [0] and r.refresh().state == "RETRY"
    clock.advance(0.2)
    assert r.get(10) == "at the eta"
    assert attempts == [0, 1]


def test_retry_at_a_past_eta_runs_at_once(app: nbtasks.App) -> None:
    @app.task(retries=1)
    def again(ctx: Context) -> int:
        if ctx.retries == 0:
            raise ctx.retry(eta=datetime.now(UTC) - timedelta(days=1))
        return ctx.retries

    assert again.delay().get(10) == 1


def test_bad_retry_arguments_are_reported_before_the_retry_count(app: nbtasks.App) -> None:
    """On the last retry (none left) a bad argument is still an error, not a silent
    MaxRetriesExceededError; each error names the argument and its value."""
    refused: dict[str, str] = {}
    naive = datetime(2030, 1, 1)
    aware = datetime(2030, 1, 1, tzinfo=UTC)

    @app.task(bind=True)  # retries=0: no retry left
    def last(self: nbtasks.Task) -> str:
        for name, call in {
            "countdown-negative": lambda: self.retry(countdown=-1),
            "countdown-nan": lambda: self.retry(countdown=float("nan")),
            "countdown-str": lambda: self.retry(countdown="5"),
            "eta-naive": lambda: self.retry(eta=naive),
            "eta-number": lambda: self.retry(eta=5),
            "both": lambda: self.retry(countdown=1, eta=aware),
            "max_retries-str": lambda: self.retry(max_retries="3"),
            "max_retries-negative": lambda: self.retry(max_retries=-1),
            "exc-str": lambda: self.retry(exc="boom"),
            "args": lambda: self.retry(args=(1,)),
        }.items():
            try:
                call()
            except (TypeError, ValueError) as exc:
                refused[name] = f"{type(exc).__name__}: {exc}"
        raise self.retry(exc=KeyError("the last one"))

    r = last.delay()
    r.wait(10)
    assert r.status is TaskStatus.FAILED and r.attempts == 1
    assert r.errors[-1].exception_class_path == "builtins.KeyError"
    assert refused["countdown-negative"].startswith("ValueError: retry(countdown=-1) must be")
    assert refused["countdown-nan"].startswith("ValueError: retry(countdown=nan) must be")
    assert refused["countdown-str"] == (
        "TypeError: retry(countdown='5') must be a number of seconds"
    )
    assert refused["eta-naive"].startswith("ValueError: retry(eta=...): eta=datetime.datetime(")
    assert "is a naive datetime; give it a timezone" in refused["eta-naive"]
    assert refused["eta-number"] == "TypeError: retry(eta=5) must be a timezone-aware datetime"
    assert refused["both"].startswith("ValueError: retry(countdown=1, eta=")
    assert refused["both"].endswith("give countdown or eta, not both")
    assert refused["max_retries-str"].startswith("TypeError: retry(max_retries='3') must be")
    assert refused["max_retries-negative"] == "ValueError: retry(max_retries=-1) must be >= 0"
    assert refused["exc-str"].startswith("TypeError: retry(exc='boom') must be an exception")
    assert refused["args"].startswith("TypeError: retry(args=..., kwargs=...): arguments")
    assert len(refused) == 10


@pytest.mark.parametrize("bound", [False, True], ids=["ctx", "bound"])
def test_retry_refuses_what_nbtasks_does_not_support(app: nbtasks.App, bound: bool) -> None:
    refused: list[str] = []

    def body(retry: Callable[..., Any]) -> str:
        for options in ({"throw": False}, {"queue": "fast"}, {"anything": 1}):
            try:
                retry(countdown=0, **options)
            except TypeError as exc:
                refused.append(str(exc))
        return "ran once"

    if bound:

        @app.task(bind=True, retries=3)
        def t(self: nbtasks.Task) -> str:
            return body(self.retry)
    else:

        @app.task(retries=3)
        def t(ctx: Context) -> str:  # type: ignore[misc]
            return body(ctx.retry)

    r = t.delay()
    assert r.get(10) == "ran once" and r.attempts == 1
    assert refused[0].startswith("retry() got throw=False, which nbtasks does not support")
    assert "raise ctx.retry(...)" in refused[0]
    assert refused[1].startswith("retry() got queue='fast', which nbtasks does not support;")
    assert refused[2].startswith("retry() got anything=1, which nbtasks does not support;")
    assert "exc, countdown, eta, max_retries, args and kwargs" in refused[2]


# --------------------------------------------------------------------------- process tasks


def test_a_process_task_retries_with_new_arguments(app: nbtasks.App) -> None:
    @app.task(executor="process", bind=True, retries=2)
    def grow(self: nbtasks.Task, n: int, label: str = "") -> str:
        if self.request.retries < 2:
            raise self.retry(args=(n * 2,), kwargs={"label": f"try{self.request.retries + 1}"})
        return f"{label}:{n}:{self.request.args}:{self.request.kwargs}"

    r = grow.delay(3)
    assert r.get(30) == "try2:12:[12]:{'label': 'try2'}"
    assert (r.args, r.kwargs) == ([12], {"label": "try2"})
    app.store.flush()
    assert committed(app, r.id)["args_repr"] == "12, label='try2'"


def test_a_process_tasks_retry_arguments_must_pickle(app: nbtasks.App) -> None:
    import threading

    @app.task(executor="process", retries=1)
    def keep(ctx: Context, value: Any) -> list[str]:
        refused = []
        for args in [(threading.Lock(),), (1, 2)]:
            try:
                ctx.retry(args=args)
            except TypeError as exc:
                refused.append(str(exc))
        return refused

    text, misfit = keep.delay(1).get(30)
    assert misfit.startswith(f"retry(args=..., kwargs=...): arguments for task {keep.name}")
    assert text.startswith(f"retry(args=..., kwargs=...) of task {keep.name}[")
    assert "argument 'value' is a _thread.lock, which cannot be pickled" in text, text


# --------------------------------------------------------------------------- update_state(task_id=)


def _requests(app: nbtasks.App) -> list[str]:
    """The keys of the update_state requests in the store."""
    return [k for k in app.store.cache.iterkeys() if isinstance(k, str) and k.startswith("s:")]


def test_a_process_task_updates_a_thread_task_through_its_owner(
    app: nbtasks.App, make_app: AppFactory, gate: Gate
) -> None:
    @app.task
    def waiting(ctx: Context) -> str:
        gate.pause()
        return "waited"

    @app.task(executor="process")
    def updater(ctx: Context, other_id: str) -> None:
        ctx.update_state(state="SET_ELSEWHERE", meta={"by": "a worker"}, task_id=other_id)

    w = waiting.delay()
    gate.wait_reached()
    updater.delay(w.id).get(30)
    live = app.result(w.id)
    wait_until(lambda: live.refresh().state == "SET_ELSEWHERE")
    assert live.result == {"by": "a worker"} and live.status is TaskStatus.RUNNING
    wait_until(lambda: _requests(app) == [])  # applied, then deleted by the owner
    app.store.flush()
    seen = make_app().result(w.id)
    assert (seen.state, seen.result) == ("SET_ELSEWHERE", {"by": "a worker"})
    gate.release()
    assert w.get(10) == "waited"
    assert app.result(w.id).state == "SUCCESSFUL"


def test_a_thread_task_updates_a_process_task_through_its_worker(
    app: nbtasks.App, tmp_path: Path
) -> None:
    go = tmp_path / "go"

    @app.task(executor="process")
    def working(ctx: Context, go: str) -> str:
        import os
        import time

        while not os.path.exists(go):
            ctx.check_cancelled()
            time.sleep(0.01)
        return "worked"

    @app.task
    def updater(ctx: Context, other_id: str) -> None:
        ctx.update_state(state="STEERED", meta=[1, 2], task_id=other_id)

    p = working.delay(str(go))
    wait_until(lambda: p.refresh().status is TaskStatus.RUNNING, timeout=30)
    updater.delay(p.id).get(10)
    reader = nbtasks.App(store=app.store.path)
    try:
        wait_until(lambda: reader.result(p.id).state == "STEERED")
        assert reader.result(p.id).result == [1, 2]
    finally:
        reader.shutdown()
    wait_until(lambda: _requests(app) == [])
    go.touch()
    assert p.get(30) == "worked"


def test_update_state_of_a_task_that_is_not_running_is_refused_at_once(
    app: nbtasks.App, clocked: nbtasks.App
) -> None:
    done = app.task(lambda: "done", name="done").delay()
    done.wait(10)
    later = clocked.task(lambda: "later", name="later").apply_async(countdown=60)
    refused: dict[str, str] = {}

    @app.task
    def updater(ctx: Context) -> None:
        for name, tid in {"finished": done.id, "ready": later.id, "unknown": "nope"}.items():
            try:
                ctx.update_state(state="X", task_id=tid)
            except (ValueError, nbtasks.UnknownTaskId) as exc:
                refused[name] = f"{type(exc).__name__}: {exc}"

    updater.delay().get(10)
    assert refused["finished"].startswith(
        f"ValueError: update_state(task_id={done.id!r}): task done[{done.id}] is SUCCESSFUL, "
        "not RUNNING (it has finished"
    )
    assert refused["ready"].startswith(
        f"ValueError: update_state(task_id={later.id!r}): task later[{later.id}] is READY, "
        "not RUNNING (it has not started yet"
    )
    assert refused["unknown"].startswith(
        "UnknownTaskId: update_state(task_id='nope'): no task with id 'nope' in the store"
    )
    assert _requests(app) == []
    assert app.result(done.id).state == "SUCCESSFUL"


def test_the_newest_request_wins_and_a_bad_one_is_deleted_never_applied(
    clocked: nbtasks.App, clock: FakeClock, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC 10: a request read from the store is data. One that is not the JSON nbtasks
    writes is deleted with a warning, and the task is left as it was."""

    @clocked.task
    def waiting(ctx: Context) -> str:
        gate.pause()
        return "waited"

    r = waiting.delay()
    gate.wait_reached()
    store = clocked.store
    store.request_state(r.id, "FIRST", {"n": 1})
    store.request_state(r.id, "SECOND", {"n": 2})
    bad = {
        "not-json": "{'state': 'X'",
        "wrong-keys": json.dumps({"state": "X", "meta": 1, "code": "import os"}),
        "not-an-object": json.dumps(["X", 1]),
        "state-int": json.dumps({"state": 3, "meta": 1}),
        "nan": '{"state": "X", "meta": NaN}',
        "deep": '{"state": "X", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "bytes": b'{"state": "X", "meta": 1}',
    }
    for name, value in bad.items():
        store.cache.set(f"s:{name}", value)
    with caplog.at_level(logging.WARNING, logger="nbtasks"):
        clock.advance(0.1)
        wait_until(lambda: _requests(clocked) == [])
    assert (r.refresh().state, r.result) == ("SECOND", {"n": 2})
    warned = [rec.getMessage() for rec in caplog.records if "update_state request" in rec.message]
    assert len(warned) == len(bad)
    assert all("it was ignored and deleted" in text for text in warned)
    gate.release()
    assert r.get(10) == "waited"


def test_a_request_for_a_task_that_ended_before_it_was_applied_is_deleted(
    clocked: nbtasks.App, clock: FakeClock, gate: Gate
) -> None:
    @clocked.task
    def waiting(ctx: Context) -> str:
        gate.pause()
        return "waited"

    done = clocked.task(lambda: "done", name="quick").delay()
    assert done.get(10) == "done"
    r = waiting.delay()
    gate.wait_reached()  # it runs: the supervisor ticks
    clocked.store.request_state(done.id, "LATE", None)
    clocked.store.request_state("purged-meanwhile", "LATE", None)
    clock.advance(0.1)
    wait_until(lambda: _requests(clocked) == [])
    assert done.refresh().state == "SUCCESSFUL"
    gate.release()
    assert r.get(10) == "waited"


# --------------------------------------------------------------------------- Dask tasks


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_a_dask_task_retries_with_new_arguments_and_its_state_is_updated_by_request(
    dask_client: Any, tmp_path: Path, gate: Gate
) -> None:
    """The retry's new arguments and eta travel back to the client, which owns the record;
    a request for the Dask task's state is applied by the client, and a task on a Dask
    worker cannot update another one (the worker has no store)."""
    app = nbtasks.App(store=tmp_path / "store", dask=dask_client)
    try:

        @app.task(executor="dask", retries=1)
        def grow(ctx: Context, n: int) -> tuple[int, str]:
            if ctx.retries == 0:
                soon = datetime.now(UTC) + timedelta(seconds=0.05)
                raise ctx.retry(args=(n * 2,), eta=soon)
            try:
                ctx.update_state(state="X", task_id="someone-else")
            except ValueError as exc:
                return n, str(exc)
            return n, ""

        r = grow.delay(4)
        n, refused = r.get(30)
        assert n == 8 and r.args == [8] and r.attempts == 2
        app.store.flush()
        assert committed(app, r.id)["args_repr"] == "8"
        assert "a task running on a Dask worker can update only its own state" in refused

        @app.task(executor="dask")
        def waits(ctx: Context) -> None:
            while True:  # until the test cancels it
                ctx.check_cancelled()
                time.sleep(0.01)

        @app.task
        def updater(ctx: Context, other_id: str) -> None:
            ctx.update_state(state="FROM_A_THREAD", meta=1, task_id=other_id)

        w = waits.delay()
        wait_until(lambda: w.refresh().status is TaskStatus.RUNNING, timeout=30)
        updater.delay(w.id).get(10)  # the Dask task's owner is this App: applied at once
        assert (w.refresh().state, w.result) == ("FROM_A_THREAD", 1)
        w.cancel()
        w.wait(30)
    finally:
        app.shutdown(wait=True, cancel_pending=True)
