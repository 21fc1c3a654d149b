"""The process executor's two ways to start workers (SPEC §7, §8 "Platforms"): the option that
picks one, the spawn path's handshake, soft time limits by the watchdog, and real scripts run in
interpreters where what macOS and Windows lack is taken away (a ``sitecustomize`` on
PYTHONPATH), so they take the portable paths.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, wait_until

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
    """Where there is no SIGALRM: in the task, and while it sends or reads messages (a submit's)
    only once they are through, so the channel stays whole."""
    monkeypatch.setenv("NBTASKS_TEST_SOFT_LIMIT", "watchdog")
    app = nbtasks.App(store=tmp_path / "store", process_workers=1, process_start=start)

    @app.task
    def inc(x: int) -> int:
        return x + 1

    @app.task(executor="process", soft_timeout=0.3)
    def polite() -> str:
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except nbtasks.SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

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

    @app.task(executor="process", soft_timeout=0.2)
    def rude() -> None:
        while True:
            time.sleep(0.01)

    try:
        assert polite.delay().get(timeout=30) == "cleaned up"
        n, value = keeps_submitting.delay().get(timeout=30)
        assert n > 10 and value == 42
        r = rude.delay().wait(30)
        [error] = r.errors
        assert error.exception_class_path == "nbtasks.SoftTimeLimitExceeded"
        assert "soft_timeout" in error.message
    finally:
        app.shutdown(wait=True, cancel_pending=True)


# ----------------------------------------------------------------------------- other systems

SITECUSTOMIZE = """
import os, signal, socket, sys
lack = os.environ.get("NBTASKS_SIMULATE", "")
if lack in ("macos", "windows"):
    del socket.SOCK_SEQPACKET  # macOS: no SOCK_SEQPACKET for AF_UNIX sockets
if lack == "windows":
    if not os.environ.get("NBTASKS_SIMULATE_KEEP_FCNTL"):
        sys.modules["fcntl"] = None  # import fcntl fails
    del os.fork
    del socket.AF_UNIX
    del signal.SIGALRM, signal.setitimer
"""

SCRIPT = """
import json, os, sys, time, signal, socket
import nbtasks

def main():
    app = nbtasks.App(store=sys.argv[1], process_workers=2)
    out = {"start": app._runtime.executor("process").start_method}

    @app.task
    def in_thread(x):
        return x + 1

    @app.task(executor="process")
    def square(x):
        print("squaring", x)
        return x * x

    @app.task(executor="process")
    def crash():
        os._exit(3)

    @app.task(executor="process", timeout=0.5)
    def slow():
        time.sleep(30)

    @app.task(executor="process", soft_timeout=0.3)
    def polite():
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except nbtasks.SoftTimeLimitExceeded:
            return "cleaned up"

    @app.task(executor="process")
    def forever():
        while True:
            time.sleep(0.01)

    out["thread"] = in_thread.delay(1).get(timeout=30)
    r = square.delay(7)
    out["square"] = r.get(timeout=60)
    out["output"] = r.output
    out["map"] = square.map(range(6)).get(timeout=60)
    c = crash.delay().wait(60)
    out["crash"] = [c.status.value, c.errors[-1].message]
    t = slow.delay().wait(60)
    out["timeout"] = [t.status.value, t.errors[-1].exception_class_path]
    out["soft"] = polite.delay().get(timeout=60)
    f = forever.delay()
    while f.refresh().status.value != "RUNNING":
        time.sleep(0.01)
    f.cancel()
    out["cancel"] = f.wait(60).status.value
    out["ids"] = [r.id, c.id]
    app.shutdown()
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""

READ_BACK = """
import json, sys
import nbtasks
app = nbtasks.App(store=sys.argv[1])
print(json.dumps([app.result(i).status.value for i in sys.argv[2:]]))
app.shutdown()
"""


@pytest.mark.parametrize("system", ["macos", "windows"])
def test_real_scripts_where_mechanisms_are_missing(tmp_path: Path, system: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "read_back.py").write_text(READ_BACK)
    env = {k: v for k, v in os.environ.items() if k != "NBTASKS_PROCESS_START"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env["NBTASKS_SIMULATE"] = system
    store = str(tmp_path / "store")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, timeout=120
        )

    probe = run("-c", "import socket; print(hasattr(socket, 'SOCK_SEQPACKET'))")
    assert probe.stdout.strip() == "False", probe.stderr  # the simulation is in place
    done = run(str(tmp_path / "script.py"), store)
    if "import of fcntl halted" in done.stderr and "nbtasks/store/" in done.stderr:
        # The portable store (nbtasks/store/, SPEC §10) is built beside this work; until it is
        # in, `import nbtasks` fails where there is no fcntl.
        pytest.xfail("the store still imports fcntl")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["start"] == "spawn"
    assert out["thread"] == 2 and out["square"] == 49 and "squaring 7" in out["output"]
    assert out["map"] == [0, 1, 4, 9, 16, 25]
    assert out["crash"][0] == "FAILED" and "exited with code 3" in out["crash"][1]
    assert out["timeout"] == ["FAILED", "nbtasks.TaskTimeout"]
    assert out["soft"] == "cleaned up"
    assert out["cancel"] == "CANCELLED"
    back = run(str(tmp_path / "read_back.py"), store, *out["ids"])
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == ["SUCCESSFUL", "FAILED"]
    listed = run("-m", "nbtasks", "list", "--store", store)
    assert listed.returncode == 0, listed.stderr
    assert "square" in listed.stdout and "crash" in listed.stdout


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
