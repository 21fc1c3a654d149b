"""Bad input gets a clear error and leaves no trace (issue 13, finding 8).

Metadata that contains itself or nests past ``MAX_DEPTH`` levels, ids and names that UTF-8
cannot hold (a lone surrogate such as ``"\\ud800"``), and refused calls of ``progress()``,
``set_metadata()``, ``update_state()``, ``request.meta`` and ``track()``: each is refused with a
TypeError or ValueError that names the argument and says what is wrong, before anything is
stored or changed. Every case runs a real task on a real store and checks what the store holds
afterwards, read back through a second App on the same store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import Gate

import nbtasks
from nbtasks import Context, TaskStatus
from nbtasks._model import MAX_DEPTH

AppFactory = Callable[..., nbtasks.App]

SURROGATE = "\ud800"  # a lone surrogate: a Python str that has no UTF-8 form
UTF8 = "cannot be encoded as UTF-8"


def cycle_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"x": 1}
    d["d"] = d
    return d


def cycle_list() -> list[Any]:
    inner: list[Any] = [1]
    outer = [{"a": inner}]
    inner.append(outer)  # outer[0]["a"][1] is outer
    return outer


def nested(levels: int) -> list[Any]:
    """Lists inside lists, ``levels`` deep: ``nested(2) == [[]]``."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


#: (value, what the TypeError says): metadata that JSON cannot hold, found by fuzzing.
BAD_METADATA = {
    "cycle-dict": (cycle_dict, "contains itself"),
    "cycle-list": (cycle_list, "contains itself"),
    "deep": (lambda: nested(10_000), f"nested deeper than {MAX_DEPTH} levels"),
    "one-too-deep": (lambda: nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
    "surrogate-value": (lambda: {"text": "ok" + SURROGATE}, UTF8),
    "surrogate-in-list": (lambda: ["fine", SURROGATE], UTF8),
    "surrogate-inner-key": (lambda: {SURROGATE: 1}, UTF8),
}


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.go.set()


def stored(app: nbtasks.App, make_app: AppFactory, task_id: str) -> nbtasks.TaskResult:
    """The task as committed to the store, read by a fresh App (not this process's memory)."""
    app.store.flush()
    return make_app().result(task_id).refresh()


def ids(app: nbtasks.App) -> list[str]:
    return [r.id for r in app.results()]


def assert_nothing_stored(app: nbtasks.App, make_app: AppFactory, before: list[str]) -> None:
    assert ids(app) == before
    app.store.flush()
    assert ids(make_app()) == before


# --------------------------------------------------------------------------- submit


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_submit_with_bad_metadata_is_a_type_error_and_stores_nothing(
    app: nbtasks.App, make_app: AppFactory, case: str
) -> None:
    make, says = BAD_METADATA[case]

    @app.task
    def echo(x: int) -> int:
        return x

    before = ids(app)
    with pytest.raises(TypeError, match=r"metadata\['k'\]") as info:
        echo.apply_async((1,), metadata={"k": make()})
    assert says in str(info.value)
    with pytest.raises(TypeError, match=r"metadata\['k'\]"):
        echo.apply((1,), metadata={"k": make()})
    with pytest.raises(TypeError, match=r"metadata\['k'\]"):
        echo.s(1).set(metadata={"k": make()}).apply_async()
    with pytest.raises(TypeError, match=r"metadata\['k'\]"):
        (echo.s(1) | echo.s()).apply_async(metadata={"k": make()})  # no link of it stored
    req = echo.create_request(1)
    with pytest.raises(TypeError, match=r"metadata\['k'\]"):
        req.metadata["k"] = make()
    with pytest.raises(TypeError, match=r"metadata\['k'\]"):
        req.meta = {"ok": 1, "k": make()}
    assert req.metadata == {}  # all or nothing: "ok" was not added either
    assert_nothing_stored(app, make_app, before)
    assert app.submit(req).get(10) == 1  # the request is still good


def test_the_error_names_the_path_of_a_cycle_and_of_a_deep_value(app: nbtasks.App) -> None:
    @app.task
    def echo(x: int) -> int:
        return x

    with pytest.raises(TypeError) as info:
        echo.apply_async((1,), metadata={"k": cycle_list()})
    assert "metadata['k'][0]['a'][1] is metadata['k'] itself" in str(info.value)
    assert "(a cycle)" in str(info.value)
    with pytest.raises(TypeError) as info:
        echo.apply_async((1,), metadata={"k": nested(10_000)})
    message = str(info.value)
    assert f"metadata['k'] is nested deeper than {MAX_DEPTH} levels" in message
    assert "json.dumps" in message  # how to fix it
    assert len(message) < 500  # the path of a deep value is cut short, not 10,000 "[0]"s


def test_metadata_nested_up_to_the_limit_and_shared_values_are_stored(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    @app.task
    def echo(x: int) -> int:
        return x

    shared = {"same": [1, 2]}  # twice in the value, no cycle: JSON holds two copies
    meta = {"deepest": nested(MAX_DEPTH), "a": shared, "b": [shared, shared], "t": "é ✓ 😀"}
    r = echo.apply_async((1,), metadata=meta)
    assert r.get(10) == 1
    assert stored(app, make_app, r.id).metadata == meta


@pytest.mark.parametrize("task_id", [SURROGATE, "abc" + SURROGATE, "\udcff-from-bytes"])
def test_a_task_id_utf8_cannot_hold_is_a_value_error_at_submit(
    app: nbtasks.App, make_app: AppFactory, task_id: str
) -> None:
    @app.task
    def echo(x: int) -> int:
        return x

    before = ids(app)
    calls: dict[str, Callable[[], Any]] = {
        "apply_async": lambda: echo.apply_async((1,), task_id=task_id),
        "apply": lambda: echo.apply((1,), task_id=task_id),
        "signature": lambda: echo.s(1).set(task_id=task_id).apply_async(),
        "chain": lambda: (echo.s(1) | echo.s().set(task_id=task_id)).apply_async(),
        "group": lambda: nbtasks.group(echo.s(1), echo.s(2).set(task_id=task_id)).apply_async(),
        "submit": lambda: app.submit(nbtasks.Request(echo.name or "", [1], {}, id=task_id)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"task_id={task_id!r} {UTF8}"), (name, message)
        assert "lone surrogate" in message and "replace it" in message, name
    assert_nothing_stored(app, make_app, before)


@pytest.mark.parametrize("task_id", [SURROGATE, "x\udcff"])
def test_reading_an_id_utf8_cannot_hold_is_a_value_error(app: nbtasks.App, task_id: str) -> None:
    with pytest.raises(ValueError, match=f"^task_id=.* {UTF8}"):
        app.result(task_id)
    with pytest.raises(ValueError, match=f"^task_id=.* {UTF8}"):
        nbtasks.AsyncResult(task_id, app=app)
    with pytest.raises(ValueError, match=f"^group_id=.* {UTF8}"):
        app.group_result(task_id)
    with pytest.raises(ValueError, match=f"^task_name=.* {UTF8}"):
        app.results(task_name=task_id)
    with pytest.raises(TypeError, match="group_id must be a str"):
        app.group_result(5)  # type: ignore[arg-type]
    assert app.results() == []


def test_a_task_name_utf8_cannot_hold_is_a_value_error_when_declared(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    name = "demo." + SURROGATE
    with pytest.raises(ValueError, match=f"^name=.* {UTF8}"):

        @app.task(name=name)
        def f() -> None: ...

    class Bad(nbtasks.Task):
        name = "demo.Bad" + SURROGATE

        def run(self) -> None: ...

    with pytest.raises(ValueError, match=f"^name=.* {UTF8}"):
        app.register(Bad)
    assert not any(SURROGATE in n for n in app._registry)
    assert_nothing_stored(app, make_app, [])


# --------------------------------------------------------------------------- inside a task


def test_refused_progress_calls_leave_no_trace(app: nbtasks.App, make_app: AppFactory) -> None:
    """Before, ``progress(6, message=0)`` stored 6 and then refused the message."""
    refused: dict[str, str] = {}

    @app.task
    def report(ctx: Context) -> str:
        ctx.progress(5, 10, "ok")
        for name, call in {
            "message-int": lambda: ctx.progress(6, message=0),  # type: ignore[arg-type]
            "message-bytes": lambda: ctx.progress(6, 20, b"x"),  # type: ignore[arg-type]
            "message-surrogate": lambda: ctx.progress(6, 20, "step " + SURROGATE),
            "total-str": lambda: ctx.progress(6, "20", "new"),  # type: ignore[arg-type]
            "total-bool": lambda: ctx.progress(6, True, "new"),
            "current-str": lambda: ctx.progress("6", 20, "new"),  # type: ignore[arg-type]
            "current-none": lambda: ctx.progress(None, 20, "new"),  # type: ignore[arg-type]
            "current-complex": lambda: ctx.progress(1j, 20, "new"),  # type: ignore[arg-type]
        }.items():
            try:
                call()
            except (TypeError, ValueError) as exc:
                refused[name] = f"{type(exc).__name__}: {exc}"
        return "done"

    r = report.delay()
    assert r.get(10) == "done"
    assert set(refused) == {
        "message-int",
        "message-bytes",
        "message-surrogate",
        "total-str",
        "total-bool",
        "current-str",
        "current-none",
        "current-complex",
    }
    assert refused["message-int"] == "TypeError: progress(message=0) must be a str"
    assert refused["message-surrogate"].startswith(
        f"ValueError: progress(message='step \\ud800') {UTF8}"
    )
    assert refused["total-str"] == "TypeError: progress(total='20') must be a number (int or float)"
    assert refused["current-none"].startswith("TypeError: progress(current=None) must be")
    final = stored(app, make_app, r.id).progress
    assert final is not None
    assert (final.current, final.total, final.message) == (5, 10, "ok")


def test_progress_past_floats_range_does_not_break_the_task(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    """An int too big for a float takes the int fast path; the record keeps it as no progress
    (as it does inf and NaN) rather than failing to compute the rate at the end."""

    @app.task
    def huge(ctx: Context, current: int, total: int | None) -> str:
        ctx.progress(current, total)
        return "done"

    for current, total in [(10**400, None), (1, 10**400), (-(10**400), 10)]:
        r = huge.delay(current, total)
        assert r.get(10) == "done"
        assert r.status is TaskStatus.SUCCESSFUL
        assert stored(app, make_app, r.id).progress is None


def test_a_non_finite_progress_does_not_hide_the_values_after_it(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    """NaN is accepted and stored as no progress; it no longer becomes the base of the rate,
    which made every later value's rate NaN, and so stored as no progress too."""

    @app.task
    def t(ctx: Context) -> None:
        attempt = app._runtime.supervisor.get(ctx.id)
        assert attempt is not None
        ctx.progress(float("nan"), 10)
        attempt.sample(app._runtime.clock.time())  # what the supervisor does every 0.1 s
        ctx.progress(4, 10)
        attempt.sample(app._runtime.clock.time())
        ctx.progress(5, 10)

    r = t.delay()
    r.wait(10)
    final = stored(app, make_app, r.id).progress
    assert final is not None
    assert (final.current, final.total) == (5, 10)


def test_refused_track_calls_raise_at_the_call_and_leave_no_trace(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    refused: dict[str, str] = {}

    @app.task
    def t(ctx: Context) -> int:
        ctx.progress(1, 3, "start")
        for name, call in {
            "total": lambda: ctx.track([1, 2], total="2"),  # type: ignore[arg-type]
            "message": lambda: ctx.track([1, 2], message=5),  # type: ignore[arg-type]
            "surrogate": lambda: ctx.track([1, 2], message=SURROGATE),
            "not-iterable": lambda: ctx.track(5),  # type: ignore[arg-type]
        }.items():
            try:
                call()  # not iterated: a generator would only check at its first item
            except (TypeError, ValueError) as exc:
                refused[name] = f"{type(exc).__name__}: {exc}"
        return sum(ctx.track([1, 2], message="good"))

    r = t.delay()
    assert r.get(10) == 3
    assert refused["total"] == "TypeError: track(total='2') must be a number (int or float)"
    assert refused["message"] == "TypeError: track(message=5) must be a str"
    assert refused["surrogate"].startswith(f"ValueError: track(message='\\ud800') {UTF8}")
    assert refused["not-iterable"].startswith("TypeError: 'int' object is not iterable")
    final = stored(app, make_app, r.id).progress
    assert final is not None
    assert (final.current, final.total, final.message) == (2, 2, "good")


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_refused_metadata_calls_leave_no_trace(
    app: nbtasks.App, make_app: AppFactory, case: str
) -> None:
    make, says = BAD_METADATA[case]
    refused: dict[str, str] = {}

    @app.task
    def t(ctx: Context) -> None:
        ctx.set_metadata(kept=1)
        for name, call in {
            "set_metadata": lambda: ctx.set_metadata(good=2, bad=make()),
            "request.meta": lambda: setattr(ctx.request, "meta", {"good": 2, "bad": make()}),
            "item": lambda: ctx.request.metadata.__setitem__("bad", make()),
            "update": lambda: ctx.request.metadata.update({"good": 2, "bad": make()}),
            "ior": lambda: ctx.request.metadata.__ior__({"good": 2, "bad": make()}),
        }.items():
            try:
                call()
            except TypeError as exc:
                refused[name] = str(exc)

    r = t.apply_async(metadata={"at_submit": True})
    r.wait(10)
    assert r.status is TaskStatus.SUCCESSFUL, r.errors
    assert set(refused) == {"set_metadata", "request.meta", "item", "update", "ior"}
    for name, message in refused.items():
        assert "bad" in message and says in message, (name, message)
    assert refused["set_metadata"].startswith("set_metadata(bad=...)")
    expected = {"at_submit": True, "kept": 1}  # "good" was not stored by any refused call
    assert r.metadata == expected
    assert stored(app, make_app, r.id).metadata == expected


def test_set_metadata_with_a_key_utf8_cannot_hold_is_refused(
    app: nbtasks.App, make_app: AppFactory
) -> None:
    refused: list[str] = []

    @app.task
    def t(ctx: Context) -> None:
        for call in (
            lambda: ctx.set_metadata(**{"good": 1, SURROGATE: 2}),
            lambda: setattr(ctx.request, "meta", {"good": 1, SURROGATE: 2}),
        ):
            try:
                call()
            except TypeError as exc:
                refused.append(str(exc))

    r = t.delay()
    r.wait(10)
    assert len(refused) == 2
    assert refused[0].startswith(f"set_metadata() key '\\ud800' {UTF8}")
    assert f"key '\\ud800' {UTF8}" in refused[1]
    assert stored(app, make_app, r.id).metadata == {}


def test_set_metadata_stores_a_json_copy(app: nbtasks.App, make_app: AppFactory) -> None:
    """A value changed after set_metadata (here: made to contain itself) cannot break the
    record that holds it, and a tuple reads as a list at once, as it does from the store."""

    @app.task
    def t(ctx: Context) -> None:
        items: list[Any] = [1]
        ctx.set_metadata(items=items, pair=(1, 2))
        items.append(items)

    r = t.delay()
    r.wait(10)
    assert r.metadata == {"items": [1], "pair": [1, 2]}
    assert stored(app, make_app, r.id).metadata == {"items": [1], "pair": [1, 2]}


def test_refused_update_state_calls_leave_no_trace(
    app: nbtasks.App, make_app: AppFactory, gate: Gate
) -> None:
    refused: dict[str, str] = {}

    @app.task(bind=True)
    def t(self: nbtasks.Task) -> str:
        self.update_state(state="STEP1", meta={"done": 1})
        for name, call in {
            "meta-cycle": lambda: self.update_state(state="STEP2", meta=cycle_dict()),
            "meta-deep": lambda: self.update_state(state="STEP2", meta=nested(5000)),
            "meta-surrogate": lambda: self.update_state(state="STEP2", meta=[SURROGATE]),
            "state-int": lambda: self.update_state(state=2, meta={"done": 2}),  # type: ignore[arg-type]
            "state-surrogate": lambda: self.update_state(state=SURROGATE, meta={"done": 2}),
            "task_id-int": lambda: self.update_state(task_id=7, state="STEP2"),  # type: ignore[arg-type]
            "task_id-surrogate": lambda: self.update_state(task_id=SURROGATE, state="STEP2"),
            "task_id-unknown": lambda: self.update_state(task_id="nope", state="STEP2"),
        }.items():
            try:
                call()
            except (TypeError, ValueError, nbtasks.UnknownTaskId) as exc:
                refused[name] = f"{type(exc).__name__}: {exc}"
        gate.pause()
        return "done"

    r = t.delay()
    gate.wait_reached()
    live = app.result(r.id)
    assert (live.state, live.result) == ("STEP1", {"done": 1})
    app.store.flush()
    seen = make_app().result(r.id)
    assert (seen.state, seen.result) == ("STEP1", {"done": 1})
    gate.release()
    assert r.get(10) == "done"
    assert refused["meta-cycle"].startswith("TypeError: update_state(meta=...)['d'] is")
    assert f"nested deeper than {MAX_DEPTH} levels" in refused["meta-deep"]
    assert UTF8 in refused["meta-surrogate"]
    assert refused["state-int"] == "TypeError: update_state(state=2) must be a str"
    assert refused["state-surrogate"].startswith(
        f"ValueError: update_state(state='\\ud800') {UTF8}"
    )
    assert refused["task_id-int"] == "TypeError: update_state(task_id=...) must be a str, got 7"
    assert refused["task_id-surrogate"].startswith(
        f"ValueError: update_state(task_id='\\ud800') {UTF8}"
    )
    assert refused["task_id-unknown"].startswith(
        "UnknownTaskId: update_state(task_id='nope'): no task with id 'nope' in the store"
    )
    assert len(refused) == 8


def test_update_state_with_task_id_updates_that_task(
    app: nbtasks.App, make_app: AppFactory, gate: Gate
) -> None:
    """Celery's update_state(task_id=other): another task running in this process is updated;
    the task's own id is the same as none."""
    other_done = threading.Event()

    @app.task
    def waiting(ctx: Context) -> str:
        gate.pause()
        return "waited"

    @app.task(bind=True)
    def updater(self: nbtasks.Task, other_id: str) -> None:
        self.update_state(task_id=other_id, state="SET_BY_OTHER", meta={"by": "updater"})
        self.update_state(task_id=self.request.id, state="OWN")
        other_done.set()

    w = waiting.delay()
    gate.wait_reached()
    u = updater.delay(w.id)
    assert other_done.wait(10)
    u.wait(10)
    assert (app.result(w.id).state, app.result(w.id).result) == (
        "SET_BY_OTHER",
        {"by": "updater"},
    )
    app.store.flush()
    assert make_app().result(w.id).state == "SET_BY_OTHER"
    gate.release()
    assert w.get(10) == "waited"
    assert app.result(w.id).state == "SUCCESSFUL"
