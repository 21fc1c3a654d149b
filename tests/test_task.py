"""nbtasks._task: declaring tasks (decorator, classes, base=, bind, Context), options, calls."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python, stored_count, wait_until

import nbtasks
from nbtasks import TaskStatus


def double(x: int) -> int:
    return 2 * x


# --------------------------------------------------------------------------- the decorator


def test_bare_decorator_on_an_app(app: nbtasks.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        """Adds."""
        return x + y

    assert isinstance(add, nbtasks.Task)
    assert add.app is app
    assert add.name == f"{__name__}.test_bare_decorator_on_an_app.<locals>.add"
    assert add.__doc__ == "Adds."
    assert add.__name__ == "add"
    r = add.delay(1, 2)
    assert r.get(10) == 3
    stored = app.result(r.id).refresh()
    assert stored.task_name == add.name
    assert stored.task is add
    assert stored.backend == "default"


def test_decorator_with_options_on_an_app(app: nbtasks.App) -> None:
    @app.task(name="demo.train", retries=3, retry_backoff=0.0, timeout=60, priority=5)
    def train(epochs: int) -> int:
        return epochs

    assert train.name == "demo.train"
    assert (train.retries, train.timeout, train.priority) == (3, 60.0, 5)
    r = train.delay(2)
    assert r.get(10) == 2
    assert app.results(task_name="demo.train")[0].id == r.id


def test_module_level_function_name_has_its_module(app: nbtasks.App) -> None:
    t = app.task(double)
    assert t.name == f"{__name__}.double"
    assert t.delay(4).get(10) == 8


def test_main_module_functions_have_no_prefix(app: nbtasks.App) -> None:
    def cell_fn() -> int:
        return 1

    cell_fn.__module__ = "__main__"
    cell_fn.__qualname__ = "cell_fn"
    assert app.task(cell_fn).name == "cell_fn"


def test_max_retries_is_an_alias_of_retries(app: nbtasks.App) -> None:
    @app.task(max_retries=2)
    def t() -> None: ...

    assert t.retries == 2


def test_default_app_decorator_both_forms(default_store: Path) -> None:
    @nbtasks.task
    def plain(x: int) -> int:
        return x + 1

    @nbtasks.task(name="demo.named")
    def named(x: int) -> int:
        return x * 10

    assert plain.app is nbtasks.default_app() is named.app
    a, b = plain.delay(1), named.delay(2)
    assert (a.get(10), b.get(10)) == (2, 20)
    assert nbtasks.AsyncResult(b.id).task_name == "demo.named"
    nbtasks.default_app().shutdown()
    assert stored_count(default_store) == 2  # in the configured store, not ./.nbtasks


def test_configure_moves_tasks_to_the_new_default_app(default_store: Path, tmp_path: Path) -> None:
    @nbtasks.task
    def t() -> str:
        return "ok"

    new = nbtasks.configure(store=tmp_path / "second")
    assert nbtasks.default_app() is new
    assert t.app is new
    r = t.delay()
    assert r.get(10) == "ok"
    assert new.result(r.id).task is t
    assert stored_count(tmp_path / "second") == 1


@pytest.mark.parametrize(
    ("options", "exc", "word"),
    [
        ({"nope": 1}, TypeError, "nope"),
        ({"executor": "gpu"}, ValueError, "executor"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"retry_backoff": -1}, ValueError, "retry_backoff"),
        ({"retry_on": ValueError("x")}, TypeError, "retry_on"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"soft_timeout": float("nan")}, ValueError, "soft_timeout"),
        ({"priority": "high"}, TypeError, "priority"),
        ({"bind": "yes"}, TypeError, "bind"),
        ({"cache": 1}, TypeError, "cache"),
        ({"cache_ttl": -5}, ValueError, "cache_ttl"),
        ({"name": ""}, TypeError, "name"),
        ({"detach": True}, ValueError, "detach"),
        ({"shadow_name": 3}, TypeError, "shadow_name"),
        ({"expires": "soon"}, TypeError, "expires"),
    ],
)
def test_bad_declaration_options_name_the_option(
    app: nbtasks.App, options: dict[str, Any], exc: type[Exception], word: str
) -> None:
    with pytest.raises(exc, match=word):

        @app.task(**options)
        def t() -> None: ...


def test_unknown_executor_lists_the_valid_ones(app: nbtasks.App) -> None:
    with pytest.raises(ValueError, match=r"'thread'.*'inline'") as info:
        app.task(double, executor="gpu")
    assert "gpu" in str(info.value)


def test_bad_base_is_refused(app: nbtasks.App) -> None:
    with pytest.raises(TypeError, match="base"):
        app.task(base=dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="register"):
        app.register(dict)  # type: ignore[arg-type]


def test_bind_needs_a_parameter(app: nbtasks.App) -> None:
    with pytest.raises(TypeError, match="bind=True"):

        @app.task(bind=True)
        def nothing() -> None: ...


# --------------------------------------------------------------------------- class-based


class Recorder(nbtasks.Task):
    """Records every hook call, with the status the store shows at that moment."""

    calls: list[tuple[Any, ...]]

    def _status(self, task_id: str) -> str:
        return self.app.result(task_id).status.value

    def on_success(
        self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        self.calls.append(("on_success", retval, task_id, args, kwargs, self._status(task_id)))

    def on_failure(
        self, exc: BaseException, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        self.calls.append(("on_failure", exc, task_id, args, kwargs, einfo, self._status(task_id)))

    def on_retry(
        self, exc: BaseException, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        self.calls.append(("on_retry", exc, task_id, args, kwargs, einfo))

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        self.calls.append(("after_return", status, retval, task_id, self._status(task_id)))


class Train(Recorder):
    name = "demo.Train"
    retries = 1

    def run(self, epochs: int, fail: str = "") -> int:
        if fail == "always" or (fail == "once" and self.request.retries == 0):
            raise ValueError(f"bad epochs {epochs}")
        return epochs * 10


def _wait_calls(task: Recorder, n: int) -> list[tuple[Any, ...]]:
    wait_until(lambda: len(task.calls) >= n)  # hooks run after the final status is recorded
    return task.calls


def test_class_based_task_run_and_success_hooks(app: nbtasks.App) -> None:
    t = app.register(Train)
    t.calls = []
    assert isinstance(t, Train) and t.name == "demo.Train"
    r = t.delay(3)
    assert r.get(10) == 30
    calls = _wait_calls(t, 2)
    assert calls[0] == ("on_success", 30, r.id, [3], {}, "SUCCESSFUL")
    assert calls[1] == ("after_return", "SUCCESSFUL", 30, r.id, "SUCCESSFUL")
    assert app.result(r.id).task is t


def test_class_based_task_failure_and_retry_hooks(app: nbtasks.App) -> None:
    t = app.register(Train)
    t.calls = []
    r = t.apply_async((2,), {"fail": "always"})
    with pytest.raises(ValueError, match="bad epochs"):  # get(): what the task raised
        r.get(10)
    calls = _wait_calls(t, 3)
    names = [c[0] for c in calls]
    assert names == ["on_retry", "on_failure", "after_return"]
    retry = calls[0]
    assert isinstance(retry[1], ValueError) and retry[2:5] == (r.id, [2], {"fail": "always"})
    assert isinstance(retry[5], nbtasks.TaskError)
    failure = calls[1]
    assert isinstance(failure[1], ValueError) and str(failure[1]) == "bad epochs 2"
    einfo = failure[5]
    assert einfo.exception_class_path == "builtins.ValueError"
    assert "bad epochs 2" in einfo.traceback
    assert failure[6] == "FAILED"
    assert calls[2][1] == "FAILED" and isinstance(calls[2][2], ValueError)
    assert r.refresh().attempts == 2
    assert len(r.errors) == 2


def test_class_based_retry_then_success(app: nbtasks.App) -> None:
    t = app.register(Train)
    t.calls = []
    r = t.delay(4, fail="once")
    assert r.get(10) == 40
    assert [c[0] for c in _wait_calls(t, 3)] == ["on_retry", "on_success", "after_return"]
    assert r.refresh().attempts == 2
    assert [e.exception_class_path for e in r.errors] == ["builtins.ValueError"]


def test_class_without_run_fails_clearly(app: nbtasks.App) -> None:
    class NoRun(nbtasks.Task):
        name = "demo.NoRun"

    r = app.register(NoRun).delay()
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.errors[-1].exception_class_path == "builtins.NotImplementedError"


class Boom(nbtasks.Task):
    def on_success(
        self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        raise RuntimeError("hook exploded")


class Noisy(nbtasks.Task):
    name = "demo.Noisy"
    retries = 1

    def run(self, fail: bool) -> str:
        print("in run")
        if fail and self.request.retries == 0:
            raise ValueError("first attempt")
        if fail:
            raise KeyError("second attempt")
        return "ok"

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        print(f"on_success {retval}")

    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        print(f"on_failure {exc!r}", file=sys.stderr)

    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        print("on_retry")

    def after_return(self, *args: Any) -> None:
        print("after_return", file=sys.stderr)


def test_what_hooks_print_is_kept_in_the_output(app: nbtasks.App, make_app: Any) -> None:
    """Hooks run after the outcome is recorded, with the task's context current: what they
    print joins the task's output (as in a process worker), and reaches the store."""
    t = app.register(Noisy)
    ok = t.delay(False)
    assert ok.get(timeout=10) == "ok"
    wait_until(lambda: "after_return" in (ok.refresh().output or ""))
    assert ok.output.index("in run") < ok.output.index("on_success ok")
    bad = t.delay(True)
    with pytest.raises(KeyError, match="second attempt"):
        bad.get(timeout=10)
    wait_until(lambda: "after_return" in (bad.refresh().output or ""))
    assert "on_failure KeyError('second attempt')" in bad.output
    reader = make_app()  # another App reads the committed record
    wait_until(lambda: "on_success ok" in (reader.result(ok.id).output or ""))


def test_hook_that_raises_is_recorded_on_its_task(app: nbtasks.App, make_app: Any) -> None:
    @app.task(base=Boom)
    def fine() -> int:
        return 1

    r = fine.delay()
    assert r.get(10) == 1  # the task itself succeeded
    wait_until(lambda: r.refresh().hook_errors)
    (err,) = r.hook_errors
    assert err.exception_class_path == "builtins.RuntimeError"
    assert "hook exploded" in err.traceback
    assert r.status is TaskStatus.SUCCESSFUL
    # Stored, not only in memory: another App reads it from the store.
    reader = make_app()
    wait_until(lambda: reader.result(r.id).hook_errors)
    assert reader.result(r.id).hook_errors[0].exception_class_path == "builtins.RuntimeError"


def test_base_class_hooks_apply_to_a_decorated_function(app: nbtasks.App) -> None:
    class Base(Recorder):
        calls: list[tuple[Any, ...]] = []

    @app.task(base=Base)
    def fails(x: int) -> None:
        raise KeyError(x)

    assert isinstance(fails, Base)
    r = fails.delay(5)
    r.wait(10)
    calls = _wait_calls(fails, 2)  # type: ignore[arg-type]
    assert calls[0][0] == "on_failure" and isinstance(calls[0][1], KeyError)
    assert calls[0][2:5] == (r.id, [5], {})
    assert calls[1][:2] == ("after_return", "FAILED")


# --------------------------------------------------------------------------- the context


def test_bind_true_gives_the_task_and_its_request(app: nbtasks.App) -> None:
    @app.task(bind=True, name="demo.bound")
    def bound(self: nbtasks.Task, x: int) -> dict[str, Any]:
        assert isinstance(self, nbtasks.Task) and self.name == "demo.bound"
        req = self.request
        assert isinstance(req, nbtasks.Context)
        self.set_metadata(seen=x)
        self.progress(1, 2)
        self.update_state(state="HALF", meta={"x": x})
        return {
            "id": req.id,
            "task_name": req.task_name,
            "args": list(req.args),
            "retries": req.retries,
            "meta": dict(req.meta),
            "worker_id": req.worker_id,
        }

    r = bound.apply_async((7,), metadata={"user": "dkl"})
    out = r.get(10)
    assert out["id"] == r.id
    assert out["task_name"] == "demo.bound"
    assert out["args"] == [7]
    assert out["retries"] == 0
    assert out["meta"]["user"] == "dkl"  # (whether it also shows "seen" is unspecified)
    assert out["worker_id"] == r.worker_ids[0]
    assert r.metadata == {"user": "dkl", "seen": 7}
    assert r.progress is not None and (r.progress.current, r.progress.total) == (1, 2)
    assert r.state == "SUCCESSFUL"  # update_state is overwritten at the end


def test_context_annotated_first_parameter(app: nbtasks.App) -> None:
    @app.task
    def annotated(ctx: nbtasks.Context, x: int) -> str:
        assert isinstance(ctx, nbtasks.Context)
        ctx.set_metadata(x=x)
        return ctx.request.id or ""

    r = annotated.delay(3)
    assert r.get(10) == r.id
    assert r.metadata == {"x": 3}
    with pytest.raises(TypeError, match="annotated"):
        annotated.delay()  # ctx is not part of the signature the caller sees


def test_context_annotation_evaluated_or_as_text(app: nbtasks.App) -> None:
    """This module has ``from __future__ import annotations`` (the annotation is the text
    'nbtasks.Context'); a cell without it gives the class itself."""
    ns: dict[str, Any] = {"nbtasks": nbtasks}
    code = "def f(ctx: nbtasks.Context, y):\n    return (type(ctx).__name__, y)\n"
    exec(compile(code, "<cell>", "exec", dont_inherit=True), ns)
    t = app.task(ns["f"])
    assert t.delay(1).get(10) == ("Context", 1)


def test_current_anywhere_below_the_task(app: nbtasks.App) -> None:
    def helper() -> str | None:
        ctx = nbtasks.current()
        return None if ctx is None else ctx.id

    @app.task
    def uses_current() -> str | None:
        return helper()

    assert nbtasks.current() is None
    r = uses_current.delay()
    assert r.get(10) == r.id
    assert nbtasks.current() is None


def test_current_in_an_async_task(app: nbtasks.App) -> None:
    @app.task
    async def coro(x: int) -> list[Any]:
        await asyncio.sleep(0)
        ctx = nbtasks.current()
        assert ctx is not None
        await ctx.aset_metadata(step="async")
        return [ctx.id, x, threading.current_thread().name]

    r = coro.delay(5)
    tid, x, thread = r.get(10)
    assert (tid, x) == (r.id, 5)
    assert thread == "nbtasks-asyncio"
    assert r.metadata == {"step": "async"}


def test_request_outside_a_running_task_is_an_error(app: nbtasks.App) -> None:
    t = app.task(double)
    with pytest.raises(nbtasks.NbtasksError, match="not running"):
        t.request  # noqa: B018


# --------------------------------------------------------------------------- registry


def test_re_decorating_a_name_replaces_it(app: nbtasks.App) -> None:
    @app.task(name="demo.cell")
    def first() -> str:
        return "first"

    @app.task(name="demo.cell")
    def second() -> str:
        return "second"

    r = second.delay()
    assert r.get(10) == "second"
    assert app.result(r.id).task is second
    old = first.delay()  # the old object still works, its results belong to the name
    assert old.get(10) == "first"
    assert app.result(old.id).task is second


def test_submit_of_a_mognet_request_uses_the_registry(app: nbtasks.App) -> None:
    @app.task(name="demo.v")
    def v1() -> int:
        return 1

    req = v1.create_request()

    @app.task(name="demo.v")
    def v2() -> int:
        return 2

    assert app.submit(req).get(10) == 2  # re-running the cell replaced it


# --------------------------------------------------------------------------- direct call


def test_direct_call_runs_the_plain_function_and_stores_nothing(
    app: nbtasks.App, store_path: Path
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        assert nbtasks.current() is None
        return x + y

    @app.task(bind=True)
    def bound(self: nbtasks.Task, x: int) -> tuple[Any, int]:
        return (self, x)

    @app.task
    def with_ctx(ctx: nbtasks.Context, x: int) -> tuple[Any, int]:
        return (ctx, x)

    class Cls(nbtasks.Task):
        name = "demo.Cls"

        def run(self, x: int) -> int:
            return x - 1

    cls_task = app.register(Cls)
    assert add(1, 2) == 3
    assert bound(5) == (bound, 5)
    assert with_ctx(6) == (None, 6)
    assert cls_task(3) == 2
    assert app.results() == []
    assert stored_count(store_path) == 0


def test_inline_executor_runs_in_the_calling_thread(app: nbtasks.App) -> None:
    @app.task(executor="inline")
    def where() -> str:
        return threading.current_thread().name

    r = where.delay()
    assert r.status is TaskStatus.SUCCESSFUL  # finished before delay() returned
    assert r.return_value == threading.current_thread().name


def test_thread_executor_runs_in_a_worker_thread(app: nbtasks.App) -> None:
    @app.task
    def where() -> str:
        return threading.current_thread().name

    assert where.delay().get(10).startswith("nbtasks-worker")


def test_repr(app: nbtasks.App) -> None:
    t = app.task(double, name="demo.double")
    assert repr(t) == "<@task demo.double of default>"
    assert "demo.double" in repr(t.s(1))


def test_shutdown_closes_the_async_event_loop(store_path: Path) -> None:
    proc = run_python(
        f"""
        import gc, warnings, nbtasks

        def run():
            app = nbtasks.App(store={str(store_path)!r})

            @app.task
            async def f():
                return 1

            assert f.delay().get(10) == 1
            app.shutdown()

        run()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        print([str(w.message)[:40] for w in caught if "unclosed" in str(w.message)])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_class_attribute_max_retries_is_the_retries_alias(app: nbtasks.App) -> None:
    class Flaky(nbtasks.Task):
        name = "demo.Flaky"
        max_retries = 2

        def run(self) -> None:
            raise ValueError("again")

    r = app.register(Flaky).delay()
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.attempts == 3
