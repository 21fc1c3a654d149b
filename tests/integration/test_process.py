"""The process executor with real processes (SPEC §7, issue 3): tasks from ``__main__``, crashes
by exit code, SIGKILL and a real segfault, hard and soft timeouts, cancel, unpicklable arguments,
retries, live progress and captured output, shutdown without zombies, a parent that SIGKILLs
itself (orphans INTERRUPTED, detached tasks live on), and a real Jupyter kernel restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from helpers import POSIX_ONLY

import nbtasks
from nbtasks._task import resolve_options

if TYPE_CHECKING:
    from conftest import KernelDriver

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pool_pids(app: nbtasks.App) -> list[int]:
    """The pids of the pool's workers, once every one of them is ready."""
    ex = app._runtime._executors["process"]

    def ready() -> list[int] | None:
        pids = [p.pid for p in ex._procs.values() if p.ready and not p.detached]
        return pids if len(pids) == ex.size else None

    return wait_until(ready)  # type: ignore[no-any-return]


def run_script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        check=False,
    )


@pytest.fixture(autouse=True, params=["fork", "spawn"])
def process_start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both paths: workers forked by the zygote, and spawned ones. The
    variable reaches the Apps the tests build and the scripts they run."""
    start: str = request.param
    monkeypatch.setenv("NBTASKS_PROCESS_START", start)
    return start


@pytest.fixture
def app(tmp_path: Path, process_start: str) -> Iterator[nbtasks.App]:
    a = nbtasks.App(store=tmp_path / "store", process_workers=2, process_start=process_start)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


# ----------------------------------------------------------------------------- notebook code


@pytest.mark.timeout(60)
def test_tasks_defined_in_a_main_script_run_in_workers(tmp_path: Path) -> None:
    """Functions, a lambda calling another task, a closure over an instance of a class defined in
    ``__main__``, such an instance as argument and return value (isinstance holds), and an
    exception class defined there, raised in the worker and restored as the cause here."""
    done = run_script("process_main.py", str(tmp_path / "store"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["add_offset"] == 101
    assert out["helper"] == 202
    assert out["closure"][:2] == [7, 5] and out["closure"][2] != out["parent_pid"]
    assert out["grow_items"] == [1, 0, 1, 2] and out["grow_is_acc"] is True
    message, restored, text = out["error"]  # an exception class from __main__ comes back
    assert "__main__.Oops: bad 3" in message and restored is True and text == "bad 3"


@pytest.mark.timeout(30)
def test_closure_over_a_class_defined_in_the_test(app: nbtasks.App) -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm2(self) -> int:
            return self.x**2 + self.y**2

    origin = Point(3, 4)

    @app.task(executor="process")
    def far_from_origin(p: Point) -> tuple[int, int]:
        return (Point(p.x - origin.x, p.y - origin.y).norm2(), os.getpid())

    value, pid = far_from_origin.delay(Point(6, 8)).get(timeout=20)
    assert value == 25 and pid != os.getpid()


class Tripled(nbtasks.Task):
    """A class-based task (Celery style), run in a worker process."""

    name = "tests.Tripled"
    executor = "process"

    def run(self, x: int) -> int:
        return x * 3


@pytest.mark.timeout(60)
def test_canvas_links_retries_and_task_kinds_run_in_workers(app: nbtasks.App) -> None:
    import asyncio

    @app.task(executor="process")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(executor="process", bind=True, retries=2)
    def retrying(self: nbtasks.Task, n: int) -> int:
        if self.request.retries < n:
            raise self.retry(countdown=0.01)
        return self.request.retries

    @app.task(executor="process")
    async def later(x: int) -> int:
        await asyncio.sleep(0.01)
        return x + 1

    @app.task(executor="process")
    def big(n: int) -> bytes:
        return b"x" * n  # past 16 KiB: stored in an entry of its own

    assert (add.s(1, 2) | add.s(10) | add.s(5)).apply_async().get(timeout=20) == 18
    assert (big.s(100_000) | app.task(len, executor="process").s()).apply_async().get(
        timeout=20
    ) == 100_000
    assert add.starmap([(1, 2), (3, 4)]).get(timeout=20) == [3, 7]
    assert add.chunks([(1, 2), (3, 4), (5, 6)], 2).get(timeout=20) == [[3, 7], [11]]
    first = add.apply_async((1, 2), link=add.s(100))
    assert first.get(timeout=20) == 3
    done = nbtasks.TaskStatus.SUCCESSFUL
    wait_until(lambda: 103 in [r.return_value for r in app.results() if r.status is done])
    assert retrying.delay(2).get(timeout=20) == 2
    assert app.register(Tripled).delay(4).get(timeout=20) == 12
    assert later.delay(1).get(timeout=20) == 2


# ----------------------------------------------------------------------------- crashes


@POSIX_ONLY
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("exit", "exited with code 3"),
        ("sigkill", "was killed by SIGKILL"),
        ("segfault", "was killed by SIGSEGV (Segmentation fault)"),
    ],
)
def test_a_crash_fails_only_its_task(app: nbtasks.App, how: str, expected: str) -> None:
    @app.task(executor="process")
    def crash(how: str) -> None:
        if how == "exit":
            os._exit(3)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        import ctypes

        ctypes.string_at(0)  # a real segfault

    @app.task(executor="process")
    def steady(n: int) -> int:
        for _ in range(n):
            time.sleep(0.02)
        return n

    other = steady.delay(40)  # on the other worker, while this one dies
    wait_until(lambda: other.refresh().status is nbtasks.TaskStatus.RUNNING)
    r = crash.delay(how).wait(20)
    assert r.status is nbtasks.TaskStatus.FAILED
    [error] = r.errors
    assert error.exception_class_path == "nbtasks.WorkerLost"
    assert error.exception_class is nbtasks.WorkerLost
    assert expected in error.message and "crash[" in error.message
    if how == "segfault":  # faulthandler's view of the crash, from the dead worker
        assert "Segmentation fault" in error.traceback and "string_at" in error.traceback
    with pytest.raises(nbtasks.WorkerLost):  # get(): the task's error
        r.get()
    assert other.get(timeout=20) == 40  # the pool carried on
    assert steady.delay(1).get(timeout=20) == 1  # and the next task on this App runs
    assert len(pool_pids(app)) == 2  # the dead worker was replaced


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_the_pool_outlives_its_zygote(app: nbtasks.App, process_start: str) -> None:
    """The process that forks the workers is killed: the workers carry on, and a dead worker
    is replaced through a new one."""
    if process_start == "spawn":
        pytest.skip("spawned workers have no zygote")

    @app.task(executor="process")
    def nap(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    nap.delay(0).get(timeout=20)
    workers = pool_pids(app)
    ex = app._runtime._executors["process"]
    os.kill(ex._launcher.zygote_pid, signal.SIGKILL)
    assert {nap.delay(0.05).get(timeout=20) for _ in range(4)} <= set(workers)
    r = nap.delay(30)
    wait_until(lambda: r.refresh().status is nbtasks.TaskStatus.RUNNING)
    busy = wait_until(lambda: [p.pid for p in ex._procs.values() if p.jobs and p.pid])
    os.kill(busy[0], signal.SIGKILL)
    r.wait(10)
    assert r.errors[-1].exception_class_path == "nbtasks.WorkerLost"
    assert "exit status is unknown" in r.errors[-1].message  # its zygote could not say
    assert nap.delay(0).get(timeout=20) not in busy


@pytest.mark.timeout(60)
def test_retries_apply_to_a_lost_worker(app: nbtasks.App, tmp_path: Path) -> None:
    marks = tmp_path / "attempts"

    @app.task(executor="process", retries=2)
    def flaky(path: str) -> int:
        with open(path, "a") as f:
            f.write("x")
        n = len(Path(path).read_text())
        if n < 3:
            os._exit(1)
        return n

    r = flaky.delay(str(marks)).wait(30)
    assert r.status is nbtasks.TaskStatus.SUCCESSFUL and r.return_value == 3
    assert [e.exception_class_path for e in r.errors] == ["nbtasks.WorkerLost"] * 2
    assert r.attempts == 3 and len(set(r.worker_ids)) == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", ["claim", "result"])
def test_a_worker_killed_at_a_step_fails_its_task_cleanly(
    app: nbtasks.App, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The worker exits (the test hook, process/child.CRASH_ENV) right after it claimed its
    task, before the claim is committed; or once its large return value is committed but not yet the
    record that refers to it. The task ends FAILED with WorkerLost (or is retried), its record
    is whole and final, no orphan value is left, and the App carries on."""
    from nbtasks.executors.process.child import CRASH_ENV, CRASH_EXIT

    monkeypatch.setenv(CRASH_ENV, f"{step}:tests.crashy")  # read by the workers as they start

    @app.task(executor="process", name="tests.crashy")
    def crashy(n: int) -> bytes:
        return b"x" * n  # past 16 KiB: the value is an entry of its own

    @app.task(executor="process")
    def fine(x: int) -> int:
        return x + 1

    r = crashy.delay(100_000).wait(20)
    assert r.status is nbtasks.TaskStatus.FAILED
    [error] = r.errors
    assert error.exception_class_path == "nbtasks.WorkerLost"
    assert f"exited with code {CRASH_EXIT}" in error.message and "tests.crashy[" in error.message
    with pytest.raises(nbtasks.WorkerLost):  # get(): the task's error
        r.get()
    app.store.flush()
    stored = app.store.read_record(r.id)  # the committed record: JSON that decodes
    assert stored["status"] == "FAILED" and stored["state"] == "FAILED"
    assert "rv" not in stored and stored["finished_at"] >= stored["started_at"]
    assert len(stored["worker_ids"]) == 1 and len(stored["errors"]) == 1
    assert app.store.cache.get(f"v:{r.id}:rv") is None  # no half-written result either
    other = nbtasks.App(store=app.store.path)  # another process's view agrees
    try:
        seen = other.result(r.id)
        assert seen.status is nbtasks.TaskStatus.FAILED
        assert [e.exception_class_path for e in seen.errors] == ["nbtasks.WorkerLost"]
    finally:
        other.shutdown()

    again = crashy.apply_async((100_000,), retries=1).wait(20)  # the hook spares a retry
    assert again.status is nbtasks.TaskStatus.SUCCESSFUL and again.return_value == b"x" * 100_000
    assert [e.exception_class_path for e in again.errors] == ["nbtasks.WorkerLost"]
    assert again.attempts == 2
    assert fine.delay(1).get(timeout=20) == 2  # the next task on this App
    assert len(pool_pids(app)) == 2  # the dead workers were replaced


# ----------------------------------------------------------------------------- time limits


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_timeout_terminates_the_worker(app: nbtasks.App) -> None:
    @app.task(executor="process", timeout=0.5)
    def sleeper(ignore_term: bool) -> None:
        if ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Event().wait()  # blocks until a signal ends the process

    r = sleeper.delay(False).wait(20)  # it never returns: it was terminated
    assert r.status is nbtasks.TaskStatus.FAILED
    assert r.errors[-1].exception_class_path == "nbtasks.TaskTimeout"
    assert "ran past its timeout of 0.5s" in r.errors[-1].message

    t0 = time.monotonic()
    r = sleeper.delay(True).wait(20)  # ignores SIGTERM: SIGKILL after the 2 s grace period
    took = time.monotonic() - t0
    assert r.errors[-1].exception_class_path == "nbtasks.TaskTimeout"
    assert "killed after the 2s grace period" in r.errors[-1].message
    assert took >= 0.5 + 2.0, took  # the grace period was given
    assert r.status is nbtasks.TaskStatus.FAILED


@pytest.mark.timeout(30)
def test_soft_timeout_raises_inside_the_task(app: nbtasks.App) -> None:
    @app.task(executor="process", soft_timeout=0.3)
    def polite() -> str:
        try:
            time.sleep(10)
        except nbtasks.SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    assert polite.delay().get(timeout=20) == "cleaned up"


# ----------------------------------------------------------------------------- cancel


@pytest.mark.timeout(30)
def test_cancel_terminates_a_running_task_and_a_ready_one_never_starts(
    tmp_path: Path,
) -> None:
    app = nbtasks.App(store=tmp_path / "store", process_workers=1)
    try:

        @app.task(executor="process")
        def mark_and_sleep(path: str, seconds: float) -> None:
            Path(path).write_text("started")
            time.sleep(seconds)

        running = mark_and_sleep.delay(str(tmp_path / "a"), 30)
        queued = mark_and_sleep.delay(str(tmp_path / "b"), 0)  # behind it in the worker
        waiting = mark_and_sleep.delay(str(tmp_path / "c"), 0)  # READY here, not sent yet
        wait_until(lambda: (tmp_path / "a").exists())
        pid = pool_pids(app)[0]
        assert waiting.cancel() and queued.cancel()
        assert running.cancel() is True
        running.wait(10)  # before its 30 s sleep ends: it was terminated
        assert running.status is nbtasks.TaskStatus.CANCELLED
        assert wait_until(lambda: not alive(pid))  # terminated, not asked
        for r in (queued, waiting):
            assert r.wait(10).status is nbtasks.TaskStatus.CANCELLED
        assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
        assert running.cancel() is False  # finished already
        assert mark_and_sleep.delay(str(tmp_path / "d"), 0).get(timeout=20) is None
    finally:
        app.shutdown()


@POSIX_ONLY
@pytest.mark.timeout(30)
def test_a_large_closure_does_not_block_submit_behind_a_busy_worker(tmp_path: Path) -> None:
    app = nbtasks.App(store=tmp_path / "store", process_workers=1)
    try:
        blob = b"y" * 5_000_000  # its payload is larger than a socket's buffer

        @app.task(executor="process")
        def uses(gate: str | None) -> int:
            if gate is not None:
                Path(gate).read_text()  # a FIFO: until the test writes to it
            return len(blob)

        gate = tmp_path / "gate"
        os.mkfifo(gate)
        busy = uses.delay(str(gate))
        wait_until(lambda: busy.refresh().status is nbtasks.TaskStatus.RUNNING)
        # It waits here for the worker, not in a send: a send would block until the worker
        # read it, which is after the test opens the gate.
        queued = uses.delay(None)
        assert busy.refresh().status is nbtasks.TaskStatus.RUNNING
        gate.write_text("go")
        assert busy.get(timeout=20) == queued.get(timeout=20) == 5_000_000
    finally:
        app.shutdown()


# ----------------------------------------------------------------------------- submit checks


@pytest.mark.timeout(30)
def test_unpicklable_arguments_and_functions_fail_at_submit(
    app: nbtasks.App, tmp_path: Path
) -> None:
    @app.task(executor="process")
    def ident(value: Any) -> Any:
        return value

    lock = threading.Lock()
    with open(tmp_path / "f.txt", "w") as fh:
        cases = [
            (lock, r"argument 'value' of task .*ident is a _thread\.lock"),
            (fh, r"argument 'value' of task .*ident is a _io\.TextIOWrapper"),
            ((x for x in "ab"), r"argument 'value' of task .*ident is a generator"),
        ]
        for value, message in cases:
            with pytest.raises(TypeError, match=message):
                ident.delay(value)
            with pytest.raises(TypeError, match=message):
                ident.apply_async(kwargs={"value": value})

    def uses_lock() -> None:
        with lock:
            pass

    with pytest.raises(TypeError, match=r"closure variable 'lock' is a _thread\.lock"):
        app.task(uses_lock, executor="process").delay()
    assert app.store.count() == 0  # nothing was stored
    assert app.results() == []


# ----------------------------------------------------------------------------- submits from tasks


@pytest.mark.timeout(60)
def test_a_process_task_submits_thread_and_process_tasks(app: nbtasks.App) -> None:
    """delay, apply_async, apply, map, a group and a chain from inside a process task: the App
    here commits and runs them in its own executors (the thread task in this process, the
    process tasks back in the pool); the worker gets the usual handles, which read the store."""

    @app.task
    def double(x: int) -> tuple[int, int]:
        return x * 2, os.getpid()

    @app.task(executor="process")
    def square(x: int) -> tuple[int, int]:
        return x * x, os.getpid()

    @app.task(executor="process", bind=True)
    def fan_out(self: nbtasks.Task, x: int) -> dict[str, Any]:
        a = double.delay(x)
        b = square.apply_async((x,), priority=1)
        seen = {
            "classes": [type(h).__name__ for h in (a, b)],
            "first_status": [h.status.value for h in (a, b)],
            "values": [a.get(timeout=20), b.get(timeout=20)],  # polls the store
            "statuses": [h.refresh().status.value for h in (a, b)],
            "ids": [a.id, b.id],
            "pid": os.getpid(),
        }
        seen["applied"] = double.apply((4,)).return_value  # run now, there, and finished
        seen["map"] = [v for v, _ in square.map([1, 2, 3]).get(timeout=20)]
        seen["group"] = [v for v, _ in nbtasks.group(square.s(5), double.s(5)).delay().get(20)]
        chained = (square.s(2) | double.si(7)).apply_async()
        seen["chain"] = [chained.get(timeout=20)[0], chained.parent.get(timeout=20)[0]]
        seen["app"] = repr(self.app)
        request = double.create_request(10)  # Mognet: the App there finds it by name
        seen["mognet"] = [self.app.submit(request).get(timeout=20)[0], request.id is not None]
        return seen

    seen = fan_out.delay(3).get(timeout=30)
    assert seen["classes"] == ["TaskResult", "TaskResult"]
    assert seen["first_status"][0] in ("READY", "RUNNING", "SUCCESSFUL")
    assert seen["statuses"] == ["SUCCESSFUL", "SUCCESSFUL"]
    assert seen["values"][0] == (6, os.getpid())  # the thread task ran here
    assert seen["values"][1][0] == 9 and seen["values"][1][1] not in (os.getpid(), seen["pid"])
    assert seen["applied"] == (8, os.getpid())
    assert seen["map"] == [1, 4, 9] and seen["group"] == [25, 10] and seen["chain"] == [14, 4]
    assert "seen from worker process" in seen["app"] and seen["mognet"] == [20, True]
    thread_id, process_id = seen["ids"]
    by_thread, by_process = app.result(thread_id), app.result(process_id)
    assert by_thread.get(timeout=20) == (6, os.getpid())  # the App here sees them, finished
    assert by_process.get(timeout=20) == (9, seen["values"][1][1])
    for r in (by_thread, by_process):
        assert r.status is nbtasks.TaskStatus.SUCCESSFUL and r.backend == app.name
        assert r.task is not None  # the App's own task of that name ran
    assert by_process.worker_ids[0].split(":")[1] == str(seen["values"][1][1])


@pytest.mark.timeout(60)
def test_a_bad_submit_from_a_process_task_raises_there_and_stores_nothing(
    app: nbtasks.App,
) -> None:
    """A bad argument or option raises the same TypeError or ValueError in the worker as it does
    here; an argument that cannot be pickled (it has to reach this process) a TypeError."""
    from datetime import datetime

    @app.task
    def thread_task(x: int) -> int:
        return x

    @app.task(executor="process")
    def process_task(x: int) -> int:
        return x

    bad: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (process_task, (1,), {"countdown": -1}),
        (process_task, (1,), {"eta": datetime(2030, 1, 1)}),  # naive
        (process_task, (1,), {"executor": "nowhere"}),
        (process_task, (1,), {"bogus": 1}),
        (process_task, (1, 2), {}),
        (thread_task, (), {"kwargs": {"y": 1}}),
        (thread_task, (1,), {"retries": -1}),
    ]

    @app.task(executor="process")
    def submits_badly() -> list[list[str]]:
        raised = []
        for task, args, options in bad:
            try:
                task.apply_async(args, **options)
            except (TypeError, ValueError) as exc:
                raised.append([type(exc).__name__, str(exc)])
        try:
            thread_task.delay(threading.Lock())
        except TypeError as exc:
            raised.append([type(exc).__name__, str(exc)])
        return raised

    raised = submits_badly.delay().get(timeout=30)
    here = []
    for task, args, options in bad:
        with pytest.raises((TypeError, ValueError)) as info:
            task.apply_async(args, **options)
        here.append([type(info.value).__name__, str(info.value)])
    assert raised[:-1] == here
    assert raised[-1][0] == "TypeError"
    assert "cannot submit task" in raised[-1][1] and "argument 0 is a _thread.lock" in raised[-1][1]
    assert [r.task_name for r in app.results()] == [submits_badly.name]  # nothing else stored
    assert app.store.count() == 1


@pytest.mark.timeout(60)
def test_a_task_waiting_for_its_subtask_is_never_queued_behind(app: nbtasks.App) -> None:
    """The waiting task's worker takes nothing into its queue while the task runs: its subtask
    waits here for the other worker, busy for a second, instead of behind its own parent."""

    @app.task(executor="process")
    def nap(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    nap.delay(0).get(timeout=20)
    pool_pids(app)  # both ready and idle: the next task goes to the first one

    @app.task(executor="process")
    def waits(path: str) -> tuple[int, int]:
        wait_until(lambda: Path(path).exists())  # the other worker is busy now
        return nap.delay(0).get(timeout=20), os.getpid()

    marker = app.store.path.parent / "busy"
    waiting = waits.delay(str(marker))  # the first idle worker
    wait_until(lambda: waiting.refresh().status is nbtasks.TaskStatus.RUNNING)
    busy = nap.delay(1.0)  # the other one
    wait_until(lambda: busy.refresh().status is nbtasks.TaskStatus.RUNNING)
    marker.touch()
    sub_pid, waiting_pid = waiting.get(timeout=30)
    assert sub_pid == busy.get(timeout=5) != waiting_pid


def rendezvous(folder: str, n: int) -> tuple[int, int]:
    """Wait (at most 20 s) until ``n`` calls of it run at once; (its pid, how many did)."""
    Path(folder, str(os.getpid())).touch()
    try:
        wait_until(lambda: len(os.listdir(folder)) >= n, timeout=20)
    except AssertionError:
        pass
    return os.getpid(), len(os.listdir(folder))


@pytest.mark.timeout(90)
def test_tasks_submitted_while_the_workers_start_wait_for_each_of_them(
    app: nbtasks.App, tmp_path: Path
) -> None:
    """Two tasks submitted at once into a pool that is still starting run side by side: the
    second is not queued behind the first worker to be ready while the other one starts (a
    spawned worker takes ~100 ms longer than a forked one)."""
    meet = app.task(rendezvous, executor="process")
    folder = tmp_path / "met"
    folder.mkdir()
    first, second = (meet.delay(str(folder), 2) for _ in range(2))
    (pid1, seen1), (pid2, seen2) = first.get(timeout=40), second.get(timeout=40)
    assert pid1 != pid2 and seen1 == seen2 == 2


@pytest.mark.timeout(60)
def test_a_short_task_never_waits_behind_a_long_running_one(
    app: nbtasks.App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task queues in a busy worker only while that worker's task is young (PREFETCH_AGE):
    here every running task counts as old, so the short one waits in the pool's queue and
    runs on the first worker to free up, while the other still runs."""
    from nbtasks.executors.process import pool

    monkeypatch.setattr(pool, "PREFETCH_AGE", 0.0)

    @app.task(executor="process")
    def until(path: str | None) -> int:
        if path is not None:
            wait_until(lambda: Path(path).exists(), timeout=30)
        return os.getpid()

    until.delay(None).get(timeout=20)
    pool_pids(app)  # both ready and idle
    long_gate, short_gate = tmp_path / "long", tmp_path / "short"
    long = until.delay(str(long_gate))  # the first worker
    other = until.delay(str(short_gate))  # the second
    wait_until(
        lambda: long.refresh().status is other.refresh().status is nbtasks.TaskStatus.RUNNING
    )
    short = until.delay(None)
    short_gate.touch()
    assert short.get(timeout=20) == other.get(timeout=5)
    assert long.refresh().status is nbtasks.TaskStatus.RUNNING
    long_gate.touch()
    assert long.get(timeout=20) != other.get()


@pytest.mark.timeout(60)
def test_submits_with_one_worker_and_from_the_task_s_threads(tmp_path: Path) -> None:
    """One worker, busy with the submitting task: its process subtasks wait here (the submit
    returns at once), thread subtasks run; several threads of a task submit at once."""
    from concurrent.futures import ThreadPoolExecutor

    app = nbtasks.App(store=tmp_path / "store", process_workers=1)
    try:

        @app.task
        def inc(x: int) -> int:
            return x + 1

        @app.task(executor="process")
        def later(x: int) -> int:
            return x * 10

        @app.task(executor="process")
        def submitter(n: int) -> tuple[list[int], list[str]]:
            # No worker for them yet: a submit that waited for one would never return.
            queued = [later.delay(i).id for i in range(3)]
            with ThreadPoolExecutor(4) as pool:
                values = list(pool.map(lambda i: inc.delay(i).get(timeout=20), range(n)))
            return values, queued

        values, queued = submitter.delay(8).get(timeout=30)
        assert values == list(range(1, 9))
        assert [app.result(i).get(timeout=20) for i in queued] == [0, 10, 20]
    finally:
        app.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("soft", ["signal", "watchdog"])
def test_a_soft_time_limit_during_submits_leaves_the_channel_whole(
    app: nbtasks.App, monkeypatch: pytest.MonkeyPatch, soft: str
) -> None:
    """The soft limit (SIGALRM, or the watchdog where there is none) lands while the task sends
    or reads a submit's messages: it is raised once the message is through, so the next submit
    still works. The workers start at the first submit, with the mechanism set here."""
    if soft == "watchdog":
        monkeypatch.setenv("NBTASKS_TEST_SOFT_LIMIT", "watchdog")

    @app.task
    def inc(x: int) -> int:
        return x + 1

    @app.task(executor="process", soft_timeout=0.3)
    def keeps_submitting() -> tuple[int, int]:
        n, t0 = 0, time.monotonic()
        try:
            while time.monotonic() - t0 < 10:
                inc.delay(n)
                n += 1
        except nbtasks.SoftTimeLimitExceeded:
            pass
        return n, inc.delay(41).get(timeout=20)

    n, value = keeps_submitting.delay().get(timeout=30)
    assert n > 10 and value == 42


@pytest.mark.timeout(60)
def test_a_detached_task_cannot_submit(app: nbtasks.App) -> None:
    """It may outlive the notebook's process, which would own what it submits: refused,
    with the fix in the message."""

    @app.task
    def plain() -> int:
        return 1

    @app.task(executor="process", detach=True)
    def alone() -> str:
        try:
            plain.delay()
        except nbtasks.NbtasksError as exc:
            return str(exc)
        return "submitted"

    message = alone.delay().get(timeout=30)
    assert "runs detached (detach=True), so it cannot submit other tasks" in message
    assert "detached_task.s() | next_task.s()" in message and "without detach=True" in message
    assert [r.task_name for r in app.results()] == [alone.name]


# ----------------------------------------------------------------------------- the child's state


@pytest.mark.timeout(30)
def test_progress_state_metadata_and_output_come_from_the_worker(app: nbtasks.App) -> None:
    @app.task(executor="process", bind=True)
    def chatty(self: nbtasks.Task, n: int) -> str:
        import ctypes
        import logging

        logging.getLogger("chatty").warning("a log line")
        print("a print line")
        os.write(1, b"an fd-level line\n")
        libc = ctypes.CDLL(None)
        libc.printf(b"a C stdio line\n")  # buffered by libc: flushed into the output at the end
        self.set_metadata(user="dkl")
        self.update_state(state="PROGRESS", meta={"phase": 1})
        for i in range(n):
            time.sleep(0.05)
            self.progress(i + 1, n, "step")
        return "ok"

    r = chatty.delay(30)
    first = wait_until(lambda: r.refresh().progress)  # mirrored from the store, live
    wait_until(lambda: r.refresh().progress.current > first.current)
    assert r.status is nbtasks.TaskStatus.RUNNING and r.state == "PROGRESS"
    assert r.result == {"phase": 1} and r.metadata == {"user": "dkl"}
    assert r.get(timeout=20) == "ok"
    out = r.output
    for line in ("a log line", "a print line", "an fd-level line", "a C stdio line"):
        assert line in out, out
    assert r.progress.current == 30 and r.state == "SUCCESSFUL"
    other = nbtasks.App(store=app.store.path)  # the store has it all, written by the worker
    try:
        stored = wait_until(lambda: (s := other.result(r.id)).is_finished and s)
        assert stored.output == out and stored.metadata == {"user": "dkl"}
        assert stored.return_value == "ok"
    finally:
        other.shutdown()


class Noisy(nbtasks.Task):
    """A class-based process task whose hooks print (at the Python level and to fd 1)."""

    name = "tests.Noisy"
    executor = "process"

    def run(self, mode: str) -> str:
        print(f"run {mode} attempt {self.request.retries}")
        if mode == "fail":
            raise ValueError("boom")
        if mode == "retry" and self.request.retries == 0:
            raise self.retry(countdown=1.0, max_retries=1)
        return mode

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        print(f"on_success {retval}")

    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        print(f"on_failure {type(exc).__name__}")
        os.write(1, b"on_failure at fd level\n")

    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        print(f"on_retry {type(exc).__name__}")

    def after_return(self, status: str, *rest: Any) -> None:
        print(f"after_return {status}")


@pytest.mark.timeout(30)
def test_output_printed_by_hooks_is_kept(app: nbtasks.App) -> None:
    """The hooks run in the worker after the final status is recorded; what they print is in
    the task's output too, in memory here and in the store."""
    noisy = app.register(Noisy)
    ok = noisy.delay("ok").wait(20)
    assert ok.status is nbtasks.TaskStatus.SUCCESSFUL
    assert ok.output.splitlines() == [
        "run ok attempt 0",
        "on_success ok",
        "after_return SUCCESSFUL",
    ]
    failed = noisy.delay("fail").wait(20)
    assert failed.status is nbtasks.TaskStatus.FAILED
    assert failed.output.splitlines() == [
        "run fail attempt 0",
        "on_failure ValueError",
        "on_failure at fd level",
        "after_return FAILED",
    ]
    retried = noisy.delay("retry")
    # Between the attempts (a 1 s countdown): the first attempt's output, its hook's included.
    wait_until(lambda: retried.refresh().state == "RETRY")
    assert retried.output.splitlines() == ["run retry attempt 0", "on_retry Retry"]
    assert retried.wait(20).output.splitlines() == [
        "run retry attempt 1",
        "on_success retry",
        "after_return SUCCESSFUL",
    ]
    other = nbtasks.App(store=app.store.path)  # what the worker committed
    try:
        for r in (ok, failed, retried):
            stored = wait_until(lambda r=r: (s := other.result(r.id)).is_finished and s)
            wait_until(lambda r=r, s=stored: s.refresh().output == r.output)
    finally:
        other.shutdown()


@POSIX_ONLY
@pytest.mark.timeout(30)
def test_workers_ignore_sigint(app: nbtasks.App) -> None:
    """The notebook's Interrupt button signals the kernel's whole process group."""

    @app.task(executor="process")
    def nap(gate: str) -> str:
        Path(gate).read_text()  # a FIFO: until the test writes to it
        return "done"

    gate = app.store.path.parent / "gate"
    os.mkfifo(gate)
    r = nap.delay(str(gate))
    wait_until(lambda: r.refresh().status is nbtasks.TaskStatus.RUNNING)
    for pid in pool_pids(app):
        os.kill(pid, signal.SIGINT)
    gate.write_text("go")  # the task still runs: SIGINT did not end it
    assert r.get(timeout=20) == "done"


# ----------------------------------------------------------------------------- lifecycle


@pytest.mark.timeout(60)
def test_shutdown_stops_the_pool_leaves_detached_tasks_and_no_zombies(tmp_path: Path) -> None:
    app = nbtasks.App(store=tmp_path / "store", process_workers=2)

    @app.task(executor="process")
    def quick(x: int) -> int:
        return x

    @app.task(executor="process", detach=True)
    def lasting(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    assert [r.get(timeout=20) for r in [quick.delay(i) for i in range(10)]] == list(range(10))
    far = lasting.delay(1.5)
    wait_until(lambda: app.store.read_record(far.id)["status"] == "RUNNING")  # committed
    ex = app._runtime._executors["process"]
    zygote = ex._launcher.zygote_pid if ex.start_method == "fork" else None
    workers = pool_pids(app)
    detached = psutil.Process(int(app.store.read_record(far.id)["owner"].split(":")[-2]))
    app.shutdown()
    assert not any(alive(p) for p in [*([zygote] if zygote else []), *workers])
    assert detached.is_running() and detached.status() != psutil.STATUS_ZOMBIE
    zombies = [c for c in psutil.Process().children(recursive=True) if c.status() == "zombie"]
    assert zombies == []
    other = nbtasks.App(store=tmp_path / "store")
    try:
        result = other.result(far.id)
        assert result.status is nbtasks.TaskStatus.RUNNING  # a new App's sweep leaves it
        assert result.wait(20).return_value == detached.pid
    finally:
        other.shutdown()
    wait_until(lambda: not alive(detached.pid))


@pytest.mark.timeout(30)
def test_import_nbtasks_stays_light(tmp_path: Path) -> None:
    """cloudpickle and the process executor load on the first process task only."""
    code = f"""
import sys, nbtasks
app = nbtasks.App(store={str(tmp_path / "s")!r})
t = app.task(lambda: 1)
assert t.delay().get(timeout=10) == 1
print(sorted(m for m in ("cloudpickle", "nbtasks.executors.process",
                         "nbtasks.executors.process.child") if m in sys.modules))
p = app.task(lambda: 2, executor="process", name="p")
assert p.delay().get(timeout=20) == 2
print(sorted(m for m in ("cloudpickle", "nbtasks.executors.process") if m in sys.modules))
app.shutdown()
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        "[]",
        "['cloudpickle', 'nbtasks.executors.process']",
    ]


# ----------------------------------------------------------------------------- orphans


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_parent_sigkilled_orphans_interrupted_detached_live_then_done(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = run_script("process_orphans.py", str(store))
    assert done.returncode == -signal.SIGKILL, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    in_thread, in_pool, far, forever = info["ids"]
    app = nbtasks.App(store=store)  # opening the store sweeps it
    try:
        r = app.result(in_thread)
        assert r.status is nbtasks.TaskStatus.INTERRUPTED
        assert f"pid {info['pid']}" in (r.reason or "") and "is gone" in (r.reason or "")
        with pytest.raises(nbtasks.TaskInterrupted):
            r.get()
        pool = app.result(in_pool).wait(10)  # its worker noticed its parent die
        assert pool.status is nbtasks.TaskStatus.INTERRUPTED
        assert f"parent process pid {info['pid']}" in (pool.reason or "")
        # The detached task lives on: RUNNING, its progress moving, then its result.
        live = app.result(far)
        assert live.status is nbtasks.TaskStatus.RUNNING
        before = wait_until(lambda: live.refresh().progress)
        wait_until(lambda: (p := live.refresh().progress) is None or p.current > before.current)
        assert live.wait(20).return_value == 300
        assert live.progress.message == "step 30"
        # The other detached task is cancelled from here; it terminates itself.
        pid = int(info["owners"][forever].split(":")[-2])
        assert alive(pid)
        stop = app.result(forever)
        assert stop.status is nbtasks.TaskStatus.RUNNING and stop.cancel() is True
        assert stop.wait(10).status is nbtasks.TaskStatus.CANCELLED
        wait_until(lambda: not alive(pid))
    finally:
        app.shutdown()


@pytest.mark.timeout(30)
def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path: Path) -> None:
    """The sweep compares pid and start time: this pid with another start time is gone."""
    app = nbtasks.App(store=tmp_path / "store")

    @app.task
    def noop() -> None:
        pass

    r = noop.apply_async(countdown=60)
    app.store.change(r._live, owner=f"{app.store.owner.rsplit(':', 1)[0]}:1")  # pid: this one
    app.store.flush()
    other = nbtasks.App(store=tmp_path / "store")
    try:
        stored = other.result(r.id)
        assert stored.status is nbtasks.TaskStatus.INTERRUPTED
        assert f"pid {os.getpid()}" in (stored.reason or "")
    finally:
        other.shutdown()
        app.shutdown(wait=False)


@pytest.mark.timeout(30)
def test_an_owner_on_another_host_is_gone_when_its_heartbeat_is_stale(tmp_path: Path) -> None:
    """Another host's pids say nothing here: a worker's heartbeat tells whether it lives."""
    app = nbtasks.App(store=tmp_path / "store")

    @app.task
    def noop() -> None:
        pass

    stale, fresh = noop.apply_async(countdown=60), noop.apply_async(countdown=60)
    now = time.time()
    app.store.change(stale._live, owner="elsewhere:123:456", heartbeat=now - 120)
    app.store.change(fresh._live, owner="elsewhere:124:456", heartbeat=now - 5)
    app.store.flush()
    other = nbtasks.App(store=tmp_path / "store")
    try:
        gone = other.result(stale.id)
        assert gone.status is nbtasks.TaskStatus.INTERRUPTED
        assert "pid 123 on elsewhere is gone (last heartbeat" in (gone.reason or "")
        assert other.result(fresh.id).status is nbtasks.TaskStatus.READY
    finally:
        other.shutdown()
        app.shutdown(wait=False)


# ----------------------------------------------------------------------------- a real kernel

KERNEL_SETUP = """
import os, threading, time, nbtasks

@nbtasks.task(executor="process", detach=True)
def far(n, dt):
    ctx = nbtasks.current()
    for i in range(n):
        time.sleep(dt)
        ctx.progress(i + 1, n, f"step {i + 1}")
    return n

@nbtasks.task(executor="process", detach=True)
def forever():
    threading.Event().wait()  # until it is cancelled (terminated)

@nbtasks.task(executor="process")
def in_pool(seconds):
    time.sleep(seconds)
    return os.getpid()

@nbtasks.task
def in_thread():
    threading.Event().wait()  # until the kernel is restarted
"""


@pytest.mark.kernel
@pytest.mark.timeout(90)
def test_detached_task_survives_a_kernel_restart(kernel: KernelDriver) -> None:
    kernel.run(KERNEL_SETUP)
    # Interrupt (SIGINT to the kernel's process group) does not reach the workers.
    kernel.run("short = in_pool.delay(1.0)\nwhile short.refresh().status.value == 'READY': pass")
    kernel.km.interrupt_kernel()
    assert kernel.value("short.get(timeout=20) != os.getpid()") is True
    kernel.run(
        "a, b = far.delay(25, 0.1), forever.delay()\n"
        "c, d = in_pool.delay(60), in_thread.delay()\n"
        "store = nbtasks.default_app().store\n"
        "store.flush()\n"
        "while not all(store.read_record(x.id)['status'] == 'RUNNING' for x in (a, b, c, d)):\n"
        "    time.sleep(0.02)\n"
        "    store.flush()"
    )
    ids = kernel.value("[a.id, b.id, c.id, d.id]")
    kernel_pid = kernel.pid()
    kernel.km.restart_kernel(now=False)  # graceful: ipykernel terminates its process group
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.pid() != kernel_pid
    kernel.run(f"import time, nbtasks\nids = {ids!r}\nR = [nbtasks.AsyncResult(i) for i in ids]")
    assert kernel.value("[r.status.value for r in R]") == [
        "RUNNING",
        "RUNNING",
        "INTERRUPTED",
        "INTERRUPTED",
    ]
    first = kernel.value("R[0].refresh().progress.current")
    wait_until(lambda: kernel.value("R[0].refresh().progress.current") > first)  # live here
    assert kernel.value("R[1].cancel()") is True  # a detached task cancelled from here
    assert kernel.value("R[1].wait(10).status.value") == "CANCELLED"
    assert kernel.value("R[0].get(timeout=30)") == 25
    assert kernel.value("R[0].progress.message") == "step 25"


# ----------------------------------------------------------------------------- the kept payload
# A process task's pickled payload is kept between submits and made again when what it captures
# by value changes (ProcessExecutor.encode): real workers run each payload, so a stale one
# would show in the results.

OFFSET = 100


def test_payload_is_kept_for_the_same_task_and_made_again_when_a_global_is_rebound(
    app: nbtasks.App,
) -> None:
    global OFFSET

    def shifted(x: int) -> int:  # nested: cloudpickle copies it, and OFFSET, by value
        return x + OFFSET

    t = app.task(shifted, executor="process")
    assert [r.get(timeout=30) for r in [t.delay(1), t.delay(2)]] == [101, 102]
    ex = app._runtime._executors["process"]
    opts, _ = resolve_options(t, {}, 0.0)
    first = ex.encode(t, opts)
    assert ex.encode(t, opts) is first  # kept: no second pickle
    OFFSET = 1000  # a notebook cell rebinding a global the task uses
    try:
        assert t.delay(1).get(timeout=30) == 1001  # the worker ran a new payload
        assert ex.encode(t, opts) is not first
        # Per-call options make their own payload, and the stored result stays right.
        assert t.apply_async((5,), priority=3).get(timeout=30) == 1005
    finally:
        OFFSET = 100


def test_a_redefined_task_function_is_pickled_again(app: nbtasks.App) -> None:
    def version() -> int:
        return 1

    t1 = app.task(version, executor="process", name="version")
    assert t1.delay().get(timeout=30) == 1

    def version() -> int:  # redefined, as a re-run cell does
        return 2

    t2 = app.task(version, executor="process", name="version")
    assert t2.delay().get(timeout=30) == 2
