"""The Dask executor against a REAL ``distributed.LocalCluster(processes=True, n_workers=2)``.

One cluster for the module (started and closed by the ``cluster`` fixture), an App per test on
a fresh store. The task functions are compiled as ``__main__`` code, as notebook cells are, so
they travel to the worker processes by value (cloudpickle), never by import.

The scheduler runs with ``worker-saturation: 1.0``: a worker holds only the task it runs, the
rest wait in the scheduler's queue in priority order, which the priority test relies on.
"""

from __future__ import annotations

import linecache
import os
import signal
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import POSIX_ONLY, run_python, wait_until

import nbtasks

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.timeout(60)

# --------------------------------------------------------------------------- "notebook" code

NOTEBOOK = '''
import asyncio, logging, os, time
import nbtasks

def add(x, y):
    return x + y

def total(values):
    return sum(values)

def crawl(ctx: nbtasks.Context, n, step=0.03):
    for i in ctx.track(range(n), message="crawling"):
        print("item", i)
        time.sleep(step)
    return n

def spin(ctx: nbtasks.Context, seconds):
    """Busy for `seconds`, checking for cancellation often (a cooperative task)."""
    ctx.set_metadata(pid=os.getpid())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ctx.check_cancelled()
        time.sleep(0.01)
    return os.getpid()

def sleeper(seconds):
    time.sleep(seconds)  # never checks: Dask cannot stop it
    return "woke"

def hammer(ctx: nbtasks.Context, seconds):
    """progress() in a tight loop: the events it sends are throttled at the source."""
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            n += 1
            ctx.progress(n)
    return n

def reporter(ctx: nbtasks.Context):
    ctx.set_metadata(stage="loading")
    ctx.update_state(state="PROGRESS", meta={"done": 1})
    end = time.monotonic() + 0.8
    while time.monotonic() < end:
        ctx.check_cancelled()
        time.sleep(0.01)
    ctx.request.meta = {"final": True}
    return "reported"

def chatty():
    print("printed on a worker")
    logging.getLogger("nbtasks.test").warning("logged on a worker")
    return 1

def flaky(ctx: nbtasks.Context, fails):
    if ctx.request.retries < fails:
        raise ValueError(f"attempt {ctx.request.retries} fails")
    return ctx.request.retries

def asks_retry(ctx: nbtasks.Context):
    if ctx.request.retries == 0:
        raise ctx.retry(exc=KeyError("not yet"), countdown=0.1)
    return "second"

def soft(ctx: nbtasks.Context):
    try:
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)
    except nbtasks.SoftTimeLimitExceeded:
        return "cleaned up"

def boom():
    return 1 / 0

class Weird(Exception):
    def __init__(self, a, b):  # does not unpickle: pickle calls Weird(a) only
        super().__init__(f"{a} and {b}")

def weird():
    raise Weird("one", "two")

def big(n):
    return "x" * n  # past the size a final event carries: gathered from the worker

def unpicklable():
    import threading
    return threading.Lock()

def bound(self, x):
    self.progress(1, 2)
    return [self.request.id, x]

async def aadd(x, y):
    await asyncio.sleep(0.01)
    return x + y

def on_error(task_id):
    return task_id

class Hooked(nbtasks.Task):
    name = "hooked"
    executor = "dask"
    seen = []

    def run(self, x):
        if x < 0:
            raise ValueError("negative")
        return x * 10

    def on_success(self, retval, task_id, args, kwargs):
        Hooked.seen.append(("success", retval))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        Hooked.seen.append(("failure", type(exc).__name__))
'''


def notebook() -> dict[str, Any]:
    """The functions above, defined as a notebook cell defines them: module ``__main__``, and
    the cell's source only in this process's linecache (as IPython registers cells)."""
    source = textwrap.dedent(NOTEBOOK)
    name = "<notebook cell>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, name, "exec"), namespace)
    return namespace


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimpleNamespace]:
    import logging

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        lc = distributed.LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
    client = distributed.Client(lc, set_as_default=False)
    try:
        yield SimpleNamespace(cluster=lc, client=client, address=lc.scheduler_address)
    finally:
        client.close()
        lc.close()


@pytest.fixture
def client(cluster: SimpleNamespace) -> Any:
    cluster.client.wait_for_workers(2, timeout=30)  # a test may have killed one
    return cluster.client


@pytest.fixture
def app(client: Any, tmp_path: Path) -> Iterator[nbtasks.App]:
    a = nbtasks.App(store=tmp_path / "store", dask=client)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def nb(app: nbtasks.App) -> SimpleNamespace:
    """The notebook's functions as Dask tasks of ``app`` (and the raw namespace as ``ns``)."""
    ns = notebook()
    tasks = {
        name: app.task(executor="dask")(ns[name])
        for name in (
            "add",
            "total",
            "crawl",
            "spin",
            "sleeper",
            "hammer",
            "reporter",
            "chatty",
            "flaky",
            "asks_retry",
            "soft",
            "boom",
            "weird",
            "aadd",
            "on_error",
            "big",
            "unpicklable",
        )
    }
    tasks["bound"] = app.task(executor="dask", bind=True)(ns["bound"])
    tasks["hooked"] = app.register(ns["Hooked"])
    return SimpleNamespace(ns=ns, **tasks)


def executor(app: nbtasks.App) -> Any:
    return app._runtime.executor("dask")


def committed(app: nbtasks.App, task_id: str) -> dict[str, Any]:
    """The record as committed to the store (not this process's in-memory version)."""
    return app.store.read_record(task_id)


def busy(nb: SimpleNamespace, seconds: float = 0.8) -> list[nbtasks.TaskResult]:
    """Occupy both workers; returns once both blockers run."""
    blockers = [nb.spin.delay(seconds) for _ in range(2)]
    wait_until(lambda: all(b.refresh().status == "RUNNING" for b in blockers), timeout=10)
    return blockers


def executing(client: Any) -> int:
    """Tasks executing in the worker processes right now (threads, not scheduler state)."""

    def count(dask_worker: Any) -> int:
        return len(dask_worker.state.executing)

    return sum(client.run(count).values())


# --------------------------------------------------------------------------- installing


def test_import_nbtasks_does_not_import_dask_and_a_missing_dask_says_how_to_install() -> None:
    proc = run_python(
        """
        import json, sys, tempfile
        import nbtasks
        loaded = [m for m in ("dask", "distributed") if m in sys.modules]
        sys.modules["dask"] = None  # as if not installed
        sys.modules["distributed"] = None
        app = nbtasks.App(store=tempfile.mkdtemp() + "/s")

        @app.task(executor="dask")
        def f():
            return 1

        try:
            f.delay()
        except ImportError as exc:
            print(json.dumps([loaded, str(exc), app.store.count()]))
        app.shutdown()
        """
    )
    assert proc.returncode == 0, proc.stderr
    loaded, message, stored = __import__("json").loads(proc.stdout)
    assert loaded == []
    assert "pip install 'nbtasks[dask]'" in message
    assert stored == 0  # nothing half-written


def test_no_client_anywhere_fails_the_submit_with_how_to_fix(tmp_path: Path) -> None:
    assert not distributed.client._get_global_client()
    with nbtasks.App(store=tmp_path / "s") as app:
        t = app.task(executor="dask")(notebook()["add"])
        with pytest.raises(ValueError, match=r"nbtasks.App\(dask=Client"):
            t.delay(1, 2)
        assert app.store.count() == 0


def test_bad_dask_setting_is_a_type_error(tmp_path: Path) -> None:
    with nbtasks.App(store=tmp_path / "s", dask=42) as app:
        t = app.task(executor="dask")(notebook()["add"])
        with pytest.raises(TypeError, match=r"App\(dask=\.\.\.\) takes a distributed.Client"):
            t.delay(1, 2)
        assert app.store.count() == 0


# --------------------------------------------------------------------------- running


def test_notebook_function_runs_on_a_worker_and_its_value_is_stored(
    app: nbtasks.App, nb: SimpleNamespace, tmp_path: Path
) -> None:
    r = nb.add.delay(2, 3)
    assert r.get(timeout=20) == 5
    assert r.status == nbtasks.TaskStatus.SUCCESSFUL
    assert r.state == "SUCCESSFUL"
    (wid,) = r.worker_ids
    assert wid.startswith("tcp://") and f":{os.getpid()}:" not in wid  # a worker process
    assert r.started_at is not None and r.started_at <= r.finished_at
    app.store.flush()
    # Persisted like any other result: another App on the store reads it.
    with nbtasks.App(store=tmp_path / "store") as other:
        assert other.result(r.id).get() == 5


def test_per_call_executor_and_bind_and_async_and_chunks(
    app: nbtasks.App, nb: SimpleNamespace
) -> None:
    plain = app.task(nb.ns["add"], name="plain_add")  # a thread task by default
    r = plain.apply_async((1, 2), executor="dask")
    assert r.get(timeout=20) == 3 and r.worker_ids[0].startswith("tcp://")
    b = nb.bound.delay(7)
    assert b.get(timeout=20) == [b.id, 7]
    assert nb.aadd.delay(1, 2).get(timeout=20) == 3
    chunks = nb.add.chunks([(i, i) for i in range(5)], 2)
    assert chunks.get(timeout=20) == [[0, 2], [4, 6], [8]]


def test_progress_and_output_from_a_worker_process_reach_the_store_live(
    app: nbtasks.App, nb: SimpleNamespace
) -> None:
    r = nb.crawl.delay(30, 0.03)

    def live_progress() -> dict[str, Any] | None:
        rec = committed(app, r.id)
        prog = nbtasks.Progress.from_json(rec.get("progress"))
        ok = rec["status"] == "RUNNING" and prog is not None and 3 <= prog.current < 30
        return rec if ok and "item 2" in (rec.get("output") or "") else None

    rec = wait_until(live_progress, timeout=10)
    prog = nbtasks.Progress.from_json(rec["progress"])
    assert prog is not None and prog.total == 30 and prog.message == "crawling"
    assert r.get(timeout=20) == 30
    app.store.flush()
    final = committed(app, r.id)
    assert final["progress"][0] == 30  # the last value is always written
    assert final["output"].count("item") == 30


def test_progress_is_throttled_at_the_source(
    app: nbtasks.App, nb: SimpleNamespace, client: Any
) -> None:
    r = nb.hammer.delay(0.6)
    calls = r.get(timeout=20)
    assert calls > 10_000
    ex = executor(app)
    events = [m for _, m in client.get_events(ex.topic) if m.get("k", "").endswith(r.id)]
    # A "started" event, then <= 10 a second: ~6 in 0.6 s (a little slack for timing).
    assert 1 <= len(events) <= 10
    assert r.progress is not None and r.progress.current == calls


def test_metadata_state_and_output_reach_the_store_while_running(
    app: nbtasks.App, nb: SimpleNamespace
) -> None:
    r = nb.reporter.apply_async(metadata={"user": "dkl"})

    def running_with_state() -> bool:
        rec = committed(app, r.id)
        return (
            rec["status"] == "RUNNING"
            and rec.get("metadata", {}).get("stage") == "loading"
            and rec.get("state") == "PROGRESS"
            and rec.get("result") == {"done": 1}
        )

    wait_until(running_with_state, timeout=10)
    assert r.get(timeout=20) == "reported"
    assert r.metadata == {"user": "dkl", "stage": "loading", "final": True}
    assert r.state == "SUCCESSFUL" and r.result == "reported"
    c = nb.chatty.delay()
    c.wait(20)
    assert "printed on a worker" in c.output
    assert "logged on a worker" in c.output


def test_a_large_value_is_gathered_and_a_lost_final_event_is_made_up_for(
    app: nbtasks.App, nb: SimpleNamespace
) -> None:
    assert nb.big.delay(100_000).get(timeout=20) == "x" * 100_000
    # Drop this executor's final events: the poll notices the finished futures and gathers.
    ex = executor(app)
    hub = ex._hub
    (listener,) = hub.listeners[ex.topic]
    hub.listeners[ex.topic] = [lambda ev: None if "f" in ev[1] else listener(ev)]
    try:
        r = nb.crawl.delay(3, 0.01)
        assert r.get(timeout=20) == 3
        assert r.output.count("item") == 3 and r.progress.current == 3
    finally:
        hub.listeners[ex.topic] = [listener]


# --------------------------------------------------------------------------- failures


def test_failure_keeps_the_workers_traceback_and_the_exception(
    app: nbtasks.App, nb: SimpleNamespace
) -> None:
    r = nb.boom.delay()
    r.wait(20)
    assert r.status == nbtasks.TaskStatus.FAILED
    (err,) = r.errors
    assert err.exception_class_path == "builtins.ZeroDivisionError"
    assert "return 1 / 0" in err.traceback and "<notebook cell>" in err.traceback
    with pytest.raises(ZeroDivisionError) as info:  # get(): what the task raised
        r.get()
    assert "return 1 / 0" in str(info.value.__cause__)  # its traceback, from the worker
    with pytest.raises(nbtasks.TaskFailed, match="ZeroDivisionError") as failed:
        r.return_value  # noqa: B018
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    w = nb.weird.delay()
    w.wait(20)
    assert w.errors[-1].exception_class_path == "__main__.Weird"  # the class path survives
    assert w.errors[-1].message == "one and two"


def test_a_value_dask_cannot_serialize_fails_the_task(
    app: nbtasks.App, nb: SimpleNamespace
) -> None:
    r = nb.unpicklable.delay()
    r.wait(30)
    assert r.status == nbtasks.TaskStatus.FAILED
    assert "lock" in r.errors[-1].message


def test_hooks_run_in_the_client(app: nbtasks.App, nb: SimpleNamespace) -> None:
    seen = nb.ns["Hooked"].seen
    assert nb.hooked.delay(2).get(timeout=20) == 20
    nb.hooked.delay(-1).wait(20)
    assert seen == [("success", 20), ("failure", "ValueError")]


def test_retries_follow_nbtasks_policy_with_backoff(app: nbtasks.App, nb: SimpleNamespace) -> None:
    r = nb.flaky.apply_async((2,), retries=2, retry_backoff=0.2)
    assert r.get(timeout=20) == 2
    assert r.attempts == 3 and len(r.errors) == 2
    assert all(e.exception_class_path == "builtins.ValueError" for e in r.errors)
    assert r.finished_at - r.started_at >= timedelta(seconds=0.6)  # 0.2 s, then 0.4 s
    out = nb.flaky.apply_async((5,), retries=1)
    out.wait(20)
    assert out.status == nbtasks.TaskStatus.FAILED and out.attempts == 2
    again = nb.asks_retry.apply_async(retries=1)
    assert again.get(timeout=20) == "second"
    assert again.errors[0].exception_class_path == "builtins.KeyError"


# --------------------------------------------------------------------------- options


def test_priority_maps_to_dask_priority(
    app: nbtasks.App, nb: SimpleNamespace, cluster: SimpleNamespace
) -> None:
    busy(nb, 0.6)
    # Dask sends the first tasks of a group straight to the (busy) workers; once the group
    # outgrows the cluster (> 2 x 2 threads) the rest wait in the scheduler's queue, in
    # priority order: the high ones, submitted last, overtake the queued low ones. In submit
    # order they would start only once a queued low one had finished (each takes 0.1 s).
    low = [nb.spin.apply_async((0.1,), priority=0) for i in range(6)]
    high = [nb.spin.apply_async((0.1,), priority=5) for i in range(2)]
    for r in high:
        ts = cluster.cluster.scheduler.tasks.get(f"spin-{r.id}")
        assert ts is None or ts.priority[0] == -5  # Dask's priorities: smaller runs first
    for r in [*low, *high]:
        r.wait(20)
    assert max(r.started_at for r in high) < min(r.finished_at for r in low[4:])


def test_timeout_cancels_the_future_and_records_task_timeout(
    app: nbtasks.App, nb: SimpleNamespace, client: Any
) -> None:
    r = nb.sleeper.apply_async((1.0,), timeout=0.3)  # never checks: recorded anyway
    r.wait(10)
    assert r.status == nbtasks.TaskStatus.FAILED
    assert r.errors[-1].exception_class is nbtasks.TaskTimeout
    assert "timeout of 0.3s" in r.errors[-1].message
    c = nb.spin.apply_async((10,), timeout=0.3)  # checks: its worker is freed too
    c.wait(10)
    assert c.errors[-1].exception_class is nbtasks.TaskTimeout
    wait_until(lambda: executing(client) == 0, timeout=5, interval=0.05)


def test_soft_timeout_raises_inside_the_task(app: nbtasks.App, nb: SimpleNamespace) -> None:
    assert nb.soft.apply_async(soft_timeout=0.2).get(timeout=20) == "cleaned up"


def test_expires_countdown_and_eta(app: nbtasks.App, nb: SimpleNamespace) -> None:
    blockers = busy(nb, 0.6)
    late = nb.add.apply_async((1, 1), expires=0.2)
    soon = nb.add.apply_async((1, 2), countdown=0.4)
    at = nb.add.apply_async((1, 3), eta=datetime.now(UTC) + timedelta(seconds=0.3))
    late.wait(10)
    assert late.status == nbtasks.TaskStatus.CANCELLED
    assert late.reason == "expired" and late.worker_ids == []  # it never ran
    with pytest.raises(nbtasks.TaskCancelled, match="expired"):
        late.get()
    assert soon.get(timeout=10) == 3 and at.get(timeout=10) == 4
    assert soon.started_at - soon.enqueued_at >= timedelta(seconds=0.4)
    assert at.started_at - at.enqueued_at >= timedelta(seconds=0.3)
    for b in blockers:
        b.wait(10)


def test_cancel_a_queued_task_never_runs_it(
    app: nbtasks.App, nb: SimpleNamespace, client: Any
) -> None:
    blockers = busy(nb, 0.5)
    r = nb.add.delay(1, 1)
    assert r.cancel() is True
    assert r.status == nbtasks.TaskStatus.CANCELLED
    for b in blockers:
        b.wait(10)
    # A task sent after it has run on the freed workers: it would have run before this one.
    assert nb.add.delay(2, 2).get(10) == 4
    assert r.refresh().worker_ids == []
    ex = executor(app)
    assert not [m for _, m in client.get_events(ex.topic) if m.get("k", "").endswith(r.id)]
    assert r.cancel() is False  # finished


def test_cancel_a_running_task_cancels_its_future_and_frees_the_worker(
    app: nbtasks.App, nb: SimpleNamespace, client: Any
) -> None:
    r = nb.spin.delay(10)
    wait_until(lambda: r.refresh().status == "RUNNING", timeout=10)
    assert r.cancel() is True
    r.wait(5)
    assert r.status == nbtasks.TaskStatus.CANCELLED and r.reason == "cancelled"
    wait_until(lambda: executing(client) == 0, timeout=5, interval=0.05)


def test_cancel_from_another_app_on_the_store(
    app: nbtasks.App, nb: SimpleNamespace, client: Any, tmp_path: Path
) -> None:
    r = nb.spin.delay(10)
    wait_until(lambda: committed(app, r.id)["status"] == "RUNNING", timeout=10)
    with nbtasks.App(store=tmp_path / "store", name="elsewhere") as other:
        assert other.result(r.id).cancel() is True  # a request; the owner acts on it
    r.wait(5)
    assert r.status == nbtasks.TaskStatus.CANCELLED
    wait_until(lambda: executing(client) == 0, timeout=5, interval=0.05)


# --------------------------------------------------------------------------- canvas


def test_links_and_canvas_on_dask(app: nbtasks.App, nb: SimpleNamespace) -> None:
    assert (nb.add.s(1, 2) | nb.add.s(10)).apply_async().get(timeout=20) == 13
    g = nbtasks.group(nb.add.s(i, i) for i in range(4)).apply_async()
    assert g.get(timeout=20) == [0, 2, 4, 6]
    c = nbtasks.chord([nb.add.s(1, 1), nb.add.s(2, 2)])(nb.total.s())
    assert c.get(timeout=20) == 6
    m = nb.add.starmap([(i, 1) for i in range(20)])
    assert m.get(timeout=20) == list(range(1, 21))
    assert m.progress.fraction == 1.0
    linked = nb.add.apply_async((1, 2), link=nb.add.s(100))
    failed = nb.boom.apply_async(link_error=nb.on_error.s())
    linked.wait(20)
    failed.wait(20)

    def link_results() -> list[Any]:
        done = [r for r in app.results(task_name="add") if r.is_finished and r.args == [3, 100]]
        errs = [r for r in app.results(task_name="on_error") if r.is_finished]
        return done + errs if done and errs else []

    got = wait_until(link_results, timeout=20)
    assert got[0].get() == 103 and got[-1].get() == failed.id
    broken = (nb.boom.s() | nb.add.s(1)).apply_async()
    with pytest.raises(nbtasks.TaskCancelled):
        broken.get(timeout=20)


# --------------------------------------------------------------------------- lost workers, clients


@POSIX_ONLY
def test_a_worker_killed_mid_task_is_a_worker_lost_failure(
    app: nbtasks.App, nb: SimpleNamespace, client: Any
) -> None:
    r = nb.spin.apply_async((3,))
    pid = wait_until(lambda: r.refresh().metadata.get("pid"), timeout=10)
    os.kill(pid, signal.SIGKILL)
    r.wait(15)
    assert r.status == nbtasks.TaskStatus.FAILED
    assert r.errors[-1].exception_class is nbtasks.WorkerLost
    assert "was lost" in r.errors[-1].message
    assert r.attempts == 1  # Dask did not silently run it again under this record
    with pytest.raises(nbtasks.WorkerLost):  # get(): the task's error
        r.get()


@POSIX_ONLY
def test_a_worker_killed_mid_task_is_retried_by_the_tasks_policy(
    app: nbtasks.App, nb: SimpleNamespace, client: Any
) -> None:
    r = nb.spin.apply_async((0.5,), retries=1)
    first = wait_until(lambda: r.refresh().metadata.get("pid"), timeout=10)
    os.kill(first, signal.SIGKILL)
    second = r.get(timeout=20)
    assert second != first
    assert r.attempts == 2
    assert [e.exception_class for e in r.errors] == [nbtasks.WorkerLost]


def test_a_dropped_scheduler_connection_interrupts_what_was_in_flight(
    app: nbtasks.App, nb: SimpleNamespace, cluster: SimpleNamespace
) -> None:
    client = distributed.Client(cluster.address, set_as_default=False)
    try:
        own = nbtasks.App(store=app.store.path, dask=client, name="dropped")
        t = own.task(executor="dask")(nb.ns["spin"])
        running = [t.delay(10) for _ in range(2)]
        wait_until(lambda: all(r.refresh().status == "RUNNING" for r in running), timeout=10)
        queued = t.delay(10)
        client.loop.add_callback(client.scheduler_comm.comm.abort)  # the network drops
        for r in [*running, queued]:
            r.wait(10)
            assert r.status == nbtasks.TaskStatus.INTERRUPTED
            assert "lost its connection to the scheduler" in r.reason
            with pytest.raises(nbtasks.TaskInterrupted, match="connection"):
                r.get()
        # The client reconnects by itself; new tasks run, and their progress arrives.
        wait_until(lambda: client.status == "running", timeout=10)
        after = own.task(executor="dask")(nb.ns["crawl"]).delay(5, 0.05)
        assert after.get(timeout=20) == 5 and after.progress.current == 5
        own.shutdown()
    finally:
        client.close()


def test_a_closed_client_interrupts_its_tasks(
    app: nbtasks.App, nb: SimpleNamespace, cluster: SimpleNamespace
) -> None:
    client = distributed.Client(cluster.address, set_as_default=False)
    own = nbtasks.App(store=app.store.path, dask=client, name="closed")
    t = own.task(executor="dask")(nb.ns["spin"])
    r = t.delay(10)
    wait_until(lambda: r.refresh().status == "RUNNING", timeout=10)
    client.close()
    r.wait(10)
    assert r.status == nbtasks.TaskStatus.INTERRUPTED and "closed" in r.reason
    own.shutdown()


# --------------------------------------------------------------------------- settings and shutdown


def test_an_address_makes_a_client_that_shutdown_closes(
    cluster: SimpleNamespace, tmp_path: Path
) -> None:
    app = nbtasks.App(store=tmp_path / "s", dask=cluster.address)
    t = app.task(executor="dask")(notebook()["add"])
    assert t.delay(20, 22).get(timeout=20) == 42
    ex = executor(app)
    assert ex.client is not cluster.client
    app.shutdown()
    assert ex.client.status == "closed"


def test_configure_dask_on_the_default_app(cluster: SimpleNamespace, tmp_path: Path) -> None:
    from nbtasks import _app as app_module

    try:
        nbtasks.configure(store=tmp_path / "d", dask=cluster.client)
        t = nbtasks.task(executor="dask")(notebook()["add"])
        assert t.delay(1, 1).get(timeout=20) == 2
    finally:
        old = app_module._default
        with app_module._default_lock:
            app_module._default = None
            app_module._default_settings.clear()
        if old is not None:
            old.shutdown(wait=True)


def test_shutdown_cancel_pending_cancels_what_has_not_started(client: Any, tmp_path: Path) -> None:
    app = nbtasks.App(store=tmp_path / "s", dask=client)
    spin = app.task(executor="dask")(notebook()["spin"])
    blockers = [spin.delay(0.4) for _ in range(2)]
    wait_until(lambda: all(b.refresh().status == "RUNNING" for b in blockers), timeout=10)
    queued = [spin.delay(0.1) for _ in range(3)]
    app.shutdown(wait=True, cancel_pending=True)
    assert [b.refresh().status.value for b in blockers] == ["SUCCESSFUL"] * 2
    assert {q.refresh().status.value for q in queued} == {"CANCELLED"}
    assert all("shut down" in (q.reason or "") for q in queued)
