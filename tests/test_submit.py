"""Submitting (SPEC 3): delay, apply_async and every option, apply, signatures and the canvas,
map/starmap/chunks, Mognet requests, reading results back, purge, and bad arguments.

Every test checks what the store holds afterwards, usually through a second App on the same
store (which sees only what was committed).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import committed, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbtasks
from nbtasks import TaskStatus

AppFactory = Callable[..., nbtasks.App]


def raw_keys(store: Path) -> list[str]:
    """Every key in the store's table (read with plain sqlite: what is really on disk)."""
    con = sqlite3.connect(store / "cache.db")
    try:
        return [k for (k,) in con.execute("SELECT key FROM Cache")]
    finally:
        con.close()


def task_keys(store: Path) -> list[str]:
    return [k for k in raw_keys(store) if k[:2] in ("t:", "g:", "v:", "k:")]


class Tasks:
    """The tasks most tests use, declared on one App."""

    def __init__(self, app: nbtasks.App) -> None:
        self.app = app
        self.gate = threading.Event()
        self.order: list[Any] = []

        @app.task(name="t.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="t.boom")
        def boom(*args: Any) -> None:
            raise ZeroDivisionError("boom")

        @app.task(name="t.block")
        def block() -> str:
            self.gate.wait(10)
            return "unblocked"

        @app.task(name="t.record")
        def record(x: Any) -> Any:
            self.order.append(x)
            return x

        @app.task(name="t.total")
        def total(xs: list[int], extra: int = 0) -> int:
            return sum(xs) + extra

        @app.task(name="t.pair")
        def pair(x: Any, tag: str) -> list[Any]:
            return [x, tag]

        self.add, self.boom, self.block, self.record = add, boom, block, record
        self.total, self.pair = total, pair


@pytest.fixture
def t(app: nbtasks.App) -> Iterator[Tasks]:
    tasks = Tasks(app)
    yield tasks
    tasks.gate.set()


@pytest.fixture
def t1(make_app: AppFactory) -> Iterator[Tasks]:
    """Tasks on an App with one worker thread (for ordering and expiry)."""
    tasks = Tasks(make_app(workers=1))
    yield tasks
    tasks.gate.set()


@pytest.fixture
def reader(make_app: AppFactory) -> nbtasks.App:
    return make_app()


# --------------------------------------------------------------------------- delay


def test_delay_returns_at_once_and_the_result_is_stored(t: Tasks, reader: nbtasks.App) -> None:
    r = t.block.delay()
    assert isinstance(r, nbtasks.TaskResult)
    assert r.status in (TaskStatus.READY, TaskStatus.RUNNING)
    assert reader.result(r.id).task_name == "t.block"
    t.gate.set()
    assert r.get(10) == "unblocked"
    wait_until(lambda: reader.result(r.id).is_finished)
    stored = reader.result(r.id)
    assert stored.status is TaskStatus.SUCCESSFUL
    assert stored.return_value == "unblocked"
    assert stored.enqueued_at is not None and stored.started_at is not None
    assert stored.enqueued_at <= stored.started_at <= stored.finished_at  # type: ignore[operator]


def test_kwargs_and_args_are_stored(t: Tasks, reader: nbtasks.App) -> None:
    r = t.add.delay(1, y=2)
    assert r.get(10) == 3
    stored = reader.result(r.id)
    assert (stored.args, stored.kwargs) == ([1], {"y": 2})


# --------------------------------------------------------------------------- apply_async options


def test_countdown_delays_the_start(t: Tasks, reader: nbtasks.App) -> None:
    r = t.add.apply_async((1, 2), countdown=0.3)
    assert r.status is TaskStatus.READY
    assert reader.result(r.id).status is TaskStatus.READY
    assert r.get(10) == 3
    assert r.started_at is not None and r.enqueued_at is not None
    assert (r.started_at - r.enqueued_at).total_seconds() >= 0.29


def test_eta_aware_datetime_delays_the_start(t: Tasks) -> None:
    plus2 = timezone(timedelta(hours=2))
    eta = datetime.now(plus2) + timedelta(seconds=0.3)
    r = t.add.apply_async((2, 3), eta=eta)
    assert r.status is TaskStatus.READY
    assert r.get(10) == 5
    assert r.started_at is not None and r.started_at >= eta - timedelta(milliseconds=5)


def test_eta_in_the_past_runs_at_once(t: Tasks) -> None:
    r = t.add.apply_async((2, 3), eta=datetime.now(UTC) - timedelta(hours=1))
    assert r.get(10) == 5


@pytest.mark.parametrize(
    "expires",
    [0.1, timedelta(seconds=0.1), "datetime"],
    ids=["seconds", "timedelta", "datetime"],
)
def test_task_not_started_before_expires_is_cancelled_expired(
    t1: Tasks, reader: nbtasks.App, expires: Any
) -> None:
    if expires == "datetime":
        expires = datetime.now(UTC) + timedelta(seconds=0.1)
    blocker = t1.block.delay()  # the only worker is busy
    r = t1.record.apply_async(("never",), expires=expires)
    expiry = t1.app.store.get_record(r.id)["expires"]
    wait_until(lambda: time.time() > expiry)  # the clock has passed it
    t1.gate.set()
    blocker.get(10)
    r.wait(10)
    assert r.status is TaskStatus.CANCELLED
    assert r.reason == "expired"
    assert r.started_at is None and r.attempts == 0
    assert t1.order == []
    with pytest.raises(nbtasks.TaskCancelled, match="expired"):
        r.return_value  # noqa: B018
    wait_until(lambda: reader.result(r.id).is_finished)
    assert reader.result(r.id).status is TaskStatus.CANCELLED
    assert reader.result(r.id).reason == "expired"


def test_expires_in_the_past_never_runs(t: Tasks) -> None:
    r = t.record.apply_async(("x",), expires=datetime.now(UTC) - timedelta(seconds=1))
    r.wait(10)
    assert (r.status, r.reason) == (TaskStatus.CANCELLED, "expired")
    assert t.order == []


def test_expires_before_a_countdown_ends(t: Tasks) -> None:
    r = t.record.apply_async(("x",), countdown=0.2, expires=0.05)
    r.wait(10)
    assert (r.status, r.reason) == (TaskStatus.CANCELLED, "expired")
    assert t.order == []


def test_expires_later_than_the_start_runs(t: Tasks) -> None:
    assert t.add.apply_async((1, 1), expires=60).get(10) == 2


def test_priority_larger_first_then_submit_order(t1: Tasks) -> None:
    blocker = t1.block.delay()
    wait_until(lambda: blocker.refresh().status is TaskStatus.RUNNING)
    prios = [0, 5, 1, 5, -1, 1, 9]
    results = [t1.record.apply_async((f"{i}:p{p}",), priority=p) for i, p in enumerate(prios)]
    t1.gate.set()
    for r in results:
        r.wait(10)
    expected = [f"{i}:p{p}" for i, p in sorted(enumerate(prios), key=lambda ip: (-ip[1], ip[0]))]
    assert t1.order == expected
    # The stored start times agree.
    starts = sorted(results, key=lambda r: r.started_at)  # type: ignore[arg-type, return-value]
    assert [r.args[0] for r in starts] == expected


def test_task_default_priority(t1: Tasks) -> None:
    @t1.app.task(priority=3)
    def urgent(x: str) -> str:
        t1.order.append(x)
        return x

    blocker = t1.block.delay()
    wait_until(lambda: blocker.refresh().status is TaskStatus.RUNNING)
    low = t1.record.delay("low")
    high = urgent.delay("high")
    t1.gate.set()
    low.wait(10)
    high.wait(10)
    assert t1.order == ["high", "low"]


def test_link_is_called_with_the_return_value(t: Tasks, reader: nbtasks.App) -> None:
    r = t.add.apply_async((1, 2), link=[t.record.s(), t.pair.s("tag")])
    assert r.get(10) == 3
    rec = wait_until(lambda: reader.results(task_name="t.record"))
    pair = wait_until(lambda: reader.results(task_name="t.pair"))
    assert rec[0].wait(10).return_value == 3
    assert pair[0].wait(10).return_value == [3, "tag"]
    assert pair[0].args == [3, "tag"]
    assert reader.results(task_name="t.record", status="SUCCESSFUL")[0].id == rec[0].id


def test_link_is_not_called_on_failure_and_link_error_is(t: Tasks, reader: nbtasks.App) -> None:
    r = t.boom.apply_async(link=t.record.s(), link_error=t.record.s())
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    called = wait_until(lambda: reader.results(task_name="t.record"))
    assert len(called) == 1
    assert called[0].wait(10).return_value == r.id  # link_error gets the failed task's id


def test_link_error_single_signature_and_success_does_not_call_it(t: Tasks) -> None:
    r = t.add.apply_async((1, 1), link=t.pair.s("tag"), link_error=t.record.s())
    assert r.get(10) == 2
    # The links are handled together once the task ends: the one for success has run.
    wait_until(lambda: t.app.results(task_name="t.pair"))
    assert t.app.results(task_name="t.record") == []


def test_metadata_at_submit_is_stored_with_the_ready_record(t: Tasks, reader: nbtasks.App) -> None:
    r = t.block.apply_async(metadata={"user_id": "dol", "tags": ("a", "b")})
    assert reader.result(r.id).metadata == {"user_id": "dol", "tags": ["a", "b"]}
    assert reader.result(r.id).get_metadata() == {"user_id": "dol", "tags": ["a", "b"]}
    t.gate.set()
    r.wait(10)
    assert r.metadata["user_id"] == "dol"


def test_metadata_tuple_is_a_list_in_the_submitting_process_too(t: Tasks) -> None:
    r = t.add.apply_async((1, 2), metadata={"tags": ("a", "b")})
    r.wait(10)
    assert r.metadata == {"tags": ["a", "b"]}


def test_task_id(t: Tasks, reader: nbtasks.App) -> None:
    r = t.add.apply_async((1, 2), task_id="my-own-id")
    assert r.id == "my-own-id"
    assert r.get(10) == 3
    assert reader.result("my-own-id").task_name == "t.add"
    with pytest.raises(ValueError, match="task_id"):
        t.add.apply_async((1, 2), task_id="my-own-id")
    assert len(t.app.results()) == 1


def test_per_call_timeout(t: Tasks) -> None:
    @t.app.task
    def spin(ctx: nbtasks.Context) -> None:
        while True:  # busy until the limit, checking
            ctx.check_cancelled()

    r = spin.apply_async(timeout=0.1)
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.errors[-1].exception_class_path == "nbtasks.TaskTimeout"


def test_per_call_retries_override_the_task(t: Tasks) -> None:
    r = t.boom.apply_async(retries=2)
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.attempts == 3
    assert [e.exception_class_path for e in r.errors] == ["builtins.ZeroDivisionError"] * 3
    r0 = t.boom.delay()
    r0.wait(10)
    assert r0.attempts == 1


def test_per_call_executor(t: Tasks) -> None:
    r = t.add.apply_async((1, 2), executor="inline")
    assert r.status is TaskStatus.SUCCESSFUL  # ran before apply_async returned


# --------------------------------------------------------------------------- apply


def test_apply_runs_now_in_the_calling_thread_and_is_persisted(
    app: nbtasks.App, reader: nbtasks.App
) -> None:
    @app.task
    def where(x: int) -> list[Any]:
        return [x, threading.current_thread().name]

    r = app.task(where).apply((3,), task_id="applied", metadata={"k": "v"})
    assert r.id == "applied"
    assert r.status is TaskStatus.SUCCESSFUL
    assert r.return_value == [3, threading.current_thread().name]
    app.store.flush()
    wait_until(lambda: reader.result("applied").is_finished)
    stored = reader.result("applied")
    assert stored.status is TaskStatus.SUCCESSFUL
    assert stored.metadata == {"k": "v"}
    assert stored.return_value == [3, threading.current_thread().name]


def test_apply_of_a_failing_task_returns_it_failed(t: Tasks) -> None:
    r = t.boom.apply()
    assert r.status is TaskStatus.FAILED
    with pytest.raises(nbtasks.TaskFailed, match="ZeroDivisionError"):
        r.return_value  # noqa: B018


def test_apply_throw_re_raises_the_tasks_exception(t: Tasks) -> None:
    with pytest.raises(ZeroDivisionError, match="boom"):
        t.boom.apply(throw=True)
    assert t.app.results(status="FAILED")[0].task_name == "t.boom"


def test_apply_throw_raises_and_the_failure_is_stored(t: Tasks) -> None:
    with pytest.raises(Exception, match="boom") as info:
        t.boom.apply(throw=True)
    assert isinstance(info.value, ZeroDivisionError) or isinstance(
        info.value.__cause__, ZeroDivisionError
    )
    assert t.app.results(status="FAILED")[0].task_name == "t.boom"
    assert t.add.apply((1, 2), throw=True).return_value == 3


# --------------------------------------------------------------------------- signatures


def test_s_si_and_signature(t: Tasks) -> None:
    s = t.add.s(1)
    assert isinstance(s, nbtasks.Signature)
    assert (s.task, s.args, s.kwargs, s.immutable) == (t.add, (1,), {}, False)
    assert s.delay(2).get(10) == 3  # partial: more args are appended
    assert t.add.s(y=5).apply_async((1,)).get(10) == 6
    si = t.add.si(2, 2)
    assert si.immutable
    assert si.apply_async((100,)).get(10) == 4  # immutable: ignores given args
    sig = t.add.signature((1, 2), countdown=0.05, priority=3)
    assert sig.options == {"countdown": 0.05, "priority": 3}
    r = sig.apply_async()
    assert r.get(10) == 3
    assert t.add.signature((1,), {"y": 1}, immutable=True).immutable
    with pytest.raises(TypeError, match="bogus"):
        t.add.signature((1, 2), bogus=1)


def test_chain_passes_each_return_value_on(t: Tasks, reader: nbtasks.App) -> None:
    res = (t.add.s(1, 2) | t.add.s(10) | t.add.s(100)).apply_async()
    assert isinstance(res, nbtasks.TaskResult)
    assert res.get(10) == 113
    parent = res.parent
    assert isinstance(parent, nbtasks.TaskResult)
    assert parent.get(10) == 13
    assert isinstance(parent.parent, nbtasks.TaskResult)
    assert parent.parent.get(10) == 3
    assert parent.parent.parent is None
    # Stored: the last link's arguments include its parent's value, and the parent link.
    wait_until(lambda: reader.result(res.id).is_finished)
    stored = reader.result(res.id)
    assert stored.args == [13, 100]
    assert stored.parent is not None and stored.parent.id == parent.id


def test_chain_function_and_si(t: Tasks) -> None:
    res = nbtasks.chain(t.add.s(1, 1), t.add.si(5, 5), t.add.s(1)).apply_async()
    assert res.get(10) == 11


def test_chain_failure_cancels_the_rest_naming_the_failed_task(
    t: Tasks, reader: nbtasks.App
) -> None:
    res = (t.add.s(1, 2) | t.boom.s() | t.add.s(1) | t.add.s(2)).apply_async()
    with pytest.raises((nbtasks.TaskCancelled, nbtasks.TaskFailed)):
        res.get(10)
    after = res.parent
    failed = after.parent  # type: ignore[union-attr]
    assert isinstance(after, nbtasks.TaskResult) and isinstance(failed, nbtasks.TaskResult)
    failed.wait(10)
    assert failed.status is TaskStatus.FAILED
    for r in (after, res):
        r.wait(10)
        assert r.status is TaskStatus.CANCELLED  # never READY forever
    assert failed.id in (after.reason or "")
    assert "t.boom" in (after.reason or "")
    assert "failed" in (after.reason or "")
    wait_until(lambda: reader.result(res.id).is_finished)
    assert reader.result(res.id).status is TaskStatus.CANCELLED
    assert failed.parent is not None and failed.parent.get(10) == 3


def test_every_later_chain_member_names_the_failed_task(t: Tasks) -> None:
    res = (t.add.s(1, 2) | t.boom.s() | t.add.s(1) | t.add.s(2)).apply_async()
    res.wait(10)
    failed = res.parent.parent  # type: ignore[union-attr]
    assert isinstance(failed, nbtasks.TaskResult)
    assert res.status is TaskStatus.CANCELLED
    assert failed.id in (res.reason or "") and "t.boom" in (res.reason or "")


def test_group(t: Tasks, reader: nbtasks.App) -> None:
    g = nbtasks.group(t.add.s(i, i) for i in range(5)).apply_async()
    assert isinstance(g, nbtasks.GroupResult)
    assert g.get(10) == [0, 2, 4, 6, 8]
    assert len(g.results) == 5 and all(r.status is TaskStatus.SUCCESSFUL for r in g.results)
    again = reader.group_result(g.id)
    assert [r.id for r in again.results] == [r.id for r in g.results]
    assert again.get(10) == [0, 2, 4, 6, 8]


def test_group_of_a_list_and_delay(t: Tasks) -> None:
    g = nbtasks.group([t.add.s(1, 1), t.add.s(2, 2)]).delay()
    assert g.get(10) == [2, 4]


def test_chord_callback_gets_the_list_and_its_parent_is_the_group(
    t: Tasks, reader: nbtasks.App
) -> None:
    res = nbtasks.chord([t.add.s(i, i) for i in range(5)], t.total.s(extra=1)).apply_async()
    assert isinstance(res, nbtasks.TaskResult)
    assert res.get(10) == 21
    header = res.parent
    assert isinstance(header, nbtasks.GroupResult)
    assert header.get(10) == [0, 2, 4, 6, 8]
    wait_until(lambda: reader.result(res.id).is_finished)
    stored = reader.result(res.id)
    assert stored.args == [[0, 2, 4, 6, 8]]
    stored_parent = stored.parent
    assert isinstance(stored_parent, nbtasks.GroupResult)
    assert stored_parent.id == header.id
    assert [r.id for r in stored_parent.results] == [r.id for r in header.results]


def test_chord_call_form(t: Tasks) -> None:
    res = nbtasks.chord(nbtasks.group(t.add.s(1, 1), t.add.s(2, 2)))(t.total.s())
    assert res.get(10) == 6


def test_chord_with_a_failed_member_cancels_the_callback(t: Tasks) -> None:
    res = nbtasks.chord([t.add.s(1, 1), t.boom.s()], t.total.s()).apply_async()
    res.wait(10)
    assert res.status is TaskStatus.CANCELLED
    header = res.parent
    assert isinstance(header, nbtasks.GroupResult)
    failed = header.results[1].wait(10)
    assert failed.status is TaskStatus.FAILED
    assert failed.id in (res.reason or "")
    with pytest.raises(nbtasks.TaskCancelled):
        res.get(10)


def test_canvas_checks_arguments_before_storing_anything(t: Tasks, store_path: Path) -> None:
    with pytest.raises(TypeError, match=r"t\.add"):
        (t.add.s(1, 2) | t.add.s(1, 2)).apply_async()  # the second gets 3 arguments
    with pytest.raises(TypeError):
        nbtasks.group(t.add.s(1), t.add.s(1, 2)).apply_async()
    assert task_keys(store_path) == []


def test_a_chain_takes_a_chord_only_with_its_callback(t: Tasks, store_path: Path) -> None:
    chained = nbtasks.chain(nbtasks.chord([t.add.s(1, 1)], t.total.s()), t.add.s(1))
    kinds = [type(item).__name__ for item in chained.tasks]
    assert kinds == ["group", "Signature", "Signature"]
    with pytest.raises(TypeError, match="chords with a callback"):
        nbtasks.chain(nbtasks.chord([t.add.s(1, 1)]), t.add.s(1))
    assert task_keys(store_path) == []


# --------------------------------------------------------------------------- map & co


def test_map(t: Tasks, reader: nbtasks.App) -> None:
    g = t.record.map(range(4))
    assert isinstance(g, nbtasks.GroupResult)
    assert g.get(10) == [0, 1, 2, 3]
    assert sorted(t.order) == [0, 1, 2, 3]
    stored = reader.group_result(g.id)
    assert [r.args for r in stored.results] == [[0], [1], [2], [3]]
    assert stored.get(10) == [0, 1, 2, 3]


def test_starmap(t: Tasks) -> None:
    g = t.add.starmap([(1, 2), (3, 4)])
    assert g.get(10) == [3, 7]
    with pytest.raises(TypeError, match="starmap"):
        t.add.starmap([1, 2])


def test_chunks_one_task_per_chunk_one_list_per_chunk(t: Tasks, reader: nbtasks.App) -> None:
    g = t.add.chunks([(i, i) for i in range(5)], 2)
    assert isinstance(g, nbtasks.GroupResult)
    assert len(g.results) == 3
    assert g.get(10) == [[0, 2], [4, 6], [8]]
    assert reader.group_result(g.id).get(10) == [[0, 2], [4, 6], [8]]
    with pytest.raises(ValueError, match="n"):
        t.add.chunks([(1, 2)], 0)
    with pytest.raises(TypeError, match=r"t\.add"):
        t.add.chunks([(1, 2, 3)], 2)


def test_map_options_apply_to_every_member(t: Tasks) -> None:
    g = t.add.starmap([(1, 1), (2, 2)], metadata={"batch": 1})
    g.wait(10)
    assert [r.metadata for r in g.results] == [{"batch": 1}, {"batch": 1}]


# --------------------------------------------------------------------------- Mognet


def test_mognet_create_request_submit_and_run(app: nbtasks.App, reader: nbtasks.App) -> None:
    @app.task(name="demo.get_metadata")
    def demo_get_metadata(context: nbtasks.Context, n: int) -> str:
        return f"launched by @{context.request.metadata['user_id']} with {n}"

    req = demo_get_metadata.create_request(3)
    assert isinstance(req, nbtasks.Request)
    req.metadata["user_id"] = "dol"
    value = asyncio.run(app.run(req))
    assert value == "launched by @dol with 3"
    assert req.id is not None
    wait_until(lambda: reader.result(req.id or "").is_finished)
    assert reader.result(req.id).metadata == {"user_id": "dol"}
    req2 = demo_get_metadata.create_request(4)
    req2.metadata["user_id"] = "cau"
    r = app.submit(req2)
    assert r.id == req2.id
    assert r.get(10) == "launched by @cau with 4"
    with pytest.raises(TypeError, match=r"demo\.get_metadata"):
        demo_get_metadata.create_request()
    with pytest.raises(TypeError, match="Request"):
        app.submit("not a request")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- reading back


def test_async_result_from_a_second_app(t: Tasks, reader: nbtasks.App) -> None:
    r = t.add.apply_async((1, 2), metadata={"m": 1})
    r.get(10)
    wait_until(lambda: reader.result(r.id).is_finished)
    other = nbtasks.AsyncResult(r.id, app=reader)
    assert other.id == r.id
    assert other.status is TaskStatus.SUCCESSFUL
    assert other.return_value == 3
    assert other.args == [1, 2] and other.kwargs == {}
    assert other.metadata == {"m": 1}
    assert other.task is None  # no task of that name is registered on the reader
    assert other.backend == "default"
    with pytest.raises(nbtasks.UnknownTaskId) as info:
        nbtasks.AsyncResult("no-such-id", app=reader)
    assert isinstance(info.value, KeyError)
    assert "no-such-id" in str(info.value)


def test_results_filters_newest_first(t: Tasks) -> None:
    a = t.add.delay(1, 1)
    a.wait(10)
    b = t.boom.delay()
    b.wait(10)
    c = t.add.delay(2, 2)
    c.wait(10)
    blocker = t.block.delay()
    try:
        assert [r.id for r in t.app.results()] == [blocker.id, c.id, b.id, a.id]
        assert [r.id for r in t.app.results(status="SUCCESSFUL")] == [c.id, a.id]
        assert [r.id for r in t.app.results(status=TaskStatus.FAILED)] == [b.id]
        assert [r.id for r in t.app.results(task_name="t.add")] == [c.id, a.id]
        assert [r.id for r in t.app.results(task_name="t.add", limit=1)] == [c.id]
        assert [r.id for r in t.app.results(limit=0)] == []
        assert t.app.results(task_name="nope") == []
        running = t.app.results(status="RUNNING") + t.app.results(status="READY")
        assert [r.id for r in running] == [blocker.id]
    finally:
        t.gate.set()
    with pytest.raises(ValueError, match="status"):
        t.app.results(status="DONE")
    with pytest.raises(ValueError, match="limit"):
        t.app.results(limit=-1)
    with pytest.raises(TypeError, match="task_name"):
        t.app.results(task_name=3)  # type: ignore[arg-type]


def test_purge(t: Tasks, store_path: Path) -> None:
    ok = t.add.delay(1, 1)
    bad = t.boom.delay()
    ok.wait(10)
    bad.wait(10)
    blocker = t.block.delay()
    try:
        assert t.app.purge(older_than=timedelta(hours=1)) == 0
        assert t.app.purge(older_than=3600) == 0
        assert t.app.purge(status="FAILED") == 1
        with pytest.raises(nbtasks.UnknownTaskId):
            t.app.result(bad.id)
        assert {r.id for r in t.app.results()} == {ok.id, blocker.id}
        aged = ok.finished_at.timestamp() + 0.01  # type: ignore[union-attr]
        wait_until(lambda: time.time() > aged)  # the clock has passed it
        assert t.app.purge(older_than=0.01) == 1  # the running one is never purged
        assert [r.id for r in t.app.results()] == [blocker.id]
        with pytest.raises(ValueError, match="status"):
            t.app.purge(status="RUNNING")
        with pytest.raises(ValueError, match="older_than"):
            t.app.purge(older_than=-1)
    finally:
        t.gate.set()
    blocker.wait(10)
    assert t.app.purge() == 1
    assert t.app.results() == []
    assert task_keys(store_path) == []


# --------------------------------------------------------------------------- bad arguments


def assert_nothing_stored(app: nbtasks.App, store: Path) -> None:
    assert app.results() == []
    assert app.store.count() == 0
    assert task_keys(store) == []


naive = datetime(2030, 1, 1)
aware = datetime(2030, 1, 1, tzinfo=UTC)
BAD_APPLY_ASYNC: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("negative countdown", {"countdown": -1}, ValueError, "countdown"),
    ("nan countdown", {"countdown": math.nan}, ValueError, "countdown"),
    ("inf countdown", {"countdown": math.inf}, ValueError, "countdown"),
    ("str countdown", {"countdown": "5"}, TypeError, "countdown"),
    ("countdown and eta", {"countdown": 1, "eta": aware}, ValueError, "countdown"),
    ("naive eta", {"eta": naive}, ValueError, "eta"),
    ("number eta", {"eta": 5}, TypeError, "eta"),
    ("negative expires", {"expires": -1}, ValueError, "expires"),
    ("naive expires", {"expires": naive}, ValueError, "expires"),
    ("str expires", {"expires": "tomorrow"}, TypeError, "expires"),
    ("unknown executor", {"executor": "gpu"}, ValueError, "executor"),
    ("priority str", {"priority": "high"}, TypeError, "priority"),
    ("retries negative", {"retries": -1}, ValueError, "retries"),
    ("timeout zero", {"timeout": 0}, ValueError, "timeout"),
    ("link not a signature", {"link": print}, TypeError, "link"),
    ("link_error list of junk", {"link_error": [1]}, TypeError, "link_error"),
    ("metadata not a dict", {"metadata": [1]}, TypeError, "metadata"),
    ("metadata not JSON", {"metadata": {"when": naive}}, TypeError, "when"),
    ("task_id not a str", {"task_id": 5}, TypeError, "task_id"),
    ("task_id empty", {"task_id": " "}, TypeError, "task_id"),
    ("unknown option", {"queue": "fast"}, TypeError, "queue"),
    ("detach on a thread", {"detach": True}, ValueError, "detach"),
]


@pytest.mark.parametrize(
    ("options", "exc", "word"),
    [pytest.param(o, e, w, id=i) for i, o, e, w in BAD_APPLY_ASYNC],
)
def test_bad_apply_async_option_names_it_and_stores_nothing(
    t: Tasks, store_path: Path, options: dict[str, Any], exc: type[Exception], word: str
) -> None:
    with pytest.raises(exc, match=word):
        t.add.apply_async((1, 2), **options)
    assert_nothing_stored(t.app, store_path)


@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        pytest.param(lambda t: t.add.delay(1), TypeError, "y", id="missing arg"),
        pytest.param(lambda t: t.add.delay(1, 2, 3), TypeError, r"t\.add", id="too many"),
        pytest.param(lambda t: t.add.delay(1, 2, z=3), TypeError, "z", id="unknown kwarg"),
        pytest.param(lambda t: t.add.apply_async(5), TypeError, "args", id="args not a list"),
        pytest.param(
            lambda t: t.add.apply_async((1,), kwargs=[("y", 2)]), TypeError, "kwargs", id="kwargs"
        ),
        pytest.param(lambda t: t.add.apply((1,)), TypeError, r"t\.add", id="apply"),
        pytest.param(lambda t: t.add.map([1, 2]), TypeError, r"t\.add", id="map"),
        pytest.param(lambda t: t.add.starmap([(1,)]), TypeError, r"t\.add", id="starmap"),
        pytest.param(
            lambda t: t.add.map([(1, 2)], task_id="g"), ValueError, "task_id", id="map task_id"
        ),
        pytest.param(lambda t: t.add.map([1], countdown=-1), ValueError, "countdown", id="map"),
        pytest.param(
            lambda t: t.add.apply_async((threading.Lock(), 1), executor="process"),
            TypeError,
            "pickle",
            id="unpicklable for a process task",
        ),
        pytest.param(
            lambda t: t.add.s(1, 2).apply_async(countdown=-1), ValueError, "countdown", id="sig"
        ),
        pytest.param(
            lambda t: (t.add.s(1, 2) | t.add.s(1)).apply_async(eta=naive),
            ValueError,
            "eta",
            id="chain",
        ),
    ],
)
def test_bad_call_names_the_argument_and_stores_nothing(
    t: Tasks, store_path: Path, call: Callable[[Tasks], Any], exc: type[Exception], word: str
) -> None:
    with pytest.raises(exc, match=word):
        call(t)
    assert_nothing_stored(t.app, store_path)


def _bad_options() -> st.SearchStrategy[dict[str, Any]]:
    bad_seconds = st.one_of(
        st.floats(max_value=-1e-6, allow_nan=False),
        st.just(math.nan),
        st.just(math.inf),
        st.just(-math.inf),
    )
    not_a_number = st.one_of(st.text(max_size=3), st.lists(st.integers(), max_size=2))
    naive_dt = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))
    aware_dt = st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    )
    unknown_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
        lambda k: (
            k
            not in {
                "countdown",
                "eta",
                "expires",
                "priority",
                "link",
                "link_error",
                "metadata",
                "executor",
                "timeout",
                "retries",
                "task_id",
                "max_retries",
                "retry_backoff",
                "retry_on",
                "soft_timeout",
                "cache",
                "cache_ttl",
                "detach",
                "shadow_name",
            }
        )
    )
    return st.one_of(
        st.fixed_dictionaries({"countdown": st.one_of(bad_seconds, not_a_number)}),
        st.fixed_dictionaries({"countdown": st.floats(0, 10), "eta": aware_dt}),
        st.fixed_dictionaries({"eta": st.one_of(naive_dt, st.integers(), st.text(max_size=3))}),
        st.fixed_dictionaries({"expires": st.one_of(bad_seconds, naive_dt, st.text(max_size=3))}),
        st.fixed_dictionaries({"priority": st.one_of(st.floats(), st.text(max_size=3))}),
        st.fixed_dictionaries({"retries": st.integers(max_value=-1)}),
        st.fixed_dictionaries({"timeout": st.one_of(bad_seconds, st.just(0))}),
        st.fixed_dictionaries(
            {
                "executor": st.text(max_size=8).filter(
                    lambda e: e not in {"thread", "inline", "process", "dask"}
                )
            }
        ),
        st.fixed_dictionaries({"link": st.one_of(st.integers(), st.text(max_size=3))}),
        st.fixed_dictionaries({"link_error": st.lists(st.integers(), min_size=1, max_size=2)}),
        st.fixed_dictionaries(
            {"metadata": st.dictionaries(st.text(max_size=3), st.sets(st.integers()), min_size=1)}
        ),
        st.fixed_dictionaries({"task_id": st.one_of(st.integers(), st.just(""))}),
        st.dictionaries(unknown_key, st.integers(), min_size=1, max_size=2),
    )


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(options=_bad_options())
def test_hypothesis_bad_apply_async_options_are_refused_and_store_nothing(
    t: Tasks, store_path: Path, options: dict[str, Any]
) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        t.add.apply_async((1, 2), **options)
    message = str(info.value)
    assert any(key in message for key in options), (options, message)
    assert t.app.store.count() == 0
    assert task_keys(store_path) == []


# --------------------------------------------------------------------------- shutdown


def test_shutdown_cancel_pending_and_submit_after_shutdown(
    make_app: AppFactory, store_path: Path
) -> None:
    a = make_app(workers=1)
    tasks = Tasks(a)
    blocker = tasks.block.delay()
    wait_until(lambda: blocker.refresh().status is TaskStatus.RUNNING)
    queued = tasks.record.delay("q")
    later = tasks.record.apply_async(("later",), countdown=60)
    tasks.gate.set()
    a.shutdown(wait=True, cancel_pending=True)
    assert blocker.refresh().status is TaskStatus.SUCCESSFUL
    for r in (queued, later):
        stored = committed(make_app(), r.id)
        assert stored["status"] in ("CANCELLED", "SUCCESSFUL")
    assert committed(make_app(), later.id)["status"] == "CANCELLED"
    with pytest.raises(RuntimeError, match="shut down"):
        tasks.add.delay(1, 2)


def test_app_as_a_context_manager_waits_and_flushes(store_path: Path) -> None:
    with nbtasks.App(store=store_path) as a:

        @a.task
        def slow(x: int) -> int:
            time.sleep(0.05)
            return x

        results = [slow.delay(i) for i in range(3)]
    # shutdown(wait=True) on exit: every task ran and is committed.
    reader = nbtasks.App(store=store_path)
    try:
        assert [reader.result(r.id).return_value for r in results] == [0, 1, 2]
    finally:
        reader.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"workers": 0}, ValueError, "workers"),
        ({"workers": "4"}, ValueError, "workers"),
        ({"process_workers": -1}, ValueError, "process_workers"),
        ({"name": ""}, TypeError, "name"),
        ({"trust": "yes"}, TypeError, "trust"),
    ],
)
def test_bad_app_settings_name_the_setting(
    store_path: Path, kwargs: dict[str, Any], exc: type[Exception], word: str
) -> None:
    with pytest.raises(exc, match=word):
        nbtasks.App(store=store_path, **kwargs)


def test_a_failing_link_is_recorded_on_its_task(t: Tasks, reader: nbtasks.App) -> None:
    r = t.add.apply_async((1, 2), link=t.add.s(1, 2))  # add(3, 1, 2): too many arguments
    assert r.get(10) == 3
    wait_until(lambda: r.refresh().hook_errors)
    (err,) = r.hook_errors
    assert err.exception_class_path == "builtins.TypeError"
    assert "t.add" in err.traceback
    assert r.status is TaskStatus.SUCCESSFUL
    wait_until(lambda: reader.result(r.id).hook_errors)
    assert reader.result(r.id).hook_errors[0].exception_class_path == "builtins.TypeError"


def test_cancelling_the_head_of_a_chain_cancels_the_rest(t: Tasks) -> None:
    res = (t.add.s(1, 2).set(countdown=0.3) | t.add.s(1) | t.add.s(2)).apply_async()
    middle = res.parent
    assert isinstance(middle, nbtasks.TaskResult)
    head = middle.parent
    assert isinstance(head, nbtasks.TaskResult)
    assert head.cancel() is True
    for r in (middle, res):
        r.wait(10)
        assert r.status is TaskStatus.CANCELLED
    assert head.id in (middle.reason or "") and "cancelled" in (middle.reason or "")
