"""nbtasks._context: what a running task sees (SPEC 4) and what it leaves in the store.

Metadata and update_state (Celery and Mognet), throttled progress, track, cancellation,
retries and backoff, soft and hard time limits, output capture, the tqdm bridge.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import Gate, committed, run_python, wait_until

import nbtasks
from nbtasks import Context, TaskStatus

AppFactory = Callable[..., nbtasks.App]


@pytest.fixture
def reader(make_app: AppFactory) -> nbtasks.App:
    """A second App on the same store: it sees only what is committed."""
    return make_app()


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.go.set()


# --------------------------------------------------------------------------- metadata and state


def test_celery_update_state_and_request_meta(
    app: nbtasks.App, reader: nbtasks.App, gate: Gate
) -> None:
    @app.task(bind=True)
    def hello(task: nbtasks.Task) -> str:
        task.request.meta = {"some_key": "some_value"}
        task.update_state(state="PROGRESS", meta="Task current result")
        gate.pause()
        task.update_state(state="ALMOST", meta={"step": 2})
        gate.pause()
        return "hello world"

    r = hello.delay()
    gate.wait_reached()
    seen = wait_until(lambda: reader.result(r.id).state == "PROGRESS" and reader.result(r.id))
    assert seen.status is TaskStatus.RUNNING
    assert seen.result == "Task current result"
    assert seen.metadata == {"some_key": "some_value"}
    gate.release()
    gate.wait_reached()
    seen = wait_until(lambda: reader.result(r.id).state == "ALMOST" and reader.result(r.id))
    assert seen.result == {"step": 2}  # later calls overwrite earlier ones
    gate.release()
    assert r.get(10) == "hello world"
    wait_until(lambda: reader.result(r.id).is_finished)
    final = reader.result(r.id)
    assert final.state == "SUCCESSFUL"
    assert final.result == "hello world"
    assert final.metadata == {"some_key": "some_value"}


def test_request_meta_never_deletes_set_metadata_keys(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    @app.task
    def t(ctx: nbtasks.Context) -> None:
        ctx.set_metadata(user_id="dkl")
        ctx.request.meta = {"some_key": "v1"}
        ctx.meta = {"other": 1}
        ctx.update_state(state="X")
        ctx.request.meta = {"some_key": "v2"}

    r = t.apply_async(metadata={"at_submit": True})
    r.wait(10)
    expected = {"at_submit": True, "user_id": "dkl", "some_key": "v2", "other": 1}
    assert r.metadata == expected
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).metadata == expected
    assert reader.result(r.id).get_metadata() == expected


def test_set_metadata_overrides_a_key_given_at_submit(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    @app.task
    def t(ctx: nbtasks.Context) -> None:
        ctx.set_metadata(user_id="dkl")

    r = t.apply_async(metadata={"user_id": "dol", "tenant": "t1"})
    r.wait(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).metadata == {"user_id": "dkl", "tenant": "t1"}


def test_mognet_set_metadata_is_visible_from_another_app_while_running(
    app: nbtasks.App, reader: nbtasks.App, gate: Gate
) -> None:
    @app.task(name="demo.set_metadata")
    def demo_set_metadata(context: nbtasks.Context) -> None:
        context.set_metadata(user_id="dkl")
        gate.pause()
        context.set_metadata(step=2, nested={"a": [1, (2, 3)]})
        gate.pause()

    r = demo_set_metadata.apply_async(metadata={"tenant": "t1"})
    gate.wait_reached()
    # Persisted at once: no waiting for the writer.
    other = reader.result(r.id)
    assert other.status is TaskStatus.RUNNING
    assert other.get_metadata() == {"tenant": "t1", "user_id": "dkl"}
    assert committed(reader, r.id)["metadata"] == {"tenant": "t1", "user_id": "dkl"}
    gate.release()
    gate.wait_reached()
    assert other.get_metadata() == {
        "tenant": "t1",
        "user_id": "dkl",
        "step": 2,
        "nested": {"a": [1, [2, 3]]},  # a tuple comes back as a list
    }
    assert asyncio.run(other.aget_metadata())["step"] == 2
    gate.release()
    r.wait(10)


def test_aset_metadata(app: nbtasks.App, reader: nbtasks.App, gate: Gate) -> None:
    @app.task
    async def demo(context: nbtasks.Context) -> str:
        await context.aset_metadata(user_id="dkl")
        await asyncio.to_thread(gate.pause)
        return "ok"

    r = demo.delay()
    gate.wait_reached()
    assert reader.result(r.id).get_metadata() == {"user_id": "dkl"}
    gate.release()
    assert r.get(10) == "ok"


def test_non_json_metadata_and_state_are_refused_naming_the_key(app: nbtasks.App) -> None:
    errors: dict[str, str] = {}

    @app.task
    def t(ctx: nbtasks.Context) -> None:
        for name, call in {
            "set": lambda: ctx.set_metadata(good=1, when=datetime.now()),
            "meta": lambda: setattr(ctx.request, "meta", {"obj": object()}),
            "item": lambda: ctx.request.metadata.__setitem__("s", {1, 2}),
            "update": lambda: ctx.update_state(state="X", meta={"b": b"bytes"}),
            "state": lambda: ctx.update_state(state=5),  # type: ignore[arg-type]
        }.items():
            try:
                call()
            except TypeError as exc:
                errors[name] = str(exc)

    t.delay().wait(10)
    assert set(errors) == {"set", "meta", "item", "update", "state"}
    assert "when" in errors["set"]
    assert "obj" in errors["meta"]
    assert "'s'" in errors["item"]
    assert "meta" in errors["update"]
    assert "state" in errors["state"]


def test_request_fields_inside_the_task(app: nbtasks.App) -> None:
    seen: dict[str, Any] = {}

    @app.task(name="demo.fields")
    def fields(ctx: nbtasks.Context, x: int, y: int = 0) -> None:
        req = ctx.request
        for name in ("id", "task_name", "args", "kwargs", "metadata", "meta", "retries"):
            seen[name] = getattr(req, name)
        seen.update(priority=req.priority, parent_id=req.parent_id, worker_id=req.worker_id)
        seen["ctx_id"], seen["ctx_retries"] = ctx.id, ctx.retries  # Celery-style fall-through

    r = fields.apply_async((1,), {"y": 2}, priority=5, metadata={"m": 1})
    r.wait(10)
    assert r.status is TaskStatus.SUCCESSFUL
    assert seen["id"] == seen["ctx_id"] == r.id
    assert seen["task_name"] == "demo.fields"
    assert (list(seen["args"]), seen["kwargs"]) == ([1], {"y": 2})
    assert seen["metadata"] == seen["meta"] == {"m": 1}
    assert seen["retries"] == seen["ctx_retries"] == 0
    assert seen["priority"] == 5
    assert seen["parent_id"] is None
    assert seen["worker_id"] == r.worker_ids[0]


def test_parent_id_in_a_chain(app: nbtasks.App) -> None:
    parents: list[Any] = []

    @app.task
    def step(ctx: nbtasks.Context, x: int) -> int:
        parents.append(ctx.request.parent_id)
        return x + 1

    res = (step.s(1) | step.s()).apply_async()
    assert res.get(10) == 3
    first = res.parent
    assert isinstance(first, nbtasks.TaskResult)
    assert parents == [None, first.id]


def test_request_eta_and_expires_inside_the_task(app: nbtasks.App) -> None:
    seen: dict[str, Any] = {}

    @app.task
    def t(ctx: nbtasks.Context) -> None:
        seen.update(eta=ctx.request.eta, expires=ctx.request.expires)

    t.apply_async(countdown=0.01, expires=60).wait(10)
    assert isinstance(seen["eta"], datetime) and seen["eta"].tzinfo is not None
    assert isinstance(seen["expires"], datetime) and seen["expires"].tzinfo is not None


# --------------------------------------------------------------------------- progress


def test_progress_throttles_store_writes_and_always_stores_the_last_value(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    """A million progress() calls, in two halves: another App sees a sample of the first half
    while the task waits, and the final value (with a rate) once it ends. The throttle itself
    (at most one sample per 0.1 s of the clock) is tested exactly on a fake clock, in
    tests/test_runtime.py."""
    n = 1_000_000
    gate = Gate()

    @app.task
    def hot(ctx: nbtasks.Context) -> None:
        for i in range(1, n // 2 + 1):
            ctx.progress(i, n)
        gate.pause()
        for i in range(n // 2 + 1, n + 1):
            ctx.progress(i, n)

    r = hot.delay()
    gate.wait_reached()

    def sampled() -> Any:
        p = reader.result(r.id).progress
        return p is not None and p.current == n // 2 and p

    half = wait_until(sampled)  # the paused task's value: sampled and committed
    assert (half.current, half.total) == (n // 2, n)
    gate.release()
    r.get(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    final = reader.result(r.id).progress
    assert final is not None
    assert (final.current, final.total, final.fraction) == (n, n, 1.0)
    assert final.rate is not None and final.rate > 0


def test_progress_fields_and_message(app: nbtasks.App, reader: nbtasks.App, gate: Gate) -> None:
    @app.task
    def t(ctx: nbtasks.Context) -> None:
        ctx.progress(1, 4, "loading")
        ctx.progress(2)  # total and message are kept
        gate.pause()
        ctx.progress(3.5, message="almost")

    r = t.delay()
    gate.wait_reached()
    p = wait_until(lambda: reader.result(r.id).progress)
    wait_until(lambda: reader.result(r.id).progress.current == 2)  # type: ignore[union-attr]
    p = reader.result(r.id).progress
    assert (p.current, p.total, p.message, p.fraction) == (2, 4, "loading", 0.5)
    gate.release()
    r.wait(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    p = reader.result(r.id).progress
    assert p is not None and (p.current, p.total, p.message) == (3.5, 4, "almost")


def test_progress_validates_its_arguments(app: nbtasks.App) -> None:
    errors: list[str] = []

    @app.task
    def t(ctx: nbtasks.Context) -> None:
        for args in (("1",), (1, "10"), (1, None, 5)):
            try:
                ctx.progress(*args)  # type: ignore[arg-type]
            except TypeError as exc:
                errors.append(str(exc))

    t.delay().wait(10)
    assert len(errors) == 3
    assert "current" in errors[0] and "total" in errors[1] and "message" in errors[2]


def test_track_reports_each_item_with_total_from_len(app: nbtasks.App) -> None:
    @app.task
    def t(ctx: nbtasks.Context) -> list[int]:
        return [x * 2 for x in ctx.track([1, 2, 3, 4, 5], message="items")]

    r = t.delay()
    assert r.get(10) == [2, 4, 6, 8, 10]
    p = r.refresh().progress
    assert p is not None and (p.current, p.total, p.message) == (5, 5, "items")


def test_track_of_a_generator_has_no_total_unless_given(app: nbtasks.App) -> None:
    @app.task
    def t(ctx: nbtasks.Context, total: int | None) -> int:
        return sum(ctx.track((i for i in range(7)), total=total))

    a, b = t.delay(None), t.delay(7)
    assert (a.get(10), b.get(10)) == (21, 21)
    pa, pb = a.refresh().progress, b.refresh().progress
    assert pa is not None and (pa.current, pa.total, pa.fraction) == (7, None, None)
    assert pb is not None and (pb.current, pb.total, pb.fraction) == (7, 7, 1.0)


# --------------------------------------------------------------------------- cancellation


def test_cancel_is_noticed_by_progress(app: nbtasks.App, reader: nbtasks.App) -> None:
    state: dict[str, Any] = {"after": False}
    running, go = threading.Event(), threading.Event()

    @app.task
    def spin(ctx: nbtasks.Context) -> None:
        running.set()
        try:
            assert go.wait(10)  # until the test has cancelled it
            ctx.progress(1)
        finally:
            state["cancelled"] = ctx.cancelled
        state["after"] = True

    r = spin.delay()
    assert running.wait(10)
    assert r.cancel() is True
    go.set()
    r.wait(10)
    assert r.status is TaskStatus.CANCELLED
    assert r.reason == "cancelled"
    assert state == {"cancelled": True, "after": False}
    with pytest.raises(nbtasks.TaskCancelled):
        r.get(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).status is TaskStatus.CANCELLED


def test_cancel_is_noticed_by_check_cancelled(app: nbtasks.App) -> None:
    running, go = threading.Event(), threading.Event()

    @app.task
    def spin(ctx: nbtasks.Context) -> None:
        running.set()
        assert go.wait(10)  # until the test has cancelled it
        ctx.check_cancelled()

    r = spin.delay()
    assert running.wait(10)
    assert not r.refresh().is_finished
    assert r.cancel()
    go.set()
    assert r.wait(10).status is TaskStatus.CANCELLED


def test_cancel_of_a_task_that_never_checks_discards_its_value(app: nbtasks.App) -> None:
    running, go, done = threading.Event(), threading.Event(), threading.Event()

    @app.task
    def oblivious() -> str:
        running.set()
        assert go.wait(10)  # busy until the test has cancelled it
        done.set()
        return "value"

    r = oblivious.delay()
    assert running.wait(10)
    assert r.cancel()
    go.set()
    r.wait(10)
    assert done.is_set()  # it ran to its end
    assert r.status is TaskStatus.CANCELLED
    with pytest.raises(nbtasks.TaskCancelled):
        r.return_value  # noqa: B018


# --------------------------------------------------------------------------- retries


def test_retry_with_countdown(app: nbtasks.App, reader: nbtasks.App) -> None:
    times: list[float] = []
    retries_seen: list[int] = []

    @app.task(retries=5)
    def flaky(ctx: nbtasks.Context, x: int) -> int:
        times.append(time.monotonic())
        retries_seen.append(ctx.request.retries)
        if ctx.request.retries < 2:
            raise ctx.retry(exc=ValueError(f"try {ctx.request.retries}"), countdown=0.1)
        return x

    r = flaky.delay(7)
    assert r.get(10) == 7
    assert retries_seen == [0, 1, 2]
    assert times[1] - times[0] >= 0.09 and times[2] - times[1] >= 0.09
    assert r.attempts == 3 and len(r.worker_ids) == 3
    assert [e.exception_class_path for e in r.errors] == ["builtins.ValueError"] * 2
    assert ["try 0" in r.errors[0].traceback, "try 1" in r.errors[1].traceback] == [True, True]
    assert r.last_attempted_at is not None and r.started_at is not None
    assert r.last_attempted_at > r.started_at
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).attempts == 3


def test_retry_waiting_is_ready_with_state_retry(app: nbtasks.App, reader: nbtasks.App) -> None:
    @app.task(retries=1)
    def once(ctx: nbtasks.Context) -> str:
        if ctx.request.retries == 0:
            raise ctx.retry(countdown=0.5)
        return "second"

    r = once.delay()
    rec = wait_until(lambda: r.refresh().state == "RETRY" and r)
    assert rec.status is TaskStatus.READY
    wait_until(lambda: reader.result(r.id).state == "RETRY")
    assert reader.result(r.id).status is TaskStatus.READY
    assert r.get(10) == "second"


def test_retry_past_max_retries_raises_exc_or_max_retries_exceeded(app: nbtasks.App) -> None:
    @app.task
    def with_exc(ctx: nbtasks.Context) -> None:
        raise ctx.retry(exc=KeyError("gone"), max_retries=1)

    @app.task
    def without_exc(ctx: nbtasks.Context) -> None:
        raise ctx.retry()

    a, b = with_exc.delay(), without_exc.delay()
    a.wait(10)
    b.wait(10)
    assert a.status is TaskStatus.FAILED
    assert a.attempts == 2  # max_retries=1 overrides the task's 0
    assert a.errors[-1].exception_class_path == "builtins.KeyError"
    with pytest.raises(nbtasks.TaskFailed) as info:
        a.return_value  # noqa: B018
    assert isinstance(info.value.__cause__, KeyError)
    assert b.status is TaskStatus.FAILED and b.attempts == 1
    assert b.errors[-1].exception_class_path == "nbtasks.MaxRetriesExceededError"


def test_retry_max_retries_overrides_the_tasks_retries(app: nbtasks.App) -> None:
    @app.task(retries=5)
    def with_exc(ctx: nbtasks.Context) -> None:
        raise ctx.retry(exc=KeyError("gone"), max_retries=1)

    r = with_exc.delay()
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.attempts == 2


def test_bound_task_retry(app: nbtasks.App) -> None:
    @app.task(bind=True, retries=1)
    def tweet(self: nbtasks.Task) -> str:
        if self.request.retries == 0:
            try:
                raise ConnectionError("fail whale")
            except ConnectionError as exc:
                raise self.retry(countdown=0.01, exc=exc)
        return "posted"

    r = tweet.delay()
    assert r.get(10) == "posted"
    assert r.errors[0].exception_class_path == "builtins.ConnectionError"


def test_retries_with_exponential_backoff(app: nbtasks.App) -> None:
    times: list[float] = []

    @app.task(retries=3, retry_backoff=0.05)
    def flaky() -> None:
        times.append(time.monotonic())
        raise OSError("down")

    r = flaky.delay()
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.attempts == 4 and len(r.errors) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= expected * 0.9, gaps


def test_retry_on_limits_which_exceptions_retry(app: nbtasks.App) -> None:
    @app.task(retries=3, retry_on=(KeyError,))
    def wrong_kind() -> None:
        raise ValueError("not retried")

    @app.task(retries=2, retry_on=KeyError)
    def right_kind() -> None:
        raise KeyError("retried")

    a, b = wrong_kind.delay(), right_kind.delay()
    assert a.wait(10).attempts == 1
    assert b.wait(10).attempts == 3


# --------------------------------------------------------------------------- time limits


def test_soft_timeout_raises_inside_the_task_at_a_check(app: nbtasks.App) -> None:
    @app.task(soft_timeout=0.1)
    def polite(ctx: nbtasks.Context) -> str:
        try:
            while True:  # busy until the limit, checking
                ctx.check_cancelled()
        except nbtasks.SoftTimeLimitExceeded:
            return "cleaned up"

    r = polite.delay()
    assert r.get(10) == "cleaned up"
    assert r.status is TaskStatus.SUCCESSFUL


def test_soft_timeout_raises_asynchronously_in_a_busy_thread(app: nbtasks.App) -> None:
    @app.task(soft_timeout=0.1)
    def busy() -> str:
        try:
            while True:
                sum(range(100))
        except nbtasks.SoftTimeLimitExceeded:
            return "interrupted"

    assert busy.delay().get(10) == "interrupted"


def test_uncaught_soft_timeout_fails_the_task(app: nbtasks.App) -> None:
    @app.task
    def spin(ctx: nbtasks.Context) -> None:
        while True:  # busy until the limit, reporting
            ctx.progress(1)

    r = spin.apply_async(soft_timeout=0.1)
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.errors[-1].exception_class_path == "nbtasks.SoftTimeLimitExceeded"


def test_hard_timeout_is_cooperative_and_records_task_timeout(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    @app.task(timeout=0.1)
    def spin(ctx: nbtasks.Context) -> None:
        while True:  # busy until the limit, reporting
            ctx.progress(1)

    r = spin.delay()
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    err = r.errors[-1]
    assert err.exception_class_path == "nbtasks.TaskTimeout"
    assert err.exception_class is nbtasks.TaskTimeout
    assert "timeout" in err.message
    with pytest.raises(nbtasks.TaskFailed, match="TaskTimeout"):
        r.return_value  # noqa: B018
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).errors[-1].exception_class_path == "nbtasks.TaskTimeout"


# --------------------------------------------------------------------------- output


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_print_and_logging_are_captured_per_task_not_printed(
    app: nbtasks.App, reader: nbtasks.App, capfd: pytest.CaptureFixture[str], root_logging: None
) -> None:
    # Configured BEFORE the task, as in a notebook (force: pytest's own handlers are on root).
    logging.basicConfig(level=logging.INFO, force=True)
    log = logging.getLogger("nbtasks.tests.task")

    @app.task
    def chatty(n: int) -> int:
        print(f"print from task {n}")
        sys.stderr.write(f"stderr from task {n}\n")
        log.info("log from task %d", n)
        return n

    a, b = chatty.delay(1), chatty.delay(2)
    print("print from the test")
    log.info("log from the test")
    assert (a.get(10), b.get(10)) == (1, 2)
    out, err = capfd.readouterr()
    assert "from task" not in out + err
    assert "print from the test" in out
    assert "log from the test" in err
    for r, n in ((a, 1), (b, 2)):
        text = r.refresh().output
        assert f"print from task {n}\n" in text
        assert f"stderr from task {n}\n" in text
        assert f"log from task {n}" in text
        other = 3 - n
        assert f"task {other}" not in text  # each task gets its own output
        wait_until(lambda r=r: reader.result(r.id).is_finished)
        assert reader.result(r.id).output == text


def test_output_of_a_running_task_is_stored_while_it_runs(
    app: nbtasks.App, reader: nbtasks.App, gate: Gate
) -> None:
    @app.task
    def t() -> None:
        print("first line")
        gate.pause()

    r = t.delay()
    gate.wait_reached()
    wait_until(lambda: reader.result(r.id).output == "first line\n")
    gate.release()
    r.wait(10)


def test_output_is_a_bounded_tail(app: nbtasks.App) -> None:
    @app.task
    def loud() -> None:
        for i in range(20_000):
            print(f"line {i:05d} " + "x" * 40)

    r = loud.delay()
    r.wait(10)
    text = r.output
    assert 1000 < len(text) <= 64 * 1024
    assert text.endswith("line 19999 " + "x" * 40 + "\n")
    assert "line 00000" not in text


def test_tqdm_inside_a_task_drives_its_progress(
    app: nbtasks.App, capfd: pytest.CaptureFixture[str]
) -> None:
    from tqdm import tqdm

    @app.task
    def epochs() -> int:
        total = 0
        for i in tqdm(range(200), desc="epochs"):
            total += i
        return total

    @app.task
    def slow_epochs(ctx: nbtasks.Context) -> None:
        for _ in tqdm(range(30), desc="slow", mininterval=0):  # update() on every item
            pass

    r = epochs.delay()
    assert r.get(10) == sum(range(200))
    p = r.refresh().progress
    assert p is not None
    assert (p.current, p.total) == (200, 200)
    assert "epochs" in r.output  # the bar itself went to the task's output
    s = slow_epochs.delay()
    s.wait(10)
    p = s.refresh().progress
    assert p is not None and (p.current, p.total, p.message) == (30, 30, "slow")
    out, err = capfd.readouterr()
    assert "epochs" not in out + err and "slow" not in out + err


def test_tqdm_imported_inside_the_first_task_drives_its_progress(store_path: Path) -> None:
    proc = run_python(
        f"""
        import nbtasks
        app = nbtasks.App(store={str(store_path)!r})
        @app.task
        def t():
            from tqdm import tqdm
            for _ in tqdm(range(100), desc="epochs"):
                pass
        r = t.delay()
        r.get(10)
        print(r.refresh().progress)
        app.shutdown()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "100/100 epochs"


# --------------------------------------------------------------------------- every executor

EXECUTORS = ["thread", "inline", "async"]


def _declare(app: nbtasks.App, kind: str, body: Callable[[nbtasks.Context, int], Any]) -> Any:
    """The same task body as a thread, inline or ``async def`` task."""
    if kind == "async":

        async def coro(ctx: nbtasks.Context, x: int) -> Any:
            await asyncio.sleep(0)
            return body(ctx, x)

        return app.task(coro, name=f"behaviour.{kind}.{body.__name__}")

    def fn(ctx: nbtasks.Context, x: int) -> Any:
        return body(ctx, x)

    return app.task(fn, name=f"behaviour.{kind}.{body.__name__}", executor=kind)


def _works(ctx: nbtasks.Context, x: int) -> int:
    assert nbtasks.current() is ctx
    ctx.set_metadata(x=x)
    ctx.request.meta = {"via": "request"}
    ctx.update_state(state="HALF", meta=[x])
    ctx.progress(1, 2, "half")
    print(f"out {x}")
    logging.getLogger("nbtasks.tests.behaviour").warning("warned %d", x)
    ctx.progress(2)
    return x * 2


def _fails(ctx: nbtasks.Context, x: int) -> None:
    raise LookupError(f"no {x}")


def _spins(ctx: nbtasks.Context, x: int) -> None:
    while True:  # busy until stopped, reporting
        ctx.progress(1)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_behaviour_success_on_every_executor(
    app: nbtasks.App,
    reader: nbtasks.App,
    kind: str,
    capfd: pytest.CaptureFixture[str],
    root_logging: None,
) -> None:
    logging.basicConfig(force=True)
    t = _declare(app, kind, _works)
    r = t.delay(21)
    assert r.get(10) == 42
    wait_until(lambda: reader.result(r.id).is_finished)
    for res in (r.refresh(), reader.result(r.id)):
        assert res.status is TaskStatus.SUCCESSFUL and res.state == "SUCCESSFUL"
        assert res.return_value == 42
        assert res.metadata == {"x": 21, "via": "request"}
        assert res.progress is not None
        assert (res.progress.current, res.progress.total, res.progress.message) == (2, 2, "half")
        assert "out 21\n" in res.output and "warned 21" in res.output
        assert res.attempts == 1
    out, err = capfd.readouterr()
    assert "out 21" not in out + err and "warned 21" not in out + err


@pytest.mark.parametrize("kind", EXECUTORS)
def test_behaviour_failure_and_retries_on_every_executor(
    app: nbtasks.App, reader: nbtasks.App, kind: str
) -> None:
    t = _declare(app, kind, _fails)
    r = t.apply_async((3,), retries=1)
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.attempts == 2
    assert [e.exception_class_path for e in r.errors] == ["builtins.LookupError"] * 2
    with pytest.raises(nbtasks.TaskFailed, match="no 3") as info:
        r.return_value  # noqa: B018
    assert isinstance(info.value.__cause__, LookupError)
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).status is TaskStatus.FAILED


@pytest.mark.parametrize("kind", EXECUTORS)
def test_behaviour_timeout_on_every_executor(app: nbtasks.App, kind: str) -> None:
    t = _declare(app, kind, _spins)
    r = t.apply_async((0,), timeout=0.1)
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.errors[-1].exception_class_path == "nbtasks.TaskTimeout"


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_behaviour_cancel_on_every_background_executor(app: nbtasks.App, kind: str) -> None:
    t = _declare(app, kind, _spins)
    r = t.delay(0)
    wait_until(lambda: r.refresh().status is TaskStatus.RUNNING)
    assert r.cancel() is True
    assert r.wait(10).status is TaskStatus.CANCELLED


def test_late_soft_timeout_never_escapes_into_the_worker(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tick thread preempted between its check and its raise (simulated with a delay;
    with sys.setswitchinterval(1e-6) it happens within a few dozen tasks)."""
    from nbtasks import _attempt

    real = _attempt.raise_in_thread

    def preempted(thread_id: int, exc_type: type[BaseException]) -> None:
        time.sleep(0.05)  # the preemption itself: the task returns meanwhile
        real(thread_id, exc_type)

    real_limits = _attempt.AttemptCore.enforce_limits
    limited = threading.Event()

    def enforce_limits(attempt: _attempt.AttemptCore, monotonic: float) -> None:
        real_limits(attempt, monotonic)
        if attempt.ctx.soft_fired:
            limited.set()  # the late exception, if any, has been posted

    monkeypatch.setattr(_attempt.AttemptCore, "enforce_limits", enforce_limits)

    monkeypatch.setattr(_attempt, "raise_in_thread", preempted)
    escaped: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: escaped.append(a.exc_type.__name__))
    a = make_app(workers=1)

    @a.task(soft_timeout=0.01)
    def polite(ctx: nbtasks.Context) -> str:
        try:
            while True:
                ctx.check_cancelled()
        except nbtasks.SoftTimeLimitExceeded:
            return "cleaned up"

    @a.task
    def after() -> str:
        return "next"

    assert polite.delay().get(10) == "cleaned up"
    assert limited.wait(10)
    nxt = after.delay()
    try:
        assert nxt.get(1) == "next"
    finally:
        assert escaped == []


# --------------------------------------------------------------------------- after the end


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_finished_task_leaves_no_reference_cycles(app: nbtasks.App, kind: str) -> None:
    """Reference counting frees a finished task's objects (its Job, Attempt, Context and
    Live): left to the cyclic collector, a big map's finished tasks were walked over and
    over by full collections while the map ran."""
    from nbtasks._attempt import Attempt, Job
    from nbtasks.store import Live

    ok = _declare(app, kind, _works)
    bad = _declare(app, kind, _fails)

    def once_more(ctx: nbtasks.Context, x: int) -> int:
        if not ctx.request.retries:
            _fails(ctx, x)
        return x

    where = "inline" if kind == "inline" else "thread"
    flaky = app.task(once_more, name=f"{kind}.once_more", executor=where, retries=1)
    gc.collect()
    gc.disable()
    try:
        results = [*ok.map(range(20)).results, bad.delay(1), flaky.delay(2)]
        for r in results:
            r.wait(10)
        assert [r.status for r in results[-2:]] == [TaskStatus.FAILED, TaskStatus.SUCCESSFUL]
        app.store.flush()
        del results, r
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable is kept, to show
        gc.collect()
        left = [
            type(o).__name__ for o in gc.garbage if isinstance(o, Attempt | Context | Job | Live)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_the_context_of_an_ended_attempt_refuses_changes(app: nbtasks.App) -> None:
    kept: list[nbtasks.Context] = []

    @app.task
    def keeps(ctx: nbtasks.Context) -> int:
        kept.append(ctx)
        return 1

    r = keeps.delay()
    assert r.get(10) == 1
    ctx = kept[0]
    for call in (
        lambda: ctx.set_metadata(late=True),
        lambda: ctx.update_state(state="LATE"),
        lambda: ctx.retry(),
    ):
        with pytest.raises(RuntimeError, match=r"after that attempt ended; call it while"):
            call()
    r.refresh()
    assert r.metadata == {} and r.state == "SUCCESSFUL"


def test_nested_tqdm_bars_the_outer_drives_progress_the_inner_ones_are_named(
    app: nbtasks.App,
) -> None:
    """Issue 17: two nested bars overwrote each other's progress (the inner loop's 100/100
    then the outer 1/3 ...). The outermost bar drives the task's progress; an open inner bar
    is named in the message, and gone from it once closed."""
    from tqdm import tqdm

    seen: list[tuple[Any, ...]] = []

    @app.task
    def train(ctx: nbtasks.Context) -> None:
        for _epoch in tqdm(range(3), desc="epochs", mininterval=0):
            for _batch in tqdm(range(50), desc="batch", mininterval=0, leave=False):
                seen.append(ctx.reported)
            seen.append(ctx.reported)

    r = train.delay()
    r.get(10)
    inner = [rep for rep in seen if rep[2] and "batch" in rep[2]]
    assert inner, seen[:5]
    assert all(total == 3 for _cur, total, _msg in inner)  # never the inner bar's 50
    assert inner[-1][2] == "epochs · batch 49/50"  # tqdm counts an item when the next starts
    assert seen[-1][2] == "epochs"  # after the inner bar closed
    assert seen[-1][:2] in ((2, 3), (3, 3))
    p = r.refresh().progress
    assert p is not None and (p.current, p.total, p.message) == (3, 3, "epochs")


def test_nested_tqdm_inner_bars_are_kept_and_drawn_as_sub_bars(app: nbtasks.App) -> None:
    """The inner bars of a running task are its record's ``bars`` (``inner_bars``), which the
    widget's HTML draws as small bars under the task's own; none once they close."""
    from tqdm import tqdm

    from nbtasks.views.format import info_html
    from nbtasks.views.snapshot import snapshot

    inside = threading.Event()
    go_on = threading.Event()

    @app.task
    def train() -> None:
        for _epoch in tqdm(range(2), desc="epochs", mininterval=0):
            for batch in tqdm(range(10), desc="batch", mininterval=0, leave=False):
                if batch == 4 and not inside.is_set():
                    inside.set()
                    go_on.wait(10)

    r = train.delay()
    assert inside.wait(10)
    try:
        wait_until(lambda: r.refresh().inner_bars == [("batch", 4.0, 10.0)])
        html = info_html(snapshot(r))
        assert html.count('class="nbtasks-subbar"') == 1
        assert "batch 4/10" in html and "width:40.0%" in html  # a bar 4/10 full
    finally:
        go_on.set()
    r.get(10)
    assert r.refresh().inner_bars == []
    assert 'class="nbtasks-subbar"' not in info_html(snapshot(r))
