"""nbtasks._result: TaskResult and GroupResult (SPEC 5), read from memory and from the store."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

import nbtasks
from nbtasks import TaskStatus
from nbtasks import store as _store

AppFactory = Callable[..., nbtasks.App]


class Custom(Exception):
    pass


class NoRoundTrip(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


@pytest.fixture
def lab(make_app: AppFactory) -> nbtasks.App:
    return make_app(name="lab", workers=2)


@pytest.fixture
def reader(make_app: AppFactory) -> nbtasks.App:
    return make_app()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


def _short_id_in(task_id: str, text: str) -> bool:
    """A repr shows a short form of the id (its start or its random end)."""
    return task_id[:8] in text or task_id.replace("-", "")[-8:] in text


def _aware_utc(d: datetime | None) -> datetime:
    assert d is not None
    assert d.tzinfo is not None and d.utcoffset() == timedelta(0)
    return d


# --------------------------------------------------------------------------- fields


def test_every_field_of_a_successful_result(lab: nbtasks.App, reader: nbtasks.App) -> None:
    @lab.task(name="demo.fields")
    def fields(ctx: nbtasks.Context, x: int, *, y: int) -> dict[str, int]:
        ctx.set_metadata(k="v")
        ctx.progress(3, 4, "nearly")
        print("out")
        return {"sum": x + y}

    before = datetime.now(UTC)
    r = fields.delay(1, y=2)
    r.wait(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    # A listing's handles hold only what it shows; every other field loads on first read.
    listed = (reader.results(task_name="demo.fields")[0], lab.results(status="SUCCESSFUL")[0])
    for res in (r, reader.result(r.id), *listed):
        assert isinstance(res.id, str) and res.id == r.id
        assert res.task_name == "demo.fields"
        assert res.status is TaskStatus.SUCCESSFUL
        enq, start = _aware_utc(res.enqueued_at), _aware_utc(res.started_at)
        fin, last = _aware_utc(res.finished_at), _aware_utc(res.last_attempted_at)
        assert before - timedelta(seconds=1) <= enq <= start <= fin
        assert last == start
        assert res.args == [1] and isinstance(res.args, list)
        assert res.kwargs == {"y": 2} and isinstance(res.kwargs, dict)
        assert res.backend == "lab"
        assert res.errors == []
        assert isinstance(res.worker_ids, list) and len(res.worker_ids) == 1
        assert res.attempts == 1
        assert res.metadata == res.meta == {"k": "v"}
        assert res.state == "SUCCESSFUL"
        assert res.result == {"sum": 3}
        assert res.return_value == {"sum": 3}
        p = res.progress
        assert p is not None
        assert (p.current, p.total, p.fraction, p.message) == (3, 4, 0.75, "nearly")
        assert hasattr(p, "rate") and hasattr(p, "eta")
        assert res.output == "out\n"
        assert res.cached is False
        assert res.is_finished is True
    assert r.task is fields
    assert reader.result(r.id).task is None  # nothing registered under that name there
    assert reader.result(r.id).backend == "lab"  # the App that ran it


def test_a_finished_result_from_the_store_parses_its_record_when_first_needed(
    lab: nbtasks.App, reader: nbtasks.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``app.result(id)`` of a finished task from the store reads the listing's fields and the
    record's text in one query: the status, name, times and progress need no parse; the first
    other field parses that same text once (no second read), and every field is as stored."""

    @lab.task(name="demo.lazy", bind=True)
    def lazy(ctx: nbtasks.Context, x: int) -> int:
        ctx.set_metadata(seen=x)
        ctx.progress(1, 2)
        return x + 1

    r = lazy.delay(41)
    assert r.get(10) == 42
    wait_until(lambda: reader.store.read_record(r.id)["status"] == "SUCCESSFUL")
    stored = reader.store.read_record(r.id)
    parses: list[str] = []
    parse = nbtasks._app.parse_task_record  # the App parses the records its handles read
    monkeypatch.setattr(
        nbtasks._app, "parse_task_record", lambda t, *a: parses.append(t) or parse(t, *a)
    )
    reads: list[str] = []
    read = reader.store.read_record
    monkeypatch.setattr(reader.store, "read_record", lambda i: reads.append(i) or read(i))

    res = reader.result(r.id)
    assert res.status is TaskStatus.SUCCESSFUL and res.task_name == "demo.lazy"
    assert res.finished_at is not None and res.started_at is not None
    assert res.progress is not None and res.progress.fraction == 0.5
    assert parses == [] and reads == []
    assert res.metadata == {"seen": 41} and res.return_value == 42
    assert len(parses) == 1 and reads == []
    assert res.attempts == 1 and res.worker_ids == stored["worker_ids"]
    assert len(parses) == 1
    assert res.refresh()._full == stored and len(parses) == 2


def test_fields_of_a_failed_result(app: nbtasks.App) -> None:
    @app.task(retries=1)
    def fails() -> None:
        raise Custom("custom message")

    submitted = fails.delay()
    submitted.wait(10)
    (listed,) = app.results(status="FAILED")
    for r in (submitted, listed):
        assert r.status is TaskStatus.FAILED
        assert r.state == "FAILED"
        assert len(r.errors) == 2 == r.attempts == len(r.worker_ids)
        for err in r.errors:
            assert isinstance(err, nbtasks.TaskError)
            assert err.exception_class_path == f"{__name__}.Custom"
            assert err.exception_class is Custom
            assert "custom message" in err.traceback and "Traceback" in err.traceback
        assert r.finished_at is not None
        with pytest.raises(nbtasks.TaskFailed, match="custom message") as info:
            r.return_value  # noqa: B018 - django-tasks: TaskFailed from the original
        assert isinstance(info.value.__cause__, Custom)
        assert isinstance(info.value, nbtasks.TaskError)  # with the last attempt's fields
        assert info.value.exception_class is Custom and info.value.traceback == err.traceback
        with pytest.raises(Custom, match="custom message") as raised:
            r.get()  # Celery, concurrent.futures: what the task raised
        remote = raised.value.__cause__
        assert isinstance(remote, nbtasks.RemoteTraceback)
        assert "custom message" in str(remote) and 'raise Custom("custom message")' in str(remote)
        returned = r.get(propagate=False)
        assert type(returned) is Custom and returned is not raised.value  # restored afresh


def test_fields_before_it_runs(app: nbtasks.App) -> None:
    @app.task
    def later() -> None: ...

    r = later.apply_async(countdown=60)
    assert r.status is TaskStatus.READY and r.state == "READY"
    assert r.enqueued_at is not None
    assert r.started_at is r.finished_at is r.last_attempted_at is None
    assert r.worker_ids == [] and r.attempts == 0 and r.errors == []
    assert r.progress is None and r.output == "" and r.result is None
    assert r.is_finished is False
    r.cancel()


def test_status_is_current_and_other_fields_a_snapshot_until_refresh(
    app: nbtasks.App, gate: threading.Event
) -> None:
    """SPEC 5: status, state, result, progress, metadata and output are current on every read;
    the other fields (the times, attempts, ...) are the snapshot that refresh() reloads."""

    @app.task
    def blocked(ctx: nbtasks.Context) -> int:
        ctx.set_metadata(started=True)
        gate.wait(10)
        print("done")
        return 5

    r = blocked.apply_async(countdown=0)
    assert r.finished_at is None
    gate.set()
    wait_until(lambda: app.result(r.id).is_finished)
    assert r.status is TaskStatus.SUCCESSFUL and r.state == "SUCCESSFUL"  # no refresh
    assert r.result == 5 and r.metadata == {"started": True} and "done" in r.output
    assert r.finished_at is None  # the snapshot, until reloaded
    assert r.refresh() is r
    assert r.finished_at is not None
    assert asyncio.run(r.arefresh()) is r


# --------------------------------------------------------------------------- return_value


def test_return_value_raises_result_not_ready(app: nbtasks.App) -> None:
    @app.task
    def later() -> None: ...

    r = later.apply_async(countdown=60)
    with pytest.raises(nbtasks.ResultNotReady, match="READY"):
        r.return_value  # noqa: B018
    r.cancel()


def test_return_value_raises_task_failed_with_the_original_as_cause(app: nbtasks.App) -> None:
    @app.task
    def boom() -> None:
        raise Custom("with details")

    r = boom.delay()
    r.wait(10)
    with pytest.raises(nbtasks.TaskFailed) as info:
        r.return_value  # noqa: B018
    assert f"{__name__}.Custom" in str(info.value) and "with details" in str(info.value)
    assert isinstance(info.value.__cause__, Custom)
    assert str(info.value.__cause__) == "with details"


def test_task_failed_from_another_app_restores_the_cause(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    @app.task
    def boom() -> None:
        raise KeyError("k")

    r = boom.delay()
    r.wait(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    with pytest.raises(nbtasks.TaskFailed, match=r"builtins\.KeyError") as info:
        reader.result(r.id).return_value  # noqa: B018
    assert isinstance(info.value.__cause__, KeyError)


def test_task_failed_when_the_exception_cannot_be_restored(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    """Read from the store (another App on it): the process that ran the task may still hold
    the exception itself in memory until its record is committed, and raises that."""

    @app.task
    def odd() -> None:
        raise NoRoundTrip(1, 2)

    r = odd.delay()
    r.wait(10)
    app.store.flush()
    stored = reader.result(r.id)
    with pytest.raises(nbtasks.TaskFailed, match=r"NoRoundTrip: 1/2") as info:
        stored.get(10)
    assert info.value.__cause__ is None
    assert stored.errors[-1].exception_class is NoRoundTrip


def test_return_value_raises_task_cancelled(app: nbtasks.App) -> None:
    @app.task
    def later() -> None: ...

    r = later.apply_async(countdown=60)
    assert r.cancel() is True
    with pytest.raises(nbtasks.TaskCancelled, match="cancelled"):
        r.return_value  # noqa: B018


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_return_value_raises_task_interrupted(store_path: Path, make_app: AppFactory) -> None:
    a = make_app()
    pid = _dead_pid()
    rec = {
        "id": "orphan",
        "task_name": "demo.orphan",
        "status": "RUNNING",
        "enqueued_at": time.time(),
        "started_at": time.time(),
        "owner": f"{_store.HOST}:{pid}:12345",
        "worker_ids": ["w"],
    }
    a.store.create([_store.Live(rec)])
    a.shutdown()
    r = make_app().result("orphan")
    assert r.status is TaskStatus.INTERRUPTED
    assert f"pid {pid}" in (r.reason or "")
    with pytest.raises(nbtasks.TaskInterrupted, match="interrupted"):
        r.return_value  # noqa: B018
    with pytest.raises(nbtasks.TaskInterrupted):
        r.get(1)


def test_a_task_may_return_none(app: nbtasks.App, reader: nbtasks.App) -> None:
    @app.task
    def nothing() -> None:
        return None

    r = nothing.delay()
    assert r.get(10) is None
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).return_value is None


def test_unpicklable_return_value_of_a_thread_task(app: nbtasks.App, reader: nbtasks.App) -> None:
    lock = threading.Lock()

    @app.task
    def gives_lock() -> Any:
        return lock

    r = gives_lock.delay()
    assert r.get(10) is lock  # this process keeps it in memory
    wait_until(lambda: reader.result(r.id).is_finished)
    with pytest.raises(nbtasks.StoreError, match="pickle"):
        reader.result(r.id).return_value  # noqa: B018


# --------------------------------------------------------------------------- waiting


def test_wait_and_get_time_out(
    app: nbtasks.App, reader: nbtasks.App, gate: threading.Event
) -> None:
    @app.task
    def blocked() -> str:
        gate.wait(10)
        return "late"

    r = blocked.delay()
    with pytest.raises(TimeoutError):
        r.wait(timeout=0.05)
    with pytest.raises(TimeoutError):
        r.get(timeout=0.05)
    other = reader.result(r.id)  # polls the store
    with pytest.raises(TimeoutError):
        other.wait(timeout=0.05)
    gate.set()
    assert r.wait(10) is r
    assert r.status is TaskStatus.SUCCESSFUL  # wait reloads the fields
    assert other.get(10) == "late"


def test_await_a_result(app: nbtasks.App, reader: nbtasks.App) -> None:
    go = threading.Event()

    @app.task
    def add(x: int, y: int) -> int:
        assert go.wait(10)  # set once the first await below waits for it
        return x + y

    @app.task
    def boom() -> None:
        raise ValueError("x")

    async def main() -> tuple[int, int, BaseException]:
        asyncio.get_running_loop().call_soon(go.set)
        a = await add.delay(1, 2)
        r = add.delay(3, 4)
        r.wait(10)
        wait_until(lambda: reader.result(r.id).is_finished)
        b = await reader.result(r.id)  # another App: waits without blocking the loop
        try:
            await boom.delay()
        except ValueError as exc:  # as get(): what the task raised
            return a, b, exc
        raise AssertionError("no ValueError")

    a, b, exc = asyncio.run(main())
    assert (a, b) == (3, 7)
    assert str(exc) == "x" and isinstance(exc.__cause__, nbtasks.RemoteTraceback)


def test_await_does_not_block_the_event_loop(app: nbtasks.App, gate: threading.Event) -> None:
    @app.task
    def blocked() -> str:
        gate.wait(10)
        return "done"

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.1, gate.set)
        value = await blocked.delay()
        t.cancel()
        return value, ticks

    value, ticks = asyncio.run(main())
    assert value == "done"
    assert ticks >= 5


# --------------------------------------------------------------------------- cancel


def test_cancel_running_from_another_app(app: nbtasks.App, reader: nbtasks.App) -> None:
    running = threading.Event()

    @app.task
    def spin(ctx: nbtasks.Context) -> None:
        running.set()
        while True:  # busy until cancelled, reporting
            ctx.progress(1)

    r = spin.delay()
    assert running.wait(10)
    wait_until(lambda: reader.result(r.id).status is TaskStatus.RUNNING)
    other = reader.result(r.id)
    assert other.cancel() is True  # a request: the owner acts on it
    assert r.wait(10).status is TaskStatus.CANCELLED
    assert other.wait(10).status is TaskStatus.CANCELLED
    assert other.cancel() is False


def test_cancel_of_a_finished_task_is_false(app: nbtasks.App) -> None:
    @app.task
    def quick() -> int:
        return 1

    r = quick.delay()
    r.wait(10)
    assert r.cancel() is False
    assert r.status is TaskStatus.SUCCESSFUL


# --------------------------------------------------------------------------- repr and pickling


def test_repr_is_one_line(app: nbtasks.App) -> None:
    @app.task(name="demo.repr")
    def fails() -> None:
        raise ValueError("bad value")

    @app.task(name="demo.ok")
    def ok() -> int:
        return 1

    a, b = fails.delay(), ok.delay()
    a.wait(10)
    b.wait(10)
    for r in (a, b):
        text = repr(r)
        assert "\n" not in text
        assert text.startswith("<TaskResult ") and text.endswith(">")
        assert r.task_name in text and r.status.value in text
        assert _short_id_in(r.id, text)
    assert "ValueError" in repr(a)


def test_repr_is_one_line_with_a_multi_line_error(app: nbtasks.App) -> None:
    @app.task
    def fails() -> None:
        raise ValueError("bad\nvalue on two lines")

    r = fails.delay()
    r.wait(10)
    assert "\n" not in repr(r)


def test_pickling_a_task_result(store_path: Path, default_store: Path, app: nbtasks.App) -> None:
    @app.task
    def value() -> list[int]:
        return [1, 2]

    r = value.delay()
    r.wait(10)
    app.store.flush()
    data = pickle.dumps(r)
    assert len(data) < 1000  # (store path, id): no threads, locks or widgets
    back = pickle.loads(data)
    assert isinstance(back, nbtasks.TaskResult)
    assert back.id == r.id
    wait_until(lambda: back.refresh().is_finished)
    assert back.status is TaskStatus.SUCCESSFUL
    assert back.return_value == [1, 2]


# --------------------------------------------------------------------------- GroupResult


def test_group_result_members(app: nbtasks.App, reader: nbtasks.App, gate: threading.Event) -> None:
    @app.task
    def step(ctx: nbtasks.Context, x: int) -> int:
        ctx.progress(1, 2)
        if x == 0:
            gate.wait(10)
        return x * 10

    g = step.map(range(4))
    assert isinstance(g.id, str)
    assert len(g) == 4 and [r.id for r in g] == [r.id for r in g.results]
    assert g[1] is g.results[1]
    wait_until(lambda: g.completed_count() == 3)
    p = g.progress
    assert p.total == 4 and 3 <= p.current <= 3.5
    assert g.is_finished is False
    line = repr(g)
    assert "\n" not in line and _short_id_in(g.id, line) and "4 tasks" in line
    with pytest.raises(TimeoutError):
        g.wait(0.05)
    gate.set()
    assert g.wait(10) is g
    assert g.get(10) == [0, 10, 20, 30]
    assert g.completed_count() == 4
    assert g.progress.fraction == 1.0
    assert g.is_finished
    assert asyncio.run(_await(g)) == [0, 10, 20, 30]
    # Stored: another App finds it, members in order.
    stored = reader.group_result(g.id)
    assert [r.id for r in stored.results] == [r.id for r in g.results]
    assert stored.get(10) == [0, 10, 20, 30]
    with pytest.raises(nbtasks.UnknownTaskId):
        reader.group_result("no-such-group")


async def _await(g: nbtasks.GroupResult) -> list[Any]:
    return await g


def test_group_result_after_a_restart(store_path: Path, make_app: AppFactory) -> None:
    a = make_app()

    @a.task
    def sq(x: int) -> int:
        return x * x

    g = sq.map([1, 2, 3])
    assert g.get(10) == [1, 4, 9]
    a.shutdown()
    b = make_app()
    again = b.group_result(g.id)
    assert again.get(10) == [1, 4, 9]
    assert again.completed_count() == 3


def test_group_get_raises_for_a_failed_member(app: nbtasks.App) -> None:
    @app.task
    def maybe(x: int) -> int:
        if x == 1:
            raise ValueError("one")
        return x

    g = maybe.map(range(3))
    with pytest.raises(ValueError, match="one"):  # what the failed member raised
        g.get(10)
    values = g.get(10, propagate=False)
    assert values[0] == 0 and values[2] == 2 and isinstance(values[1], ValueError)
    assert g.completed_count() == 2
    assert g.counts() == {"SUCCESSFUL": 2, "FAILED": 1}


def test_group_cancel(app: nbtasks.App) -> None:
    @app.task
    def later(x: int) -> int:
        return x

    g = later.map(range(3), countdown=60)
    assert g.cancel() is True
    assert [r.refresh().status for r in g.results] == [TaskStatus.CANCELLED] * 3
    assert g.cancel() is False


def test_listing_reads_json_only(app: nbtasks.App, store_path: Path) -> None:
    """SPEC 10: listings never unpickle; the record is JSON text with a short args repr."""

    @app.task
    def t(x: Any) -> Any:
        return x

    r = t.delay((1, "two"))
    r.wait(10)
    app.store.flush()
    wait_until(lambda: app.store.read_record(r.id)["status"] == "SUCCESSFUL")
    rec = json.loads(json.dumps(app.store.read_record(r.id)))
    assert rec["args_repr"] == "(1, 'two')"
    listed = app.results()[0]
    assert listed.id == r.id and listed.status is TaskStatus.SUCCESSFUL


def test_a_short_id_or_the_start_of_one_names_the_task(
    make_app: AppFactory, default_store: Path
) -> None:
    """Issue 17: ``%tasks cancel 98f23400`` took the short id the dashboard shows, and
    ``nbtasks.AsyncResult("98f23400")`` did not. Both forms (its end, as views show it, and
    its start) work, in this kernel and in a new one; a full id is looked up as is."""
    from nbtasks._text import short_id
    from nbtasks.views import Snapshot

    app = nbtasks.default_app()

    @app.task(name="short.ids")
    def ident(x: int) -> int:
        return x

    done = ident.delay(1)
    assert done.get(timeout=10) == 1
    pending = ident.apply_async((2,), countdown=3600)
    shown = Snapshot(id=done.id, name="short.ids", status="SUCCESSFUL").short_id
    assert shown == short_id(done.id)
    for text in (shown, shown.upper(), done.id[:13], done.id.replace("-", "")[:20]):
        assert nbtasks.AsyncResult(text).id == done.id, text
        assert app.result(text).get(timeout=1) == 1
    live = app.result(short_id(pending.id))  # a task this process runs: its live state
    assert live.id == pending.id and live.status is TaskStatus.READY
    other = make_app(store=default_store)  # a second process's view: the store only
    assert other.result(short_id(done.id)).get(timeout=1) == 1
    with pytest.raises(nbtasks.UnknownTaskId, match="nor one whose id starts or ends with it"):
        other.result("ffffffff")
    common = done.id[:8]  # the millisecond timestamp both ids start with
    assert pending.id.startswith(common)
    with pytest.raises(ValueError, match="names more than one task"):
        other.result(common)
    with pytest.raises(nbtasks.UnknownTaskId):  # full length: a key lookup, no search
        other.result(done.id[:-1] + ("0" if done.id[-1] != "0" else "1"))
    pending.cancel()
