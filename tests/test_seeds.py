"""Each seed page in ../shared/reference/ translated to nbtasks: one test per page, named after it.

The examples keep the pages' names and values; what the pages say a store holds is checked by
reading it back through a second App on the same store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import wait_until

import nbtasks
from nbtasks import TaskStatus

AppFactory = Callable[..., nbtasks.App]


def test_celery_results_injecting_metadata(make_app: AppFactory) -> None:
    """celery-results-injecting-metadata.rst: ``request.meta`` is saved on the result's
    metadata; ``update_state(meta=...)`` is the *current result*, overwritten at the end."""
    app = make_app()
    db = make_app()  # "if TaskResult is queried from DB at this moment"
    at_moment, go_on = threading.Event(), threading.Event()

    @app.task(bind=True)
    def hello(task_instance: nbtasks.Task) -> str:
        task_instance.request.meta = {"some_key": "some_value"}
        task_instance.update_state(state="PROGRESS", meta="Task current result")
        at_moment.set()
        go_on.wait(10)
        return "hello world"

    r = hello.delay()
    try:
        assert at_moment.wait(10)
        wait_until(lambda: db.result(r.id).state == "PROGRESS")
        during = db.result(r.id)
        assert during.result == "Task current result"
        assert during.meta == {"some_key": "some_value"}
        assert "Task current result" not in during.meta.values()  # meta arg is not metadata
    finally:
        go_on.set()
    assert r.get(10) == "hello world"
    wait_until(lambda: db.result(r.id).is_finished)
    after = db.result(r.id)
    assert after.result == "hello world"
    assert after.meta == {"some_key": "some_value"}
    assert after.status is TaskStatus.SUCCESSFUL and after.state == "SUCCESSFUL"


def test_celery_task(make_app: AppFactory) -> None:
    """celery-task.txt: the Task base class (run, hooks, request), delay/apply_async and their
    options, retry (the tweet example), apply, AsyncResult, signatures, chunks, update_state."""
    app = make_app()
    db = make_app()
    hooks: list[str] = []

    class FailWhale(Exception):
        pass

    posts: list[str] = []

    class Tweet(nbtasks.Task):
        name = "proj.tweet"
        retries = 3  # Celery's max_retries default; nbtasks' default is 0

        def run(self, auth: str, message: str) -> str:
            try:
                if len(posts) < 1:
                    posts.append("whale")
                    raise FailWhale("over capacity")
                posts.append(message)
                return f"{auth}: {message}"
            except FailWhale as exc:
                raise self.retry(countdown=0.01, exc=exc)

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            hooks.append(f"success {retval}")

        def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            hooks.append(f"retry {type(exc).__name__}")

        def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            hooks.append("failure")

        def after_return(self, status: str, *rest: Any) -> None:
            hooks.append(f"after {status}")

    tweet = app.register(Tweet)
    r = tweet.delay("oauth", "hello")  # "Star argument version of apply_async()"
    assert r.get(10) == "oauth: hello"
    wait_until(lambda: len(hooks) == 3)
    assert hooks == ["retry FailWhale", "success oauth: hello", "after SUCCESSFUL"]
    assert r.attempts == 2 and r.errors[0].exception_class_path.endswith("FailWhale")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def on_error(task_id: str) -> str:
        return task_id

    @app.task(bind=True)
    def progress(self: nbtasks.Task) -> None:
        self.update_state(state="PROGRESS", meta={"done": 1})

    # apply_async(args, kwargs, task_id, link, link_error, countdown / eta, expires, priority)
    a = add.apply_async((2, 2), task_id="celery-id", countdown=0.01, priority=5, link=add.s(10))
    assert (a.id, a.get(10)) == ("celery-id", 4)
    linked = wait_until(lambda: [x for x in db.results(task_name=add.name) if x.id != a.id])
    assert linked[0].wait(10).return_value == 14
    eta = add.apply_async((1, 1), eta=datetime.now(UTC) + timedelta(seconds=0.01))
    assert eta.get(10) == 2
    expired = add.apply_async((1, 1), expires=datetime.now(UTC) - timedelta(seconds=1))
    assert expired.wait(10).status is TaskStatus.CANCELLED and expired.reason == "expired"
    with pytest.raises(ValueError, match="countdown"):
        add.apply_async((1, 1), countdown=1, eta=datetime.now(UTC))
    with pytest.raises(TypeError):  # "If not enough arguments are passed"
        add.apply_async((1,))
    failing = add.apply_async(("a", 1), link_error=on_error.s())
    failing.wait(10)
    errs = wait_until(lambda: db.results(task_name=on_error.name))
    assert errs[0].wait(10).return_value == failing.id
    # apply(): "Execute this task locally, by blocking until the task returns."
    assert add.apply((3, 4)).return_value == 7
    # AsyncResult(task_id): "Get AsyncResult instance for this kind of task."
    assert nbtasks.AsyncResult("celery-id", app=db).return_value == 4
    # s() / si() / signature()
    assert add.s(1).delay(2).get(10) == 3
    assert add.si(1, 1).apply_async((100,)).get(10) == 2
    assert add.signature((5, 5)).delay().get(10) == 10
    # chunks(it, n)
    assert add.chunks(zip(range(5), range(5), strict=True), 2).get(10) == [[0, 2], [4, 6], [8]]
    # update_state(state, meta)
    p = progress.delay()
    p.wait(10)
    assert p.status is TaskStatus.SUCCESSFUL


def test_django_tasks_taskresult(make_app: AppFactory) -> None:
    """django-tasks-taskresult.md: the TaskResult attributes and methods."""
    app = make_app(name="django-backend")
    store = make_app()

    @app.task(retries=1)
    def calculate(n: int, *, scale: int = 1) -> int:
        ctx = nbtasks.current()
        assert ctx is not None
        if ctx.request.retries == 0:
            raise RuntimeError("first attempt fails")
        return n * scale

    result = calculate.apply_async((21,), {"scale": 2})
    result.wait(10)
    wait_until(lambda: store.result(result.id).is_finished)
    for r in (result, store.result(result.id)):
        assert isinstance(r.id, str)
        assert r.status is TaskStatus.SUCCESSFUL
        for when in (r.enqueued_at, r.started_at, r.finished_at, r.last_attempted_at):
            assert isinstance(when, datetime) and when.tzinfo is not None
        assert r.args == [21] and r.kwargs == {"scale": 2}
        assert r.backend == "django-backend"
        assert len(r.errors) == 1
        assert r.errors[0].exception_class_path == "builtins.RuntimeError"
        assert r.errors[0].exception_class is RuntimeError
        assert "first attempt fails" in r.errors[0].traceback
        assert len(r.worker_ids) == 2 and r.attempts == 2  # "based on the number of worker IDs"
        assert r.return_value == 42
        assert r.is_finished
    assert result.task is calculate
    # "If the task didn't succeed, an exception is raised ... to distinguish against None"
    pending = calculate.apply_async((1,), countdown=60)
    with pytest.raises(nbtasks.ResultNotReady):
        pending.return_value  # noqa: B018
    assert not pending.is_finished
    pending.cancel()
    # refresh() / arefresh(): "Reload the cached task data from the task store"
    other = store.result(pending.id)
    assert other.refresh() is other
    wait_until(lambda: other.refresh().status is TaskStatus.CANCELLED)  # group-committed
    assert asyncio.run(other.arefresh()).status is TaskStatus.CANCELLED


def test_mognet_metadata(make_app: AppFactory) -> None:
    """mognet-metadata.md: metadata on a Request (two approaches), read in a running task,
    set in a running task (async), and read outside the task from its Result."""
    app = make_app()
    backend = make_app()  # "app.result_backend": another view of the same store

    @app.task(name="demo.get_metadata")
    def demo_get_metadata(context: nbtasks.Context) -> None:
        user_id = context.request.metadata["user_id"]
        print(f"This task was launched by @{user_id}")

    @app.task(name="demo.set_metadata")
    async def demo_set_metadata(context: nbtasks.Context) -> None:
        await context.aset_metadata(user_id="dkl")

    # Approach 1: a Request made by hand, metadata in the constructor.
    req1 = nbtasks.Request(
        task_name="demo.get_metadata", args=[], kwargs={}, metadata={"user_id": "val"}
    )
    # Approach 2: create_request(), then set the metadata field.
    req2 = demo_get_metadata.create_request()
    req2.metadata["user_id"] = "cau"

    async def main() -> None:
        req = demo_get_metadata.create_request()
        req.metadata["user_id"] = "dol"
        await app.run(req)
        r = backend.result(req.id or "")
        await asyncio.to_thread(r.wait, 10)
        assert r.output == "This task was launched by @dol\n"

    asyncio.run(main())
    for req, who in ((req1, "val"), (req2, "cau")):
        r = app.submit(req)
        assert r.get(10) is None
        assert r.output == f"This task was launched by @{who}\n"
        assert r.metadata == {"user_id": who}
    # "The values are serialized to JSON, so any specific type information is lost"
    typed = demo_get_metadata.create_request()
    typed.metadata.update(user_id="x", when=(2024, 1, 1))
    with pytest.raises(TypeError, match="stamp"):
        typed.metadata["stamp"] = datetime.now(UTC)
    t = app.submit(typed)
    t.wait(10)
    wait_until(lambda: backend.result(t.id).is_finished)
    assert backend.result(t.id).get_metadata()["when"] == [2024, 1, 1]
    # Setting metadata in a running task, then "Getting Metadata Outside of a Task".
    s = demo_set_metadata.delay()
    assert s.wait(10).status is TaskStatus.SUCCESSFUL

    async def outside() -> dict[str, Any]:
        res = backend.result(s.id)
        assert res is not None
        return await res.aget_metadata()

    assert asyncio.run(outside()) == {"user_id": "dkl"}
    assert backend.result(s.id).get_metadata() == {"user_id": "dkl"}
