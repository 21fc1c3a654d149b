"""The process executor's two ways to start workers (SPEC §7, §8 "Platforms"): the option that
picks one, the spawn path's handshake, soft time limits by the watchdog, and output capture
without ``poll``. Real scripts in interpreters where what macOS and Windows lack is taken away:
tests/integration/test_platforms.py.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import POSIX_ONLY, wait_until

import nbtasks
from nbtasks import executors

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def spawn_app(tmp_path: Path) -> Iterator[nbtasks.App]:
    app = nbtasks.App(store=tmp_path / "store", process_workers=1, process_start="spawn")
    try:
        yield app
    finally:
        app.shutdown(wait=True, cancel_pending=True)


# ----------------------------------------------------------------------------- the option


def test_process_start_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"process_start must be one of 'auto', 'fork', 'spawn'"):
        nbtasks.App(store=tmp_path / "a", process_start="forkserver")
    monkeypatch.setenv("NBTASKS_PROCESS_START", "threads")
    with pytest.raises(ValueError, match=r"\$NBTASKS_PROCESS_START must be one of .*'threads'"):
        nbtasks.App(store=tmp_path / "b")
    monkeypatch.setenv("NBTASKS_PROCESS_START", "spawn")
    assert executors.resolve_process_start(None) == "spawn"
    assert executors.resolve_process_start("auto") in ("fork", "spawn")


@POSIX_ONLY
def test_fork_where_it_is_impossible_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executors, "fork_unavailable", lambda: "this Python has no os.fork")
    with pytest.raises(ValueError, match=r"'fork' is not possible here: .*os\.fork.*'spawn'"):
        nbtasks.App(store=tmp_path / "a", process_start="fork")
    assert executors.resolve_process_start("auto") == "spawn"


# ----------------------------------------------------------------------------- the handshake


def test_a_connection_with_a_wrong_token_is_refused(spawn_app: nbtasks.App) -> None:
    @spawn_app.task(executor="process")
    def pid() -> int:
        return os.getpid()

    first = pid.delay().get(timeout=30)
    ex = spawn_app._runtime._executors["process"]
    port = ex._launcher.port
    for payload in (b"x" * 32, b"short"):  # a wrong token, and one that stops halfway
        intruder = socket.create_connection(("127.0.0.1", port))
        intruder.sendall(payload)
        if len(payload) == 32:
            assert intruder.recv(1) == b""  # closed on it
        intruder.close()
    assert pid.delay().get(timeout=30) == first  # the real worker still works
    assert len(ex._procs) == 1


@POSIX_ONLY
def test_a_spawned_worker_killed_names_the_signal(spawn_app: nbtasks.App) -> None:
    @spawn_app.task(executor="process")
    def nap() -> None:
        time.sleep(60)

    r = nap.delay()
    wait_until(lambda: r.refresh().status is nbtasks.TaskStatus.RUNNING, timeout=30)
    ex = spawn_app._runtime._executors["process"]
    [busy] = [p.pid for p in ex._procs.values() if p.jobs]
    os.kill(busy, signal.SIGKILL)
    r.wait(30)
    assert r.errors[-1].exception_class_path == "nbtasks.WorkerLost"
    assert "was killed by SIGKILL" in r.errors[-1].message


# ----------------------------------------------------------------------------- the watchdog


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_the_watchdog_raises_soft_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """Where there is no SIGALRM: in the task, between its bytecodes (while it sends or reads a
    submit's messages only once they are through: test_process.py's
    test_a_soft_time_limit_during_submits_leaves_the_channel_whole, run with both mechanisms)."""
    monkeypatch.setenv("NBTASKS_TEST_SOFT_LIMIT", "watchdog")
    app = nbtasks.App(store=tmp_path / "store", process_workers=1, process_start=start)

    @app.task(executor="process", soft_timeout=0.3)
    def polite() -> str:
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except nbtasks.SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    @app.task(executor="process", soft_timeout=0.2)
    def rude() -> None:
        while True:
            time.sleep(0.01)

    try:
        assert polite.delay().get(timeout=30) == "cleaned up"
        r = rude.delay().wait(30)
        [error] = r.errors
        assert error.exception_class_path == "nbtasks.SoftTimeLimitExceeded"
        assert "soft_timeout" in error.message
    finally:
        app.shutdown(wait=True, cancel_pending=True)


def test_output_capture_without_poll_drains_up_to_a_marker() -> None:
    """Where pipes cannot be non-blocking (Windows before 3.12), the reader thread does blocking
    reads and ``drain`` waits for its marker: everything written before it is routed."""
    from nbtasks.executors.process.output import Output

    class Ctx:
        text = ""

        def write_output(self, text: str) -> None:
            self.text += text

    r, w = os.pipe()
    out = Output(r, w, None, blocking=True)
    out.ctx = ctx = Ctx()
    out.start()
    try:
        for i in range(200):
            os.write(w, f"line {i}\n".encode())
        out.drain()
        assert ctx.text == "".join(f"line {i}\n" for i in range(200))
        os.write(w, b"\x00nbtasks-dr")  # looks like the start of a marker, but is not one
        os.write(w, b"ain? no\n")
        out.drain()
        assert ctx.text.endswith("\x00nbtasks-drain? no\n")
    finally:
        os.close(w)
