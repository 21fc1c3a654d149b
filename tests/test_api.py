"""The API traps a Celery or django-tasks user falls into (SPEC 2-5), one test each, and the
seams (``_ports``) that Task, the canvas and the handles go through."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until

import nbtasks
from nbtasks import TaskStatus, _ports

AppFactory = Callable[..., nbtasks.App]


# --------------------------------------------------------------------------- AsyncResult


def test_async_result_is_the_handle_class(app: nbtasks.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(1, 2)
    assert nbtasks.AsyncResult is nbtasks.TaskResult  # one class, two names (Celery, django)
    assert isinstance(r, nbtasks.AsyncResult)
    assert r.get(10) == 3
    again = nbtasks.AsyncResult(r.id, app=app)
    assert isinstance(again, nbtasks.TaskResult) and again.app is app
    assert again.status is TaskStatus.SUCCESSFUL and again.get(10) == 3
    with pytest.raises(nbtasks.UnknownTaskId, match="no task with id"):
        nbtasks.AsyncResult("no-such-id", app=app)
    with pytest.raises(TypeError, match="task_id must be a str"):
        nbtasks.AsyncResult(42, app=app)  # type: ignore[arg-type]


def test_async_result_without_an_app_reads_the_default_app(store_path: Any) -> None:
    app = nbtasks.configure(store=store_path)

    @nbtasks.task
    def one() -> int:
        return 1

    r = one.delay()
    assert nbtasks.AsyncResult(r.id).get(10) == 1
    assert nbtasks.AsyncResult(r.id).app is app
    app.shutdown()


# --------------------------------------------------------------------------- get()


class Boom(Exception):
    pass


def test_get_raises_what_the_task_raised_and_return_value_task_failed(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    @app.task
    def boom() -> None:
        raise Boom("it broke")

    r = boom.delay()
    with pytest.raises(Boom, match="it broke") as info:
        r.get(10)
    cause = info.value.__cause__
    assert isinstance(cause, nbtasks.RemoteTraceback)
    assert 'raise Boom("it broke")' in str(cause)  # the task's own traceback, chained
    returned = r.get(propagate=False)
    assert isinstance(returned, Boom) and str(returned) == "it broke"
    with pytest.raises(nbtasks.TaskFailed, match="it broke") as failed:
        r.return_value  # noqa: B018 - django-tasks: TaskFailed, the original as its cause
    assert isinstance(failed.value.__cause__, Boom)
    reader = make_app()  # another App, reading the store: the same rule
    wait_until(lambda: reader.result(r.id).is_finished)
    with pytest.raises(Boom, match="it broke"):
        reader.result(r.id).get(10)


def test_get_of_a_cancelled_task_raises_or_returns_task_cancelled(app: nbtasks.App) -> None:
    @app.task
    def later() -> None: ...

    r = later.apply_async(countdown=60)
    assert r.cancel()
    with pytest.raises(nbtasks.TaskCancelled):
        r.get(10)
    assert isinstance(r.get(10, propagate=False), nbtasks.TaskCancelled)


def test_a_chain_raises_what_its_failed_link_raised(app: nbtasks.App) -> None:
    @app.task
    def first() -> int:
        return 1

    @app.task
    def fails(x: int) -> int:
        raise Boom(f"link got {x}")

    res = (first.s() | fails.s()).apply_async()
    with pytest.raises(Boom, match="link got 1"):
        res.get(10)


# --------------------------------------------------------------------------- TaskError


def test_except_task_error_catches_a_failed_task(app: nbtasks.App) -> None:
    """``TaskError`` is the record of a failed attempt and the base of ``TaskFailed``: a
    django-tasks user's ``except nbtasks.TaskError`` is valid and catches ``return_value``'s
    error (docs/mapping.md)."""

    @app.task
    def divide() -> float:
        return 1 / 0

    r = divide.delay()
    r.wait(10)
    caught: nbtasks.TaskError | None = None
    try:
        r.return_value  # noqa: B018
    except nbtasks.TaskError as err:
        caught = err
        assert isinstance(err, nbtasks.TaskFailed)
        assert err.exception_class_path == "builtins.ZeroDivisionError"
        assert err.exception_class is ZeroDivisionError
        assert "1 / 0" in err.traceback and err.message == "division by zero"
        assert err == nbtasks.TaskFailed(str(err), *_fields(r.errors[-1]))
    assert caught is not None, "return_value did not raise"
    (record,) = r.errors
    assert isinstance(record, nbtasks.TaskError) and _fields(record) == _fields(caught)


def _fields(err: nbtasks.TaskError) -> tuple[str, str, str]:
    return (err.exception_class_path, err.traceback, err.message)


# --------------------------------------------------------------------------- max_retries


def test_max_retries_reads_the_option(app: nbtasks.App) -> None:
    seen: list[tuple[int, int]] = []

    @app.task(bind=True, max_retries=3)
    def bound(self: nbtasks.Task) -> None:
        seen.append((self.max_retries, self.retries))

    bound.delay().get(10)
    assert seen == [(3, 3)] and bound.max_retries == 3

    class Declared(nbtasks.Task):
        name = "test_api.Declared"
        max_retries = 2

        def run(self) -> int:
            return self.max_retries

    declared = app.register(Declared)
    assert declared.retries == 2 and declared.delay().get(10) == 2
    assert app.task(lambda: None, name="plain").max_retries == 0


# --------------------------------------------------------------------------- parent and root


def test_a_task_submitted_from_a_task_gets_its_parent_and_root(app: nbtasks.App) -> None:
    @app.task
    def leaf(ctx: nbtasks.Context, _: Any = None) -> tuple[str | None, str | None]:
        return ctx.request.parent_id, ctx.request.root_id

    @app.task
    def middle(ctx: nbtasks.Context) -> dict[str, Any]:
        child = leaf.delay()
        chained = (leaf.si() | leaf.si()).apply_async()
        mapped = leaf.map([None])
        return {
            "me": (ctx.request.id, ctx.request.parent_id, ctx.request.root_id),
            "child": (child.id, child.parent_id, child.root_id, child.get(10)),
            "chain": [(r.id, r.parent_id, r.root_id) for r in (chained.parent, chained)],
            "map": [(r.parent_id, r.root_id) for r in mapped],
        }

    @app.task
    def top(ctx: nbtasks.Context) -> tuple[str, str]:
        return ctx.request.root_id, middle.delay().id  # not waited for: 2 worker threads

    r = top.delay()
    top_root, middle_id = r.get(10)
    seen = app.result(middle_id).get(10)
    assert top_root == r.id and r.parent_id is None and r.root_id == r.id
    mid_id, mid_parent, mid_root = seen["me"]
    assert (mid_parent, mid_root) == (r.id, r.id)
    child_id, child_parent, child_root, child_request = seen["child"]
    assert (child_parent, child_root) == (mid_id, r.id)
    assert tuple(child_request) == (mid_id, r.id)  # ctx.request inside the child
    (first_id, first_parent, first_root), (_, second_parent, second_root) = seen["chain"]
    assert (first_parent, first_root) == (mid_id, r.id)
    assert (second_parent, second_root) == (first_id, r.id)
    assert seen["map"] == [(mid_id, r.id)]
    stored = app.result(child_id)  # stored in the record
    assert (stored.parent_id, stored.root_id) == (mid_id, r.id)


def test_chain_links_have_the_previous_link_as_parent_and_the_first_as_root(
    app: nbtasks.App,
) -> None:
    @app.task
    def step(ctx: nbtasks.Context, x: int = 0) -> int:
        return x + 1

    res = (step.s() | step.s() | step.s()).apply_async()
    assert res.get(10) == 3
    second = res.parent
    first = second.parent  # type: ignore[union-attr]
    assert isinstance(first, nbtasks.TaskResult) and isinstance(second, nbtasks.TaskResult)
    assert first.parent_id is None and first.root_id == first.id
    assert (second.parent_id, second.root_id) == (first.id, first.id)
    assert (res.parent_id, res.root_id) == (second.id, first.id)


@pytest.mark.timeout(60)
def test_a_process_task_sends_itself_as_the_parent_of_what_it_submits(
    store_path: Any,
) -> None:
    with nbtasks.App(store=store_path, process_workers=1) as app:

        @app.task
        def leaf(ctx: nbtasks.Context) -> tuple[str | None, str | None]:
            return ctx.request.parent_id, ctx.request.root_id

        @app.task(executor="process")
        def spawner(ctx: nbtasks.Context) -> tuple[str | None, list[Any]]:
            child = leaf.delay()
            again = nbtasks.AsyncResult(child.id)  # the worker's app: no App made there
            assert "seen from worker process" in repr(again.app), again.app
            return ctx.request.id, [child.id, child.get(20)]

        @app.task
        def top() -> Any:
            return spawner.delay().get(30)

        r = top.delay()
        spawner_id, (child_id, child_saw) = r.get(40)
        child = app.result(child_id)
        assert (child.parent_id, child.root_id) == (spawner_id, r.id)
        assert tuple(child_saw) == (spawner_id, r.id)
        assert app.result(spawner_id).root_id == r.id


# --------------------------------------------------------------------------- metadata


def test_metadata_is_json_at_once_in_the_submitting_process(app: nbtasks.App) -> None:
    gate = threading.Event()

    @app.task
    def wait_gate(ctx: nbtasks.Context) -> None:
        ctx.set_metadata(later=(3, 4))
        gate.wait(10)

    r = wait_gate.apply_async(metadata={"pair": (1, 2)})
    assert r.metadata["pair"] == [1, 2]  # not a tuple, before any restart
    wait_until(lambda: "later" in r.metadata)
    assert r.metadata == {"pair": [1, 2], "later": [3, 4]}
    gate.set()
    r.wait(10)
    req = wait_gate.create_request()
    req.metadata["pair"] = (5, 6)
    assert req.metadata["pair"] == [5, 6]
    submitted = app.submit(req)
    assert submitted.metadata["pair"] == [5, 6]
    gate.set()
    submitted.wait(10)


# --------------------------------------------------------------------------- current fields


def test_status_is_current_after_a_cancel_through_another_handle(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    @app.task
    def later() -> None: ...

    first = later.apply_async(countdown=60)
    assert first.status is TaskStatus.READY
    assert app.result(first.id).cancel()
    assert first.status is TaskStatus.CANCELLED and first.state == "CANCELLED"  # no refresh
    assert first.is_finished

    # Through the store, as another process would: a cancel request the owner acts on.
    second = later.apply_async(countdown=60)
    reader = make_app()
    watching = reader.result(second.id)  # reads the store: not the owner
    assert watching.status is TaskStatus.READY
    assert reader.result(second.id).cancel()
    wait_until(lambda: second.status is TaskStatus.CANCELLED)  # the owner's handle, as is
    wait_until(lambda: watching.status is TaskStatus.CANCELLED)  # one row read per read
    assert watching.finished_at is None  # the other fields: the snapshot until refresh()
    assert watching.refresh().finished_at is not None


def test_progress_metadata_and_output_are_current_from_another_app(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    gate = threading.Event()

    @app.task
    def talk(ctx: nbtasks.Context) -> str:
        ctx.set_metadata(step=1)
        ctx.update_state(state="PROGRESS", meta={"at": 1})
        print("hello")
        ctx.progress(1, 2)
        gate.wait(10)
        return "bye"

    r = talk.delay()
    reader = make_app()
    wait_until(lambda: reader.store.read_record(r.id).get("state") == "PROGRESS")
    other = reader.result(r.id)
    app.store.flush()
    wait_until(lambda: other.progress is not None and "hello" in other.output)
    assert other.metadata == {"step": 1} and other.state == "PROGRESS"
    assert other.result == {"at": 1}
    gate.set()
    wait_until(lambda: other.status is TaskStatus.SUCCESSFUL)
    assert other.result == "bye" and other.state == "SUCCESSFUL"


# --------------------------------------------------------------------------- the seams


def test_handles_pickle_through_the_app_of_the_unpickling_process(app: nbtasks.App) -> None:
    @app.task
    def value(x: int) -> int:
        return x

    r = value.delay(1)
    g = value.map([2, 3])
    assert r.get(10) == 1 and g.get(10) == [2, 3]
    back = pickle.loads(pickle.dumps(r))
    assert back.app is app and back.get(10) == 1
    group_back = pickle.loads(pickle.dumps(g))
    assert group_back.id == g.id and group_back.get(10) == [2, 3]
    assert _ports.app_for_store(app.store_path) is app
    assert pickle.loads(pickle.dumps(app)) is app


def test_a_handle_unpickled_after_its_app_shut_down_reads_through_another(
    store_path: Any,
) -> None:
    first = nbtasks.App(store=store_path)
    r = first.task(lambda: 7, name="seven").delay()
    assert r.get(10) == 7
    data = pickle.dumps(r)
    first.shutdown()
    with nbtasks.App(store=store_path) as second:
        back = pickle.loads(data)
        assert back.app is second and back.get(10) == 7


def test_the_app_and_the_worker_side_app_implement_both_seams() -> None:
    """Both are ``task.app`` somewhere; the process RPC carries exactly the submit methods."""
    from nbtasks.executors.process.calls import CALLS
    from nbtasks.executors.process.child_app import _ChildApp

    names = {
        n
        for n in dir(_ports.Submitter)
        if not n.startswith("_") and callable(getattr(_ports.Submitter, n))
    }
    assert names == _ports.SUBMIT_METHODS == CALLS
    for cls in (nbtasks.App, _ChildApp):
        for seam in (_ports.Submitter, _ports.Results):
            for name in dir(seam):
                if not name.startswith("_") and name != "name":  # set on the instance
                    # Defined for real: by the class or a base of its own (StoreReader), never
                    # only by the protocol's stub.
                    owner = next(k for k in cls.__mro__ if name in vars(k))
                    assert owner not in (_ports.Submitter, _ports.Results), (
                        f"{cls.__name__} lacks {name}"
                    )
                    assert not getattr(owner, "_is_protocol", False), (cls, name, owner)
