"""Supervision on the injected clock: timers, expiry, the cache TTL, time limits, retry backoff and
the progress throttle, driven by a FakeClock that the test moves on (no sleeping, exact times).

``clock.advance()`` returns once the supervisor has handled the new time, so what it has not done
by then it does not do before the next ``advance()``. A decision the supervisor takes at a tick
(time limits, progress samples) needs it waiting on the clock first: ``wait_until(clock.waiting)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import FakeClock, Gate, wait_until

import nbtasks
from nbtasks import Context, SoftTimeLimitExceeded, TaskStatus
from nbtasks._model import SYSTEM_CLOCK


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(tmp_path: Path, clock: FakeClock) -> Iterator[nbtasks.App]:
    a = nbtasks.App(store=tmp_path / "store", clock=clock, workers=2)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


def _running_on_the_clock(gate: Gate, clock: FakeClock) -> None:
    """The task has reached its gate and the supervisor waits on the fake clock: what the test
    advances now is seen by both."""
    gate.wait_reached()
    wait_until(clock.waiting)


def _assert_timed_out(r: nbtasks.TaskResult) -> None:
    r.wait(10)
    assert r.status is TaskStatus.FAILED
    assert r.errors[-1].exception_class_path == "nbtasks.TaskTimeout"


def test_a_countdown_starts_the_task_once_its_seconds_have_passed(
    app: nbtasks.App, clock: FakeClock
) -> None:
    started = threading.Event()

    @app.task
    def later() -> str:
        started.set()
        return "ran"

    r = later.apply_async(countdown=5)
    clock.advance(4.9)
    assert not started.is_set()
    assert r.status is TaskStatus.READY
    clock.advance(0.2)
    assert r.get(10) == "ran"


def test_an_eta_starts_the_task_at_that_time_of_the_clock(
    app: nbtasks.App, clock: FakeClock
) -> None:
    started = threading.Event()

    @app.task
    def later() -> str:
        started.set()
        return "ran"

    eta = datetime.fromtimestamp(clock.time() + 60, UTC)
    r = later.apply_async(eta=eta)
    clock.advance(59.9)
    assert not started.is_set()
    assert r.status is TaskStatus.READY
    clock.advance(0.2)
    assert r.get(10) == "ran"


@pytest.mark.parametrize(("waited", "expected"), [(4.9, TaskStatus.SUCCESSFUL), (5.1, None)])
def test_a_task_that_has_not_started_before_it_expires_is_cancelled(
    tmp_path: Path, clock: FakeClock, waited: float, expected: TaskStatus | None
) -> None:
    app = nbtasks.App(store=tmp_path / "store", clock=clock, workers=1)
    gate = Gate()

    @app.task
    def blocker() -> None:
        gate.pause()  # holds the only worker

    @app.task
    def short() -> str:
        return "ran"

    try:
        b = blocker.delay()
        gate.wait_reached()
        r = short.apply_async(expires=5)
        clock.advance(waited)
        gate.release()
        b.get(10)
        r.wait(10)
        if expected is None:
            assert r.status is TaskStatus.CANCELLED
            assert r.reason == "expired"
        else:
            assert r.status is expected
            assert r.result == "ran"
    finally:
        app.shutdown(wait=True, cancel_pending=True)


def test_a_cached_result_is_reused_until_its_ttl_has_passed(
    app: nbtasks.App, clock: FakeClock
) -> None:
    runs: list[int] = []

    @app.task(cache=True, cache_ttl=10)
    def square(x: int) -> int:
        runs.append(x)
        return x * x

    first = square.delay(3)
    assert first.get(10) == 9
    clock.advance(9.9)
    again = square.delay(3)
    assert again.id == first.id
    assert again.cached
    clock.advance(0.2)
    fresh = square.delay(3)
    assert fresh.id != first.id
    assert fresh.get(10) == 9
    assert runs == [3, 3]


def test_a_thread_task_past_its_timeout_stops_at_its_next_check(
    app: nbtasks.App, clock: FakeClock
) -> None:
    gate = Gate()

    @app.task(timeout=5)
    def slow(ctx: Context) -> str:
        gate.pause()
        ctx.check_cancelled()  # at 4.9 s: within the limit
        gate.pause()
        ctx.check_cancelled()  # at 5.1 s: TaskTimeout
        return "not stopped"

    r = slow.delay()
    _running_on_the_clock(gate, clock)
    clock.advance(4.9)
    gate.release()
    gate.wait_reached()  # the first check passed
    clock.advance(0.2)
    gate.release()
    _assert_timed_out(r)


def test_hard_timeout_of_a_task_that_never_checks_discards_its_value(
    app: nbtasks.App, clock: FakeClock
) -> None:
    """(From tests/test_context.py, where it slept past a real timeout.)"""
    gate = Gate()

    @app.task(timeout=5)
    def oblivious() -> str:
        gate.pause()  # busy, and never checks
        return "too late"

    r = oblivious.delay()
    _running_on_the_clock(gate, clock)
    clock.advance(5.1)
    gate.release()
    _assert_timed_out(r)


def test_a_thread_task_past_its_soft_timeout_gets_soft_time_limit_exceeded(
    app: nbtasks.App, clock: FakeClock
) -> None:
    gate = Gate()

    @app.task(soft_timeout=5)
    def slow(ctx: Context) -> str:
        gate.pause()
        ctx.check_cancelled()  # at 4.9 s: within the limit
        try:
            gate.pause()  # the limit is raised in this thread once it runs Python code again
            ctx.check_cancelled()
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not stopped"

    r = slow.delay()
    _running_on_the_clock(gate, clock)
    clock.advance(4.9)
    gate.release()
    gate.wait_reached()
    clock.advance(0.2)
    gate.release()
    assert r.get(10) == "cleaned up"


def test_a_retry_waits_for_its_backoff_on_the_clock(app: nbtasks.App, clock: FakeClock) -> None:
    attempts: list[int] = []

    @app.task(retries=1, retry_backoff=2)
    def flaky(ctx: Context) -> str:
        attempts.append(ctx.retries)
        if ctx.retries == 0:
            raise ValueError("first attempt fails")
        return "second attempt"

    r = flaky.delay()
    supervisor = app._runtime.supervisor
    due = wait_until(lambda: supervisor.due(r.id))
    assert due == clock.monotonic() + 2  # retry_backoff * 2**0
    clock.advance(1.9)
    assert attempts == [0]
    assert r.refresh().state == "RETRY"
    clock.advance(0.2)
    assert r.get(10) == "second attempt"
    assert attempts == [0, 1]


def test_progress_is_sampled_at_most_once_a_tick_of_the_clock(
    app: nbtasks.App, clock: FakeClock
) -> None:
    gate = Gate()

    @app.task
    def steps(ctx: Context) -> None:
        ctx.progress(1, 10)
        gate.pause()
        ctx.progress(2, 10)
        ctx.progress(3, 10)
        gate.pause()

    def current() -> float | None:
        p = r.refresh().progress
        return None if p is None else p.current

    r = steps.delay()
    _running_on_the_clock(gate, clock)
    clock.advance(0.05)
    assert current() is None  # no tick yet: progress() itself writes nothing
    clock.advance(0.06)
    assert current() == 1
    gate.release()
    gate.wait_reached()
    clock.advance(0.05)
    assert current() == 1  # within the same tick: not sampled again
    clock.advance(0.06)
    assert current() == 3  # the last value of the tick, once
    gate.release()
    r.get(10)


def test_cancel_ready_never_runs(tmp_path: Path, clock: FakeClock) -> None:
    """(From tests/test_result.py, where it slept past a real countdown.) Its countdown comes
    and goes: a task due after it, on the one worker, runs, and it does not."""
    app = nbtasks.App(store=tmp_path / "store", clock=clock, workers=1)
    reader = nbtasks.App(store=tmp_path / "store")
    ran: list[str] = []

    @app.task
    def later(name: str) -> None:
        ran.append(name)

    try:
        r = later.apply_async(("cancelled",), countdown=5)
        assert r.cancel() is True
        assert r.status is TaskStatus.CANCELLED  # cancel() reloads
        marker = later.apply_async(("marker",), countdown=5)
        clock.advance(5.1)
        marker.get(10)
        assert ran == ["marker"]
        assert r.cancel() is False  # finished: no effect
        wait_until(lambda: reader.result(r.id).is_finished)
        assert reader.result(r.id).status is TaskStatus.CANCELLED
        assert reader.result(r.id).reason == "cancelled"
    finally:
        app.shutdown(wait=True, cancel_pending=True)
        reader.shutdown()


def test_a_cancel_request_from_another_app_is_polled_at_the_next_tick(
    app: nbtasks.App, clock: FakeClock, tmp_path: Path
) -> None:
    gate = Gate()
    checks: list[str] = []

    @app.task
    def slow(ctx: Context) -> None:
        gate.pause()
        ctx.check_cancelled()  # the request is in the store, not polled yet
        checks.append("passed")
        gate.pause()
        ctx.check_cancelled()  # polled at the tick: TaskCancelled

    r = slow.delay()
    gate.wait_reached()
    other = nbtasks.App(store=tmp_path / "store")
    try:
        assert other.result(r.id).cancel() is True  # a request: the owner acts on it
    finally:
        other.shutdown()
    wait_until(clock.waiting)
    clock.advance(0.05)
    gate.release()
    gate.wait_reached()
    assert checks == ["passed"]
    clock.advance(0.06)
    gate.release()
    assert r.wait(10).status is TaskStatus.CANCELLED
    assert r.reason == "cancelled"


def test_the_system_clock_waits_for_a_deadline_past_what_a_thread_wait_allows() -> None:
    """A far ETA: the supervisor's wait is cut to what a thread can wait, never an error."""
    condition, waiting, woke = threading.Condition(), threading.Event(), threading.Event()

    def waiter() -> None:
        with condition:
            waiting.set()
            SYSTEM_CLOCK.wait(condition, SYSTEM_CLOCK.monotonic() + threading.TIMEOUT_MAX * 2)
        woke.set()

    threading.Thread(target=waiter, daemon=True).start()
    assert waiting.wait(10)
    with condition:  # taken once the waiter waits in it
        condition.notify()
    assert woke.wait(10)


def test_an_inline_task_due_after_a_countdown_is_supervised_while_it_runs(
    app: nbtasks.App, clock: FakeClock
) -> None:
    """It runs on a thread of its own, not on the supervisor's, which enforces its timeout."""
    gate = Gate()

    @app.task(executor="inline", timeout=5)
    def later(ctx: Context) -> str:
        gate.pause()
        ctx.check_cancelled()
        return "not stopped"

    r = later.apply_async(countdown=1)
    clock.advance(1.1)  # returns once the supervisor has handed the task over
    _running_on_the_clock(gate, clock)
    clock.advance(5.1)
    gate.release()
    _assert_timed_out(r)
