"""What tests/integration/test_platforms.py runs in a simulated macOS or Windows interpreter
(``PYTHONPATH=tests/platforms/<system>``): ``python check_platform.py PHASE STORE``, where PHASE
is one of

- ``threads``: import nbtasks, thread tasks (delay, get, map), the store's lock and process
  identity as this system takes them;
- ``processes``: process tasks (a crash, hard and soft timeouts, cancel of a running task,
  ``map``), each worker reporting what its own interpreter lacks;
- ``read``: the store written by an earlier phase, read back (ids on stdin, one JSON list).

It prints one JSON object (the facts the test checks) as its last line of stdout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbtasks


def simulated() -> dict[str, Any]:
    """What this interpreter lacks: proof that the simulation applied."""
    import importlib.util

    try:
        import sitecustomize

        name = getattr(sitecustomize, "SIMULATED", None)
    except ImportError:
        name = None
    try:
        fcntl = importlib.util.find_spec("fcntl") is not None and bool(__import__("fcntl"))
    except ImportError:
        fcntl = False
    return {
        "simulated": name,
        "fork": hasattr(os, "fork"),
        "register_at_fork": hasattr(os, "register_at_fork"),
        "getuid": hasattr(os, "getuid"),
        "fcntl": fcntl,
        "AF_UNIX": hasattr(socket, "AF_UNIX"),
        "SOCK_SEQPACKET": hasattr(socket, "SOCK_SEQPACKET"),
        "send_fds": hasattr(socket, "send_fds"),
        "SIGALRM": hasattr(signal, "SIGALRM"),
        "setitimer": hasattr(signal, "setitimer"),
    }


def threads(store: Path) -> dict[str, Any]:
    from nbtasks.store import HOST, files, identity, owner_alive

    app = nbtasks.App(store)

    @app.task
    def square(x: int) -> int:
        return x * x

    one = square.delay(7)
    many = square.map(range(5))
    out: dict[str, Any] = {
        "delay": one.get(timeout=30),
        "map": many.get(timeout=30),
        "ids": [one.id, *(r.id for r in many.results)],
        "lock": "fcntl" if files._fcntl is not None else "msvcrt" if files._msvcrt else None,
    }
    # Process identity: this process, a process that has ended, and macOS's way (ps).
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    me = os.getpid()
    ps_me = identity.ps_start_time(me)
    host = HOST
    out["identity"] = {
        "me_alive": identity.pid_alive(me),
        "ended_alive": identity.pid_alive(ended.pid),
        "ps_me": ps_me,
        "ps_ended": identity.ps_start_time(ended.pid),
        "owner_me_ps": owner_alive(f"{host}:{me}:{ps_me}"),
        "owner_me_reused": owner_alive(f"{host}:{me}:s1"),
        "owner_me_unknown_clock": owner_alive(f"{host}:{me}:x123"),
        "owner_ended": owner_alive(f"{host}:{ended.pid}:?"),
    }
    out["lock_held"] = contend_for_lock(store)
    app.shutdown(wait=True)
    return out


_HOLD = """
import sys
from pathlib import Path
from nbtasks.store.files import StoreLock
with StoreLock(Path(sys.argv[1]), 10):
    print("held", flush=True)
    sys.stdin.read()
"""


def contend_for_lock(store: Path) -> str:
    """Another process holds the store's lock: taking it here gives up after the timeout and
    names the holder; once released, it is taken."""
    from nbtasks.store.files import StoreLock

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    try:
        with StoreLock(store, 0.2):
            message = "taken while held"
    except nbtasks.StoreError as exc:
        message = str(exc)
    holder.stdin.close()
    holder.wait()
    with StoreLock(store, 10):
        pass
    return message.replace(f"pid {holder.pid}", "pid HOLDER")


def processes(store: Path) -> dict[str, Any]:
    app = nbtasks.App(store, process_workers=2)

    @app.task(executor="process")
    def facts() -> dict[str, Any]:
        return simulated()

    @app.task(executor="process")
    def square(x: int) -> int:
        print("squaring", x)
        return x * x

    @app.task(executor="process")
    def crash() -> None:
        os._exit(3)

    @app.task(executor="process", timeout=1)
    def hard() -> None:
        time.sleep(600)

    @app.task(executor="process", soft_timeout=0.5)
    def soft() -> str:
        # In short steps: where there is no SIGALRM the worker's watchdog raises the limit
        # between bytecodes, so one long C call (a 600 s sleep) would see it only at its end
        # (docs/platforms.md).
        try:
            for _ in range(60_000):
                time.sleep(0.01)
        except nbtasks.SoftTimeLimitExceeded:
            return "soft limit raised in the task"
        return "not raised"

    @app.task(executor="process")
    def forever() -> None:
        time.sleep(600)

    out: dict[str, Any] = {"worker": facts.delay().get(timeout=60)}
    out["map"] = square.map(range(6)).get(timeout=60)
    printed = square.delay(7).wait(60)
    out["output"] = printed.output
    r = crash.delay().wait(60)
    out["crash"] = [r.status.value, [(e.exception_class_path, e.message) for e in r.errors]]
    r = hard.delay().wait(60)
    out["hard"] = [r.status.value, [e.exception_class_path for e in r.errors]]
    out["soft"] = soft.delay().get(timeout=60)
    r = forever.delay()
    deadline = time.monotonic() + 60
    while r.refresh().status is not nbtasks.TaskStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the worker to start it (bounded)
    r.cancel()
    out["cancel"] = r.wait(60).status.value
    out["after"] = square.delay(9).get(timeout=60)  # the pool carried on
    out["ids"] = [r.id]
    app.shutdown(wait=True, cancel_pending=True)
    return out


def read(store: Path) -> dict[str, Any]:
    ids = json.loads(sys.stdin.read())
    app = nbtasks.App(store, read_only=True)
    try:
        return {"read": [[app.result(i).status.value, app.result(i).get(timeout=5)] for i in ids]}
    finally:
        app.shutdown(wait=True)


def main() -> None:
    phase, store = sys.argv[1], Path(sys.argv[2])
    report = simulated()
    report.update({"threads": threads, "processes": processes, "read": read}[phase](store))
    print(json.dumps(report))


if __name__ == "__main__":  # the spawn start method imports this module in each worker
    main()
